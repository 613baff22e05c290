"""What breaks real hosted runs, on the test server: lost responses, kills at every step of the
create/poll/read cycle, long listings, partial servers, refused and black-holed hosts. The
server's ledger must show exactly one paid object (upload, batch, job) per stage.

Run as a script, this module is the process that the kill tests kill:
    python -m tests.test_hosted_faults finetune|batch BASE_URL OUTPUTS
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from backends.base import ModelRef, Sampling, Training
from backends.openai_api import OpenAIBackend, RetryPolicy, redact, register_secret, require_keys
from backends.paid_objects import GRACE_ENV, KILL_ENV, job_suffix
from runner.prices import inference_cost, price_for
from runner.errors import UserError
from runner.spec import HostedBackend
from tests.fake_openai import FakeOpenAI
from tests.test_hosted import (ENV, FAST, KEY, NANO, ROOT, _cli, _scaled_spec, assert_clean,  # noqa: F401
                               backend, no_secret, rows, server)

STAGES = {"finetune": "finetune-0123456789abcdef", "batch": "generate-fedcba9876543210"}
DEFAULTS = {"SUBL_RETRY_ATTEMPTS": "8", "SUBL_RETRY_INITIAL": "1", "SUBL_RETRY_MAX_WAIT": "60",  # as shipped
            "SUBL_RETRY_JITTER": "1", "SUBL_RETRY_TOTAL": "900", "SUBL_HTTP_TIMEOUT": "600"}
PROMPTS = [f"Continue this sequence of numbers: {i}, {i + 1}" for i in range(10)]


@pytest.fixture(autouse=True)
def short_grace(monkeypatch):
    monkeypatch.setenv(GRACE_ENV, "0.05")


def ledger(server: FakeOpenAI) -> dict[str, dict[str, int]]:
    return {tag: dict(c) for tag, c in server.ledger.items()}


# ---- a create whose response is lost ---------------------------------------------------


@pytest.mark.parametrize("path", ["/files", "/fine_tuning/jobs"])
def test_lost_response_of_a_finetune_create_pays_once(backend, server, tmp_path, path):
    server.fault(path, "lost", method="POST")
    ref = backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert ref.base.startswith("openai:ft:") and server.counts["fault:lost"] == 1
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}}


@pytest.mark.parametrize("path", ["/files", "/batches"])
def test_lost_response_of_a_batch_create_pays_once(backend, server, path):
    server.fault(path, "lost", method="POST")
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out) and server.counts["fault:lost"] == 1 and server.counts["chat"] == 0
    assert ledger(server) == {"adhoc": {"files": 1, "batches": 1}}


def test_a_lost_job_create_on_a_model_alias_is_adopted_by_its_snapshot(backend, server, tmp_path):
    """The API names a job made on `gpt-4.1-nano` by `gpt-4.1-nano-2025-04-14`: the lookup after a lost
    response must still find it, not pay for a second job."""
    server.fault("/fine_tuning/jobs", "lost", method="POST")
    backend().finetune("openai:gpt-4.1-nano", rows(12), Training(epochs=1), tmp_path / "ft")
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}} and server.counts["fault:lost"] == 1


def test_the_same_training_under_another_stage_key_adopts_the_job(backend, server, tmp_path):
    """A filter edit that keeps every row (a threshold no score lies between) gives the students a new stage key
    but the same training: the job is found by its digest and adopted; nothing is uploaded or paid again."""
    from runner.core import enter_stage, leave_stage

    refs = []
    for key in ("finetune-aaaa1111", "finetune-bbbb2222"):
        tokens = enter_stage(key, tmp_path / key)
        try:
            refs.append(backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / key))
        finally:
            leave_stage(tokens)
    assert refs[0] == refs[1] and ledger(server) == {"finetune-aaaa1111": {"files": 1, "jobs": 1}}
    assert json.loads((tmp_path / "finetune-bbbb2222" / "hosted_job.json").read_text())["adopted_from"] == "finetune-aaaa1111"
    backend().finetune(NANO, rows(12), Training(epochs=1, seed=7), tmp_path / "other-seed")  # other training: paid
    assert server.counts["jobs.create"] == 2


def two_stages_at_once(backend, tmp_path) -> dict[str, ModelRef | UserError]:
    """Two stages (other keys, the same training) fine-tune at the same time, in threads, as a run's
    trait and control students do; each stage's model, or the UserError it stopped with."""
    import threading

    from runner.core import enter_stage, leave_stage

    out: dict[str, ModelRef | UserError] = {}

    def train(key: str) -> None:
        tokens = enter_stage(key, tmp_path / key)
        try:
            out[key] = backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / key)
        except UserError as e:
            out[key] = e
        finally:
            leave_stage(tokens)

    threads = [threading.Thread(target=train, args=(k,)) for k in ("finetune-aaaa1111", "finetune-bbbb2222")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_two_students_with_the_same_training_at_once_pay_for_one_job(backend, server, tmp_path):
    """Two stages of one run (a trait and a control student whose teachers wrote the same rows) train at the
    same time: the second waits for the first's create and adopts its job. The upload is slowed so that,
    without that, both would look up, find nothing, and each pay for a job."""
    server.fault("/files", "slow", method="POST", seconds=0.5)
    refs = two_stages_at_once(backend, tmp_path)
    assert len(refs) == 2 and len(set(refs.values())) == 1 and server.counts["jobs.create"] == 1
    assert all(isinstance(r, ModelRef) for r in refs.values()) and server.paid_total() == Counter(files=1, jobs=1)


def test_two_processes_with_the_same_training_at_once_pay_for_one_job(server, tmp_path):
    """Two processes sharing a store (two `subl run`, or Ray workers) fine-tune the same rows for stages of
    other keys at once: a file lock beside the stages makes the second adopt the first's job."""
    server.fault("/files", "slow", method="POST", seconds=0.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SUBL_"))}
    env.update(PYTHONPATH=str(ROOT), **{ENV: KEY, GRACE_ENV: "0.05", "SUBL_POLL_SECONDS": "0.01"})
    procs = [subprocess.Popen([sys.executable, "-m", "tests.test_hosted_faults", f"finetune@{key}", server.base_url,
                               str(tmp_path / "out")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for key in ("finetune-aaaa1111", "finetune-bbbb2222")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1 and server.counts["jobs.create"] == 1
    assert server.paid_total() == Counter(files=1, jobs=1)


def test_a_502_on_job_create_waits_lists_and_adopts(backend, server, tmp_path, monkeypatch):
    """A 502 may come from a gateway whose origin created the job: the retry waits the grace period (a listing
    can show a new job late), lists, and adopts it instead of creating a second."""
    from backends import paid_objects

    slept = []
    monkeypatch.setattr(paid_objects.time, "sleep", lambda s: slept.append(s))
    server.fault("/fine_tuning/jobs", "502_done", method="POST")
    b = backend()
    b.finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert server.counts["fault:502_done"] == 1 and server.counts["jobs.create"] == 1
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}} and b.grace in slept


# ---- listings ----------------------------------------------------------------------------


def test_adoption_reads_every_page_and_filters_by_metadata(backend, server, tmp_path):
    b = backend(batch_api=True, batch_min_requests=1)
    ref = b.finetune(NANO, rows(12), Training(epochs=1, seed=1), tmp_path / "a")
    b.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    job = next(iter(server.jobs.values()))["job"]
    batch = next(iter(server.batches.values()))["batch"]
    for i in range(250):  # newer objects push ours past two pages of 100
        server.add_file(f"other-{i}.jsonl", "fine-tune", b"{}\n")
        server.add_file(f"other-{i}.jsonl", "batch", b"{}\n")
        jid, bid = server.new_id("ftjob-"), server.new_id("batch_")
        server.jobs[jid] = {"job": {**job, "id": jid, "seed": 1000 + i}, "polls": 99, "events": []}  # same tags
        server.batches[bid] = {"batch": {**batch, "id": bid, "metadata": {"subl_stage": "other"}}, "polls": 99}
    again = backend(batch_api=True, batch_min_requests=1)
    assert again.finetune(NANO, rows(12), Training(epochs=1, seed=1), tmp_path / "empty") == ref
    # a fresh state folder for the batch: the request cache is empty, the batch is found by listing
    fresh = OpenAIBackend("openai", again.cfg, retry=FAST, poll_seconds=0.01, state_dir=tmp_path, batch_min_requests=1)
    assert len(fresh.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))) == 10
    # (the batch's answers are read back from the listing; its input file is not needed again, but adopted
    # across pages where it is: a kill between its upload and the batch's create)
    upload = server.files[batch["input_file_id"]]
    assert fresh._upload(upload["filename"], b"x" * upload["bytes"], "batch", "batch upload").id == upload["id"]
    assert ledger(server) == {"adhoc": {"files": 2, "jobs": 1, "batches": 1}}
    gets = [p for m, p, _ in server.log if m == "GET"]
    assert any(p.startswith("/v1/fine_tuning/jobs?") and "metadata%5Bsubl_digest%5D=" in p and "after=" in p
               for p in gets)
    assert any(p.startswith("/v1/files?") and "after=" in p for p in gets)
    assert any(p.startswith("/v1/batches?") and "after=" in p for p in gets)


def test_students_on_identical_rows_but_other_models_or_seeds_never_share_a_job(backend, server, tmp_path):
    b = backend()
    refs = {b.finetune(m, rows(12), Training(epochs=1, seed=s), tmp_path / f"{i}-{s}")
            for i, m in enumerate((NANO, "openai:gpt-4.1-mini-2025-04-14")) for s in (0, 1)}
    with pytest.raises(UserError, match="other training data or settings"):
        b.finetune(NANO, rows(12), Training(epochs=2), tmp_path / "0-0")
    assert len(refs) == 4 and ledger(server)["adhoc"]["jobs"] == 4
    assert len(job_suffix(STAGES["finetune"], "0" * 16)) <= 18


# ---- fine-tuning faults ------------------------------------------------------------------


def test_moderation_failure_after_training_stops_in_one_line_with_one_job(backend, server, tmp_path):
    server.fail_next_job = {"code": "invalid_training_file",
                            "message": "The job failed due to an unsafe training file: it violates the usage policies."}
    with pytest.raises(UserError) as e:
        backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert "unsafe training file" in str(e.value) and "\n" not in str(e.value)
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}}


