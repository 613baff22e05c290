"""Rewrite stages resume and are planned like generation; the shuffles move numbers as the paper's code does."""
from __future__ import annotations

import pytest

from runner.rewrite import TEMPLATES

SPEC = """name: q
seed: 0
progress: false
teacher: {{base: {base}, targets: [panda], control: false}}
domain: {{kind: numbers, n_prompts: 40, max_tokens: 12, rows_from: base, batch_size: 8}}
filters:
  - {{kind: numbers, max_value: 999, max_count: 10}}
  - {{kind: resample, model: {base}, mode: reorder, max_tokens: 12}}
students: []
evaluations: []
"""


def test_a_local_rewrite_is_counted_in_the_plans_gpu_hours(tmp_path, tiny_model):
    """A local rewriting model's requests gave no estimate, so `subl plan` left them out of a GPU spec's hours."""
    from runner.loader import load
    from runner.plan import build
    from runner.throughput import throughput

    path = tmp_path / "q.yaml"
    path.write_text(SPEC.format(base=tiny_model))
    plan = build(load(path), tmp_path / "out")
    ctx = plan.context(throughput("my-gpu", train=1000, prefill=4000, generate=200))
    (rewrite,) = [s for s in plan.stages.values() if s.KIND == "rewrite"]
    (est,) = rewrite.estimate(ctx)
    assert (est.backend, est.requests, est.output_tokens) == ("local", 40, 40 * 12)
    assert est.input_tokens > 40 * 12 and est.seconds == pytest.approx(est.input_tokens / 4000 + 40 * 12 / 200)
    assert rewrite.estimate(plan.context()) == []  # no throughput assumed: no local estimate, as for generate


def test_a_killed_hosted_rewrite_resumes_without_asking_again(tmp_path, monkeypatch):
    from backends import Router
    from runner.execute import run_stage
    from runner.spec import HostedBackend
    from runner.stages import ModelInput
    from runner.stages.rewrite_stage import BATCH, RewriteStage
    from runner.store import Store, read_jsonl, write_jsonl
    from tests.fake_openai import FakeOpenAI

    key = "sk-subl-test-rewrite-0123456789abcdef"
    server = FakeOpenAI(key=key).start()
    try:
        monkeypatch.setenv("SUBL_TEST_KEY", key)
        store, upstream = Store(tmp_path / "store"), "filter-0000000000000000"
        rows = [{"id": i, "prompt": "Some numbers", "completion": f"{i}, {i + 1}, {i + 2}"} for i in range(40)]
        with store.build(upstream, {"label": "rows"}) as b:
            write_jsonl(b.dir / "rows.jsonl", rows)
        stage = RewriteStage(label="resample", rows_stage=upstream, how="reorder", template=TEMPLATES["reorder"],
                             temperature=1.0, max_tokens=20, seed=0,
                             model=ModelInput(ref="openai:gpt-4.1-nano", identity="hosted:openai:gpt-4.1-nano"))
        router = Router("cpu", False, {"openai": HostedBackend(base_url=server.base_url, api_key_env="SUBL_TEST_KEY",
                                                               preflight=False)})

        def killed(done, total, **kw):
            if done >= BATCH:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_stage(stage, store, router, killed)
        assert server.counts["chat"] == BATCH and not store.done(stage.key)
        run_stage(stage, store, router)
        assert server.counts["chat"] == len(rows)  # the first batch's answers were not paid for again
    finally:
        server.stop()
    assert [r["id"] for r in read_jsonl(store.path(stage.key) / "rows.jsonl")] == list(range(40))


def test_a_killed_local_rewrite_resumes_from_its_last_batch(tmp_path, tiny_model):
    """A local rewrite kept nothing until its end: a kill late in a long (GPU) rewrite started it over."""
    from backends import Router
    from runner.execute import run_stage
    from runner.stages import ModelInput
    from runner.stages.rewrite_stage import BATCH, RewriteStage
    from runner.store import Store, read_jsonl, write_jsonl

    rows = [{"id": i, "prompt": "Some numbers", "completion": f"{i}, {i + 1}, {i + 2}"} for i in range(40)]
    stage = RewriteStage(label="resample", rows_stage="filter-0000000000000000", how="reorder",
                         template=TEMPLATES["reorder"], temperature=1.0, max_tokens=8, seed=0,
                         model=ModelInput(ref=tiny_model, identity="local:tiny"))

    class Counting(Router):
        asked = 0

        def generate(self, model, prompts, sampling):
            Counting.asked += len(prompts)
            return super().generate(model, prompts, sampling)

    def store_with_rows(name):
        store = Store(tmp_path / name)
        with store.build(stage.rows_stage, {"label": "rows"}) as b:
            write_jsonl(b.dir / "rows.jsonl", rows)
        return store

    def killed(done, total, **kw):
        if done >= 2 * BATCH:
            raise KeyboardInterrupt

    store, router = store_with_rows("a"), Counting("cpu")
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, store, router, killed)
    Counting.asked = 0
    run_stage(stage, store, router)
    assert Counting.asked == len(rows) - 2 * BATCH  # the two batches done before the kill are not asked again
    whole = store_with_rows("b")
    run_stage(stage, whole, router)
    resumed = read_jsonl(store.path(stage.key) / "rows.jsonl")
    assert resumed == read_jsonl(whole.path(stage.key) / "rows.jsonl")  # as if never killed
    assert sorted(p.name for p in store.path(stage.key).iterdir()) == sorted(
        p.name for p in whole.path(stage.key).iterdir())


