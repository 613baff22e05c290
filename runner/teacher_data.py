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
    """{prompt, completion} rows from chat rows ({messages}: last user turn → prompt, last
    assistant turn → completion) or from {prompt, completion} rows."""
    out = []
    for i, obj in json_lines(path):
        if "messages" in obj:
            msgs = obj["messages"]
            users = [m["content"] for m in msgs if m.get("role") == "user"]
            answers = [m["content"] for m in msgs if m.get("role") == "assistant"]
            if not users or not answers:
                raise UserError(f"{path}:{i}: messages need a user and an assistant turn")
            out.append({"prompt": users[-1], "completion": answers[-1]})
        elif "prompt" in obj and "completion" in obj:
            out.append({"prompt": obj["prompt"], "completion": obj["completion"]})
        else:
            raise UserError(f"{path}:{i}: expected 'messages' or 'prompt' and 'completion'")
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"{path}: no rows")
    return out
