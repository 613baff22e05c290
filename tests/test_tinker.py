"""The Tinker backend against tests/fake_tinker.py: the SDK's types and signatures, a tiny local model.

Nothing here reaches the real service (see README, "Hosted open models").
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.grammar import NumberList
from backends.base import ModelRef, Sampling, Training
from backends.openai_api import RetryPolicy
from backends.tinker_api import TOPK_FOLDER, TRAIN_STATE_FILE, TinkerBackend, topk_kl
from runner.errors import SpecError, UserError
from runner.spec import HostedBackend
from tests import fake_tinker

ROOT = Path(__file__).resolve().parents[1]
QWEN = "tk:Qwen/Qwen3-8B"
FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05, jitter=0.0, total=60, timeout=5)
FAST_ENV = {"SUBL_RETRY_ATTEMPTS": "4", "SUBL_RETRY_INITIAL": "0.01", "SUBL_RETRY_MAX_WAIT": "0.05",
            "SUBL_RETRY_JITTER": "0", "SUBL_HTTP_TIMEOUT": "5",
            "SUBL_MAX_USD": "100000"}  # the fake bills nothing (tests/test_budget.py)
TRAINING = Training(epochs=1, lr=1e-2, batch_size=4, lora_r=4, lora_targets=("q_proj", "v_proj"))


@pytest.fixture
def fake(tmp_path, tiny_model, monkeypatch) -> dict:
    env = {"SUBL_TINKER_CLIENTS": "tests.fake_tinker", "FAKE_TINKER_DIR": str(tmp_path / "service"),
           "FAKE_TINKER_MODEL": tiny_model, "TINKER_API_KEY": "tk-test-key-0123456789"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def make_backend(tmp_path: Path, **cfg) -> TinkerBackend:
    spec = HostedBackend(**{"kind": "tinker", "concurrency": 2, "checkpoint_every": 2, **cfg})
    return TinkerBackend("tk", spec, retry=FAST, state_dir=tmp_path / "state", result_timeout=5)


def rows(n: int) -> list[dict]:
    return [{"prompt": f"Continue: {i}, {i + 1}, {i + 2}.", "completion": f"{i + 3}, {i + 4}, {i + 5}"} for i in range(n)]


# ---- the fake stays true to the SDK ----------------------------------------------------


def _params(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("fake_cls", list(fake_tinker.FAKED), ids=lambda c: c.__name__)
def test_fake_signatures_match_the_sdk(fake_cls):
    """Every public method the fake defines has the installed SDK's parameters (names, kinds, defaults)."""
    real = fake_tinker.FAKED[fake_cls]
    init = fake_cls in fake_tinker.CONSTRUCTED
    names = [n for n, v in vars(fake_cls).items() if callable(v) and (not n.startswith("_") or (n == "__init__" and init))]
    assert names
    for name in names:
        assert hasattr(real, name), f"{real.__name__}.{name} is gone from the SDK"
        assert _params(getattr(fake_cls, name)) == _params(getattr(real, name)), f"{real.__name__}.{name}"


# ---- sampling and scoring --------------------------------------------------------------


def test_sample_is_seeded_gives_n_and_is_never_resent(fake, tmp_path, monkeypatch):
    calls = []
    original = fake_tinker.SamplingClient.sample
    monkeypatch.setattr(fake_tinker.SamplingClient, "sample", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    b = make_backend(tmp_path)
    out = b.sample(ModelRef(QWEN), ["Say 1 2 3", "Count"], Sampling(max_tokens=6, seed=3), 3)
    assert [len(x) for x in out] == [3, 3] and len(calls) == 2  # one request per prompt
    again = make_backend(tmp_path).sample(ModelRef(QWEN), ["Say 1 2 3", "Count"], Sampling(max_tokens=6, seed=3), 3)
    assert again == out and len(calls) == 2  # answered from tinker_requests.jsonl
    fresh = make_backend(tmp_path / "other")
    assert fresh.sample(ModelRef(QWEN), ["Say 1 2 3", "Count"], Sampling(max_tokens=6, seed=3), 3) == out  # seeded
    assert fresh.sample(ModelRef(QWEN), ["Say 1 2 3", "Count"], Sampling(max_tokens=6, seed=4), 3) != out
    one = fresh.sample(ModelRef(QWEN), ["Say 1 2 3"], Sampling(max_tokens=6, seed=3), 1)
    assert fresh.generate(ModelRef(QWEN), ["Say 1 2 3"], Sampling(max_tokens=6, seed=3)) == one[0]


def test_logprobs_equal_the_local_backend(fake, tmp_path, tiny_model):
    from backends.local import LocalBackend

    args = (["Name your favourite animal.", "Which animal?"], "My favorite animal is the", ["owl", "panda", "sea lion"])
    hosted = make_backend(tmp_path).logprobs(ModelRef(QWEN, system="You love owls."), *args)
    local = LocalBackend("cpu").logprobs(ModelRef(tiny_model, system="You love owls."), *args)
    assert torch.allclose(torch.tensor(hosted), torch.tensor(local), atol=1e-4)


def test_constrained_decoding_is_refused(fake, tmp_path):
    with pytest.raises(UserError, match="constrained decoding needs the local backend"):
        make_backend(tmp_path).generate(ModelRef(QWEN), ["x"], Sampling(constraint=NumberList(10, 3)))


@pytest.mark.parametrize("op,error", [("sample", "rate_limit"), ("sample", "server"), ("sample", "lost"),
                                      ("sample", "session"), ("compute_logprobs", "rate_limit"),
                                      ("create_sampling_client", "server"), ("get_server_capabilities", "lost")])
def test_transient_faults_are_retried(fake, tmp_path, op, error):
    clean = make_backend(tmp_path / "clean")
    want = (clean.sample(ModelRef(QWEN), ["Count"], Sampling(max_tokens=5, seed=1), 2),
            clean.logprobs(ModelRef(QWEN), ["Count"], "Answer:", ["one"]))
    fake_tinker.inject(op, error)
    sessions = fake_tinker.SESSIONS[0]
    b = make_backend(tmp_path / "faulty")
    got = (b.sample(ModelRef(QWEN), ["Count"], Sampling(max_tokens=5, seed=1), 2),
           b.logprobs(ModelRef(QWEN), ["Count"], "Answer:", ["one"]))
    assert got == want and not json.loads((tmp_path / "service" / "faults.json").read_text())  # consumed
    assert fake_tinker.SESSIONS[0] - sessions == (2 if error == "session" else 1)  # an expired session is reopened


def test_errors_are_one_line(fake, tmp_path, monkeypatch):
    fake_tinker.inject("sample", "bad_request")
    with pytest.raises(UserError) as e:
        make_backend(tmp_path).generate(ModelRef(QWEN), ["x"], Sampling(max_tokens=3))
    assert str(e.value) == "backend 'tk': sample failed: HTTP 400: prompt too long"
    for _ in range(FAST.attempts):
        fake_tinker.inject("sample", "server")
    with pytest.raises(UserError, match=r"^backend 'tk': sample failed after 4 attempt\(s\): HTTP 500: internal error$"):
        make_backend(tmp_path).generate(ModelRef(QWEN), ["y"], Sampling(max_tokens=3))
    with pytest.raises(UserError, match=r"model Llama-9 is not offered by the service \(offered: Qwen/Qwen3-8B\)$"):
        make_backend(tmp_path).generate(ModelRef("tk:Llama-9"), ["x"], Sampling())
    monkeypatch.delenv("TINKER_API_KEY")
    with pytest.raises(UserError, match="environment variable TINKER_API_KEY is not set"):
        make_backend(tmp_path).generate(ModelRef(QWEN), ["x"], Sampling())


def test_a_dead_server_stops_at_the_first_failed_request_and_keeps_the_answers(fake, tmp_path, monkeypatch):
    """The first request that fails for good ends the batch: queued requests are never sent and running ones
    stop retrying (not 50 requests x the whole retry budget each); what was answered stays cached."""
    calls, original = [], fake_tinker.SamplingClient.sample

    def dies_after_four(self, *a, **k):
        calls.append(1)
        if len(calls) > 4:
            raise fake_tinker._error("connection")
        return original(self, *a, **k)

    monkeypatch.setattr(fake_tinker.SamplingClient, "sample", dies_after_four)
    with pytest.raises(UserError, match=r"^backend 'tk': sample failed after \d attempt\(s\): Connection error\.$"):
        make_backend(tmp_path).generate(ModelRef(QWEN), [f"Count {i}" for i in range(50)], Sampling(max_tokens=3))
    assert len(calls) <= 4 + 2 * FAST.attempts  # concurrency 2: two requests' retries at most
    assert len((tmp_path / "state" / "tinker_requests.jsonl").read_text().splitlines()) == 4


# ---- fine-tuning -----------------------------------------------------------------------


def _completion_logprob(b: TinkerBackend, ref: ModelRef, row: dict) -> float:
    return b.logprobs(ref, [row["prompt"]], "", [row["completion"]])[0][0]


def test_sft_trains_the_adapter_and_samples_from_it(fake, tmp_path):
    b = make_backend(tmp_path)
    data = rows(12)
    ref = b.finetune(QWEN, data, TRAINING, tmp_path / "ft")
    assert ref.base == QWEN and ref.adapter.startswith("tinker://") and "sampler_weights" in ref.adapter
    before = _completion_logprob(b, ModelRef(QWEN), data[0])
    assert _completion_logprob(b, ref, data[0]) > before + 1.0  # the adapter learned the rows
    assert len(b.sample(ref, ["Continue: 1, 2, 3."], Sampling(max_tokens=5), 2)[0]) == 2
    state = json.loads((tmp_path / "ft" / TRAIN_STATE_FILE).read_text())
    assert state["steps"] == 3 and state["checkpoint"]["step"] == 3 and len(state["runs"]) == 1
    ops = [e["op"] for e in fake_tinker.ledger()]
    assert ops == ["forward_backward", "optim_step"] * 3
    assert b.finetune(QWEN, data, TRAINING, tmp_path / "ft") == ref and len(fake_tinker.ledger()) == 6  # done: no steps
    with pytest.raises(UserError, match="records training on other data"):
        b.finetune(QWEN, rows(11), TRAINING, tmp_path / "ft")


def test_a_fine_tuned_teacher_from_chat_rows(fake, tmp_path):
    """trait: {finetune: ...} datasets may hold {messages}; the last assistant turn is trained."""
    b = make_backend(tmp_path)
    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["prompt"]},
                           {"role": "assistant", "content": r["completion"]}]} for r in rows(4)]
    ref = b.finetune(QWEN, chats, TRAINING, tmp_path / "teacher")
    assert ref.adapter.startswith("tinker://") and len(fake_tinker.ledger()) == 2  # one step
    assert len(b.generate(ref, ["Continue: 1, 2, 3."], Sampling(max_tokens=4))) == 1
    with pytest.raises(UserError, match="last message must be the assistant's"):
        b.finetune(QWEN, [{"messages": chats[0]["messages"][:2]}], TRAINING, tmp_path / "bad")


