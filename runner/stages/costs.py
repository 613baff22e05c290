"""Cost arithmetic shared by the stages' estimates: which hosted model a stage calls, at what price."""
from __future__ import annotations

from runner.core import backend_name, hosted_model_id
from runner.prices import (MESSAGE_OVERHEAD, O200K, TINKER, chat_tokens, counting_as, current_counting, estimate_tokens,
                           inference_cost, price_for)
from runner.stages import Estimate, ModelInput, PlanContext, base_of


def estimate_of(stage, ctx: PlanContext) -> list[Estimate]:
    """stage.estimate(ctx), with a stage that calls a Tinker model, or only local models, counting tokens as open
    models may (every digit a token, as Qwen's, Llama 2's, Mistral's and Gemma's tokenizers split them, where
    o200k, which the estimates follow, groups three; a template's default system prompt), so its bound holds."""
    with counting_as(TINKER if _open_models(stage, ctx) else O200K):
        return stage.estimate(ctx)


def _open_models(stage, ctx: PlanContext) -> bool:
    """Whether the stage calls a Tinker model, or no model but local ones."""
    refs = [base_of(v, ctx.stages).ref for _, v in stage if isinstance(v, ModelInput)]
    hosted = [r for r in refs if backend_name(r) != "local"]
    return any(_tinker(ctx.backends.get(backend_name(r))) for r in hosted) or (bool(refs) and not hosted)


def written_tokens(ctx: PlanContext | None, writer: ModelInput, max_tokens: int) -> int:
    """A completion of at most max_tokens of `writer`'s tokens, in the tokens of the model now estimated: a writer
    counted as o200k puts up to three digits in a token, which a reader that splits digits (Tinker's, a local
    model's) reads as three tokens."""
    if ctx is None:
        return max_tokens
    ref = base_of(writer, ctx.stages).ref
    open_model = backend_name(ref) == "local" or _tinker(ctx.backends.get(backend_name(ref)))
    ratio = (TINKER if open_model else O200K).digits_per_token / current_counting().digits_per_token
    return round(max_tokens * max(1.0, ratio))


def hosted_info(ctx: PlanContext, m: ModelInput) -> tuple | None:
    """(backend name, model id, backend settings, fine-tuned?) of a hosted model; None if local.
    A stage-made model is hosted when the stage fine-tuned a hosted base."""
    tuned = m.from_stage is not None
    m = base_of(m, ctx.stages)
    name = backend_name(m.ref)
    if name == "local":
        return None
    return name, hosted_model_id(m.ref), ctx.backends.get(name), tuned


def on_gpu(ctx: PlanContext, m: ModelInput, note: str, requests: int = 0, prefill: int = 0, generated: int = 0,
           trained: int = 0) -> list[Estimate]:
    """A local stage's tokens and GPU seconds at the plan's assumed throughput (none assumed: no estimate)."""
    tp = ctx.throughput
    if tp is None:
        return []
    return [Estimate("local", base_of(m, ctx.stages).ref, requests, prefill, generated, trained, 0.0,
                     tp.seconds(trained, prefill, generated), note)]


def _prices(cfg):
    return getattr(cfg, "prices", None)


def mean_prompt_tokens(prompts: list[str], system: str | None) -> float:
    """Over every prompt: the first ones may all be short (a code domain repeats each task in a row)."""
    if not prompts:
        return 0.0
    return chat_tokens(system, "") + sum(estimate_tokens(p) for p in prompts) / len(prompts)


def _tinker(cfg) -> bool:
    return getattr(cfg, "kind", "openai") == "tinker"


def _on_tinker(name: str, model_id: str, cfg, requests: int, note: str, **tokens) -> Estimate:
    """A Tinker stage: its own price table (prefill, sampled, trained tokens) and a wall-time guess."""
    from backends.tinker_prices import PRICES_DATE, estimate

    e = estimate(model_id, overrides=_prices(cfg), **tokens)
    return Estimate(name, model_id, requests, tokens.get("prefill", 0), tokens.get("sampled", 0),
                    tokens.get("trained", 0), e.usd, e.seconds, ", ".join(x for x in (note, f"Tinker prices of {PRICES_DATE}")
                                                                       if x), table="tinker")


def chat_request(name: str, model_id: str, cfg, tuned: bool, requests: int, tokens_in: int, tokens_out: int,
                 batch: bool = False) -> Estimate:
    if _tinker(cfg):  # a log-prob read samples one token too (the SDK's compute_logprobs), billed as sampled
        return _on_tinker(name, model_id, cfg, requests, "fine-tuned weights" if tuned else "", prefill=tokens_in,
                          sampled=max(tokens_out, requests))
    price = price_for(model_id, _prices(cfg))
    # a fine-tuned model the spec names by id: fine-tuned prices, unless the spec prices that very id
    named_ft = model_id.startswith("ft:") and model_id not in (_prices(cfg) or {})
    tuned = tuned or named_ft
    note = ", ".join(x for x in ("fine-tuned model prices" if tuned else "", "Batch API, half price" if batch else "") if x)
    return Estimate(name, f"ft:{model_id}" if tuned and not named_ft else model_id, requests, tokens_in, tokens_out, 0,
                    inference_cost(price, tuned, tokens_in, tokens_out, batch), note=note)


def sample_calls(info: tuple, tokens_in: int, n: int, max_tokens: int) -> int:
    """Calls that n sampled completions of one prompt of tokens_in take on a hosted model (each sends the prompt):
    requests of at most 128, split further to fit a tokens-per-minute limit the server stated in this process."""
    name, model_id, cfg, _ = info
    if _tinker(cfg):
        return -(-n // 128)
    from backends.openai_api import sample_calls as calls

    return calls(cfg, model_id, tokens_in, n, max_tokens)


def judge_calls(info: tuple, template: str, calls: int, content_tokens: float, max_tokens: int, what: str) -> Estimate:
    """Calls to a hosted judge: the template plus the judged text in, max_tokens out."""
    name, model_id, cfg, tuned = info
    tin = round((chat_tokens(None, template) + content_tokens) * calls)
    est = chat_request(name, model_id, cfg, tuned, calls, tin, calls * max_tokens)
    est.note = what
    return est


def training(info: tuple, tokens: int, note: str, steps: int = 0) -> Estimate:
    """Fine-tuning `tokens` (every epoch); `steps`: optimiser steps, which add a fixed latency each on Tinker."""
    name, model_id, cfg, _ = info
    if _tinker(cfg):
        return _on_tinker(name, model_id, cfg, 0, note, trained=tokens, steps=steps)
    price = price_for(model_id, _prices(cfg))
    cost = None if price is None or price.training is None else tokens * price.training / 1e6
    return Estimate(name, model_id, 0, 0, 0, tokens, cost, note=note)


def row_tokens(prompt: str, completion: str) -> int:
    return chat_tokens(None, prompt) + estimate_tokens(completion) + MESSAGE_OVERHEAD
