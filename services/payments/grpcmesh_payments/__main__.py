"""`python -m grpcmesh_payments` serves payments until SIGTERM."""

from grpcmesh_payments.main import main

if __name__ == "__main__":
    main()
