"""Bounds on a resource document before anything validates it: its size, its nodes once YAML
aliases are expanded, and its depth.

A 1.4 KB YAML "billion laughs" (each anchor a list of ten aliases of the one before) loads
cheaply, since PyYAML shares aliased objects, but everything that walks the result (the schema
check, a JSON dump) walks every expanded node: 10^9 of them. So documents are counted as
expanded trees, and the count stops at the bound: refusing costs at most ``MAX_NODES`` steps
whatever the document. JSON (the admission webhook's input) has no aliases, but the same bounds
keep its validation time proportional to a small document.

The limits are far above any real MeshService (the reference services have under 200 nodes)
and below what takes the control plane a noticeable time to validate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from grpcmesh_control.mesh.errors import FieldError, InvalidResource

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "bounds_error",
    "load_yaml_documents",
]

MAX_DOCUMENT_BYTES = 1024 * 1024
"""A resource file or request body: Kubernetes stores objects of at most 1.5 MiB in etcd."""
MAX_NODES = 50_000
"""Mappings, sequences and scalars, every alias expanded."""
MAX_DEPTH = 64
"""Nesting of mappings and sequences (a MeshService needs 8)."""

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def bounds_error(doc: object) -> FieldError | None:
    """Why ``doc`` (parsed YAML or JSON) is too large or too deep to validate, or None.

    Walks the document as a tree, without recursion, and stops as soon as a bound is passed:
    a self-referencing document (``&a [*a]``) is refused as too large rather than walked
    forever."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return FieldError(
                "",
                f"more than {MAX_NODES} values once YAML aliases are expanded; "
                "a resource this large is refused",
            )
        if isinstance(item, Mapping):
            children: list[object] = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth >= MAX_DEPTH and children:
            return FieldError("", f"nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)
    return None


def load_yaml_documents(content: bytes | str, *, source: str) -> list[object]:
    """The non-empty documents of a (multi-document) YAML text, each within the bounds.

    Raises ``InvalidResource`` naming ``source``: over ``MAX_DOCUMENT_BYTES``, not UTF-8,
    not YAML, or a document over ``MAX_NODES`` or ``MAX_DEPTH`` (the document is named by its
    position when the text holds several)."""
    size = len(content.encode("utf-8") if isinstance(content, str) else content)
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidResource(
            source, [FieldError("", f"{size} bytes; at most {MAX_DOCUMENT_BYTES} are accepted")]
        )
    try:
        text = content.decode("utf-8") if isinstance(content, bytes) else content
        docs = [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except UnicodeDecodeError as exc:
        raise InvalidResource(source, [FieldError("", f"not UTF-8 text: {exc}")]) from exc
    except yaml.YAMLError as exc:
        raise InvalidResource(source, [FieldError("", f"not valid YAML: {exc}")]) from exc
    except RecursionError as exc:
        too_deep = FieldError("", f"nested more than {MAX_DEPTH} levels deep")
        raise InvalidResource(source, [too_deep]) from exc
    for i, doc in enumerate(docs, start=1):
        error = bounds_error(doc)
        if error is not None:
            label = source if len(docs) == 1 else f"{source}, document {i}"
            raise InvalidResource(label, [error])
    return docs
