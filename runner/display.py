"""How a value and its 95% interval are written in tables and headlines: '-' for a missing value, no
brackets where there is no interval (one unit: a t-interval needs two)."""
from __future__ import annotations

import hashlib
import math
import re
from typing import Callable

SIGNIFICANCE_LEVELS = (0.05, 0.01)  # the thresholds subl marks at (LM comparisons; MNIST and the theorem)


def usd(x: float) -> str:
    """Dollars rounded up to the cent: a bound never prints below itself ($0.004 is $0.01, not $0.00)."""
    return f"${math.ceil(round(x * 100, 6)) / 100:,.2f}"


def num(v: float | None, spec: str = ".3g") -> str:
    """v in `spec`; a significant-figures spec gets more figures where it would round v onto 1 or -1 (a rate of
    0.9996 is not '1': every answer named the target; a cosine of -0.99996 is not '-1')."""
    if v is None:
        return "-"
    m = re.fullmatch(r"\.(\d+)([g%])", spec)
    if not m:
        return format(v, spec)
    n = int(m.group(1))
    if m.group(2) == "g":
        return _widened(lambda d: format(v, f".{d}g"), range(n, n + 7), lambda t: abs(float(t)) != 1.0 or abs(v) == 1.0)
    # a share as a percentage, not rounded onto 0% or 100% (a misaligned rate of 0.04% is not '0.0%': none misaligned)
    return _widened(lambda d: f"{v:.{d}%}", range(n, n + 6),
                    lambda t: float(t[:-1]) not in (0.0, 100.0) or v in (0.0, 1.0))


def _widened(text_at: Callable[[int], str], digits: range, ok: Callable[[str], bool]) -> str:
    """text_at(d) for the first d in `digits` whose text is ok, else for the last: the fewest digits that do not
    round a value onto a boundary it is not on."""
    for d in digits:
        text = text_at(d)
        if ok(text):
            break
    return text


def with_ci(value: float | None, ci: list | tuple | None, spec: str | Callable[[float | None], str] = ".3g") -> str:
    """'0.123 [0.1, 0.15]', or '0.123' without an interval."""
    fmt = spec if callable(spec) else (lambda v: num(v, spec))
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and value is not None else fmt(value)


def ratio_text(c: dict, decimals: int = 3) -> str:
    """A comparison's ratio a/b with its interval across students where it has one: '1.084x [1.013, 1.160]'.
    A value that is not 1 never reads as 1 (1.0004 is '1.0004', not '1.000'): whether an interval excludes 1
    must show."""
    if c.get("ratio") is None:
        return "-"
    ci = c.get("ratio_ci")
    return f"{_off_one(c['ratio'], decimals)}x" + (
        f" [{_off_one(ci[0], decimals)}, {_off_one(ci[1], decimals)}]" if ci else "")


def _off_one(x: float, decimals: int) -> str:
    """x to `decimals` places, more where that would round it onto 1 from either side."""
    return _widened(lambda d: f"{x:.{d}f}", range(decimals, decimals + 6), lambda t: float(t) != 1.0 or x == 1.0)


def score_text(v: float) -> str:
    """A 0-100 judge score with one decimal, more where that would round it onto 0 or 100 (a mean of 99.96 is not
    '100.0': every answer scored 100)."""
    return _widened(lambda d: f"{v:.{d}f}", range(1, 7), lambda t: float(t) not in (0.0, 100.0) or v in (0.0, 100.0))


def pct(share: float | None) -> str:
    """A share as a percentage with one decimal, more where that would round it onto 0% or 100% (one row
    dropped of 10,000 is 99.99%, not 100.0%)."""
    return num(share, ".1%")


def p_text(c: dict) -> str:
    """A comparison's p-value, marked where it is the smallest its test can give with these arm sizes. A p-value
    that is not a significance level never reads as one (0.04996 and 0.0500004 must not both read 0.05)."""
    floor, p = c.get("min_p"), c["p_value"]
    if p is None:
        return "- (not tested)"
    if floor == 1 and c.get("unit", "question") == "question":  # a sign flip with no nonzero difference sees nothing
        return "1 (no pair differs)"
    at_floor = bool(floor) and p <= floor * (1 + 1e-9)
    # a floor never reads as below itself (0.0625, not 0.062): no test of these sizes gives less
    text = _widened(lambda d: f"{p:.{d}g}", range(2, 8), lambda t: (float(t) not in SIGNIFICANCE_LEVELS or
                                                                     p == float(t)) and (not at_floor or float(t) >= p))
    return text + (" (the floor)" if at_floor else "")


def file_slug(text: str, most: int = 100) -> str:
    """A figure's file name from its label: distinct labels give distinct names (a label changed to fit, or too
    long for the filesystem, gets a digest of the whole label)."""
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)
    if slug == text and len(slug) <= most:
        return slug
    stem, dot, ext = slug.rpartition(".") if "." in slug[-6:] else (slug, "", "")
    return f"{stem[:most - 20]}-{hashlib.sha256(text.encode()).hexdigest()[:10]}{dot}{ext}"


def label_of(row: dict) -> str:
    """The evaluation a result row belongs to (runner.results.eval_labels; rows written before labels: the kind)."""
    return row.get("label") or row.get("evaluation", "")


def metric_name(row: dict) -> str:
    """A row's metric, with its evaluation where the spec has several of that kind: 'rate(owl) (... stories)'."""
    label = label_of(row)
    return row["metric"] if label == row.get("evaluation", "") else f"{row['metric']} ({label})"
