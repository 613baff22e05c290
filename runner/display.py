"""How a value and its 95% interval are written in tables and headlines: '-' for a missing value, no
brackets where there is no interval (one unit: a t-interval needs two)."""
from __future__ import annotations

import math
from typing import Callable

SIGNIFICANCE_LEVELS = (0.05, 0.01)  # the thresholds subl marks at (LM comparisons; MNIST and the theorem)


def usd(x: float) -> str:
    """Dollars rounded up to the cent: a bound never prints below itself ($0.004 is $0.01, not $0.00)."""
    return f"${math.ceil(round(x * 100, 6)) / 100:,.2f}"


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
    floor, p = c.get("min_p"), c["p_value"]
    if p is None:
        return "- (not tested)"
    text = f"{p:.2g}"
    if float(text) in SIGNIFICANCE_LEVELS and p != float(text):  # 0.0498 and 0.0502 must not both read 0.05
        text = f"{p:.3g}"
    return text + (" (the floor)" if floor and p <= floor * (1 + 1e-9) else "")


def label_of(row: dict) -> str:
    """The evaluation a result row belongs to (runner.results.eval_labels; rows written before labels: the kind)."""
    return row.get("label") or row.get("evaluation", "")


def metric_name(row: dict) -> str:
    """A row's metric, with its evaluation where the spec has several of that kind: 'rate(owl) (... stories)'."""
    label = label_of(row)
    return row["metric"] if label == row.get("evaluation", "") else f"{row['metric']} ({label})"
