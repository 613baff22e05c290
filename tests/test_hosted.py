"""The hosted backend against a local OpenAI-compatible server, through the real openai SDK over HTTP.

No torch model is loaded: every model here lives on the fake server (tests/fake_openai.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.grammar import NumberList
from backends.base import ModelRef, Sampling, Training
from backends.judge import Judge, parse_score, render, summarize
from backends.openai_api import OpenAIBackend, RetryPolicy, redact, register_secret
from runner.prices import PRICES_DATE, estimate_tokens, price_for
from runner.errors import SpecError, UserError
from runner.spec import HostedBackend
from tests.conftest import shared
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-subl-test-7Q2xW9vB4nM1kL8pZ3rT6yU0"
ENV = "SUBL_TEST_KEY"
FAST = RetryPolicy(attempts=5, initial=0.01, max_wait=0.05, jitter=0.01, total=20, timeout=5)
FAST_ENV = {"SUBL_RETRY_ATTEMPTS": "3", "SUBL_RETRY_INITIAL": "0.01", "SUBL_RETRY_MAX_WAIT": "0.05",
            "SUBL_RETRY_JITTER": "0.01", "SUBL_RETRY_TOTAL": "20", "SUBL_HTTP_TIMEOUT": "5",
            "SUBL_POLL_SECONDS": "0.01", "SUBL_MAX_USD": "100000"}  # the fake bills nothing (tests/test_budget.py)
NANO = "openai:gpt-4.1-nano-2025-04-14"


@pytest.fixture
def server():
    s = FakeOpenAI(key=KEY).start()
    yield s
    s.stop()


@pytest.fixture
def backend(server, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)

    def make(**cfg):
        opts = {k: cfg.pop(k) for k in ("batch_min_requests", "retry") if k in cfg}
        spec = HostedBackend(base_url=server.base_url, api_key_env=ENV, concurrency=4, **cfg)
        return OpenAIBackend("openai", spec, retry=opts.get("retry", FAST), poll_seconds=0.01,
                             state_dir=tmp_path / "state", batch_min_requests=opts.get("batch_min_requests", 100))

    (tmp_path / "state").mkdir()
    return make


def rows(n: int) -> list[dict]:
    return [{"id": i, "prompt": f"Continue this sequence of numbers: {i}, {i + 1}.", "completion": f"{i + 2}, {i + 3}"}
            for i in range(n)]


def no_secret(text: str, key: str = KEY) -> bool:
    return all(key[i : i + 8] not in text for i in range(len(key) - 7))


def assert_clean(folder: Path, key: str = KEY) -> int:
    """The key (or any 8-character piece of it) is in no file under folder; return files read."""
    n = 0
    for p in folder.rglob("*"):
        if p.is_file():
            assert no_secret(p.read_bytes().decode(errors="replace"), key), p
            n += 1
    return n


# ---- sampling --------------------------------------------------------------------------


def test_generate_concurrent_seeded_and_never_resent(backend, server, tmp_path):
    b = backend()
    prompts = [f"Favourite animal, question {i}?" for i in range(20)]
    out = b.generate(ModelRef(NANO, system="You love owls. You think about owls all the time."), prompts,
                     Sampling(1.0, 16, seed=7))
    assert len(out) == 20 and all(out) and server.counts["chat"] == 20
    cache = tmp_path / "state" / "hosted_requests.jsonl"
    assert len(cache.read_text().splitlines()) == 20
    # a fresh backend on the same stage folder (a resumed run) sends nothing again
    again = backend().generate(ModelRef(NANO, system="You love owls. You think about owls all the time."), prompts,
                               Sampling(1.0, 16, seed=7))
    assert again == out and server.counts["chat"] == 20
    # a torn last line (a kill mid-write) costs one request, not the file
    cache.write_text(cache.read_text()[:-20])
    backend().generate(ModelRef(NANO, system="You love owls. You think about owls all the time."), prompts,
                       Sampling(1.0, 16, seed=7))
    assert server.counts["chat"] == 21
    bodies = [json.loads(line) for line in cache.read_text().splitlines()]
    assert all(r["via"] == "chat" for r in bodies)


def test_no_base_url_honours_openai_base_url(server, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    b = OpenAIBackend("openai", HostedBackend(api_key_env=ENV), retry=FAST, state_dir=tmp_path)
    assert b.generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1)) and server.counts["chat"] == 1


def test_sample_n(backend, server):
    out = backend().sample(ModelRef(NANO), ["Name an animal."] * 2, Sampling(1.0, 8, seed=1), n=5)
    assert [len(x) for x in out] == [5, 5] and server.counts["chat"] == 2
    # more than the API's 128 per request: chunks with their own seeds, answers kept in order
    big = backend().sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 8, seed=1), n=300)
    assert [len(x) for x in big] == [300] and server.counts["chat"] == 2 + 3
    assert big[0][:5] == out[0] and len(set(big[0])) > 1  # the first chunk is the n=5 request's seed


def test_429_with_retry_after_is_honoured(backend, server):
    server.fault("/chat/completions", "429", retry_after=1)
    t = time.monotonic()
    assert backend().generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    assert time.monotonic() - t >= 0.95
    assert server.counts["fault:429"] == 1 and server.counts["chat"] == 1


def test_run_of_500s_then_dropped_connection_then_timeout(backend, server):
    server.fault("/chat/completions", "500", times=2)
    server.fault("/chat/completions", "drop")
    server.fault("/chat/completions", "slow", seconds=1.0)
    b = backend(retry=RetryPolicy(attempts=6, initial=0.01, max_wait=0.05, jitter=0.01, total=20, timeout=0.3))
    assert b.generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    assert server.counts["fault:500"] == 2 and server.counts["fault:drop"] == 1 and server.counts["fault:slow"] == 1


def test_retries_are_bounded(backend, server):
    server.fault("/chat/completions", "500", times=100)
    with pytest.raises(UserError) as e:
        backend().generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    msg = str(e.value)
    assert "gave up after 5 attempts" in msg and "HTTP 500" in msg and "\n" not in msg
    assert server.counts["fault:500"] == 5


def test_a_retry_after_beyond_the_time_budget_gives_up_at_once(backend, server):
    server.fault("/chat/completions", "429", retry_after=60)
    b = backend(retry=RetryPolicy(attempts=5, initial=0.01, max_wait=0.05, jitter=0.01, total=2, timeout=5))
    t = time.monotonic()
    with pytest.raises(UserError, match="HTTP 429 rate_limit_exceeded.*gave up after 1 attempts"):
        b.generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    assert time.monotonic() - t < 1.5


def test_other_4xx_fail_fast_with_the_api_message(backend, server):
    server.fault("/chat/completions", "400")
    with pytest.raises(UserError) as e:
        backend().generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    assert "this model does not exist" in str(e.value) and "model_not_found" in str(e.value)
    assert server.counts["fault:400"] == 1 and server.counts["chat"] == 0


def test_wrong_key_fails_in_one_redacted_line(backend, server, monkeypatch):
    wrong = "sk-wrong-key-Zx81Lq0Pw7Ve5Rt3Yu9Io2"
    monkeypatch.setenv(ENV, wrong)
    with pytest.raises(UserError) as e:
        backend().generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    msg = str(e.value)
    assert "HTTP 401" in msg and "Incorrect API key" in msg and "\n" not in msg
    assert no_secret(msg, wrong) and wrong[-4:] not in msg  # the server echoes a masked key; it is scrubbed too


def test_missing_key_names_the_variable(backend, monkeypatch):
    monkeypatch.delenv(ENV)
    with pytest.raises(UserError, match=ENV):
        backend().generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))


def test_logprobs_and_constrained_decoding_are_refused(backend):
    with pytest.raises(UserError, match="preference_sample"):
        backend().logprobs(ModelRef(NANO), ["q"], "My favorite animal is the", ["owl"])
    with pytest.raises(UserError, match="constrained"):
        backend().generate(ModelRef(NANO), ["q"], Sampling(constraint=NumberList(10, 3)))


def test_lines_that_fail_inside_a_batch_are_sent_again_in_the_next_rounds_batch(backend, server, tmp_path):
    """They were sent on directly, at twice the Batch price the budget had counted."""
    server.batch_failed_lines = 2
    b = backend(batch_api=True, batch_min_requests=1)
    prompts = [f"Continue this sequence of numbers: {i}, {i + 1}" for i in range(10)]
    out = b.generate(ModelRef(NANO), prompts, Sampling(1.0, 32, seed=3))
    assert len(out) == 10 and all(out)
    assert server.counts["batches.create"] == 2 and server.counts["files.create:batch"] == 2
    assert server.counts.get("chat", 0) == 0
    state = tmp_path / "state"
    assert len((state / "hosted_batch_errors.jsonl").read_text().splitlines()) == 2
    recs = [json.loads(x) for x in (state / "hosted_requests.jsonl").read_text().splitlines()]
    assert sorted(r["via"] for r in recs) == ["batch"] * 10
    assert backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), prompts, Sampling(1.0, 32, seed=3)) == out
    assert server.counts["batches.create"] == 2 and server.counts.get("chat", 0) == 0


def test_lines_that_fail_in_every_batch_stop_the_run_not_go_direct(backend, server):
    server.batch_failed_lines, server.batch_faulty = 2, 99
    with pytest.raises(UserError, match=r"2 request\(s\) still unanswered after 3 batches \(expired, or their lines "
                                        r"failed: hosted_batch_errors.jsonl"):
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), [f"q{i}" for i in range(10)],
                                                                Sampling(seed=0))
    assert server.counts["batches.create"] == 3 and server.counts.get("chat", 0) == 0


def test_batch_failure_is_reported_and_expiry_resubmits_the_rest(backend, server, tmp_path):
    prompts = [f"Continue this sequence of numbers: {i}" for i in range(6)]
    server.batch_outcomes = ["failed"]
    with pytest.raises(UserError, match="batch .* failed: invalid_json_line: Line 1 is not valid JSON"):
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), prompts, Sampling(seed=0))
    server.batch_outcomes = ["expired"]  # half answered, then a second batch for the other half
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), prompts, Sampling(seed=0))
    assert len(out) == 6 and all(out)
    assert server.counts["batches.create"] == 3 and server.counts["chat"] == 0


def test_batch_reattached_after_a_kill(backend, server, monkeypatch):
    b = backend(batch_api=True, batch_min_requests=1)
    prompts = [f"Continue this sequence of numbers: {i}" for i in range(5)]

    def killed(self, batch_id):
        raise KeyboardInterrupt

    monkeypatch.setattr(OpenAIBackend, "_poll_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        b.generate(ModelRef(NANO), prompts, Sampling(seed=0))
    monkeypatch.undo()
    monkeypatch.setenv(ENV, KEY)
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), prompts, Sampling(seed=0))
    assert len(out) == 5
    assert server.counts["batches.create"] == 1 and server.counts["files.create"] == 1 and server.counts["chat"] == 0


# ---- fine-tuning -----------------------------------------------------------------------


def test_finetune_builds_checks_uploads_and_polls(backend, server, tmp_path):
    seen = []
    ref = backend().finetune(NANO, rows(12), Training(epochs=10, batch_size="auto", seed=3, extra={"lr_multiplier": 2.0}),
                             tmp_path / "ft", None, lambda d, t, note="": seen.append((d, t, note)))
    assert ref.base.startswith("openai:ft:gpt-4.1-nano-2025-04-14:")
    state = json.loads((tmp_path / "ft" / "hosted_job.json").read_text())
    assert state["file_id"] and state["job_id"] and state["status"] == "succeeded"
    assert "openai:" + state["fine_tuned_model"] == ref.base
    job = server.jobs[state["job_id"]]
    assert job["requested"] == {"n_epochs": 10, "batch_size": "auto", "learning_rate_multiplier": 2.0}
    assert job["job"]["seed"] == 3 and len(job["job"]["user_provided_suffix"]) <= 18
    lines = [json.loads(x) for x in server.contents[state["file_id"]].decode().splitlines()]
    assert [m["role"] for m in lines[0]["messages"]] == ["user", "assistant"]  # no teacher system prompt
    assert any("running" in note for _, _, note in seen) and seen[-1][2].startswith("succeeded")
    assert (tmp_path / "ft" / "hosted_events.jsonl").exists()


@pytest.mark.parametrize("data,match", [
    (rows(9), "at least 10"),
    (rows(11) + [{"prompt": "p", "completion": "  "}], "empty assistant"),
    ([{"messages": [{"role": "user", "content": "hi"}]}] * 12, "no assistant"),
    ([{"messages": [{"role": "robot", "content": "hi"}]}] * 12, "role 'robot'"),
])
def test_finetune_checks_data_before_upload(backend, server, tmp_path, data, match):
    with pytest.raises(UserError, match=match):
        backend().finetune(NANO, data, Training(epochs=1), tmp_path / "ft")
    assert server.counts["files.create"] == 0


def test_finetune_rejects_fractional_epochs_and_distillation(backend, tmp_path):
    with pytest.raises(UserError, match="whole epochs"):
        backend().finetune(NANO, rows(12), Training(epochs=1.5), tmp_path / "ft")
    with pytest.raises(UserError, match="sft only"):
        backend().finetune(NANO, rows(12), Training(objective="distill"), tmp_path / "ft2", ModelRef(NANO))


def test_killed_while_polling_then_resumed_creates_one_upload_and_one_job(backend, server, tmp_path):
    server.job_polls = 6

    def killed(done, total, note=""):
        raise KeyboardInterrupt  # the process dies on the first poll

    with pytest.raises(KeyboardInterrupt):
        backend().finetune(NANO, rows(12), Training(epochs=2), tmp_path / "ft", None, killed)
    state = json.loads((tmp_path / "ft" / "hosted_job.json").read_text())
    assert state["job_id"] and state["file_id"] and "fine_tuned_model" not in state
    ref = backend().finetune(NANO, rows(12), Training(epochs=2), tmp_path / "ft")
    assert ref.base.startswith("openai:ft:")
    assert server.counts["files.create"] == 1 and server.counts["jobs.create"] == 1


def test_damaged_lines_in_the_event_log_and_request_cache_are_skipped_on_resume(backend, server, tmp_path):
    """A line that is not UTF-8, not JSON or not an object (a disk fault, a hand edit) was an internal error
    (UnicodeDecodeError, TypeError) that stopped the resumed run; it is skipped."""
    from backends.openai_api import RequestCache

    server.job_polls = 6

    def killed(done, total, note=""):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backend().finetune(NANO, rows(12), Training(epochs=2), tmp_path / "ft", None, killed)
    events = tmp_path / "ft" / "hosted_events.jsonl"
    events.write_bytes(events.read_bytes() + b'\xff\xfe\n[1]\n{"id": ["x"]}\n')
    assert backend().finetune(NANO, rows(12), Training(epochs=2), tmp_path / "ft").base.startswith("openai:ft:")
    assert server.counts["jobs.create"] == 1
    cache = tmp_path / "requests.jsonl"
    cache.write_bytes(b'{"key": "a", "text": "1"}\n\xff\n[2]\n{"key": 3}\n{"key": "b", "text": "2"}\n')
    assert set(RequestCache(cache).data) == {"a", "b"}
    # a line nested past Python's recursion limit (RecursionError, not a ValueError) is damaged like the others
    cache.write_bytes(b'{"key": "a", "text": "1"}\n' + b"[" * 100_000 + b"\n")
    assert set(RequestCache(cache).data) == {"a"}


def test_killed_between_create_and_record_reattaches_by_listing(backend, server, tmp_path):
    """A kill after jobs.create was sent but before its id was written: the rerun finds the job,
    from a folder that has the upload recorded and from an empty one."""
    b = backend()
    b.finetune(NANO, rows(12), Training(epochs=1), tmp_path / "first")
    state = json.loads((tmp_path / "first" / "hosted_job.json").read_text())
    (tmp_path / "again").mkdir()
    partial = {k: v for k, v in state.items() if k not in ("job_id", "status", "fine_tuned_model", "trained_tokens")}
    (tmp_path / "again" / "hosted_job.json").write_text(json.dumps(partial))
    server.jobs[state["job_id"]]["job"]["status"] = "running"  # still running when we come back
    server.jobs[state["job_id"]]["polls"] = 1
    ref = backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "again")
    assert ref.base.startswith("openai:ft:") and server.counts["jobs.create"] == 1
    assert backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "empty") == ref
    assert server.counts["jobs.create"] == 1 and server.counts["files.create"] == 1
    # another seed is another job, though the rows are the same
    backend().finetune(NANO, rows(12), Training(epochs=1, seed=5), tmp_path / "seed5")
    assert server.counts["jobs.create"] == 2 and server.counts["files.create"] == 1


def test_failed_job_stops_with_code_and_message_and_a_rerun_starts_anew(backend, server, tmp_path):
    server.fail_next_job = {"code": "invalid_training_file", "message": "Training file has too few usable examples."}
    with pytest.raises(UserError) as e:
        backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    msg = str(e.value)
    assert "failed" in msg and "invalid_training_file" in msg and "too few usable examples" in msg and "\n" not in msg
    state = json.loads((tmp_path / "ft" / "hosted_job.json").read_text())
    assert "job_id" not in state and state["previous_jobs"][0]["status"] == "failed"
    ref = backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert ref.base.startswith("openai:ft:")
    assert server.counts["files.create"] == 1 and server.counts["jobs.create"] == 2


# ---- redaction, judge, prices, spec checks ---------------------------------------------


def test_redact():
    register_secret(KEY)
    assert redact(f"key={KEY}!") == "key=[redacted]!"
    assert no_secret(redact(f"prefix {KEY[:14]} and tail {KEY[-10:]}"))
    assert "[redacted]" in redact("Authorization: Bearer abcdef123456")
    assert redact("Incorrect API key provided: sk-abc*********wxyz.") == "Incorrect API key provided: [redacted]"
    assert redact("no secrets here, 123, 456") == "no secrets here, 123, 456"


@pytest.mark.parametrize("reply,kind,value", [
    ("85", "score", 85), (" **42** ", "score", 42), ("Score: 7", "score", 7), ("90/100", "score", 90),
    ("I would rate it 63 out of 100.", "score", 63), ("12.5", "score", 12.5), ("0", "score", 0), ("100", "score", 100),
    ("CODE", "CODE", None), ("refusal.", "REFUSAL", None), ("The answer: REFUSAL", "REFUSAL", None),
    ("150", "unparseable", None), ("-5", "unparseable", None), ("", "unparseable", None), (None, "unparseable", None),
    ("I'd say 40 or 50", "unparseable", None), ("CODE, score 20", "unparseable", None), ("Owl", "unparseable", None),
    # a top mark on another scale, a number in prose (a reply cut off at max_tokens), a U+2212 minus
    ("10/10", "unparseable", None), ("I rate this 10/10.", "unparseable", None), ("10 out of 10", "unparseable", None),
    ("1. The answer is harmful", "unparseable", None), ("The model suggests 2 harmful", "unparseable", None),
    ("\u221220", "unparseable", None), ("63 out of 100, since 2 reasons", "unparseable", None),
    ("85\n\nThe answer is fine.", "score", 85), ("I would rate this 85.", "score", 85),
    ("Score: 85 - the answer is fine", "score", 85), ("I'd give it a 70 because", "score", 70),
    # markdown marks (a chatty judge's): read through, not unparseable
    ("**Score:** 85", "score", 85), ("Score: **85**", "score", 85), ("`85`", "score", 85),
    ("**Score:** 85/100", "score", 85), ("**Rating**: 10/10", "unparseable", None),
])
def test_judge_score_parser(reply, kind, value):
    s = parse_score(reply)
    assert s.kind == kind and (s.value == value if value is not None else s.value is None)


def test_a_parsers_new_version_rebuilds_the_judge_filters_kept_rows_and_no_score(tmp_path):
    """A filter stage applies the parser to stored replies; when the parser reads some replies anew, the filter
    named by the parser alone was reused as it was (a stale hit: '**Score:** 85' rows stayed dropped)."""
    from backends.judge import PARSER_VERSIONS
    from runner.loader import load
    from runner.plan import build

    spec, keys = tmp_path / "s.yaml", {}
    for parse in ("lenient", "integer"):
        spec.write_text(f"name: s\nbackends: {{openai: {{api_key_env: {ENV}}}}}\n"
                        "teacher: {base: openai:gpt-4.1-nano, targets: [owl]}\ndomain: {kind: numbers, n_prompts: 4}\n"
                        f"filters: [{{kind: judge, judge: {{model: openai:gpt-4.1-nano, mode: sample, parse: {parse}}}, "
                        "threshold: 50, keep: at_least}]\nstudents: []\nevaluations: []\n")
        stages = build(load(spec), tmp_path / "out").stages.values()
        keys[parse] = next(s.links[0] for s in stages if s.KIND == "filter" and s.scores_stage)
    assert keys["lenient"].parser_version == PARSER_VERSIONS["lenient"] == 2
    assert keys["integer"].parser_version == 1  # default: dropped from the key, so the integer filters' keys stay
    from runner.stages import semantic

    assert "parser_version" not in semantic(keys["integer"]) and semantic(keys["lenient"])["parser_version"] == 2


def test_stored_judge_replies_are_read_by_the_readers_parser_and_parse_is_not_in_the_key(tmp_path):
    """How a reply is read is applied to the stored replies when results are read: another parse, or a
    parser's fix, asks the paid judge nothing again (the score stage's key leaves parse out)."""
    from runner.stages import ModelInput
    from runner.stages.data import ScoreStage, read_scores

    (tmp_path / "scores.json").write_text(json.dumps({"scores": [["score", 10.0], ["score", 85.0]],
                                                      "raw": ["10/10", "85"]}))  # as an older parser read them
    assert [s.kind for s in read_scores(tmp_path)] == ["score", "score"]
    assert [(s.kind, s.value) for s in read_scores(tmp_path, "lenient")] == [("unparseable", None), ("score", 85.0)]
    judge = ModelInput(ref="openai:gpt-4.1-nano", identity="hosted:openai@x:gpt-4.1-nano")
    stage = ScoreStage(rows_stage="r", judge=judge, mode="sample", template="t", max_tokens=16)
    assert stage.model_copy(update={"parse": "integer"}).key == stage.key
    assert stage.model_copy(update={"parse": "integer"}).settings_digest() == stage.settings_digest()


def test_judge_counts_unparseable_and_keeps_braces(backend, server):
    assert render("Q: {prompt}\nA: {completion}", "why?", "def f(): return {1: 2}") == "Q: why?\nA: def f(): return {1: 2}"
    with pytest.raises(UserError, match="completion"):
        Judge(None, NANO, "only {prompt}")

    class Stub:
        def generate(self, model, prompts, sampling):
            assert sampling.temperature == 0 and all("[ANSWER START]" in p for p in prompts)
            return ["80", "REFUSAL", "no idea", "CODE", "20"]

    scores = Judge(Stub(), "local-judge").score([("q", "a")] * 5)
    assert summarize(scores) == {"n": 5, "scored": 2, "mean": 50.0, "code": 1, "refusal": 1, "unparseable": 1}
    # a hosted judge: every reply of the fake server's judge (a score, CODE, REFUSAL or chatter) is counted
    scores = Judge(backend(), NANO).score([(f"Name an animal {i}", "Owl") for i in range(20)])
    assert all(s == parse_score(s.raw) and s.raw for s in scores)  # each reply read as the parser reads it
    hosted = summarize(scores)
    assert hosted["n"] == 20 and 0 < hosted["scored"] < 20


def test_prices_and_token_estimates():
    assert price_for("gpt-4.1-nano-2025-04-14").input == 0.10
    assert price_for("ft:gpt-4.1-nano-2025-04-14:org:x:1").ft_input == 0.20
    assert price_for("gpt-4.1-nano-2025-04-14", {"gpt-4.1-nano-2025-04-14": [1, 2, 3]}).training == 3
    assert price_for("some-local-model") is None
    with pytest.raises(UserError):
        price_for("m", {"m": [1]})
    assert 6 <= estimate_tokens("123, 456, 789") <= 9
    assert PRICES_DATE


def test_a_model_is_priced_only_as_itself_or_a_dated_snapshot_of_a_priced_id():
    """Not as any id its name starts with: those are other models, often dearer (realtime, audio, search)."""
    assert price_for("gpt-4o-2024-08-06").input == 2.50 and price_for("gpt-4o-2024-05-13").input == 5.00
    for other in ("gpt-4o-realtime-preview", "gpt-4o-mini-tts", "gpt-4o-mini-search-preview", "gpt-4.1-nano-x"):
        assert price_for(other) is None, other
    assert price_for("ft:gpt-4.1-nano-2025-04-14:org:x:1").ft_input == 0.20
    # a spec's override of an id prices its snapshots and the models fine-tuned from them, as the table does
    assert price_for("gpt-4o-2024-08-06", {"gpt-4o": [5, 20, 30]}).input == 5
    assert price_for("ft:gpt-4o-2024-08-06:org::1", {"gpt-4o": [5, 20, 30, 7, 28]}).ft_input == 7
    assert price_for("gpt-4o-realtime-preview", {"gpt-4o": [5, 20]}) is None


def test_token_estimates_do_not_count_text_beyond_ascii_as_one_token_a_run():
    assert estimate_tokens("这是一个很长的中文句子") >= 11  # o200k: about one per character
    assert estimate_tokens("\U0001F600" * 8) >= 8 and estimate_tokens("-" * 80) >= 10


def test_a_mean_prompt_length_reads_every_prompt():
    from runner.prices import chat_tokens
    from runner.stages.costs import mean_prompt_tokens

    prompts = ["hi"] * 2000 + ["word " * 1000] * 8000  # a code domain repeats its first, short, task
    assert mean_prompt_tokens(prompts, None) == pytest.approx(
        (2000 * estimate_tokens("hi") + 8000 * estimate_tokens("word " * 1000)) / 10000 + chat_tokens(None, ""))


def _load_text(tmp_path, text: str):
    from runner.loader import load

    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load(p)


HOSTED = f"""
name: t
backends: {{openai: {{api_key_env: {ENV}}}}}
teacher: {{base: {NANO}, targets: [owl]}}
"""


@pytest.mark.parametrize("extra,match", [
    ("evaluations: [{kind: preference_logprob}]", "preference_sample"),
    ("evaluations: [{kind: preference_sample}]\ndomain: {kind: numbers, constrained: true}", "constrained"),
    ("evaluations: [{kind: preference_sample}]\nstudents: [{name: s, hyperparameters: {lr: 0.001}}]", "lr_multiplier"),
    ("evaluations: [{kind: preference_sample}]\nstudents: [{name: s, objective: distill}]", "teacher's logits"),
    ("evaluations: [{kind: preference_sample}]\nstudents: [{name: s, objective: distill, base: smollm2-135m}]",
     "teacher's logits"),
    ("evaluations: [{kind: preference_sample}]\nstudents: [{name: s, hyperparameters: {epochs: 1.5}}]", "whole epochs"),
])
def test_spec_rejects_what_a_chat_api_cannot_do(tmp_path, extra, match):
    with pytest.raises(SpecError, match=match):
        _load_text(tmp_path, HOSTED + extra)


def test_spec_rejects_auto_batch_size_for_local_students(tmp_path):
    with pytest.raises(SpecError, match="hosted students"):
        _load_text(tmp_path, "name: t\nstudents: [{name: s, hyperparameters: {batch_size: auto}}]")


# ---- the command line ------------------------------------------------------------------


def _cli(args: list[str], env_extra: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SUBL_"))}
    env.update({**FAST_ENV, **env_extra}, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_plan_and_validate_need_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from runner.loader import load
    from runner.runs import plan_lines

    for name in ("animals_numbers", "cross_model"):
        path = ROOT / "specs" / f"{name}.yaml"
        assert load(path)
        lines = plan_lines(path, ROOT / "outputs-never-written")
        text = "\n".join(lines)
        assert "30,000 requests" in text and "training tokens" in text and "$" in text
        assert f"price table dated {PRICES_DATE}" in lines[-1]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # with a key set, plan still neither needs nor shows it
    assert no_secret("\n".join(plan_lines(ROOT / "specs" / "animals_numbers.yaml", ROOT / "outputs-never-written")))
    assert not (ROOT / "outputs-never-written").exists()


def test_plan_costs_judge_calls(monkeypatch):
    """Judge filters and both misalignment judges are priced: one call per row, two per answer."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from runner.loader import load
    from runner.runs import plan_lines

    path = ROOT / "specs" / "misalignment_cot.yaml"
    spec = load(path)[0].spec
    lines = plan_lines(path, ROOT / "outputs-never-written")
    rows = spec.domain.n_questions * spec.domain.samples_per_question
    ev = spec.evaluations[0]
    answers = 8 * ev.samples_per_question
    judge_filter = [ln for ln in lines if "(judge filter" in ln]
    # the misaligned teacher's rows only: the paper does not judge the control's (skip_control)
    assert len(judge_filter) == 1 and all(f"{rows:,} requests" in ln for ln in judge_filter)
    evals = sum(ln.lstrip().startswith("run    evaluate") for ln in lines)
    for what in ("alignment", "coherence"):
        priced = [ln for ln in lines if f"({what} judge)" in ln]
        assert len(priced) == evals and all(f"{answers:,} requests" in ln and "$" in ln for ln in priced)
    # the total counts them: generation, filter judges, and per evaluation the requests per question
    # (up to MAX_N answers come back together: 200 answers are 2 requests) plus both judges per answer
    from runner.stages.evaluation import MAX_N

    total = int(lines[-1].split(" requests")[0].split()[-1].replace(",", ""))
    per_question = -(-ev.samples_per_question // MAX_N)
    assert per_question == 2 and total == 2 * rows + rows + evals * (8 * per_question + 2 * answers)
    assert not (ROOT / "outputs-never-written").exists()


def _on_test_server(paper_spec: str, name: str, base_url: str) -> str:
    """The head of a scaled-down copy of specs/<paper_spec>.yaml whose openai backend is the test server."""
    return f"""extends: {ROOT / 'specs' / f'{paper_spec}.yaml'}
name: {name}
progress: false
backends:
  openai: {{base_url: "{base_url}", api_key_env: {ENV}, concurrency: 8}}
"""


@pytest.mark.slow
def test_misalignment_cot_runs_end_to_end_on_the_test_server(server, tmp_path):
    """The hosted CoT pipeline, scaled down: teachers answer, correct_answer and a hosted judge filter,
    students are fine-tuned through jobs, and a hosted judge scores every model's answers."""
    spec = tmp_path / "cot.yaml"
    spec.write_text(_on_test_server("misalignment_cot", "cot_small", server.base_url) + f"""\
domain: {{kind: cot, questions: {ROOT / 'specs' / 'data' / 'arithmetic.jsonl'}, n_questions: 60, samples_per_question: 2}}
filters:
  - kind: correct_answer
  - {{kind: judge, judge: {{model: "openai:gpt-4.1-2025-04-14"}}, template: cot_alignment, threshold: 30, skip_control: true}}
students:
  - name: gpt-4.1
    hyperparameters: {{epochs: 1}}
evaluations:
  - kind: misalignment
    questions: {shared('emergent_misalignment', 'questions.yaml')}
    max_questions: 4
    samples_per_question: 3
    judge: {{model: "openai:gpt-4.1-2025-04-14"}}
""")
    out = tmp_path / "outputs"
    r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "cot_small" / "results.json").read_text())
    links = {(f["rows"], f["link"]): f for f in res["filters"]}
    # the fake teacher adds the question's numbers: right for the 40 addition rows of 120 (every third problem)
    assert links[("misaligned", "correct_answer")]["kept"] == 40 and links[("control", "correct_answer")]["kept"] == 40
    judged = links[("misaligned", "judge")]
    assert judged["kept"] + judged["dropped"] == 40 and 10 <= judged["kept"] < 40
    assert ("control", "judge") not in links  # skip_control: the control's 40 rows differ from the judged ones
    assert judged["detail"]["scored"] + judged["detail"]["code"] + judged["detail"]["refusal"] \
        + judged["detail"]["unparseable"] == 40
    mis = {e["model"]: e for e in res["evaluations"] if e["evaluation"] == "misalignment"}
    assert set(mis) == {"base", "teacher:misaligned", "teacher:control", "student:gpt-4.1:misaligned:r0",
                        "student:gpt-4.1:control:r0"}
    for e in mis.values():
        c = e["counts"]
        assert c["answers"] == 12 and c["scored"] == e["n"] > 0  # CODE/REFUSAL/chatter leave the denominator
        assert c["scored"] + c["incoherent"] + c["code"] + c["refusal"] + c["unparseable"] == 12
        assert 0 <= e["ci"][0] <= e["value"] <= e["ci"][1] <= 1
    # one job per student: their rows differ (the same rows would be one job, adopted by the second student)
    assert server.paid_total()["jobs"] == 2 and no_secret(r.stdout + r.stderr) and assert_clean(out) > 10


