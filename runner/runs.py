"""`subl run` and `subl plan`: build a spec's stage graph, run or price it, write and print results."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from backends import Router
from runner.core import backend_name
from runner.display import usd
from runner.errors import UserError
from runner.execute import execute
from runner.loader import Cell, load
from runner.plan import Plan, build, plan_stages, spec_hash
from runner.prices import PRICES_DATE
from runner.stages import Estimate, Stage, si
from runner.stages.costs import estimate_of
from runner.files import write_text_atomic
from runner.store import Store, git_revision, package_versions


def plan_lines(path: Path, outputs: Path, check: bool = False, throughput=None) -> list[str]:
    """throughput (runner.throughput.Throughput): price local stages in GPU-hours at it; None: a spec with
    runtime.device cuda assumes its runtime.gpu_throughput, others get no local estimate."""
    from runner.gpu import assumed_throughput, gpu_lines, unresolved_lines

    cells = load(path)
    store = Store(outputs)
    plan = build(cells, store.root, provisional=not check)
    checked = []
    if check:  # the key, the models, fine-tuning rights and rate limits, before anything is paid for
        from backends.openai_api import require_keys
        from runner.preflight import preflight

        for c in cells:
            require_keys(c.spec)
        checked = [f"check: {n}" for n in preflight(plan, store)] or ["check: no hosted stage left to run"]
    tp = throughput or assumed_throughput(cells)
    ctx = plan.context(tp, store)
    lines, seen, costs = [], set(), []
    for cp in plan.cells:
        if len(cells) > 1:
            lines.append(f"[cell {cp.cell.label}]")
        for st in cp.stages:
            state = "reuse" if store.done(st.key) or st.key in seen else "run"
            seen.add(st.key)
            lines.append(f"  {state:5s}  {st.label:55s} {st.key}")
            for e in estimate_of(st, ctx) if state == "run" else []:
                costs.append(e)
                lines.append(f"{'':9s}{e.line()}")
    n_run = sum(1 for ln in lines if ln.startswith("  run"))
    lines.append(f"{n_run} stage(s) to run, {sum(1 for ln in lines if ln.startswith('  reuse'))} to reuse")
    hosted = [e for e in costs if e.backend != "local"]
    local = [e for e in costs if e.backend == "local"]
    return (lines + cost_lines(hosted) + gpu_lines(local, tp) + unresolved_lines(plan) + stale_lines(store, plan)
            + alias_lines(plan) + checked)


def alias_lines(plan) -> list[str]:
    """A warning per OpenAI model the plan names by an alias that may move (runner/aliases.py)."""
    from runner.aliases import alias_warnings
    from runner.drift import pinned_inputs
    from runner.stages import ModelInput

    return alias_warnings(m.identity for cp in plan.cells for st in cp.stages for m in pinned_inputs(st)
                          if isinstance(m, ModelInput))


def cost_lines(estimates: list[Estimate]) -> list[str]:
    """The hosted total of a plan: requests, tokens, cost, and the price table's date."""
    if not estimates:
        return []
    parts = [f"{sum(e.requests for e in estimates):,} requests"]
    tin, tout = sum(e.input_tokens for e in estimates), sum(e.output_tokens for e in estimates)
    if tin or tout:
        parts.append(f"~{si(tin)} input + <={si(tout)} output tokens")
    train = sum(e.training_tokens for e in estimates)
    if train:
        parts.append(f"~{si(train)} training tokens")
    known = [e.cost for e in estimates if e.cost is not None]
    unpriced = sorted({f"{e.backend}:{e.model}" for e in estimates if e.cost is None})
    cost = f"<= {usd(sum(known))}" if known else "cost unknown"  # rounded up, as --max-usd is checked
    if unpriced:
        cost += f" (no price for {', '.join(unpriced)}: add it under backends.<name>.prices)"
    from backends.tinker_prices import PRICES_DATE as TINKER_DATE

    tables = [f"price table dated {PRICES_DATE}" if t == "openai" else f"Tinker prices dated {TINKER_DATE} (not "
              "checked against the service; tokens estimated without the model's tokenizer, every digit a token as "
              "Qwen's split them, with a template's default system prompt)" for t in sorted({e.table for e in estimates}, reverse=True)]
    return [f"hosted: {', '.join(parts)}, {cost}; {' and '.join(tables)} (USD per 1M tokens, a spec's `prices` "
            "override them); output counted at max_tokens, so costs are upper bounds"]


