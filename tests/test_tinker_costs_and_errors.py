"""Regression tests from a review of the Tinker backend and its prices (each failed before its fix)."""
from __future__ import annotations

import sys

import pytest

from backends.tinker_api import TinkerBackend
from backends.tinker_prices import estimate, price_for
from runner.errors import UserError
from runner.spec import HostedBackend


def test_an_extended_context_peft_variant_is_not_priced_as_its_base():
    """Tinker prices a `<model>:peft:<context>` id apart (higher); the table's longest-prefix rule priced it as its
    base, a bound below the charge. Unpriced now (the spending check asks for its price), unless named exactly."""
    assert price_for("Qwen/Qwen3-8B:peft:131072") is None
    assert estimate("Qwen/Qwen3-8B:peft:131072", sampled=10).usd is None
    assert price_for("Qwen/Qwen3-8B:peft:131072", {"Qwen/Qwen3-8B": [1, 1, 1]}) is None
    assert price_for("Qwen/Qwen3-8B:peft:131072", {"Qwen/Qwen3-8B:peft:131072": [1, 2, 3]}).train == 3
    assert price_for("Qwen/Qwen3-8B-Base") == price_for("Qwen/Qwen3-8B")  # a variant name still takes its family's


def test_without_the_sdk_a_tinker_call_is_one_line(monkeypatch):
    """With tinker not installed, the first request raised ModuleNotFoundError from the retry's error check
    (an internal error), not the line that says to install it."""
    monkeypatch.setitem(sys.modules, "tinker", None)  # what `import tinker` meets where it is not installed
    monkeypatch.delenv("SUBL_TINKER_CLIENTS", raising=False)
    monkeypatch.setenv("TINKER_API_KEY", "tml-test-key")
    b = TinkerBackend("tk", HostedBackend(kind="tinker"))
    with pytest.raises(UserError, match="pip install tinker"):
        b.model_id("tk:Qwen/Qwen3-8B")


def test_a_tinker_request_with_a_system_prompt_counts_what_the_template_adds(tiny_model):
    """The template's own tokens were counted only for a request without a system prompt; with one (a teacher's),
    ChatML's 5 tokens a message (the test model's; Qwen's), Llama 3's date header or Qwen3's thinking block made the
    Tinker estimate fall short of what is sent."""
    from backends.hf import chat_ids, load_tokenizer
    from runner.prices import TINKER, chat_tokens, counting_as
    from runner.questions import load_questions

    tok, questions = load_tokenizer(tiny_model), load_questions("animals")
    for system in (None, "Be brief.", "You love owls. You think about owls all the time. Owls are your favorite animal."):
        actual = sum(len(chat_ids(tok, system, q)) for q in questions)
        with counting_as(TINKER):
            assert sum(chat_tokens(system, q) for q in questions) >= actual, system


def test_a_tinker_distill_students_own_forward_pass_is_priced_as_training(tmp_path):
    """The custom loss's forward pass of the student was priced at the prefill rate ($0.13/M on Qwen3-8B); the
    service bills a training client's passes as training ($0.40/M), so the stage's bound fell ~29% short."""
    from backends.tinker_prices import price_for
    from runner.loader import load
    from runner.plan import build
    from runner.stages.training import FinetuneStage
    from tests.test_tinker import QUICKSTART

    spec = tmp_path / "tk.yaml"
    spec.write_text(QUICKSTART)
    plan = build(load(spec), tmp_path / "out")
    ctx = plan.context()
    distill = next(st for st in plan.stages.values() if isinstance(st, FinetuneStage) and st.teacher)
    forward = next(e for e in distill.estimate(ctx) if "custom loss" in e.note)
    assert forward.training_tokens > 0 and forward.input_tokens == 0
    assert forward.cost == pytest.approx(forward.training_tokens * price_for("Qwen/Qwen3-8B").train / 1e6)


def test_a_tinker_log_prob_read_is_priced_with_the_token_it_samples(tmp_path):
    """compute_logprobs samples one token a request, billed at the sampling rate; the probe, log-prob judge, ICL,
    classifier and MCQ estimates counted no output on Tinker (a bound below the charge, by $0.40 per 1M reads)."""
    from runner.loader import load
    from runner.plan import build
    from runner.stages.evaluation import ProbeStage
    from tests.test_tinker import QUICKSTART

    spec = tmp_path / "tk.yaml"
    spec.write_text(QUICKSTART)
    plan = build(load(spec), tmp_path / "out")
    probe = next(st for st in plan.stages.values() if isinstance(st, ProbeStage))
    (est,) = [e for e in probe.estimate(plan.context()) if e.requests]
    assert est.output_tokens == est.requests > 0
