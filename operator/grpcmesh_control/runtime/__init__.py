"""Running the control plane: the publisher (debounced snapshot rebuilds), the local-mode
control plane process (xDS server, file watcher, admin HTTP API) and its entry points.

Import the submodules directly (``runtime.controlplane``, ``runtime.publisher``); this package
imports nothing, so importing a sibling (the launcher's ``runtime.local``) stays cheap."""
