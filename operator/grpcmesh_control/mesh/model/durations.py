"""Durations as the CRD spells them: ``250ms``, ``2s``, ``1.5s``, ``1m30s``, ``0s``.

Go-style (a subset of ``time.ParseDuration``) because that is what Kubernetes users already
write; the CRD's pattern is ``DURATION_PATTERN`` so the API server rejects malformed values, and
its CEL rules parse them as Go does, so a duration longer than a Go ``time.Duration`` holds
(``MAX_DURATION``) is refused here too. Values are kept to the microsecond; a finer remainder
rounds up, so a positive duration never becomes zero.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal

__all__ = ["DURATION_PATTERN", "MAX_DURATION", "format_duration", "parse_duration"]

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
MAX_DURATION = "2562047h47m16.854775807s"
"""The longest Go ``time.Duration`` (2**63 - 1 ns), the most the API server's CEL parses."""
_MAX_NANOS = 2**63 - 1

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_MICROS_PER_UNIT = {
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}


def parse_duration(text: str) -> timedelta:
    """Parse ``text``; raises ``ValueError`` when it does not match ``DURATION_PATTERN`` or is
    longer than ``MAX_DURATION``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (e.g. 250ms, 2s, 1m30s)")
    # Decimal, not float: "0.1s" must be exactly 100ms, not 99.999ms.
    micros = sum(
        (Decimal(number) * _MICROS_PER_UNIT[unit] for number, unit in _PART.findall(text)),
        Decimal(0),
    )
    # Go drops fractions of a nanosecond before its overflow check; so does this.
    if int(micros * 1000) > _MAX_NANOS:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION}")
    return timedelta(microseconds=int(micros.to_integral_value(rounding=ROUND_CEILING)))


def format_duration(value: timedelta) -> str:
    """The shortest exact CRD spelling of ``value`` (``250ms``, ``2s``, ``1.5s``, ``0s``)."""
    micros = value // timedelta(microseconds=1)
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1_000 == 0:
        return f"{micros // 1_000}ms"
    return f"{Decimal(micros) / Decimal(1_000_000)}s"
