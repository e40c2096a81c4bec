"""A stand-in service for launcher tests: speaks the kit's launch contract, nothing else.

Reads GRPCMESH_PORTS_FILE, binds 127.0.0.1:0, serves grpc.health.v1, writes the ports file, and
prints its GRPCMESH_* environment as one JSON line. FAKE_BEHAVIOUR picks a misbehaviour:
"crash" (exit 3 before binding), "never_serving" (health stays NOT_SERVING),
"ignore_sigterm" (only SIGKILL stops it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def serve(behaviour: str) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    status = (
        health_pb2.HealthCheckResponse.NOT_SERVING
        if behaviour == "never_serving"
        else health_pb2.HealthCheckResponse.SERVING
    )
    await servicer.set("", status)
    ports_file = Path(os.environ["GRPCMESH_PORTS_FILE"])
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": port, "metrics": port}))
    tmp.replace(ports_file)
    stop = asyncio.Event()
    if behaviour != "ignore_sigterm":
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    print("stopped cleanly", flush=True)


def main() -> None:
    behaviour = os.environ.get("FAKE_BEHAVIOUR", "ok")
    env = {k: v for k, v in os.environ.items() if k.startswith("GRPCMESH_")}
    print(json.dumps(env), flush=True)
    if behaviour == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if behaviour == "crash":
        print("fake service: boom", file=sys.stderr, flush=True)
        sys.exit(3)
    asyncio.run(serve(behaviour))


if __name__ == "__main__":
    main()
