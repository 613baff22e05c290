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


def is_row(row) -> bool:
    """A {prompt, completion} row of texts, or a {messages} row of {role, content} texts."""
    if not isinstance(row, dict):
        return False
    if isinstance(row.get("messages"), list):
        return all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in row["messages"])
    return isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)