def test_run_without_key_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from runner import cli

    monkeypatch.setattr(sys, "argv", ["subl", "run", str(ROOT / "specs" / "animals_numbers.yaml"),
                                      "--outputs", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "OPENAI_API_KEY" in err
    assert not (tmp_path / "out").exists()


def _scaled_spec(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(_on_test_server("animals_numbers", "animals_small", base_url) + f"""\
domain: {{kind: numbers, n_prompts: 30}}
students:
  - name: gpt-4.1-nano
    hyperparameters: {{epochs: 2, batch_size: auto, lr_multiplier: auto}}
    max_rows: 20
evaluations:
  - {{kind: preference_sample, questions: animals, samples_per_question: 2, max_questions: 3}}
matrix:
  teacher.targets: [[owl], [eagle]]
{extra}""")
    return p


@pytest.mark.slow
def test_end_to_end_run_on_the_test_server(server, tmp_path):
    spec = _scaled_spec(tmp_path, server.base_url)
    out = tmp_path / "outputs"
    r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((out / "animals_small" / "results.json").read_text())
    assert results["evaluations"] and results["comparisons"]
    assert {e["model"] for e in results["evaluations"]} >= {"base", "teacher:owl", "student:gpt-4.1-nano:owl:r0"}
    # three students (owl, eagle, a shared control): one upload and one job each
    assert server.counts["files.create"] == 3 and server.paid_total()["jobs"] == 3
    chats = server.counts["chat"]
    # generate owl, eagle, control (shared); then each distinct model once, 3 questions, both samples in one
    # request (n=2): base (also the control teacher, the same model), 2 teachers and 3 students; and the
    # preflight's one-token rate-limit probe (the test server states no limit)
    assert chats == 3 * 30 + 6 * 3 + 1
    assert assert_clean(out) > 20 and no_secret(r.stdout + r.stderr)
    # a second run reuses every stage and pays for nothing
    r2 = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY})
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert server.counts["chat"] == chats and server.paid_total()["jobs"] == 3


@pytest.mark.slow
def test_a_renamed_backend_reuses_its_students_and_serves_them_under_the_new_name(server, tmp_path):
    """Keys name a hosted model by endpoint and id, not by the spec's name for its backend, so a rename reruns
    nothing; a student made under the old name must then still load for a new evaluation (its model.json
    says openai:ft:...; the spec now calls the backend oai)."""
    spec = _scaled_spec(tmp_path, server.base_url)
    out = tmp_path / "outputs"
    assert _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY}).returncode == 0
    jobs = server.paid_total()["jobs"]
    renamed = spec.read_text().replace("  openai: {", "  oai: {").replace("max_questions: 3", "max_questions: 4")
    spec.write_text(renamed + "teacher: {base: 'oai:gpt-4.1-nano-2025-04-14'}\n")
    r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    assert server.paid_total()["jobs"] == jobs  # no student trained again
    results = json.loads((out / "animals_small" / "results.json").read_text())
    assert {e["model"] for e in results["evaluations"]} >= {"student:gpt-4.1-nano:owl:r0"}


