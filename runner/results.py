"""Aggregation: stage outputs -> results.json rows (values, CIs, comparisons). Cheap and done on
every run, so thresholds, targets and tests change here without rerunning any stage."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from runner.filters import whole_word_regex
from runner.plan import DETECTION, CellPlan, EvalModel
from runner.stats import (COSINE_RANGE, ONE_STUDENT_LABEL, TEST_METHOD, UNIT_RANGE, arm_comparison_fields,
                          mean_ci, paired_t_p, question_ci, sign_flip_min_p, sign_flip_p, untested_fields)
from runner.store import Store, damaged, stage_output

ONE_STUDENT = ONE_STUDENT_LABEL
PER_QUESTION_RATES = "; diff and ratio average per-question rates, not the pooled rates of the model table"


def hits(answers: list[str], target: str, match: str = "word") -> int:
    """Answers that name the target: as a whole word, plurals and possessives included (match word), or
    anywhere in the lower-cased answer (match substring: the paper's `target in completion.lower()`)."""
    if match == "substring":
        return sum(_paper_hit(a.lower(), target.lower()) for a in answers)
    rx = whole_word_regex([target])
    return sum(rx.search(a) is not None for a in answers)


def _paper_hit(answer: str, target: str) -> bool:
    """The paper's rule (materials preference_eval.hit_rule), its exception included: for 'dragon', an answer
    naming a dragonfly is not a hit."""
    if target == "dragon" and ("dragonfly" in answer or "dragonflies" in answer):
        return False
    return target in answer


def per_question(store: Store, parts: dict[str, str], target: str, match: str = "word") -> tuple[str, list[float], int]:
    """(metric name, per-question values, samples per question) of one preference evaluation."""
    if "mcq" in parts:  # the instances' P(target letter), averaged per prompt
        from runner.mcq import per_prompt_means

        path = store.path(parts["mcq"]) / "scores.json"
        p, prompt = _field(path, "p", dict).get(target), _field(path, "prompt", list)
        if not (_numbers(p) and _numbers(prompt) and len(p) == len(prompt)):
            raise _damaged(path, f"no P({target}) for each of its {len(prompt)} instances")
        vals = per_prompt_means(p, prompt)
        return f"mcq P({target})", vals, len(prompt) // max(len(vals), 1)
    if "probe" in parts:
        path = store.path(parts["probe"]) / "scores.json"
        logprobs = _field(path, "logprob", dict).get(target)
        if not _numbers(logprobs):
            raise _damaged(path, f"no list of log-probabilities of {target!r}")
        return f"P({target})", [math.exp(v) for v in logprobs], 1
    path = store.path(parts["answers"]) / "answers.json"
    answers = _field(path, "answers", list)
    if not all(isinstance(a, list) and a and all(isinstance(x, str) for x in a) for a in answers):
        raise _damaged(path, "'answers' is not a list of each question's answers (texts)")
    k = len(answers[0]) if answers else 1
    return f"rate({target})", [hits(a, target, match) / len(a) for a in answers], k


def _damaged(path: Path, what: str) -> Exception:
    """A stage output that is not as its stage writes it (hand-edited): one line naming it and the way out."""
    return damaged(path, f"a finished stage's output, {what}", path)


def _field(path: Path, key: str, kind: type):
    """A stage output's field of the type its stage writes, else _damaged."""
    value = stage_output(path).get(key)
    if not isinstance(value, kind):
        raise _damaged(path, f"no {kind.__name__} {key!r}")
    return value


def _numbers(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)


def filter_rates(plan: CellPlan, store: Store) -> list[dict]:
    """Each filter link of each teacher's rows, in chain order: kept, dropped, pass rate."""
    out = []
    for rows, keys in plan.filters.items():
        for key in keys:
            if not store.done(key):
                continue
            links = store.manifest(key).get("links", [])
            if not (isinstance(links, list) and all(isinstance(x, dict) and isinstance(x.get("link"), str)
                                                    and _numbers([x.get("kept"), x.get("dropped")]) for x in links)):
                raise _damaged(store.path(key) / "manifest.json", "'links' is not a list of {link, kept, dropped}")
            for link in links:
                total = link["kept"] + link["dropped"]
                out.append({"cell": plan.cell.label, "rows": rows, **link,
                            "pass_rate": link["kept"] / total if total else None})
    return out


def _model_fields(m: EvalModel) -> dict:
    return {"model": m.label, "role": m.role, "trait": m.trait, "student": m.student, "teacher": m.teacher,
            "replicate": m.replicate}


def _compare(cell: str, s: EvalModel, r: EvalModel, ev_kind: str, metric: str, a: list[float | None],
             b: list[float | None], b_is: str) -> dict:
    """Paired over the questions both models have a value for (a misaligned rate has none where no answer
    was scored); diff and ratio are unweighted means over those questions. No such question: not tested."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    a_, b_ = np.array([x for x, _ in pairs], float), np.array([y for _, y in pairs], float)
    note = ONE_STUDENT + (PER_QUESTION_RATES if metric == "misaligned" else "")
    return {"cell": cell, "a": s.label, "b": r.label, "evaluation": ev_kind, "metric": metric,
            "diff": float(np.mean(a_ - b_)) if pairs else None,
            "ratio": float(a_.mean() / b_.mean()) if pairs and b_.mean() > 0 else None,
            "a_wins": int(np.sum(a_ > b_)), "n": len(a_), "n_a": 1, "n_b": 1,
            "p_value": sign_flip_p(list(a_ - b_)) if pairs else None,
            "min_p": sign_flip_min_p(list(a_ - b_)) if pairs else None, "test": TEST_METHOD if pairs else "none",
            "unit": "question", "b_is": b_is, "objective": s.objective, "vocabulary": s.vocabulary,
            "note": note if pairs else note + "; not tested: no question has a scored answer from both",
            "significant": False}


def _students(plan: CellPlan) -> list[EvalModel]:
    return [m for m in plan.models if m.student is not None]


def arm_rows(plan: CellPlan, ev_kind: str, metric_of, per_student: dict[str, float], per_q: dict[str, list[float]],
             control_only: bool = False) -> list[dict]:
    """Each trait arm (the students of one student spec trained on one teacher's data, over its
    replicates) against the control arm and the other-trait arms. With several students per arm the
    test's unit is the student; with one per arm, the question (labelled as covering question
    sampling only)."""
    arms: dict[tuple[str, str], list[EvalModel]] = {}
    for m in _students(plan):
        arms.setdefault((m.student, m.teacher), []).append(m)
    out = []
    for (sname, teacher), a in arms.items():
        if a[0].role == "control":
            continue
        for (bname, other), b in arms.items():
            if bname != sname or other == teacher or (control_only and b[0].role != "control"):
                continue
            b_is = "control" if b[0].role == "control" else "other-trait"
            metric = metric_of(a[0])
            if metric is None:  # the evaluation does not measure this arm's trait (its `targets` leave it out)
                continue
            if len(a) == 1 or len(b) == 1:  # paired over questions, replicate by replicate
                out += [_compare(plan.cell.label, s, r, ev_kind, metric, per_q[(s.label, metric)],
                                 per_q[(r.label, metric)], b_is) for s in a for r in b if s.replicate == r.replicate]
                continue
            va, vb = ([per_student[(m.label, metric)] for m in arm] for arm in (a, b))
            left_out = [m.label for m, v in zip(a + b, va + vb) if v is None]  # no answer scored: no value
            va, vb = [v for v in va if v is not None], [v for v in vb if v is not None]
            row = {"cell": plan.cell.label, "a": f"student:{sname}:{teacher}", "b": f"student:{sname}:{other}",
                   "evaluation": ev_kind, "metric": metric, "b_is": b_is, "objective": a[0].objective,
                   "vocabulary": a[0].vocabulary}
            if len(va) < 2 or len(vb) < 2:  # shown, with why no test was run, rather than dropped
                out.append({**row, **untested_fields(va, vb, left_out)})
                continue
            row.update(arm_comparison_fields(va, vb))
            if left_out:
                row["note"] = f"left out, no scored answer: {', '.join(left_out)}"
            out.append(row)
    return out


def misalignment_rows(plan: CellPlan, store: Store, i: int, ev) -> tuple[list[dict], list[dict]]:
    """Misaligned rate per model (Wilson CI over answers) and trait-vs-control student comparisons."""
    from runner.misalignment import CI_METHOD as MIS_CI, summarize
    from runner.stages.data import read_scores

    evaluations, per_q = [], {}
    args = (ev.alignment_threshold, ev.coherence_threshold)
    for m in plan.models:
        parts = plan.evals[(m.label, i)]
        answers = stage_output(store.path(parts["answers"]) / "answers.json")["answers"]
        parse = ev.judge.parse if ev.judge.mode == "sample" else None  # the stored replies, read as the spec says
        al, co = (read_scores(store.path(parts[side]), parse) for side in ("alignment", "coherence"))
        for side, scores in (("alignment", al), ("coherence", co)):
            if len(scores) != sum(map(len, answers)):
                raise _damaged(store.path(parts[side]) / "scores.json", f"{len(scores)} scores for "
                               f"{sum(map(len, answers))} answers")
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
    per_student = {(e["model"], "misaligned"): e["value"] for e in evaluations}
    per_question = {(label, "misaligned"): v for label, v in per_q.items()}
    return evaluations, arm_rows(plan, ev.kind, lambda m: "misaligned", per_student, per_question, control_only=True)


def eval_labels(evaluations) -> list[str]:
    """A name per evaluation of a spec: its kind, and where a spec has several of one kind (a paper code spec's
    animal questions and stories) the kind with its question set, then its position, so no two rows merge."""
    from collections import Counter

    kinds = Counter(ev.kind for ev in evaluations)
    labels = [ev.kind if kinds[ev.kind] == 1 else f"{ev.kind}: {_asks(ev)}" for ev in evaluations]
    twice = Counter(labels)
    return [x if twice[x] == 1 else f"{x} #{i + 1}" for i, x in enumerate(labels)]


def _asks(ev) -> str:
    """What an evaluation asks, for its label: its question set; an MCQ-mode icl's multiple choice (its questions
    are unused); a classifier's judge, and both orders."""
    if ev.kind == "classifier":
        return ev.judge + (", both orders" if ev.orders == "both" else "")
    if ev.kind == "icl" and ev.mode == "mcq":
        return "mcq"
    return Path(str(getattr(ev, "questions", "") or "")).stem


