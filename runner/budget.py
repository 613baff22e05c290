"""The spending check of `subl run`: what the hosted stages still to run may cost, against the user's cap.

Nothing hosted is sent until the plan's upper-bound estimate fits `--max-usd` (or SUBL_MAX_USD). A stage
that calls a hosted model but has no price (a model the table does not know, or a stage with no estimate)
cannot be checked, so it stops the run until the spec prices it."""
from __future__ import annotations

import math

from runner.display import usd
from runner.errors import UserError
from runner.prices import base_of as priced_base
from runner.stages import Estimate, ModelInput, Stage, base_of
from runner.stages.costs import estimate_of

SLACK = 1e-8  # display.usd ignores float noise below 5e-9 dollars: a bound it prints as $X must fit --max-usd X


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
    if max_usd is not None and not max_usd >= -SLACK:  # NaN compares false with every bound: it would allow any
        raise OverBudget(f"--max-usd {max_usd}: a budget is a number of US dollars >= 0; nothing was sent")
    if max_usd is not None:  # what `subl reproduce` leaves may be a hair below 0 (0.3 - (0.1 + 0.2)): that is 0
        max_usd = max(max_usd, 0.0)
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
    unpriced = [e for e in estimates if e.cost is None]
    if unpriced:
        names = sorted({f"{e.backend}:{e.model}" for e in unpriced})
        raise BudgetError(f"no price for {_some(names)}, so the spending check cannot pass: give "
                          f"{_some(_entries_needed(unpriced))} USD per 1M tokens (zeros for a server you run "
                          "yourself); nothing was sent")
    total = sum(e.cost for e in estimates)
    if total > 0 and max_usd is None:
        raise OverBudget(f"the hosted stages still to run may cost up to {usd(total)} (`subl plan` itemises "
                         "them); allow it with --max-usd (or SUBL_MAX_USD) at or above that")
    if not fits(total, max_usd):
        raise OverBudget(f"the hosted stages still to run may cost up to {usd(total)}, over --max-usd "
                         f"{usd_down(max_usd)} (`subl plan` itemises them); nothing was sent")
    return total, estimates


def fits(total: float, max_usd: float | None) -> bool:
    """Whether a hosted upper bound is allowed: none above 0 without a budget, else within it (float noise aside)."""
    return total <= 0 if max_usd is None else total <= max_usd + SLACK


def usd_down(x: float) -> str:
    """A budget as it is, or rounded down (to 1/100 cent), so that it never reads as more than it allows (usd rounds
    bounds up): $10.00, $5.996 (not $6.00 beside a $6.00 bound), $0.009 (not $0.01, nor $0.00)."""
    cents = math.floor(round(x * 100, 6)) / 100
    if abs(cents - x) < 1e-9:
        return f"${cents:,.2f}"
    text = f"{math.floor(round(x * 1e4, 6)) / 1e4:,.4f}".rstrip("0")
    return f"${text}00" if text.endswith(".") else f"${text}"


_FORMS = {2: "[input, output]", 3: "[input, output, training]", 5: "[input, output, training, ft_input, ft_output]"}


def _entries_needed(unpriced: list[Estimate]) -> list[str]:
    """The `prices` entries that would price these estimates: a training estimate needs the training price, a
    fine-tuned model's its base's fine-tuned prices (the five-element form), so `[0, 0]` alone would not do."""
    need: dict[str, int] = {}
    for e in unpriced:
        if e.table == "tinker":
            need[f"backends.{e.backend}.prices.{e.model}: [prefill, sample, train]"] = 0
            continue
        base, tuned = priced_base(e.model)
        entry = f"backends.{e.backend}.prices.{base}"
        need[entry] = max(need.get(entry, 2), 5 if tuned else 3 if e.training_tokens else 2)
    return sorted(k if n == 0 else f"{k}: {_FORMS[n]}" for k, n in need.items())


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def planned_usd(path, outputs) -> float:
    """The hosted upper bound of a spec's unfinished stages (raises BudgetError when one is unpriced)."""
    from runner.loader import load
    from runner.plan import build
    from runner.store import Store

    store = Store(outputs)
    return check(build(load(path), store.root), store, float("inf"))[0]