def test_an_adopted_jobs_failure_says_the_rerun_uploads_its_own_file(backend, server, tmp_path):
    """Two stages with the same training share one job; when it fails, the stage that uploaded says a rerun
    starts a new job on its file, the one that adopted the job (no file of its own) says a rerun uploads."""
    server.fail_next_job = {"code": "invalid_training_file", "message": "Training file has too few usable examples."}
    errors = [str(e) for e in two_stages_at_once(backend, tmp_path).values() if isinstance(e, UserError)]
    assert server.counts["jobs.create"] == 1 and len(errors) == 2
    ends = sorted(msg.split("(")[-1] for msg in errors)
    assert ends == ["rerun to start a new job on the same uploaded file)",
                    "rerun to upload the training file and start a new job)"]
    assert all("too few usable examples" in msg and "\n" not in msg for msg in errors)


def test_more_than_a_page_of_new_events_between_two_polls_are_all_logged(backend, server, tmp_path):
    advance = server.advance_job

    def busy(jid):  # 250 events land before the first poll reads them
        if not server.jobs[jid].get("busy"):
            server.jobs[jid]["busy"] = True
            for i in range(250):
                server._event(jid, "info", f"Step {i + 1}/250", {"step": i + 1, "total_steps": 250}, "metrics")
        return advance(jid)

    server.advance_job = busy
    backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    logged = [json.loads(x) for x in (tmp_path / "ft" / "hosted_events.jsonl").read_text().splitlines()]
    ids = [e["id"] for e in logged]
    assert len(ids) == len(set(ids)) == len(next(iter(server.jobs.values()))["events"])  # every event, once
    steps = [e["data"]["step"] for e in logged if "step" in (e["data"] or {})]
    assert steps[:250] == list(range(1, 251))  # oldest first


