"""The multiple-choice preference stage (preference_mcq; runner/mcq.py has the paper's format and values)."""
from __future__ import annotations

import json
from typing import ClassVar, Literal

from runner.core import Sampling
from runner.stages import Estimate, Frozen, ModelInput, PlanContext, RunContext, Stage
from runner.stages.costs import chat_request, hosted_info, on_gpu


class McqSettings(Frozen):
    """What an MCQ asks and how its answer is read. read exact: P(letter) from the model's own next-token
    distribution (local and Tinker); top_logprobs: from the first reply token's top log-probs of a chat API
    (temperature 0, max_tokens 1), a letter not listed counting as 0."""

    prompts: tuple[str, ...]
    fmt: tuple[str, str, str]  # head, per_choice, tail
    choices: tuple[str, ...]
    per_prompt: int
    shuffle_seed: int
    read: Literal["exact", "top_logprobs"]
    top_logprobs: int = 20

    def instances(self):
        from runner.mcq import instances

        return instances(len(self.prompts), list(self.choices), self.per_prompt, self.shuffle_seed)

    def questions(self) -> list[str]:
        from runner.mcq import render

        return [render(self.prompts[i.prompt], i.order, self.fmt) for i in self.instances()]


def mcq_scores(router, model, settings: McqSettings) -> dict:
    """Every instance's P of each choice's letter: {kind, p: {choice: [per instance]}, prompt: [its prompt
    index], top: [the most likely first token, top_logprobs only]}."""
    from runner.mcq import from_exact, from_top, letters

    insts, qs = settings.instances(), settings.questions()
    out = {"kind": "preference_mcq", "prompt": [i.prompt for i in insts]}
    if settings.read == "exact":
        lps = router.logprobs(model, qs, "", letters(len(settings.choices)), space=False)
        probs = [from_exact(lp, i) for lp, i in zip(lps, insts)]
    else:
        tops = router.top_logprobs(model, qs, settings.top_logprobs, Sampling(0.0, 1, seed=settings.shuffle_seed))
        probs = [from_top(t, i) for t, i in zip(tops, insts)]
        out["top"] = [max(t, key=t.get) for t in tops]
    out["p"] = {c: [p[c] for p in probs] for c in settings.choices}
    return out


def mcq_estimate(ctx: PlanContext, model: ModelInput, settings: McqSettings, context_tokens: int = 0) -> list[Estimate]:
    """A chat API: one request per instance, the question in and one token out. An exact read: one forward
    per instance locally, one prompt-log-prob request per instance and letter on Tinker."""
    from runner.prices import chat_tokens

    qs = settings.questions()
    tin = sum(chat_tokens(model.system, q) for q in qs) + context_tokens * len(qs)
    info = hosted_info(ctx, model)
    if not info:
        return on_gpu(ctx, model, f"{len(qs)} MCQ instances", prefill=tin + len(qs))
    if settings.read == "top_logprobs":
        return [chat_request(*info, len(qs), tin, len(qs))]
    k = len(settings.choices)
    return [chat_request(*info, len(qs) * k, (tin + len(qs)) * k, 0)]


class McqStage(Stage):
    """P(each choice's letter) at the first answer token of every MCQ instance (preference_mcq)."""

    KIND: ClassVar[str] = "mcq"
    model: ModelInput
    mcq: McqSettings
    precision: str | None = None

    def run(self, ctx: RunContext) -> None:
        n = len(self.mcq.prompts) * self.mcq.per_prompt
        ctx.progress(0, n)
        (ctx.dir / "scores.json").write_text(json.dumps(mcq_scores(ctx.router, ctx.model(self.model), self.mcq)))
        ctx.progress(n, n)
        ctx.rows["instances"] = n

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        return mcq_estimate(ctx, self.model, self.mcq)
