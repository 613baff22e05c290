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


def collect(plan: Plan, store: Store, cell: str) -> tuple[list[dict], list[dict]]:
    spec = plan.spec
    evaluations, comparisons, values = [], [], {}
    for i, ev in enumerate(spec.evaluations):
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
            if t == "control" or t not in targets:
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
                    "test": TEST_METHOD, "b_is": "control" if r["teacher"] == "control" else "other-trait",
                    "objective": s["objective"], "vocabulary": s["vocabulary"] if s["objective"] == "distill" else None,
                })
    return evaluations, comparisons
