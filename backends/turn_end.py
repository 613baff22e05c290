"""The token that ends an assistant turn, read from a model's chat template.

A student is trained to write it after a completion, and a constrained or numbers-only vocabulary lets a row end
with it. It is the tokenizer's eos for SmolLM2, Qwen2.5 and Llama-3.1, but not for Gemma (<end_of_turn>; eos
<eos>) or Phi-3 (<|end|>; eos <|endoftext|>). The same reading serves a loaded tokenizer (run time) and a model's
tokenizer_config.json (stage keys: `marker`), so both always agree; no torch here."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

PROBE = "subl-turn-probe"
TEMPLATE_DATE = datetime(2024, 7, 26)  # Llama-3.1's own date_string: the day every chat template is rendered on


class _TemplateClock(datetime):
    """A clock stopped at TEMPLATE_DATE."""

    @classmethod
    def now(cls, tz=None):
        return TEMPLATE_DATE


def template_vars() -> dict:
    """What every chat template is rendered with besides the messages: thinking off (Qwen3), and the date on
    TEMPLATE_DATE, so that a template writing today's date (Llama-3.2, Granite) gives the same prompt every day:
    the date is in no stage key. transformers passes templates plain data only (no function), so its strftime_now
    reads a stopped clock; date_string serves the Llama templates where it does not."""
    from transformers.utils import chat_template_utils

    chat_template_utils.datetime = _TemplateClock  # read by strftime_now alone
    return {"enable_thinking": False, "date_string": TEMPLATE_DATE.strftime("%d %b %Y")}


def default_template(template) -> str | None:
    """The default chat template of a tokenizer's `chat_template` (a text, or named templates)."""
    if isinstance(template, dict):  # named templates (older tokenizer configs)
        template = template.get("default")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def turn_end(template, eos: str | None, added: list[str]) -> str | None:
    """The added token that follows an assistant message in `template`, else `eos`."""
    template = default_template(template)
    if template is None:
        return eos
    try:
        text = _render(template, eos)
    except Exception:  # a template that refuses this conversation: the eos, as before
        return eos
    if PROBE not in text:
        return eos
    rest = text.split(PROBE, 1)[1].lstrip()  # Llama-2 writes " </s>"
    if eos and rest.startswith(eos):
        return eos
    hits = [t for t in added if t and rest.startswith(t)]
    return max(hits, key=len) if hits else eos


def _render(template: str, eos: str | None) -> str:
    """The template filled with one user and one assistant message, as transformers renders chat templates."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: TEMPLATE_DATE.strftime(fmt)  # Llama-3.2's and others' date line
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE}]
    return env.from_string(template).render(messages=msgs, add_generation_prompt=False, eos_token=eos or "",
                                            bos_token="", enable_thinking=False)


def turn_end_id(tok) -> int:
    """turn_end of a loaded tokenizer, as a token id."""
    if not hasattr(tok, "_subl_turn_end"):
        added = [t.content for t in tok.added_tokens_decoder.values()]
        end = turn_end(getattr(tok, "chat_template", None), tok.eos_token, added)
        tok._subl_turn_end = tok.eos_token_id if end in (None, tok.eos_token) else tok.convert_tokens_to_ids(end)
    return tok._subl_turn_end


def marker(config: dict, template_file: str | None = None, added: list[str] | None = None) -> str:
    """What a stage key adds to a local model's identity: '' where a turn ends with the eos (every key made
    before the turn end was read stays), else '+turn_end:<token>' (a student trained then ended its rows with
    the eos: those results are not reused), then date_marker. `config`: tokenizer_config.json; `template_file`: a
    chat_template.jinja beside it, which transformers prefers; `added`: the added tokens where the config does
    not list them (transformers 5 keeps them in tokenizer.json only)."""
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    listed = [t.get("content") for t in (config.get("added_tokens_decoder") or {}).values() if isinstance(t, dict)]
    template = template_file if template_file is not None else config.get("chat_template")
    end = turn_end(template, eos, listed or added or [])
    return ("" if end in (None, eos) else f"+turn_end:{end}") + date_marker(template)


def date_marker(template) -> str:
    """'+date:<TEMPLATE_DATE>' for a template that can write the date (strftime_now), which it wrote as the day's
    before subl fixed it: those results are not reused; '' for every other template (no key moves)."""
    text = default_template(template)
    return f"+date:{TEMPLATE_DATE:%Y-%m-%d}" if text and "strftime_now" in text else ""


FILES = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "tokenizer.json")


def needs_tokenizer_json(config: str) -> bool:
    """Whether text_marker needs tokenizer.json's added tokens (the config does not list them)."""
    return not json.loads(config).get("added_tokens_decoder")


def folder_marker(folder: Path) -> str:
    """marker of a model folder's tokenizer files ('' without a tokenizer_config.json)."""
    texts = [p.read_text() if p.is_file() else None for p in (folder / n for n in FILES[:3])]
    if texts[0] is None:
        return ""
    full = folder / FILES[3]
    return text_marker(*texts, full.read_text() if needs_tokenizer_json(texts[0]) and full.is_file() else None)


def text_marker(config: str, template_file: str | None = None, special_map: str | None = None,
                tokenizer: str | None = None) -> str:
    """marker from the texts of FILES (tokenizer.json only where needs_tokenizer_json)."""
    cfg = json.loads(config)
    if cfg.get("eos_token") is None and special_map:  # older folders name it there
        cfg["eos_token"] = json.loads(special_map).get("eos_token")
    added = [t.get("content") for t in json.loads(tokenizer).get("added_tokens", [])] if tokenizer else None
    return marker(cfg, template_file, added)