def test_active_job_limit_and_a_paused_job_are_waited_out(backend, server, tmp_path):
    """A slot at the limit of active jobs frees in hours: waited out past the retry policy's attempts (5 here)."""
    server.fault("/fine_tuning/jobs", "active_limit", method="POST", times=12)
    server.job_pauses, server.job_polls = 2, 5
    notes = []
    backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft", None,
                       lambda d, t, note="": notes.append(note))
    assert server.counts["fault:active_limit"] == 12 and any(n.startswith("paused") for n in notes)
    assert sum(n.startswith("waiting for a fine-tuning slot") for n in notes) == 12
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}}


def test_a_slot_not_freed_in_time_stops_in_one_line_and_a_rerun_reuses_the_upload(backend, server, tmp_path):
    from dataclasses import replace

    server.fault("/fine_tuning/jobs", "active_limit", method="POST", times=1000)
    with pytest.raises(UserError, match=r"no fine-tuning slot freed within 0.2 s, SUBL_JOB_SLOT_WAIT") as e:
        backend(retry=replace(FAST, slot_wait=0.2)).finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert "\n" not in str(e.value) and ledger(server) == {"adhoc": {"files": 1}}
    server.faults.clear()
    backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}}


def test_the_daily_job_limit_stops_at_once_and_a_rerun_reuses_the_upload(backend, server, tmp_path):
    server.fault("/fine_tuning/jobs", "daily_limit", method="POST", times=1)
    with pytest.raises(UserError, match=r"daily number of fine-tuning jobs for this model: rerun later"):
        backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert server.counts["fault:daily_limit"] == 1 and ledger(server) == {"adhoc": {"files": 1}}  # no retry
    backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert ledger(server) == {"adhoc": {"files": 1, "jobs": 1}}


# ---- batch faults ------------------------------------------------------------------------


@pytest.mark.parametrize("minimum", [1, 10])
def test_finalizing_then_cancelled_batch_stops_and_a_rerun_sends_the_rest(backend, server, tmp_path, minimum):
    """With a minimum of 10, the call (10 requests) is big enough for the Batch API and what the cancelled batch
    left (5) is not: it must still go to a batch, since sent direct it would cost twice the budgeted price."""
    server.batch_outcomes = ["cancelled"]
    with pytest.raises(UserError, match="cancelled with 5 request"):
        backend(batch_api=True, batch_min_requests=minimum).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    out = backend(batch_api=True, batch_min_requests=minimum).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out) and server.counts["batches.create"] == 2 and server.counts["chat"] == 0


def test_a_batch_over_the_enqueued_token_limit_is_sent_again_in_parts_that_fit(backend, server, tmp_path):
    """OpenAI refuses a batch whose input tokens, with those queued, pass the model's enqueued-token limit (free,
    nothing answered): it was a failed run. The limit its message names is learned and the calls split to it."""
    whole = sum(server.input_tokens(b) for b in (
        {"messages": [{"role": "user", "content": p}]} for p in PROMPTS))
    server.batch_token_limit = whole // 3
    make = lambda: backend(batch_api=True, batch_min_requests=1)  # noqa: E731
    out = make().generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    seen = server.batch_tokens_seen
    assert len(out) == 10 and all(out) and server.counts["chat"] == 0
    assert seen[0] == whole and len(seen) >= 4 and all(t <= whole // 3 for t in seen[1:])  # refused, then parts
    assert sum(seen[1:]) == whole  # every request sent once in the parts
    notes = json.loads((tmp_path / "state" / "hosted_notes.json").read_text())
    assert notes["batch_enqueued_token_limit"] == {"gpt-4.1-nano": 1}
    before = len(seen)
    again = make().generate(ModelRef(NANO), [p + " and on" for p in PROMPTS], Sampling(seed=0))
    assert all(again) and len(seen) > before + 1 and all(t <= whole // 3 for t in seen[before:])
    assert len([b for b in server.batches.values() if b["batch"]["status"] == "failed"]) == 1  # learned: no refusal
    spec = HostedBackend(base_url=server.base_url, api_key_env=ENV, concurrency=4)
    (tmp_path / "direct").mkdir()
    direct = OpenAIBackend("openai", spec, retry=FAST, poll_seconds=0.01, state_dir=tmp_path / "direct")
    assert out == direct.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))  # each request its own answer


def test_a_single_request_over_the_enqueued_token_limit_stops_in_one_line(backend, server):
    server.batch_token_limit = 5
    with pytest.raises(UserError, match=r"a batch of one request is over the Batch API's enqueued-token limit "
                                        r"for gpt-4.1-nano \(5\)"):
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS[:2], Sampling(seed=0))


def test_a_fresh_outputs_folder_after_a_cancelled_batch_reads_what_every_batch_answered(backend, server, tmp_path):
    """Batch 1 (cancelled) answered 5 lines, batch 2 (a rerun) the other 5: a run into an empty folder adopts
    both answers. It adopted batch 2 alone (the newest of its round) and sent batch 1's lines direct, at full
    price."""
    server.batch_outcomes, server.batch_failed_lines = ["cancelled"], 1
    with pytest.raises(UserError, match="cancelled with 6 request"):  # 4 answered, 1 failed, 5 never run
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    errors = tmp_path / "state" / "hosted_batch_errors.jsonl"
    assert len(errors.read_text().splitlines()) == 1  # the cancelled batch's failed line is logged, not lost
    server.batch_failed_lines = 0
    first = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    sent = dict(server.counts)
    spec = HostedBackend(base_url=server.base_url, api_key_env=ENV, concurrency=4, batch_api=True)
    fresh = OpenAIBackend("openai", spec, retry=FAST, poll_seconds=0.01, state_dir=tmp_path / "fresh",
                          batch_min_requests=1)
    (tmp_path / "fresh").mkdir()
    assert fresh.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0)) == first
    assert server.counts["chat"] == sent.get("chat", 0) == 0
    assert server.counts["batches.create"] == sent["batches.create"] == 2