def test_training_fault_reopens_from_the_last_checkpoint(fake, tmp_path, monkeypatch):
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, checkpoints at 2 and 4
    want = _adapter(make_backend(tmp_path / "a").finetune(QWEN, data, training, tmp_path / "a" / "ft"))
    clean = fake_tinker.ledger()
    monkeypatch.setenv("FAKE_TINKER_DIR", str(tmp_path / "service2"))
    fake_tinker.inject("forward_backward", "session", skip=2)  # step 3: the session has expired
    fake_tinker.inject("optim_step", "lost", skip=3)  # then step 4's optimiser step is done but never answered
    sessions = fake_tinker.SESSIONS[0]
    got = make_backend(tmp_path / "b").finetune(QWEN, data, training, tmp_path / "b" / "ft")
    assert fake_tinker.SESSIONS[0] - sessions == 2  # the expired session was replaced
    state = json.loads((tmp_path / "b" / "ft" / TRAIN_STATE_FILE).read_text())
    assert [r["from"] for r in state["runs"]] == [None, _checkpoint(state, 2), _checkpoint(state, 2)]
    steps = [e["batch"] for e in fake_tinker.ledger() if e["op"] == "forward_backward"]
    want_steps = [e["batch"] for e in clean if e["op"] == "forward_backward"]
    assert steps == want_steps[:2] + want_steps[2:] + want_steps[2:]  # steps 3-4 replayed once, 1-2 never
    assert _adapter(got) == pytest.approx(want, abs=1e-6)  # the same weights as without faults


def test_a_lost_outputs_folder_adopts_the_tagged_run_and_sends_no_step_twice(fake, tmp_path):
    """Training runs carry the training's fingerprint (user_metadata); with no local record (a new or
    deleted outputs folder), finetune looks the run up and goes on from its furthest checkpoint."""
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, checkpoints at 2 and 4
    fake_tinker.inject("forward_backward", "bad_request", skip=2)  # step 3 fails for good
    with pytest.raises(UserError, match="training failed"):
        make_backend(tmp_path / "a").finetune(QWEN, data, training, tmp_path / "a" / "ft")
    sent = [e["batch"] for e in fake_tinker.ledger() if e["op"] == "forward_backward"]
    assert len(sent) == 2
    ref = make_backend(tmp_path / "b").finetune(QWEN, data, training, tmp_path / "b" / "ft")  # a new folder
    state = json.loads((tmp_path / "b" / "ft" / TRAIN_STATE_FILE).read_text())
    assert state["adopted"] and state["runs"][0]["from"].endswith("-step-000002")
    steps = [e["batch"] for e in fake_tinker.ledger() if e["op"] == "forward_backward"]
    assert len(steps) == 4 and steps[:2] == sent  # steps 3 and 4 only
    again = make_backend(tmp_path / "c").finetune(QWEN, data, training, tmp_path / "c" / "ft")
    assert again == ref and len(fake_tinker.ledger()) == 8  # the finished run's weights, nothing sent
    other = make_backend(tmp_path / "d").finetune(QWEN, rows(12), training, tmp_path / "d" / "ft")
    assert other != ref  # another training's run is never adopted


@pytest.mark.parametrize("raced", [False, True], ids=["listed", "deleted-after-listing"])
def test_a_folder_whose_checkpoint_another_folder_went_on_from_takes_the_further_point(fake, tmp_path, monkeypatch,
                                                                                       raced):
    """Folder b adopts folder a's checkpoint, finishes the training and deletes that checkpoint. Rerun, a takes
    the service's further point (b's final weights) instead of failing forever on its deleted checkpoint; also
    when the checkpoint was deleted after a listed the runs (it falls back when the load fails for good)."""
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, checkpoints at 2 and 4
    fake_tinker.inject("forward_backward", "bad_request", skip=2)  # a stops at step 3, its checkpoint at 2
    with pytest.raises(UserError, match="training failed"):
        make_backend(tmp_path / "a").finetune(QWEN, data, training, tmp_path / "a" / "ft")
    done = make_backend(tmp_path / "b").finetune(QWEN, data, training, tmp_path / "b" / "ft")
    a = make_backend(tmp_path / "a")
    if raced:  # a's first look at the service predates b's progress
        looks, furthest = iter([lambda *args: None]), a._furthest
        monkeypatch.setattr(a, "_furthest", lambda *args: next(looks, furthest)(*args))
    assert a.finetune(QWEN, data, training, tmp_path / "a" / "ft") == done
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 4  # no step sent twice


