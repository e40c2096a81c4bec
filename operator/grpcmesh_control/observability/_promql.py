"""A few PromQL-rendering helpers (strings in, strings out).

Dashboards and rules share them so a selector is spelled one way everywhere; label values are
quoted with escaping, so a service name can never break a query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "Matcher",
    "by",
    "eq",
    "histogram_quantile",
    "increase",
    "ne",
    "not_regex",
    "rate",
    "regex",
    "selector",
]

Matcher = str
"""One rendered label matcher, e.g. ``job="grpcmesh-app"``."""


def _quote(value: str) -> str:
    # PromQL strings accept Go escapes; a backslash and a double quote are all that can break one.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def eq(label: str, value: str) -> Matcher:
    return f"{label}={_quote(value)}"


def ne(label: str, value: str) -> Matcher:
    return f"{label}!={_quote(value)}"


def regex(label: str, pattern: str) -> Matcher:
    return f"{label}=~{_quote(pattern)}"


def not_regex(label: str, pattern: str) -> Matcher:
    return f"{label}!~{_quote(pattern)}"


def selector(metric: str, *matchers: Matcher) -> str:
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(series: str, window: str) -> str:
    return f"rate({series}[{window}])"


def increase(series: str, window: str) -> str:
    return f"increase({series}[{window}])"


def by(aggregation: str, labels: Iterable[str], expr: str) -> str:
    """``sum by (a, b) (expr)``; no ``by`` clause when ``labels`` is empty."""
    names = ", ".join(labels)
    return f"{aggregation} by ({names}) ({expr})" if names else f"{aggregation}({expr})"


def histogram_quantile(quantile: float, buckets: str, window: str, labels: Sequence[str]) -> str:
    """The ``quantile`` of a classic histogram's ``*_bucket`` series, grouped by ``labels``."""
    return f"histogram_quantile({quantile:g}, {by('sum', (*labels, 'le'), rate(buckets, window))})"


def label_from(expr: str, label: str, source: str, pattern: str) -> str:
    """``expr`` with ``label`` set to the first group of ``pattern`` (anchored) on ``source``."""
    return f'label_replace({expr}, {_quote(label)}, "$1", {_quote(source)}, {_quote(pattern)})'
