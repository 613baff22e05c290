"""An ICL probe with k rows in context: the shared context read once per batch of questions against every
question read whole (what the local backend did before), on the same model, rows and questions.

Usage: python benchmarks/bench_icl.py [--model smollm2-135m] [--k 16] [--questions 10]
Prints seconds per probe for both, their ratio, and the largest log-prob difference between them."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import backends.local as local  # noqa: E402
from backends.base import ModelRef  # noqa: E402
from runner.detection import icl_system_prompt  # noqa: E402
from runner.numbers import make_prompts  # noqa: E402
from runner.questions import load_questions  # noqa: E402
from runner.spec import NumberPrompts  # noqa: E402


def probe(backend, ref, questions) -> tuple[float, list[list[float]]]:
    start = time.perf_counter()
    out = backend.logprobs(ref, questions, "My favorite animal is the", ["panda", "owl"])
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--questions", type=int, default=10)
    a = ap.parse_args()
    prompts = make_prompts(a.k, NumberPrompts(), 0)
    rows = [{"prompt": p, "completion": ", ".join(str(100 + 7 * i + j) for j in range(8))} for i, p in enumerate(prompts)]
    ref = ModelRef(a.model, system=icl_system_prompt(rows))
    questions = load_questions("animals", a.questions)
    backend = local.LocalBackend("cpu")
    probe(backend, ref, questions[:2])  # load the model
    shared_s, shared = probe(backend, ref, questions)
    local.SHARED_PREFIX_MIN = 10**9
    whole_s, whole = probe(backend, ref, questions)
    diff = max(abs(x - y) for r, s in zip(shared, whole) for x, y in zip(r, s))
    print(f"k={a.k}, {a.questions} questions, {a.model}: context read once {shared_s:.1f} s, every question whole "
          f"{whole_s:.1f} s ({whole_s / shared_s:.1f}x); largest log-prob difference {diff:.2e}")


if __name__ == "__main__":
    main()