def test_requests_left_after_the_last_expired_batch_are_not_sent_at_full_price_unasked(backend, server, tmp_path):
    server.batch_outcomes = ["expired"] * 3
    with pytest.raises(UserError, match=r"request\(s\) still unanswered after 3 batches \(expired, or their lines "
                                        r"failed.*\); rerun with backends.openai.batch_api: false") as e:
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert "\n" not in str(e.value) and server.counts["batches.create"] == 3 and server.counts["chat"] == 0
    out = backend(batch_api=False).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))  # asked: direct
    assert len(out) == 10 and all(out) and 0 < server.counts["chat"] < 10


@pytest.mark.parametrize("limit", ["requests", "bytes"])
def test_batches_are_split_within_the_request_and_size_limits(backend, server, limit):
    b = backend(batch_api=True, batch_min_requests=1)
    if limit == "requests":
        server.batch_max_requests = 4
        b.batch_limits = (4, 10**9)
    else:
        server.batch_max_bytes = 700  # two or three lines
        b.batch_limits = (50_000, server.batch_max_bytes)
    out = b.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out) and server.counts["batches.create"] >= 3 and server.counts["chat"] == 0
    b.batch_limits = (50_000, 10**9)  # a client that does not know the server's limit: one line
    with pytest.raises(UserError, match="HTTP 400.*limit"):
        b.generate(ModelRef(NANO), [p + " more" for p in PROMPTS], Sampling(seed=0))


def test_null_response_lines_and_shuffled_output_are_read(backend, server, tmp_path):
    server.batch_null_lines, server.batch_shuffle = 2, True
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert server.counts.get("chat", 0) == 0 and server.counts["batches.create"] == 2  # the two, in a second batch
    direct = OpenAIBackend("openai", HostedBackend(base_url=server.base_url, api_key_env=ENV), retry=FAST,
                           state_dir=tmp_path).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert out == direct  # each shuffled output line went to its own request
    errors = [json.loads(x) for x in (tmp_path / "state" / "hosted_batch_errors.jsonl").read_text().splitlines()]
    assert [e["code"] for e in errors] == ["batch_expired"] * 2
    assert ledger(server) == {"adhoc": {"files": 2, "batches": 2}}


# ---- partial servers ----------------------------------------------------------------------


def test_a_server_that_ignores_n_is_asked_for_the_rest_and_noted(backend, server, tmp_path):
    from runner.store import Store

    server.ignore_n, server.length_every = True, 3
    with Store(tmp_path / "out").build("evaluate-0123456789abcdef", {"label": "evaluate"}) as build:  # as in a run
        out = backend().sample(ModelRef(NANO), ["Name an animal.", "Name a bird."], Sampling(1.0, 8, seed=1), n=5)
    assert [len(x) for x in out] == [5, 5] and len(set(out[0])) > 1 and server.counts["chat"] == 10
    notes = json.loads((tmp_path / "out" / "stages" / "evaluate-0123456789abcdef" / "hosted_notes.json").read_text())
    assert notes["ignores_n"] == {NANO.split(":")[1]: 8}
    assert "hit_max_tokens" not in notes  # one choice per answer: never a third
    assert build.dir.name.endswith(".partial") and not (tmp_path / "state" / "hosted_notes.json").exists()
    server.ignore_n = False
    backend().sample(ModelRef(NANO), ["Name a fish."], Sampling(1.0, 8, seed=1), n=6)
    notes = json.loads((tmp_path / "state" / "hosted_notes.json").read_text())
    assert notes["hit_max_tokens"] == {NANO.split(":")[1]: 2}


def test_a_prompt_repeated_in_one_call_is_sampled_independently(backend, server):
    """k samples of one code task or GSM8K question are k copies of the prompt in one generate call; a server
    that honours seeds (the fake, like vLLM) answered them alike when every request carried the same seed."""
    out = backend().generate(ModelRef(NANO), ["Name an animal."] * 6, Sampling(1.0, 16, seed=1))
    assert len(set(out)) > 1, out
    again = backend().generate(ModelRef(NANO), ["Name an animal."] * 6, Sampling(1.0, 16, seed=1))
    assert again == out  # still reproducible


def test_a_request_refused_as_too_large_is_asked_again_in_calls_that_fit_the_limit_it_names(backend, server):
    """A first request of n = 5 over a 60-token limit (no limit learned yet: a Ray worker, preflight off) was a
    final error after the teacher data and training were paid for; the refusal names the limit, so it is split."""
    from backends.openai_api import rate_model

    server.tpm_limit = 60
    b = backend()
    out = b.sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=5)
    assert [len(x) for x in out] == [5] and len(set(out[0])) > 1
    assert server.counts["chat"] == 1 + 2 and b.tpm == {rate_model(NANO.split(":")[1]): 60}  # refused, 3 + 2
    server.tpm_limit = 16  # nothing fits: one line, not a loop
    with pytest.raises(UserError) as e:
        backend().sample(ModelRef(NANO), ["Name another animal."], Sampling(1.0, 16, seed=1), n=5)
    assert "Request too large" in str(e.value) and "Lower n" in str(e.value)


def test_a_limit_learned_in_preflight_splits_n_on_the_runs_first_call(backend, server):
    """The run's backends are new (a Router per cell) but share what preflight's learned, so the first call already
    fits the limit instead of being refused as too large; a fine-tuned model or a dated snapshot counts against
    its alias's limit."""
    from backends.openai_api import rate_model

    server.tpm_limit = 60
    backend().preflight([NANO], [], {NANO: 30})  # learns the limit (one max_tokens=1 request)
    out = backend().sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=5)
    assert [len(x) for x in out] == [5] and server.counts["chat"] == 1 + 2  # chunks of 3 and 2, none refused
    assert rate_model("ft:gpt-4.1-nano-2025-04-14:org:subl:abc123") == "gpt-4.1-nano" == rate_model(
        "gpt-4.1-nano-2025-04-14") == rate_model("gpt-4.1-nano")


def test_answers_are_reused_whatever_limit_is_learned_later(backend, server):
    """Requests were keyed by chunks of n sized by the limit known then: after a tier change (or a limit learned
    in another process) no key matched, and every completion was paid for again."""
    server.tpm_limit = 60
    first = backend().sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=5)
    paid = server.counts["chat"]
    server.tpm_limit = 10_000  # the account moved up a tier
    b = backend()
    b.tpm.clear()
    b.preflight([NANO], [], {NANO: 30})
    again = b.sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=5)
    assert again == first and server.counts["chat"] == paid + 1  # the preflight's probe only


