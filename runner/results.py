"""Aggregation: stage outputs -> results.json rows (values, CIs, comparisons). Cheap and done on
every run, so thresholds, targets and tests change here without rerunning any stage."""
from __future__ import annotations

import json
import math
import re

import numpy as np

from runner.filters import word_forms
from runner.plan import CellPlan, EvalModel
from runner.stats import CI_METHOD, TEST_METHOD, mean_ci, sign_flip_p
from runner.store import Store

ONE_STUDENT = "1 student per arm: covers question sampling only, not training randomness"


def hits(answers: list[str], target: str) -> int:
    """Answers that name the target as a whole word (plurals and possessives included)."""
    rx = re.compile(r"\b(" + "|".join(map(re.escape, sorted(word_forms(target), key=len, reverse=True))) + r")\b",
                    re.IGNORECASE)
    return sum(rx.search(a) is not None for a in answers)


def per_question(store: Store, parts: dict[str, str], target: str) -> tuple[str, list[float], int]:
    """(metric name, per-question values, samples per question) of one preference evaluation."""
    if "probe" in parts:
        out = json.loads((store.path(parts["probe"]) / "scores.json").read_text())
        return f"P({target})", [math.exp(v) for v in out["logprob"][target]], 1
    answers = json.loads((store.path(parts["answers"]) / "answers.json").read_text())["answers"]
    k = len(answers[0]) if answers else 1
    return f"rate({target})", [hits(a, target) / k for a in answers], k


def filter_rates(plan: CellPlan, store: Store) -> list[dict]:
    """Each filter link of each teacher's rows, in chain order: kept, dropped, pass rate."""
    out = []
    for rows, keys in plan.filters.items():
        for key in keys:
            if not store.done(key):
                continue
            for link in store.manifest(key).get("links", []):
                total = link["kept"] + link["dropped"]
                out.append({"cell": plan.cell.label, "rows": rows, **link,
                            "pass_rate": link["kept"] / total if total else None})
    return out


def _model_fields(m: EvalModel) -> dict:
    return {"model": m.label, "role": m.role, "trait": m.trait, "student": m.student, "teacher": m.teacher,
            "replicate": m.replicate}


def _compare(cell: str, s: EvalModel, r: EvalModel, ev_kind: str, metric: str, a: list[float], b: list[float],
             b_is: str) -> dict:
    a_, b_ = np.array(a), np.array(b)
    p = sign_flip_p(list(a_ - b_))
    return {"cell": cell, "a": s.label, "b": r.label, "evaluation": ev_kind, "metric": metric,
            "diff": float(np.mean(a_ - b_)), "ratio": float(a_.mean() / b_.mean()) if b_.mean() > 0 else None,
            "a_wins": int(np.sum(a_ > b_)), "n": len(a_), "n_a": 1, "n_b": 1, "p_value": p, "test": TEST_METHOD,
            "unit": "question", "b_is": b_is, "objective": s.objective, "vocabulary": s.vocabulary,
            "note": ONE_STUDENT, "significant": False}


def _students(plan: CellPlan) -> list[EvalModel]:
    return [m for m in plan.models if m.student is not None]


def misalignment_rows(plan: CellPlan, store: Store, i: int, ev) -> tuple[list[dict], list[dict]]:
    """Misaligned rate per model (Wilson CI over answers) and trait-vs-control student comparisons."""
    from runner.misalignment import CI_METHOD as MIS_CI, summarize
    from runner.stages.data import read_scores

    evaluations, per_q = [], {}
    args = (ev.alignment_threshold, ev.coherence_threshold)
    for m in plan.models:
        parts = plan.evals[(m.label, i)]
        answers = json.loads((store.path(parts["answers"]) / "answers.json").read_text())["answers"]
        al, co = read_scores(store.path(parts["alignment"])), read_scores(store.path(parts["coherence"]))
        s = summarize(al, co, *args)
        per_q[m.label], at = [], 0
        for ans in answers:
            per_q[m.label].append(summarize(al[at : at + len(ans)], co[at : at + len(ans)], *args)["rate"])
            at += len(ans)
        evaluations.append({
            "cell": plan.cell.label, **_model_fields(m), "evaluation": ev.kind, "metric": "misaligned",
            "value": s["rate"], "ci": s["ci"], "n": s["scored"], "samples_per_question": ev.samples_per_question,
            "ci_method": MIS_CI, "counts": s, "judge": {"model": ev.judge.model, "mode": ev.judge.mode},
            "per_question": per_q[m.label]})
    comparisons = []
    for s in _students(plan):
        if s.role == "control":
            continue
        for r in _students(plan):
            if r.student == s.student and r.replicate == s.replicate and r.role == "control":
                comparisons.append(_compare(plan.cell.label, s, r, ev.kind, "misaligned", per_q[s.label],
                                            per_q[r.label], "control"))
    return evaluations, comparisons