def stale_lines(store: Store, plan: Plan) -> list[str]:
    """Finished stages made by an older key scheme: kept, never reused; say what reruns instead."""
    from runner.status import old_scheme_stages

    old = old_scheme_stages(store)
    if not old:
        return []
    todo = sum(1 for k in plan.stages if not store.done(k))
    return [f"note: {len(old)} finished stage(s) in {store.stages} were made by an older subl (key scheme 1, before "
            f"typed stages); they are kept but not reused, so this plan runs {todo} stage(s) anew "
            "(`subl status` lists them)"]


class _Bar:
    """Progress of one stage; `finish` closes its bar, so a stage that finished at once shows as done."""

    def __init__(self, progress: Progress, stage: Stage):
        self.progress, self.label = progress, stage.label
        self.task = progress.add_task(stage.label, total=None, rate="")
        self.started = time.time()
        self.seen = False

    def __call__(self, done: int, total: int, note: str = "") -> None:  # note: a hosted job's status, say
        self.seen = True
        rate = done / max(time.time() - self.started, 1e-9)
        label = f"{self.label}: {note}" if note else self.label
        self.progress.update(self.task, completed=done, total=total or None, rate=f"{rate:.2f}/s", description=label)

    def finish(self) -> None:
        t = self.progress.tasks[self.task]
        total = t.total or max(t.completed, 1)
        self.progress.update(self.task, total=total, completed=total, description=self.label)
        self.progress.stop_task(self.task)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
    )


def run_spec(path: Path, outputs: Path, console: Console, executor: str | None = None, address: str | None = None,
             cpus: int | None = None, max_usd: float | None = None) -> dict:
    """Run a spec with the local executor, or with Ray (`executor`, else the spec's runtime.executor): on the
    cluster at `address`, else on a local Ray instance of `cpus` CPUs. Hosted stages run only when their
    upper-bound cost fits max_usd (runner/budget.py)."""
    from runner.gpu import refuse_without_cuda

    cells = load(path)
    kind = executor or cells[0].spec.runtime.executor
    refuse_without_cuda(path, cells, kind)
    if address and kind != "ray":
        raise UserError("--address needs --executor ray (or runtime.executor: ray in the spec)")
    if cpus is not None and (kind != "ray" or address):  # it sizes a local Ray instance, and was silently ignored
        raise UserError(f"--cpus {cpus}: sets the CPUs of a local Ray instance, so it needs --executor ray (or "
                        "runtime.executor: ray in the spec) and no --address")
    if kind == "ray":
        from runner.ray_executor import check_outputs, cluster, describe

        check_outputs(outputs, address)
        with cluster(address, cpus) as resources:
            where = {"kind": "ray", "address": address or "local instance", "resources": resources}
            console.print(f"ray: {where['address']}, {describe(resources)}", markup=False)
            return _run(path, cells, outputs, console, where, max_usd)
    return _run(path, cells, outputs, console, {"kind": "local"}, max_usd)


