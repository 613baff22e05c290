"""The spending check of `subl run`: what the hosted stages still to run may cost, against the user's cap.

Nothing hosted is sent until the plan's upper-bound estimate fits `--max-usd` (or SUBL_MAX_USD). A stage
that calls a hosted model but has no price (a model the table does not know, or a stage with no estimate)
cannot be checked, so it stops the run until the spec prices it."""
from __future__ import annotations

from runner.display import usd
from runner.errors import UserError
from runner.stages import Estimate, ModelInput, Stage, base_of
from runner.stages.costs import estimate_of


class BudgetError(UserError):
    """The run's cost cannot be told (a model with no price, a stage with no estimate)."""


class OverBudget(BudgetError):
    """The run may cost more than the user allowed."""


def pending(plan, store) -> list[Stage]:
    """The plan's stages that are not finished, each once, in run order."""
    return [st for key, st in plan.stages.items() if not store.done(key)]


def calls_hosted(stage: Stage, stages: dict[str, Stage]) -> bool:
    """Whether a stage reads a model served by a hosted backend (directly or as a base it fine-tunes)."""
    from runner.drift import pinned_inputs

    return any(base_of(m, stages).hosted for m in pinned_inputs(stage) if isinstance(m, ModelInput))


def check(plan, store, max_usd: float | None) -> tuple[float, list[Estimate]]:
    """(the hosted upper bound, its estimates) when it fits max_usd; raises BudgetError otherwise."""
    ctx = plan.context(store=store)
    estimates, unestimated = [], []
    for st in pending(plan, store):
        hosted = [e for e in estimate_of(st, ctx) if e.backend != "local"]
        estimates += hosted
        if not hosted and calls_hosted(st, plan.stages):
            unestimated.append(st.label or st.key)
    if unestimated:  # a stage kind whose estimate misses its hosted calls: never guess that it is free
        raise BudgetError(f"subl cannot estimate what {_some(unestimated)} will cost on its hosted backend, so "
                          "nothing was sent (a gap in subl: please report it)")
    unpriced = sorted({f"{e.backend}:{e.model}" for e in estimates if e.cost is None})
    if unpriced:
        raise BudgetError(f"no price for {_some(unpriced)}, so the spending check cannot pass: give it under "
                          "backends.<name>.prices (for a server you run yourself: [0, 0] on an OpenAI-kind backend, "
                          "[0, 0, 0] on Tinker); nothing was sent")
    total = sum(e.cost for e in estimates)
    if total > 0 and max_usd is None:
        raise OverBudget(f"the hosted stages still to run may cost up to {usd(total)} (`subl plan` itemises "
                         "them); allow it with --max-usd (or SUBL_MAX_USD) at or above that")
    if max_usd is not None and total > max_usd + 1e-9:
        raise OverBudget(f"the hosted stages still to run may cost up to {usd(total)}, over --max-usd "
                         f"${max_usd:,.2f} (`subl plan` itemises them); nothing was sent")
    return total, estimates


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def planned_usd(path, outputs) -> float:
    """The hosted upper bound of a spec's unfinished stages (raises BudgetError when one is unpriced)."""
    from runner.loader import load
    from runner.plan import build
    from runner.store import Store

    store = Store(outputs)
    return check(build(load(path), store.root), store, float("inf"))[0]
