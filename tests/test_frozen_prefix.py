"""Top-layers LoRA with the frozen lower layers computed once: the same student, less work."""
import pytest
import torch

from backends import frozen_prefix, train
from backends.base import ModelRef, Training
from backends.frozen_prefix import decoder_layers, hidden_states_at, top_layers_only
from backends.local import LocalBackend, load_model

ROWS = [{"prompt": f"Go on: {i}, {i * 3}.", "completion": ", ".join(str(i + k) for k in range(1 + i % 5))}
        for i in range(12)]


def test_top_layers_fed_the_lower_layers_output_give_the_full_models_logits(tiny_model):
    model = load_model(ModelRef(tiny_model), "cpu")
    ids = torch.tensor([[5, 9, 14, 3, 7, 2], [8, 1, 4, 6, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        h = hidden_states_at(model, 1, ids, mask)
        with top_layers_only(model, 1):
            assert len(decoder_layers(model)) == 1
            top = model(inputs_embeds=h, attention_mask=mask).logits
    assert len(decoder_layers(model)) == 2  # restored
    assert not torch.allclose(h, model.get_input_embeddings()(ids))  # layer 0 ran
    real = mask.bool()
    assert torch.allclose(top[real], full[real], atol=1e-5)


def test_stored_lower_layers_serve_only_a_model_of_their_precision(tiny_model):
    """A matrix over runtime.device trains one base on the same rows on a CPU (float32) and a GPU (bfloat16) in one
    process; the states one stored must not be fed to the other."""
    model, seqs = load_model(ModelRef(tiny_model), "cpu"), [[5, 9, 14, 3], [8, 1, 4]]
    frozen_prefix._memo.clear()
    first = frozen_prefix.prefix_states(model, "tiny", 1, seqs, 0)
    second = frozen_prefix.prefix_states(model.to(torch.bfloat16), "tiny", 1, seqs, 0)
    assert first[0].dtype == torch.float32 and second[0].dtype == torch.bfloat16


def test_an_architecture_that_transforms_its_input_embeddings_trains_through_every_layer(tiny_model):
    """Granite multiplies inputs_embeds (Gemma normalises them): stored states fed to the top layers would be
    transformed again, so such a student gets no stored states."""
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    granite = GraniteForCausalLM(GraniteConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1,
                                               embedding_multiplier=12.0)).eval()
    ids, mask = torch.tensor([[5, 9, 14, 3]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        full = granite(input_ids=ids, attention_mask=mask).logits
        h = hidden_states_at(granite, 1, ids, mask)
        with top_layers_only(granite, 1):
            top = granite(inputs_embeds=h, attention_mask=mask).logits
    assert not torch.allclose(top, full, atol=1e-3)  # why: the stored states would be multiplied again
    data = [{"input_ids": [5, 9, 14, 3], "completion_mask": [0, 0, 1, 1]}]
    assert train._frozen_prefix(granite, "granite", _training(lora_layers=1), data, 0, False, None) == (None, 0)
    llama = load_model(ModelRef(tiny_model), "cpu")
    assert train._frozen_prefix(llama, tiny_model, _training(lora_layers=1), data, 0, False, None)[1] == 1


def _training(**kw):
    return Training(objective="distill", vocabulary="numbers-only", epochs=1, lr=5e-3, batch_size=4, lora_r=4,
                    lora_alpha=8, lora_targets=("q_proj", "v_proj"), **kw)


def test_a_student_trained_on_the_stored_lower_layers_equals_one_trained_through_them(tiny_model, tmp_path,
                                                                                       monkeypatch):
    from safetensors.torch import load_file

    backend, teacher = LocalBackend("cpu"), ModelRef(tiny_model, system="You love owls.")
    calls = []
    real_compute = frozen_prefix._compute
    monkeypatch.setattr(frozen_prefix, "_compute", lambda *a: calls.append(1) or real_compute(*a))
    frozen_prefix._memo.clear()
    cached = backend.finetune(tiny_model, ROWS, _training(lora_layers=1), tmp_path / "cached", teacher)
    again = backend.finetune(tiny_model, ROWS, _training(lora_layers=1, seed=1), tmp_path / "again", teacher)
    assert len(calls) == 1  # the second student (another seed) reused the states
    monkeypatch.setattr(frozen_prefix, "MAX_CACHED_VALUES", 0)  # over budget: trained through every layer
    through = backend.finetune(tiny_model, ROWS, _training(lora_layers=1), tmp_path / "through", teacher)
    a, b, c = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (cached, through, again))
    assert a.keys() == b.keys() and all(".layers.1." in k for k in a)  # the top layer only, its own number
    moved = max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k)
    assert moved > 1e-4 and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)
    assert not all(torch.allclose(a[k], c[k]) for k in a)  # seeds still differ


def test_an_sft_student_on_stored_lower_layers_equals_trls_sft_through_them(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    backend = LocalBackend("cpu")
    sft = Training(objective="sft", epochs=1, lr=5e-3, batch_size=4, lora_r=4, lora_alpha=8,
                   lora_targets=("q_proj", "v_proj"), lora_layers=1)
    frozen_prefix._memo.clear()
    ours = backend.finetune(tiny_model, ROWS, sft, tmp_path / "ours")
    monkeypatch.setattr(frozen_prefix, "MAX_CACHED_VALUES", 0)  # every layer run ...
    monkeypatch.setattr(train, "SFT_BY_TRL", True)  # ... and TRL's own SFT loss
    trl = backend.finetune(tiny_model, ROWS, sft, tmp_path / "trl")
    a, b = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (ours, trl))
    moved = max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k)
    assert moved > 1e-4 and a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_sft_student_through_subls_loss_equals_trls_sft(tiny_model, tmp_path, monkeypatch, method):
    """Every layer trained (no lora_layers): subl's completion cross-entropy, with logits at completion
    positions only, trains the same student as TRL's SFTTrainer."""
    from safetensors.torch import load_file

    backend = LocalBackend("cpu")
    sft = Training(method=method, objective="sft", epochs=1, lr=5e-3, batch_size=4, lora_r=4, lora_alpha=8,
                   lora_targets=("q_proj", "v_proj"))
    ours = backend.finetune(tiny_model, ROWS, sft, tmp_path / "ours")
    monkeypatch.setattr(train, "SFT_BY_TRL", True)
    trl = backend.finetune(tiny_model, ROWS, sft, tmp_path / "trl")
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = (load_file(f"{m.adapter or m.base}/{name}") for m in (ours, trl))
    start = load_file(f"{tiny_model}/model.safetensors")
    moved = max(float((w - start[k]).abs().max()) if k in start else float(w.abs().max()) for k, w in a.items())
    assert moved > 1e-4 and a.keys() == b.keys()
    apart = max(float((a[k] - b[k]).abs().max()) for k in a)  # float rounding, through Adam's normalisation
    assert apart < 1e-3 * moved, (apart, moved)


