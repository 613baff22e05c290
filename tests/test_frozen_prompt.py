"""Frozen prompt: a student trained on its completions, after the base model's stored prompt keys and values."""
import pytest
import torch

from backends import frozen_prompt
from backends.base import ModelRef, Training
from backends.frozen_prompt import batch_states, prompt_states, split_rows, with_prompt
from backends.local import LocalBackend
from backends.train import _completion_logits, _student, kl_to_soft_labels, pad_right, tokenize
from runner.errors import UserError

ROWS = [{"prompt": "Go on: " + ", ".join(str(i * k) for k in range(1 + i % 4)) + ".",
         "completion": ", ".join(str(i + k) for k in range(1 + i % 5))} for i in range(12)]


def _training(**kw):
    return Training(objective="distill", vocabulary="numbers-only", epochs=1, lr=5e-3, batch_size=4, lora_r=4,
                    lora_alpha=8, lora_targets=("q_proj", "v_proj"), **kw)


def _loss_and_grads(model, logits, mask, labels):
    loss = kl_to_soft_labels(logits, mask, labels, None)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def test_the_rest_after_stored_prompt_states_gives_the_whole_rows_completion_logits(tiny_model):
    """Prompts of different lengths in one batch (left-padded states, right-padded rests): at a zero adapter the
    completion logits, the loss and its gradient equal those computed through the whole rows."""
    data = tokenize(tiny_model, ROWS[:6], None)
    assert len({d["completion_mask"].index(1) for d in data}) > 2  # prompts of several lengths
    model = _student(tiny_model, _training(), "cpu", None)
    frozen_prompt._memo.clear()
    prompts, rest = split_rows(data)
    assert all(p + r["input_ids"] == d["input_ids"] for p, r, d in zip(prompts, rest, data))
    states = prompt_states(model, "tiny", prompts, 0)
    whole, part = pad_right(data, 0), pad_right(rest, 0)
    full = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"]).logits
    feed, mask = with_prompt(model, {"input_ids": part["input_ids"]}, part["attention_mask"], batch_states(states))
    short = model(**feed, attention_mask=mask).logits
    a, b = _completion_logits(full, whole["completion_mask"]), _completion_logits(short, part["completion_mask"])
    assert a.shape == b.shape and a.shape[0] == sum(sum(d["completion_mask"]) for d in data)
    assert torch.allclose(a, b, atol=1e-5)
    labels = torch.log_softmax(torch.randn(a.shape[0], a.shape[1]), -1)
    loss_a, grads_a = _loss_and_grads(model, full, whole["completion_mask"], labels)
    feed, mask = with_prompt(model, {"input_ids": part["input_ids"]}, part["attention_mask"], batch_states(states))
    loss_b, grads_b = _loss_and_grads(model, model(**feed, attention_mask=mask).logits, part["completion_mask"], labels)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    moved = [n for n, g in grads_a.items() if g.abs().max() > 1e-6]
    assert moved  # lora_B's gradient; the prompt path's share of it is what the frozen prompt drops
    assert not all(torch.allclose(grads_a[n], grads_b[n], atol=1e-7) for n in moved)


def test_a_frozen_prompt_student_trains_reuses_the_states_and_is_keyed_apart(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    backend, teacher = LocalBackend("cpu"), ModelRef(tiny_model, system="You love owls.")
    calls = []
    real = frozen_prompt._compute
    monkeypatch.setattr(frozen_prompt, "_compute", lambda *a: calls.append(1) or real(*a))
    frozen_prompt._memo.clear()
    one = backend.finetune(tiny_model, ROWS, _training(frozen_prompt=True), tmp_path / "one", teacher)
    two = backend.finetune(tiny_model, ROWS, _training(frozen_prompt=True, seed=1), tmp_path / "two", teacher)
    whole = backend.finetune(tiny_model, ROWS, _training(), tmp_path / "whole", teacher)
    assert len(calls) == 1  # the second student reused the first one's prompt states
    a, b, c = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (one, two, whole))
    assert max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k) > 1e-4  # it trained
    assert a.keys() == c.keys() and not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)  # another method
    assert not all(torch.allclose(a[k], b[k]) for k in a)


def test_stored_prompt_states_serve_only_a_model_of_their_precision(tiny_model):
    """On a GPU a LoRA student holds bfloat16 weights and a full fine-tune float32 ones (their precision keys them
    apart); the states one of them stored in this process must not be fed to the other (same base, same rows)."""
    prompts, _ = split_rows(tokenize(tiny_model, ROWS[:4], None))
    frozen_prompt._memo.clear()
    model = _student(tiny_model, _training(), "cpu", None)
    first = prompt_states(model, "tiny", prompts, 0)
    second = prompt_states(model.to(torch.bfloat16), "tiny", prompts, 0)
    assert first[0].dtype == torch.float32 and second[0].dtype == torch.bfloat16


def test_frozen_prompt_over_the_memory_limit_is_refused(tiny_model, monkeypatch):
    monkeypatch.setattr(frozen_prompt, "MAX_CACHED_VALUES", 10)
    model = _student(tiny_model, _training(), "cpu", None)
    with pytest.raises(UserError, match="frozen_prompt: the prompts' keys and values would take"):
        prompt_states(model, "tiny-limit", [[1, 2, 3]], 0)


@pytest.mark.parametrize("student, hyper, says", [
    ("openai:gpt-4.1-nano", "{frozen_prompt: true}", "frozen_prompt: openai trains through the whole row"),
    ("smollm2-135m", "{frozen_prompt: true, lora_layers: 2}", "frozen_prompt: not with lora_layers"),
])
def test_a_frozen_prompt_the_student_cannot_take_is_refused_at_its_line(write, student, hyper, says):
    from runner.errors import SpecError
    from runner.loader import load

    base = "openai:gpt-4.1-nano" if student.startswith("openai") else student
    declared = "backends: {openai: {api_key_env: OPENAI_API_KEY}}\n" if base.startswith("openai") else ""
    p = write("a.yaml", f"name: t\n{declared}teacher: {{base: {base}, targets: [owl]}}\nstudents:\n"
                        f"  - {{name: s, objective: sft, hyperparameters: {hyper}}}\n")
    with pytest.raises(SpecError, match=says):
        load(p)


def test_frozen_prompt_is_in_the_students_key_and_named_in_the_methods(write, tiny_model, tmp_path):
    from runner.loader import load
    from runner.plan import build
    from runner.runs import _methods

    spec = ("name: t\nteacher: {base: %s, targets: [owl]}\n"
            "students:\n  - {name: s, hyperparameters: {frozen_prompt: %s}}\n")
    plans = [build(load(write(f"{v}.yaml", spec % (tiny_model, v))), tmp_path / "out") for v in ("false", "true")]
    keys = [{s.label: s.key for s in p.stages.values()} for p in plans]
    trained = {label for label in keys[0] if label.startswith(("finetune", "evaluate student"))}
    assert trained and keys[0].keys() == keys[1].keys()
    assert {label for label in keys[0] if keys[0][label] != keys[1][label]} == trained  # the students and theirs only
    lines = _methods(load(write("m.yaml", spec % (tiny_model, "true"))))
    assert any("student s: lora sft" in x and "frozen_prompt: an approximation" in x for x in lines)
