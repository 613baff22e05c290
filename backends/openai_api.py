"""Hosted backend: any OpenAI-compatible endpoint (OpenAI, vLLM, the llama.cpp server, ...).

Models are named `<backend>:<model id>` in a spec. The official `openai` SDK makes the calls
with its own retries off; tenacity retries 429, 5xx, timeouts and dropped connections with
exponential backoff and jitter, honours Retry-After, and is bounded in attempts and time.
Other 4xx responses fail at once with the API's own message.

Nothing is paid for twice:
- every answered chat request is appended to `hosted_requests.jsonl` in the running stage's
  folder as it arrives, so a resumed stage never re-sends it;
- uploads, batches and fine-tuning jobs are tagged with the stage and a digest of what they
  hold, and adopted from the provider's listing before any create (backends/paid_objects.py);
  their ids are also recorded (`hosted_batches.json`, `hosted_job.json`) before polling.

The API key is read from the environment variable the spec names, only; `redact` scrubs it
(and anything key-shaped) from every message and log line this module raises or writes, and
`scrub_exact` removes just the key from the model text it stores.
"""
from __future__ import annotations

import contextvars
import hashlib
import inspect
import itertools
import json
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay, stop_when_event_set

from backends.base import ModelRef, Progress, Sampling, Training
from backends.paid_objects import (adopt_or_create, first, grace_seconds, job_suffix, kill_point, metadata_matches,
                                   never_reached, one_at_a_time, stage_tag, tagged_filename, tags)
from runner.core import backend_name, current_stage_dir, hosted_endpoint
from runner.env import env_number
from runner.files import write_text_atomic
from runner.prices import BATCH_MIN_REQUESTS, chat_tokens, estimate_tokens
from runner.errors import UserError

REQUESTS_FILE = "hosted_requests.jsonl"
BATCHES_FILE = "hosted_batches.json"
BATCH_ERRORS_FILE = "hosted_batch_errors.jsonl"  # the lines a batch failed, one JSON object each
JOB_FILE = "hosted_job.json"
EVENTS_FILE = "hosted_events.jsonl"
TRAIN_FILE = "train.jsonl"
MIN_EXAMPLES = 10
MAX_EXAMPLE_TOKENS = 65_536  # OpenAI's per-example limit for the GPT-4.1 family
MAX_N = 128  # the most completions the chat API returns for one request
MAX_BATCH_REQUESTS = 50_000  # the Batch API's limits on one input file
MAX_BATCH_BYTES = 190_000_000  # under its 200 MB, with room for the multipart envelope
NOTES_FILE = "hosted_notes.json"
BATCH_DONE = ("completed", "failed", "expired", "cancelled")  # a batch's final states

# ---- secrets ---------------------------------------------------------------------------

_SECRETS: set[str] = set()
# what a key or a credential looks like in an error message or a log line: `sk-...` (also the
# masked `sk-abc***wxyz` a server echoes), `Bearer <token>`, an Authorization header's value
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}|\bBearer\s+[A-Za-z0-9_\-.*~+/=]{8,}|(?i:authorization)\s*[:=]\s*(?:Bearer\s+)?\S+")
_WINDOW = 8


def register_secret(value: str) -> None:
    """Remember a secret so that `redact` removes it; short values (<8 chars) are too common to scrub."""
    if value and len(value) >= _WINDOW:
        _SECRETS.add(value)


def redact(text: object) -> str:
    """An error message or log line with every known secret, any 8-character piece of one, and
    anything key-shaped removed. Model text is stored with `scrub_exact` instead."""
    out = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        out = _mask(out, secret)
    return _KEYLIKE.sub("[redacted]", out)


def scrub_exact(text: str) -> str:
    """Text with only the exact known secrets removed: model output ("ring bearer", "sk-learn") stays as written."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


def looks_like_key(name: str) -> bool:
    """An `api_key_env` value that is a key pasted in place of a variable's name."""
    if name.startswith("sk-") or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return True
    mixed = re.search(r"[a-z]", name) and re.search(r"[A-Z]", name) and re.search(r"\d", name)
    return len(name) >= 32 and bool(mixed)


def key_env(backend: str, name: str) -> str:
    """The variable name, checked; a key in its place stops with a line that does not echo it."""
    if looks_like_key(name):
        raise UserError(f"backend '{backend}': api_key_env must be the NAME of an environment variable "
                        "(e.g. OPENAI_API_KEY), but its value looks like a key itself; remove it from the spec "
                        "and rotate that key")
    return name


def _mask(text: str, secret: str) -> str:
    hit = [False] * len(text)
    for i in range(len(secret) - _WINDOW + 1):
        piece = secret[i : i + _WINDOW]
        at = text.find(piece)
        while at != -1:
            hit[at : at + _WINDOW] = [True] * _WINDOW
            at = text.find(piece, at + 1)
    if not any(hit):
        return text
    out, prev = [], False
    for ch, h in zip(text, hit):
        if h and not prev:
            out.append("[redacted]")
        elif not h:
            out.append(ch)
        prev = h
    return "".join(out)


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hosted_backends_used(spec) -> list[str]:
    """Names of the hosted backends that a spec's teacher, students or judges run on."""
    return sorted({backend_name(r) for r in spec.model_refs()} & set(spec.backends))


def require_keys(spec) -> None:
    """Stop before any work when a hosted backend's key variable is not set."""
    for name in hosted_backends_used(spec):
        env = key_env(name, spec.backends[name].api_key_env)
        if not os.environ.get(env):
            raise UserError(f"backend '{name}': the environment variable {env} is not set; "
                            f"export it with the API key (any value for a server without auth)")


