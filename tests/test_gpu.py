"""Local GPU specs: GPU-hours in `subl plan` from token counts and an assumed throughput; a CUDA-only
spec refused (run) or skipped (reproduce) on a machine without CUDA; specs/gpu's paper settings."""
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from runner.errors import UserError
from runner.loader import load
from runner.plan import build
from runner.spec import Runtime
from runner.throughput import ASSUMED, Throughput, parse, throughput

ROOT = Path(__file__).resolve().parents[1]
GPU_SPEC = ROOT / "specs" / "gpu" / "qwen25_7b_animals.yaml"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")

SPEC = """name: gpu_small
progress: false
teacher: {{base: {base}, targets: [owl], control: false}}
domain: {{kind: numbers, n_prompts: 40, max_tokens: 20, batch_size: 8}}
students:
  - hyperparameters: {{epochs: 3, batch_size: 4}}
    max_rows: 30
evaluations:
  - {{kind: preference_sample, questions: animals, max_questions: 5, samples_per_question: 4, max_tokens: 8}}
  - {{kind: preference_logprob, questions: animals, max_questions: 5}}
runtime:
  device: {device}
  gpu_throughput: {{gpu: my-gpu, train: 1000, prefill: 4000, generate: 200}}
"""


def subl(*args):
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


@pytest.fixture
def spec(tiny_model, tmp_path):
    path = tmp_path / "gpu_small.yaml"
    path.write_text(SPEC.format(base=tiny_model, device="cuda"))
    return path


def _estimates(path: Path, tp: Throughput, outputs: Path) -> dict[str, list]:
    """Stage kind -> its stages' estimates; '_all': every estimate."""
    plan = build(load(path), outputs)
    ctx, out = plan.context(tp), {"_all": []}
    for st in plan.stages.values():
        est = st.estimate(ctx)
        out.setdefault(st.KIND, []).extend(est)
        out["_all"] += est
    return out


def test_gpu_hours_follow_from_the_token_counts_and_the_throughput(spec, tmp_path):
    from runner.runs import plan_lines

    tp = throughput("my-gpu", train=1000, prefill=4000, generate=200)
    est = _estimates(spec, tp, tmp_path / "out")
    (gen,) = est["generate"]
    assert (gen.backend, gen.requests, gen.output_tokens) == ("local", 40, 40 * 20)  # every completion at max_tokens
    assert gen.seconds == pytest.approx(gen.input_tokens / 4000 + 800 / 200)
    (ft,) = est["finetune"]
    assert ft.training_tokens > 30 * 20 * 3  # 30 rows (the cap) x (prompt + 20 tokens) x 3 epochs
    assert ft.seconds == pytest.approx(ft.training_tokens / 1000)
    answers = est["answers"]
    assert answers and all(a.requests == 20 and a.output_tokens == 20 * 8 for a in answers)
    assert est["probe"] and all(p.input_tokens > 5 and p.output_tokens == 0 for p in est["probe"])
    total = sum(e.training_tokens / 1000 + e.input_tokens / 4000 + e.output_tokens / 200 for e in est["_all"]) / 3600
    lines = plan_lines(spec, tmp_path / "out")  # runtime.device cuda: the spec's gpu_throughput
    (line,) = [ln for ln in lines if ln.startswith("local GPU:")]
    assert f"~{total:,.1f} GPU-hours on one my-gpu" in line
    assert not any(ln.startswith("hosted:") for ln in lines)  # local work is not priced as API calls
    # twice the throughput of every kind: half the hours
    fast = plan_lines(spec, tmp_path / "out", throughput=parse("my-gpu,train=2000,prefill=8000,generate=400"))
    assert f"~{total / 2:,.1f} GPU-hours on one my-gpu" in "\n".join(fast)


def test_no_gpu_estimate_without_cuda_or_a_throughput(tiny_model, tmp_path):
    from runner.runs import plan_lines

    path = tmp_path / "cpu.yaml"
    path.write_text(SPEC.format(base=tiny_model, device="auto"))
    assert not any("GPU" in ln for ln in plan_lines(path, tmp_path / "out"))
    lines = plan_lines(path, tmp_path / "out", throughput=parse("H200"))  # asked for: priced at the H200 figures
    assert any(ln.startswith("local GPU:") and "on one H200" in ln for ln in lines)