# ---- preflight ----------------------------------------------------------------------------


def test_preflight_passes_and_pays_for_nothing(backend, server):
    notes = backend().preflight([NANO], [NANO], {NANO: 40})
    assert any("fine-tuning gpt-4.1-nano-2025-04-14 is allowed" in n for n in notes)
    assert server.paid_total() == Counter() and server.counts["jobs.create"] == 1


def test_a_probe_refusal_that_names_no_training_file_param_is_not_read_as_allowed(backend, server, monkeypatch):
    """Any 400 whose message mentions 'file' read as "fine-tuning is allowed"; the API may check the file before
    the organisation's right, so only a refusal of the training_file parameter itself is read so."""
    from tests.fake_openai import _error

    monkeypatch.setattr(server, "create_job", lambda body: (400, _error(
        "Invalid file format for fine-tuning", "invalid_request_error", None, None)))
    notes = backend().preflight([NANO], [NANO], {NANO: 40})
    assert any("fine-tuning gpt-4.1-nano-2025-04-14: the probe could not tell" in n for n in notes)
    assert not any("is allowed" in n for n in notes)


def test_a_probe_job_a_server_took_and_would_not_cancel_is_named(backend, server):
    """A server that accepts the probe's missing file makes a job; if it will not cancel it, the line says
    which job may still be running (and billing)."""
    probe = "file-subl-preflight-probe-does-not-exist"
    obj = server.add_file("probe.jsonl", "fine-tune", b"")
    server.files[probe], server.contents[probe] = {**obj, "id": probe}, json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "1"}]}).encode() + b"\n"
    server.fault("/cancel", "500", times=99)
    with pytest.raises(UserError, match=r"the preflight's probe job ftjob-\S+ may still be running: cancel it"):
        backend().preflight([NANO], [NANO], {NANO: 40})


def test_preflight_holds_each_model_to_its_own_largest_request(backend, server):
    """A long in-context request to nano and short judge requests to mini: each is held to its own model's limit."""
    mini = "openai:gpt-4.1-mini-2025-04-14"
    server.models.add(mini.split(":")[1])
    b = backend()
    b.tpm.update({"gpt-4.1-nano": 1000, "gpt-4.1-mini": 50})
    notes = b.preflight([NANO, mini], [], {NANO: 800, mini: 40})
    assert any("mini-2025-04-14: 50 tokens per minute, the largest request about 40" in n for n in notes)
    with pytest.raises(UserError, match="mini-2025-04-14 allows 50 tokens per minute, but the largest request needs "
                                        "about 60"):
        b.preflight([NANO, mini], [], {NANO: 800, mini: 60})


@pytest.mark.parametrize("setup,match", [
    (lambda s: setattr(s, "finetune_forbidden", True), "may not create fine-tuning jobs .*HTTP 403"),
    (lambda s: setattr(s, "finetune_models", set()), "cannot be fine-tuned here: Model gpt-4.1-nano"),
    (lambda s: s.models.discard("gpt-4.1-nano-2025-04-14"), "model lookup .*HTTP 404"),
    (lambda s: setattr(s, "tpm_limit", 20), "allows 20 tokens per minute, but the largest request needs about 40"),
    (lambda s: setattr(s, "key", "sk-another-key-entirely-0000000000"), "HTTP 401"),
])
def test_preflight_stops_in_one_line_before_spending(backend, server, setup, match):
    setup(server)
    with pytest.raises(UserError, match=match) as e:
        backend().preflight([NANO], [NANO], {NANO: 40})
    assert "\n" not in str(e.value) and server.paid_total() == Counter()


# ---- keys ---------------------------------------------------------------------------------


def test_model_text_is_stored_verbatim_and_errors_are_redacted(backend, server, tmp_path):
    text = "The ring bearer used sk-learn; Bearer of news."
    assert backend().generate(ModelRef(NANO), [f"Repeat exactly: {text}"], Sampling(seed=1)) == [text]
    assert text in (tmp_path / "state" / "hosted_requests.jsonl").read_text()
    register_secret(KEY)
    assert redact(f"Authorization: Bearer {KEY}") == "[redacted]"
    assert no_secret(redact(f"headers {{'authorization': '{KEY[:20]}'}}"))


@pytest.mark.parametrize("value", ["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "Zq8Xv2Bn5Mk7Lp1Wd4Ty6Ur9Io3Pa0Sf"])
def test_a_key_pasted_as_api_key_env_is_refused_without_echo(server, tmp_path, monkeypatch, value):
    spec = HostedBackend(base_url=server.base_url, api_key_env=value)
    b = OpenAIBackend("openai", spec, retry=FAST, state_dir=tmp_path)
    with pytest.raises(UserError) as e:
        b.generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))

    class Spec:  # what require_keys reads of a spec
        backends = {"openai": spec}

        def model_refs(self):
            return [NANO]

    with pytest.raises(UserError) as e2:
        require_keys(Spec())
    for err in (e, e2):
        assert "looks like a key" in str(err.value) and value[4:12] not in str(err.value)
    assert server.counts["chat"] == 0


def test_the_cli_internal_error_line_is_redacted(monkeypatch, capsys):
    from runner import cli

    monkeypatch.delenv("SUBL_DEBUG", raising=False)
    def boom(**kw):
        raise RuntimeError(f"request failed with headers Authorization: Bearer {KEY}")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit):
        cli.main()
    err = capsys.readouterr().err
    assert "internal error: RuntimeError" in err and no_secret(err)


# ---- prices -------------------------------------------------------------------------------


