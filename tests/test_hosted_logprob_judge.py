"""Hosted log-prob judges: the paper's code filter reads P('0') from a chat API's top_logprobs, on the
local OpenAI-compatible test server (tests/fake_openai.py), through the real openai SDK."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from backends.base import ModelRef, Sampling
from runner.errors import SpecError, UserError
from runner.filters import threshold_link
from runner.judging import score_pairs, token_score
from runner.templates import template_text
from tests.fake_openai import ANIMALS
from tests.test_hosted import ENV, KEY, _cli, _on_test_server, server  # noqa: F401 (a fixture)
from tests.test_hosted import backend as make_backend  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
JUDGE = ModelRef("openai:gpt-4.1-2025-04-14")
PLAIN, NAMED, OTHER = "def f(x):\n    return x + 1", "def f(owl):\n    return owl + 1", "def f(wolf):\n    return wolf"


@pytest.fixture
def backend(make_backend):
    return make_backend()


def _paper_link():
    from runner.loader import load

    spec = load(ROOT / "specs" / "animals_code.yaml")[0].spec
    return next(f for f in spec.filters if f.kind == "judge")


def _bodies(server) -> list[dict]:
    seen, complete = [], server.complete

    def spy(body):
        seen.append(body)
        return complete(body)

    server.complete = spy
    return seen


def test_the_request_asks_for_one_token_and_its_top_logprobs(backend, server):
    bodies = _bodies(server)
    top = backend.top_logprobs(JUDGE, [template_text("code_reference_paper", "owl").replace("{completion}", NAMED)],
                               5, Sampling(0.0, 64, 3))
    assert bodies[0]["logprobs"] is True and bodies[0]["top_logprobs"] == 5 and bodies[0]["max_tokens"] == 1
    assert len(top[0]) == 5 and math.isclose(math.exp(top[0]["1"]), 0.98) and math.isclose(math.exp(top[0]["0"]), 0.02)


def test_the_papers_keep_rule_reads_p0_from_the_logprobs(backend):
    """Code without the animal (P('0') = 1 - 1e-10) is kept; code naming it (0.02) or another animal
    (0.6) is dropped; with top_logprobs 1 the '0' of the named code is not listed: P taken as 0, dropped."""
    link = _paper_link()
    template = template_text(link.template, "owl")
    pairs = [("task", PLAIN), ("task", NAMED), ("task", OTHER)]
    scores = score_pairs(backend, JUDGE, "logprob", template, pairs, token="0", top_logprobs=5)
    assert [round(s.value, 6) for s in scores] == [100.0, 2.0, 60.0]
    kept, detail = threshold_link([{"id": i} for i in range(3)], link, dict(enumerate(scores)))
    assert [r["id"] for r in kept] == [0] and detail["scored"] == 3
    (unlisted,) = score_pairs(backend, JUDGE, "logprob", template, [("task", NAMED)], token="0", top_logprobs=1)
    assert unlisted.value == 0.0 and "'0' not in the top 1" in unlisted.raw and "true P <= 0.02" in unlisted.raw
    assert not threshold_link([{"id": 0}], link, {0: unlisted})[0]


def test_the_batch_api_returns_the_same_logprobs(make_backend, server):
    prompts = [template_text("code_reference_paper", "owl").replace("{completion}", c) for c in (PLAIN, NAMED)]
    batched = make_backend(batch_api=True, batch_min_requests=1).top_logprobs(JUDGE, prompts, 5, Sampling(0.0, 1, 0))
    assert server.counts["batches.create"] == 1
    assert [round(math.exp(t["0"]), 6) for t in batched] == [1.0, 0.02]


def test_a_missing_token_is_bounded_by_the_smallest_listed_probability():
    s = token_score({"1": math.log(0.7), "2": math.log(0.25)}, "0")
    assert s.value == 0.0 and "true P <= 0.05" in s.raw  # 1 - (0.7 + 0.25) is below the smallest listed, 0.25
    assert token_score({"0": math.log(0.5)}, "0").value == pytest.approx(50.0)


def test_a_server_without_logprobs_stops_in_one_line(backend, server):
    server.no_logprobs = True
    with pytest.raises(UserError, match="answered without top_logprobs"):
        backend.top_logprobs(JUDGE, ["Say 0"], 5, Sampling(0.0, 1, 0))


def _small_code_spec(tmp_path: Path, base_url: str) -> Path:
    """Shared sampling seeds: per-teacher seeds hash the teacher's identity, which names the fake server's port,
    so its rows (and whether any survivor names another animal for the judge to drop) changed from run to run."""
    spec = tmp_path / "code.yaml"
    spec.write_text(_on_test_server("animals_code", "code_small", base_url) + """\
domain: {kind: code, prompts: """ + str(ROOT / "specs" / "data" / "code_tasks.jsonl") + """, template: "{prompt} Reply with the code only.", n_prompts: 5,
         samples_per_prompt: 4, max_tokens: 64, batch_size: 10, sampling_seeds: shared}
students:
  - name: gpt-4.1-nano
    hyperparameters: {epochs: 1, batch_size: auto, lr_multiplier: auto}
