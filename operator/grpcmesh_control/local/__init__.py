"""Local mode: the whole mesh on one machine as processes (``grpcmesh up``).

``plan`` is pure (MeshServices + ports -> what to run); ``supervisor`` runs a plan (the thin
process edge); ``launcher`` ties them to a resources directory and a run directory;
``status`` merges the launcher's state with the control plane's for ``grpcmesh status``.
The local control plane process is ``controlplane``: the one xDS host (``grpcmesh_control.host``)
fed by ``watcher`` from the resource files (``sources``), plus the ``/apply`` route (``admin``).

Import the submodules directly; this package imports nothing, so the light ones (``sources``,
``plan``) stay free of gRPC and aiohttp for the CLI's validation path.
"""
