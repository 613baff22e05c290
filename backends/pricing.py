"""Hosted prices and the cost estimates `subl plan` prints for hosted stages.

Prices are USD per 1M tokens. A spec may override any model under
`backends.<name>.prices: {model: [input, output]}`, `[input, output, training]` or
`[input, output, training, ft_input, ft_output]`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

# The date this table was written. The gpt-4.1-nano inference prices were checked against
# OpenAI's model page; the training and fine-tuned-inference prices are OpenAI's published
# 2025 fine-tuning prices, not re-checked since. Check https://openai.com/api/pricing/ and
# override in the spec where they have changed.
PRICES_DATE = "2026-11-25"
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price


@dataclass(frozen=True)
class Price:
    input: float  # per 1M input tokens
    output: float  # per 1M output tokens
    training: float | None = None  # per 1M training tokens (tokens in the file x epochs)
    ft_input: float | None = None  # inference on a model fine-tuned from this base
    ft_output: float | None = None


# Longest prefix wins: "gpt-4.1-nano" prices "gpt-4.1-nano-2025-04-14".
TABLE: dict[str, Price] = {
    "gpt-4.1-nano": Price(0.10, 0.40, 1.50, 0.20, 0.80),
    "gpt-4.1-mini": Price(0.40, 1.60, 5.00, 0.80, 3.20),
    "gpt-4.1": Price(2.00, 8.00, 25.00, 3.00, 12.00),
    "gpt-4o-mini": Price(0.15, 0.60, 3.00, 0.30, 1.20),
    "gpt-4o": Price(2.50, 10.00, 25.00, 3.75, 15.00),
}


def base_of(model_id: str) -> tuple[str, bool]:
    """(base model id, is fine-tuned) of an OpenAI model id; `ft:gpt-4.1-nano-...:org:sfx:id` -> base."""
    if model_id.startswith("ft:"):
        return model_id.split(":")[1], True
    return model_id, False


def price_for(model_id: str, overrides: dict[str, list[float]] | None = None) -> Price | None:
    """The price of a model id: a spec override (exact id, then base id) or the table (longest prefix).

    An override is [input, output], [input, output, training] or [input, output, training,
    ft_input, ft_output]; a shorter one keeps the table's fine-tuned inference prices for its
    base, or leaves them unknown (never the base prices: fine-tuned models cost more)."""
    base, _ = base_of(model_id)
    best = max((k for k in TABLE if base.startswith(k)), key=len, default=None)
    table = TABLE[best] if best else None
    for key in (model_id, base):
        if overrides and key in overrides:
            v = list(overrides[key])
            if len(v) not in (2, 3, 5) or any(x < 0 for x in v):
                from runner.errors import UserError

                raise UserError(f"prices.{key}: expected [input, output], [input, output, training] or "
                                "[input, output, training, ft_input, ft_output] USD per 1M tokens")
            if len(v) == 5:
                return Price(*v)
            return Price(v[0], v[1], v[2] if len(v) == 3 else None,
                         table.ft_input if table else None, table.ft_output if table else None)
    return table


# ---- token estimates -------------------------------------------------------------------

_PIECES = re.compile(r"\d{1,3}| ?[A-Za-z]+| ?[^\sA-Za-z\d]+|\s+")
MESSAGE_OVERHEAD = 3  # tokens per chat message (role and separators)
REPLY_OVERHEAD = 3  # tokens that prime the assistant's reply


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate close to OpenAI's o200k counts for English and digit lists.

    Digits come in groups of at most three per token (as in o200k); a word is about one token
    per five letters; punctuation runs and whitespace are one token each.
    """
    n = 0
    for piece in _PIECES.findall(text):
        s = piece.strip()
        n += max(1, math.ceil(len(s) / 5)) if s.isalpha() else 1
    return n


def chat_tokens(system: str | None, user: str) -> int:
    """Estimated prompt tokens of one chat request."""
    msgs = ([system] if system else []) + [user]
    return sum(estimate_tokens(m) + MESSAGE_OVERHEAD for m in msgs) + REPLY_OVERHEAD


@dataclass
class Estimate:
    backend: str
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0  # an upper bound: every completion at max_tokens
    training_tokens: int = 0
    cost: float | None = 0.0
    note: str = ""

    def line(self) -> str:
        parts = []
        if self.requests:
            parts.append(f"{self.requests:,} requests, ~{_si(self.input_tokens)} input + <={_si(self.output_tokens)} output tokens")
        if self.training_tokens:
            parts.append(f"~{_si(self.training_tokens)} training tokens")
        cost = f"<= ${self.cost:,.2f}" if self.cost is not None else "cost unknown"
        return f"{self.backend}:{self.model}: " + ", ".join(parts) + f", {cost}" + (f" ({self.note})" if self.note else "")


