"""`python -m grpcmesh_catalog` serves catalog until SIGTERM."""

from grpcmesh_catalog.main import main

if __name__ == "__main__":
    main()
