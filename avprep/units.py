"""Sizes in bytes as people write them: ``1000000``, ``256M``, ``1.5GiB``.

SI and IEC, as ``ls --si``/``numfmt`` and the storage vendors: K, M, G, T (or KB, MB,
GB, TB) are powers of 1000; KiB, MiB, GiB, TiB are powers of 1024. Letters in any
case, a ``B`` optional, a space between number and unit allowed.
"""

from __future__ import annotations

import re
from decimal import Decimal

_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<prefix>[kmgt]?)(?P<binary>i?)b?")

SIZE_HELP = "K/M/G/T = 1000^n bytes, KiB/MiB/GiB/TiB = 1024^n"


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names, rounded to a whole byte; ValueError (one line) if
    it names none."""
    m = _SIZE.fullmatch(str(text).strip().lower())
    if m is None or (m["binary"] and not m["prefix"]):
        raise ValueError(
            f"{text!r} is not a size: give bytes as 1000000, 256M or 1.5GiB ({SIZE_HELP})"
        )
    number = Decimal(m["number"])  # digits and at most one point: always a Decimal
    base = 1024 if m["binary"] else 1000
    return int((number * base ** _POWERS[m["prefix"]]).to_integral_value())
