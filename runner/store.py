"""Content-addressed stage folders under outputs/: locks, atomic completion, manifests."""
from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from runner.core import enter_stage, leave_stage
from runner.errors import UserError
from runner.files import write_text_atomic

PACKAGES = ("subl", "torch", "transformers", "peft", "trl", "accelerate", "pydantic", "openai", "numpy")


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


class Store:
    def __init__(self, root: Path | str = "outputs"):
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--outputs {root}: a file, not a folder")
        self.stages = self.root / "stages"

    def make_folders(self, run_name: str) -> None:
        """Create the stages folder and a run's folder, so an unusable --outputs stops the run before any work."""
        for folder in (self.stages, self.root / run_name):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if not os.access(folder, os.W_OK):
                    raise PermissionError(13, "not writable")
            except OSError as e:
                raise UserError(f"--outputs {self.root}: cannot write {folder} ({e.strerror or e})") from None

    def path(self, key: str) -> Path:
        return self.stages / key

    def partial(self, key: str) -> Path:
        return self.stages / f".{key}.partial"

    def done(self, key: str) -> bool:
        """Built: its manifest is there and whole (one left empty by a crash is rebuilt, not taken as a hit)."""
        try:
            return isinstance(json.loads((self.path(key) / "manifest.json").read_text()), dict)
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested past Python's limit
            return False

    def manifest(self, key: str) -> dict:
        """A built stage's manifest (check done() first); a key it lacks is one line naming it."""
        path = self.path(key) / "manifest.json"
        return json.loads(path.read_text(), object_hook=lambda obj: StageOutput(obj, path))

    def lock_path(self, key: str) -> Path:
        return self.stages / f".{key}.lock"

    @contextmanager
    def claim(self, key: str, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
        """Hold the stage's lock; yield whether it still needs building (another run may have
        finished it meanwhile). The lock is an flock on a file, so a dead holder releases it."""
        path = self.lock_path(key)
        try:
            self.stages.mkdir(parents=True, exist_ok=True)
            fd = open(path, "a")
        except OSError as e:  # a read-only outputs folder (a Ray node's mount, say)
            raise UserError(f"{path}: cannot create this stage's lock file ({_why(e)})") from None
        with fd:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait:
                        on_wait(f"waiting for another run that is building {key}")
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:  # ENOLCK: a network filesystem without its lock service
                raise UserError(f"{path}: cannot lock it ({_why(e)}); --outputs must be on a filesystem with file "
                                "locks, which keep two runs from building one stage at once") from None
            try:
                yield not self.done(key)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def build(self, key: str, manifest: dict, verify: Callable[[Path], None] | None = None) -> Iterator["Build"]:
        """Yield a temporary folder; on success verify it, write the manifest and rename it into
        place. Hold the stage's lock (claim) around it. The temporary folder survives a failure or a
        kill, so a stage may resume from it."""
        tmp = self.partial(key)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "error.txt").unlink(missing_ok=True)  # a resumed stage is running, not failed
        b = Build(tmp, time.time())
        tokens = enter_stage(key, tmp)
        try:
            yield b
            if verify:
                verify(tmp)
        except Exception as e:  # kept for `subl status`; the partial folder stays for a resume
            first = str(e).splitlines()[0] if str(e) else ""
            (tmp / "error.txt").write_text(f"{type(e).__name__}: {first}\n")
            raise  # an interrupt or exit is not a failure: the stage shows as partial
        finally:
            leave_stage(tokens)
        (tmp / "error.txt").unlink(missing_ok=True)
        record = {"key": key, **manifest, "packages": package_versions(), "git_revision": git_revision(),
                  "host": platform.node(), "started": b.started, "seconds": round(time.time() - b.started, 3),
                  "rows": b.rows, **b.extra}
        (tmp / "manifest.json").write_text(json.dumps(record, indent=2, default=str))
        sync_tree(tmp)  # on disk before the rename makes it a hit: a power cut must not leave empty files there
        final = self.path(key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _sync(self.stages)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """fsync every file under a folder, then the folders themselves (their entries)."""
    for here, _, files in os.walk(folder, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(here, name)):
                _sync(Path(here, name))
        _sync(Path(here))


@dataclass
class Build:
    dir: Path
    started: float
    rows: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class StageFileError(UserError, ValueError):
    """A stage's file that is missing or not what subl wrote (a hand edit, a damaged disk): one line naming it and
    how to build the stage again; a ValueError too, so a reader that tolerates damage (subl status) goes on."""


def damaged(where: Path | str, problem: str, path: Path) -> StageFileError:
    return StageFileError(f"{where}: {problem}; delete {Path(path).parent} to build that stage again")


def _why(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]


def read_jsonl(path: Path) -> list[dict]:
    """A stage's rows (a torn last line, killed mid-write, is ignored); a missing file, a line that is not a JSON
    object, or a row without a key a reader asks for, is one line naming it."""
    try:
        with open(path) as f:
            lines = list(f)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise damaged(path, f"a stage's rows, cannot read them ({_why(e)})", path) from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.endswith("\n"):
            continue
        try:
            row = json.loads(line, object_hook=lambda obj: StageOutput(obj, path))
        except (ValueError, RecursionError) as e:
            row, problem = None, f"a stage's row, not JSON ({_why(e)})"
        else:
            problem = None if isinstance(row, dict) else f"a stage's row, not a JSON object ({type(row).__name__})"
        if problem:
            raise damaged(f"{path}:{n}", problem, path) from None
        rows.append(row)
    return rows


class StageOutput(dict):
    """A finished stage's JSON object (and each object in it): a key it lacks is one line naming the file."""

    def __init__(self, value: dict, path: Path):
        super().__init__(value)
        self.path = path

    def __missing__(self, key):
        raise damaged(self.path, f"a finished stage's output, has no {key!r}", self.path)


def stage_output(path: Path) -> dict:
    """A finished stage's JSON output: a missing, torn or hand-damaged file, or one without a key a reader asks
    for, is one line naming it and how to rebuild the stage (its manifest is whole, so the stage counts as done
    and every rerun would read it again)."""
    try:
        value = json.loads(path.read_text(), object_hook=lambda obj: StageOutput(obj, path))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise damaged(path, f"a finished stage's output, cannot read it ({_why(e)})", path) from None
    if not isinstance(value, dict):
        raise damaged(path, f"a finished stage's output, not a JSON object ({type(value).__name__})", path)
    return value


def user_text(path: Path | str) -> str:
    """A user's text file; one that is not UTF-8 is a one-line UserError naming it."""
    try:
        return Path(path).read_text()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def text_lines(text: str) -> list[str]:
    """Lines split at newlines only (str.splitlines also splits at U+2028, U+0085, form feeds and more, which a
    question or a JSON string may hold)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def json_lines(path: Path | str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a user's JSONL file; a bad line is a
    one-line UserError naming file:line:col."""
    for n, line in enumerate(text_lines(user_text(path)), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}:{e.colno}: invalid JSON: {e.msg}") from None
            except RecursionError:
                raise UserError(f"{path}:{n}: invalid JSON: nested too deeply") from None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Whole or not at all: written beside `path`, then renamed over it (a resumed generation rewrites its
    rows file; a kill mid-write must not lose the batches already paid for), synced first, so that a power
    cut after the rename does not leave an empty file in its place."""
    write_text_atomic(Path(path), "".join(json.dumps(r) + "\n" for r in rows))
