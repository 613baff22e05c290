"""Inputs that changed after their stage was keyed: a file or local model folder edited while a run goes on.

A stage's key holds the digests taken when the run was planned; a stage built from contents edited since
would be stored under the old contents' key, and every later run would reuse it as if it were theirs.
So each stage checks its files and local weights just before it starts and again before its folder is
renamed into place (digests are cached by size and mtime, so an unchanged file is not re-read)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from runner.errors import UserError
from runner.identity import data_digest, file_sha256, folder_digest
from runner.stages import FileInput, ModelInput, Stage

WEIGHTS = "weights:"


def pinned_inputs(value: Any) -> Iterator[FileInput | ModelInput]:
    """Every file and every model input anywhere in a stage's fields."""
    if isinstance(value, (FileInput, ModelInput)):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from pinned_inputs(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from pinned_inputs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from pinned_inputs(v)


def _digest_now(path: Path, model: bool) -> str:
    if path.is_dir():
        return folder_digest(path) if model else data_digest(path)
    return file_sha256(path)


def changed_input(item: FileInput | ModelInput) -> str | None:
    """What is wrong with one input now (None: it is what the key says)."""
    if isinstance(item, FileInput):
        if item.path.startswith("builtin:"):
            return None
        path, pinned = Path(item.path), item.sha256
    else:  # a local model folder keyed by its weights (hub, hosted and stage-made models pin otherwise)
        if item.from_stage or not item.identity.startswith(WEIGHTS):
            return None
        from backends.embedded import resolve

        path, pinned = Path(resolve(item.ref)), item.identity[len(WEIGHTS):].split("+", 1)[0]  # '+turn_end:...'
    if not path.exists():
        return f"{path}: missing (it was there when the run was planned)"
    if _digest_now(path, isinstance(item, ModelInput)) != pinned:
        return f"{path}: changed since the run was planned"
    return None


def check_unchanged(stage: Stage) -> None:
    """Raise (one line) when a file or local model the stage's key pinned is not what it was."""
    for item in pinned_inputs(stage):
        problem = changed_input(item)
        if problem:
            raise UserError(f"{problem}; stage {stage.label or stage.key} is keyed by its earlier contents, so it "
                            "was not built; run again to plan with the new contents")