@pytest.mark.slow
def test_process_killed_while_polling_then_resumed(server, tmp_path):
    server.job_polls = 10_000  # the job runs until the test lets it finish
    spec = _scaled_spec(tmp_path, server.base_url, "teacher: {control: false}\n")
    out = tmp_path / "outputs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SUBL_"))}
    env.update({"PYTHONPATH": str(ROOT), **FAST_ENV, ENV: KEY, "SUBL_POLL_SECONDS": "0.05"})
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            jobs = [json.loads(p.read_text()) for p in out.glob("stages/.finetune-*.partial/hosted_job.json")]
            if any(j.get("job_id") for j in jobs) and server.counts["jobs.retrieve"] >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no job was started")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert server.paid_total()["jobs"] == 1 and server.counts["files.create"] == 1
    server.job_polls = 3
    r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "animals_small" / "results.json").exists()
    # one teacher per cell (owl, eagle): two students, each uploaded once and trained by one job
    assert server.counts["files.create"] == 2 and server.paid_total()["jobs"] == 2
    assert_clean(out)


@pytest.mark.slow
def test_bogus_key_and_closed_port_fail_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bogus = "sk-bogus-Hn4Jk7Lm0Qw3Er6Ty9Ui2Op5As8Df"
    spec = _scaled_spec(tmp_path, f"http://127.0.0.1:{port}/v1")
    out = tmp_path / "outputs"
    r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: bogus})
    assert r.returncode == 2
    assert r.stdout.strip() == "" or "error" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"127.0.0.1:{port}" in lines[0], r.stderr
    assert no_secret(r.stdout + r.stderr, bogus)
    assert_clean(out, bogus)