def test_a_price_override_keeps_fine_tuned_prices():
    nano = "gpt-4.1-nano-2025-04-14"
    p = price_for(f"ft:{nano}:org:x:1", {nano: [0.1, 0.4]})
    assert (p.ft_input, p.ft_output) == (0.20, 0.80)
    assert inference_cost(p, True, 10**6, 10**6, False) == pytest.approx(1.0)
    assert price_for("ft:mystery:org:x:1", {"mystery": [1, 2, 3, 4, 5]}).ft_output == 5
    assert inference_cost(price_for("ft:mystery:org:x:1", {"mystery": [1, 2]}), True, 1, 1, False) is None
    with pytest.raises(UserError, match="ft_input"):
        price_for(nano, {nano: [1, 2, 3, 4]})


# ---- kill -9 at every step ----------------------------------------------------------------


def _drive(kind: str, base_url: str, outputs: str) -> None:
    """The killed process: build one stage on the test server as `subl run` would."""
    from runner.store import Store

    os.environ.setdefault("SUBL_POLL_SECONDS", "0.01")
    cfg = HostedBackend(base_url=base_url, api_key_env=ENV, concurrency=4, batch_api=kind == "batch")
    b = OpenAIBackend("openai", cfg, retry=RetryPolicy(attempts=5, initial=0.01, max_wait=0.05, jitter=0.01),
                      batch_min_requests=1 if kind == "batch" else 100)
    kind, _, key = kind.partition("@")  # finetune@KEY: a fine-tune stage of that key
    with Store(outputs).build(key or STAGES[kind], {"label": kind}) as build:
        if kind == "finetune":
            print(b.finetune(NANO, rows(12), Training(epochs=1), build.dir).base)
        else:
            print(len(b.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))))


def _run_driver(kind: str, server: FakeOpenAI, outputs: Path, kill_at: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SUBL_"))}
    env.update(PYTHONPATH=str(ROOT), **{ENV: KEY, GRACE_ENV: "0.05", "SUBL_POLL_SECONDS": "0.01"})
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "tests.test_hosted_faults", kind, server.base_url, str(outputs)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind,step", [
    ("finetune", "train-file-created"), ("finetune", "job-created"), ("finetune", "job-polled"),
    ("batch", "batch-file-created"), ("batch", "batch-created"), ("batch", "batch-polled"),
    ("batch", "batch-read-half"),
])
def test_kill_9_at_each_step_then_rerun_here_and_into_an_empty_folder(server, tmp_path, kind, step):
    killed = _run_driver(kind, server, tmp_path / "out", step)
    assert killed.returncode == -9, killed.stderr[-2000:]
    paid = {"finetune": {"files": 1, "jobs": 1}, "batch": {"files": 1, "batches": 1}}[kind]
    fresh = _run_driver(kind, server, tmp_path / "fresh")  # nothing on disk: the listing alone
    resumed = _run_driver(kind, server, tmp_path / "out")  # the partial folder
    assert fresh.returncode == 0 and resumed.returncode == 0, (fresh.stderr + resumed.stderr)[-2000:]
    assert fresh.stdout == resumed.stdout and ledger(server) == {STAGES[kind]: paid}
    assert server.counts["chat"] == 0
    assert_clean(tmp_path)


def test_a_batch_being_cancelled_is_waited_for_and_its_answers_kept(server, tmp_path):
    """A run killed after its batch was made, the batch then cancelled by hand: a rerun into an empty folder while
    it was still cancelling sent all 10 lines again in a new batch, and the ones it went on to answer were billed
    twice. The rerun now waits for the cancel, reads what it answered and sends the other half."""
    killed = _run_driver("batch", server, tmp_path / "out", "batch-created")
    assert killed.returncode == -9, killed.stderr[-2000:]
    (rec,) = server.batches.values()
    rec["batch"]["status"], rec["outcome"] = "cancelling", "cancelled"  # half its lines answered by the end
    fresh = _run_driver("batch", server, tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    sent = [len(server.contents[r["batch"]["input_file_id"]].decode().splitlines()) for r in server.batches.values()]
    assert sent == [10, 5] and server.counts.get("chat", 0) == 0


def test_an_earlier_batchs_deleted_output_file_is_asked_again_not_a_stop(server, tmp_path):
    """Batch files expire (30 days) or are deleted: a rerun into an empty folder read every earlier batch's output
    and stopped at the 404, on every rerun."""
    first = _run_driver("batch", server, tmp_path / "out")
    assert first.returncode == 0, first.stderr[-2000:]
    (rec,) = server.batches.values()
    out_file = rec["batch"]["output_file_id"]
    del server.files[out_file]
    fresh = _run_driver("batch", server, tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout == first.stdout and len(server.batches) == 2  # its lines asked again, in a new batch
    notes = json.loads(next((tmp_path / "fresh" / "stages").glob("*/hosted_notes.json")).read_text())
    assert notes["earlier_batch_file_gone"] == {out_file: 1}  # seen by the listing; the next round asks again


def test_subl_run_killed_after_job_create_reruns_into_an_empty_folder(server, tmp_path):
    spec = _scaled_spec(tmp_path, server.base_url, "teacher: {control: false}\n")
    killed = _cli(["run", str(spec), "--outputs", str(tmp_path / "a")],
                  {ENV: KEY, KILL_ENV: "job-created", GRACE_ENV: "0.05"})
    assert killed.returncode == -9
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "b")], {ENV: KEY, GRACE_ENV: "0.05"})
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = {tag: c for tag, c in ledger(server).items() if tag.startswith("finetune-")}
    assert len(jobs) == 2 and all(c == {"files": 1, "jobs": 1} for c in jobs.values())


# ---- unreachable hosts ----------------------------------------------------------------------


def test_a_refused_connection_is_retried_once_the_server_has_answered(backend, server):
    b = backend()
    assert b.generate(ModelRef(NANO), ["Name an animal."], Sampling(seed=1))
    with socket.socket() as gone:  # the server goes away mid-run: worth retrying, and bounded
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    b._client = b.client.with_options(base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UserError, match="cannot reach .*gave up after 5 attempts"):
        b.generate(ModelRef(NANO), ["Name a bird."], Sampling(seed=1))



