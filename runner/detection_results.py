"""results.json rows of the detection baselines (issue 14): ICL's preference metric per k and rows, with the
paired trait-rows versus control-rows comparison; the classifier's pairwise accuracy and per-row AUROC."""
from __future__ import annotations

import json

import numpy as np

from runner.plan import CellPlan, compared_rows
from runner.stats import TEST_METHOD, arm_comparison_fields, question_ci, sign_flip_min_p, sign_flip_p
from runner.store import Store, stage_output

ICL_NOTE = ("ICL: the metric per question averaged over the draws of k rows; the test covers question sampling "
            "only, not the draw of rows")
BINOMIAL = "two-sided exact binomial test of the accuracy against 50%"
ONE_POSITION = 0.9  # a judge picking one position this often is reading the order, not the rows
EXACT_CI = "exact (Clopper-Pearson) 95% interval over pairs, which excludes 50% exactly when the binomial test rejects it"


def icl_label(rows: str, k: int) -> str:
    return f"icl:{rows}:k={k}"


def icl_rows(plan: CellPlan, store: Store, i: int, ev, per_question) -> tuple[list[dict], list[dict]]:
    """Per (rows, k) and target: the metric per question averaged over seeds, with a t-interval across
    questions; per target and k > 0: the target's rows against the control's (or each other target's),
    paired over questions, and with 2 or more draws (seeds) also across draws (unit: draw), the test that
    covers which rows landed in the context.
    per_question: runner.results.per_question (what a stage's answers or probe say per question)."""
    spec, cell = plan.spec, plan.cell.label
    targets = list(ev.targets or spec.teacher.targets)
    groups: dict[tuple[str, int], list[dict]] = {}
    for e in plan.detection[i]:
        groups.setdefault((e["rows"], e["k"]), []).append(e)
    values, evaluations = {}, []
    for (rows, k), entries in groups.items():
        for t in targets:
            per_seed = [per_question(store, e["parts"], t) for e in entries]
            metric, n_samples = per_seed[0][0], per_seed[0][2]
            vals = list(np.mean([v for _, v, _ in per_seed], axis=0))
            values[(rows, k, t)] = (metric, vals, [float(np.mean(v)) for _, v, _ in per_seed])
            samples = n_samples * len(entries)  # the ICL draws' answers pooled per question
            mean, lo, hi, how = question_ci(metric, vals, samples)
            evaluations.append({
                "cell": cell, "model": icl_label(rows, k), "role": "arm", "trait": rows if rows in targets else None,
                "teacher": None if rows == "none" else rows, "evaluation": "icl", "metric": metric, "value": mean,
                "ci": None if lo is None else [lo, hi], "n": len(vals), "samples_per_question": n_samples,
                "ci_method": how,
                "k": k, "icl_seeds": len(entries), "per_question": vals})
    comparisons = []
    for t in [t for t in targets if t in spec.teacher.targets]:
        for k in ev.k:
            for other, b_is in compared_rows(spec, t) if k else ():
                metric, a, a_draws = values[(t, k, t)]
                _, b, b_draws = values[(other, k, t)]
                comparisons.append(_paired(cell, icl_label(t, k), icl_label(other, k), metric, a, b, b_is, k))
                if min(len(a_draws), len(b_draws)) >= 2:
                    comparisons.append(_across_draws(cell, icl_label(t, k), icl_label(other, k), metric, a_draws,
                                                     b_draws, b_is, k))
    return evaluations, comparisons


def _across_draws(cell: str, a_label: str, b_label: str, metric: str, a: list[float], b: list[float], b_is: str,
                  k: int) -> dict:
    """Trait rows against control rows with each draw's mean over questions as one value, compared as two arms
    (unpaired). Draw s of either teacher's rows uses the same seed, so where both sets of rows line up by prompt
    the two draws hold the same prompts: the arms are then positively correlated, and this unpaired test is
    conservative (it can miss an effect a paired test would see, not claim one that is not there)."""
    return {"cell": cell, "a": a_label, "b": b_label, "evaluation": "icl", "metric": metric, "b_is": b_is,
            **arm_comparison_fields(a, b, unit="draw"), "k": k}


def _paired(cell: str, a_label: str, b_label: str, metric: str, a: list[float], b: list[float], b_is: str,
            k: int) -> dict:
    a_, b_ = np.array(a), np.array(b)
    return {"cell": cell, "a": a_label, "b": b_label, "evaluation": "icl", "metric": metric,
            "diff": float(np.mean(a_ - b_)), "ratio": float(a_.mean() / b_.mean()) if b_.mean() > 0 else None,
            "a_wins": int(np.sum(a_ > b_)), "n": len(a_), "n_a": 1, "n_b": 1, "p_value": sign_flip_p(list(a_ - b_)),
            "min_p": sign_flip_min_p(list(a_ - b_)),
            "test": TEST_METHOD, "unit": "question", "b_is": b_is, "note": ICL_NOTE, "significant": False, "k": k}


