"""Review of the detection baselines: a classifier asked in both orders reads every pair both ways, so its seed
(the A/B order of the first read) changes no result and must not rerun the judge."""
from __future__ import annotations

import random
from pathlib import Path

from runner.stages import ModelInput, RunContext
from runner.stages.detection_stage import ClassifierStage
from tests.test_detection import numbers_rows
from tests.test_detection_stages import TINY, PositionBiasedRouter, _classify, _plan


def _stage(**kw) -> ClassifierStage:
    return ClassifierStage(judge=ModelInput(ref="m", identity="weights:x"), trait_stage="t", control_stage="c",
                           target="owl", mode="logprob", **kw)


def test_both_orders_key_ignores_the_seed_and_seeded_order_keeps_it():
    assert _stage(both_orders=True, seed=3).key == _stage(both_orders=True, seed=0).key == _stage(both_orders=True).key
    assert _stage(seed=3).key != _stage(seed=0).key  # seeded: the seed places the trait row at A or B
    assert _stage(seed=0).key == _stage().key  # seed 0 keys do not move


class PromptJudge(PositionBiasedRouter):
    """The position-biased planted judge as a real one is: a function of its prompt (noise seeded by the prompt,
    not by the order of calls)."""

    def logprobs(self, model, prompts, prefix, targets, space=True):
        out = []
        for p in prompts:
            self.rng = random.Random(p)
            out += super().logprobs(model, [p], prefix, targets, space)
        return out


def test_both_orders_results_do_not_depend_on_the_seed(tmp_path, monkeypatch):
    """Why the seed may leave the key: with both orders the accuracy, counts and p read the same for any seed
    (the order seed is forced through classifier_pairs here, as the old stage did)."""
    import runner.detection as det

    trait, control = numbers_rows(60, 1, planted=0.5), numbers_rows(60, 2)
    out, real = [], det.classifier_pairs
    for seed in (0, 3):
        monkeypatch.setattr(det, "classifier_pairs", lambda t, c, a, s, m=None, _seed=seed: real(t, c, a, _seed, m))
        acc, _ = _classify(tmp_path / str(seed), trait, control, "logprob", both_orders=True,
                           router=PromptJudge())
        out.append((acc["value"], acc["n"], acc["counts"]["n_undecided"], acc["counts"]["chose_a"],
                    acc["counts"]["p_value"]))
    assert out[0] == out[1]
    truths = [[p["truth"] for p in real(trait, control, "owl", s)] for s in (0, 3)]
    assert truths[0] != truths[1]  # the seeds did put the pairs in other orders


def test_plan_shares_both_orders_stages_across_seeds(tmp_path, tiny_model):
    body = TINY.format(base=tiny_model, n=8, k="[0]").replace(
        "  - {kind: classifier, max_pairs: 6}\n",
        "  - {kind: classifier, max_pairs: 6, orders: both}\n  - {kind: classifier, max_pairs: 6, orders: both, seed: 3}\n"
        "  - {kind: classifier, max_pairs: 6}\n  - {kind: classifier, max_pairs: 6, seed: 3}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(body)
    det = _plan(spec, tmp_path / "out").cells[0].detection
    keys = [[e["key"] for e in det[i]] for i in (1, 2, 3, 4)]
    assert keys[0] == keys[1]  # both orders: the seed reruns nothing
    assert not set(keys[2]) & set(keys[3])  # seeded: a new seed is a new order, new reads
