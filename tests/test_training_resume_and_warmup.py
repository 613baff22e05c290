"""Review of local training: a killed student resumes from its last checkpoint; warm-up over fractional epochs."""
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import backends.train as train_module
from backends.base import ModelRef, Training
from backends.train import train

ROWS = [{"prompt": f"Continue: {i}, {i + 1}.", "completion": ", ".join(str(i + k) for k in range(2 + i % 3))}
        for i in range(8)]


class _Killed(Exception):
    pass


def _training(**kw) -> Training:
    return Training(**{**dict(objective="sft", epochs=2, lr=1e-2, batch_size=2, lora_r=2, lora_alpha=2,
                              lora_targets=("q_proj", "v_proj"), warmup_ratio=0.25, seed=1), **kw})


def _steps_run(monkeypatch, kill_after: int | None = None) -> list[int]:
    """Record the steps the trainer runs (and stop it, as a kill would, after step `kill_after`)."""
    steps: list[int] = []
    end = train_module._Progress.on_step_end

    def on_step_end(self, args, state, control, **kw):
        steps.append(state.global_step)
        end(self, args, state, control, **kw)
        if state.global_step == kill_after:
            raise _Killed

    monkeypatch.setattr(train_module._Progress, "on_step_end", on_step_end)
    return steps


def _teacher(tiny_model) -> ModelRef:
    return ModelRef(tiny_model, system="You love owls.")  # read by the distilling student only


def _adapter(folder) -> dict:
    return load_file(folder / "model" / "adapter_model.safetensors")


@pytest.mark.parametrize("kw", [{}, {"lora_layers": 1}, {"frozen_prompt": True},
                                {"objective": "distill", "vocabulary": "numbers-only"}],
                         ids=["lora", "lora_layers", "frozen_prompt", "distill"])
def test_a_killed_student_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_one(
        tiny_model, tmp_path, monkeypatch, kw):
    """A stage's partial folder survives a kill: the trainer's state saved there (adapter, Adam, schedule, RNG) lets
    the rerun train only the steps after it (before: every step again), to the same adapter."""
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 0, raising=False)  # a checkpoint after every step
    whole = _steps_run(monkeypatch)
    train(tiny_model, ROWS, _training(**kw), tmp_path / "whole", _teacher(tiny_model), "cpu", None)
    assert whole == list(range(1, 9))
    assert not (tmp_path / "whole" / "trainer").exists()  # no checkpoint left in a finished stage

    monkeypatch.undo()
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 0, raising=False)
    _steps_run(monkeypatch, kill_after=5)
    with pytest.raises(_Killed):
        train(tiny_model, ROWS, _training(**kw), tmp_path / "killed", _teacher(tiny_model), "cpu", None)
    monkeypatch.undo()
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 0, raising=False)
    rest = _steps_run(monkeypatch)
    train(tiny_model, ROWS, _training(**kw), tmp_path / "killed", _teacher(tiny_model), "cpu", None)
    assert rest == [5, 6, 7, 8], rest  # from the last checkpoint, not from step 1
    a, b = _adapter(tmp_path / "whole"), _adapter(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_a_checkpoint_torn_by_a_kill_is_passed_over(tmp_path):
    """The trainer writes trainer_state.json last: a checkpoint without a readable one was cut short while saving."""
    from backends.train import last_checkpoint

    assert last_checkpoint(tmp_path / "absent") is None
    for step, state in ((4, "{}"), (6, '{"glob'), (8, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")


@pytest.mark.parametrize("rows,batch,epochs,ratio", [(20, 4, 0.5, 0.4), (10, 4, 1.5, 0.3), (8, 2, 2, 0.25)])
def test_the_warm_up_is_its_ratio_of_the_steps_the_trainer_runs_fractional_epochs_too(
        tiny_model, tmp_path, monkeypatch, rows, batch, epochs, ratio):
    """20 rows in batches of 4 over half an epoch run 3 steps: a warm-up of 0.4 is ceil(1.2) = 2 of them (as
    Tinker's lr_at counts it, and as transformers read a warmup_ratio), not ceil(0.4 x 5 x 0.5) = 1."""
    seen = []
    begin = getattr(train_module._Progress, "on_step_begin")

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kw):
        seen.append((state.max_steps, lr_scheduler.get_last_lr()[0]))
        return begin(self, args, state, control, **kw)

    monkeypatch.setattr(train_module._Progress, "on_step_begin", on_step_begin)
    data = [{"prompt": f"Continue: {i}.", "completion": str(i)} for i in range(rows)]
    lr = 1e-2
    train(tiny_model, data, _training(epochs=epochs, batch_size=batch, warmup_ratio=ratio, lr=lr), tmp_path, None,
          "cpu", None)
    total = seen[0][0]
    assert len(seen) == total == math.ceil(epochs * math.ceil(rows / batch))
    warm = math.ceil(ratio * total)
    want = [lr * s / warm if s < warm else lr * (total - s) / (total - warm) for s in range(total)]
    assert [x for _, x in seen] == pytest.approx(want)


def test_only_students_the_warm_up_fix_can_change_are_keyed_anew():
    """The fix changes local students with a warm-up over fractional epochs (which ones depends on the row count,
    known at run time): those are keyed anew (warmup_rule 2); every other student keeps its key."""
    from runner.plan import training_settings
    from runner.spec import Hyper
    from runner.stages import semantic

    marked = {(e, w, kind) for e in (1, 2, 0.5, 1.5) for w in (0.0, 0.1) for kind in ("local", "tinker")
              if "warmup_rule" in semantic(training_settings("lora", "sft", Hyper(epochs=e, warmup_ratio=w), 0, kind))}
    assert marked == {(0.5, 0.1, "local"), (1.5, 0.1, "local")}


@pytest.mark.parametrize("targets,problem", [
    (("mlp",), "lora_targets mlp: a LlamaMLP of .*, not a linear layer"),
    (("input_layernorm",), "lora_targets input_layernorm: a LlamaRMSNorm"),
    (("q_proj", "lm_head"), "lora_targets lm_head: .*output layer"),
])
def test_lora_targets_that_name_no_adaptable_module_are_one_line_each(tiny_model, tmp_path, targets, problem):
    """A module of another kind (a block, a norm), or the output layer, was peft's or TRL's ValueError traceback
    after the teacher's rows were paid for."""
    from runner.errors import UserError

    with pytest.raises(UserError, match=problem):
        train(tiny_model, ROWS, _training(lora_targets=targets), tmp_path, None, "cpu", None)
