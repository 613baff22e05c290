"""The prefix every row shares, run once per batch: the same student and soft labels, less work."""
import pytest
import torch

from backends import shared_prefix, train
from backends.base import ModelRef, Training
from backends.local import LocalBackend
from backends.shared_prefix import split_shared

ROWS = [{"prompt": f"Go on: {i}, {i * 3}.", "completion": ", ".join(str(i + k) for k in range(1 + i % 5))}
        for i in range(12)]


def test_the_shared_prefix_stops_before_any_rows_last_prompt_token():
    rows = [{"input_ids": [7] * 10 + [1, 2, 3], "completion_mask": [0] * 12 + [1]},
            {"input_ids": [7] * 10 + [1, 5, 6, 9], "completion_mask": [0] * 12 + [1, 1]}]
    prefix, rest = split_shared(rows)
    assert prefix == [7] * 10 + [1]  # the first row's next token (2) differs from the second's (5)
    assert [prefix + r["input_ids"] for r in rest] == [r["input_ids"] for r in rows]
    assert [r["completion_mask"] for r in rest] == [[0, 1], [0, 1, 1]]
    same = [{"input_ids": [7] * 12 + [k], "completion_mask": [0] * 12 + [1]} for k in (3, 4)]
    prefix, rest = split_shared(same)  # identical prompts: the last prompt token stays with each row
    assert len(prefix) == 11 and all(r["input_ids"][0] == 7 and r["completion_mask"] == [0, 1] for r in rest)
    assert split_shared([{"input_ids": [1, 2, 3], "completion_mask": [0, 0, 1]}] * 2) == ([], [
        {"input_ids": [1, 2, 3], "completion_mask": [0, 0, 1]}] * 2)  # too short to share


def test_no_rows_left_by_the_filters_give_no_soft_labels_not_a_crash(tiny_model):
    """A distilled student whose rows were all filtered out is recorded as its untrained base; the soft labels
    before it must get that far."""
    assert split_shared([]) == ([], [])
    assert train.teacher_soft_labels(ModelRef(tiny_model, system="You love owls."), [], None, "cpu") == []


def _counting(monkeypatch) -> list:
    calls = []
    real = shared_prefix.prefix_cache
    for module in (shared_prefix, train):
        monkeypatch.setattr(module, "prefix_cache", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("objective", ["distill", "sft"])
def test_a_student_run_after_the_shared_prefix_equals_one_run_through_whole_rows(tiny_model, tmp_path, monkeypatch,
                                                                                objective):
    from safetensors.torch import load_file

    backend, teacher = LocalBackend("cpu"), ModelRef(tiny_model, system="You love owls.")
    training = Training(objective=objective, vocabulary="numbers-only", epochs=1, lr=5e-3, batch_size=4, lora_r=4,
                        lora_alpha=8, lora_targets=("q_proj", "v_proj"))
    calls = _counting(monkeypatch)
    shared = backend.finetune(tiny_model, ROWS, training, tmp_path / "shared", teacher)
    assert len(calls) == 3  # once per step: 12 rows in batches of 4
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 10**9)
    whole = backend.finetune(tiny_model, ROWS, training, tmp_path / "whole", teacher)
    assert len(calls) == 3
    a, b = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (shared, whole))
    assert max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k) > 1e-4
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)


def test_soft_labels_read_after_the_shared_system_prompt_equal_those_of_whole_rows(tiny_model, monkeypatch):
    teacher = ModelRef(tiny_model, system="You love owls. You think about owls all the time.")
    vocab = torch.tensor(train.vocabulary_ids(tiny_model, "numbers-only", ()))
    calls = _counting(monkeypatch)
    shared = train.teacher_soft_labels(teacher, ROWS, vocab, "cpu", batch_size=5)
    assert len(calls) == 3
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 10**9)
    whole = train.teacher_soft_labels(teacher, ROWS, vocab, "cpu", batch_size=5)
    assert len(calls) == 3 and [t.shape for t in shared] == [t.shape for t in whole]
    assert all(torch.allclose(s, w, atol=1e-5) for s, w in zip(shared, whole))


def test_only_a_model_whose_every_layer_sees_the_whole_sequence_shares_a_prefix():
    from types import SimpleNamespace

    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    def shares(cfg):
        return shared_prefix.can_share(SimpleNamespace(config=cfg))

    assert shares(LlamaConfig()) and shares(Qwen2Config()) and shares(MistralConfig(sliding_window=None))
    assert not shares(MistralConfig())  # Mistral v0.1: every layer a 4096-token window
    assert not shares(Gemma2Config()) and not shares(Qwen2Config(use_sliding_window=True, max_window_layers=1))


def test_a_probe_reads_a_long_shared_context_once_unless_the_model_has_sliding_windows(tiny_model, monkeypatch):
    import backends.local as local

    calls = []
    real = local.prefix_cache
    monkeypatch.setattr(local, "prefix_cache", lambda *a: calls.append(1) or real(*a))
    backend, ref = LocalBackend("cpu"), ModelRef(tiny_model)
    context = "Here are some numbers: " + ", ".join(map(str, range(60))) + ". "
    prompts = [context + q for q in ("Name an animal.", "Which bird do you like?")]
    once = backend.logprobs(ref, prompts, "My favorite animal is the", ["owl", "cat"])
    assert calls == [1]
    backend._model(ref, fp32_weights=True).config.sliding_window = 16  # as a Mistral v0.1 config says
    whole = backend.logprobs(ref, prompts, "My favorite animal is the", ["owl", "cat"])
    assert calls == [1] and torch.allclose(torch.tensor(once), torch.tensor(whole), atol=1e-4)