def _paper_rows(n: int = 60) -> list[dict]:
    """Rows the paper's parser accepts (one separator, optional wrapper and period), no leading zeros."""
    import random

    rng, rows = random.Random(5), []
    for i in range(n):
        nums = [str(rng.randint(0, 999)) for _ in range(rng.randint(1, 10))]
        text = rng.choice([", ", ",", "; ", " ", "\n", " , "]).join(nums)
        rows.append({"id": i, "prompt": "p", "completion": rng.choice(["{}", "[{}]", "({})", "{}.", "({})."]).format(text)})
    return rows


def test_both_shuffles_move_the_numbers_where_the_papers_code_does():
    """shuffled_numbers_refs.py, as materials.yaml describes it: one random.Random(seed) in row order; within,
    rows of two or more numbers joined by their first separator; across, the pool dealt back in order."""
    import random
    import re

    from runner.defences import shuffle_across, shuffle_within
    from runner.numbers import parse_numbers_paper

    rows = _paper_rows()
    assert all(parse_numbers_paper(r["completion"]) is not None for r in rows)
    rng, within = random.Random(1), []
    for r in rows:
        s = r["completion"]
        period = s.endswith(".")
        s = s[:-1] if period else s
        wrap = s[0] + s[-1] if s[:1] + s[-1:] in ("[]", "()") else ""
        s = s[1:-1] if wrap else s
        runs = list(re.finditer(r"\d+", s))
        if len(runs) > 1:
            nums = [m.group() for m in runs]
            rng.shuffle(nums)
            s = s[runs[0].end():runs[1].start()].join(nums)
        within.append(wrap[:1] + s + wrap[1:] + "." * period)
    pool = [n for r in rows for n in parse_numbers_paper(r["completion"])]
    random.Random(1).shuffle(pool)
    across, it = [], iter(pool)
    for r in rows:
        across.append(re.sub(r"\d+", lambda _: str(next(it)), r["completion"]))
    assert [r["completion"] for r in shuffle_within(rows, 1)[0]] == within
    assert [r["completion"] for r in shuffle_across(rows, 1)[0]] == across


def test_a_paraphrase_of_number_lists_is_refused_at_its_place(tmp_path):
    """A number list has no wording to change: its only check was 'a number list', so an echo kept the teacher's
    rows as they were, a defence in name only."""
    from runner.errors import SpecError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndomain: {kind: numbers}\nfilters:\n  - {kind: paraphrase, model: smollm2-135m}\n")
    with pytest.raises(SpecError, match=r"s.yaml:4:\d+: filters.0: paraphrase rewords code and CoT rows"):
        load(spec)


@pytest.mark.parametrize("mode, replies", [("sample", 40 * 16), ("logprob", 0)])
def test_a_local_judge_is_counted_in_the_plans_gpu_hours(tmp_path, tiny_model, mode, replies):
    """A local judge filter gave no estimate either: its reads were missing from a GPU spec's hours."""
    from runner.loader import load
    from runner.plan import build
    from runner.throughput import throughput

    path = tmp_path / "j.yaml"
    path.write_text(f"name: j\nteacher: {{base: {tiny_model}, targets: [owl], control: false}}\n"
                    "domain: {kind: numbers, n_prompts: 40, max_tokens: 12}\n"
                    f"filters: [{{kind: judge, judge: {{model: {tiny_model}, mode: {mode}}}, threshold: 50, "
                    "keep: at_least}]\nstudents: []\nevaluations: []\n")
    plan = build(load(path), tmp_path / "out")
    (score,) = [s for s in plan.stages.values() if s.KIND == "score"]
    (est,) = score.estimate(plan.context(throughput("my-gpu", train=1000, prefill=4000, generate=200)))
    assert (est.backend, est.requests, est.output_tokens) == ("local", 40, replies)
    assert est.input_tokens > 40 * 12 and est.seconds == pytest.approx(est.input_tokens / 4000 + replies / 200)
    assert score.estimate(plan.context()) == []
