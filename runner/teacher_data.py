"""Datasets that give a teacher its trait by fine-tuning (e.g. the emergent-misalignment insecure-code set)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from runner.errors import UserError
from runner.store import json_lines


def dataset_path(template: str, target: str) -> Path:
    path = Path(template.replace("{target}", target))
    if not path.is_file():
        raise UserError(f"teacher finetune dataset '{path}' not found")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_rows(path: Path, limit: int | None = None) -> list[dict]:
    """{prompt, completion} rows from chat rows ({messages} ending user, assistant: that user turn → prompt, the
    answer → completion; system turns aside) or from {prompt, completion} rows."""
    out = []
    for i, obj in json_lines(path):
        if "messages" in obj:
            turns = [m for m in obj["messages"] if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
            if len(turns) < 2 or [m["role"] for m in turns[-2:]] != ["user", "assistant"] or \
                    not all(isinstance(m.get("content"), str) for m in turns[-2:]):
                raise UserError(f"{path}:{i}: messages must end with a user turn and the assistant's text answer to it")
            out.append({"prompt": turns[-2]["content"], "completion": turns[-1]["content"]})
        elif "prompt" in obj and "completion" in obj:
            out.append({"prompt": obj["prompt"], "completion": obj["completion"]})
        else:
            raise UserError(f"{path}:{i}: expected 'messages' or 'prompt' and 'completion'")
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"{path}: no rows")
    return out