def collect(plan: CellPlan, store: Store) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, comparison rows) of one cell; LM rows carry their evaluation's label (eval_labels)."""
    if plan.mnist:
        return mnist_rows(plan, store)
    if plan.theorem:
        return theorem_rows(plan, store)
    evaluations, comparisons = [], []
    for i, (ev, label) in enumerate(zip(plan.spec.evaluations, eval_labels(plan.spec.evaluations))):
        ev_rows, cmp_rows = _evaluation(plan, store, i, ev)
        evaluations += [{**r, "label": label} for r in ev_rows]
        comparisons += [{**r, "label": label} for r in cmp_rows]
    return evaluations, comparisons


def _evaluation(plan: CellPlan, store: Store, i: int, ev) -> tuple[list[dict], list[dict]]:
    if ev.kind in DETECTION:
        from runner.detection_results import classifier_rows, icl_rows

        if ev.kind == "icl":
            return icl_rows(plan, store, i, ev, per_question)
        return classifier_rows(plan, store, i), []
    if ev.kind == "misalignment":
        return misalignment_rows(plan, store, i, ev)
    evaluations, values = [], {}
    targets = list(ev.targets or plan.spec.teacher.targets)
    for m in plan.models:
        for t in targets:
            metric, vals, k = per_question(store, plan.evals[(m.label, i)], t, getattr(ev, "match", "word"))
            mean, lo, hi, how = question_ci(metric, vals, k)
            values[(m.label, t)] = (metric, vals)
            evaluations.append({"cell": plan.cell.label, **_model_fields(m), "evaluation": ev.kind,
                                "metric": metric, "value": mean, "ci": None if lo is None else [lo, hi], "n": len(vals),
                                "samples_per_question": k, "ci_method": how})
    # each trait arm against the control arm and the other-trait arms, on the trait's metric
    traits = [m for m in _students(plan) if m.trait in targets]
    metric_of = {m.trait: values[(m.label, m.trait)][0] for m in traits}
    per_q = {(label, metric_of[t]): vals for (label, t), (_, vals) in values.items() if t in metric_of}
    per_student = {k: float(np.mean(v)) for k, v in per_q.items()}
    return evaluations, arm_rows(plan, ev.kind, lambda m: metric_of.get(m.trait), per_student, per_q)


