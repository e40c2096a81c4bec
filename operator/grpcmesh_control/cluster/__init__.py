"""Cluster mode. ``objects`` is pure: MeshService -> desired Kubernetes objects, status, admission
answers, the App Mesh provider. ``controller`` is the kopf operator at the edge: it watches the
API, applies what ``objects`` decides, and runs the one xDS host (``grpcmesh_control.host``)."""
