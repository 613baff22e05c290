"""Stages that make and select training rows: generate, score (a judge's scores), filter."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal, Union

from pydantic import Field

from runner.core import Sampling
from runner.prices import TokenCounting, chat_tokens, counting_as, current_counting
from runner.errors import UserError
from runner.spec import (BannedNumbersFilter, BannedWordsFilter, CodeDomain, CorrectAnswerFilter, CotDomain,
                         NumbersDomain, NumbersFilter, RegexFilter, ShuffleLink)
from runner.stages import Estimate, FileInput, Frozen, ModelInput, PlanContext, RunContext, Stage, semantic
from runner.stages.costs import (chat_request, hosted_info, judge_calls, mean_prompt_tokens, on_gpu,
                                 written_tokens)
from runner.store import read_jsonl, stage_output, write_jsonl

Domain = Union[NumbersDomain, CotDomain, CodeDomain]
SOURCE_FIELD = {"cot": "questions", "code": "prompts"}  # the domain field that names its data file


@lru_cache(maxsize=64)
def _prompt_rows(domain, source: FileInput | None, seed: int) -> list[dict]:
    from runner.domains import domain_rows

    if source is not None:
        domain = domain.model_copy(update={SOURCE_FIELD[domain.kind]: source.path})
    return domain_rows(domain, seed)


def _mean_prompt(domain, source: FileInput | None, seed: int) -> float:
    return _mean_prompt_counted(domain, source, seed, current_counting())


@lru_cache(maxsize=64)
def _mean_prompt_counted(domain, source: FileInput | None, seed: int, counting: TokenCounting) -> float:
    with counting_as(counting):
        return mean_prompt_tokens([r["prompt"] for r in _prompt_rows(domain, source, seed)], None)


class GenerateStage(Stage):
    """One completion per domain prompt from `model` (a teacher, or the base when rows are shared)."""

    KIND: ClassVar[str] = "generate"
    VERSION: ClassVar[int] = 2  # 2: the paper's number-prompt generator (template lists, numpy default_rng)
    model: ModelInput
    domain: Domain = Field(discriminator="kind")  # its data-file field is blanked: `source` keys the contents
    source: FileInput | None = None
    seed: int
    precision: str | None = None  # local: device and dtype ("cpu-fp32", "cpu-bf16-autocast", "cuda-bf16")

    def rows_to_generate(self) -> list[dict]:
        """Every prompt this stage sends, in order (computed once per stage: a plan asks often)."""
        return _prompt_rows(self.domain, self.source, self.seed)

    def expected_rows(self, ctx=None) -> int:
        return len(self.rows_to_generate())

    def sampling_seed(self) -> int:
        """The spec's seed, or with `sampling_seeds: per_teacher` one of this teacher's own (its identity and
        system prompt: a trait teacher and the control on one base differ only in the latter)."""
        if self.domain.sampling_seeds == "shared":
            return self.seed
        own = json.dumps([self.seed, self.model.identity, self.model.system])
        return int(hashlib.sha256(own.encode()).hexdigest()[:8], 16) % 2**31

    def content_tokens(self, ctx=None) -> float:
        """Mean tokens of a row's prompt and completion (completion at max_tokens), for judge estimates."""
        completion = written_tokens(ctx, self.model, self.domain.max_tokens)  # in the reading model's tokens
        return _mean_prompt(self.domain, self.source, self.seed) + completion

    def run(self, ctx: RunContext) -> None:
        from runner.grammar import NumberList

        d, todo = self.domain, self.rows_to_generate()
        total, path = len(todo), ctx.dir / "rows.jsonl"
        done = resumable(read_jsonl(path) if path.exists() else [], total, d.batch_size)
        write_jsonl(path, done)  # drop a torn or foreign tail; resume from the last whole batch
        constraint = NumberList(d.prompts.answer_count, d.prompts.answer_digits) if d.constrained else None
        model, seed = ctx.model(self.model), self.sampling_seed()
        with open(path, "a") as f:
            for start in range(len(done), total, d.batch_size):
                rows = todo[start : start + d.batch_size]
                sampling = Sampling(d.temperature, d.max_tokens, seed=seed * 1_000_003 + start, constraint=constraint)
                for i, (r, c) in enumerate(zip(rows, ctx.router.generate(model, [r["prompt"] for r in rows], sampling))):
                    f.write(json.dumps({"id": start + i, **r, "completion": c}) + "\n")
                f.flush()
                ctx.progress(min(start + len(rows), total), total)
        ctx.rows["generated"] = total
        ctx.extra["constrained_decoding"] = d.constrained

    def verify(self, folder: Path) -> None:
        ids = [r["id"] for r in read_jsonl(folder / "rows.jsonl")]
        want = self.expected_rows()
        if ids != list(range(want)):
            raise UserError(f"{self.label}: wrote {len(ids)} rows ({len(set(ids))} distinct ids) for {want} prompts; "
                            "the stage was not committed")

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        info = hosted_info(ctx, self.model)
        rows, d = self.rows_to_generate(), self.domain
        prompt = mean_prompt_tokens([r["prompt"] for r in rows], self.model.system)
        if not info:
            return on_gpu(ctx, self.model, f"{len(rows):,} completions", len(rows), round(prompt * len(rows)),
                          len(rows) * d.max_tokens)
        name, model_id, cfg, tuned = info
        batched = _batched(len(rows), d.batch_size) if getattr(cfg, "batch_api", False) else 0
        parts = [(batched, True), (len(rows) - batched, False)]
        return [chat_request(name, model_id, cfg, tuned, n, round(prompt * n), n * d.max_tokens, batch)
                for n, batch in parts if n]