def _run(path: Path, cells: list[Cell], outputs: Path, console: Console, where: dict, max_usd: float | None) -> dict:
    from backends.openai_api import require_keys
    from runner import budget

    for c in cells:
        require_keys(c.spec)  # a missing API key stops the run before any work
    store = Store(outputs)
    store.make_folders(cells[0].spec.name)
    plan = build(cells, store.root)
    # an unaffordable or unpriced hosted stage stops here, before preflight's requests (one costs a token)
    total, hosted = budget.check(plan, store, max_usd)
    if hosted:
        console.print(f"spend: the hosted stages to run may cost up to {usd(total)}"
                      + (f" (--max-usd {budget.usd_down(max_usd)})" if max_usd is not None else ""), markup=False)
    from runner.preflight import check_local_training, preflight

    check_local_training(plan, store)
    for note in preflight(plan, store):  # a refused key or fine-tuning right stops here, before any spending
        console.print(f"check: {note}", markup=False)
    if hosted and (again := budget.check(plan, store, max_usd)[0]) > total:  # a stated tokens-per-minute limit
        console.print(f"spend: with the tokens-per-minute limits the servers state, up to {usd(again)}",  # splits
                      markup=False)  # sampled requests, each call sending its prompt again
    for note in _slow_bf16(cells):
        console.print(f"warning: {note}", markup=False)
    for line in alias_lines(plan):
        console.print(line, markup=False)
    spec0, started = cells[0].spec, time.time()
    folder = store.root / spec0.name
    folder.mkdir(parents=True, exist_ok=True)
    stages = plan_stages(plan)
    code = {"git_revision": git_revision(), "packages": package_versions()}  # what this run imported, at its start
    write_text_atomic(folder / "run.json", json.dumps({"spec": str(path), "stages": stages, "executor": where,
                                                       **code}))
    from runner.results import collect, filter_rates, mnist_figure, theorem_across_cells

    run_stages = execute
    if where["kind"] == "ray":
        from runner.ray_executor import execute_ray as run_stages
    evaluations, comparisons, ran, filters, figures = [], [], {}, [], []
    with _progress(console, spec0.progress) as progress:
        for cp in plan.cells:
            s = cp.spec
            router = Router(s.runtime.device, s.runtime.cpu_bf16, s.backends)
            slots = {name: b.parallel_stages for name, b in s.backends.items()}
            ran.update(run_stages(cp.stages, store, router, lambda st: _Bar(progress, st),
                                  lambda msg: console.print(msg, markup=False), slots))
            ev, cmp_ = collect(cp, store)
            filters += filter_rates(cp, store)
            evaluations += ev
            comparisons += cmp_
            figures += [f for f in [mnist_figure(cp, store)] if f]
    comparisons += theorem_across_cells(cells, evaluations)
    results = {
        "spec": str(path), "name": spec0.name, "notes": spec0.notes, **code, "cells": [{"label": c.label, "overrides": c.overrides} for c in cells],
        "evaluations": evaluations, "comparisons": comparisons, "filters": filters, "figures": figures,
        "methods": _methods(cells), "stages_run": ran, "seconds": round(time.time() - started, 1),
        "spec_hash": spec_hash(cells), "stages": stages, "executor": where,
    }
    from runner.results_schema import Results

    Results.model_validate(results)  # the documented schema, checked on every write
    write_text_atomic(folder / "results.json", json.dumps(results, indent=2))
    from runner.report import print_results

    print_results(results, console, folder)
    return results


def _slow_bf16(cells: list[Cell]) -> list[str]:
    """runtime.cpu_bf16 on a CPU that has no native bfloat16 makes local stages several times slower."""
    if not any(c.spec.runtime.cpu_bf16 for c in cells):
        return []
    from backends.hf import cpu_has_fast_bf16, pick_device

    if pick_device(cells[0].spec.runtime.device)[0] != "cpu" or cpu_has_fast_bf16() is not False:
        return []
    return ["runtime.cpu_bf16 is on, but this CPU has no AVX512-BF16 or AMX: bfloat16 autocast is emulated here "
            "and several times slower than float32 (it stays in the stage keys; set cpu_bf16: false for speed, "
            "which reruns the local stages)"]


