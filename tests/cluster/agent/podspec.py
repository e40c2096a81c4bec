"""What a kubelet derives from a pod's spec before it starts a container: the environment
(``env``/``envFrom`` with ``$(VAR)`` expansion, fieldRef, resourceFieldRef, configMapKeyRef,
secretKeyRef), the command line (``$(VAR)`` expansion), and the volumes, written to folders
on this machine.

Mounts. The image runner mounts those folders for real (``-v host:mountPath``). The process
runner cannot (no mount namespace), so it rewrites paths instead: every occurrence of a
``mountPath`` as a path prefix in the command, the args and the env values becomes the folder
that holds the volume (``Mount.rewrite``). A process that reads a mounted path it was not
told about (e.g. a Kubernetes client's hard-coded service account token path) does not find
it: run such a container with the image runner.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from grpcmesh_control.cluster.objects.quantity import parse_quantity

__all__ = [
    "Mount",
    "PodFacts",
    "ResolveError",
    "container_env",
    "expand",
    "expand_all",
    "field_value",
    "materialise_volumes",
    "mounts_of",
    "rewrite_paths",
    "rewrite_volume_files",
]

_EMPTY_DIR_MODE = 0o777  # as the kubelet makes them: any container user may write


class ResolveError(Exception):
    """A reference the pod needs is missing (ConfigMap, Secret, key): the container cannot
    start, as with a kubelet's CreateContainerConfigError."""


class Objects(Protocol):
    """Where ConfigMaps, Secrets and service account tokens come from (the API)."""

    async def config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def service_account_token(
        self, pod: Mapping[str, Any], audience: str | None, expiration_seconds: int
    ) -> str: ...