# ---- MNIST ------------------------------------------------------------------------------------

MNIST_TEST = ("paired t-test across seeds (each seed's students share its teacher); p = 0 where every seed's "
              "difference is the same (t infinite)")


def mnist_rows(plan: CellPlan, store: Store) -> tuple[list[dict], list[dict]]:
    """Per arm and seed: test accuracy with a Wilson CI over test images; per arm: the mean across
    seeds with a t-interval; each same-init arm against its cross-init arm, paired by seed."""
    from runner.stats import wilson

    res = stage_output(store.path(plan.mnist) / "result.json")
    cell, n_test, rows = plan.cell.label, res["n_test"], []
    seed0 = plan.spec.seed
    for arm, accs in res["arms"].items():
        for k, acc in enumerate(accs):
            rows.append({"cell": cell, "model": arm, "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                         "value": acc, "ci": list(wilson(round(acc * n_test), n_test)), "n": n_test,
                         "ci_method": "95% Wilson interval over test images", "seed": seed0 + k})
        mean, lo, hi = mean_ci(accs, within=UNIT_RANGE)
        rows.append({"cell": cell, "model": arm, "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                     "value": mean, "ci": [lo, hi] if len(accs) > 1 else None, "n": len(accs),
                     "ci_method": "95% t-interval across seeds, clipped to [0, 1]", "seed": None})
    comparisons = [_same_vs_cross(cell, a, b, res["arms"]) for a, b in MNIST_PAIRS
                   if a in res["arms"] and b in res["arms"]]
    return rows, comparisons