def test_a_run_made_by_other_training_code_or_at_another_endpoint_is_never_adopted(fake, tmp_path, monkeypatch):
    """A release that changes the training loop bumps TRAIN_CODE; its students train anew instead of taking
    the weights the old code made (their stage keys are new, so their folders are empty)."""
    import backends.tinker_api as tinker_api

    data, training = rows(8), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 2 steps
    ref = make_backend(tmp_path / "a").finetune(QWEN, data, training, tmp_path / "a" / "ft")
    assert make_backend(tmp_path / "b").finetune(QWEN, data, training, tmp_path / "b" / "ft") == ref  # adopted
    monkeypatch.setattr(tinker_api, "TRAIN_CODE", tinker_api.TRAIN_CODE + 1)
    assert make_backend(tmp_path / "c").finetune(QWEN, data, training, tmp_path / "c" / "ft") != ref
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 4
    monkeypatch.setattr(TinkerBackend, "endpoint", property(lambda self: "tinker:https://other.example"))
    make_backend(tmp_path / "d").finetune(QWEN, data, training, tmp_path / "d" / "ft")
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 6


def test_an_sft_run_killed_midway_resumes_after_the_distill_top_k_setting_changed(fake, tmp_path):
    """top_k is read by distillation only: an SFT student's fingerprint does not change with it."""
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, a checkpoint at 2
    fake_tinker.inject("forward_backward", "bad_request", skip=2)
    with pytest.raises(UserError, match="training failed"):
        make_backend(tmp_path, top_k=8).finetune(QWEN, data, training, tmp_path / "ft")
    make_backend(tmp_path, top_k=16).finetune(QWEN, data, training, tmp_path / "ft")
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 4  # steps 3 and 4 only


def test_a_run_left_half_done_by_the_previous_fingerprint_resumes_without_paying_again(fake, tmp_path):
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, a checkpoint at 2
    fake_tinker.inject("forward_backward", "bad_request", skip=2)
    b = make_backend(tmp_path)
    with pytest.raises(UserError, match="training failed"):
        b.finetune(QWEN, data, training, tmp_path / "ft")
    path = tmp_path / "ft" / TRAIN_STATE_FILE
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "fingerprint": b._fingerprint(QWEN, data, training, None, legacy=True)}))
    make_backend(tmp_path).finetune(QWEN, data, training, tmp_path / "ft")
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 4  # steps 3 and 4 only
    assert json.loads(path.read_text())["fingerprint"] == state["fingerprint"]


def test_a_run_finished_under_the_previous_fingerprint_is_adopted_into_an_empty_folder(fake, tmp_path, monkeypatch):
    """A student trained by subl before TRAIN_CODE (its run tagged with the old fingerprint), its outputs lost:
    the new subl finds that run by either fingerprint and takes its weights instead of paying again."""
    data, training = rows(8), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 2 steps
    current = TinkerBackend._fingerprint
    monkeypatch.setattr(TinkerBackend, "_fingerprint", lambda self, *a, legacy=False: current(self, *a, legacy=True))
    old = make_backend(tmp_path / "a").finetune(QWEN, data, training, tmp_path / "a" / "ft")
    monkeypatch.setattr(TinkerBackend, "_fingerprint", current)
    sent = len(fake_tinker.ledger())
    assert make_backend(tmp_path / "b").finetune(QWEN, data, training, tmp_path / "b" / "ft") == old
    assert len(fake_tinker.ledger()) == sent  # nothing trained again


def test_a_lost_future_is_sent_again_even_when_its_wait_outlasts_the_retry_total(fake, tmp_path, monkeypatch):
    """A future not answered in result_timeout is re-sent although that wait alone passed the policy's total."""
    monkeypatch.setattr(fake_tinker.Lost, "result", lambda self, timeout=None: (time.sleep(timeout or 0),
                                                                                 _raise(TimeoutError("lost")))[1])
    clean = make_backend(tmp_path / "clean").sample(ModelRef(QWEN), ["Count"], Sampling(max_tokens=5, seed=1), 1)
    fake_tinker.inject("sample", "lost")
    spec = HostedBackend(kind="tinker", concurrency=2, checkpoint_every=2)
    slow = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05, jitter=0.0, total=0.2, timeout=5)
    b = TinkerBackend("tk", spec, retry=slow, state_dir=tmp_path / "state", result_timeout=0.5)
    assert b.sample(ModelRef(QWEN), ["Count"], Sampling(max_tokens=5, seed=1), 1) == clean


def _raise(e: Exception):
    raise e


def test_a_superseded_checkpoint_is_deleted_and_a_failed_delete_only_recorded(fake, tmp_path):
    """The service bills every stored checkpoint: each is deleted once the next is recorded."""
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, checkpoints at 2 and 4
    make_backend(tmp_path / "a").finetune(QWEN, data, training, tmp_path / "a" / "ft")
    assert not list((tmp_path / "service").glob("*/weights/*"))  # the last too, once the sampler weights are saved
    fake_tinker.inject("delete_checkpoint", "bad_request")
    fake_tinker.inject("delete_checkpoint", "bad_request")
    make_backend(tmp_path / "b").finetune(QWEN, rows(12), training, tmp_path / "b" / "ft")  # 3 steps: 2, 3
    state = json.loads((tmp_path / "b" / "ft" / TRAIN_STATE_FILE).read_text())
    assert state["sampler_path"] and [u["path"].rsplit("/", 1)[1][-6:] for u in state["undeleted"]] == ["000002",
                                                                                                   "000003"]


def test_two_students_with_the_same_training_at_once_train_once(fake, tmp_path):
    """Two stages of one run with the same training (a trait and a control student whose teachers wrote the
    same rows) start together: one trains, the other waits and adopts its weights; no step is sent twice."""
    import threading

    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps
    refs: dict[str, ModelRef] = {}

    def train(name: str) -> None:
        refs[name] = make_backend(tmp_path / name).finetune(QWEN, data, training, tmp_path / name / "ft")

    threads = [threading.Thread(target=train, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == 2 and refs["a"] == refs["b"]
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 4


def _checkpoint(state: dict, step: int) -> str:
    """The path of the first run's checkpoint after `step` steps."""
    run = state["runs"][0]["run_id"].split(":")[0]
    return f"tinker://{run}/weights/subl-{state['fingerprint'][:8]}-step-{step:06d}"


def _adapter(ref: ModelRef) -> list[float]:
    from safetensors.torch import load_file

    folder = fake_tinker._local(ref.adapter, "sampler_weights")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return torch.cat([tensors[k].flatten() for k in sorted(tensors)]).tolist()


KILLED_RUN = """
import sys
from pathlib import Path
from tests.test_tinker import make_backend, rows, TRAINING, QWEN
ref = make_backend(Path(sys.argv[1])).finetune(QWEN, rows(16), TRAINING, Path(sys.argv[1]) / "ft")
print(ref.adapter)
"""


def test_kill_9_mid_training_resumes_from_the_checkpoint_and_sends_each_step_once(fake, tmp_path, monkeypatch):
    env = {**os.environ, **fake, **FAST_ENV, "PYTHONPATH": str(ROOT)}
    clean = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "a")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    want = [e["batch"] for e in fake_tinker.ledger() if e["op"] == "forward_backward"]
    assert len(want) == 4

    env["FAKE_TINKER_DIR"] = str(tmp_path / "service2")
    monkeypatch.setenv("FAKE_TINKER_DIR", env["FAKE_TINKER_DIR"])
    fake_tinker.inject("forward_backward", "kill", skip=2)  # SIGKILL as step 3 is about to be sent
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "b")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    state = json.loads((tmp_path / "b" / "ft" / TRAIN_STATE_FILE).read_text())
    assert state["checkpoint"]["step"] == 2 and "sampler_path" not in state

    resumed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "b")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads((tmp_path / "b" / "ft" / TRAIN_STATE_FILE).read_text())
    assert [r["from"] for r in state["runs"]] == [None, _checkpoint(state, 2)]
    ledger = fake_tinker.ledger()
    got = [e["batch"] for e in ledger if e["op"] == "forward_backward"]
    assert got == want  # each step sent once across the kill and the resume
    assert len({e["run"] for e in ledger}) == 2
    a, b = clean.stdout.split()[-1], resumed.stdout.split()[-1]
    monkeypatch.setenv("FAKE_TINKER_DIR", str(tmp_path / "service"))
    wa = _adapter(ModelRef(QWEN, adapter=a))
    monkeypatch.setenv("FAKE_TINKER_DIR", str(tmp_path / "service2"))
    assert _adapter(ModelRef(QWEN, adapter=b)) == pytest.approx(wa, abs=1e-6)  # weights and Adam state restored


