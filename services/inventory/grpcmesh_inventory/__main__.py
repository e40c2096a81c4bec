"""`python -m grpcmesh_inventory` serves inventory until SIGTERM."""

from grpcmesh_inventory.main import main

if __name__ == "__main__":
    main()
