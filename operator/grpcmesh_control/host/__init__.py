"""The one xDS host both modes run (``xds_host.XdsHost``): the publisher, the ADS server and the
HTTP app with ``/status``, ``/debug/nodes``, ``/debug/snapshot`` and ``/metrics``. The local
control plane and the cluster operator each construct it and add their own routes."""
