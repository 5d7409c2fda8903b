"""Sizes and durations as people read them in weft's messages ("1.5 KiB", "1m30s").

One copy for every service (the api's garbage collector, the local runtime's output
limit, the pod helper's progress lines), so a size reads the same wherever it is shown.
This module only formats: it never parses a size or a duration a user gave.
"""

from __future__ import annotations


def human_bytes(size: int) -> str:
    """`1536` → "1.5 KiB"; below 1 KiB, the exact count ("1000 bytes")."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_seconds(seconds: float) -> str:
    """`90` → "1m30s", `2.5` → "2.5s"."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{rest}s" if rest else "")
