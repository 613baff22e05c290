"""Answered requests shared by every stage of one outputs folder, and by processes that share it.

A distilling Tinker student reads its teacher's top-k at every training row; the replicates of a
student, and students that share a teacher and rows, send the very same reads. They go to one file,
`<outputs>/tinker_topk/<digest>.jsonl`, one JSON line per answered request, appended under an
exclusive file lock as each answer arrives (a killed stage keeps what it paid for) and read under a
shared one. A torn last line (a kill mid-write) is skipped on reading, never truncated (another process
may be appending), and the next append starts on a line of its own.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from backends.openai_api import RequestCache, records_by_key, scrub_exact


@contextmanager
def _locked(path: Path, mode: str, how: int) -> Iterator:
    with open(path, mode) as f:
        fcntl.flock(f, how)
        try:
            yield f
        finally:
            f.flush()  # before another process may write
            fcntl.flock(f, fcntl.LOCK_UN)


def read_records(path: Path) -> dict[str, dict]:
    """Records by key; a torn or unreadable line is skipped."""
    if not path.is_file():
        return {}
    with _locked(path, "rb", fcntl.LOCK_SH) as f:
        raw = f.read()
    return records_by_key(raw[: raw.rfind(b"\n") + 1])


def append_line(path: Path, line: str) -> None:
    """One line appended whole, even with other processes appending; after a torn last line, on a new line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, "a+b", fcntl.LOCK_EX) as f:
        f.write(b"\n" * _ends_mid_line(f) + line.encode())  # "a" mode: every write lands at the end


def _ends_mid_line(f) -> bool:
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return False
    f.seek(end - 1)
    return f.read(1) != b"\n"


class SharedRequestCache:
    """RequestCache's get/put over the shared file, as it stood when made. `own`: the stage's own cache,
    read only (a stage killed before reads were shared keeps them there)."""

    def __init__(self, path: Path, own: RequestCache | None = None):
        self.path, self.own, self.lock = Path(path), own, threading.Lock()
        self.data = read_records(self.path)

    def get(self, key: str) -> dict | None:
        return self.data.get(key) or (self.own.get(key) if self.own else None)

    def put(self, record: dict) -> None:
        with self.lock:
            self.data[record["key"]] = record
            append_line(self.path, scrub_exact(json.dumps(record)) + "\n")