# ---- retries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: initial * 2**(n-1), capped at max_wait, plus up to `jitter` s.

    A Retry-After header raises a wait to what the server asked. Retries stop after `attempts`
    tries, or when the next wait would pass `total` seconds since the first try.
    Environment overrides: SUBL_RETRY_ATTEMPTS, SUBL_RETRY_INITIAL, SUBL_RETRY_MAX_WAIT,
    SUBL_RETRY_JITTER, SUBL_RETRY_TOTAL, SUBL_HTTP_TIMEOUT (seconds per request),
    SUBL_CONNECT_TIMEOUT (seconds to open a connection: a black-holed host fails in that time),
    SUBL_JOB_SLOT_WAIT (seconds a fine-tuning job waits for a free slot at the organisation's limit of
    active jobs: those end in hours, not in a backoff's minutes).
    """

    attempts: int = 8
    initial: float = 1.0
    max_wait: float = 60.0
    jitter: float = 1.0
    total: float = 900.0
    timeout: float = 600.0  # the SDK's own: a long non-streamed answer (n x max_tokens) is not cut and re-paid
    connect: float = 10.0
    slot_wait: float = 86_400.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        names = {"attempts": "SUBL_RETRY_ATTEMPTS", "initial": "SUBL_RETRY_INITIAL", "max_wait": "SUBL_RETRY_MAX_WAIT",
                 "jitter": "SUBL_RETRY_JITTER", "total": "SUBL_RETRY_TOTAL", "timeout": "SUBL_HTTP_TIMEOUT",
                 "connect": "SUBL_CONNECT_TIMEOUT", "slot_wait": "SUBL_JOB_SLOT_WAIT"}
        defaults = cls()
        # at least one attempt; a timeout of 0 would fail every request; waits may be 0
        least = {"attempts": (1, False), "timeout": (0, True), "connect": (0, True)}
        return cls(**{field: env_number(env, getattr(defaults, field), integer=field == "attempts",
                                        least=least.get(field, (0, False))[0], above=least.get(field, (0, False))[1])
                      for field, env in names.items()})

    def backoff(self, attempt: int) -> float:
        return min(self.max_wait, self.initial * 2 ** (attempt - 1)) + random.uniform(0, self.jitter)


def retry_after(exc: BaseException) -> float | None:
    """Seconds a 429/503 response asked us to wait (Retry-After or retry-after-ms), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_code(exc: BaseException) -> str | None:
    body = getattr(exc, "body", None)
    return str(body.get("code")) if isinstance(body, dict) and body.get("code") else None


def too_large(exc: BaseException) -> bool:
    """A 429 that no wait cures: one request asks for more tokens than the per-minute limit."""
    return getattr(exc, "status_code", None) == 429 and api_message(exc).startswith("Request too large")


def daily_job_limit(exc: BaseException) -> bool:
    """A 429 saying the organisation has created its day's fine-tuning jobs for this model: no wait of this run
    cures it."""
    return getattr(exc, "status_code", None) == 429 and _error_code(exc) == "daily_rate_limit_exceeded"


def job_slots_full(exc: BaseException) -> bool:
    """A 429 refusing a fine-tuning job (the organisation is at its limit of active jobs): a slot frees when one of
    its jobs ends, hours later, so it is waited out apart from the minutes of a backoff."""
    return (getattr(exc, "status_code", None) == 429 and not daily_job_limit(exc)
            and _error_code(exc) != "insufficient_quota" and "fine-tun" in api_message(exc).lower())


def transient(exc: BaseException) -> bool:
    """Worth retrying: 408/409/429 (not an exhausted quota, a request too large or the daily job limit), 5xx,
    timeouts, refused or dropped connections."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return _error_code(exc) != "insufficient_quota" and not too_large(exc) and not daily_job_limit(exc)
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return False


def api_message(exc: BaseException) -> str:
    """The API's own message for an error, else the SDK's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return body["message"]
    if isinstance(body, str) and body.strip():
        return body.strip()
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


# ---- the request cache -----------------------------------------------------------------


def _records(raw: bytes) -> list[dict]:
    """The JSON objects of an append-only log, one per line; a damaged line (not UTF-8, not JSON, nested past
    Python's limit, not an object) is skipped: at worst what it recorded is asked for again."""
    out = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def records_by_key(raw: bytes) -> dict[str, dict]:
    """The records of a request cache's whole lines by their key (a record without a text key is skipped)."""
    return {rec["key"]: rec for rec in _records(raw) if isinstance(rec.get("key"), str)}


class RequestCache:
    """Answered requests by key, one JSON line each, appended (and flushed) as each arrives."""

    def __init__(self, path: Path | None):
        self.path, self.data, self.lock = path, {}, threading.Lock()
        if path and path.exists():
            raw = path.read_bytes()
            whole = raw[: raw.rfind(b"\n") + 1]
            if len(whole) != len(raw):  # a torn last line from a kill: cut off in place (a rewrite that a kill
                os.truncate(path, len(whole))  # cut short would lose every answer paid for)
            self.data = records_by_key(whole)

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, record: dict) -> None:
        with self.lock:
            self.data[record["key"]] = record
            if self.path:
                with open(self.path, "a") as f:
                    f.write(scrub_exact(json.dumps(record)) + "\n")
                    f.flush()


def _first_top(choice: Any) -> dict[str, float] | None:
    """A choice's first token's top log-probs (choices[i].logprobs.content[0].top_logprobs) as
    token -> log-prob; None where the answer carries none."""
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    top = getattr(content[0], "top_logprobs", None) if content else None
    if not top:
        return None
    out: dict[str, float] = {}
    for t in top:  # the same text twice (two token ids): their probabilities add
        out[t.token] = _logaddexp(out[t.token], t.logprob) if t.token in out else t.logprob
    return out


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _batch_line(key: str, body: dict) -> str:
    return json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"


def _digest(obj: Any, n: int = 32) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def request_seed(seed: int, prompt: int, chunk: int) -> int:
    """The seed of one chat request: distinct per prompt position and per chunk of `n`, so that a prompt
    repeated within a call (k samples of a task or question) is not answered k times alike by a server
    that honours seeds (vLLM exactly, OpenAI at best effort)."""
    return int(_digest([seed, prompt, chunk], 8), 16) % 2**31


def _save_json(path: Path, data: dict) -> None:
    """Whole or not at all, and on disk before it replaces the last record (it names paid objects)."""
    write_text_atomic(path, redact(json.dumps(data, indent=2)))


def _load_json(path: Path | None) -> dict:
    """A record _save_json wrote ({} where there is none); a damaged one is one line naming it."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{path}: damaged (not a JSON object); it records this stage's paid objects: look them "
                        "up with the provider (their tags name the stage), then delete the file to go on")
    return data


def _notify(progress: Progress | None, done: int, total: int, note: str) -> None:
    """Report progress; pass the status note where the callback takes a `note` keyword."""
    if progress is None:
        return
    try:
        takes_note = "note" in inspect.signature(progress).parameters
    except (TypeError, ValueError):
        takes_note = False
    if takes_note:
        progress(done, total, note=redact(note))
    else:
        progress(done, total)


# ---- training data ---------------------------------------------------------------------


def to_chat(rows: list[dict]) -> list[dict]:
    """Rows {prompt, completion} (or {messages}) as OpenAI chat-format training examples.

    The teacher's system prompt is not included: the student sees only the numbers task."""
    out = []
    for r in rows:
        if "messages" in r:
            out.append({"messages": r["messages"]})
        else:
            out.append({"messages": [{"role": "user", "content": r.get("prompt")},
                                     {"role": "assistant", "content": r.get("completion")}]})
    return out


def validate_examples(examples: list[dict]) -> dict:
    """Check chat-format examples before upload; return counts and estimated tokens."""
    if len(examples) < MIN_EXAMPLES:
        raise UserError(f"hosted fine-tuning needs at least {MIN_EXAMPLES} training examples; "
                        f"the filtered data has {len(examples)}")
    total, longest = 0, 0
    for i, ex in enumerate(examples):
        msgs = ex.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"training example {i}: no messages")
        tokens = 3
        for m in msgs:
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ("system", "user", "assistant"):
                raise UserError(f"training example {i}: role {role!r} is not system, user or assistant")
            content = m.get("content")
            if not isinstance(content, str) or not content.strip():
                raise UserError(f"training example {i}: empty {role} message")
            tokens += estimate_tokens(content) + 3
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"training example {i}: no assistant message")
        if tokens > MAX_EXAMPLE_TOKENS:
            raise UserError(f"training example {i}: about {tokens} tokens, over the {MAX_EXAMPLE_TOKENS} limit")
        total += tokens
        longest = max(longest, tokens)
    return {"examples": len(examples), "estimated_tokens": total, "longest_example_tokens": longest}


def hyperparameters(training: Training) -> dict:
    """Training -> the API's supervised hyper-parameters (numbers or "auto")."""
    epochs = training.epochs
    if epochs != "auto" and float(epochs) != int(float(epochs)):
        raise UserError(f"hosted fine-tuning takes whole epochs, not {epochs}")
    return {
        "n_epochs": epochs if epochs == "auto" else int(float(epochs)),
        "batch_size": training.batch_size,
        "learning_rate_multiplier": training.extra.get("lr_multiplier", "auto"),
    }


def same_base(job_model: str | None, model: str) -> bool:
    """Whether a job's base is the model asked for: the API reports a job created on an alias
    (gpt-4o-mini) by the alias's dated snapshot (gpt-4o-mini-2024-07-18)."""
    return job_model == model or re.fullmatch(re.escape(model) + r"-\d{4}-\d{2}-\d{2}", job_model or "") is not None