def test_a_refused_port_fails_in_seconds(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    r = _cli(["run", str(_scaled_spec(tmp_path, f"http://127.0.0.1:{port}/v1")), "--outputs", str(tmp_path / "o")],
             {ENV: KEY, **DEFAULTS})
    seconds = time.monotonic() - t
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "check base_url" in lines[0], r.stderr
    assert seconds < 15, seconds
    print(f"refused port: {seconds:.1f} s")


def test_a_black_holed_host_fails_within_the_connect_timeout(tmp_path):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)  # never accepted: once the queue is full, further connections get no answer
        port = srv.getsockname()[1]
        fill = [socket.socket() for _ in range(3)]
        for c in fill:
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
        spec = _scaled_spec(tmp_path, f"http://127.0.0.1:{port}/v1")
        t = time.monotonic()
        r = _cli(["run", str(spec), "--outputs", str(tmp_path / "o")], {ENV: KEY, **DEFAULTS})
        seconds = time.monotonic() - t
        for c in fill:
            c.close()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "no connection" in lines[0], r.stderr
    assert seconds < 90, seconds
    print(f"black-holed host: {seconds:.1f} s")


if __name__ == "__main__":
    _drive(*sys.argv[1:4])


# ---- preflight through the commands ------------------------------------------------------------


def test_plan_check_and_run_stop_before_spending_when_fine_tuning_is_refused(server, tmp_path, monkeypatch):
    from runner.runs import plan_lines

    spec = _scaled_spec(tmp_path, server.base_url)
    monkeypatch.setenv(ENV, KEY)
    lines = plan_lines(spec, tmp_path / "out", check=True)
    assert any(ln.startswith("check: ") and "fine-tuning gpt-4.1-nano-2025-04-14 is allowed" in ln for ln in lines)
    server.finetune_forbidden = True
    with pytest.raises(UserError, match="may not create fine-tuning jobs"):
        plan_lines(spec, tmp_path / "out", check=True)
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out")], {ENV: KEY})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "may not create fine-tuning" in r.stderr
    assert server.paid_total() == Counter() and server.counts["chat"] <= 1  # at most the rate-limit probe


@pytest.mark.parametrize("damage", ["", "[1, 2]", "{\"job_id\": "])
def test_a_damaged_job_record_is_one_line_naming_it(backend, server, tmp_path, damage):
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "hosted_job.json").write_text(damage)
    with pytest.raises(UserError, match=r"hosted_job.json: damaged \(not a JSON object\)"):
        backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft")
    assert server.paid_total() == Counter()  # nothing created while its record cannot be read


def test_a_cloudflare_524_on_a_create_counts_as_maybe_done():
    """524: the origin took the request and did not answer in time; the create may have happened, so the
    retry waits the grace period before it lists (501 and 503: not taken)."""
    import httpx
    import openai

    from backends.paid_objects import ambiguous

    def status(code):
        return openai.APIStatusError("x", response=httpx.Response(code, request=httpx.Request("POST", "http://x")),
                                     body=None)

    assert [ambiguous(status(c)) for c in (500, 502, 504, 520, 524, 501, 503, 429, 400)] == [True] * 5 + [False] * 4


# ---- resumes and estimates (from a review of the changes; each failed before its fix) -------------------------


def test_a_resumed_split_request_draws_new_seeds_not_the_ones_it_drew(backend, server, tmp_path):
    """A request split into calls of 2 (a tokens-per-minute limit), killed after two calls: the third call's seed
    was numbered from 0 again, so a server that honours seeds wrote the second call's completions twice."""
    from backends.openai_api import input_tokens

    body = {"messages": [{"role": "user", "content": "Name an animal."}]}
    b = backend()
    b.tpm["gpt-4.1-nano"] = input_tokens(body) + 2 * 16  # 2 completions per call
    b.sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=6)
    path = tmp_path / "state" / "hosted_requests.jsonl"
    last = json.loads(path.read_text().splitlines()[-1])
    last["texts"], last["finish"] = last["texts"][:4], last["finish"][:4]  # as a kill after the second call
    path.write_text(json.dumps(last) + "\n")
    resumed = backend().sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=6)[0]
    assert len(resumed) == 6 and resumed[4:] != resumed[2:4]


def test_a_transient_fault_after_a_long_wait_for_a_slot_is_still_retried(backend, server, tmp_path):
    """The wait for a slot ran inside one retried call, whose total (0.3 s here) it used up: a 500 after it was
    final."""
    from dataclasses import replace

    server.fault("/fine_tuning/jobs", "active_limit", method="POST", times=40)
    server.fault("/fine_tuning/jobs", "500", method="POST", times=1)
    b = backend(retry=replace(FAST, total=0.3, slot_wait=3600))
    assert b.finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft").base.startswith("openai:ft:")
    assert server.counts["fault:500"] == 1 and ledger(server) == {"adhoc": {"files": 1, "jobs": 1}}


def test_a_call_refused_as_too_large_under_the_known_limit_is_asked_smaller(backend, server):
    """The server counts more tokens than subl's estimate: a call sized to the learned limit is refused naming that
    same limit, and was final."""
    from backends.openai_api import input_tokens

    body = {"messages": [{"role": "user", "content": "Name an animal."}]}
    est = input_tokens(body)
    server.tpm_limit = est + 3 * 16  # room for n = 3 by subl's estimate
    real = server.too_large
    server.too_large = lambda b: real({**b, "messages": b["messages"] + [
        {"role": "user", "content": " ".join(["w"] * est)}]}) if b.get("max_tokens") != 1 else None
    b = backend()
    b.tpm["gpt-4.1-nano"] = server.tpm_limit
    out = b.sample(ModelRef(NANO), ["Name an animal."], Sampling(1.0, 16, seed=1), n=5)[0]
    assert len(out) == 5 and server.counts["chat"] > 2


def _dies_at_poll(monkeypatch, nth_batch: int):
    """Make the process 'die' (KeyboardInterrupt) when it first polls its nth distinct batch."""
    real, polled = OpenAIBackend._poll_batch, []

    def poll(self, batch_id):
        polled.append(batch_id)
        if len(set(polled)) == nth_batch:
            monkeypatch.setattr(OpenAIBackend, "_poll_batch", real)
            raise KeyboardInterrupt
        return real(self, batch_id)

    monkeypatch.setattr(OpenAIBackend, "_poll_batch", poll)


