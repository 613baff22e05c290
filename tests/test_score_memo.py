"""Score stages reuse the scores an earlier score stage paid for (same judge settings, same pair) and
send only new pairs; a judge sampling at temperature > 0 is not reused (its seeds follow positions)."""
from __future__ import annotations

import json
import shutil

from runner.stages import ModelInput, RunContext
from runner.stages.data import ScoreStage
from runner.store import Store, write_jsonl


class CountingJudge:
    """A judge whose log-probs over the score candidates peak at len(completion); records every prompt."""

    def __init__(self):
        self.sent: list[str] = []

    def logprobs(self, model, prompts, prefix, targets, space=True):
        self.sent += prompts
        return [[-abs(float(t) - 10 * (len(p) % 10)) for t in targets] for p in prompts]

    def generate(self, model, prompts, sampling):
        self.sent += prompts
        return ["42"] * len(prompts)

    def sample(self, model, prompts, sampling, n, progress=None):
        return [[r] for r in self.generate(model, prompts, sampling)]


def _rows(store: Store, key: str, completions: list[str]) -> str:
    folder = store.path(key)
    folder.mkdir(parents=True)
    write_jsonl(folder / "rows.jsonl", [{"prompt": "p", "completion": c} for c in completions])
    return key


def _run(store: Store, judge: CountingJudge, stage: ScoreStage) -> tuple[list, dict]:
    folder = store.root / "building" / stage.key
    folder.mkdir(parents=True)
    ctx = RunContext(dir=folder, store=store, router=judge)
    stage.run(ctx)
    return json.loads((folder / "scores.json").read_text())["scores"], ctx.extra


JUDGE = ModelInput(ref="j", identity="hosted:x@u:j")


def _stage(rows: str, **kw) -> ScoreStage:
    settings = dict(judge=JUDGE, mode="logprob", template="Rate {prompt} {completion}", answer_prefix="Score:")
    return ScoreStage(label="score", rows_stage=rows, **{**settings, **kw})


def test_a_new_score_stage_sends_only_pairs_no_stage_has_judged(tmp_path):
    store, judge = Store(tmp_path / "out"), CountingJudge()
    first = _rows(store, "filter-a", ["1, 2", "3, 4", "5, 6"])
    scores_a, extra = _run(store, judge, _stage(first))
    assert len(judge.sent) == 3 and extra["scores_reused"] == 0
    # an upstream change: one row gone, two new ones (one of them twice)
    second = _rows(store, "filter-b", ["3, 4", "7, 8, 9", "5, 6", "7, 8, 9"])
    scores_b, extra = _run(store, judge, _stage(second))
    assert len(judge.sent) == 4 and "7, 8, 9" in judge.sent[-1] and extra["scores_reused"] == 3
    assert scores_b == [scores_a[1], scores_b[1], scores_a[2], scores_b[1]]
    # what a fresh store computes for the same rows: the reused scores are the same scores
    fresh = Store(tmp_path / "fresh")
    alone, _ = _run(fresh, CountingJudge(), _stage(_rows(fresh, "filter-b", ["3, 4", "7, 8, 9", "5, 6", "7, 8, 9"])))
    assert alone == scores_b


def test_other_judge_settings_or_a_sampling_judge_judge_again(tmp_path):
    store, judge = Store(tmp_path / "out"), CountingJudge()
    rows = _rows(store, "filter-a", ["1, 2", "3, 4"])
    _run(store, judge, _stage(rows))
    _run(store, judge, _stage(rows, template="Judge {prompt} {completion}"))  # another judge prompt
    assert len(judge.sent) == 4
    _run(store, judge, _stage(rows, seed=7))  # the seed does not change a log-prob judge's scores
    assert len(judge.sent) == 4
    hot = dict(mode="sample", answer_prefix=None, max_tokens=4, temperature=1.0)
    _, extra = _run(store, judge, _stage(rows, **hot))
    _run(store, judge, _stage(rows, seed=1, **hot))
    assert len(judge.sent) == 8 and "scores_reused" not in extra
    assert len(list((store.root / "score_memo").iterdir())) == 2  # the two log-prob judges' settings


