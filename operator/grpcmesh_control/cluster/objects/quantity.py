"""Kubernetes resource quantities (``100m``, ``1.5``, ``128Mi``, ``1G``) as exact decimals, to
compare a request with its limit. Exponent notation (``1e3``) is not accepted: the CRD's
patterns do not allow it either."""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["parse_quantity"]

_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_quantity(text: str) -> Decimal:
    """The quantity in base units (cores, bytes); ``ValueError`` if ``text`` is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a resource quantity")
    number, suffix = match.groups()
    return Decimal(number) * _SUFFIXES[suffix or ""]
