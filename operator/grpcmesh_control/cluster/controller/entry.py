"""``grpcmesh operator``: run the operator with settings from the environment.

The environment is read here, once (``RuntimeSettings.from_env``). kopf handles SIGTERM and
SIGINT itself (it stops its watchers, then ``Operator.run`` stops the control plane).
"""

from __future__ import annotations

import asyncio
import logging
import os

from kubernetes_asyncio.config import ConfigException

from grpcmesh_control.cluster.controller.operator import run_operator
from grpcmesh_control.cluster.controller.settings import RuntimeSettings

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(log_level: str = "info") -> int:
    """Exit 0 on a clean stop, 1 when a port cannot be bound, 2 without usable settings or
    credentials."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = RuntimeSettings.from_env(os.environ)
    except ValueError as exc:  # a malformed GRPCMESH_* value
        log.error("invalid settings: %s", exc)
        return 2
    try:
        asyncio.run(run_operator(settings))
    except (OSError, ConfigException, ExceptionGroup) as exc:
        # A failure in any of the operator's tasks (the webhook server binding its port, say)
        # arrives wrapped in the TaskGroup's ExceptionGroup.
        cause = _leaf(exc, (OSError, ConfigException))
        if isinstance(cause, ConfigException):
            log.error(
                "no Kubernetes credentials: %s (run in a pod with a service account, set "
                "KUBECONFIG, or GRPCMESH_API_SERVER)",
                cause,
            )
            return 2
        if isinstance(cause, OSError):
            log.error("cannot serve: %s", cause)
            return 1
        raise
    return 0


def _leaf(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """``exc`` itself, or the first exception of ``kinds`` nested in an exception group."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, kinds)
            if found is not None:
                return found
    return None
