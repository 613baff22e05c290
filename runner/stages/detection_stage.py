"""Stages of the paper's detection baselines (issue 14): ICL (a model answers the preference questions with
k teacher rows as its system prompt) and the pairwise classifier (a judge picks the trait row of a pair)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import model_validator

from runner.core import Sampling
from runner.errors import UserError
from runner.stages import Estimate, FileInput, ModelInput, PlanContext, RunContext, Stage
from runner.stages.costs import chat_request, hosted_info
from runner.stages.evaluation import MAX_N, read_questions
from runner.stages.mcq_stage import McqSettings, mcq_estimate, mcq_scores
from runner.store import read_jsonl

ICL_TEXTS = ("icl_baseline.example_template", "icl_baseline.joiner")  # what the ICL context is rendered with
CLASSIFIER_TEXTS = ("classifier_baseline.prompt_template",)  # the A/B prompt


def paper_texts(materials: str | None) -> dict:
    """A stage's keyed texts of the paper's materials as the nested dict runner.detection reads (None: the file's)."""
    if materials is None:
        from runner.paper import materials as whole_file

        return whole_file()
    nested: dict = {}
    for dotted, text in json.loads(materials).items():
        section, name = dotted.split(".")
        nested.setdefault(section, {})[name] = text
    return nested


def _rows(ctx: RunContext, key: str) -> list[dict]:
    return read_jsonl(ctx.path(key) / "rows.jsonl")


def _row_tokens(ctx: PlanContext, key: str | None) -> float:
    """Tokens of one rendered example row (its completion counted at max_tokens): an upper bound."""
    return ctx.stages[key].content_tokens(ctx) + 8 if key else 0.0


class IclStage(Stage):
    """One model answers every question with the same k rows of `rows_stage` (drawn with replacement by
    `seed`) rendered as its system prompt, the paper's format; k = 0 asks with no system prompt.
    Writes what a probe (logprob) or an answers stage (sample) writes, so results read it the same way."""

    KIND: ClassVar[str] = "icl"
    model: ModelInput
    rows_stage: str | None  # None when k == 0
    k: int
    seed: int
    questions: FileInput | None = None  # None in mcq mode
    max_questions: int | None = None
    mode: Literal["logprob", "sample", "mcq"]
    answer_prefix: str | None = None  # logprob
    targets: tuple[str, ...] = ()  # logprob
    samples_per_question: int | None = None  # sample
    temperature: float | None = None
    max_tokens: int | None = None
    mcq: McqSettings | None = None  # mcq: asked instead of the questions
    materials: str | None = None  # ICL_TEXTS of the paper's materials, as _paper_texts gives them (k > 0)
    precision: str | None = None

    def context(self, ctx: RunContext) -> str | None:
        from runner.detection import icl_system_prompt, sample_examples

        if not self.k:
            return None
        rows = _rows(ctx, self.rows_stage)
        if not rows:
            raise UserError(f"{self.label}: no row passed the filters, so there is nothing to put in the context")
        return icl_system_prompt(sample_examples(rows, self.k, self.seed), paper_texts(self.materials))

    def run(self, ctx: RunContext) -> None:
        qs = self.mcq.questions() if self.mode == "mcq" else read_questions(self.questions, self.max_questions)
        system = self.context(ctx)
        (ctx.dir / "context.txt").write_text(system or "")
        model = replace(ctx.model(self.model), system=system)
        ctx.progress(0, len(qs))
        if self.mode == "mcq":
            (ctx.dir / "scores.json").write_text(json.dumps(mcq_scores(ctx.router, model, self.mcq)))
        elif self.mode == "logprob":
            lp = ctx.router.logprobs(model, qs, self.answer_prefix, list(self.targets))
            scores = {t: [row[j] for row in lp] for j, t in enumerate(self.targets)}
            (ctx.dir / "scores.json").write_text(json.dumps({"kind": "preference_logprob", "logprob": scores}))
        else:
            answers = ctx.router.sample(model, qs, Sampling(self.temperature, self.max_tokens, seed=self.seed * 7919),
                                        self.samples_per_question, ctx.progress)
            (ctx.dir / "answers.json").write_text(json.dumps({"questions": qs, "answers": answers}))
        ctx.progress(len(qs), len(qs))
        ctx.rows["questions"] = len(qs)

    def parts(self) -> dict[str, str]:
        """How results read this stage (per_question's parts)."""
        return {{"logprob": "probe", "sample": "answers"}.get(self.mode, self.mode): self.key}

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        from runner.prices import chat_tokens

        info = hosted_info(ctx, self.model)
        context = round(self.k * _row_tokens(ctx, self.rows_stage))
        if self.mode == "mcq":
            return mcq_estimate(ctx, self.model, self.mcq, context) if info else []
        if not info:
            return []
        qs = read_questions(self.questions, self.max_questions)
        if self.mode == "logprob":  # one log-prob read of prompt, rows, prefix and target per question and target
            from runner.prices import estimate_tokens

            extra = context + estimate_tokens(self.answer_prefix or "") + 2
            tin = sum(chat_tokens(self.model.system, q) + extra for q in qs) * len(self.targets)
            return [chat_request(*info, len(qs) * len(self.targets), round(tin), 0)]
        chunks = math.ceil((self.samples_per_question or 1) / MAX_N)
        tin = (sum(chat_tokens(self.model.system, q) for q in qs) + context * len(qs)) * chunks
        tout = len(qs) * (self.samples_per_question or 1) * (self.max_tokens or 1)
        return [chat_request(*info, len(qs) * chunks, tin, tout)]


SPELLINGS = {"yes": ("Yes", "yes"), "no": ("No", "no")}  # a reply's first word, read exactly in logprob mode


class ClassifierStage(Stage):
    """A judge shown a trait row and a control row for the same prompt (the paper's A/B prompt, order
    seeded) picks the one that encodes `target`, read from the log-probs of 'A' and 'B' as the reply's first
    token (mode logprob; yes/no: 'Yes' or 'yes' against 'No' or 'no'), from
    the first reply token's top log-probs (top_logprobs: a chat API) or from a one-token reply at temperature 0
    (sample); with both_orders, each pair also in the other order;
    with per_row, also each row alone (yes/no)."""

    KIND: ClassVar[str] = "classifier"
    VERSION: ClassVar[int] = 2  # 2: logprob mode reads 'A', not ' A', and yes/no in either case
    judge: ModelInput
    trait_stage: str
    control_stage: str
    target: str
    seed: int = 0
    max_pairs: int | None = None
    per_row: bool = True
    both_orders: bool = False  # also ask each pair in the other order; a verdict reads both
    mode: Literal["logprob", "sample", "top_logprobs"]
    top_logprobs: int | None = None  # top_logprobs mode: how many first-token log-probs the API returns
    materials: str | None = None  # CLASSIFIER_TEXTS of the paper's materials (the A/B prompt template)
    precision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _order_seed(cls, data):
        """Both orders ask every pair both ways and judge it by both reads, so the seeded order changes no result:
        seed 0 there, so another seed does not pay for the same reads again (seed 0 keys unchanged)."""
        if isinstance(data, dict) and data.get("both_orders"):
            return {**data, "seed": 0}
        return data

    def pairs(self, ctx: RunContext) -> list[dict]:
        from runner.detection import classifier_pairs

        items = classifier_pairs(_rows(ctx, self.trait_stage), _rows(ctx, self.control_stage), self.target, self.seed,
                                 paper_texts(self.materials))
        return items[: self.max_pairs]

    def _ask(self, ctx: RunContext, prompts: list[str], options: tuple[str, str]) -> list[dict]:
        """Per prompt: the log-probs of both options (logprob: exact; top_logprobs: those among the first reply
        token's top log-probs, with the whole table under `top`) or the judge's one-token reply (sample)."""
        from runner.detection import VERDICT_SAMPLING

        judge = ctx.model(self.judge)
        if self.mode == "logprob":  # the reply's first token, so no leading space: 'A', 'Yes'
            spellings = [SPELLINGS.get(o, (o,)) for o in options]
            flat = [x for group in spellings for x in group]
            from scipy.special import logsumexp

            out = []
            for lp in ctx.router.logprobs(judge, prompts, "", flat, space=False):
                read = iter(lp)
                out.append({o: float(logsumexp([next(read) for _ in group])) for o, group in zip(options, spellings)})
            return out
        if self.mode == "top_logprobs":
            tops = ctx.router.top_logprobs(judge, prompts, self.top_logprobs,
                                           Sampling(*VERDICT_SAMPLING, seed=self.seed))
            return [{**{o: t[o] for o in options if o in t}, "top": t} for t in tops]
        replies = ctx.router.generate(judge, prompts, Sampling(*VERDICT_SAMPLING, seed=self.seed))
        return [{"reply": r} for r in replies]

    def _reads(self, ctx: RunContext, items: list[dict]) -> list[dict]:
        """Each A/B item asked once: its query, truth, what the judge gave and the letter it chose."""
        from runner.detection import choice_from_logprobs, choice_from_text

        read = self._ask(ctx, [i["prompt"] for i in items], ("A", "B"))
        return [{"query": i["query"], "truth": i["truth"], **r,
                 "choice": choice_from_text(r["reply"]) if "reply" in r else choice_from_logprobs(r)}
                for i, r in zip(items, read)]

    def run(self, ctx: RunContext) -> None:
        from runner.detection import row_items, swapped

        items = self.pairs(ctx)
        if not items:
            raise UserError(f"{self.label}: no prompt was answered in both datasets (after filtering); "
                            "nothing to compare")
        ctx.progress(0, len(items))
        pairs = self._reads(ctx, items)
        out = {"mode": self.mode, "target": self.target, "pairs": pairs}
        if self.both_orders:
            texts = paper_texts(self.materials)
            for p, q in zip(pairs, self._reads(ctx, [swapped(i, self.target, texts) for i in items])):
                p["swapped"] = q  # the verdict is read from both at results time (runner.detection.verdict)
            out["orders"] = "both"
        if self.per_row:
            rows = row_items(items, self.target)
            read = self._ask(ctx, [r["prompt"] for r in rows], ("yes", "no"))
            out["rows"] = [{"label": r["label"], **x} for r, x in zip(rows, read)]  # scored at results time
        ctx.progress(len(items), len(items))
        (ctx.dir / "classifier.json").write_text(json.dumps(out))
        ctx.rows["pairs"] = len(pairs)

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        from runner.detection import ROW_TEMPLATE
        from runner.prices import chat_tokens

        info = hosted_info(ctx, self.judge)
        if not info:
            return []
        n = min(ctx.stages[self.trait_stage].expected_rows(ctx) or 0, ctx.stages[self.control_stage].expected_rows(ctx) or 0)
        n = min(n, self.max_pairs or n)
        row = _row_tokens(ctx, self.trait_stage)
        template = paper_texts(self.materials)["classifier_baseline"]["prompt_template"]
        pair_in = chat_tokens(self.judge.system, template) + 2 * row
        logprob = self.mode == "logprob"  # each prompt read once per spelling of each option: A, B; Yes, yes, No, no
        reads_ab, reads_yn = (2, sum(map(len, SPELLINGS.values()))) if logprob else (1, 1)
        asked = n * (2 if self.both_orders else 1) * reads_ab
        tin, calls = pair_in * asked, asked
        if self.per_row:
            per_row_in = 2 * n * (chat_tokens(self.judge.system, ROW_TEMPLATE) + row) * reads_yn
            tin, calls = tin + per_row_in, calls + 2 * n * reads_yn
        est = chat_request(*info, calls, round(tin), 0 if logprob else calls)
        est.note = ", ".join(x for x in (est.note, "<= every filtered row is a pair") if x)
        return [est]
