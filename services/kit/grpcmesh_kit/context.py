"""Per-RPC state carried in contextvars, so logs and outgoing calls see it without plumbing."""

from __future__ import annotations

import contextvars
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass

REQUEST_ID_HEADER = "x-request-id"
"""The header Envoy also generates and propagates, so ids survive the sidecars."""


@dataclass(frozen=True, slots=True)
class RpcContext:
    request_id: str
    method: str
    deadline: float | None
    """time.monotonic() value after which the caller has given up; None without a deadline."""

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


current_rpc: ContextVar[RpcContext | None] = ContextVar("grpcmesh_rpc", default=None)


def new_request_id() -> str:
    """32 random hex digits, like a uuid4's hex (an id to correlate by, not a secret): the
    random module, as OpenTelemetry's id generator uses, costs a fraction of uuid4's
    ``os.urandom`` system call on every call that arrives without one."""
    return random.getrandbits(128).to_bytes(16).hex()


def detached_context() -> contextvars.Context:
    """A copy of the current context without the RPC's deadline, for work that must outlive
    the call that started it (e.g. a saga); the request id is kept, so its logs and outgoing
    calls still correlate. Pass it to ``asyncio.create_task(..., context=...)``."""
    context = contextvars.copy_context()
    rpc = context.get(current_rpc)
    if rpc is not None:
        context.run(current_rpc.set, RpcContext(rpc.request_id, rpc.method, None))
    return context