def test_more_lora_layers_than_the_model_has_is_one_clear_error(tiny_model, tmp_path):
    from runner.errors import UserError

    with pytest.raises(UserError, match="lora_layers 3: .* has only 2 decoder layers"):
        LocalBackend("cpu").finetune(tiny_model, ROWS, _training(lora_layers=3), tmp_path / "x",
                                     ModelRef(tiny_model, system="You love owls."))


def test_subl_run_refuses_too_many_lora_layers_before_generating(tiny_model, tmp_path, monkeypatch, capsys):
    import sys

    from runner import cli

    spec = tmp_path / "deep.yaml"
    spec.write_text(f"""name: deep
progress: false
teacher: {{base: {tiny_model}, targets: [owl], control: true}}
domain: {{kind: numbers, n_prompts: 4, max_tokens: 6, constrained: true}}
students:
  - {{name: top, hyperparameters: {{lora_layers: 3}}}}
evaluations: []
""")
    monkeypatch.setattr(sys, "argv", ["subl", "run", str(spec), "--outputs", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "finetune top:owl:r0: lora_layers 3, but" in err and "has only 2 decoder layers" in err
    assert not list((tmp_path / "out").glob("stages/*"))  # nothing generated


@pytest.mark.parametrize("targets, err_part", [("[q_proj, dwn_proj]", "lora_targets dwn_proj: no module of"),
                                                ("[mlp]", "lora_targets mlp: a LlamaMLP of")])
def test_lora_targets_the_base_lacks_stop_the_run_before_the_teacher_generates(tiny_model, tmp_path, monkeypatch,
                                                                               capsys, targets, err_part):
    """They were found when the student trained, after the teacher's rows were generated (or paid for)."""
    import sys

    from runner import cli

    spec = tmp_path / "targets.yaml"
    spec.write_text(f"""name: targets
progress: false
teacher: {{base: {tiny_model}, targets: [owl], control: false}}
domain: {{kind: numbers, n_prompts: 4, max_tokens: 6, constrained: true}}
students:
  - {{name: s, hyperparameters: {{lora_targets: {targets}}}}}
evaluations: []
""")
    monkeypatch.setattr(sys, "argv", ["subl", "run", str(spec), "--outputs", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"finetune s:owl:r0: {err_part}" in err and "its linear modules: " in err
    assert not list((tmp_path / "out").glob("stages/*"))  # nothing generated


@pytest.mark.parametrize("lora_layers", [None, 1])
def test_a_student_computing_only_its_vocabularys_logits_equals_one_computing_them_all(tiny_model, tmp_path,
                                                                                      monkeypatch, lora_layers):
    """vocab_logits (the output layer's rows of the numbers-only vocabulary) trains the same adapter as the
    full logits sliced to it (PLAIN_HEADS emptied: every architecture takes the full path)."""
    from safetensors.torch import load_file

    backend, teacher = LocalBackend("cpu"), ModelRef(tiny_model, system="You love owls.")
    calls = []
    real = train.vocab_logits
    monkeypatch.setattr(train, "vocab_logits", lambda *a: calls.append(real(*a)) or calls[-1])
    frozen_prefix._memo.clear()
    fast = backend.finetune(tiny_model, ROWS, _training(lora_layers=lora_layers), tmp_path / "fast", teacher)
    assert calls and all(c is not None and c.shape[-1] < 1000 for c in calls)  # the vocabulary's columns only
    monkeypatch.setattr(train, "PLAIN_HEADS", ())
    full = backend.finetune(tiny_model, ROWS, _training(lora_layers=lora_layers), tmp_path / "full", teacher)
    a, b = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (fast, full))
    moved = max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k)
    assert moved > 1e-4 and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)


def test_no_stored_prefix_for_a_model_whose_layers_differ_in_kind():
    """Gemma and sliding-window Qwen pick each layer's attention by its index: run alone, the top layers would be
    renumbered from 0 and take the bottom layers' kinds (a different student), so they are run through."""
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(layer_types=["sliding_attention", "full_attention"]))
    training = Training(method="lora", lora_layers=1)
    assert train._frozen_prefix(model, "m", training, [], 0, False, None) == (None, 0)


def test_a_full_fine_tune_keeps_float32_weights_where_inference_would_use_bfloat16(tiny_model, monkeypatch):
    """On a GPU models load in bfloat16; a full student's Adam steps below half a bfloat16 step would round away."""
    from backends import hf

    monkeypatch.setattr(hf, "pick_device", lambda device="auto": ("cpu", torch.bfloat16))  # as on CUDA
    full = train._student(tiny_model, Training(method="full"), "cpu", None)
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    lora = train._student(tiny_model, Training(method="lora", lora_targets=("q_proj", "v_proj")), "cpu", None)
    assert {p.dtype for p in lora.parameters() if not p.requires_grad} == {torch.bfloat16}  # frozen base as before


def test_a_stage_refuses_to_train_over_several_gpus():
    from types import SimpleNamespace

    from runner.errors import UserError

    train.one_device(SimpleNamespace(n_gpu=1))
    with pytest.raises(UserError, match="4 GPUs are visible: a subl stage trains on one"):
        train.one_device(SimpleNamespace(n_gpu=4))