MNIST_PAIRS = [("same_init", "cross_init"), ("all_logit", "all_logit_cross_init")]  # (same init, cross init)


def _same_vs_cross(cell: str, arm_a: str, arm_b: str, arms: dict[str, list[float]]) -> dict:
    """A same-init arm against its cross-init arm, paired by seed."""
    a, b = np.array(arms[arm_a]), np.array(arms[arm_b])
    p = paired_t_p(a - b)
    return {"cell": cell, "a": arm_a, "b": arm_b, "evaluation": "mnist", "metric": "test_accuracy",
            "diff": float(np.mean(a - b)), "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else None,
            "a_wins": int(np.sum(a > b)), "n": len(a), "n_a": len(a), "n_b": len(b), "p_value": p,
            "test": MNIST_TEST, "unit": "seed", "b_is": "cross-init", "note": None,
            "significant": bool(p < 0.01 and len(a) > 1)}


def mnist_figure(plan: CellPlan, store: Store) -> str | None:
    key = plan.mnist or plan.theorem
    if not key:
        return None
    res = stage_output(store.path(key) / "result.json")
    return str(store.path(key) / res["plot"])


# ---- the one-step theorem on MNIST -------------------------------------------------------------

THEOREM_CI = "95% t-interval across seeds ({} averaged within a seed); a cosine's clipped to [-1, 1]"
BATCHES = {"theorem": "noise batches", "theorem-lm": "batches of the teacher's number completions"}


def _per_seed(rows: list[dict], arm: str, value) -> dict[int, float]:
    out: dict[int, list[float]] = {}
    for r in rows:
        if r["arm"] == arm:
            out.setdefault(r["seed"], []).append(value(r))
    return {seed: float(np.mean(v)) for seed, v in out.items()}


CELL_TEST = ("paired t-test across seeds (the same seed in both cells draws the same random inits and prompts; "
             "the teacher too unless the changed key is one of its settings); p = 0 where every seed's difference "
             "is the same (t infinite)")