def classifier_rows(plan: CellPlan, store: Store, i: int) -> list[dict]:
    """Per (target, rows compared with, judge): pairwise accuracy (exact CI, binomial p against 50%)
    and, with per_row, the AUROC of the per-row yes/no score."""
    from runner.detection import auroc, row_score

    out = []
    for e in plan.detection[i]:
        res = stage_output(store.path(e["key"]) / "classifier.json")
        both = res.get("orders") == "both"
        common = {"cell": plan.cell.label, "model": f"classifier:{e['judge']}" + (":both-orders" if both else ""),
                  "role": "arm", "trait": e["target"],
                  "teacher": e["against"], "evaluation": "classifier",
                  "judge": {"model": e["judge"], "read": e["mode"], "against": e["against"], "b_is": e["b_is"],
                            "orders": res.get("orders", "seeded")}}
        acc, counts = _accuracy(res["pairs"], both, e["mode"] == "top_logprobs")
        out.append({**common, "metric": "pairwise_accuracy", "value": acc["accuracy"], "ci": list(acc["ci"]),
                    "ci_method": EXACT_CI, "n": acc["n"], "counts": counts})
        if res.get("rows"):
            rows = res["rows"]
            out.append({**common, "metric": "auroc", "value": auroc([row_score(r) for r in rows],
                                                                   [r["label"] for r in rows]),
                        "n": len(rows), "ci_method": None,
                        "counts": {"positives": sum(r["label"] for r in rows), "chance": 0.5,
                                   "variant": "per-row yes/no (subl's, not the paper's)"}})
    return out


def _accuracy(pairs: list[dict], both_orders: bool, paper_reading: bool) -> tuple[dict, dict]:
    """The pairwise accuracy and its counts: with both orders, over the pairs both reads decided (the
    position preference cancels); else over every pair's one read (paper_reading, a top log-prob table: neither
    letter listed reads B, as in the paper; a reply that is no letter is left out), with a note when the judge
    picked one position in ONE_POSITION of them."""
    from runner.detection import pairwise_accuracy, verdict, verdict_accuracy

    if both_orders:
        reads = pairs + [p["swapped"] for p in pairs]
        chose = {"chose_a": sum(r["choice"] == "A" for r in reads), "chose_b": sum(r["choice"] == "B" for r in reads)}
        acc = verdict_accuracy([verdict(p, p["swapped"]) for p in pairs])
        counts = {"n_pairs": len(pairs), "n_undecided": acc["n_undecided"], "orders": "both",
                  "test": BINOMIAL + ", over the pairs both orders decided", "note": None}
    else:
        acc = pairwise_accuracy([p["choice"] for p in pairs], [p["truth"] for p in pairs],
                                "B" if paper_reading else None)
        chose = {"chose_a": acc["chose_a"], "chose_b": acc["chose_b"]}
        over = ("over every pair, neither letter listed read as B (the paper's reading)" if paper_reading
                else "over the choices that were a letter")
        counts = {"n_unreadable": acc["n_unreadable"], "test": f"{BINOMIAL}, {over}",
                  "unlisted_as": "B" if paper_reading else None, "note": _position_note(chose, acc["n"])}
    return acc, {**counts, "p_value": acc["p_value"], "chance": 0.5, **chose}


def _position_note(chose: dict, n: int) -> str | None:
    """A note when one letter is ONE_POSITION of the n choices counted (a reply that is no letter is not one)."""
    top = max(chose["chose_a"], chose["chose_b"])
    if not n or top < ONE_POSITION * n:
        return None
    letter = "A" if chose["chose_a"] >= chose["chose_b"] else "B"
    return (f"the judge picked {letter} in {top}/{n} pairs: its choice follows the position, so the accuracy "
            "is the share of pairs whose trait row was shown there, not a detection rate (orders: both cancels it)")


def method_line(spec, ev) -> str:
    """What an icl or classifier evaluation did, for the methods notes."""
    if ev.kind == "icl":
        how = {"logprob": "exact P(target) after the answer prefix (subl's measurement; the paper samples answers "
                          "or asks multiple choice)",
               "mcq": f"the multiple-choice P(target letter), {ev.mcq.instances_per_prompt} shuffles per prompt"}.get(
            spec.icl_mode(ev), f"share of {ev.samples_per_question} sampled answers naming the target as a whole word "
                               "(the paper's in-context script counts substrings)")
        return (f"icl: {spec.icl_model(ev)} answers with k of a teacher's filtered rows as its whole system prompt "
                f"(the paper's format), k in {ev.k}, {len(ev.seeds)} draw(s) of rows; {how}")
    read = ("read from a one-token reply at temperature 0 (read: reply; not the paper's reading)" if ev.read == "reply"
            else "read from the log-probs of 'A' and 'B' as the reply's first token (exact on local and Tinker "
            "judges; on OpenAI ones from "
            f"the first reply token's top {ev.top_logprobs} log-probs, the paper's reading: a letter not listed "
            "counts 0, A needs P(A) > P(B), so neither listed reads B)")
    return (f"classifier: judge {ev.judge} picks the trait row of each A/B pair (the paper's prompt, naming the "
            f"trait's animal where the paper hard-codes 'eagle'; order seeded); {read}"
            + ("; each pair asked in both orders and judged by both reads (subl's variant: the position preference "
               "cancels; a letter missing from a top table takes its smallest listed log-prob; undecided pairs "
               "dropped from the accuracy)" if ev.orders == "both" else "")
            + ("; per-row yes/no AUROC is subl's variant" if ev.per_row else ""))
