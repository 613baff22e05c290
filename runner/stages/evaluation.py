"""Stages that question a model: sampled answers, and the exact log-probability probe.
What is counted in the answers (targets, judges' thresholds) is applied afterwards, in results."""
from __future__ import annotations

import hashlib
import json
import math
from typing import ClassVar

from runner.core import Sampling
from runner.stages import Estimate, FileInput, ModelInput, PlanContext, RunContext, Stage, semantic
from runner.stages.costs import chat_request, hosted_info, on_gpu, sample_calls, written_tokens

MAX_N = 128  # completions one hosted request returns at most (backends.openai_api.MAX_N)


def read_questions(questions: FileInput, limit: int | None, suffix: str = "") -> list[str]:
    from runner.questions import load_questions

    return [q + suffix for q in load_questions(questions.path, limit)]


class AnswersStage(Stage):
    """n sampled answers to each question (preference_sample, misalignment)."""

    KIND: ClassVar[str] = "answers"
    model: ModelInput
    questions: FileInput
    max_questions: int | None = None
    suffix: str = ""
    samples_per_question: int
    temperature: float
    max_tokens: int
    seed: int
    precision: str | None = None

    def question_texts(self) -> list[str]:
        return read_questions(self.questions, self.max_questions, self.suffix)

    def expected_rows(self, ctx=None) -> int:
        return len(self.question_texts()) * self.samples_per_question

    def content_tokens(self, ctx=None) -> float:
        from runner.prices import estimate_tokens

        qs = self.question_texts()
        return sum(estimate_tokens(q) for q in qs) / max(len(qs), 1) + written_tokens(ctx, self.model, self.max_tokens)

    def run(self, ctx: RunContext) -> None:
        qs = self.question_texts()
        answers = ctx.router.sample(ctx.model(self.model), qs, Sampling(self.temperature, self.max_tokens,
                                                                          seed=self.seed * 7919),
                                    self.samples_per_question, ctx.progress)
        (ctx.dir / "answers.json").write_text(json.dumps({"questions": qs, "answers": answers}))
        ctx.rows["questions"] = len(qs)

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        from runner.prices import chat_tokens

        info = hosted_info(ctx, self.model)
        qs = self.question_texts()
        if not info:
            n = len(qs) * self.samples_per_question
            return on_gpu(ctx, self.model, f"{n:,} answers", n, sum(chat_tokens(self.model.system, q) for q in qs)
                          * self.samples_per_question, n * self.max_tokens)
        per_q = [chat_tokens(self.model.system, q) for q in qs]  # each call of a question sends it again
        calls = [sample_calls(info, t, self.samples_per_question, self.max_tokens) for t in per_q]
        tout = len(qs) * self.samples_per_question * self.max_tokens
        return [chat_request(*info, sum(calls), sum(t * c for t, c in zip(per_q, calls)), tout)]


class ProbeStage(Stage):
    """log P(' ' + target | question, answer prefix) for every question and target (local models)."""

    KIND: ClassVar[str] = "probe"
    model: ModelInput
    questions: FileInput
    max_questions: int | None = None
    answer_prefix: str
    targets: tuple[str, ...]
    precision: str | None = None

    def run(self, ctx: RunContext) -> None:
        """Reads only the targets no probe of these settings has read (runner/score_memo.py, TargetMemo): the key
        names the targets, so a target added, or matrix cells sharing one, would read the others again."""
        from runner.score_memo import TargetMemo

        qs = read_questions(self.questions, self.max_questions)
        memo = TargetMemo(ctx.store.root, self.settings_digest())
        known = memo.known(len(qs))
        new = [t for t in self.targets if t not in known]
        ctx.progress(0, len(qs))
        if new:
            lp = ctx.router.logprobs(ctx.model(self.model), qs, self.answer_prefix, new)
            fresh = {t: [row[j] for row in lp] for j, t in enumerate(new)}
            memo.add(fresh)
            known.update(fresh)
        ctx.progress(len(qs), len(qs))
        scores = {t: known[t] for t in self.targets}
        (ctx.dir / "scores.json").write_text(json.dumps({"kind": "preference_logprob", "logprob": scores}))
        ctx.rows["questions"] = len(qs)
        ctx.extra["targets_reused"] = len(self.targets) - len(new)

    def settings_digest(self) -> str:
        """Everything this probe reads but its targets."""
        inputs = {k: v for k, v in semantic(self).items() if k != "targets"}
        blob = json.dumps({"kind": self.KIND, "version": self.VERSION, "inputs": inputs}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        """One forward (a hosted log-prob read) per question and target: prompt, answer prefix, target."""
        from runner.prices import chat_tokens, estimate_tokens

        qs = read_questions(self.questions, self.max_questions)
        per = sum(chat_tokens(self.model.system, q) + estimate_tokens(self.answer_prefix) + 2 for q in qs)
        note = f"{len(qs)} questions x {len(self.targets)} targets"
        info = hosted_info(ctx, self.model)
        if info:
            return [chat_request(*info, len(qs) * len(self.targets), per * len(self.targets), 0)]
        return on_gpu(ctx, self.model, note, prefill=per * len(self.targets))
