"""grpcmesh load generator: open-loop PlaceOrder load, and a local launcher for the demo.

Library use (benchmarks, the mesh's end-to-end tests)::

    report = await run_load("127.0.0.1:50051", orders=200, rate=50.0)
    assert report.succeeded
"""

from grpcmesh_loadgen.orders import LoadgenError, run_load
from grpcmesh_loadgen.stats import CallResult, LatencySummary, LoadMode, LoadReport

__all__ = [
    "CallResult",
    "LatencySummary",
    "LoadMode",
    "LoadReport",
    "LoadgenError",
    "run_load",
]