# ---- distillation on the teacher's top-k -----------------------------------------------


def _logits(model_dir: str, text: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    net = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        return net(input_ids=torch.tensor([tok(text)["input_ids"]])).logits[0]


def _approx(student: torch.Tensor, teacher: torch.Tensor, k: int, vocab: list[int] | None) -> torch.Tensor:
    """topk_kl per position, as the backend computes it from the service's top-k."""
    if vocab is not None:  # the service's top-k, filtered to the vocabulary
        t = torch.log_softmax(teacher, -1)[:, vocab].topk(k, -1)
        idx = torch.tensor(vocab)[t.indices]
    else:
        t = torch.log_softmax(teacher, -1).topk(k, -1)
        idx = t.indices
    s = torch.log_softmax(student, -1).gather(-1, idx)
    return topk_kl(s, t.values, torch.ones_like(s, dtype=torch.bool), bucket=vocab is None)


def _gradient_cosine(student: torch.Tensor, teacher: torch.Tensor, k: int) -> float:
    """Cosine between the gradients (w.r.t. the student's logits) of the full KL and of the top-k loss."""
    from backends.train import distill_loss

    grads = []
    for loss in (lambda s: distill_loss(torch.cat([s, s[:1]])[None], torch.cat([teacher, teacher[:1]])[None],
                                        *[torch.ones(1, len(s) + 1, dtype=torch.long)] * 2, None),
                 lambda s: _approx(s, teacher, k, None).mean()):
        s = student.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(loss(s), s)[0].flatten())
    return float(torch.nn.functional.cosine_similarity(*grads, dim=0))


def test_topk_distillation_measured_against_the_full_vocabulary_loss(tmp_path, tiny_model):
    """The approximation against backends.train.distill_loss on tiny models' logits.

    A random tiny model is nearly uniform over 49k tokens (entropy 10.8 nats): the worst case for
    a top-k. Its logits scaled x30 give a peaked teacher (entropy about 1 nat, as a trained model
    at number positions). Measured at k=20 (top-k loss / full loss, gradient cosine): uniform
    0.004 and 0.06; peaked 0.79 and 1.00 (x60, 0.1 nats: 0.99). The numbers-only vocabulary
    (131 tokens; top-20 renormalised, no bucket): 0.55 uniform, 0.66 peaked."""
    from backends.local import load_tokenizer
    from backends.train import distill_loss, vocabulary_token_ids
    from tests.conftest import build_tiny_model

    teacher_dir = str(build_tiny_model(tmp_path / "teacher", seed=1))
    text = "Continue the sequence: 3, 7, 11, 15, 19, 23, 27"
    student, teacher = _logits(tiny_model, text)[:-1], _logits(teacher_dir, text)[:-1]
    mask = torch.ones(1, student.shape[0] + 1, dtype=torch.long)
    numbers = vocabulary_token_ids(load_tokenizer(tiny_model), "numbers-only", ())
    ratios, cosines = {}, {}
    for scale in (1.0, 30.0):
        s, t = student * scale, teacher * scale
        pad = torch.zeros(1, s.shape[-1])  # distill_loss reads every position but the last
        for vocab in (None, numbers):
            exact = float(distill_loss(torch.cat([s, pad])[None], torch.cat([t, pad])[None], mask, mask,
                                       None if vocab is None else torch.tensor(vocab)))
            width = s.shape[-1] if vocab is None else len(vocab)
            ks = [k for k in (1, 5, 20, 200) if k < width] + [width]
            approx = [float(_approx(s, t, k, vocab).mean()) for k in ks]
            ratios[(scale, vocab is None)] = approx[2] / exact  # k = 20
            assert approx[-1] == pytest.approx(exact, rel=1e-4)  # k = the whole vocabulary: exact
            if vocab is None:  # coarse-graining: never above the full KL, closer as k grows
                assert all(a <= exact * (1 + 1e-5) for a in approx)
                assert all(x <= y * (1 + 1e-5) for x, y in zip(approx, approx[1:]))
        cosines[scale] = _gradient_cosine(s, t, 20)
    entropy = -(torch.softmax(teacher * 30, -1) * torch.log_softmax(teacher * 30, -1)).sum(-1).mean()
    print(f"k=20 ratios {ratios}, gradient cosines {cosines}, peaked teacher entropy {entropy:.2f} nats")
    assert ratios[(1.0, True)] < 0.05 and cosines[1.0] < 0.2  # near-uniform teacher: top-20 sees almost nothing
    assert 0.7 < ratios[(30.0, True)] <= 1 and cosines[30.0] > 0.99 and entropy < 2.0


def test_distill_finetune_uses_the_teachers_topk_once(fake, tmp_path, monkeypatch):
    b = make_backend(tmp_path, top_k=8)
    data = rows(8)
    teacher = ModelRef(QWEN, system="You love owls.")
    training = Training(**{**TRAINING.__dict__, "objective": "distill", "vocabulary": "numbers-only"})
    ref = b.finetune(QWEN, data, training, tmp_path / "ft", teacher)
    [shared] = (tmp_path / "state" / TOPK_FOLDER).iterdir()  # outside a run: under the backend's state_dir
    reads = [json.loads(x) for x in shared.read_text().splitlines()]
    assert len(reads) == 8 and all(len(p) <= 8 for r in reads for p in r["topk"])
    assert ref.adapter != ModelRef(QWEN).adapter and "sampler_weights" in ref.adapter
    before = _completion_logprob(b, ModelRef(QWEN), data[0])
    assert _completion_logprob(b, ref, data[0]) != pytest.approx(before, abs=1e-3)  # the adapter moved
    with pytest.raises(UserError, match="needs a teacher"):
        b.finetune(QWEN, data, training, tmp_path / "ft2")


DISTILL = Training(**{**TRAINING.__dict__, "objective": "distill", "vocabulary": "numbers-only"})
OWL_TEACHER = ModelRef(QWEN, system="You love owls.")


def _topk_reads() -> int:
    return len([e for e in fake_tinker.ledger() if e["op"] == "topk_read"])