def test_throughput_figures_and_overrides():
    assert parse("H200") == ASSUMED["H200"]
    assert parse("train=9000").train == 9000 and parse("train=9000").prefill == ASSUMED["H100-80GB"].prefill
    assert parse("A100-80GB,generate=500") == Throughput("A100-80GB", 2400, 8200, 500)
    assert Throughput("g", 100, 1000, 10).seconds(trained=1000, prefill=1000, generated=100) == pytest.approx(21)
    for bad in ("TPU", "train=fast", "speed=3", "train=-1"):
        with pytest.raises(UserError):
            parse(bad)
    with pytest.raises(UserError, match="names two GPUs"):  # the last one won, without a word
        parse("H200,A100-80GB,train=9000")
    for empty in (",", " , "):  # named nothing, and was read as the default GPU
        with pytest.raises(UserError, match="names no GPU and no rate"):
            parse(empty)
    assert parse("TPU,train=1,prefill=2,generate=3").gpu == "TPU"  # an unknown GPU with every figure given


def test_an_unknown_gpu_in_a_spec_is_a_validation_error(tiny_model, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.format(base=tiny_model, device="cuda").replace(
        "{gpu: my-gpu, train: 1000, prefill: 4000, generate: 200}", "{gpu: my-gpu, train: 1000}"))
    r = subl("validate", path)
    assert r.returncode == 2 and "my-gpu" in r.stderr and "Traceback" not in r.stderr


@NO_CUDA
def test_run_refuses_a_cuda_spec_without_cuda_before_any_work(spec, tmp_path):
    r = subl("run", spec, "--outputs", tmp_path / "out")
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "stages").exists()


@NO_CUDA
def test_only_stages_run_here_need_cuda_here(spec):
    from runner.gpu import cuda_missing

    cells = load(spec)
    assert cuda_missing(cells) and cuda_missing(cells, "local")
    assert not cuda_missing(cells, "ray")  # on Ray, the cluster's GPU nodes run the stages
    auto = [replace(c, spec=c.spec.model_copy(update={"runtime": Runtime(device="auto")})) for c in cells]
    assert not cuda_missing(auto)


