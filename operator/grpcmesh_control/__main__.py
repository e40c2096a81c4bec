"""``python -m grpcmesh_control control-plane ...``: the control plane process (local mode)."""

import sys

from grpcmesh_control.runtime.controlplane import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
