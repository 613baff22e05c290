"""How a value and its 95% interval are written in tables and headlines: '-' for a missing value, no
brackets where there is no interval (one unit: a t-interval needs two)."""
from __future__ import annotations

from typing import Callable


def num(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def with_ci(value: float | None, ci: list | tuple | None, spec: str | Callable[[float | None], str] = ".3g") -> str:
    """'0.123 [0.1, 0.15]', or '0.123' without an interval."""
    fmt = spec if callable(spec) else (lambda v: num(v, spec))
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(value)
