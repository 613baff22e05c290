"""The local executor: run every stage of a plan that is not done yet, in order, in this process.

Each stage is built under its lock (runner.store.Store.claim): a second run that needs the same
stage waits, saying so, and then reuses what the first one finished."""
from __future__ import annotations

from typing import Callable

from runner.stages import KEY_SCHEME, RunContext, Stage
from runner.store import Store

EXECUTOR = "local"


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


def execute(stages: list[Stage], store: Store, router, progress_factory: Callable | None = None,
            on_wait: Callable[[str], None] | None = None) -> dict[str, float]:
    """Run every stage not yet done; return {label: seconds} of what ran."""
    ran = {}
    for stage in stages:
        if store.done(stage.key):
            continue
        progress = progress_factory(stage) if progress_factory else (lambda done, total, **kw: None)
        seconds = run_stage(stage, store, router, progress, on_wait)
        if hasattr(progress, "finish"):
            progress.finish()
        if seconds is not None:
            ran[stage.label] = seconds
    return ran
