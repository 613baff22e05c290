"""Hosted model names that the provider may point at another model later.

A hosted model's stage keys name it as the spec writes it. OpenAI's undated names (`gpt-4.1-nano`,
`gpt-4o`) are aliases that OpenAI moves to newer snapshots; a run after such a move would reuse the
answers, scores and jobs cached under the name for a model that no longer answers to it. Dated snapshots
(`gpt-4.1-nano-2025-04-14`, `gpt-4-0613`) and fine-tuned models (`ft:...`) do not move. Other
OpenAI-compatible servers name their models as they like, so only OpenAI's own endpoint is checked."""
from __future__ import annotations

import re
from typing import Iterable

from runner.core import DEFAULT_BASE_URL

SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
OPENAI = f"hosted:openai@{DEFAULT_BASE_URL}:"


def moving_alias(identity: str) -> str | None:
    """The model name when a hosted identity is an OpenAI alias that may move, else None."""
    if not identity.startswith(OPENAI):
        return None
    model = identity[len(OPENAI):]
    return None if model.startswith("ft:") or SNAPSHOT.search(model) else model


def alias_warnings(identities: Iterable[str]) -> list[str]:
    names = sorted({m for m in map(moving_alias, identities) if m})
    return [f"warning: openai:{m} is an alias OpenAI may point at a newer snapshot; cached answers, scores and jobs "
            f"are keyed by the name and would then be reused for another model: name a dated snapshot "
            f"(e.g. {m}-YYYY-MM-DD, as listed by the models API) to pin it" for m in names]
