"""The local executor: run every stage of a plan that is not done yet, in this process.

Stages run as soon as the stages they read are done. Local stages (which need this machine's
cores or GPU) run one at a time, in plan order; stages that only call a hosted backend run in
threads beside them, up to each backend's `parallel_stages` at once, since they only wait on a provider (the six
fine-tuning jobs of a sweep then train at the same time). Each stage is built under its lock
(runner.store.Store.claim): a second run that needs the same stage waits, saying so, and then reuses
what the first one finished."""
from __future__ import annotations

import queue
import threading
from typing import Callable

from runner.core import backend_name, is_hosted
from runner.drift import check_unchanged
from runner.stages import KEY_SCHEME, ModelInput, RunContext, Stage, base_of
from runner.store import Store

EXECUTOR = "local"
HOSTED_SLOTS = 4  # per hosted backend, unless the spec says otherwise


def manifest_of(stage: Stage) -> dict:
    return {"kind": stage.KIND, "label": stage.label, "version": stage.VERSION, "key_scheme": KEY_SCHEME,
            "inputs": stage.model_dump(mode="json"), "upstream": stage.upstream(), "executor": EXECUTOR}


def run_stage(stage: Stage, store: Store, router, progress: Callable = lambda done, total, **kw: None,
              on_wait: Callable[[str], None] | None = None, placement: dict | None = None) -> float | None:
    """Build one stage unless it is done; return its seconds, or None when it was reused. `placement`
    overrides where the manifest says it ran (another executor, its node)."""
    if store.done(stage.key):
        return None
    with store.claim(stage.key, on_wait) as needed:
        if not needed:
            return None
        check_unchanged(stage)

        def verify(folder) -> None:
            stage.verify(folder)
            check_unchanged(stage)  # edited while the stage ran: its folder is not renamed into place

        with store.build(stage.key, {**manifest_of(stage), **(placement or {})}, verify) as b:
            ctx = RunContext(b.dir, store, router, progress, b.rows, b.extra)
            stage.run(ctx)
    return store.manifest(stage.key)["seconds"]


def hosted_backend(stage: Stage, stages: dict[str, Stage]) -> str | None:
    """The hosted backend a stage waits on, when every model it reads lives there (so it needs no
    local compute); None for stages that compute here (and for filters and MNIST)."""
    names = set()
    for m in (base_of(v, stages) for _, v in stage if isinstance(v, ModelInput)):
        names.add(backend_name(m.ref) if is_hosted(m.ref) else None)
    return names.pop() if len(names) == 1 else None


def execute(stages: list[Stage], store: Store, router, progress_factory: Callable | None = None,
            on_wait: Callable[[str], None] | None = None, slots: dict[str, int] | None = None) -> dict[str, float]:
    """Run every stage not yet done, each once its upstream stages are; return {stage key: seconds} of what ran.
    The first failure stops new stages from starting and is raised. Hosted stages run in daemon threads,
    so an interrupt does not wait for a provider (their partial folders let a rerun resume them)."""
    by_key = {s.key: s for s in stages}
    todo = [s for s in stages if not store.done(s.key)]
    ran: dict[str, float] = {}
    finished: queue.Queue = queue.Queue()
    running: dict[str, str] = {}  # stage key -> its hosted backend

    def free(stage: Stage) -> bool:
        b = hosted_backend(stage, by_key)
        return sum(v == b for v in running.values()) < (slots or {}).get(b, HOSTED_SLOTS)

    def one(stage: Stage) -> None:
        progress = progress_factory(stage) if progress_factory else (lambda done, total, **kw: None)
        seconds = run_stage(stage, store, router, progress, on_wait)
        if hasattr(progress, "finish"):
            progress.finish()
        if seconds is not None:
            ran[stage.key] = seconds

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
            running.pop(key, None)
            if error is not None:
                raise error
            block = False

    def ready(stage: Stage) -> bool:
        return all(store.done(k) for k in stage.upstream())

    while todo or running:
        for stage in [s for s in todo if ready(s) and hosted_backend(s, by_key)]:
            if not free(stage):
                continue
            todo.remove(stage)
            running[stage.key] = hosted_backend(stage, by_key)
            threading.Thread(target=in_thread, args=(stage,), name=f"stage {stage.key}", daemon=True).start()
        local = next((s for s in todo if ready(s) and not hosted_backend(s, by_key)), None)
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
