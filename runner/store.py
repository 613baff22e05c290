"""Content-addressed stage folders under outputs/: keys, atomic completion, manifests."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

PACKAGES = ("subl", "torch", "transformers", "peft", "trl", "accelerate", "pydantic", "openai", "numpy")


def stage_key(kind: str, config: Any, upstream: list[str], version: int) -> str:
    """Hash of a stage's semantic config, its upstream keys and its code version."""
    blob = json.dumps(
        {"kind": kind, "config": config, "upstream": sorted(upstream), "version": version},
        sort_keys=True,
        default=str,
    )
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        rev = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
            timeout=5, cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


_STAGE_DIR: ContextVar[Path | None] = ContextVar("subl_stage_dir", default=None)
_STAGE_KEY: ContextVar[str | None] = ContextVar("subl_stage_key", default=None)


def current_stage_dir() -> Path | None:
    """The temporary folder of the stage being built now; backends keep resumable state there."""
    return _STAGE_DIR.get()


def current_stage_key() -> str | None:
    """The key of the stage being built now (e.g. `finetune-1a2b...`); hosted backends tag what they pay for with it."""
    return _STAGE_KEY.get()


@dataclass(frozen=True)
class Stage:
    """One stage instance: its key, a human label, its config and upstream keys."""

    key: str
    label: str
    config: Any
    upstream: tuple[str, ...] = ()


class Store:
    def __init__(self, root: Path | str = "outputs"):
        self.root = Path(root).resolve()
        self.stages = self.root / "stages"

    def path(self, key: str) -> Path:
        return self.stages / key

    def partial(self, key: str) -> Path:
        return self.stages / f".{key}.partial"

    def done(self, key: str) -> bool:
        return (self.path(key) / "manifest.json").is_file()

    def manifest(self, key: str) -> dict:
        return json.loads((self.path(key) / "manifest.json").read_text())

    @contextmanager
    def build(self, stage: Stage, seeds: dict | None = None) -> Iterator["Build"]:
        """Yield a temporary folder; on success write the manifest and rename into place.

        The temporary folder survives a failure or a kill, so a stage may resume from it.
        """
        tmp = self.partial(stage.key)
        tmp.mkdir(parents=True, exist_ok=True)
        b = Build(tmp, time.time())
        token, key_token = _STAGE_DIR.set(tmp), _STAGE_KEY.set(stage.key)
        try:
            yield b
        except BaseException as e:  # kept for `subl status`; the partial folder stays for a resume
            first = str(e).splitlines()[0] if str(e) else ""
            (tmp / "error.txt").write_text(f"{type(e).__name__}: {first}\n")
            raise
        finally:
            _STAGE_DIR.reset(token)
            _STAGE_KEY.reset(key_token)
        (tmp / "error.txt").unlink(missing_ok=True)
        manifest = {
            "key": stage.key,
            "label": stage.label,
            "config": stage.config,
            "upstream": list(stage.upstream),
            "seeds": seeds or {},
            "packages": package_versions(),
            "git_revision": git_revision(),
            "started": b.started,
            "seconds": round(time.time() - b.started, 3),
            "rows": b.rows,
            **b.extra,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        final = self.path(stage.key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


@dataclass
class Build:
    dir: Path
    started: float
    rows: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.rows = {}
        self.extra: dict[str, Any] = {}


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):  # a torn last line (killed mid-write) is ignored
                rows.append(json.loads(line))
    return rows


def json_lines(path: Path | str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a user's JSONL file; a bad line is a
    one-line UserError naming file:line:col."""
    from runner.errors import UserError

    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}:{e.colno}: invalid JSON: {e.msg}") from None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
