"""``python -m grpcmesh_orders``: serve until SIGTERM (settings from GRPCMESH_* and the file)."""

from grpcmesh_orders.main import main

main()
