"""Benchmark: 5-seed default MNIST subliminal run, batched models vs a plain per-seed loop.

Usage: python3 benchmarks/bench_mnist.py [--threads 1] [--seeds 5] [--no-loop] [--data PATH]
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from runner import mnist as M  # noqa: E402

DATA = ROOT.parent / "shared/data/mnist/mnist.npz"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="base seed")
    ap.add_argument("--data", default=str(DATA), help="MNIST .npz or IDX folder")
    ap.add_argument("--no-loop", action="store_true", help="skip the plain-loop comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {shlex.join([Path(sys.executable).name, *sys.argv])}   "
          f"(torch {torch.__version__}, {torch.get_num_threads()} thread(s))", flush=True)

    data = M.load_mnist(args.data)
    spec = M.MnistSpec(data=args.data, seeds=args.seeds)
    # warm up BLAS/allocator so neither timed run pays the first-call cost
    tiny = M.MnistData(data.x_train[:2048], data.y_train[:2048], data.x_test[:256], data.y_test[:256])
    M.run_mnist(spec.model_copy(update={"teacher_epochs": 1, "student_epochs": 1,
                                        "noise_per_epoch": 2048}), 0, data=tiny)

    r = M.run_mnist(spec, args.seed, data=data)
    print(f"batched: {r['seconds']:.1f} s for {args.seeds} seeds (all arms, incl. test eval)")
    for arm, s in M.summarize(r["arms"]).items():
        ci = f" ± {100 * s['ci95']:.1f}" if s["ci95"] is not None else ""
        print(f"  {arm:10s} {100 * s['mean']:5.1f}%{ci}   seeds: "
              + " ".join(f"{100 * v:.1f}" for v in s["values"]))
    if args.no_loop:
        return
    t0 = time.perf_counter()
    loop = M.run_mnist_loop(spec, args.seed, data=data)
    same = all(abs(a - b) < 0.01 for arm in r["arms"] for a, b in zip(r["arms"][arm], loop["arms"][arm]))
    print(f"loop:    {time.perf_counter() - t0:.1f} s   loop/batched = {loop['seconds'] / r['seconds']:.2f}x"
          f"   (accuracies {'match' if same else 'DIFFER'} within 1 pt)")


if __name__ == "__main__":
    main()
