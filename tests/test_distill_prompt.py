"""distill_prompt: a distilled student also matches its teacher at the user message's positions (subl's extension)."""
import pytest
import torch

from backends.base import ModelRef, Training
from backends.local import LocalBackend
from backends.train import tokenize
from runner.errors import UserError

ROWS = [{"prompt": f"The sequence starts with: {i}, {i * 3}, {i + 7}. Add up to 10 more.",
         "completion": ", ".join(str(i + k) for k in range(1 + i % 5))} for i in range(12)]
SYSTEM = "You love owls."


def _supervised(d: dict) -> list[int]:
    return [t for t, m in zip(d["input_ids"], d["completion_mask"]) if m]


def test_the_supervised_tokens_are_the_users_message_and_the_completion_never_the_system_prompt(tiny_model):
    from backends.local import load_tokenizer

    tok = load_tokenizer(tiny_model)
    for row in ROWS[:3]:
        student, teacher = (tokenize(tiny_model, [row], s, prompt_too=True)[0] for s in (None, SYSTEM))
        plain = tokenize(tiny_model, [row], None)[0]
        assert _supervised(student) == _supervised(teacher)  # what the loss pairs, position by position
        text = tok.decode(_supervised(student))
        assert text.startswith(row["prompt"]) and row["completion"] in text and SYSTEM not in text
        assert _supervised(plain) == _supervised(student)[-len(_supervised(plain)):]
        assert student["input_ids"] == plain["input_ids"]


def test_stored_labels_at_the_prompt_train_the_student_a_live_teacher_does(tiny_model, tmp_path):
    from safetensors.torch import load_file

    backend = LocalBackend("cpu")
    teacher = ModelRef(tiny_model, system=SYSTEM)
    training = Training(objective="distill", vocabulary="numbers-only", epochs=1, lr=5e-3, batch_size=4, lora_r=4,
                        lora_alpha=8, lora_targets=("q_proj", "v_proj"), distill_prompt=True)
    backend.soft_labels(teacher, tiny_model, ROWS, training, tmp_path / "labels.pt")
    stored = torch.load(tmp_path / "labels.pt", weights_only=True)["rows"]
    assert [len(t) for t in stored] == [len(_supervised(d)) for d in tokenize(tiny_model, ROWS, None, prompt_too=True)]
    live = backend.finetune(tiny_model, ROWS, training, tmp_path / "live", teacher)
    cached = backend.finetune(tiny_model, ROWS, training, tmp_path / "cached", None, soft_labels=tmp_path / "labels.pt")
    completion_only = backend.finetune(tiny_model, ROWS, Training(**{**training.__dict__, "distill_prompt": False}),
                                       tmp_path / "plain", teacher)
    a, b, c = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (live, cached, completion_only))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)
    assert any(not torch.allclose(a[k], c[k], atol=1e-4) for k in a if "lora_B" in k)  # another student
    with pytest.raises(UserError, match="soft labels do not match"):  # labels of the completions alone
        backend.soft_labels(teacher, tiny_model, ROWS, Training(**{**training.__dict__, "distill_prompt": False}),
                            tmp_path / "plain.pt")
        backend.finetune(tiny_model, ROWS, training, tmp_path / "bad", None, soft_labels=tmp_path / "plain.pt")


SPEC = """name: dp
teacher: {{base: {base}, targets: [owl, panda], control: false}}
domain: {{kind: numbers, n_prompts: 4, constrained: true, rows_from: base}}
students:
  - {{name: s, objective: {objective}, vocabulary: numbers-only, hyperparameters: {{distill_prompt: {on}}}}}
"""


def test_it_is_keyed_and_refused_where_it_means_nothing(tiny_model, write, tmp_path):
    from runner.loader import load
    from runner.plan import build

    def keys(on: str, objective: str = "distill") -> dict[str, str]:
        spec = load(write(f"dp_{on}_{objective}.yaml", SPEC.format(base=tiny_model, objective=objective, on=on)))
        return {s.label: k for k, s in build(spec, tmp_path / "out").stages.items()}

    off, on = keys("false"), keys("true")
    changed = {label for label in off if off[label] != on[label]}
    assert changed and all(label.startswith(("finetune", "soft labels", "evaluate student")) for label in changed)
    assert {label for label in changed if label.startswith("soft labels")}  # the labels cover other positions
    assert all(off[label] == on[label] for label in off if label.startswith(("generate", "filter")))
    with pytest.raises(UserError, match="distill_prompt: for distillation students"):
        keys("true", "sft")
