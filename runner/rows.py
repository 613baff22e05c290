"""Training rows: {prompt, completion} (or chat {messages}) dictionaries, as filters and transforms read them."""
from __future__ import annotations

from runner.errors import UserError


def completion_of(row: dict) -> str:
    """The text a filter judges: `completion`, or the last assistant message."""
    if "completion" in row:
        return str(row["completion"])
    for msg in reversed(row.get("messages", [])):
        if msg.get("role") == "assistant":
            return str(msg.get("content", ""))
    raise UserError("row has neither 'completion' nor an assistant message in 'messages'")
