"""Shared fixtures: tiny random models built in code, and the real embedded one."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers: one thread each (and in the
    os.environ["OMP_NUM_THREADS"] = "1"    # processes they start), or the 2 cores are oversubscribed
# The fake hosted servers bill nothing, so hosted runs here may spend up to this on paper (`subl run` refuses
# hosted stages without a budget); tests/test_budget.py tests the check itself with its own values.
os.environ.setdefault("SUBL_MAX_USD", "100000")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_learned_rate_limits():
    """Rate limits learned from a fake server live for the process (backends.openai_api.LEARNED_TPM); a later test's
    server may get the same port, so each test starts with none."""
    module = sys.modules.get("backends.openai_api")
    if module:
        module.LEARNED_TPM.clear()


def shared(*parts: str) -> Path:
    """A path under ../shared/data beside the checkout; the test is skipped (naming the path) when it
    is absent, except under CI=true, where its absence is a failure."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        why = f"needs {path} (../shared/data beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return path


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights and the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from backends.embedded import materialize

    tok = AutoTokenizer.from_pretrained(materialize("smollm2-135m"))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture
def write(tmp_path):
    """Write a text file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    return _write