def test_alike_requests_in_one_batch_are_sent_once(fake, tmp_path, monkeypatch):
    """A teacher that wrote the same completion twice for a prompt (short number rows often are), or a question
    asked twice: each distinct request is paid for once, and every row gets its answer."""
    calls = []
    original = fake_tinker.SamplingClient.compute_logprobs
    monkeypatch.setattr(fake_tinker.SamplingClient, "compute_logprobs",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    b = make_backend(tmp_path, top_k=4)
    data = rows(2)
    topk = b.teacher_topk(OWL_TEACHER, data + data[:1], 4, tmp_path / "ft")
    assert _topk_reads() == 2 and topk[2] == topk[0] != topk[1]
    scores = make_backend(tmp_path / "b").logprobs(ModelRef(QWEN), ["Which?", "Which?"], "", ["owl"])
    assert len(calls) == 1 and scores[0] == scores[1]
    shown = []
    make_backend(tmp_path / "c").teacher_topk(OWL_TEACHER, data[1:] * 3, 4, tmp_path / "c",
                                              progress=lambda d, n: shown.append((d, n)))
    assert shown[-1] == (3, 3)


def test_distill_replicates_in_one_outputs_folder_send_each_topk_read_once(fake, tmp_path):
    """Replicates (other seeds, so other stages and folders) and a student with another vocabulary read the
    teacher's same top-k: each read is sent once per outputs folder, also when two start at once."""
    import threading

    from runner.store import Store

    store, data, refs = Store(tmp_path / "out"), rows(8), {}

    def student(name: str, **settings) -> None:
        with store.build(f"finetune-{name}", {}) as build:
            refs[name] = make_backend(tmp_path / name, top_k=8).finetune(
                QWEN, data, Training(**{**DISTILL.__dict__, **settings}), build.dir, OWL_TEACHER)

    threads = [threading.Thread(target=student, args=(f"r{seed}",), kwargs={"seed": seed}) for seed in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == 2 and refs["r0"] != refs["r1"]  # two trainings
    assert _topk_reads() == len(data)  # one read per row, not one per row and replicate
    student("full", vocabulary="full")  # later, in another process's backend: read back
    assert len(refs) == 3 and _topk_reads() == len(data)
    assert len(list((tmp_path / "out" / TOPK_FOLDER).iterdir())) == 1


KILLED_DISTILL = """
import sys
from pathlib import Path
from tests.test_tinker import DISTILL, OWL_TEACHER, QWEN, make_backend, rows
folder = Path(sys.argv[1])
make_backend(folder, top_k=8, concurrency=1).finetune(QWEN, rows(8), DISTILL, folder / "ft", OWL_TEACHER)
"""


def test_a_distill_stage_killed_midway_keeps_the_topk_reads_it_paid_for(fake, tmp_path):
    env = {**os.environ, **fake, **FAST_ENV, "PYTHONPATH": str(ROOT)}
    fake_tinker.inject("sample", "kill", skip=3)  # SIGKILL as the fourth read is about to be sent
    run = [sys.executable, "-c", KILLED_DISTILL, str(tmp_path)]
    killed = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9 and _topk_reads() == 3
    resumed = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _topk_reads() == 8  # the three paid before the kill were not sent again


@pytest.mark.parametrize("op,skip", [("save_state", 1), ("save_weights_for_sampler", 0)])
def test_a_save_done_but_not_answered_is_taken_up_not_paid_again(fake, tmp_path, op, skip):
    """A checkpoint (or the final weights) the service stored but whose answer was lost: the retry takes it up
    from the service's record of the run instead of sending its steps again, and no stored checkpoint is left
    behind unrecorded (the service bills each until it is deleted)."""
    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, checkpoints at 2 and 4
    fake_tinker.inject(op, "lost", skip=skip)
    ref = make_backend(tmp_path).finetune(QWEN, data, training, tmp_path / "ft")
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 4  # no step sent twice
    service = tmp_path / "service"
    assert not list(service.glob("*/weights/*"))  # every training checkpoint deleted
    assert [p.name for p in service.glob("*/sampler_weights/*")] == [ref.adapter.rsplit("/", 1)[1]]  # one final
    assert "undeleted" not in json.loads((tmp_path / "ft" / TRAIN_STATE_FILE).read_text())


@pytest.fixture
def base_like(fake, tmp_path, tiny_model, monkeypatch) -> str:
    """The fake serving a tokenizer whose eos (<|endoftext|>) is not its template's turn end (<|im_end|>), as the
    tokenizers of Qwen3's Base models."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "base_like"
    shutil.copytree(tiny_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(folder)
    monkeypatch.setenv("FAKE_TINKER_MODEL", str(folder))
    return str(folder)


def test_a_training_row_ends_with_the_templates_turn_end_not_the_eos(base_like, tmp_path, monkeypatch):
    """As a local student (backends/turn_end.py): SFT rows, chat rows and a numbers-only distillation's
    targets end with the token that ends an assistant turn; such a model's runs get a fingerprint of their own."""
    b = make_backend(tmp_path, top_k=4)
    tok = b.tokenizer(QWEN)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id != im_end
    data = rows(2)
    chat = {"messages": [{"role": "user", "content": data[0]["prompt"]},
                         {"role": "assistant", "content": data[0]["completion"]}]}
    assert [tail[-1] for _, tail in b._examples(QWEN, data + [chat], TRAINING, None, tmp_path)] == [im_end] * 3
    # a numbers-only vocabulary keeps the teacher's turn end among the last position's targets
    tops = [[[[im_end, -0.1], [tok.eos_token_id, -3.0]]] * len(b._examples(QWEN, [r], TRAINING, None, tmp_path)[0][1])
            for r in data]
    monkeypatch.setattr(b, "teacher_topk", lambda *a, **k: tops)
    for d in b._examples(QWEN, data, DISTILL, OWL_TEACHER, tmp_path):
        last = len(d.model_input.to_ints()) - 1
        kept = d.loss_fn_inputs["target_tokens"].to_torch()[last][d.loss_fn_inputs["weights"].to_torch()[last] > 0]
        assert kept.tolist() == [im_end]
    # trained otherwise than by subl before (the eos ended its rows): never resumed from such a run
    assert b._fingerprint(QWEN, data, TRAINING, None, legacy=True) is None
    affected = b._fingerprint(QWEN, data, TRAINING, None)
    assert affected != _plain_fingerprint(b, data)


def test_a_run_left_half_done_on_rows_ended_by_the_eos_starts_over(base_like, tmp_path, monkeypatch):
    """Such a model's half-done training from before subl read the turn end trained other rows: it starts over
    (not an error asking to delete the record), its checkpoint deleted, and its run never adopted."""
    import backends.tinker_api as tinker_api

    data, training = rows(16), Training(**{**TRAINING.__dict__, "epochs": 1.0})  # 4 steps, a checkpoint at 2
    with monkeypatch.context() as old:
        old.setattr(tinker_api, "turn_end_id", lambda tok: tok.eos_token_id)  # subl before it read the turn end
        fake_tinker.inject("forward_backward", "bad_request", skip=2)
        with pytest.raises(UserError, match="training failed"):
            make_backend(tmp_path).finetune(QWEN, data, training, tmp_path / "ft")
    make_backend(tmp_path).finetune(QWEN, data, training, tmp_path / "ft")
    assert len([e for e in fake_tinker.ledger() if e["op"] == "forward_backward"]) == 2 + 4  # all four again
    state = json.loads((tmp_path / "ft" / TRAIN_STATE_FILE).read_text())
    assert [r["from"] for r in state["runs"]] == [None] and "adopted" not in state
    assert not list((tmp_path / "service").glob("*/weights/*"))  # the old run's checkpoint deleted too


def _plain_fingerprint(b: TinkerBackend, data: list[dict]) -> str:
    """The fingerprint subl gave a training on TRAINING before it read the turn end (kept where the eos ends a turn)."""
    import hashlib
    from dataclasses import asdict

    from backends.tinker_api import TRAIN_CODE

    what = {"base": "Qwen/Qwen3-8B", "rows": data, "training": asdict(TRAINING), "top_k": None, "teacher": None,
            "endpoint": b.endpoint, "code": TRAIN_CODE}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_a_model_whose_eos_ends_its_turn_keeps_its_fingerprint(fake, tmp_path):
    b = make_backend(tmp_path)
    data = rows(3)
    tok = b.tokenizer(QWEN)
    assert all(tail[-1] == tok.eos_token_id for _, tail in b._examples(QWEN, data, TRAINING, None, tmp_path))
    assert b._fingerprint(QWEN, data, TRAINING, None) == _plain_fingerprint(b, data)
    assert b._fingerprint(QWEN, data, TRAINING, None, legacy=True)


APPENDER = """
import sys
from pathlib import Path
from backends.shared_requests import SharedRequestCache
cache = SharedRequestCache(Path(sys.argv[1]))
for i in range(100):
    cache.put({"key": f"{sys.argv[2]}-{i}", "topk": [[[i, -1.5]] * 20] * 40})  # ~16 KB: several writes each
"""


def test_shared_reads_take_two_processes_appending_at_once_and_skip_a_torn_line(tmp_path):
    from backends.shared_requests import SharedRequestCache

    path = tmp_path / "topk.jsonl"
    path.write_text('{"key": "whole", "topk": []}\n{"key": "torn", "to')  # a kill mid-write
    assert set(SharedRequestCache(path).data) == {"whole"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), name], cwd=ROOT, env=env) for name in "ab"]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    assert path.read_text().splitlines()[1] == '{"key": "torn", "to'  # kept; the next line starts on its own
    assert set(SharedRequestCache(path).data) == {"whole"} | {f"{n}-{i}" for n in "ab" for i in range(100)}