def test_a_torn_last_line_is_skipped_and_that_pair_judged_again(tmp_path):
    store, judge = Store(tmp_path / "out"), CountingJudge()
    rows = _rows(store, "filter-a", ["1, 2", "3, 4"])
    _run(store, judge, _stage(rows))
    memo = next((store.root / "score_memo").iterdir())
    lines = memo.read_text().splitlines(keepends=True)
    memo.write_text(lines[0] + lines[1][:20])  # killed in the middle of the second line
    _, extra = _run(store, judge, _stage(_rows(store, "filter-b", ["1, 2", "3, 4"])))
    assert extra["scores_reused"] == 1 and len(judge.sent) == 3
    _, extra = _run(store, judge, _stage(_rows(store, "filter-c", ["3, 4", "1, 2"])))  # the re-judged line is whole
    assert extra["scores_reused"] == 2 and len(judge.sent) == 3


def test_a_score_stage_killed_midway_keeps_the_chunks_it_judged(tmp_path):
    """A long judge run stopped in its third chunk (a kill, an error): the rerun judges only the pairs of
    that chunk and after; the first two chunks' scores were remembered as they came."""
    from runner.judging import CHUNK

    class DyingJudge(CountingJudge):
        def logprobs(self, model, prompts, prefix, targets, space=True):
            if len(self.sent) == 2 * CHUNK:
                raise KeyboardInterrupt
            return super().logprobs(model, prompts, prefix, targets, space)

    store, dying = Store(tmp_path / "out"), DyingJudge()
    rows = _rows(store, "filter-a", [f"{i}, {i + 1}" for i in range(2 * CHUNK + 8)])
    try:
        _run(store, dying, _stage(rows))
        raise AssertionError("the judge should have died")
    except KeyboardInterrupt:
        pass
    assert len(dying.sent) == 2 * CHUNK
    shutil.rmtree(store.root / "building")  # the rerun starts the stage over
    judge = CountingJudge()
    scores, extra = _run(store, judge, _stage(rows))
    assert len(judge.sent) == 8 and extra["scores_reused"] == 2 * CHUNK
    fresh = Store(tmp_path / "fresh")
    alone, _ = _run(fresh, CountingJudge(), _stage(_rows(fresh, "filter-a", [f"{i}, {i + 1}" for i in range(2 * CHUNK + 8)])))
    assert scores == alone


class SeedRecorder(CountingJudge):
    def __init__(self):
        super().__init__()
        self.seeds: list[int] = []

    def generate(self, model, prompts, sampling):
        self.seeds.append(sampling.seed)
        return super().generate(model, prompts, sampling)

    def top_logprobs(self, model, prompts, n, sampling):
        self.seeds.append(sampling.seed)
        return [{"50": 0.0} for _ in prompts]


def test_a_greedy_judge_sends_the_same_requests_for_the_pairs_a_killed_stage_left():
    """At temperature 0 every chunk has the spec's seed: what a killed stage left (pairs 20..) is sent with the
    seed it had in the first run, so the request cache answers the part that was paid for."""
    from backends.base import ModelRef
    from runner.judging import score_pairs

    pairs = [("p", f"c{i}") for i in range(40)]
    for mode, token in (("sample", None), ("logprob", "50")):
        whole, rest = SeedRecorder(), SeedRecorder()
        score_pairs(whole, ModelRef("j"), mode, "{completion}", pairs, seed=7, token=token)
        score_pairs(rest, ModelRef("j"), mode, "{completion}", pairs[20:], seed=7, token=token)
        assert set(whole.seeds) == set(rest.seeds) == {7}
    hot = SeedRecorder()  # sampling judges keep their per-position seeds (and are never resumed from a memo)
    score_pairs(hot, ModelRef("j"), "sample", "{completion}", pairs, seed=7, temperature=1.0)
    assert hot.seeds == [7, 23, 39]


def test_a_prompt_quoting_the_completion_placeholder_is_not_filled_twice():
    from backends.judge import render

    assert render("Task: {prompt}\nAnswer: {completion}", "fill in {completion}", "x = 1") == \
        "Task: fill in {completion}\nAnswer: x = 1"
