"""Pod Security Standards, *restricted* profile (which includes *baseline*), as of Kubernetes
1.31, checked on a pod spec: a pure re-statement of the admission controller's rules, so tests
and the mutating webhook (which warns about pods the sidecar cannot make compliant) can tell
before the API server does.

Each violation names the field, e.g. ``spec.initContainers[0].securityContext.
allowPrivilegeEscalation: must be false``. ``read_only_root_violations`` is this project's
extra hardening rule, not part of the standard.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["read_only_root_violations", "restricted_violations"]

_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_syncookies",
    }
)
_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
_SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
_APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"

Doc = Mapping[str, Any]


def _containers(spec: Doc) -> Iterator[tuple[str, Doc]]:
    for key in _CONTAINER_LISTS:
        for i, container in enumerate(spec.get(key) or []):
            yield f"spec.{key}[{i}]", container


def restricted_violations(spec: Doc, metadata: Doc | None = None) -> list[str]:
    """Every rule of the restricted profile ``spec`` breaks; empty when it complies.

    ``metadata`` (the pod's or template's) is only read for AppArmor annotations.
    """
    return [*_baseline(spec, metadata or {}), *_restricted(spec)]


def read_only_root_violations(spec: Doc) -> list[str]:
    return [
        f"{path}.securityContext.readOnlyRootFilesystem: must be true"
        for path, c in _containers(spec)
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True
    ]


def _baseline(spec: Doc, metadata: Doc) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"spec.{field}: must be unset or false"
    pod_ctx: Doc = spec.get("securityContext") or {}
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            yield f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl"
    yield from _selinux("spec.securityContext", pod_ctx)
    yield from _apparmor("spec.securityContext", pod_ctx)
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        yield "spec.securityContext.windowsOptions.hostProcess: must be unset or false"
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith(_APPARMOR_PREFIX) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            yield f"metadata.annotations[{key}]: {value!r} is not an allowed AppArmor profile"
    for path, container in _containers(spec):
        ctx: Doc = container.get("securityContext") or {}
        if ctx.get("privileged"):
            yield f"{path}.securityContext.privileged: must be unset or false"
        if ctx.get("procMount", "Default") != "Default":
            yield f"{path}.securityContext.procMount: must be unset or Default"
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            yield f"{path}.securityContext.windowsOptions.hostProcess: must be unset or false"
        yield from _selinux(f"{path}.securityContext", ctx)
        yield from _apparmor(f"{path}.securityContext", ctx)
        for j, port in enumerate(container.get("ports") or []):
            if port.get("hostPort"):
                yield f"{path}.ports[{j}].hostPort: must be unset or 0"


def _selinux(path: str, ctx: Doc) -> Iterator[str]:
    options: Doc = ctx.get("seLinuxOptions") or {}
    if options.get("type", "") not in _SELINUX_TYPES:
        yield f"{path}.seLinuxOptions.type: {options.get('type')!r} is not allowed"
    for field in ("user", "role"):
        if options.get(field):
            yield f"{path}.seLinuxOptions.{field}: must be unset"


def _apparmor(path: str, ctx: Doc) -> Iterator[str]:
    profile: Doc = ctx.get("appArmorProfile") or {}
    if profile.get("type") == "Unconfined":
        yield f"{path}.appArmorProfile.type: must not be Unconfined"


def _restricted(spec: Doc) -> Iterator[str]:
    for i, volume in enumerate(spec.get("volumes") or []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            yield f"spec.volumes[{i}]: {', '.join(sorted(kinds))} volumes are not allowed"
    pod_ctx: Doc = spec.get("securityContext") or {}
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsNonRoot") is False:
        yield "spec.securityContext.runAsNonRoot: must not be false"
    if pod_ctx.get("runAsUser") == 0:
        yield "spec.securityContext.runAsUser: must not be 0"
    if pod_seccomp is not None and pod_seccomp not in _SECCOMP_ALLOWED:
        yield f"spec.securityContext.seccompProfile.type: {pod_seccomp} is not allowed"
    for path, container in _containers(spec):
        ctx: Doc = container.get("securityContext") or {}
        at = f"{path}.securityContext"
        if ctx.get("allowPrivilegeEscalation") is not False:
            yield f"{at}.allowPrivilegeEscalation: must be false"
        non_root = ctx.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            yield f"{at}.runAsNonRoot: must be true (here or in spec.securityContext)"
        if ctx.get("runAsUser") == 0:
            yield f"{at}.runAsUser: must not be 0"
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in _SECCOMP_ALLOWED:
            yield f"{at}.seccompProfile.type: {seccomp} is not allowed"
        elif seccomp is None and pod_seccomp is None:
            yield f"{at}.seccompProfile.type: must be RuntimeDefault or Localhost (or pod-wide)"
        capabilities: Doc = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"{at}.capabilities.drop: must include ALL"
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            yield f"{at}.capabilities.add: {', '.join(sorted(added))} not allowed"
