"""How a value and its 95% interval are written in tables and headlines: '-' for a missing value, no
brackets where there is no interval (one unit: a t-interval needs two)."""
from __future__ import annotations

from typing import Callable


def num(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def with_ci(value: float | None, ci: list | tuple | None, spec: str | Callable[[float | None], str] = ".3g") -> str:
    """'0.123 [0.1, 0.15]', or '0.123' without an interval."""
    fmt = spec if callable(spec) else (lambda v: num(v, spec))
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and value is not None else fmt(value)


def ratio_text(c: dict, spec: str = ".3f") -> str:
    """A comparison's ratio a/b with its interval across students where it has one: '1.084x [1.013, 1.160]'."""
    if c.get("ratio") is None:
        return "-"
    ci = c.get("ratio_ci")
    return f"{c['ratio']:{spec}}x" + (f" [{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci else "")


def p_text(c: dict) -> str:
    """A comparison's p-value, marked where it is the smallest its test can give with these arm sizes."""
    floor = c.get("min_p")
    if c["p_value"] is None:
        return "- (not tested)"
    return f"{c['p_value']:.2g}" + (" (the floor)" if floor and c["p_value"] <= floor * (1 + 1e-9) else "")