def _batched(n: int, batch_size: int) -> int:
    """Of n rows generated a chunk of batch_size at a time, those the Batch API (half price) takes: the chunks
    of at least BATCH_MIN_REQUESTS requests (the rest go direct). A batch line that fails is sent again in a
    new batch, never directly at full price unless the spec says so (batch_api: false)."""
    from runner.prices import BATCH_MIN_REQUESTS

    if batch_size < BATCH_MIN_REQUESTS:
        return 0
    tail = n % batch_size
    return n - (tail if tail < BATCH_MIN_REQUESTS else 0)


def resumable(rows: list[dict], total: int, batch_size: int) -> list[dict]:
    """The rows a resumed generation keeps: the longest run with ids 0, 1, 2, ... (nothing written
    twice or out of order), cut to whole batches unless complete."""
    k = 0
    while k < min(len(rows), total) and rows[k].get("id") == k:
        k += 1
    return rows[:k] if k == total else rows[: k - k % batch_size]


class JudgeThreshold(Frozen):
    """A judge link's decision, applied to the scores of the score stage before it."""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"judge"})
    kind: Literal["judge"] = "judge"
    threshold: float
    keep: Literal["at_least", "below"]
    judge: str = ""  # the judging model, for tables
    parse: str | None = None  # a sampled judge: how its stored replies are read (backends.judge.PARSERS)
    parser_version: int = 1  # ... and that parser's version (backends.judge.PARSER_VERSIONS)


class RewriteCheck(Frozen):
    """The checks of a rewrite link (runner.rewrite.drop_reason), applied to the rewrite stage's rows: free, so a
    change to a check reruns none of the rewriting model's (possibly paid) requests."""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"rewriter"})
    kind: Literal["rewrite_check"] = "rewrite_check"
    domain: Literal["numbers", "cot", "code"]
    how: Literal["continue", "reorder", "paraphrase"]
    checks: int  # runner.rewrite.CHECKS[how]: the checks' version
    rewriter: str = ""  # the rewriting link, for tables


Link = Union[NumbersFilter, BannedNumbersFilter, BannedWordsFilter, RegexFilter, CorrectAnswerFilter, ShuffleLink,
             JudgeThreshold, RewriteCheck]