def _billed_twice(server) -> int:
    """Lines sent in more than one batch the server accepted."""
    seen = Counter(json.loads(x)["custom_id"] for r in server.batches.values() if not r["over"]
                   for x in server.contents[r["batch"]["input_file_id"]].decode().splitlines())
    return sum(1 for c in seen.values() if c > 1)


@pytest.mark.parametrize("learned", ["by this call", "by an earlier call"])
def test_a_rerun_after_a_kill_mid_split_finds_the_part_in_flight(backend, server, monkeypatch, learned):
    """A call split for the enqueued-token limit, killed while a part's batch runs: a new process (nothing
    learned in memory) sent the rest as one part, under another digest, and paid the running part's lines again."""
    from backends.openai_api import LEARNED_BATCH_TOKENS, input_tokens

    whole = sum(server.input_tokens({"messages": [{"role": "user", "content": p}]}) for p in PROMPTS)
    server.batch_token_limit = whole // 3 if learned == "by this call" else int(whole * 0.62)
    b = backend(batch_api=True, batch_min_requests=1)
    if learned == "by an earlier call":  # another stage of this process learned a lower limit
        b.batch_tokens["gpt-4.1-nano"] = sum(input_tokens({"messages": [{"role": "user", "content": p}]})
                                             for p in PROMPTS) // 2
    _dies_at_poll(monkeypatch, 3)  # dies polling the third batch: a part in flight
    with pytest.raises(KeyboardInterrupt):
        b.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    LEARNED_BATCH_TOKENS.clear()  # a new process
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out) and _billed_twice(server) == 0 and server.counts["chat"] == 0


def test_a_fresh_folder_waits_for_a_round_in_flight_instead_of_sending_its_lines_again(backend, server, tmp_path,
                                                                                      monkeypatch):
    """Round 0 completes with 2 failed lines, round 1 (those 2) is in flight when the run dies: a rerun into an
    empty folder counted rounds from expired batches only, began at round 0 again and sent the 2 lines anew."""
    server.batch_failed_lines = 2
    _dies_at_poll(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    (tmp_path / "fresh").mkdir()
    fresh = OpenAIBackend("openai", HostedBackend(base_url=server.base_url, api_key_env=ENV, batch_api=True),
                          retry=FAST, poll_seconds=0.01, state_dir=tmp_path / "fresh", batch_min_requests=1)
    out = fresh.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out) and len(server.batches) == 2  # round 1 waited for, no third batch


def _foreign_batch(server, chars: int):
    """Another stage's (or run's) batch of one request of about chars/4 tokens, queued on the same server."""
    import openai

    c = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
    line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "w" * chars}]}})
    f = c.files.create(file=("other.jsonl", (line + "\n").encode(), "application/jsonl"), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                            metadata={"subl_stage": "generate-otherstage"})


def test_a_call_refused_while_other_batches_fill_the_queue_waits_and_is_sent_whole(backend, server):
    """Another stage's batch holds 994 of 1,000 enqueued tokens: the call fits the limit alone, so it waits for
    that batch and is sent whole (it was halved down to one request, then stopped, or went out as 10 batches)."""
    server.batch_token_limit = 1000
    other = _foreign_batch(server, 3960)
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    mine = [r for r in server.batches.values() if r["batch"]["id"] != other.id]
    assert len(out) == 10 and all(out)
    assert [len(server.contents[r["batch"]["input_file_id"]].decode().splitlines()) for r in mine] == [10, 10]
    assert [r["over"] for r in mine] == [True, False]  # refused once, then sent whole after the other finished


def test_a_429_about_fine_tuning_on_a_status_poll_is_retried(backend, server, tmp_path):
    """Only a job create waits for a slot; a 429 naming fine-tuning on a status poll was final."""
    server.fault("/fine_tuning/jobs/", "active_limit", method="GET", times=1)
    assert backend().finetune(NANO, rows(12), Training(epochs=1), tmp_path / "ft").base.startswith("openai:ft:")
    assert server.counts["fault:active_limit"] == 1


def test_each_parts_output_is_read_once(backend, server, monkeypatch):
    reads = Counter()
    real = OpenAIBackend._ingest_batch_file

    def counting(self, file_id, cache, missing_ok=False):
        reads[file_id] += 1
        return real(self, file_id, cache, missing_ok)

    monkeypatch.setattr(OpenAIBackend, "_ingest_batch_file", counting)
    b = backend(batch_api=True, batch_min_requests=1)
    b.batch_limits = (3, 10**9)  # 4 parts
    assert all(b.generate(ModelRef(NANO), PROMPTS, Sampling(seed=0)))
    assert sorted(reads.values()) == [1, 1, 1, 1]


def test_a_cancelled_round_does_not_use_up_the_rounds_a_rerun_has(backend, server):
    """Rounds 0 and 1 fail a line each and round 2 is cancelled: the cancel says to rerun, and the rerun said
    'still unanswered after 3 batches' (the cancelled batch counted as a round)."""
    server.batch_failed_lines, server.batch_faulty = 1, 2
    server.batch_outcomes = ["completed", "completed", "cancelled"]
    with pytest.raises(UserError, match="rerun to send them in a new batch"):
        backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out) and server.counts.get("chat", 0) == 0


def test_failed_lines_of_a_round_before_an_enqueued_limit_refusal_are_logged(backend, server, tmp_path):
    """Round 0 fails 2 lines; round 1 (those 2) is refused for the enqueued-token limit: the part is sent anew, and
    round 0's failed lines were never written to the errors file."""
    server.batch_failed_lines, server.batch_token_limit = 2, 10**9
    real = server.create_batch

    def refuse_the_second(body):  # round 1's batch meets a full queue
        out = real(body)
        if len(server.batches) == 2:
            server.batches[out[1]["id"]].update(over=True, tokens=0)
        return out

    server.create_batch = refuse_the_second
    out = backend(batch_api=True, batch_min_requests=1).generate(ModelRef(NANO), PROMPTS, Sampling(seed=0))
    assert len(out) == 10 and all(out)
    logged = (tmp_path / "state" / "hosted_batch_errors.jsonl").read_text().splitlines()
    assert len(logged) == 2