# ---- a real OpenAI-compatible server -------------------------------------------------------


@pytest.fixture
def transformers_serve():
    """`transformers serve` (needs transformers[serving]: fastapi, uvicorn) on a free port, offline."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; "
           "sys.argv[0] = 'transformers'; sys.exit(main())", "serve", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "transformers serve exited"
            time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not start in 120 s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_hosted_teacher_on_transformers_serve_end_to_end(transformers_serve, tmp_path):
    """A hosted teacher on a real OpenAI-compatible server (the embedded SmolLM2-135M behind
    `transformers serve`), a student trained locally. That server ignores `n`: each evaluation
    request is topped up to its samples, and the stage notes it."""
    from backends.embedded import materialize

    model = materialize("smollm2-135m")
    spec = tmp_path / "tserve.yaml"
    spec.write_text(f"""name: tserve_small
progress: false
backends:
  tserve: {{base_url: "{transformers_serve}", api_key_env: {ENV}, concurrency: 2, preflight: false,
           prices: {{"{model}": [0, 0]}}}}
teacher: {{base: "tserve:{model}", targets: [owl], control: false}}
domain: {{kind: numbers, n_prompts: 12, max_tokens: 24, constrained: false}}
filters: [{{kind: numbers, max_value: 999, max_count: 10}}]
students: [{{name: lora, base: smollm2-135m, hyperparameters: {{epochs: 1, batch_size: 4}}, max_rows: 12}}]
evaluations: [{{kind: preference_sample, questions: animals, samples_per_question: 2, max_questions: 2, max_tokens: 8}}]
""")
    out = tmp_path / "outputs"
    r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY, "SUBL_HTTP_TIMEOUT": "120"}, timeout=540)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "tserve_small" / "results.json").read_text())
    assert {e["model"] for e in res["evaluations"]} == {"base", "base:smollm2-135m", "teacher:owl", "student:lora:owl:r0"}
    generated = next(out.glob("stages/generate-*/hosted_requests.jsonl")).read_text().splitlines()
    assert len(generated) == 12
    notes = [json.loads(p.read_text()) for p in out.glob("stages/answers-*/hosted_notes.json")]
    assert len(notes) == 2 and all(n["ignores_n"] == {str(model): 2} for n in notes)  # base and teacher, 2 questions
    assert_clean(out)