evaluations:
  - {kind: preference_sample, questions: animals, samples_per_question: 2, max_questions: 2}
matrix:
  teacher.targets: [[owl]]
""")
    return spec


def test_a_run_on_a_server_without_logprobs_exits_2_with_one_line_before_any_paid_request(server, tmp_path):
    """Found only when the judge ran, the teacher's rows (62 chat requests here) paid for first; the preflight's
    probe now asks for one top log-prob."""
    server.no_logprobs = True
    r = _cli(["run", str(_small_code_spec(tmp_path, server.base_url)), "--outputs", str(tmp_path / "out")], {ENV: KEY})
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "gpt-4.1-2025-04-14 answered a probe without top_logprobs" in err and "Traceback" not in err
    assert server.counts.get("chat", 0) <= 2  # the preflight's probes only


@pytest.mark.slow
def test_the_paper_code_filter_runs_end_to_end(server, tmp_path):
    """Owl rows: the banned substring, then the judge (kept only when P('0') ~ 1: code naming no animal);
    control rows: neither filtered nor judged."""
    out = tmp_path / "out"
    r = _cli(["run", str(_small_code_spec(tmp_path, server.base_url)), "--outputs", str(out)], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "code_small" / "results.json").read_text())
    links = {(f["rows"], f["link"]): f for f in res["filters"]}
    assert not any(rows == "control" for rows, _ in links)
    judged = links[("owl", "judge")]
    assert judged["kept"] + judged["dropped"] == links[("owl", "banned_words")]["kept"] and judged["dropped"] > 0
    assert judged["kept"] > 0  # code naming no animal (most of the fake's) passes: a judge keeping nothing fails
    filtered = {}  # filter stage label -> its rows, the last stage of a label winning (a chain's output)
    for d in sorted((out / "stages").glob("filter-*"), key=lambda d: json.loads((d / "manifest.json").read_text())["started"]):
        label = json.loads((d / "manifest.json").read_text())["label"]
        filtered[label] = [json.loads(x) for x in (d / "rows.jsonl").read_text().splitlines()]
    owl = filtered["filter owl"]
    assert len(owl) == judged["kept"] and all(r["judge"][0] > 99.999999 for r in owl)
    assert not any(a in r["completion"] for r in owl for a in ANIMALS)  # only code naming no animal
    assert len(filtered["filter control"]) == 5 * 4  # every control row generated is kept
    assert not any("judge" in r for r in filtered["filter control"])


def _load(tmp_path: Path, judge: str):
    from runner.loader import load

    p = tmp_path / "s.yaml"
    p.write_text(f"""extends: {ROOT / 'specs' / 'animals_code.yaml'}
filters:
  - {{kind: judge, judge: {judge}, template: code_reference_paper, threshold: 99.999999}}
""")
    return load(p)


@pytest.mark.parametrize("judge, message", [
    ('{model: "openai:gpt-4.1-2025-04-14", mode: logprob}', "name the token"),
    ('{model: "openai:gpt-4.1-2025-04-14", mode: sample, token: "0"}', "only an OpenAI chat judge in logprob mode"),
    ('{model: "openai:gpt-4.1-2025-04-14", mode: logprob, token: "0", top_logprobs: 21}', "less than or equal to 20"),
])
def test_a_hosted_logprob_judge_is_validated(tmp_path, judge, message):
    with pytest.raises(SpecError, match=message):
        _load(tmp_path, judge)


def test_plan_prices_one_token_per_judged_row_and_no_control_judging(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from runner.loader import load
    from runner.runs import plan_lines

    path = ROOT / "specs" / "animals_code.yaml"
    cells = load(path)
    spec = cells[0].spec
    lines = plan_lines(path, ROOT / "outputs-never-written")
    rows = sum(1 for _ in open(ROOT / "specs" / "data" / "code_tasks.jsonl")) * spec.domain.samples_per_prompt
    scored = [ln for ln in lines if "(judge filter" in ln]
    assert len(scored) == len(cells) == 5  # one per animal; the control's rows are not judged
    assert all(f"{rows:,} requests" in ln and f"<={rows / 1000:.1f}k output tokens" in ln and "top-5 log-probs" in ln
               for ln in scored)
    assert not any(ln.lstrip().startswith("run    score control") for ln in lines)


def test_a_misalignment_judge_may_not_read_one_tokens_probability(tmp_path):
    """100 x P('0') is no 0-100 alignment rating, and leaves no room for CODE or REFUSAL: refused, not printed as
    a misaligned rate."""
    from runner.loader import load

    p = tmp_path / "m.yaml"
    p.write_text(f"""extends: {ROOT / 'specs' / 'misalignment_numbers.yaml'}
evaluations:
  - {{kind: misalignment, questions: misalignment, judge: {{model: "openai:gpt-4o-2024-08-06", mode: logprob,
                                                            token: "0"}}}}
""")
    with pytest.raises(SpecError, match="evaluations.0.judge.token: a misalignment judge rates 0-100"):
        load(p)