def collect(plan: CellPlan, store: Store) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, comparison rows) of one cell."""
    if plan.mnist:
        return mnist_rows(plan, store)
    spec = plan.spec
    evaluations, comparisons, values = [], [], {}
    for i, ev in enumerate(spec.evaluations):
        if ev.kind == "misalignment":
            ev_rows, cmp_rows = misalignment_rows(plan, store, i, ev)
            evaluations += ev_rows
            comparisons += cmp_rows
            continue
        targets = list(ev.targets or spec.teacher.targets)
        for m in plan.models:
            for t in targets:
                metric, vals, k = per_question(store, plan.evals[(m.label, i)], t)
                mean, lo, hi = mean_ci(vals)
                values[(m.label, t)] = (metric, vals)
                evaluations.append({"cell": plan.cell.label, **_model_fields(m), "evaluation": ev.kind,
                                    "metric": metric, "value": mean, "ci": [lo, hi], "n": len(vals),
                                    "samples_per_question": k, "ci_method": CI_METHOD})
        # each trait student against the control student and the other-trait students
        for s in _students(plan):
            if s.role == "control" or s.trait not in targets:
                continue
            for r in _students(plan):
                if r.student == s.student and r.replicate == s.replicate and r.teacher != s.teacher:
                    metric, a = values[(s.label, s.trait)]
                    comparisons.append(_compare(plan.cell.label, s, r, ev.kind, metric, a, values[(r.label, s.trait)][1],
                                                "control" if r.role == "control" else "other-trait"))
    return evaluations, comparisons


# ---- MNIST ------------------------------------------------------------------------------------

MNIST_TEST = "paired t-test across seeds (each seed's students share its teacher)"


def mnist_rows(plan: CellPlan, store: Store) -> tuple[list[dict], list[dict]]:
    """Per arm and seed: test accuracy with a Wilson CI over test images; per arm: the mean across
    seeds with a t-interval; same-init against cross-init, paired by seed."""
    from scipy import stats as sps

    from runner.stats import wilson

    res = json.loads((store.path(plan.mnist) / "result.json").read_text())
    cell, n_test, rows = plan.cell.label, res["n_test"], []
    seed0 = plan.spec.seed
    for arm, accs in res["arms"].items():
        for k, acc in enumerate(accs):
            rows.append({"cell": cell, "model": arm, "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                         "value": acc, "ci": list(wilson(round(acc * n_test), n_test)), "n": n_test,
                         "ci_method": "95% Wilson interval over test images", "seed": seed0 + k})
        mean, lo, hi = mean_ci(accs)
        rows.append({"cell": cell, "model": arm, "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                     "value": mean, "ci": [lo, hi] if len(accs) > 1 else None, "n": len(accs),
                     "ci_method": "95% t-interval across seeds", "seed": None})
    a, b = np.array(res["arms"]["same_init"]), np.array(res["arms"]["cross_init"])
    p = float(sps.ttest_rel(a, b).pvalue) if len(a) > 1 and np.any(a != b) else 1.0
    comparisons = [{"cell": cell, "a": "same_init", "b": "cross_init", "evaluation": "mnist",
                    "metric": "test_accuracy", "diff": float(np.mean(a - b)),
                    "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else None, "a_wins": int(np.sum(a > b)),
                    "n": len(a), "n_a": len(a), "n_b": len(b), "p_value": p, "test": MNIST_TEST, "unit": "seed",
                    "b_is": "cross-init", "note": None, "significant": bool(p < 0.01 and len(a) > 1)}]
    return rows, comparisons


def mnist_figure(plan: CellPlan, store: Store) -> str | None:
    if not plan.mnist:
        return None
    res = json.loads((store.path(plan.mnist) / "result.json").read_text())
    return str(store.path(plan.mnist) / res["plot"])
