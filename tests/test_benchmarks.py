"""Every benchmark script still runs: each at its smallest size on the tiny model (or a couple of
MNIST seeds), in a subprocess as a user runs it, printing its figure line. The figures themselves are
not checked (benchmarks print figures; timed tests are not ours); a script that no longer matches the
code it measures fails here instead of in a user's hands."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{script} failed:\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.parametrize("script, args, figure", [
    ("bench_student.py", ["--rows", "4", "--batch-size", "2", "--lora-layers", "1", "--frozen-prompt"],
     "frozen prompt, stored labels"),
    ("bench_student.py", ["--rows", "6", "--batch-size", "2", "--compile"], "compiling took"),
    ("bench_sft.py", ["--rows", "2"], "s/row"),
    ("bench_icl.py", ["--k", "2", "--questions", "2"], "context read once"),
    ("bench_generation.py", ["--prompts", "2", "--max-tokens", "4"], "tokens/s"),
])
def test_lm_benchmarks_run_on_a_tiny_model(tiny_model, script, args, figure):
    assert figure in bench(script, "--model", tiny_model, *args)


def test_mnist_and_executor_benchmarks_run():
    out = bench("bench_mnist.py", "--seeds", "1", "--no-loop", "--data", str(shared("mnist", "mnist.npz")))
    assert "batched:" in out
    assert "local" in bench("bench_executor.py", "--stages", "2", "--seconds", "0.05", "--workers", "1")
