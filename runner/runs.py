"""`subl run` and `subl plan`: expand a spec, run its stages, write and print results."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from backends import Router, backend_name
from runner.loader import Cell, load
from runner.pipeline import Node, Plan, build_plan, execute, status
from runner.spec import Spec
from runner.store import Stage, Store, git_revision, package_versions, stage_key


def _mnist_stage(spec: Spec) -> Stage:
    cfg = {"mnist": spec.mnist.model_dump(), "seed": spec.seed}
    return Stage(stage_key("mnist", cfg, [], 1), "mnist aux-logit distillation", cfg)


def plans(cells: list[Cell], store: Store) -> list[tuple[Cell, Plan | Stage]]:
    out = []
    for c in cells:
        if c.spec.experiment == "mnist":
            out.append((c, _mnist_stage(c.spec)))
        else:
            out.append((c, build_plan(c.spec, store, Router(c.spec))))
    return out


def plan_lines(path: Path, outputs: Path) -> list[str]:
    cells = load(path)
    store = Store(outputs)
    from backends.pricing import estimate_plan, plan_cost_lines

    lines, seen, costs = [], set(), []
    for cell, p in plans(cells, store):
        if len(cells) > 1:
            lines.append(f"[cell {cell.label}]")
        stages = [p] if isinstance(p, Stage) else [n.stage for n, _ in status(p, store)]
        est = {} if isinstance(p, Stage) else estimate_plan(p)  # hosted stages: requests, tokens, cost
        for st in stages:
            state = "reuse" if store.done(st.key) or st.key in seen else "run"
            seen.add(st.key)
            lines.append(f"  {state:5s}  {st.label:55s} {st.key}")
            for e in est.get(st.key, []) if state == "run" else []:
                costs.append(e)
                lines.append(f"{'':9s}{e.line()}")
    n_run = sum(1 for ln in lines if ln.startswith("  run"))
    lines.append(f"{n_run} stage(s) to run, {sum(1 for ln in lines if ln.startswith('  reuse'))} to reuse")
    return lines + plan_cost_lines(costs)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )


def _progress_factory(progress: Progress):
    def make(node: Node):
        task = progress.add_task(node.stage.label, total=None, rate="")
        started = time.time()

        def update(done: int, total: int, note: str = "") -> None:  # note: a hosted job's status and last event
            rate = done / max(time.time() - started, 1e-9)
            label = f"{node.stage.label}: {escape(note)}" if note else node.stage.label
            progress.update(task, completed=done, total=total or None, rate=f"{rate:.2f}/s", description=label)

        return update

    return make


def run_spec(path: Path, outputs: Path, console: Console) -> dict:
    cells = load(path)
    from backends.openai_api import require_keys

    for c in cells:
        require_keys(c.spec)  # a missing API key stops the run before any work
    store = Store(outputs)
    spec0 = cells[0].spec
    started = time.time()
    from runner.diff import spec_hash
    from runner.status import plan_stages

    run_folder = store.root / spec0.name
    run_folder.mkdir(parents=True, exist_ok=True)
    (run_folder / "run.json").write_text(json.dumps({"spec": str(path), "stages": plan_stages(cells, store)}))
    evaluations, comparisons, mnist, ran, filters = [], [], [], {}, []
    with _progress(console, spec0.progress) as progress:
        for cell, p in plans(cells, store):
            if isinstance(p, Stage):
                ran.update(_run_mnist(cell.spec, p, store, progress))
                mnist.append({"cell": cell.label, **json.loads((store.path(p.key) / "result.json").read_text())})
                continue
            ran.update(execute(p, store, progress_factory=_progress_factory(progress)))
            from runner.results import collect, filter_rates

            ev, cmp_ = collect(p, store, cell.label)
            filters += filter_rates(p, store, cell.label)
            evaluations += ev
            comparisons += cmp_
    results = {
        "spec": str(path), "name": spec0.name, "notes": spec0.notes, "git_revision": git_revision(),
        "packages": package_versions(), "cells": [{"label": c.label, "overrides": c.overrides} for c in cells],
        "evaluations": evaluations, "comparisons": comparisons, "mnist": mnist, "filters": filters,
        "methods": _methods(cells), "stages_run": ran, "seconds": round(time.time() - started, 1),
        "spec_hash": spec_hash(cells), "stages": plan_stages(cells, store),
    }
    folder = store.root / spec0.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    from runner.report import print_results

    print_results(results, console, folder)
    return results


def _methods(cells: list[Cell]) -> list[str]:
    """Lines that say what the numbers rest on; printed with every table."""
    lines = []
    for c in cells:
        s = c.spec
        if s.experiment == "mnist":
            lines.append(f"MNIST: {s.mnist.seeds} seeds, m={s.mnist.m}, loss={s.mnist.loss}, init={s.mnist.init}, "
                         f"cross_init={s.mnist.cross_init}")
            continue
        if s.domain.constrained:
            lines.append("numbers were sampled with constrained decoding (digits and one separator only), "
                         "not freely as in the paper")
        for st in s.students:
            how = f"student {st.name}: {st.method} {st.objective}"
            if backend_name(s.student_base(st)) != "local":  # fine-tuned by the provider's API
                h = st.hyperparameters
                lr = f"lr {h.lr:g}, LoRA r {h.lora_r}" if s.backend_kind(s.student_base(st)) == "tinker" \
                    else f"lr_multiplier {h.lr_multiplier}"
                how = (f"student {st.name}: hosted fine-tuning on {backend_name(s.student_base(st))} ({st.objective}, "
                       f"{h.epochs:g} epochs, batch_size {h.batch_size}, {lr})")
            if st.objective == "distill":
                how += f" on vocabulary {st.vocabulary}"
            lines.append(how)
            if st.objective == "distill" and st.vocabulary == "full":
                lines.append(f"LEAK WARNING: student {st.name} distils the full vocabulary, so its soft labels "
                             "include the teacher's probability mass on the trait's own word tokens")
        for ev in s.evaluations:
            if ev.kind == "preference_logprob":
                lines.append("preference metric: exact P(target) after the answer prefix "
                             f"'{ev.answer_prefix.format(category=s.teacher.category)}' (a probe, not sampled answers)")
        from runner.judging import judge_notes

        lines += judge_notes(s)
    return list(dict.fromkeys(lines))


def _run_mnist(spec: Spec, stage: Stage, store: Store, progress: Progress) -> dict:
    if store.done(stage.key):
        return {}
    from runner.mnist import plot_arms, run_mnist, summarize

    with store.build(stage, {"seed": spec.seed}) as b:
        task = progress.add_task(stage.label, total=None, rate="")

        def update(what: str, done: int, total: int) -> None:
            progress.update(task, description=f"mnist: {what}", completed=done, total=total)

        res = run_mnist(spec.mnist, spec.seed, update)
        summary = summarize(res["arms"])
        plot_arms(summary, b.dir / "mnist_arms.png", f"{spec.name}: auxiliary-logit distillation on noise")
        (b.dir / "result.json").write_text(json.dumps({**res, "summary": summary,
                                                       "plot": str(store.path(stage.key) / "mnist_arms.png")}))
        b.rows["seeds"] = spec.mnist.seeds
    return {stage.label: store.manifest(stage.key)["seconds"]}
