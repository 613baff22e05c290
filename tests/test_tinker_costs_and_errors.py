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