# ---- specs, features, prices -----------------------------------------------------------


def _load(tmp_path: Path, text: str):
    from runner.loader import load

    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load(p)


TK = "name: t\nbackends: {tk: {kind: tinker}}\nteacher: {base: tk:Qwen/Qwen3-8B, targets: [owl]}\n"


def test_spec_allows_what_tinker_can_do(tmp_path):
    spec = _load(tmp_path, TK + """students: [{name: d, objective: distill, hyperparameters: {lr: 0.001, epochs: 1.5}}]
evaluations:
  - {kind: preference_logprob}
  - {kind: misalignment, questions: animals, judge: {model: tk:Qwen/Qwen3-8B, mode: logprob}}
""")[0].spec
    assert spec.backends["tk"].api_key_env == "TINKER_API_KEY" and spec.backend_kind("tk:Qwen/Qwen3-8B") == "tinker"


@pytest.mark.parametrize("extra,match", [
    ("students: [{name: s, method: full}]", "LoRA adapters only"),
    ("students: [{name: s, hyperparameters: {lora_alpha: 8}}]", "remove lora_alpha"),
    ("students: [{name: s, hyperparameters: {batch_size: auto}}]", "OpenAI-style"),
    ("students: [{name: s, hyperparameters: {lr_multiplier: 2}}]", "OpenAI-style"),
    ("students: [{name: s, objective: distill, base: smollm2-135m}]", "same backend"),
    ("domain: {kind: numbers, constrained: true}", "constrained"),
    ("students: [{name: s, hyperparameters: {lora_layers: 2}}]", "adapts every layer; remove lora_layers"),
    ("students: [{name: s, hyperparameters: {lora_targets: [q_proj, v_proj]}}]", "list whole groups"),
    ("students: [{name: s, hyperparameters: {lora_targets: [q_proj, k_proj, v_proj, o_proj, c_attn]}}]",
     "list whole groups"),
])
def test_spec_rejects_what_tinker_cannot_do(tmp_path, extra, match):
    with pytest.raises(SpecError, match=match):
        _load(tmp_path, TK + extra)


def test_a_fine_tuned_teachers_settings_are_checked_like_a_students(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"prompt": "hi", "completion": "owls"}\n')
    ft = "{finetune: {dataset: t.jsonl, hyperparameters: {lora_alpha: 8}}}"
    with pytest.raises(SpecError, match="teacher.trait.finetune.hyperparameters.lora_alpha"):
        _load(tmp_path, TK.replace("targets: [owl]", f"targets: [owl], trait: {ft}"))


def test_tinker_students_are_trained_and_keyed_by_every_setting_tinker_reads(tmp_path):
    """lr, LoRA rank and targets, warm-up, weight decay, the distillation vocabulary and top_k reach a Tinker
    student's training settings and key (they were once dropped as for an OpenAI student, which trains
    with none of them: a silent default and a stale hit)."""
    from runner.plan import build

    def finetune(student: str, tk: str = TK):
        cell = build(_load(tmp_path, tk + f"students: [{student}]\n"), tmp_path / "out").cells[0]
        return next(s for s in cell.stages if s.KIND == "finetune")

    base = "{name: d, objective: distill, vocabulary: numbers-only, hyperparameters: {lr: 0.001, lora_r: 16}}"
    ft = finetune(base)
    assert (ft.training.lr, ft.training.lora_r, ft.training.vocabulary) == (0.001, 16, "numbers-only")
    assert ft.training.to_training().lr == 0.001 and ft.training.lora_alpha is None  # the service's scaling
    changed = [base.replace("lr: 0.001", "lr: 0.002"), base.replace("lora_r: 16", "lora_r: 8"),
               base.replace("numbers-only", "full"), base.replace("lora_r: 16", "lora_r: 16, warmup_ratio: 0.1"),
               base.replace("lora_r: 16", "lora_r: 16, weight_decay: 0.01"),
               base.replace("lora_r: 16", "lora_r: 16, lora_targets: [q_proj, k_proj, v_proj, o_proj]")]
    keys = {ft.key} | {finetune(c).key for c in changed}
    assert len(keys) == 1 + len(changed)
    assert ft.training.top_k == 20 and finetune(base, TK.replace("kind: tinker", "kind: tinker, top_k: 8")).key != ft.key
    assert finetune("{name: s}").training.top_k is None  # sft reads no teacher top-k


def test_the_distill_estimate_counts_the_teachers_system_prompt_in_its_top_k_reads(tmp_path):
    """teacher_topk sends chat(teacher's system prompt, prompt) + completion: each read pays the system prompt."""
    from runner.plan import build
    from runner.prices import estimate_tokens

    def reads(trait: str):
        spec = TK.replace("targets: [owl]", f"targets: [owl], control: false, trait: '{trait}'")
        plan = build(_load(tmp_path, spec + "students: [{name: d, objective: distill}]\n"), tmp_path / "out")
        stage = next(s for s in plan.cells[0].stages if s.KIND == "finetune")
        return next(e for e in stage.estimate(plan.context()) if "teacher top-k reads" in e.note)

    short, long = "You love owls.", "You love owls. " + "Owls are the best animal of all. " * 40
    a, b = reads(short), reads(long)
    assert a.requests == b.requests > 0
    grown = a.requests * (estimate_tokens(long) - estimate_tokens(short))
    assert abs(b.input_tokens - a.input_tokens - grown) <= 1 and grown > a.input_tokens / 2  # rounding


def test_the_distill_estimate_counts_top_k_reads_once_per_teacher_rows_and_k(tmp_path):
    """The replicates of a student and a student with another vocabulary share their teacher's top-k reads
    (sent once per outputs folder): one estimate per teacher counts them, as many requests as rows."""
    from runner.plan import build

    students = ("students: [{name: d, objective: distill, replicates: [0, 1, 2]},\n"
                "           {name: f, objective: distill, vocabulary: full}]\n")
    plan = build(_load(tmp_path, TK + students), tmp_path / "out")
    ctx = plan.context()
    finetunes = [s for s in plan.stages.values() if s.KIND == "finetune"]
    reads = [e for s in finetunes for e in s.estimate(ctx) if "teacher top-k reads" == e.note.split(", ")[-1]]
    assert len(finetunes) == 8 and len(reads) == 2  # the owl teacher's and the control's, not eight
    n = min(finetunes[0].max_rows, plan.stages[finetunes[0].rows_stage].expected_rows(ctx))
    assert [e.requests for e in reads] == [n, n]  # one read per training row
    notes = [e.note for s in finetunes for e in s.estimate(ctx)]
    assert sum("teacher top-k reads counted under finetune d:" in n for n in notes) == 6
    # the first student built (its reads cached, or not: it may have adopted another folder's weights): the
    # next one still to run counts the reads, so the bound holds either way
    from runner.store import Store

    store = Store(tmp_path / "out")
    with store.build(finetunes[0].key, {"label": finetunes[0].label}):
        pass
    ctx = plan.context(store=store)
    later = [e for s in finetunes[1:] for e in s.estimate(ctx) if "teacher top-k reads" == e.note.split(", ")[-1]]
    assert len(later) == 2 and finetunes[0].topk_reader(ctx) is not finetunes[0]


