"""`make reproduce-all`: run every spec that can run here, skip the rest with a reason,
and end with a summary table (spec, status, headline figure)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner.errors import UserError
from runner.loader import load


def missing_keys(path: Path) -> list[str]:
    envs = {b.api_key_env for c in load(path) for b in c.spec.backends.values()}
    return sorted(e for e in envs if not os.environ.get(e))


def headline(results: dict) -> str:
    if results.get("mnist"):
        s = results["mnist"][0]["summary"]
        return f"same-init {s['same_init']['mean']:.1%} vs cross-init {s['cross_init']['mean']:.1%}"
    mis = [e for e in results.get("evaluations", []) if e.get("evaluation") == "misalignment"]
    if mis:  # the misaligned rate of each student (or, without students, each teacher), with its CI
        shown = [e for e in mis if e["role"] in ("student", "control") and e["model"].startswith("student:")] or \
            [e for e in mis if e["role"] in ("teacher", "control")]
        return "; ".join(f"{e['model']} misaligned {e['value']:.1%} [{e['ci'][0]:.1%}, {e['ci'][1]:.1%}] n={e['n']}"
                         for e in shown)
    cmps = [c for c in results.get("comparisons", []) if c.get("b_is") == "other-trait" or c.get("b_is") == "control"]
    if not cmps:
        return "-"
    best = min(cmps, key=lambda c: c["p_value"])
    ratio = f"{best['ratio']:.2f}x" if best.get("ratio") else f"diff {best['diff']:+.3g}"
    return f"{best['a']} vs {best['b']}: {best['metric']} {ratio}, p={best['p_value']:.2g}"


def main(folders: list[str]) -> int:
    from runner.runs import run_spec

    console = Console(highlight=False, emoji=False, soft_wrap=True)
    specs = sorted(p for f in folders for p in Path(f).glob("*.yaml"))
    rows, failed = [], 0
    for path in specs:
        try:
            keys = missing_keys(path)
            if keys:
                console.print(f"skip {path}: hosted backend key not set ({', '.join(keys)})", markup=False)
                rows.append((str(path), "skipped", f"set {', '.join(keys)}"))
                continue
            console.rule(str(path))
            rows.append((str(path), "ok", headline(run_spec(path, Path("outputs"), console))))
        except UserError as e:
            failed += 1
            console.print(f"error: {e}", markup=False)
            rows.append((str(path), "failed", str(e)))
    table = Table(title="reproduce-all")
    for col in ("spec", "status", "headline"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["specs"]))