def _same_hyperparameters(job: Any, hp: dict) -> bool:
    """A job's hyper-parameters agree with what was asked (an `auto` accepts any value the API chose)."""
    method = getattr(job, "method", None)
    sup = getattr(method, "supervised", None) if method else None
    got = getattr(sup, "hyperparameters", None) or getattr(job, "hyperparameters", None)
    if got is None:
        return True
    return all(v == "auto" or getattr(got, k, None) in (None, v) for k, v in hp.items())


# ---- the backend -----------------------------------------------------------------------


# Tokens-per-minute limits that responses stated, by endpoint and model, for the whole process: preflight's backend
# and the run's (a Router per cell) share them, so a model's first call in the run already splits `n` to fit.
LEARNED_TPM: dict[str, dict[str, int]] = {}
LEARNED_BATCH_TOKENS: dict[str, dict[str, int]] = {}  # the Batch API's enqueued-token limit, by endpoint and model


class SlotsFull(UserError):
    """A fine-tuning job refused for the organisation's limit of active jobs (`cause`): waited out, not retried."""

    def __init__(self, cause: BaseException):
        super().__init__(api_message(cause))
        self.cause = cause


class EnqueuedTokenLimit(Exception):
    """A batch refused whole (free): its input tokens, with those already queued for the model, pass the
    organisation's enqueued-token limit; `limit` as its message says, where it does."""

    def __init__(self, limit: int | None):
        super().__init__(limit)
        self.limit = limit


def enqueued_limit(message: str) -> int | None:
    """The limit in 'Enqueued token limit reached for M in organization O. Limit: 2,000,000 enqueued tokens.'"""
    m = re.search(r"Limit: ([\d,]+) enqueued tokens", message or "")
    return int(m.group(1).replace(",", "")) if m else None


def input_tokens(body: dict) -> int:
    """A chat request's input tokens, estimated as the cost plan does."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
    return chat_tokens(system, "".join(m["content"] for m in body["messages"] if m["role"] != "system"))


def completions_per_call(cfg, model_id: str, input_tokens: int, max_tokens: int | None) -> int:
    """Completions one call of a prompt may ask for: MAX_N, or as many as fit the model's tokens-per-minute limit
    learned so far in this process (a call over it is refused as too large, whatever the wait)."""
    tpm = LEARNED_TPM.get(redact(hosted_endpoint(cfg)), {}).get(rate_model(model_id))
    if not tpm:
        return MAX_N
    return max(1, min(MAX_N, (tpm - input_tokens) // max(1, max_tokens or 1)))


def sample_calls(cfg, model_id: str, input_tokens: int, n: int, max_tokens: int | None) -> int:
    """Calls that `n` completions of one prompt take: requests of MAX_N, each split to fit the learned limit;
    every call sends the prompt again."""
    per = completions_per_call(cfg, model_id, input_tokens, max_tokens)
    return sum(-(-min(MAX_N, n - start) // per) for start in range(0, n, MAX_N))


def rate_model(model_id: str) -> str:
    """The model whose rate limit a call counts against: a fine-tuned model ('ft:BASE:org::id') shares its base's,
    a dated snapshot ('gpt-4.1-2025-04-14') its alias's."""
    base = model_id.split(":")[1] if model_id.startswith("ft:") and model_id.count(":") >= 2 else model_id
    return re.sub(r"-\d{4}-\d{2}-\d{2}$", "", base)