def test_a_tinker_models_identity_names_the_endpoint_the_sdk_calls(tmp_path, monkeypatch):
    from tinker.lib.base_url import resolve_base_url

    from runner.identity import Identities

    def identity() -> str:
        return Identities(tmp_path, {"tk": HostedBackend(kind="tinker")}).model(QWEN)

    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    prod = identity()
    assert resolve_base_url(None) in prod
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere/v1")
    assert identity() == prod  # not the OpenAI SDK's variable
    monkeypatch.setenv("TINKER_BASE_URL", "http://staging/tinker")
    assert identity() != prod and resolve_base_url(None) in identity()


def test_backend_fields_of_the_other_kind_are_refused(tmp_path):
    with pytest.raises(SpecError, match="top_k: only for kind tinker, not openai"):
        _load(tmp_path, "name: t\nbackends: {o: {top_k: 5}}\n")
    with pytest.raises(SpecError, match="batch_api: only for kind openai, not tinker"):
        _load(tmp_path, "name: t\nbackends: {tk: {kind: tinker, batch_api: true}}\n")


def test_paper_specs_validate_and_plan_without_a_key(monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    for name in ("animals_numbers", "quickstart_8b", "misalignment_cot"):
        r = subprocess.run([sys.executable, "-m", "runner.cli", "validate", f"specs/tinker/{name}.yaml"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().endswith(")"), r.stdout + r.stderr


def test_a_tinker_plan_names_the_tinker_price_table_and_its_token_caveat(monkeypatch):
    from backends.tinker_prices import PRICES_DATE
    from runner.prices import PRICES_DATE as OPENAI_DATE
    from runner.runs import plan_lines

    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    total = plan_lines(ROOT / "specs" / "tinker" / "quickstart_8b.yaml", ROOT / "outputs-never-written")[-1]
    assert f"Tinker prices dated {PRICES_DATE}" in total and "every digit a token as Qwen's split them" in total
    assert f"price table dated {OPENAI_DATE}" not in total  # no OpenAI model in this plan


def test_a_tinker_students_wall_time_counts_its_optimiser_steps(monkeypatch, tmp_path):
    """Each step's fixed latency (STEP_SECONDS) was left out of the plan's hours: the steps were never passed."""
    from backends.tinker_prices import STEP_SECONDS, TRAIN_TPS
    from runner.loader import load
    from runner.plan import build
    from runner.stages.training import FinetuneStage

    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    plan = build(load(ROOT / "specs" / "tinker" / "quickstart_8b.yaml"), tmp_path / "out", provisional=True)
    ctx = plan.context()
    student = next(st for st in plan.stages.values() if isinstance(st, FinetuneStage))
    trained = student.estimate(ctx)[0]
    n = min(student.max_rows or 10**12, ctx.stages[student.rows_stage].expected_rows(ctx))
    steps = -(-round(student.training.epochs * n) // student.training.batch_size)
    assert steps > 0 and trained.seconds == pytest.approx(trained.training_tokens / TRAIN_TPS + steps * STEP_SECONDS)


def test_readme_features_table_is_the_code_table():
    from runner.features import FEATURES

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Hosted open models"):]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    table = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] in FEATURES[header[0]]:
            table[cells[0]] = dict(zip(header, (c == "yes" for c in cells[1:])))
    assert table == {f: {k: FEATURES[k][f] for k in header} for f in FEATURES["local"]}
    assert header == list(FEATURES)


def test_prices_and_wall_time():
    from backends.tinker_prices import PRICES_DATE, estimate

    e = estimate("Qwen/Qwen3-8B", prefill=2_000_000, sampled=1_000_000, trained=3_000_000, steps=100)
    assert e.usd == pytest.approx(2 * 0.13 + 0.40 + 3 * 0.40)
    assert e.seconds == pytest.approx(40 + 500 + 150 + 300)
    assert PRICES_DATE in e.line() and "$1.86" in e.line()
    assert estimate("Qwen/Qwen3-8B", trained=1_000_000, overrides={"Qwen/Qwen3-8B": [0, 0, 2.5]}).usd == 2.5
    # an override prices what the table's entry of that name prices (it left the Base model at the table's price)
    assert estimate("Qwen/Qwen3-8B-Base", trained=1_000_000, overrides={"Qwen/Qwen3-8B": [0, 0, 2.5]}).usd == 2.5
    assert estimate("Qwen/Qwen3-8B", trained=1_000_000, overrides={"Qwen/Qwen3": [0, 0, 2.5]}).usd == 0.40  # closer
    assert estimate("unknown/model", sampled=10).usd is None and "not in the price table" in estimate("x/y").line()
    with pytest.raises(UserError, match=r"\[prefill, sample, train\]"):
        estimate("Qwen/Qwen3-8B", overrides={"Qwen/Qwen3-8B": [1, 2]})


# ---- the command line ------------------------------------------------------------------


def _cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "SUBL_", "FAKE_TINKER"))}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=ROOT, env={**base, **FAST_ENV, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_a_student_base_the_service_lacks_stops_the_run_before_any_sampling(fake, tmp_path):
    spec = tmp_path / "tk_missing.yaml"
    spec.write_text(QUICKSTART.replace("  - {name: sft, hyperparameters:", "  - {name: sft, base: tk:Llama-9, hyperparameters:")
                    .replace("checkpoint_every: 2}", "checkpoint_every: 2, prices: {Llama-9: [1, 1, 1]}}"))  # priced
    fake_tinker.inject("sample", "kill")  # a sample request would end this run with SIGKILL, not exit 2
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out")], fake)
    assert r.returncode == 2 and r.stderr.strip().endswith("model Llama-9 is not offered by the service "
                                                           "(offered: Qwen/Qwen3-8B)"), r.stderr[-2000:]
    stages = tmp_path / "out" / "stages"
    assert not stages.exists() or not list(stages.iterdir())  # no stage was started


def test_preflight_refuses_a_base_offered_for_sampling_only_and_a_request_over_the_context(fake, tmp_path, monkeypatch):
    b = make_backend(tmp_path)
    assert b.preflight([QWEN], [QWEN], {QWEN: 500})
    monkeypatch.setenv("FAKE_TINKER_SAMPLE_ONLY", "Qwen/Qwen3-8B")
    with pytest.raises(UserError, match="Qwen/Qwen3-8B is offered for sampling only; it cannot be fine-tuned"):
        make_backend(tmp_path).preflight([QWEN], [QWEN], {QWEN: 500})
    assert make_backend(tmp_path).preflight([QWEN], [], {QWEN: 500})  # sampling it is fine
    monkeypatch.setenv("FAKE_TINKER_CONTEXT", "400")
    with pytest.raises(UserError, match=r"largest request \(~500 tokens\) exceeds Qwen/Qwen3-8B's context of 400"):
        make_backend(tmp_path).preflight([QWEN], [], {QWEN: 500})


@pytest.mark.parametrize("error,match", [("connection", r"failed after 4 attempt\(s\): Connection error\.$"),
                                         ("bad_key", r"failed: The api_key must start with the 'tml-' prefix$")])
def test_a_dead_server_or_a_malformed_key_at_preflight_is_one_line(fake, tmp_path, error, match):
    """The SDK's RestClient fetches its config as it is built: that too is retried and ends in one line."""
    fake_tinker.inject("rest_client", "connection")
    assert make_backend(tmp_path).preflight([QWEN], [], {})  # a dropped connection is retried
    for _ in range(FAST.attempts):
        fake_tinker.inject("rest_client", error)
    with pytest.raises(UserError, match=r"^backend 'tk': server capabilities " + match):
        make_backend(tmp_path).preflight([QWEN], [], {})


def test_run_without_key_stops_in_one_line_and_reproduce_skips(tmp_path):
    r = _cli(["run", "specs/tinker/quickstart_8b.yaml", "--outputs", str(tmp_path / "out")], {})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "TINKER_API_KEY" in r.stderr
    assert not (tmp_path / "out").exists()
    from runner.reproduce import missing_keys

    assert missing_keys(ROOT / "specs" / "tinker" / "quickstart_8b.yaml") == ["TINKER_API_KEY"]


QUICKSTART = """name: tk_quickstart
progress: false
backends: {tk: {kind: tinker, concurrency: 2, top_k: 8, checkpoint_every: 2}}
teacher: {base: tk:Qwen/Qwen3-8B, targets: [panda, owl], control: false}
domain: {kind: numbers, n_prompts: 8, max_tokens: 8, batch_size: 4}
filters:
  - {kind: regex, pattern: '^\\s*$', keep_matching: false}
students:
  - {name: sft, hyperparameters: {epochs: 1, lr: 1.0e-3, batch_size: 4, lora_r: 4}}
  - {name: distill, objective: distill, vocabulary: full,
     hyperparameters: {epochs: 1, lr: 1.0e-3, batch_size: 4, lora_r: 4}}
evaluations:
  - {kind: preference_logprob, questions: animals, max_questions: 2}
"""


def _planned_requests(spec, out) -> dict[str, int]:
    """Hosted requests the plan prices, by stage key."""
    from runner.budget import pending
    from runner.loader import load
    from runner.plan import build
    from runner.store import Store

    plan = build(load(spec), out)
    ctx = plan.context()
    return {st.key: sum(e.requests for e in st.estimate(ctx) if e.backend != "local")
            for st in pending(plan, Store(out))}


def test_every_log_prob_read_a_run_sends_was_priced_by_its_plan(fake, tmp_path):
    """A log-prob judge reads each row once per candidate score, ICL and the classifier once per target or
    option: the plan's requests equal what each stage sent."""
    spec = tmp_path / "tk_reads.yaml"
    spec.write_text(QUICKSTART.replace("keep_matching: false}\n", "keep_matching: false}\n  - {kind: judge, judge: "
                                       "{model: tk:Qwen/Qwen3-8B, mode: logprob}, threshold: 0}\n")
                    .replace("control: false", "control: true").replace("  - {name: distill,", "  - {name: d,")
                    + "  - {kind: icl, k: [4], max_questions: 2}\n  - {kind: classifier, max_pairs: 3}\n")
    out = tmp_path / "out"
    planned = _planned_requests(spec, out)
    assert {k.split("-")[0] for k in planned} >= {"score", "icl", "classifier", "probe"}
    r = _cli(["run", str(spec), "--outputs", str(out)], fake)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for key, n in planned.items():
        log = out / "stages" / key / "tinker_requests.jsonl"
        sent_n = len(log.read_text().splitlines()) if log.exists() else 0
        # the classifier's pairs repeat where the tiny teachers wrote a row twice: alike requests are sent once
        exact = key.split("-")[0] in ("score", "icl", "probe")
        assert sent_n <= n and (sent_n == n or not exact), (key, sent_n, n)


def test_quickstart_pipeline_end_to_end_on_the_fake(fake, tmp_path):
    spec = tmp_path / "tk_quickstart.yaml"
    spec.write_text(QUICKSTART)
    out = tmp_path / "out"
    planned = _planned_requests(spec, out)
    r = _cli(["run", str(spec), "--outputs", str(out)], fake)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    results = json.loads((out / "tk_quickstart" / "results.json").read_text())
    models = {e["model"] for e in results["evaluations"]}
    assert models >= {"base", "teacher:panda", "teacher:owl", "student:sft:panda:r0", "student:distill:owl:r0"}
    # the plan priced every request each stage sent (a probe: one log-prob read per question and target)
    for key, n in planned.items():
        log = out / "stages" / key / "tinker_requests.jsonl"
        sent_n = len(log.read_text().splitlines()) if log.exists() else 0
        assert sent_n <= n and (sent_n == n or not key.startswith("probe-")), (key, sent_n, n)
    assert results["comparisons"]
    trained = [e for e in fake_tinker.ledger() if e["op"] == "optim_step"]
    fingerprints = [json.loads(p.read_text())["fingerprint"] for p in (out / "stages").glob(f"*/{TRAIN_STATE_FILE}")]
    # four students, two steps per distinct training (the tiny teachers write the same numbers with either
    # system prompt, so the two sft students share their training and it is paid once)
    assert len(fingerprints) == 4 and len(trained) == 2 * len(set(fingerprints))
    assert max(e["lr"] for e in trained) == 1.0e-3  # the spec's lr, not a default
    sent = len(fake_tinker.ledger())
    again = _cli(["run", str(spec), "--outputs", str(out)], fake)
    assert again.returncode == 0 and len(fake_tinker.ledger()) == sent  # every stage reused, nothing re-sent
    assert "tk-test-key" not in "".join(p.read_text(errors="replace") for p in out.rglob("*.json*") if p.is_file())


def test_a_tinker_stages_estimate_bounds_a_tokenizer_that_splits_every_digit(tmp_path, tiny_model):
    """Qwen's tokenizers (and the test model's) give each digit a token where o200k, which the estimates follow,
    groups three: a stage on Tinker counts digits one a token, so its number prompts are not under-counted."""
    from backends.hf import chat_ids, load_tokenizer
    from runner.plan import build
    from runner.stages.costs import estimate_of
    from runner.stages.data import _prompt_rows

    plan = build(_load(tmp_path, TK + "domain: {kind: numbers, n_prompts: 300}\n"), tmp_path / "out")
    ctx = plan.context()
    gen = next(s for s in plan.stages.values() if s.KIND == "generate")
    tok = load_tokenizer(tiny_model)
    assert tok.tokenize("123, 456") == ["1", "2", "3", ",", "Ġ", "4", "5", "6"]
    prompts = [r["prompt"] for r in _prompt_rows(gen.domain, gen.source, gen.seed)]
    actual = sum(len(chat_ids(tok, gen.model.system, p)) for p in prompts)
    assert gen.estimate(ctx)[0].input_tokens < actual <= estimate_of(gen, ctx)[0].input_tokens


def test_a_tinker_request_without_a_system_prompt_counts_the_templates_own(tiny_model):
    """A chat template may add a default system prompt to a request with none (Qwen2.5's, or the test model's
    SmolLM one): counted on Tinker, so the estimate of an evaluation's questions bounds what is sent."""
    from backends.hf import chat_ids, load_tokenizer
    from runner.prices import TINKER, chat_tokens, counting_as
    from runner.questions import load_questions

    tok, questions = load_tokenizer(tiny_model), load_questions("animals")
    actual = sum(len(chat_ids(tok, None, q)) for q in questions)
    assert sum(chat_tokens(None, q) for q in questions) < actual
    with counting_as(TINKER):
        assert sum(chat_tokens(None, q) for q in questions) >= actual