class ScoreStage(Stage):
    """A judge's score for every (prompt, completion) of a row stage, or every (question, answer) of an
    answers stage. Thresholds are applied downstream, so changing one rescores nothing."""

    KIND: ClassVar[str] = "score"
    # parse: how the replies were read when judged, shown in scores.json; readers read the stored replies
    # their own way (read_scores), so another parse reuses the paid replies and is not in the key
    DISPLAY: ClassVar[frozenset[str]] = Stage.DISPLAY | {"parse"}
    rows_stage: str | None = None
    answers_stage: str | None = None
    judge: ModelInput
    mode: Literal["sample", "logprob"]
    template: str  # the text, with {target} filled
    answer_prefix: str | None = None  # logprob mode
    max_tokens: int | None = None  # sample mode
    temperature: float = 0.0  # sample mode
    parse: str = "lenient"  # sample mode: a backends.judge.PARSERS name
    token: str | None = None  # logprob mode on a chat API: the score is 100 x P(first reply token = token)
    top_logprobs: int | None = None  # ... read from this many top log-probs
    seed: int = 0
    precision: str | None = None

    def pairs(self, path) -> list[tuple[str, str]]:
        from runner.rows import completion_of

        if self.rows_stage:
            return [(r.get("prompt", ""), completion_of(r)) for r in read_jsonl(path(self.rows_stage) / "rows.jsonl")]
        out = stage_output(path(self.answers_stage) / "answers.json")
        return [(q, a) for q, answers in zip(out["questions"], out["answers"]) for a in answers]

    def run(self, ctx: RunContext) -> None:
        from runner.score_memo import ScoreMemo, pair_digest

        pairs, settings = self.pairs(ctx.path), self.settings_digest()
        if settings is None:  # scores depend on the pairs' positions: judge them all, as they come
            scores = self._score(ctx, pairs)
        else:
            memo, digests = ScoreMemo(ctx.store.root, settings), [pair_digest(*p) for p in pairs]
            known = memo.known()
            new = {d: p for d, p in zip(digests, pairs) if d not in known}  # each new pair once
            fresh = self._score(ctx, list(new.values()), scored=memo.add)  # remembered chunk by chunk
            known.update(zip(new, fresh))
            scores = [known[d] for d in digests]
            ctx.extra["scores_reused"] = len(pairs) - len(new)
        (ctx.dir / "scores.json").write_text(json.dumps({"scores": [[s.kind, s.value] for s in scores],
                                                         "raw": [s.raw for s in scores]}))
        ctx.rows["scored"] = len(scores)

    def _score(self, ctx: RunContext, pairs: list[tuple[str, str]], scored=None) -> list:
        from runner.judging import score_pairs

        return score_pairs(ctx.router, ctx.model(self.judge), self.mode, self.template, pairs, self.answer_prefix,
                           self.max_tokens or 16, seed=self.seed, progress=ctx.progress,
                           temperature=self.temperature, parse=self.parse, token=self.token,
                           top_logprobs=self.top_logprobs or 20, scored=scored)

    def settings_digest(self) -> str | None:
        """What a pair's score depends on besides the pair: this stage's inputs without its rows and seed
        (runner/score_memo.py). None for a judge sampling at temperature > 0, whose chunks are seeded by
        position, so that a pair's score is not a function of the pair alone."""
        if self.mode == "sample" and self.temperature > 0:
            return None
        inputs = {k: v for k, v in semantic(self).items() if k not in ("rows_stage", "answers_stage", "seed")}
        blob = json.dumps({"kind": self.KIND, "version": self.VERSION, "inputs": inputs}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        info = hosted_info(ctx, self.judge)
        upstream = ctx.stages[self.rows_stage or self.answers_stage]
        calls = upstream.expected_rows(ctx) or 0
        content = upstream.content_tokens(ctx) if hasattr(upstream, "content_tokens") else 0
        what = "judge filter, <= every row" if self.rows_stage else f"{self.label.rsplit(' ', 1)[-1]} judge"
        if not info:  # a local judge: GPU time, where the plan assumes a throughput (each prompt read once)
            replies = calls * (self.max_tokens or 16) if self.mode == "sample" else 0
            return on_gpu(ctx, self.judge, what, calls, round((chat_tokens(None, self.template) + content) * calls),
                          replies)
        if self.token is not None:  # one reply token; the top log-probs are not billed
            what += f", 1 token + top-{self.top_logprobs} log-probs"
        elif self.mode == "logprob":  # no reply: the prompt is read once per candidate score
            from runner.judging import CANDIDATES

            what += f", {len(CANDIDATES)} log-prob reads each"
            return [judge_calls(info, self.template, calls * len(CANDIDATES), content, 0, what)]
        return [judge_calls(info, self.template, calls, content, 1 if self.token is not None else self.max_tokens or 16,
                            what)]


def read_scores(folder: Path, parse: str | None = None):
    """A score stage's scores; with parse (a sampled judge's), its stored replies read by that parser (a
    parser's fix or another parse takes effect without asking the judge again)."""
    from backends.judge import PARSERS, Score

    out = stage_output(folder / "scores.json")
    if parse is not None:
        return [PARSERS[parse](raw) for raw in out["raw"]]
    return [Score(k, v, raw) for (k, v), raw in zip(out["scores"], out["raw"])]


class FromRows:
    """A mixin for stages that write some of the rows of `rows_stage`, changed or not (filter,
    rewrite): sizes are read from upstream, and a written row id must be unique."""

    def expected_rows(self, ctx: PlanContext) -> int | None:
        return ctx.stages[self.rows_stage].expected_rows(ctx)

    def content_tokens(self, ctx: PlanContext) -> float:
        return ctx.stages[self.rows_stage].content_tokens(ctx)

    def verify(self, folder: Path) -> None:
        ids = [r["id"] for r in read_jsonl(folder / "rows.jsonl")]
        if len(ids) != len(set(ids)):
            raise UserError(f"{self.label}: duplicate row ids; the stage was not committed")


class FilterStage(FromRows, Stage):
    """An ordered run of filter links over a row stage; each link's kept/dropped is recorded. A judge
    link here only applies its threshold to the scores of `scores_stage`."""

    KIND: ClassVar[str] = "filter"
    rows_stage: str
    scores_stage: str | None = None
    links: tuple[Link, ...] = ()
    word_edges: int = 1  # with a whole-word banned_words link: runner.filters.WORD_EDGES, the edge rule's version

    def run(self, ctx: RunContext) -> None:
        from runner.filters import apply_chain

        rows = read_jsonl(ctx.path(self.rows_stage) / "rows.jsonl")
        scores = None
        if self.scores_stage:
            parse = next((link.parse for link in self.links if isinstance(link, JudgeThreshold)), None)
            scores = dict(zip((r["id"] for r in rows), read_scores(ctx.path(self.scores_stage), parse)))
        kept, counts = apply_chain(rows, list(self.links), scores)
        write_jsonl(ctx.dir / "rows.jsonl", kept)
        ctx.extra["links"] = [asdict(c) for c in counts]
        ctx.rows.update(input=len(rows), kept=len(kept))
