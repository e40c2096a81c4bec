"""YAML output that people read: multi-line strings (PromQL, descriptions) as literal blocks."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["dump", "dump_all"]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    # str() turns a StrEnum member into its plain value.
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style=style)


_Dumper.add_representer(str, _str)
_Dumper.add_multi_representer(str, _str)  # StrEnum members


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


def dump_all(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=100)
