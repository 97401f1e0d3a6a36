"""Byte sizes: parsing what users write (``64KB``, ``1.5MiB``) and formatting what we print."""

from __future__ import annotations

import math

__all__ = ["format_bytes", "parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """A byte size like ``64KB``, ``1.5MiB``, ``512k`` or ``1000`` in bytes (KB = 1000, KiB = 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return text
    s = str(text).strip().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(num):].lower()
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"cannot parse size {text!r}; write e.g. 64KB, 1MB, 1.5MiB or 4096") from None
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {text!r}; use B, KB, KiB, MB, MiB, GB or GiB")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return int(round(value * _UNITS[unit]))


def format_bytes(n: int | float) -> str:
    """``7900`` -> ``"7.9 KB"`` (decimal units, as :func:`parse_size` reads them)."""
    n = float(n)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"