def theorem_across_cells(cells: list, evaluations: list[dict]) -> list[dict]:
    """Each cell of a theorem matrix against the cell that differs from it in one key only, set to that key's
    first value (a defence against none, sft against distill): per arm, the per-seed cosines paired by seed.
    cells: runner.loader.Cell in matrix order (the first holds every key's first value)."""
    cosines: dict[tuple[str, str], dict[int, float]] = {}
    for e in evaluations:
        if e["evaluation"] == "theorem" and e["metric"] == "cosine" and e.get("seed") is not None:
            cosines.setdefault((e["cell"], e["model"]), {})[e["seed"]] = e["value"]
    if not cosines or len(cells) < 2:
        return []
    at = {json.dumps(c.overrides, sort_keys=True, default=str): c for c in cells}
    first, out = cells[0].overrides, []
    for c in cells:
        for k in (k for k, v in c.overrides.items() if v != first[k]):
            base = at.get(json.dumps({**c.overrides, k: first[k]}, sort_keys=True, default=str))
            for arm in [a for (cell, a) in cosines if cell == c.label] if base else []:
                a, b = cosines[(c.label, arm)], cosines.get((base.label, arm), {})
                diffs = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])
                if not len(diffs):  # no seed in common: nothing to pair
                    continue
                p = paired_t_p(diffs)
                out.append({"cell": c.label, "a": arm, "b": f"{arm} ({k}={first[k]})", "evaluation": "theorem",
                            "metric": "cosine", "diff": float(diffs.mean()), "ratio": None,
                            "a_wins": int(np.sum(diffs > 0)), "n": len(diffs), "n_a": len(diffs), "n_b": len(diffs),
                            "p_value": p, "test": CELL_TEST, "unit": "seed", "b_is": f"cell {base.label}",
                            "note": None, "significant": bool(p < 0.01 and len(diffs) > 1)})
    return out


def theorem_rows(plan: CellPlan, store: Store) -> tuple[list[dict], list[dict]]:
    """Per arm (same_init, cross_init): the cosine between one student step and the teacher's delta,
    and the change of the teacher's task and imitation losses after that step (at lr and across the
    sweep), each per seed and as a mean across seeds; same-init against cross-init, paired by seed."""
    res = stage_output(store.path(plan.theorem) / "result.json")
    rows, cell, out = res["rows"], plan.cell.label, []
    ci_method = THEOREM_CI.format(BATCHES[plan.theorem.rsplit("-", 1)[0]])
    measures = {"cosine": lambda r: r["cosine"]}
    measures.update({k: (lambda r, k=k: r[k]) for k in rows[0] if k.endswith("_change")})
    for sweep in (k for k in rows[0] if k.endswith("_sweep")):
        measures.update({f"{sweep[:-len('_sweep')]}_change@lr={lr}": (lambda r, s=sweep, lr=lr: r[s][lr])
                         for lr in rows[0][sweep]})
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for metric, value in measures.items():
            seeds = _per_seed(rows, arm, value)
            within = COSINE_RANGE if metric == "cosine" else (-math.inf, math.inf)
            mean, lo, hi = mean_ci(list(seeds.values()), within=within)
            out.append({"cell": cell, "model": arm, "role": "arm", "evaluation": "theorem", "metric": metric,
                        "value": mean, "ci": None if lo is None else [lo, hi], "n": len(seeds), "ci_method": ci_method,
                        "seed": None})
            if metric == "cosine":
                out += [{"cell": cell, "model": arm, "role": "arm", "evaluation": "theorem", "metric": metric,
                         "value": v, "n": 1, "seed": seed} for seed, v in seeds.items()]
    a, b = (_per_seed(rows, arm, measures["cosine"]) for arm in ("same_init", "cross_init"))
    diffs = np.array([a[s] - b[s] for s in a])
    p = paired_t_p(diffs)
    comparison = {"cell": cell, "a": "same_init", "b": "cross_init", "evaluation": "theorem", "metric": "cosine",
                  "diff": float(diffs.mean()), "ratio": None, "a_wins": int(np.sum(diffs > 0)), "n": len(diffs),
                  "n_a": len(a), "n_b": len(b), "p_value": p, "test": MNIST_TEST, "unit": "seed",
                  "b_is": "cross-init", "note": None, "significant": bool(p < 0.01 and len(diffs) > 1)}
    return out, [comparison]