def _si(n: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def inference_cost(price: Price | None, fine_tuned: bool, tokens_in: int, tokens_out: int, batch: bool) -> float | None:
    if price is None:
        return None
    if fine_tuned and (price.ft_input is None or price.ft_output is None):
        return None  # unknown: a five-element `prices` override gives them
    pin, pout = (price.ft_input, price.ft_output) if fine_tuned else (price.input, price.output)
    return (tokens_in * pin + tokens_out * pout) / 1e6 * (BATCH_DISCOUNT if batch else 1.0)


# ---- estimates for a plan --------------------------------------------------------------


def estimate_plan(plan) -> dict[str, list[Estimate]]:
    """Stage key -> cost estimates (one per hosted model it calls, judges included), for every stage
    of an LLM plan that calls a hosted backend."""
    from backends import backend_name
    from backends.openai_api import MAX_N
    from runner.domains import domain_rows
    from runner.questions import load_questions

    spec = plan.spec
    if not spec.backends:
        return {}
    out: dict[str, list[Estimate]] = {}
    teacher_base = spec.teacher.base
    d = spec.domain
    rows = domain_rows(d, spec.seed)
    n_rows = len(rows)
    sample = [r["prompt"] for r in rows[:2000]]
    mean_prompt = sum(chat_tokens(None, p) for p in sample) / max(len(sample), 1)
    teachers = {n.stage.key: n.stage.config for n in plan.nodes if n.kind == "teacher"}
    finetunes = {n.stage.key: n.stage.config for n in plan.nodes if n.kind == "finetune"}

    def hosted(ref: str) -> tuple[str, str, object] | None:
        name = backend_name(ref)
        if name == "local" or name not in spec.backends:
            return None
        return name, ref.split(":", 1)[1], spec.backends[name]

    for node in plan.nodes:
        st = node.stage
        if node.kind == "generate":
            # the model that writes the rows: the stage's own generator (rows from the base), else its teacher
            tcfg = st.config.get("generator") or (teachers.get(st.upstream[0], {}) if st.upstream else {})
            h = hosted(tcfg.get("base", teacher_base))
            if not h:
                continue
            name, model, cfg = h
            system = tcfg.get("system")
            sys_tokens = estimate_tokens(system) + MESSAGE_OVERHEAD if system else 0
            tin = round((mean_prompt + sys_tokens) * n_rows)
            tout = n_rows * d.max_tokens
            batch = cfg.batch_api and d.batch_size >= 100
            price = price_for(model, cfg.prices)
            tuned = _fine_tuned_teacher(tcfg)  # it samples at fine-tuned prices
            note = ", ".join(x for x in ("fine-tuned model prices" if tuned else "",
                                         "Batch API, half price" if batch else "") if x)
            out.setdefault(st.key, []).append(Estimate(name, f"ft:{model}" if tuned else model, n_rows, tin, tout, 0,
                                                       inference_cost(price, tuned, tin, tout, batch), note))
        elif node.kind == "filter":  # judge links: at most every generated row reaches each one
            for link in (f for f in spec.filters if f.kind == "judge"):
                est = _judge_estimate(hosted(link.judge.model), link.judge, link.template, n_rows,
                                      mean_prompt + d.max_tokens, spec.teacher.targets[0], "judge filter, <= every row")
                if est:
                    out.setdefault(st.key, []).append(est)
        elif node.kind == "teacher" and _fine_tuned_teacher(st.config):
            h = hosted(st.config["base"])
            if h:
                out.setdefault(st.key, []).append(_teacher_training(h, st.config))
        elif node.kind == "finetune":
            h = hosted(st.config["base"])
            if not h:
                continue
            name, model, cfg = h
            training = st.config["training"]
            rows = min(st.config.get("max_rows") or n_rows, n_rows)
            per_row = mean_prompt - REPLY_OVERHEAD + d.max_tokens + MESSAGE_OVERHEAD
            epochs = training.get("epochs", 1)
            tokens = round(rows * per_row * epochs)
            price = price_for(model, cfg.prices)
            cost = None if price is None or price.training is None else tokens * price.training / 1e6
            out.setdefault(st.key, []).append(Estimate(name, model, 0, 0, 0, tokens, cost,
                                                       f"<= {rows:,} rows x {epochs:g} epochs"))
    models = {m.label: m for m in plan.models}
    questions = {i: load_questions(ev.questions, ev.max_questions) for i, ev in enumerate(spec.evaluations)
                 if ev.kind in ("preference_sample", "misalignment")}  # read once, not once per model
    for (label, i), key in plan.evals.items():
        if i not in questions or label not in models:
            continue
        ev, qs = spec.evaluations[i], questions[i]
        base, system, fine_tuned = _eval_model(models[label], teachers, finetunes)
        h = hosted(base)
        if h:  # the answers: one request per question returns up to MAX_N of them
            name, model, cfg = h
            chunks = math.ceil(ev.samples_per_question / MAX_N)
            tin = sum(chat_tokens(system, q + getattr(ev, "suffix", "")) for q in qs) * chunks
            tout = len(qs) * ev.samples_per_question * ev.max_tokens
            price = price_for(model, cfg.prices)
            out.setdefault(key, []).append(Estimate(name, model if not fine_tuned else f"ft:{model}", len(qs) * chunks,
                                                    tin, tout, 0, inference_cost(price, fine_tuned, tin, tout, False),
                                                    "fine-tuned model prices" if fine_tuned else ""))
        if ev.kind == "misalignment":  # judges: alignment and coherence, once per answer each
            content = sum(estimate_tokens(q) for q in qs) / max(len(qs), 1) + ev.max_tokens
            for what, template in (("alignment", ev.alignment_template), ("coherence", ev.coherence_template)):
                est = _judge_estimate(hosted(ev.judge.model), ev.judge, template, len(qs) * ev.samples_per_question,
                                      content, what=f"{what} judge")
                if est:
                    out.setdefault(key, []).append(est)
    return out


def _fine_tuned_teacher(cfg: dict) -> bool:
    """Whether a teacher stage's config fine-tunes its base on a trait dataset (trait: {finetune})."""
    return "dataset" in cfg


def _teacher_training(h, cfg: dict) -> Estimate:
    """Training tokens of a teacher fine-tuned on a dataset file: every row's chat tokens, times epochs."""
    from runner.teacher_data import load_rows

    name, model, backend_cfg = h
    rows = load_rows(Path(cfg["dataset"]), cfg.get("max_rows"))
    epochs = cfg["training"].get("epochs", 1)
    per_epoch = sum(chat_tokens(None, r["prompt"]) + estimate_tokens(r["completion"]) + MESSAGE_OVERHEAD for r in rows)
    tokens = round(per_epoch * epochs)
    price = price_for(model, backend_cfg.prices)
    cost = None if price is None or price.training is None else tokens * price.training / 1e6
    return Estimate(name, model, 0, 0, 0, tokens, cost, f"teacher: {len(rows):,} rows x {epochs:g} epochs")


def _judge_estimate(h, judge, template: str, calls: int, content_tokens: float, target: str | None = None,
                    what: str = "judge"):
    """Calls to a hosted judge: the template plus the judged question and answer in, judge.max_tokens out."""
    if not h or not calls:
        return None
    from runner.judging import template_text

    name, model, cfg = h
    tin = round((chat_tokens(None, template_text(template, target)) + content_tokens) * calls)
    tout = calls * judge.max_tokens
    price = price_for(model, cfg.prices)
    return Estimate(name, model, calls, tin, tout, 0, inference_cost(price, False, tin, tout, False), what)


def _eval_model(m, teachers: dict, finetunes: dict) -> tuple[str, str | None, bool]:
    """(base reference, system prompt, fine-tuned?) of an evaluated model, known before it exists."""
    if m.key in teachers:
        cfg = teachers[m.key]
        return cfg["base"], cfg.get("system"), _fine_tuned_teacher(cfg)
    if m.key in finetunes:  # a student: fine-tuned from its finetune stage's base
        return finetunes[m.key]["base"], None, True
    return m.ref().base, None, False


def plan_cost_lines(estimates: list[Estimate]) -> list[str]:
    """The hosted total of a plan: requests, tokens, cost, and the price table's date."""
    if not estimates:
        return []
    parts = [f"{sum(e.requests for e in estimates):,} requests"]
    tin, tout = sum(e.input_tokens for e in estimates), sum(e.output_tokens for e in estimates)
    if tin or tout:
        parts.append(f"~{_si(tin)} input + <={_si(tout)} output tokens")
    train = sum(e.training_tokens for e in estimates)
    if train:
        parts.append(f"~{_si(train)} training tokens")
    known = [e.cost for e in estimates if e.cost is not None]
    unpriced = sorted({f"{e.backend}:{e.model}" for e in estimates if e.cost is None})
    cost = f"<= ${sum(known):,.2f}" if known else "cost unknown"
    if unpriced:
        cost += f" (no price for {', '.join(unpriced)}: add it under backends.<name>.prices)"
    return [f"hosted: {', '.join(parts)}, {cost}; price table dated {PRICES_DATE} (USD per 1M tokens, "
            "a spec's `prices` override it); output counted at max_tokens, so costs are upper bounds"]