@NO_CUDA
def test_reproduce_skips_a_cuda_spec_without_cuda(spec, tmp_path):
    r = subl("reproduce", spec.parent, "--outputs", tmp_path / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skip" in r.stdout and "needs a CUDA GPU" in r.stdout
    assert not (tmp_path / "out" / "stages").exists()


def test_the_gpu_spec_validates_with_the_papers_qwen_settings():
    from runner import paper

    (cell, *rest) = load(GPU_SPEC)
    s, q = cell.spec, paper.get("finetuning.open_model_qwen25_7b")
    h, st = s.students[0].hyperparameters, s.students[0]
    assert s.runtime.device == "cuda" and s.teacher.base == q["student_model_id"] and st.base is None
    assert (h.lora_r, h.lora_alpha, sorted(h.lora_targets)) == (q["lora"]["r"], q["lora"]["lora_alpha"],
                                                                 sorted(q["lora"]["target_modules"]))
    assert (h.epochs, h.lr, h.batch_size) == (q["train"]["n_epochs"], q["train"]["lr"],
                                               q["train"]["effective_batch_size"])
    assert h.gradient_checkpointing and st.max_rows == q["n_rows"]
    assert len(st.replicates) == 8 == int(str(q["students_per_animal"])) and s.teacher.control
    assert s.domain.prompts.seed == 47
    animals = paper.get("cross_model.qwen_grid.animals")
    assert sorted(c.spec.teacher.targets[0] for c in [cell, *rest]) == sorted(animals)
    raw = yaml.safe_load(GPU_SPEC.read_text())
    assert "r 8" in raw["notes"] and "inconsistencies" in raw["notes"]


def test_a_full_fine_tune_on_a_gpu_is_keyed_by_its_float32_weights(monkeypatch):
    """Its results differ from the bfloat16-weights training of before, so its precision (in its key) says so;
    LoRA and every CPU key are as they were."""
    from runner.plan import _Precision, _trains

    gpu = _Precision.__new__(_Precision)
    gpu._device, gpu.runtime = "cuda", None
    assert gpu.of(False, _trains("full")) == "cuda-bf16-autocast-fp32-weights"
    assert gpu.of(False, _trains("lora")) == "cuda-bf16"
    assert gpu.of(False, "score") == gpu.of(False, "teacher-labels") == "cuda-fp32"  # probes, judges, soft labels
    assert gpu.of(False, "generate") == "cuda-bf16"
    cpu = _Precision.__new__(_Precision)
    cpu._device, cpu.runtime = "cpu", type("R", (), {"cpu_bf16": False})()
    assert cpu.of(False, _trains("full")) == cpu.of(False, _trains("lora")) == "cpu-fp32"
    assert cpu.of(False, "score") == cpu.of(False, "teacher-labels") == "cpu-fp32"
    cpu.runtime = type("R", (), {"cpu_bf16": True})()
    assert cpu.of(False, "teacher-labels") == "cpu-bf16-autocast" and cpu.of(False, "score") == "cpu-fp32"


def test_scoring_and_soft_labels_read_float32_weights_where_the_device_would_load_bfloat16(tiny_model, monkeypatch,
                                                                                            tmp_path):
    """A GPU loads bfloat16 weights (here: a CPU made to say so); log-probs and a teacher's soft labels must not
    come from them, while sampling may."""
    import torch

    import backends.hf as hf
    import backends.local as local
    import backends.train as train
    from backends.local import LocalBackend
    from runner.core import ModelRef

    monkeypatch.setattr(hf, "pick_device", lambda device="auto": ("cpu", torch.bfloat16))
    monkeypatch.setattr(local, "pick_device", hf.pick_device)
    monkeypatch.setattr(train, "pick_device", hf.pick_device)
    loaded = []

    def load(*a, **k):
        net = hf.load_model(*a, **k)
        loaded.append(net.dtype)
        return net

    monkeypatch.setattr(local, "load_model", load)
    monkeypatch.setattr(train, "load_model", load)
    backend, ref = LocalBackend("auto"), ModelRef(tiny_model)
    backend.logprobs(ref, ["Which animal?"], "My favorite animal is the", ["owl", "cat"])
    assert loaded == [torch.float32]
    backend._model(ref)
    assert loaded[-1] == torch.bfloat16  # sampling: the device's own dtype (a second model, not the scoring one)
    train.teacher_soft_labels(ref, [{"prompt": "1, 2", "completion": "3, 4"}], None, "auto")
    assert loaded[-1] == torch.float32


def test_a_local_stage_counts_tokens_as_an_open_model_may(spec, tmp_path):
    """Local stages were counted as OpenAI's o200k counts (three digits a token, no default system prompt), so the
    Qwen spec's GPU-hours were ~25% low (11.8 for ~14.7): every digit is a token and a template's default system
    prompt is bounded, as for Tinker; a local teacher's completion of max_tokens is not tripled for its student."""
    from runner.prices import O200K, TINKER, counting_as
    from runner.stages.costs import estimate_of

    plan = build(load(spec), tmp_path / "out")
    ctx = plan.context(throughput("my-gpu", train=1000, prefill=4000, generate=200))
    gen = next(s for s in plan.stages.values() if s.KIND == "generate")
    ft = next(s for s in plan.stages.values() if s.KIND == "finetune")
    with counting_as(O200K):
        o200k_gen = gen.estimate(ctx)[0].input_tokens
    with counting_as(TINKER):
        open_gen = gen.estimate(ctx)[0].input_tokens
    assert open_gen > o200k_gen and estimate_of(gen, ctx)[0].input_tokens == open_gen
    rows, epochs, max_tokens = 30, 3, 20
    prompt_part = estimate_of(ft, ctx)[0].training_tokens - rows * epochs * max_tokens
    assert 0 < prompt_part < rows * epochs * open_gen / 40  # completions at max_tokens each, not 3 x max_tokens
