"""The mesh core, shared by both modes and pure of Kubernetes and processes: the MeshService model
(``model``), the method catalog (``catalogs``), the translation of a mesh to per-node Envoy
snapshots (``translate``), the debounced publisher that rebuilds them (``publisher``) and the xDS
serving of those snapshots (``xds``)."""
