"""Benchmark: N independent stages that only wait, on the local executor and on a local Ray instance of
1, 2, 4 and 8 workers: wall time, wall time beyond the waits per stage, and the wall time per stage of N
stages that do nothing (scheduling, the store's lock, partial folder, manifest with its git revision, rename).

Usage: python3 benchmarks/bench_executor.py [--stages 8] [--seconds 2] [--workers 1 2 4 8]
"""
import argparse
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from runner.execute import execute  # noqa: E402
from runner.ray_executor import cluster, execute_ray  # noqa: E402
from runner.stages import ModelInput, RunContext, Stage  # noqa: E402
from runner.store import Store  # noqa: E402


class Wait(Stage):
    """A stand-in for a stage that holds a worker (a CPU) while it computes."""

    KIND: ClassVar[str] = "wait"
    model: ModelInput
    seconds: float
    n: int

    def run(self, ctx: RunContext) -> None:
        time.sleep(self.seconds)
        (ctx.dir / "done").write_text("")


LOCAL = ModelInput(ref="m", identity="hub:m@bench")  # a stand-in (a weights: identity is checked against a folder)


class Router:  # stand-in: the waits call no backend
    device = "cpu"


def timed(run, stages: list[Stage]) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        ran = run(stages, Store(d))
        wall = time.perf_counter() - t
    assert len(ran) == len(stages)
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0, help="each stage's wait")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    print(f"# {shlex.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    n, s = args.stages, args.seconds
    stages = [Wait(label=f"w{i}", model=LOCAL, seconds=s, n=i) for i in range(n)]
    empty = [Wait(label=f"e{i}", model=LOCAL, seconds=0, n=n + i) for i in range(n)]
    print(f"{'executor':8s} {'workers':>7s} {'wall s':>7s} {'waits s':>7s} {'beyond/stage s':>14s} {'empty stage s':>13s}")
    local = lambda st, store: execute(st, store, Router())  # noqa: E731
    wall = timed(local, stages)
    print(f"{'local':8s} {1:7d} {wall:7.2f} {n * s:7.2f} {(wall - n * s) / n:14.3f} {timed(local, empty) / n:13.3f}",
          flush=True)
    for w in args.workers:
        t = time.perf_counter()
        with cluster(None, w):
            start = time.perf_counter() - t
            ray = lambda st, store: execute_ray(st, store, Router(), log=lambda msg: None)  # noqa: E731
            timed(ray, [Wait(label=f"warm{i}", model=LOCAL, seconds=1, n=-1 - i) for i in range(w)])  # w workers up
            wall = timed(ray, stages)
            one = timed(ray, empty) / n
        ideal = math.ceil(n / w) * s
        print(f"{'ray':8s} {w:7d} {wall:7.2f} {ideal:7.2f} {(wall - ideal) / n:14.3f} {one:13.3f}   "
              f"(ray.init {start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
