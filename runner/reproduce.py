"""`subl reproduce` (`make reproduce-all`): run every spec that can run here, skip the rest with a
reason, and end with a summary table (spec, status, headline figure).

A spec that fails is recorded with its one-line reason and the next spec runs; finished stages stay
in the store, so a rerun resumes. An interrupt still prints the table of what ran."""
from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner.display import metric_name, p_text, with_ci
from runner.errors import UserError
from runner.loader import load
from runner.report import add_text_row


def missing_keys(path: Path) -> list[str]:
    """Key variables that the spec's hosted backends (teacher, students or judges) need and lack."""
    from backends.openai_api import hosted_backends_used, key_env

    envs = {key_env(n, c.spec.backends[n].api_key_env) for c in load(path) for n in hosted_backends_used(c.spec)}
    return sorted(e for e in envs if not os.environ.get(e))


def _by_cell(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """cell -> model -> evaluation row (a matrix spec's cells each have their own arms)."""
    out: dict[str, dict[str, dict]] = {}
    for e in rows:
        out.setdefault(e.get("cell", "-"), {})[e["model"]] = e
    return out


def _cells_line(cells: dict[str, dict[str, dict]], line) -> str:
    """line(arms) per cell, prefixed with the cell's label when there are several."""
    return "; ".join((f"[{cell}] " if len(cells) > 1 else "") + line(arms) for cell, arms in cells.items())


def _mnist_line(arms: dict[str, dict]) -> str:
    v = {k: e["value"] for k, e in arms.items()}
    line = f"same-init {v['same_init']:.1%} vs cross-init {v['cross_init']:.1%}"
    if "all_logit_cross_init" in v and "all_logit" in v:
        line += f"; all-logit {v['all_logit']:.1%} vs {v['all_logit_cross_init']:.1%}"
    return line


def headline(results: dict) -> str:
    evaluations = results.get("evaluations", [])
    cos = _by_cell([e for e in evaluations
                    if e.get("evaluation") == "theorem" and e.get("seed") is None and e["metric"] == "cosine"])
    if cos:
        return _cells_line(cos, lambda arms: "; ".join(f"{arm} cosine {with_ci(e['value'], e.get('ci'), '.3f')}"
                                                       for arm, e in arms.items()))
    mnist = _by_cell([e for e in evaluations if e.get("evaluation") == "mnist" and e.get("seed") is None])
    if mnist:
        return _cells_line(mnist, _mnist_line)
    mis = [e for e in results.get("evaluations", []) if e.get("evaluation") == "misalignment"]
    if mis:  # the misaligned rate of each student (or, without students, each teacher), with its CI
        shown = [e for e in mis if e["role"] in ("student", "control") and e["model"].startswith("student:")] or \
            [e for e in mis if e["role"] in ("teacher", "control")]
        return "; ".join(f"{e['model']} misaligned " + ("- (none scored)" if e["value"] is None else
                         with_ci(e["value"], e["ci"], ".1%")) + f" n={e['n']}" for e in shown)
    acc = [e for e in results.get("evaluations", []) if e.get("metric") == "pairwise_accuracy"]
    if acc:  # the classifier: accuracy against 50% per pair of datasets (and judge, where several read them)
        return "; ".join(f"{_pair_label(e, acc)}: " + (
            f"accuracy {with_ci(e['value'], e['ci'], '.1%')}, p={p_text({'p_value': e['counts']['p_value']})}"
            if e.get("n", 1) else "no pair decided") for e in acc)
    cmps = [c for c in results.get("comparisons", []) if c.get("b_is") in ("other-trait", "control")
            and c["p_value"] is not None]
    if not cmps:
        return "-"
    # tests across students (or draws, seeds) over question-level ones, which miss training randomness; of
    # several, how many came out higher at p < 0.05 and the smallest p (either way: its ratio says which)
    pool = [c for c in cmps if c.get("unit", "question") != "question"] or cmps
    best = min(pool, key=lambda c: c["p_value"])
    ratio = f"{best['ratio']:.2f}x" if best.get("ratio") else f"diff {best['diff']:+.3g}"
    cell = f"cell {best['cell']}: " if best.get("cell", "-") != "-" else ""
    higher = sum((c.get("diff") or 0) > 0 and c["p_value"] < 0.05 for c in pool)
    over = " by a test over questions only (1 student per arm: not training randomness)" \
        if all(c.get("unit", "question") == "question" for c in pool) else ""
    tally = f"{higher} of {len(pool)} comparisons higher at p < 0.05{over} (two-sided, uncorrected); smallest p: " \
        if len(pool) > 1 else ""
    return (f"{tally}{cell}{best['a']} vs {best['b']}: {metric_name(best)} {ratio}, p={p_text(best)} "
            f"({best.get('unit', 'question')}s, {best.get('n_a', 1)} v {best.get('n_b', 1)})")


def _pair_label(e: dict, acc: list[dict]) -> str:
    """'owl vs eagle', with the judge and its orders where other accuracies read the same pair of datasets."""
    label = f"{e['trait']} vs {e['teacher']}"
    if sum((a["trait"], a["teacher"]) == (e["trait"], e["teacher"]) for a in acc) < 2:
        return label
    judge = e.get("judge") or {}
    return f"{label} ({judge.get('model', '?')}" + (", both orders)" if judge.get("orders") == "both" else ")")


def run_one(path: Path, outputs: Path, console: Console, max_usd: float | None = None) -> tuple[str, str, float]:
    """(status, headline or reason, the hosted upper bound it ran under) for one spec; one that may cost
    more than max_usd is skipped."""
    from runner.budget import OverBudget, fits, planned_usd, usd_down
    from runner.display import usd
    from runner.gpu import cuda_missing
    from runner.runs import run_spec

    bound = 0.0
    try:
        if cuda_missing(load(path)):
            console.print(f"skip {path}: needs a CUDA GPU (runtime.device: cuda)", markup=False)
            return "skipped", "needs a CUDA GPU; `subl plan` prints its GPU-hours", bound
        keys = missing_keys(path)
        if keys:
            console.print(f"skip {path}: hosted backend key not set ({', '.join(keys)})", markup=False)
            return "skipped", f"set {', '.join(keys)} to run it", bound
        bound = planned_usd(path, outputs)  # a model with no price fails the spec here
        if not fits(bound, max_usd):
            left = "no --max-usd was given" if max_usd is None else f"only {usd_down(max_usd)} of --max-usd is left"
            raise OverBudget(f"its hosted stages may cost up to {usd(bound)}, and {left}")
        console.rule(str(path))
        return "ok", headline(run_spec(path, outputs, console, max_usd=max_usd)), bound
    except OverBudget as e:
        console.print(f"skip {path}: {e}", markup=False)
        return "skipped", str(e), 0.0
    except UserError as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - one broken spec must not stop the others or lose the table
        from backends.openai_api import redact

        reason = redact(f"internal error: {type(e).__name__}: {e}")  # its text may quote a request or a header
    said = reason.startswith(f"{path}:")  # a spec error names the file (and line) already
    console.print(f"error: {reason}" if said else f"error: {path}: {reason}", markup=False)
    return "failed", reason, bound  # it may have spent up to its bound before it failed


def reproduce(folders: list[Path], outputs: Path, console: Console, max_usd: float | None = None) -> int:
    """Run the specs of `folders` in name order; print the summary table; 1 if any failed. max_usd caps the
    hosted upper bounds of all the specs together: each runs only if its bound fits what the ones before left."""
    files = [str(f) for f in folders if Path(f).exists() and not Path(f).is_dir()]
    if files:
        raise UserError(f"{', '.join(files)}: a file, not a folder of specs (subl run runs one spec)")
    missing = [str(f) for f in folders if not Path(f).is_dir()]
    if missing:
        raise UserError(f"no such folder: {', '.join(missing)}")
    specs = sorted(p for f in folders for p in Path(f).glob("*.yaml"))
    if not specs:
        raise UserError(f"no *.yaml specs in {', '.join(map(str, folders))}")
    rows: list[tuple[str, str, str]] = []
    spent = 0.0
    try:
        for path in specs:
            status, text, usd = run_one(path, outputs, console, None if max_usd is None else max_usd - spent)
            rows.append((str(path), status, text))
            spent += usd
    except KeyboardInterrupt:
        rows += [(str(p), "interrupted", "finished stages are kept; rerun to resume") for p in specs[len(rows):]]
        _summary(rows, console)
        raise
    _summary(rows, console)
    return 1 if any(r[1] == "failed" for r in rows) else 0


def _summary(rows: list[tuple[str, str, str]], console: Console) -> None:
    table = Table(title="reproduce-all")
    table.add_column("spec", min_width=max((len(r[0]) for r in rows), default=4))  # whole: it names the file
    table.add_column("status")
    table.add_column("headline")
    for r in rows:
        add_text_row(table, *r)
    console.print(table)