@dataclass(frozen=True)
class PodFacts:
    """What the downward API may read beyond the pod object: the addresses the agent chose."""

    pod: Mapping[str, Any]
    pod_ip: str
    host_ip: str
    node_allocatable: Mapping[str, str]


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined VAR is replaced, an undefined reference is
    kept as written, and ``$$`` is a literal ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(mapping[name] if name in mapping else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def expand_all(items: Iterable[str], mapping: Mapping[str, str]) -> list[str]:
    return [expand(item, mapping) for item in items]


_KEYED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(path: str, facts: PodFacts) -> str:
    """A downward API ``fieldRef.fieldPath`` of the pod."""
    meta = facts.pod.get("metadata", {})
    spec = facts.pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
    }
    if path in simple:
        return str(simple[path])
    keyed = _KEYED.match(path)
    if keyed:
        return str(meta.get(keyed.group(1), {}).get(keyed.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ResolveError(f"unsupported fieldRef {path!r}")


def _resource_value(ref: Mapping[str, Any], container: Mapping[str, Any], facts: PodFacts) -> str:
    kind, _, resource = str(ref["resource"]).partition(".")
    value = container.get("resources", {}).get(kind, {}).get(resource)
    if value is None:  # no limit: the kubelet reports the node's allocatable
        value = facts.node_allocatable.get(resource, "0")
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    amount = parse_quantity(str(value)) / divisor
    return str(math.ceil(amount) if amount != amount.to_integral_value() else int(amount))


async def _key_of(
    objects: Objects, namespace: str, ref: Mapping[str, Any], *, secret: bool
) -> str | None:
    name = ref["name"]
    found = await (objects.secret if secret else objects.config_map)(namespace, name)
    optional = bool(ref.get("optional", False))
    kind = "Secret" if secret else "ConfigMap"
    if found is None:
        if optional:
            return None
        raise ResolveError(f'{kind.lower()} "{name}" not found')
    values = _decoded(found, secret=secret)
    if ref["key"] not in values:
        if optional:
            return None
        raise ResolveError(f"couldn't find key {ref['key']} in {kind} {namespace}/{name}")
    return values[ref["key"]].decode()


def _decoded(obj: Mapping[str, Any], *, secret: bool) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys and their bytes."""
    if secret:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    values = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    values |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    return values


async def container_env(
    container: Mapping[str, Any],
    facts: PodFacts,
    objects: Objects,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment, as the kubelet builds it: ``base`` (what the runtime adds,
    e.g. KUBERNETES_SERVICE_HOST), then ``envFrom`` sources, then ``env`` in order, each value
    expanded against what was defined before it."""
    namespace = str(facts.pod["metadata"]["namespace"])
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        secret = "secretRef" in source
        ref = source["secretRef"] if secret else source["configMapRef"]
        found = await (objects.secret if secret else objects.config_map)(namespace, ref["name"])
        if found is None:
            if ref.get("optional"):
                continue
            raise ResolveError(f"{'secret' if secret else 'configmap'} {ref['name']!r} not found")
        env |= {prefix + k: v.decode() for k, v in _decoded(found, secret=secret).items()}
    for var in container.get("env") or []:
        name = str(var["name"])
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(str(var.get("value", "")), env)
        elif "fieldRef" in source:
            env[name] = field_value(str(source["fieldRef"]["fieldPath"]), facts)
        elif "resourceFieldRef" in source:
            env[name] = _resource_value(source["resourceFieldRef"], container, facts)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            secret = "secretKeyRef" in source
            ref = source["secretKeyRef" if secret else "configMapKeyRef"]
            value = await _key_of(objects, namespace, ref, secret=secret)
            if value is not None:
                env[name] = value
        else:
            raise ResolveError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return env


# --- volumes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A volume mount: ``host_path`` (a folder or file on this machine) seen at ``mount_path``."""

    host_path: Path
    mount_path: str
    read_only: bool


def _write(root: Path, relative: str, content: bytes, mode: int | None) -> None:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    target.chmod(mode if mode is not None else 0o644)


def _project(
    root: Path,
    values: Mapping[str, bytes],
    items: Sequence[Mapping[str, Any]] | None,
    default_mode: int | None,
    what: str,
) -> None:
    if not items:
        for key, content in values.items():
            _write(root, key, content, default_mode)
        return
    for item in items:
        if item["key"] not in values:
            raise ResolveError(f"{what}: no key {item['key']!r}")
        _write(root, str(item["path"]), values[item["key"]], item.get("mode", default_mode))


async def _source(
    root: Path,
    source: Mapping[str, Any],
    kind: str,
    facts: PodFacts,
    objects: Objects,
    default_mode: int | None,
) -> None:
    namespace = str(facts.pod["metadata"]["namespace"])
    if kind in ("configMap", "secret"):
        secret = kind == "secret"
        name = str(source.get("secretName") or source.get("name"))
        found = await (objects.secret if secret else objects.config_map)(namespace, name)
        if found is None:
            if source.get("optional"):
                return
            raise ResolveError(f'{kind} "{name}" not found')
        values = _decoded(found, secret=secret)
        _project(root, values, source.get("items"), default_mode, f"{kind} {name}")
    elif kind == "downwardAPI":
        for item in source.get("items") or []:
            if "fieldRef" not in item:
                raise ResolveError(f"downwardAPI {item['path']}: only fieldRef is supported")
            value = field_value(str(item["fieldRef"]["fieldPath"]), facts)
            _write(root, str(item["path"]), value.encode(), item.get("mode", default_mode))
    elif kind == "serviceAccountToken":
        token = await objects.service_account_token(
            facts.pod, source.get("audience"), int(source.get("expirationSeconds", 3600))
        )
        _write(root, str(source["path"]), token.encode(), default_mode)
    else:
        raise ResolveError(f"unsupported volume source {kind!r}")


async def materialise_volumes(
    pod: Mapping[str, Any], facts: PodFacts, objects: Objects, root: Path
) -> dict[str, Path]:
    """Write every volume of ``pod`` under ``root/<volume>``; volume name -> its folder.
    ConfigMap/Secret/projected contents are read once, at pod start (the kubelet would
    refresh them; tests here do not rely on it)."""
    folders: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = str(volume["name"])
        if "hostPath" in volume:
            folders[name] = Path(volume["hostPath"]["path"])
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        folders[name] = folder
        if "emptyDir" in volume:
            folder.chmod(_EMPTY_DIR_MODE)
        elif "projected" in volume:
            projected = volume["projected"]
            for source in projected.get("sources") or []:
                for kind, spec in source.items():
                    await _source(folder, spec, kind, facts, objects, projected.get("defaultMode"))
        else:
            kinds = [k for k in volume if k != "name"]
            for kind in kinds:
                spec = volume[kind]
                await _source(folder, spec, kind, facts, objects, spec.get("defaultMode"))
        if "emptyDir" not in volume:
            folder.chmod(0o755)
    return folders


def mounts_of(container: Mapping[str, Any], folders: Mapping[str, Path]) -> list[Mount]:
    """The container's ``volumeMounts`` as host paths (``subPath`` honoured)."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        folder = folders.get(str(mount["name"]))
        if folder is None:
            raise ResolveError(f"volumeMount {mount['name']!r} names no volume of the pod")
        sub = mount.get("subPath")
        mounts.append(
            Mount(
                host_path=folder / sub if sub else folder,
                mount_path=str(mount["mountPath"]).rstrip("/") or "/",
                read_only=bool(mount.get("readOnly", False)),
            )
        )
    return mounts


def rewrite_paths(text: str, mounts: Sequence[Mount]) -> str:
    """``text`` with each mount path, where it occurs as a path prefix, replaced by its host
    folder. One pass, longest mount path first (``/a/b`` wins over ``/a``), so a host folder
    that was just written in is never rewritten again."""
    if not mounts:
        return text
    ordered = sorted(mounts, key=lambda m: len(m.mount_path), reverse=True)
    by_path = {m.mount_path: str(m.host_path) for m in ordered}
    alternatives = "|".join(re.escape(m.mount_path) for m in ordered)
    pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|$|[^\w.-])")
    return pattern.sub(lambda match: by_path[match.group(1)], text)


def rewrite_volume_files(
    folders: Mapping[str, Path], pod: Mapping[str, Any], mounts: Sequence[Mount]
) -> None:
    """Rewrite mount paths (``rewrite_paths``) inside the text files of the pod's ConfigMap,
    Secret and projected volumes, for runners without real mounts."""
    for volume in pod["spec"].get("volumes") or []:
        if not any(kind in volume for kind in ("configMap", "secret", "projected")):
            continue
        for path in folders[str(volume["name"])].rglob("*"):
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            rewritten = rewrite_paths(text, mounts)
            if rewritten != text:
                path.write_text(rewritten, encoding="utf-8")
