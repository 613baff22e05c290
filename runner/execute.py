"""The local executor: run every stage of a plan that is not done yet, in this process.

Stages run as soon as the stages they read are done. Local stages (which need this machine's
cores or GPU) run one at a time, in plan order; stages that only call a hosted backend run in
threads beside them, up to `hosted_slots` at once, since they only wait on a provider (the six
fine-tuning jobs of a sweep then train at the same time). Each stage is built under its lock
(runner.store.Store.claim): a second run that needs the same stage waits, saying so, and then reuses
what the first one finished."""
from __future__ import annotations

import queue
import threading
from typing import Callable

from runner.core import is_hosted
from runner.stages import KEY_SCHEME, ModelInput, RunContext, Stage
from runner.store import Store

EXECUTOR = "local"
HOSTED_SLOTS = 8


def manifest_of(stage: Stage) -> dict:
    return {"kind": stage.KIND, "label": stage.label, "version": stage.VERSION, "key_scheme": KEY_SCHEME,
            "inputs": stage.model_dump(mode="json"), "upstream": stage.upstream(), "executor": EXECUTOR}


def run_stage(stage: Stage, store: Store, router, progress: Callable = lambda done, total, **kw: None,
              on_wait: Callable[[str], None] | None = None) -> float | None:
    """Build one stage unless it is done; return its seconds, or None when it was reused."""
    if store.done(stage.key):
        return None
    with store.claim(stage.key, on_wait) as needed:
        if not needed:
            return None
        with store.build(stage.key, manifest_of(stage), stage.verify) as b:
            ctx = RunContext(b.dir, store, router, progress, b.rows, b.extra)
            stage.run(ctx)
    return store.manifest(stage.key)["seconds"]


def only_hosted(stage: Stage, stages: dict[str, Stage]) -> bool:
    """Whether every model the stage reads lives on a hosted backend (so it needs no local compute)."""
    models = [v for _, v in stage if isinstance(v, ModelInput)]
    if not models:
        return False  # filters, MNIST: cheap or local work
    for m in models:
        while m.from_stage:
            m = stages[m.from_stage].base
        if not is_hosted(m.ref):
            return False
    return True


def execute(stages: list[Stage], store: Store, router, progress_factory: Callable | None = None,
            on_wait: Callable[[str], None] | None = None, hosted_slots: int = HOSTED_SLOTS) -> dict[str, float]:
    """Run every stage not yet done, each once its upstream stages are; return {label: seconds} of what ran.
    The first failure stops new stages from starting and is raised. Hosted stages run in daemon threads,
    so an interrupt does not wait for a provider (their partial folders let a rerun resume them)."""
    by_key = {s.key: s for s in stages}
    todo = [s for s in stages if not store.done(s.key)]
    ran: dict[str, float] = {}
    finished: queue.Queue = queue.Queue()
    running: set[str] = set()

    def one(stage: Stage) -> None:
        progress = progress_factory(stage) if progress_factory else (lambda done, total, **kw: None)
        seconds = run_stage(stage, store, router, progress, on_wait)
        if hasattr(progress, "finish"):
            progress.finish()
        if seconds is not None:
            ran[stage.label] = seconds

    def in_thread(stage: Stage) -> None:
        try:
            one(stage)
            finished.put((stage.key, None))
        except BaseException as e:  # handed to the main thread
            finished.put((stage.key, e))

    def collect(block: bool) -> None:
        while running:
            try:
                key, error = finished.get(block=block)
            except queue.Empty:
                return
            running.discard(key)
            if error is not None:
                raise error
            block = False

    def ready(stage: Stage) -> bool:
        return all(store.done(k) for k in stage.upstream())

    while todo or running:
        for stage in [s for s in todo if ready(s) and only_hosted(s, by_key)][: max(0, hosted_slots - len(running))]:
            todo.remove(stage)
            running.add(stage.key)
            threading.Thread(target=in_thread, args=(stage,), name=f"stage {stage.key}", daemon=True).start()
        local = next((s for s in todo if ready(s) and not only_hosted(s, by_key)), None)
        if local is not None:  # in this thread, one at a time, while hosted stages wait beside it
            todo.remove(local)
            one(local)
            collect(block=False)
        elif running:
            collect(block=True)
        elif todo:
            missing = sorted({k for s in todo for k in s.upstream() if not store.done(k)})
            raise RuntimeError(f"stages wait on stages that are not in the plan: {missing}")
    return ran