class OpenAIBackend:
    """generate / finetune on an OpenAI-compatible endpoint, and the first reply token's top_logprobs (log-prob
    judges); the exact `logprobs` probe is not offered."""

    def __init__(self, name: str, cfg, retry: RetryPolicy | None = None, poll_seconds: float | None = None,
                 state_dir: Path | None = None, batch_min_requests: int = BATCH_MIN_REQUESTS):
        self.name, self.cfg = name, cfg
        self.retry = retry or RetryPolicy.from_env()
        self.poll_seconds = env_number("SUBL_POLL_SECONDS", 30.0) if poll_seconds is None else poll_seconds
        self.state_dir = Path(state_dir) if state_dir else None  # where state goes outside a stage
        self.batch_min_requests = batch_min_requests
        self._client = None
        self._caches: dict[Path | None, RequestCache] = {}
        self._lock = threading.Lock()
        self._reached = False  # a request to this backend has succeeded
        self.grace = grace_seconds()  # after an ambiguous create, before listing again
        self.tpm = LEARNED_TPM.setdefault(self.endpoint, {})  # tokens-per-minute limit by model id, where said
        self.batch_tokens = LEARNED_BATCH_TOKENS.setdefault(self.endpoint, {})
        self._read_files: set[str] = set()  # batch output files read into a cache by this process
        self.batch_limits = (MAX_BATCH_REQUESTS, MAX_BATCH_BYTES)

    # -- client and calls

    @property
    def endpoint(self) -> str:
        return redact(hosted_endpoint(self.cfg))

    def _key(self) -> str:
        env = key_env(self.name, self.cfg.api_key_env)
        key = os.environ.get(env)
        if not key:
            raise UserError(f"backend '{self.name}': the environment variable {env} is not set; "
                            f"export it with the API key (any value for a server without auth)")
        register_secret(key)
        return key

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import openai

                timeout = openai.Timeout(self.retry.timeout, connect=min(self.retry.connect, self.retry.timeout))
                key = self._key()
                try:
                    self._client = openai.OpenAI(api_key=key, base_url=self.cfg.base_url, max_retries=0,
                                                 timeout=timeout)
                except Exception as e:  # a malformed base_url (httpx's InvalidURL: a bad port, an unclosed bracket)
                    raise UserError(redact(_one_line(f"backend '{self.name}': cannot use base_url {self.endpoint} "
                                                     f"({type(e).__name__}: {e})"))) from None
            return self._client

    def call(self, what: str, fn: Callable, *args, abort: threading.Event | None = None, **kw):
        """fn(*args, **kw) with tenacity's retries; a failure becomes a one-line, redacted UserError.

        Until a first request to this backend has succeeded, a refused or timed-out connection is
        a configuration error (a wrong base_url, a host that is down) and fails at once."""
        p = self.retry

        def wait(rs) -> float:
            ra = retry_after(rs.outcome.exception())
            backoff = p.backoff(rs.attempt_number)
            return max(backoff, ra) if ra is not None else backoff

        stop = stop_after_attempt(p.attempts) | stop_before_delay(p.total)
        if abort is not None:
            stop = stop | stop_when_event_set(abort)
        started = time.monotonic()
        retrying = Retrying(stop=stop, wait=wait, retry=retry_if_exception(self._retryable), reraise=True,
                            sleep=time.sleep)
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    out = fn(*args, **kw)
                    self._reached = True
                    return out
        except UserError:
            raise
        except Exception as e:
            raise self._explain(what, e, attempts, time.monotonic() - started) from None

    def _retryable(self, exc: BaseException) -> bool:
        return transient(exc) and (self._reached or not never_reached(exc))

    def _explain(self, what: str, exc: BaseException, attempts: int, seconds: float) -> UserError:
        import openai

        if isinstance(exc, openai.APITimeoutError) and never_reached(exc):
            why = f"no connection to {self.endpoint} within {min(self.retry.connect, self.retry.timeout):g} s"
        elif isinstance(exc, openai.APITimeoutError):
            why = f"no answer from {self.endpoint} within {self.retry.timeout:g} s"
        elif isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            why = f"cannot reach {self.endpoint}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        elif isinstance(exc, openai.APIStatusError):
            code = _error_code(exc)
            why = f"HTTP {exc.status_code}" + (f" {code}" if code else "") + f": {api_message(exc)}"
        elif isinstance(exc, openai.OpenAIError):
            why = api_message(exc)
        else:
            why = f"{type(exc).__name__}: {exc}"
        if too_large(exc):
            why += " Lower n (samples_per_question) or max_tokens so that one request fits the tokens-per-minute limit"
        if daily_job_limit(exc):
            why += " (the organisation's daily number of fine-tuning jobs for this model: rerun later; what was " \
                   "uploaded is kept and reused)"
        if job_slots_full(exc) and what == "fine-tuning job create":
            why += f" (no fine-tuning slot freed within {self.retry.slot_wait:g} s, SUBL_JOB_SLOT_WAIT; rerun to " \
                   "wait again: what was uploaded is kept and reused)"
        if self._retryable(exc):
            tail = f" (gave up after {attempts} attempts in {seconds:.0f} s)"
        elif never_reached(exc):
            tail = " (no request to this backend has succeeded yet: check base_url and that the server is up)"
        else:
            tail = ""
        return UserError(redact(_one_line(f"backend '{self.name}': {what} failed: {why}{tail}")))

    # -- checks before spending

    def preflight(self, models: list[str], finetune_models: list[str], largest: dict[str, int],
                  top_logprobs: frozenset[str] = frozenset()) -> list[str]:
        """Check, before anything is paid for, that the key works, every model exists, the
        organisation may fine-tune each of `finetune_models`, each model of `top_logprobs` answers with
        top log-probs (a judge, classifier or MCQ reads them), and the largest single request
        (prompt + max_tokens of one completion; `n` is chunked to fit) to each model is within its
        tokens-per-minute limit. Returns notes; a failure is a one-line UserError.

        Costs: models.list and models.retrieve are free; the fine-tuning probe is a jobs.create
        naming a file that cannot exist (no job is made, nothing is billed); where no response
        so far carried x-ratelimit-limit-tokens, one chat completion with max_tokens=1 reads it
        (about ten input tokens and one output token), as does the log-prob probe of each model of
        `top_logprobs` (which also reads the limit)."""
        ids = [m.partition(":")[2] if m.startswith(f"{self.name}:") else m for m in models]
        ft_ids = [m.partition(":")[2] if m.startswith(f"{self.name}:") else m for m in finetune_models]
        self.call("key check (models.list)", self.client.models.list)
        notes = [f"backend '{self.name}': the key is accepted by {self.endpoint}"]
        for m in dict.fromkeys(ids + ft_ids):
            raw = self.call(f"model lookup {m}", self.client.models.with_raw_response.retrieve, m)
            self._learn_tpm(m, raw.headers)
        notes += [self._probe_finetuning(m) for m in dict.fromkeys(ft_ids)]
        for ref, m in dict.fromkeys(zip(models, ids)):
            if ref in top_logprobs:
                notes.append(self._check_top_logprobs(m))
            notes.append(self._check_tpm(m, largest.get(ref, 0)))  # each model's own largest request
        return notes

    def _probe_finetuning(self, model: str) -> str:
        """jobs.create on a training file id that cannot exist: a 400 about the file means this
        organisation may fine-tune `model`; a 403, or a 400 about the model, means it may not."""
        import openai

        try:
            job = self.client.fine_tuning.jobs.create(model=model, training_file="file-subl-preflight-probe-does-not-exist")
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            status, param, msg = exc.status_code, body.get("param"), api_message(exc)
            if status == 400 and param == "training_file":  # past the model check, refused on the file alone
                return f"backend '{self.name}': fine-tuning {model} is allowed (probe: jobs.create on a missing file: {_one_line(msg, 120)})"
            if status in (401, 403):
                raise UserError(redact(_one_line(
                    f"backend '{self.name}': this organisation may not create fine-tuning jobs (HTTP {status}: {msg}); "
                    "OpenAI closed self-serve fine-tuning to new organisations on 2026-05-07: train students locally "
                    "or on an open-model trainer (docs/hosted.md)"))) from None
            if status == 400 and param == "model":
                raise UserError(redact(_one_line(f"backend '{self.name}': {model} cannot be fine-tuned here: {msg}"))) from None
            if status == 404:
                raise UserError(f"backend '{self.name}': {self.endpoint} has no fine-tuning endpoint") from None
            return f"backend '{self.name}': fine-tuning {model}: the probe could not tell (HTTP {status}: {_one_line(msg, 120)})"
        except openai.OpenAIError as exc:
            raise self._explain("fine-tuning probe", exc, 1, 0) from None
        try:  # a server that took the probe made a job: cancel it, or say which one to cancel by hand
            self.call("fine-tuning probe cancel", self.client.fine_tuning.jobs.cancel, job.id)
        except UserError as e:
            raise UserError(f"{e}; the preflight's probe job {job.id} may still be running: cancel it") from None
        return f"backend '{self.name}': fine-tuning {model} is allowed (the probe's job {job.id} was cancelled at once)"

    def _check_top_logprobs(self, model: str) -> str:
        """One token asked with its top log-prob: an endpoint that gives none (many OpenAI-compatible servers) was
        found only when the judge ran, after the rows it judges were paid for."""
        resp = self.call(f"log-prob probe {model}", self._chat, {"model": model, "max_tokens": 1, "logprobs": True,
                         "top_logprobs": 1, "messages": [{"role": "user", "content": "Hi"}]})
        if _first_top(next(iter(getattr(resp, "choices", None) or []), None)) is None:
            raise UserError(f"backend '{self.name}': {model} answered a probe without top_logprobs, which a log-prob "
                            "judge, classifier or MCQ here reads; this endpoint does not return log-probs (a judge: "
                            "`mode: sample`; a classifier: `read: reply`); nothing else was sent")
        return f"backend '{self.name}': {model}: answers with top log-probs"

    def _check_tpm(self, model: str, largest_request_tokens: int) -> str:
        if rate_model(model) not in self.tpm and largest_request_tokens > 0:
            self.call(f"rate-limit probe {model}", self._chat,
                      {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        tpm = self.tpm.get(rate_model(model))
        if not tpm:
            return f"backend '{self.name}': {model}: the server states no tokens-per-minute limit"
        if largest_request_tokens > tpm:
            raise UserError(f"backend '{self.name}': {model} allows {tpm:,} tokens per minute, but the largest "
                            f"request needs about {largest_request_tokens:,}: lower max_tokens or shorten the prompts")
        return f"backend '{self.name}': {model}: {tpm:,} tokens per minute, the largest request about {largest_request_tokens:,}"

    def model_id(self, ref: ModelRef | str) -> str:
        base = ref.base if isinstance(ref, ModelRef) else ref
        prefix, _, model = base.partition(":")
        if prefix != self.name or not model:
            raise UserError(f"model {base!r} is not on backend '{self.name}'")
        if isinstance(ref, ModelRef) and ref.adapter:
            raise UserError(f"model {base}: a hosted model takes no local adapter")
        return model

    # -- state outside the SDK

    def _stage_dir(self) -> Path | None:
        return current_stage_dir() or self.state_dir

    def _cache(self) -> RequestCache:
        folder = self._stage_dir()
        path = folder / REQUESTS_FILE if folder else None
        with self._lock:
            if path not in self._caches:
                self._caches[path] = RequestCache(path)
            return self._caches[path]

    # -- sampling

    def logprobs(self, model: ModelRef, prompts, prefix, targets, space: bool = True):
        raise UserError(f"model {model.base}: a chat API gives no exact log-probability probe; "
                        "evaluate hosted models with `kind: preference_sample`")

    def generate(self, model: ModelRef, prompts: list[str], sampling: Sampling) -> list[str]:
        """One completion per prompt, seeded with sampling.seed where the API honours seeds."""
        return [texts[0] for texts in self.sample(model, prompts, sampling, 1)]

    def sample(self, model: ModelRef, prompts: list[str], sampling: Sampling, n: int = 1,
               progress: Progress | None = None) -> list[list[str]]:
        """n completions per prompt: one request per prompt with `n` set (chunks of at most
        MAX_N, fewer where n x max_tokens would pass a known tokens-per-minute limit, each chunk
        with its own seed), so the prompt's input tokens are paid once per chunk."""
        if sampling.constraint is not None:
            raise UserError(f"model {model.base}: constrained decoding needs the local backend "
                            "(set domain.constrained: false for hosted teachers)")
        requests, owner = self._requests(model, prompts, sampling, n)
        cache = self._send(requests)
        out: list[list[str]] = [[] for _ in prompts]
        for i, (k, body) in zip(owner, requests):
            texts = cache.get(k)["texts"]
            if len(texts) < body.get("n", 1):
                raise UserError(f"backend '{self.name}': asked for {body.get('n', 1)} completions, got {len(texts)}")
            out[i] += texts[: body.get("n", 1)]
        if progress:
            progress(n, n)
        return out

    def top_logprobs(self, model: ModelRef, prompts: list[str], k: int, sampling: Sampling) -> list[dict[str, float]]:
        """The first reply token's k most likely tokens -> log-prob, per prompt: one request each with
        `logprobs: true, top_logprobs: k, max_tokens: 1`. A server that returns none stops the run."""
        one = Sampling(temperature=sampling.temperature, max_tokens=1, seed=sampling.seed)
        requests, _ = self._requests(model, prompts, one, 1, {"logprobs": True, "top_logprobs": k})
        cache = self._send(requests)
        out = []
        for key, body in requests:
            top = (cache.get(key).get("top") or [None])[0]
            if top is None:
                raise UserError(f"backend '{self.name}': {body['model']} answered without top_logprobs, which a "
                                "log-prob judge reads; this endpoint does not return log-probs (a judge: `mode: sample`; a classifier: "
                                "`read: reply`)")
            out.append(top)
        return out

    def _requests(self, model: ModelRef, prompts: list[str], sampling: Sampling, n: int,
                  extra: dict | None = None) -> tuple[list[tuple[str, dict]], list[int]]:
        """(key, body) of each chat request, and the prompt each one answers."""
        model_id = self.model_id(model)
        requests, owner = [], []
        for i, prompt in enumerate(prompts):
            messages = ([{"role": "system", "content": model.system}] if model.system else []) + \
                       [{"role": "user", "content": prompt}]
            # keyed by chunks of MAX_N whatever the rate limit (a limit learned later re-keyed every request, and
            # what was answered was paid for again); a chunk is split where it is sent (_answer)
            for c, start in enumerate(range(0, n, MAX_N)):
                body = {"model": model_id, "messages": messages, "temperature": sampling.temperature,
                        "max_tokens": sampling.max_tokens, "seed": request_seed(sampling.seed, i, c)}
                if n > 1:
                    body["n"] = min(MAX_N, n - start)
                body.update(extra or {})
                requests.append((_digest({"endpoint": self.endpoint, "body": body, "index": i}), body))
                owner.append(i)
        return requests, owner

    def _send(self, requests: list[tuple[str, dict]]) -> RequestCache:
        """Answer every request not answered yet (Batch API or chat); the cache holding them all."""
        cache = self._cache()
        todo = self._unanswered(requests, cache)
        if todo and self.cfg.batch_api and len(requests) >= self.batch_min_requests:
            # the whole set decides and is sent: its batches are keyed by it, and a rerun with few requests
            # left (a kill while reading the results) goes back to the batch that answered the others
            self._via_batch(requests, cache)
            todo = self._unanswered(requests, cache)
        if todo:
            self._via_chat(todo, cache)
        return cache

    def _fits(self, body: dict) -> int:
        """Completions one call of this request may ask for: MAX_N, or as many as fit the model's known
        tokens-per-minute limit (a call over it is refused as too large, whatever the wait)."""
        return completions_per_call(self.cfg, body["model"], input_tokens(body), body.get("max_tokens"))

    @staticmethod
    def _unanswered(requests: list[tuple[str, dict]], cache: RequestCache) -> list[tuple[str, dict]]:
        """Requests with no answer yet, or with fewer completions than asked (a server that ignores n)."""
        return [(k, b) for k, b in requests
                if cache.get(k) is None or len(cache.get(k)["texts"]) < b.get("n", 1)]

    @staticmethod
    def _record(key: str, resp: Any, via: str) -> dict:
        if isinstance(resp, (str, bytes)) or not hasattr(resp, "choices"):
            raise UserError("the endpoint's answer is not a chat completion; is base_url an OpenAI-compatible /v1 URL?")
        choices = sorted(resp.choices or [], key=lambda c: c.index or 0)
        if not choices:
            raise UserError("the endpoint answered a chat completion with no choices")
        usage = getattr(resp, "usage", None)
        rec = {"key": key, "via": via, "model": getattr(resp, "model", None),
               "texts": [(c.message.content or "") if c.message else "" for c in choices],
               "finish": [c.finish_reason for c in choices],
               "usage": {"input": getattr(usage, "prompt_tokens", None), "output": getattr(usage, "completion_tokens", None)}}
        top = [_first_top(c) for c in choices]
        if any(t is not None for t in top):
            rec["top"] = top
        return rec

    def _chat(self, body: dict):
        """One chat completion; the tokens-per-minute limit its answer states (or a too-large refusal names) is
        remembered for splitting requests."""
        import openai

        try:
            raw = self.client.chat.completions.with_raw_response.create(**body)
        except openai.APIStatusError as exc:
            if too_large(exc) and not self._learn_tpm(body["model"], getattr(exc.response, "headers", None)):
                limit = re.search(r"Limit (\d[\d,]*)", api_message(exc))
                if limit:
                    self.tpm[rate_model(body["model"])] = int(limit.group(1).replace(",", ""))
            raise
        self._learn_tpm(body["model"], raw.headers)
        return raw.parse()

    def _learn_tpm(self, model_id: str, headers) -> int | None:
        try:
            tpm = int((headers or {}).get("x-ratelimit-limit-tokens") or 0)
        except (TypeError, ValueError):
            tpm = 0
        if tpm > 0:
            self.tpm[rate_model(model_id)] = tpm
        return tpm or None

    def _answer(self, key: str, body: dict, cache: RequestCache, abort: threading.Event) -> None:
        """Send a request until it has its n completions, in calls of as many as fit the model's tokens-per-minute
        limit (learned from answers, or from a refusal as too large, which is then asked again smaller); a
        server that returns fewer than asked is asked for the rest with other seeds, and that is noted."""
        want, rec, cap = body.get("n", 1), cache.get(key), MAX_N
        while (rec is None or len(rec["texts"]) < want) and not abort.is_set():
            ask = min(want - (len(rec["texts"]) if rec else 0), self._fits(body), cap)
            call = {**body, **({"n": ask} if "n" in body else {})}
            if rec is not None:  # a later call: other seeds, so its completions are new draws; numbered by the
                # completions held (kept on disk), so a resumed request does not draw a seed it has drawn
                call["seed"] = (body["seed"] + 100_003 * len(rec["texts"])) % 2**31
            limit = self.tpm.get(rate_model(body["model"]))
            try:
                resp = self.call("chat completion", self._chat, call, abort=abort)
            except UserError as e:
                if ask > 1 and self.tpm.get(rate_model(body["model"])) != limit and self._fits(body) < ask:
                    continue  # refused as too large, and the limit it named allows a smaller call
                if ask > 1 and "Request too large" in str(e):  # the known limit, but the server counts more
                    cap = ask // 2  # tokens than the estimate: ask for fewer
                    continue
                raise
            part = self._record(key, resp, "chat")
            self._note_finish(body["model"], part["finish"])
            if len(part["texts"]) < ask:
                self._note("ignores_n", body["model"])
            rec = part if rec is None else {**rec, "texts": rec["texts"] + part["texts"],
                                            "finish": rec["finish"] + part["finish"]}
            cache.put(rec)

    def _via_chat(self, todo: list[tuple[str, dict]], cache: RequestCache) -> None:
        self.client  # read the key in this thread, before the workers start
        abort = threading.Event()

        def one(key: str, body: dict) -> None:
            if abort.is_set():
                return
            try:
                self._answer(key, body, cache, abort)
            except BaseException:
                abort.set()  # before this worker takes another request
                raise

        pool = ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(todo))))
        # each worker sees the stage's context (its folder, its key) for the notes it writes
        futures = [pool.submit(contextvars.copy_context().run, one, k, b) for k, b in todo]
        try:
            for f in as_completed(futures):
                f.result()
        except BaseException:
            abort.set()
            for f in futures:
                f.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- notes on what a server does not honour

    def _note(self, fact: str, model_id: str, count: int = 1) -> None:
        """Count a fact about the server by model in the stage's hosted_notes.json."""
        folder = self._stage_dir()
        if not folder or not count:
            return
        path = folder / NOTES_FILE
        with self._lock:
            notes = _load_json(path)
            per_model = notes.setdefault(fact, {})
            per_model[model_id] = per_model.get(model_id, 0) + count
            _save_json(path, notes)

    def _note_finish(self, model_id: str, finish: list) -> None:
        self._note("hit_max_tokens", model_id, sum(1 for f in finish if f == "length"))

    # -- the Batch API

    def _via_batch(self, todo: list[tuple[str, dict]], cache: RequestCache) -> None:
        """Answer a call's requests (all of them, answered or not) through the Batch API, in parts
        within its request, size and enqueued-token limits, one after another; lines that fail are logged and sent
        again in the next round's batch. A part refused for the enqueued-token limit is sent again in smaller parts."""
        parts = self._batch_parts(todo)
        while parts:
            part = parts.pop(0)
            try:
                # a run of this stage into another outputs folder sending this part now: in turn, then it adopts
                with one_at_a_time(_digest([stage_tag(), sorted(k for k, _ in part)], 16)):
                    self._log_failed(self._batch_part(part, cache))
            except EnqueuedTokenLimit as e:
                if e.limit and sum(map(input_tokens, (b for _, b in part))) <= 0.9 * e.limit \
                        and self._other_batch_done():
                    parts.insert(0, part)  # it fits: the queue held other batches, so it is sent whole again
                else:
                    parts[:0] = self._smaller_parts(part, e.limit)

    def _other_batch_done(self) -> bool:
        """Wait for a running batch of the organisation (another stage's, another run's: its tokens count against
        the enqueued limit) to finish; False where none runs."""
        running = self.call("batch list", lambda: first(self.client.batches.list(limit=100), lambda b: b.status in (
            "validating", "in_progress", "finalizing")))
        if running is None:
            return False
        self._note("batch_waited_for_the_queue", running.id)
        self._poll_batch(running.id)
        return True

    def _smaller_parts(self, part: list[tuple[str, dict]], limit: int | None) -> list[list[tuple[str, dict]]]:
        """A refused part split to 90% of the model's limit (learned for later calls), and at least in half (the
        server counts more tokens than the estimate)."""
        model = rate_model(part[0][1]["model"])
        if len(part) == 1:
            raise UserError(f"backend '{self.name}': a batch of one request is over the Batch API's enqueued-token "
                            f"limit for {model}{f' ({limit:,})' if limit else ''}; wait for the organisation's other "
                            f"batches to finish, or set backends.{self.name}.batch_api: false (full price)")
        if limit:
            self.batch_tokens[model] = min(limit, self.batch_tokens.get(model, limit))
        self._note("batch_enqueued_token_limit", model)
        cap = min(0.9 * (limit or math.inf), sum(input_tokens(b) for _, b in part) / 2)
        return self._split(part, math.inf, math.inf, cap)

    def _log_failed(self, failed: list[dict]) -> None:
        folder = self._stage_dir()
        if failed and folder:
            with open(folder / BATCH_ERRORS_FILE, "a") as f:
                for rec in failed:
                    f.write(redact(json.dumps(rec)) + "\n")

    def _batch_parts(self, todo: list[tuple[str, dict]]) -> list[list[tuple[str, dict]]]:
        """Parts within one input file's request and byte limits and 90% of the model's enqueued-token limit where
        one was learned."""
        most, max_bytes = self.batch_limits
        known = self.batch_tokens.get(rate_model(todo[0][1]["model"])) if todo else None
        return self._split(todo, most, max_bytes, 0.9 * known if known else math.inf)

    @staticmethod
    def _split(todo: list[tuple[str, dict]], most: float, max_bytes: float, max_tokens: float
               ) -> list[list[tuple[str, dict]]]:
        parts, size, tokens = [[]], 0, 0
        for k, b in todo:
            line, need = len(_batch_line(k, b)), input_tokens(b)
            if parts[-1] and (len(parts[-1]) >= most or size + line > max_bytes or tokens + need > max_tokens):
                parts.append([])
                size = tokens = 0
            parts[-1].append((k, b))
            size, tokens = size + line, tokens + need
        return parts

    def _batch_part(self, todo: list[tuple[str, dict]], cache: RequestCache, rounds: int = 3) -> list[dict]:
        """One part's batches. Its state is keyed by the stage and the part's full request set, and
        round r's batch is tagged with both; an expired round's answered lines are kept and the
        rest go to round r + 1, so a kill at any point (or an empty outputs folder) resumes the
        same batches."""
        folder = self._stage_dir()
        state_path = folder / BATCHES_FILE if folder else None
        states = _load_json(state_path)
        whole = _digest(sorted(k for k, _ in todo), 16)
        st = states.setdefault(whole, {"requests": len(todo)})
        st.setdefault("round", 0)
        stage = stage_tag()
        failed: list[dict] = []

        def save() -> None:
            if state_path:
                _save_json(state_path, states)

        if not st.get("batch_id"):  # nothing in flight here: what earlier batches answered is not sent again,
            before, st["unrun"] = self._answered_before(stage, whole, cache)  # and their rounds count
            if before > st["round"]:  # a batch of this round ran (a kill after its create): its file is spent
                st["round"] = before
                st.pop("input_file_id", None)
        while st["round"] - st.get("unrun", 0) < rounds:
            pending = [(k, b) for k, b in todo if cache.get(k) is None]
            if not st.get("input_file_id") and not pending:
                break
            meta = tags(stage, whole, subl_round=str(st["round"]))
            if not st.get("input_file_id"):
                data = "".join(_batch_line(k, b) for k, b in pending).encode()
                sent = _digest(sorted(k for k, _ in pending), 8)  # the file is named by the requests it holds
                name = tagged_filename("batch", stage, f"{whole}-r{st['round']}-{sent}")
                st["input_file_id"] = self._upload(name, data, "batch", "batch upload").id
                kill_point("batch-file-created")
                save()
            if not st.get("batch_id"):
                batch = self.call("batch create", adopt_or_create(
                    lambda: self._find_batch(meta, st["input_file_id"]),
                    lambda: self.client.batches.create(input_file_id=st["input_file_id"], metadata=meta,
                                                       endpoint="/v1/chat/completions", completion_window="24h"),
                    self.grace))
                kill_point("batch-created")
                st["batch_id"] = batch.id
                save()
            batch = self._poll_batch(st["batch_id"])
            st["status"] = batch.status
            save()
            if batch.status == "failed":
                errors = (batch.errors.data or []) if batch.errors else []
                errs = "; ".join(f"{e.code}: {e.message}" for e in errors)
                states.pop(whole)
                save()
                full = [e for e in errors if e.code == "token_limit_exceeded"]
                if full:
                    self._log_failed(failed)  # earlier rounds' failed lines, before the part is sent anew
                    raise EnqueuedTokenLimit(enqueued_limit(full[0].message))
                raise UserError(redact(_one_line(f"backend '{self.name}': batch {batch.id} failed: {errs or 'no reason given'}")))
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:  # one gone (an adopted old batch's, deleted): its lines go to the next round
                    failed += self._ingest_batch_file(file_id, cache, missing_ok=True)
                    self._read_files.add(file_id)
            if batch.status == "cancelled":
                left = sum(1 for k, _ in todo if cache.get(k) is None)
                states.pop(whole)
                save()
                self._log_failed(failed)
                raise UserError(f"backend '{self.name}': batch {batch.id} was cancelled with {left} request(s) "
                                "unanswered; rerun to send them in a new batch")
            if batch.status == "completed" and all(cache.get(k) is not None for k, _ in todo):
                break
            # expired, or completed with failed lines (logged): the rest in a new batch, never sent on directly
            for k in ("input_file_id", "batch_id", "status"):
                st.pop(k, None)
            st["round"] += 1
            save()
        left = sum(1 for k, _ in todo if cache.get(k) is None)
        if left and st["round"] - st.get("unrun", 0) >= rounds:  # never sent at full price unasked: the budget
            # priced the batch
            raise UserError(f"backend '{self.name}': {left} request(s) still unanswered after {rounds} batches "
                            f"(expired, or their lines failed: {BATCH_ERRORS_FILE} in the stage folder says why); "
                            f"rerun with backends.{self.name}.batch_api: false to send them directly, at full price")
        return failed

    def _upload(self, filename: str, data: bytes, purpose: str, what: str):
        """Upload a file once: a file of this name and size already there is adopted."""
        return self.call(what, adopt_or_create(
            lambda: first(self.client.files.list(purpose=purpose, limit=100),
                          lambda f: f.filename == filename and f.bytes == len(data) and f.status != "error"),
            lambda: self.client.files.create(file=(filename, data, "application/jsonl"), purpose=purpose),
            self.grace))

    def _find_batch(self, meta: dict, input_file_id: str):
        """A live or finished (not failed or cancelled) batch with these tags of this input file, over every page
        (a batch of the same round sent with other requests, after a cancel, is not this one)."""
        return first(self.client.batches.list(limit=100),
                     lambda b: metadata_matches(b, meta) and b.input_file_id == input_file_id
                     and b.status not in ("failed", "cancelled", "cancelling"))

    def _answered_before(self, stage: str, whole: str, cache: RequestCache) -> tuple[int, int]:
        """Read into the cache the lines every earlier batch of this stage answered (any request set: a rerun may
        split a call into other parts; any round; a cancelled or expired one too, which was billed for them), so
        that an empty or reset outputs folder sends only what is still unanswered; return the round after the
        last one of this request set (0 if none), and how many of its rounds did not run (cancelled or refused
        batches: they do not count towards the limit of rounds).

        A batch still running (or being cancelled, which answers and bills lines until it is) is waited for and
        read: its lines are paid for whether this run reads them or not (a rerun that lost the round, or split
        the call otherwise, sent them again in a new batch)."""
        earlier = self.call("batch list", lambda: [b for b in self.client.batches.list(limit=100)
                                                   if metadata_matches(b, {"subl_stage": stage})])
        earlier = [self._poll_batch(b.id) if b.status not in BATCH_DONE else b for b in earlier]
        for b in earlier:
            if b.output_file_id and b.output_file_id not in self._read_files:
                self._ingest_batch_file(b.output_file_id, cache, missing_ok=True)
                self._read_files.add(b.output_file_id)
        mine = [b for b in earlier if metadata_matches(b, tags(stage, whole))]
        rounds: dict[int, set[str]] = {}
        for b in mine:
            rounds.setdefault(int((b.metadata or {}).get("subl_round", 0)), set()).add(b.status)
        unrun = sum(1 for statuses in rounds.values() if statuses <= {"cancelled", "failed"})
        return max(rounds, default=-1) + 1, unrun

    def _poll_batch(self, batch_id: str):
        polled = False
        while True:
            batch = self.call("batch status", self.client.batches.retrieve, batch_id)
            if not polled:
                kill_point("batch-polled")
                polled = True
            if batch.status in BATCH_DONE:
                return batch
            time.sleep(self.poll_seconds)

    def _ingest_batch_file(self, file_id: str, cache: RequestCache, missing_ok: bool = False) -> list[dict]:
        """Store every answered line of a batch output or error file (lines come in any order);
        return the failed lines. missing_ok: a file that is gone (deleted, or expired after 30 days) is noted in
        hosted_notes.json, and its lines are asked again, instead of stopping every rerun."""
        import openai
        from openai.types.chat import ChatCompletion

        def download():
            try:
                return self.client.files.content(file_id)
            except openai.NotFoundError:
                if missing_ok:
                    return None
                raise

        raw = self.call("batch download", download)
        if raw is None:
            self._note("earlier_batch_file_gone", file_id)
            return []
        text = raw.text if hasattr(raw, "text") else raw.read().decode()
        lines = [line for line in text.splitlines() if line.strip()]
        failed = []
        for n, line in enumerate(lines):
            if n == len(lines) // 2:
                kill_point("batch-read-half")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{self.name}: batch file {file_id} line {n + 1}: not JSON ({e.msg}); the lines "
                                "before it are stored and a rerun resumes") from None
            resp = rec.get("response") or {}
            if cache.get(rec.get("custom_id")) is not None:
                continue  # read before (an earlier batch's answers are read back on every start)
            if resp.get("status_code") == 200 and not rec.get("error") and isinstance(resp.get("body"), dict):
                answer = self._record(rec["custom_id"], ChatCompletion.construct(**resp["body"]), "batch")
                self._note_finish(answer["model"] or "?", answer["finish"])
                cache.put(answer)
            else:
                body = resp.get("body") or {}
                err = rec.get("error") or body.get("error") or {}
                failed.append({"custom_id": rec.get("custom_id"), "status": resp.get("status_code"),
                               "code": err.get("code"), "message": err.get("message")})
        return failed

    # -- fine-tuning

    def finetune(self, base: str, rows: list[dict], training: Training, out_dir: Path,
                 teacher: ModelRef | None = None, progress: Progress | None = None) -> ModelRef:
        """Upload the rows in chat format, start a supervised job, poll it, return the new model.

        The upload and the job are tagged with the stage and a digest of (model, seed,
        hyper-parameters, training data); a job is looked up by that digest before anything is created: a
        rerun, on this folder or on an empty one, or another stage with the same training (a filter edit
        that kept the same rows) adopts it instead of paying again."""
        if teacher is not None or training.objective != "sft":
            raise UserError(f"model {base}: hosted fine-tuning supports objective: sft only")
        model = self.model_id(base)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        examples = to_chat(rows)
        stats = validate_examples(examples)
        data = "".join(json.dumps(e) + "\n" for e in examples).encode()
        training_sha = hashlib.sha256(data).hexdigest()[:16]
        hp = hyperparameters(training)
        stage = stage_tag()
        digest = _digest({"model": model, "seed": training.seed, "hyperparameters": hp, "training": training_sha}, 16)
        path = out_dir / JOB_FILE
        state = _load_json(path)
        if state and (state.get("training_sha256") != training_sha or state.get("digest", digest) != digest):
            raise UserError(f"{path}: records a job for other training data or settings; delete it to start over")
        if not state:
            state = {"backend": self.name, "model": model, "training_sha256": training_sha, **stats,
                     "hyperparameters": hp, "seed": training.seed}
        state.update(stage=stage, digest=digest, suffix=job_suffix(stage, digest))
        (out_dir / TRAIN_FILE).write_bytes(data)

        def save() -> None:
            _save_json(path, state)

        if not state.get("job_id"):
            with one_at_a_time(digest):  # two students of this run with the same training pay once
                self._adopt_or_start_job(state, save, data, model, hp, training.seed, progress)
        job = self._poll_job(state, save, out_dir, progress)
        state.update(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
        save()
        return ModelRef(base=f"{self.name}:{job.fine_tuned_model}")

    def _adopt_or_start_job(self, state: dict, save: Callable[[], None], data: bytes, model: str, hp: dict,
                            seed: int, progress: Progress | None = None) -> None:
        """Adopt a job with this training's digest (made under another stage key: a filter edit that kept
        every row, or another student with the same rows), else upload the rows and start one."""
        stage, digest = state["stage"], state["digest"]
        found = self.call("fine-tuning job lookup", self._find_job, {"subl_digest": digest}, model, seed, hp)
        if found is not None:
            state.update(job_id=found.id, status=found.status, adopted_from=(found.metadata or {}).get("subl_stage"))
            save()
            return
        if not state.get("file_id"):
            name = tagged_filename("train", stage, state["training_sha256"])
            state["file_id"] = self._upload(name, data, "fine-tune", "training file upload").id
            kill_point("train-file-created")
            save()
        job = self._start_job(model, state["file_id"], hp, seed, tags(stage, digest), state["suffix"],
                              {"subl_digest": digest}, progress)
        kill_point("job-created")
        state.update(job_id=job.id, status=job.status)
        save()

    def _start_job(self, model: str, file_id: str, hp: dict, seed: int, meta: dict, suffix: str, same: dict,
                   progress: Progress | None = None):
        """Adopt a live job tagged `same` (the training's digest) with these exact settings, else create it (once),
        tagged `meta`; at the organisation's limit of active jobs, wait for a slot (looking the job up again before
        each try: another run may have made it meanwhile)."""

        def create():
            return self.client.fine_tuning.jobs.create(
                model=model, training_file=file_id, seed=seed, suffix=suffix, metadata=meta,
                method={"type": "supervised", "supervised": {"hyperparameters": hp}})

        attempt = adopt_or_create(lambda: self._find_job(same, model, seed, hp), create, self.grace)
        started = time.monotonic()
        while True:  # each try with its own retries of transient faults
            try:
                return self.call("fine-tuning job create", self._create_or_slots_full, attempt)
            except SlotsFull as full:
                waited = time.monotonic() - started
                if waited + self.poll_seconds > self.retry.slot_wait:
                    raise self._explain("fine-tuning job create", full.cause, 1, waited) from None
                _notify(progress, 0, 0, f"waiting for a fine-tuning slot ({waited:.0f} s so far): "
                                        f"{api_message(full.cause)}")
                time.sleep(self.poll_seconds)

    @staticmethod
    def _create_or_slots_full(attempt: Callable[[], Any]):
        """attempt(); a refusal for the organisation's limit of active fine-tuning jobs raised as SlotsFull, which
        is waited out by the caller (outside the retry policy, whose total would count the wait)."""
        try:
            return attempt()
        except Exception as e:
            if job_slots_full(e):
                raise SlotsFull(e) from None
            raise

    def _find_job(self, meta: dict, model: str, seed: int, hp: dict) -> Any:
        """A job that is not failed or cancelled, tagged `meta` (filtered by the server, checked
        here too), on this model and seed and with these hyper-parameters, over every page."""
        def same(j) -> bool:
            return (metadata_matches(j, meta) and same_base(j.model, model) and j.status not in ("failed", "cancelled")
                    and (j.seed is None or j.seed == seed) and _same_hyperparameters(j, hp))

        return first(self.client.fine_tuning.jobs.list(limit=100, metadata=meta), same)

    def _events_since(self, job_id: str, seen: set) -> list:
        """The job's events not seen yet, oldest first: pages (newest first) are read until a seen event, so more
        than a page of new events between two polls (or during a kill) are all kept."""
        pages = self.client.fine_tuning.jobs.list_events(job_id, limit=100)  # the SDK follows has_more
        return list(reversed(list(itertools.takewhile(lambda e: e.id not in seen, pages))))

    def _poll_job(self, state: dict, save: Callable[[], None], out_dir: Path, progress: Progress | None):
        job_id = state["job_id"]
        events_path = out_dir / EVENTS_FILE
        seen = set()
        if events_path.exists():
            seen = {rec["id"] for rec in _records(events_path.read_bytes()) if isinstance(rec.get("id"), str)}
        step, total, polls = 0, 0, 0
        while True:
            job = self.call("fine-tuning job status", self.client.fine_tuning.jobs.retrieve, job_id)
            polls += 1
            if polls == 1:
                kill_point("job-polled")
            new = self.call("fine-tuning job events", self._events_since, job_id, seen)
            with open(events_path, "a") as f:
                for e in new:
                    seen.add(e.id)
                    f.write(redact(json.dumps({"id": e.id, "created_at": e.created_at, "level": e.level,
                                               "message": e.message, "data": e.data})) + "\n")
                    if isinstance(e.data, dict) and "step" in e.data:
                        step, total = int(e.data["step"]), int(e.data.get("total_steps") or total)
            if job.status != state.get("status"):
                state["status"] = job.status
                save()
            note = job.status + (f": {new[-1].message}" if new else "")
            if job.status == "paused":
                note += " (paused on the provider's side; resume it there, polling goes on)"
            _notify(progress, step, total, note)
            if job.status == "succeeded":
                if not job.fine_tuned_model:
                    raise UserError(f"backend '{self.name}': job {job_id} succeeded without a fine_tuned_model")
                return job
            if job.status in ("failed", "cancelled"):
                err = job.error
                why = f"{err.code}: {err.message}" if err and (err.code or err.message) else "no reason given"
                # keep the upload; a rerun starts a new job on it
                state.setdefault("previous_jobs", []).append({"job_id": job_id, "status": job.status, "error": why})
                for k in ("job_id", "status"):
                    state.pop(k, None)
                save()
                raise UserError(redact(_one_line(
                    f"backend '{self.name}': fine-tuning job {job_id} {job.status}: {why} "
                    + ("(rerun to start a new job on the same uploaded file)" if state.get("file_id")
                       else "(rerun to upload the training file and start a new job)"))))
            time.sleep(self.poll_seconds)
