"""Turn evaluation stage outputs into results.json rows: values, CIs and comparisons."""
from __future__ import annotations

import json
import math

import numpy as np

from runner.pipeline import Plan
from runner.stats import CI_METHOD, TEST_METHOD, mean_ci, sign_flip_p
from runner.store import Store


def per_question(store: Store, key: str, target: str) -> tuple[str, list[float], int]:
    """(metric name, per-question values, samples per question) of one evaluation output."""
    out = json.loads((store.path(key) / "scores.json").read_text())
    if out["kind"] == "preference_logprob":
        return f"P({target})", [math.exp(v) for v in out["logprob"][target]], 1
    hits = out["hits"][target]
    k = len(out["answers"][0]) if out["answers"] else 1
    return f"rate({target})", [h / k for h in hits], k


def filter_rates(plan: Plan, store: Store, cell: str) -> list[dict]:
    """Each filter stage's links: kept, dropped, pass rate (and a judge's score summary)."""
    out = []
    for n in plan.nodes:
        if n.kind != "filter" or not store.done(n.stage.key):
            continue
        m = store.manifest(n.stage.key)
        for link in m.get("links", []):
            total = link["kept"] + link["dropped"]
            out.append({"cell": cell, "rows": n.stage.label.removeprefix("filter "), **link,
                        "pass_rate": link["kept"] / total if total else None})
    return out


def misalignment_rows(plan: Plan, store: Store, cell: str, i: int, ev) -> tuple[list[dict], list[dict]]:
    """Misaligned rate per model (Wilson CI over answers) and trait-vs-control student comparisons
    (paired over questions, on per-question rates)."""
    from runner.misalignment import CI_METHOD as MIS_CI, summarize, to_score

    evaluations, per_q = [], {}
    for m in plan.models:
        out = json.loads((store.path(plan.evals[(m.label, i)]) / "scores.json").read_text())
        args = (ev.alignment_threshold, ev.coherence_threshold)
        flat = [(to_score(a), to_score(c)) for qa, qc in zip(out["alignment"], out["coherence"]) for a, c in zip(qa, qc)]
        s = summarize([a for a, _ in flat], [c for _, c in flat], *args)
        per_q[m.label] = [summarize([to_score(x) for x in qa], [to_score(x) for x in qc], *args)["rate"]
                          for qa, qc in zip(out["alignment"], out["coherence"])]
        evaluations.append({
            "cell": cell, "model": m.label, "role": m.role, "trait": m.target, "evaluation": ev.kind,
            "metric": "misaligned", "value": s["rate"], "ci": s["ci"], "n": s["scored"],
            "samples_per_question": ev.samples_per_question, "ci_method": MIS_CI, "counts": s,
            "judge": {"model": ev.judge.model, "mode": ev.judge.mode}, "per_question": per_q[m.label],
        })
    comparisons = []
    for s in plan.students:
        if s["role"] == "control":
            continue
        for r in plan.students:
            if r["student"] == s["student"] and r["replicate"] == s["replicate"] and r["role"] == "control":
                a, b = np.array(per_q[s["label"]]), np.array(per_q[r["label"]])
                comparisons.append({
                    "cell": cell, "a": s["label"], "b": r["label"], "evaluation": ev.kind, "metric": "misaligned",
                    "diff": float(np.mean(a - b)), "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else None,
                    "a_wins": int(np.sum(a > b)), "n": len(a), "p_value": sign_flip_p(list(a - b)),
                    "test": TEST_METHOD, "b_is": "control", "objective": s["objective"], "vocabulary": None,
                })
    return evaluations, comparisons


def collect(plan: Plan, store: Store, cell: str) -> tuple[list[dict], list[dict]]:
    spec = plan.spec
    evaluations, comparisons, values = [], [], {}
    for i, ev in enumerate(spec.evaluations):
        if ev.kind == "misalignment":
            ev_rows, cmp_rows = misalignment_rows(plan, store, cell, i, ev)
            evaluations += ev_rows
            comparisons += cmp_rows
            continue
        targets = list(ev.targets or spec.teacher.targets)
        for m in plan.models:
            for t in targets:
                metric, vals, k = per_question(store, plan.evals[(m.label, i)], t)
                mean, lo, hi = mean_ci(vals)
                values[(m.label, i, t)] = vals
                evaluations.append({
                    "cell": cell, "model": m.label, "role": m.role, "trait": m.target, "evaluation": ev.kind,
                    "metric": metric, "value": mean, "ci": [lo, hi], "n": len(vals), "samples_per_question": k,
                    "ci_method": CI_METHOD,
                })
        # each trait student against the control student and the other-trait students
        for s in plan.students:
            t = s["teacher"]
            if s["role"] == "control" or t not in targets:
                continue
            rivals = [r for r in plan.students if r["student"] == s["student"] and r["replicate"] == s["replicate"]
                      and r["teacher"] != t]
            for r in rivals:
                a, b = np.array(values[(s["label"], i, t)]), np.array(values[(r["label"], i, t)])
                comparisons.append({
                    "cell": cell, "a": s["label"], "b": r["label"], "evaluation": ev.kind,
                    "metric": per_question(store, plan.evals[(s["label"], i)], t)[0],
                    "diff": float(np.mean(a - b)), "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else None,
                    "a_wins": int(np.sum(a > b)), "n": len(a), "p_value": sign_flip_p(list(a - b)),
                    "test": TEST_METHOD, "b_is": "control" if r["role"] == "control" else "other-trait",
                    "objective": s["objective"], "vocabulary": s["vocabulary"] if s["objective"] == "distill" else None,
                })
    return evaluations, comparisons