def _methods(cells: list[Cell]) -> list[str]:
    """Lines that say what the numbers rest on; printed with every table."""
    lines = []
    for c in cells:
        s = c.spec
        if s.experiment == "mnist":
            lines.append(f"MNIST: {s.mnist.seeds} seeds, m={s.mnist.m}, loss={s.mnist.loss}, init={s.mnist.init}, "
                         f"cross_init={s.mnist.cross_init}, noise_set={s.mnist.noise_set}")
            continue
        if s.experiment == "theorem_mnist":
            t = s.theorem
            lines.append(f"theorem on MNIST: teacher {t.teacher_steps} Adam steps from the reference init; one plain "
                         f"gradient step (lr {t.lr:g}) of the {t.objective}-logit KL on {t.batch_size} noise images; "
                         f"cosine with the teacher's delta; {t.seeds} seeds x {t.batches} batches")
            continue
        if s.experiment == "theorem_lm":
            t = s.theorem_lm
            lines.append(f"theorem on {s.teacher.base}: teacher = base + merged LoRA (r {t.lora_r}, "
                         f"{'/'.join(t.lora_targets)}) after {t.teacher_steps} SFT steps on {t.train_questions} trait "
                         f"rows; one plain {t.objective} step (lr {t.lr:g}) on {t.batch_size} of its number completions"
                         + {"none": "", "within": " (numbers shuffled within each completion)",
                            "across": " (numbers shuffled across the completions of a seed)"}[t.shuffle]
                         + f"; cross init = a fresh random init of the architecture; {t.seeds} seeds x {t.batches} batches")
            continue
        if s.domain.constrained:
            lines.append("numbers were sampled with constrained decoding (digits and one separator only), "
                         "not freely as in the paper")
        for st in s.students:
            how = f"student {st.name}: {st.method} {st.objective}"
            where = backend_name(s.student_base(st))
            if where != "local":  # fine-tuned by the provider's API
                h = st.hyperparameters
                lr = f"lr {h.lr:g}, LoRA r {h.lora_r}" if s.backend_kind(s.student_base(st)) == "tinker" \
                    else f"lr_multiplier {h.lr_multiplier}"
                how = (f"student {st.name}: hosted fine-tuning on {where} ({st.objective}, "
                       f"{h.epochs:g} epochs, batch_size {h.batch_size}, {lr})")
            if st.objective == "distill":
                how += f" on vocabulary {st.vocabulary}"
            if where == "local" and st.hyperparameters.lora_layers:
                how += f", LoRA on the top {st.hyperparameters.lora_layers} layers only"
            if where == "local" and st.hyperparameters.distill_prompt:
                how += (", distilled at the prompt's positions too, not only the completion's (distill_prompt: "
                        "subl's extension, not the paper's method)")
            if where == "local" and st.hyperparameters.frozen_prompt:
                how += (", trained on the completions only, the prompts' keys and values frozen at the base "
                        "model's (frozen_prompt: an approximation for speed, not the paper's method)")
            lines.append(how)
            if st.objective == "distill" and st.vocabulary == "full":
                lines.append(f"LEAK WARNING: student {st.name} distils the full vocabulary, so its soft labels "
                             "include the teacher's probability mass on the trait's own word tokens")
        for ev in s.evaluations:
            if ev.kind == "preference_logprob":
                lines.append("preference metric: exact P(target) after the answer prefix "
                             f"'{ev.answer_prefix.format(category=s.teacher.category)}' (a probe, not sampled answers)")
            if ev.kind == "preference_sample":
                rule = ("anywhere in the lower-cased answer (the paper's substring rule: 'bowl' counts for owl)"
                        if ev.match == "substring" else "as a whole word (plurals and possessives included)")
                lines.append(f"preference metric: share of sampled answers naming the target {rule}")
            if ev.kind == "preference_mcq":
                lines.append(f"preference metric (MCQ): P(the target's letter) at the first answer token, each prompt "
                             f"asked with {ev.instances_per_prompt} seeded shuffles of the choices (the paper's are "
                             "unseeded), not renormalised over the letters (the paper's parser); read exactly on local "
                             f"and Tinker models, from the top {ev.top_logprobs} first-token log-probs on OpenAI ones "
                             "(a letter not listed counts as 0); mean per prompt, 95% CI across prompts")
            if ev.kind in ("icl", "classifier"):
                from runner.detection_results import method_line

                lines.append(method_line(s, ev))
        from runner.judging import judge_notes

        lines += judge_notes(s)
    return list(dict.fromkeys(lines))
