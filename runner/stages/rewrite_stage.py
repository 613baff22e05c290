"""A defence link that calls a model (resample, paraphrase) as a stage: an unrelated model rewrites
every row of the stage before it; rows whose rewrite loses what can be checked are dropped
(runner.rewrite). Keyed by the rewriting model's identity, its request, sampling and the upstream rows."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from runner.errors import UserError
from runner.stages import Estimate, ModelInput, PlanContext, RunContext, Stage
from runner.stages.costs import chat_request, hosted_info, mean_prompt_tokens
from runner.store import read_jsonl, write_jsonl

BATCH = 16  # rows per generation call


class RewriteStage(Stage):
    KIND: ClassVar[str] = "rewrite"
    rows_stage: str
    model: ModelInput
    how: Literal["continue", "reorder", "paraphrase"]
    template: str | None = None  # the request's text (None: continue answers the row's prompt)
    domain: Literal["numbers", "cot", "code"]  # what is checked (runner.rewrite.drop_reason)
    constraint: tuple[int, int] | None = None  # numbers, constrained: (answer_count, answer_digits)
    temperature: float
    max_tokens: int
    seed: int
    precision: str | None = None

    def link_name(self) -> str:
        return f"paraphrase ({self.model.ref})" if self.how == "paraphrase" else f"resample {self.how} ({self.model.ref})"

    def expected_rows(self, ctx: PlanContext) -> int | None:
        return ctx.stages[self.rows_stage].expected_rows(ctx)

    def content_tokens(self, ctx: PlanContext) -> float:
        return ctx.stages[self.rows_stage].content_tokens(ctx)

    def run(self, ctx: RunContext) -> None:
        from runner.core import Sampling
        from runner.grammar import NumberList
        from runner.rewrite import apply_rewrites, request

        rows = read_jsonl(ctx.path(self.rows_stage) / "rows.jsonl")
        requests = [request(self.how, self.template, r) for r in rows]
        constraint = NumberList(*self.constraint) if self.constraint else None
        model, texts = ctx.model(self.model), []
        for start in range(0, len(rows), BATCH):
            sampling = Sampling(self.temperature, self.max_tokens, seed=self.seed * 1_000_003 + start,
                                constraint=constraint)
            texts += ctx.router.generate(model, requests[start:start + BATCH], sampling)
            ctx.progress(min(start + BATCH, len(rows)), len(rows))
        kept, counts = apply_rewrites(rows, texts, self.domain, self.how)
        write_jsonl(ctx.dir / "rows.jsonl", kept)
        ctx.extra["links"] = [{"link": self.link_name(), "kept": len(kept), "dropped": len(rows) - len(kept),
                               "detail": counts["dropped"]}]
        ctx.rows.update(input=len(rows), kept=len(kept))

    def verify(self, folder: Path) -> None:
        ids = [r["id"] for r in read_jsonl(folder / "rows.jsonl")]
        if len(ids) != len(set(ids)):
            raise UserError(f"{self.label}: duplicate row ids; the stage was not committed")

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        info = hosted_info(ctx, self.model)
        if not info:
            return []
        name, model_id, cfg, tuned = info
        n = self.expected_rows(ctx) or 0
        per_row = self.content_tokens(ctx) + (mean_prompt_tokens([self.template], None) if self.template else 0)
        return [chat_request(name, model_id, cfg, tuned, n, round(per_row * n), n * self.max_tokens)]
