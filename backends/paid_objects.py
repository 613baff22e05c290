"""Paid objects on a hosted API (uploaded files, batches, fine-tuning jobs), made at most once.

Each one carries the key of the stage that pays for it and a digest of what it holds: jobs and
batches in `metadata`, files in their name (the API gives files no metadata). Before any
create (a first attempt, a retry or a rerun) the provider's listing is read across all pages
and an exact match is adopted, so a lost response, a kill or a rerun into an empty outputs
folder never pays twice.
"""
from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from runner.core import current_stage_dir, current_stage_key
from runner.env import cache_root

KILL_ENV = "SUBL_TEST_KILL_AT"
GRACE_ENV = "SUBL_CREATE_GRACE"
DEFAULT_GRACE = 10.0  # seconds for a create that may have landed to show in the listing


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def one_at_a_time(digest: str) -> Iterator[None]:
    """Stages that would pay for the same object (equal digests) look it up and create it in turn, so the
    later one adopts what the earlier made instead of both creating it at once: threads of one run through a
    lock, processes sharing the store (two `subl run`, Ray workers) through a file lock beside the stages, and
    runs of this user into other outputs folders (the same object, tagged alike) through one in the user's
    cache folder (SUBL_CACHE, else ~/.cache/subl)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(digest, threading.Lock())
    with lock:
        folder = current_stage_dir()
        if folder is None:  # a backend called outside a run: no store to meet other processes in
            yield
            return
        store_lock, user_lock = Path(folder).parent / f".paid-{digest}.lock", _user_locks() / f"paid-{digest}.lock"
        with _file_lock(store_lock), _file_lock(user_lock):
            yield


def _user_locks() -> Path:
    return cache_root() / "locks"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing); where it cannot be made (a read-only home), none."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open(path, "a")
    except OSError:
        yield
        return
    with fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def kill_point(step: str) -> None:
    """Tests only: die as `kill -9` would at a named step, when SUBL_TEST_KILL_AT names it."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def stage_tag() -> str:
    """The key of the stage being built, else `adhoc` (a backend called outside a run)."""
    return current_stage_key() or "adhoc"


def tags(stage: str, digest: str, **extra: str) -> dict[str, str]:
    return {"subl_stage": stage, "subl_digest": digest, **extra}


def tagged_filename(kind: str, stage: str, digest: str) -> str:
    return f"subl-{kind}-{stage}-{digest}.jsonl"


def job_suffix(stage: str, digest: str) -> str:
    """At most 18 characters: 's' + 8 of the stage hash + '-' + 8 of the digest."""
    return f"s{stage.rsplit('-', 1)[-1][:8]}-{digest[:8]}"


def grace_seconds() -> float:
    from runner.env import env_number

    return env_number(GRACE_ENV, DEFAULT_GRACE)


def never_reached(exc: BaseException) -> bool:
    """The request never got to the server: the connection was refused or not made in time, or base_url names
    no protocol httpx speaks (`localhost:8000/v1`: a configuration error, not worth retrying)."""
    try:
        import httpx2 as httpx  # what newer openai SDKs are built on
    except ImportError:
        import httpx

    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol))


def ambiguous(exc: BaseException) -> bool:
    """A create that the server may have processed though no answer came back."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # a timeout or a dropped connection
        return not never_reached(exc)
    # any 5xx but 501 (not implemented) and 503 (not taken): a gateway's 502/504/520/524 may hide an origin that did it
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500 and exc.status_code not in (501, 503)


def first(items: Iterable[Any], match: Callable[[Any], bool]) -> Any:
    """The first item that matches; iterating an SDK page follows its `after` cursors to the end."""
    return next((x for x in items if match(x)), None)


def adopt_or_create(find: Callable[[], Any], create: Callable[[], Any], grace: float) -> Callable[[], Any]:
    """One attempt (for the caller's retries): adopt what `find` returns, else create. After an
    ambiguous failure, wait `grace` seconds so that the next attempt's listing can see the object."""

    def attempt():
        found = find()
        if found is not None:
            return found
        try:
            return create()
        except Exception as e:
            if ambiguous(e):
                time.sleep(grace)
            raise

    return attempt


def metadata_matches(obj: Any, wanted: dict[str, str]) -> bool:
    meta = getattr(obj, "metadata", None) or {}
    return all(meta.get(k) == v for k, v in wanted.items())
