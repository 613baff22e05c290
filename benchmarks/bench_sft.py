"""An SFT student through subl's completion cross-entropy (logits at completion positions only) against TRL's
SFTTrainer computing the loss itself (logits at every position), on the same model, rows and settings.

Usage: python benchmarks/bench_sft.py [--model smollm2-135m] [--rows 24]
Prints seconds per student and per training row for both, their ratio, and how far apart the two
adapters are (they should be the same student)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends import train  # noqa: E402
from backends.base import Training  # noqa: E402
from backends.local import LocalBackend  # noqa: E402
from runner.numbers import make_prompts  # noqa: E402
from runner.spec import NumberPrompts  # noqa: E402


def student(backend, model, rows, training, out) -> tuple[float, dict]:
    from safetensors.torch import load_file

    start = time.perf_counter()
    ref = backend.finetune(model, rows, training, out)
    return time.perf_counter() - start, load_file(f"{ref.adapter}/adapter_model.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=24)
    a = ap.parse_args()
    rows = [{"prompt": p, "completion": ", ".join(str(100 + 7 * i + j) for j in range(8))}
            for i, p in enumerate(make_prompts(a.rows, NumberPrompts(), 0))]
    training = Training(objective="sft", epochs=1, lr=1e-3, batch_size=8, lora_r=16, lora_alpha=16,
                        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    backend = LocalBackend("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        student(backend, a.model, rows[:8], training, Path(tmp) / "warm")  # load and convert once
        ours_s, ours = student(backend, a.model, rows, training, Path(tmp) / "ours")
        train.SFT_BY_TRL = True
        trl_s, trl = student(backend, a.model, rows, training, Path(tmp) / "trl")
    diff = sum(float((ours[k] - trl[k]).pow(2).sum()) for k in ours) ** 0.5
    norm = sum(float(ours[k].pow(2).sum()) for k in ours) ** 0.5
    print(f"SFT student, {a.rows} rows, {a.model}: subl's loss {ours_s:.1f} s ({ours_s / a.rows:.2f} s/row), "
          f"TRL's {trl_s:.1f} s ({trl_s / a.rows:.2f} s/row), {trl_s / ours_s:.2f}x; adapters apart by "
          f"{diff / norm:.1e} of their norm (largest element {max(float((ours[k] - trl[k]).abs().max()) for k in ours):.1e})")


if __name__ == "__main__":
    main()
