"""The security context every container the operator renders gets."""

from __future__ import annotations

from typing import Any

__all__ = ["pod_security_context", "restricted_security_context"]


def restricted_security_context(uid: int) -> dict[str, Any]:
    """Pod Security Standards *restricted*, plus a read-only root filesystem.

    ``runAsUser`` is numeric so the kubelet can enforce ``runAsNonRoot`` for images whose USER
    is a name. Writable paths are emptyDir mounts (/tmp, the data directory).
    """
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsGroup": uid,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """Pod-level defaults, so containers added later (debug, injected) inherit them."""
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
