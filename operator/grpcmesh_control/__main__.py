"""``python -m grpcmesh_control ...``: the ``grpcmesh`` command (the local launcher starts the
control plane this way, with the interpreter it runs under)."""

from grpcmesh_control.cli.app import app

if __name__ == "__main__":
    app(prog_name="grpcmesh")
