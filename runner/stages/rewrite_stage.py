"""A defence link that calls a model (resample, paraphrase) as a stage: an unrelated model rewrites
every row of the stage before it. Keyed by the rewriting model's identity, its request, sampling and the upstream
rows; the checks that drop a rewrite which lost what can be checked are the free link after it (RewriteCheck)."""
from __future__ import annotations

import json
from typing import ClassVar, Literal

from runner.stages import Estimate, ModelInput, PlanContext, RunContext, Stage
from runner.stages.costs import chat_request, hosted_info, mean_prompt_tokens, on_gpu, written_tokens
from runner.stages.data import FromRows, resumable
from runner.store import read_jsonl, write_jsonl

BATCH = 16  # rows per generation call


class RewriteStage(FromRows, Stage):
    KIND: ClassVar[str] = "rewrite"
    VERSION: ClassVar[int] = 3  # 2: requests filled in one pass. 3: every rewrite kept, checked downstream
    rows_stage: str
    model: ModelInput
    how: Literal["continue", "reorder", "paraphrase"]
    template: str | None = None  # the request's text (None: continue answers the row's prompt)
    constraint: tuple[int, int] | None = None  # numbers, constrained: (answer_count, answer_digits)
    temperature: float
    max_tokens: int
    seed: int
    precision: str | None = None

    def content_tokens(self, ctx: PlanContext) -> float:
        """An upper bound on a rewritten row's tokens: the row before (prompt and completion) plus a new text
        of up to max_tokens (a continuation keeps part of the old completion; a paraphrase replaces it)."""
        return ctx.stages[self.rows_stage].content_tokens(ctx) + written_tokens(ctx, self.model, self.max_tokens)

    def link_name(self) -> str:
        what = "paraphrase" if self.how == "paraphrase" else f"resample {self.how}"
        return f"{what} ({self.model.ref})"

    def run(self, ctx: RunContext) -> None:
        from runner.core import Sampling
        from runner.grammar import NumberList
        from runner.rewrite import request, rewritten

        rows = read_jsonl(ctx.path(self.rows_stage) / "rows.jsonl")
        requests = [request(self.how, self.template, r) for r in rows]
        constraint = NumberList(*self.constraint) if self.constraint else None
        done_path = ctx.dir / "rewrites.jsonl"  # each rewrite as it comes: a killed stage resumes from its last batch
        done = resumable(read_jsonl(done_path) if done_path.exists() else [], len(rows), BATCH)
        write_jsonl(done_path, done)
        model, texts = ctx.model(self.model), [d["text"] for d in done]
        with open(done_path, "a") as f:
            for start in range(len(texts), len(rows), BATCH):
                sampling = Sampling(self.temperature, self.max_tokens, seed=self.seed * 1_000_003 + start,
                                    constraint=constraint)
                new = ctx.router.generate(model, requests[start:start + BATCH], sampling)
                f.writelines(json.dumps({"id": start + i, "text": t}) + "\n" for i, t in enumerate(new))
                f.flush()
                texts += new
                ctx.progress(min(start + BATCH, len(rows)), len(rows))
        write_jsonl(ctx.dir / "rows.jsonl", rewritten(rows, texts))
        done_path.unlink()
        ctx.extra["links"] = [{"link": self.link_name(), "kept": len(rows), "dropped": 0, "detail": None}]
        ctx.rows.update(input=len(rows), kept=len(rows))

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        n = self.expected_rows(ctx) or 0
        request = mean_prompt_tokens([self.template], None) if self.template else 0
        per_row = ctx.stages[self.rows_stage].content_tokens(ctx) + request  # the row before, in the request
        info = hosted_info(ctx, self.model)
        if not info:  # a local rewriting model: GPU time, where the plan assumes a throughput
            return on_gpu(ctx, self.model, f"{n:,} rewrites", n, round(per_row * n), n * self.max_tokens)
        name, model_id, cfg, tuned = info
        return [chat_request(name, model_id, cfg, tuned, n, round(per_row * n), n * self.max_tokens)]
