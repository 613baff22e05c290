"""Hosted backend: any OpenAI-compatible endpoint (OpenAI, vLLM, the llama.cpp server, ...).

Models are named `<backend>:<model id>` in a spec. The official `openai` SDK makes the calls
with its own retries off; tenacity retries 429, 5xx, timeouts and dropped connections with
exponential backoff and jitter, honours Retry-After, and is bounded in attempts and time.
Other 4xx responses fail at once with the API's own message.

Nothing is paid for twice:
- every answered chat request is appended to `hosted_requests.jsonl` in the running stage's
  folder as it arrives, so a resumed stage never re-sends it;
- a Batch API job and a fine-tuning job are recorded (`hosted_batches.json`,
  `hosted_job.json`) before they are polled, and a rerun reattaches to them.

The API key is read from the environment variable the spec names, only; `redact` scrubs it
(and anything key-shaped) from every message this module raises or writes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
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
from runner.prices import estimate_tokens
from runner.core import backend_name, current_stage_dir
from runner.errors import UserError

REQUESTS_FILE = "hosted_requests.jsonl"
BATCHES_FILE = "hosted_batches.json"
JOB_FILE = "hosted_job.json"
EVENTS_FILE = "hosted_events.jsonl"
TRAIN_FILE = "train.jsonl"
MIN_EXAMPLES = 10
MAX_EXAMPLE_TOKENS = 65_536  # OpenAI's per-example limit for the GPT-4.1 family
MAX_N = 128  # the most completions the chat API returns for one request
SUFFIX_MAX = 18

# ---- secrets ---------------------------------------------------------------------------

_SECRETS: set[str] = set()
_KEYLIKE = re.compile(r"(?i)\b(sk-[A-Za-z0-9_\-*.]{3,}|bearer\s+[A-Za-z0-9_\-.*~+/=]{4,})")
_WINDOW = 8


def register_secret(value: str) -> None:
    """Remember a secret so that `redact` removes it; short values (<8 chars) are too common to scrub."""
    if value and len(value) >= _WINDOW:
        _SECRETS.add(value)


def redact(text: object) -> str:
    """Text with every known secret, any 8-character piece of one, and anything key-shaped removed."""
    out = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        out = _mask(out, secret)
    return _KEYLIKE.sub("[redacted]", out)


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
        env = spec.backends[name].api_key_env
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
    SUBL_RETRY_JITTER, SUBL_RETRY_TOTAL, SUBL_HTTP_TIMEOUT (seconds per request).
    """

    attempts: int = 8
    initial: float = 1.0
    max_wait: float = 60.0
    jitter: float = 1.0
    total: float = 900.0
    timeout: float = 120.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        names = {"attempts": "SUBL_RETRY_ATTEMPTS", "initial": "SUBL_RETRY_INITIAL", "max_wait": "SUBL_RETRY_MAX_WAIT",
                 "jitter": "SUBL_RETRY_JITTER", "total": "SUBL_RETRY_TOTAL", "timeout": "SUBL_HTTP_TIMEOUT"}
        kw: dict[str, Any] = {}
        for field, env in names.items():
            if os.environ.get(env):
                try:
                    kw[field] = int(os.environ[env]) if field == "attempts" else float(os.environ[env])
                except ValueError:
                    raise UserError(f"{env}: expected a number, got {os.environ[env]!r}") from None
        return cls(**kw)

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


def transient(exc: BaseException) -> bool:
    """Worth retrying: 408/409/429 (not an exhausted quota), 5xx, timeouts, refused or dropped connections."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return _error_code(exc) != "insufficient_quota"
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


class RequestCache:
    """Answered requests by key, one JSON line each, appended (and flushed) as each arrives."""

    def __init__(self, path: Path | None):
        self.path, self.data, self.lock = path, {}, threading.Lock()
        if path and path.exists():
            raw = path.read_bytes()
            whole = raw[: raw.rfind(b"\n") + 1]
            if len(whole) != len(raw):  # a torn last line from a kill: drop it
                path.write_bytes(whole)
            for line in whole.decode().splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, record: dict) -> None:
        with self.lock:
            self.data[record["key"]] = record
            if self.path:
                with open(self.path, "a") as f:
                    f.write(redact(json.dumps(record)) + "\n")
                    f.flush()


def _digest(obj: Any, n: int = 32) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(redact(json.dumps(data, indent=2)))
    os.replace(tmp, path)


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


# ---- the backend -----------------------------------------------------------------------


class OpenAIBackend:
    """generate / finetune on an OpenAI-compatible endpoint; `logprobs` is not offered."""

    def __init__(self, name: str, cfg, retry: RetryPolicy | None = None, poll_seconds: float | None = None,
                 state_dir: Path | None = None, batch_min_requests: int = 100):
        self.name, self.cfg = name, cfg
        self.retry = retry or RetryPolicy.from_env()
        if poll_seconds is None:
            try:
                poll_seconds = float(os.environ.get("SUBL_POLL_SECONDS") or 30)
            except ValueError:
                raise UserError(f"SUBL_POLL_SECONDS: expected a number, got {os.environ['SUBL_POLL_SECONDS']!r}") from None
        self.poll_seconds = poll_seconds
        self.state_dir = Path(state_dir) if state_dir else None  # where state goes outside a stage
        self.batch_min_requests = batch_min_requests
        self._client = None
        self._caches: dict[Path | None, RequestCache] = {}
        self._lock = threading.Lock()

    # -- client and calls

    @property
    def endpoint(self) -> str:
        return redact(self.cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")

    def _key(self) -> str:
        env = self.cfg.api_key_env
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

                self._client = openai.OpenAI(api_key=self._key(), base_url=self.cfg.base_url, max_retries=0,
                                             timeout=self.retry.timeout)
            return self._client

    def call(self, what: str, fn: Callable, *args, abort: threading.Event | None = None, **kw):
        """fn(*args, **kw) with tenacity's retries; a failure becomes a one-line, redacted UserError."""
        p = self.retry

        def wait(rs) -> float:
            ra = retry_after(rs.outcome.exception())
            backoff = p.backoff(rs.attempt_number)
            return max(backoff, ra) if ra is not None else backoff

        stop = stop_after_attempt(p.attempts) | stop_before_delay(p.total)
        if abort is not None:
            stop = stop | stop_when_event_set(abort)
        started = time.monotonic()
        retrying = Retrying(stop=stop, wait=wait, retry=retry_if_exception(transient), reraise=True, sleep=time.sleep)
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return fn(*args, **kw)
        except UserError:
            raise
        except Exception as e:
            raise self._explain(what, e, attempts, time.monotonic() - started) from None

    def _explain(self, what: str, exc: BaseException, attempts: int, seconds: float) -> UserError:
        import openai

        if isinstance(exc, openai.APITimeoutError):
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
        tail = f" (gave up after {attempts} attempts in {seconds:.0f} s)" if transient(exc) else ""
        return UserError(redact(_one_line(f"backend '{self.name}': {what} failed: {why}{tail}")))

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

    def logprobs(self, model: ModelRef, prompts, prefix, targets):
        raise UserError(f"model {model.base}: a chat API gives no exact log-probability probe; "
                        "evaluate hosted models with `kind: preference_sample`")

    def generate(self, model: ModelRef, prompts: list[str], sampling: Sampling) -> list[str]:
        """One completion per prompt, seeded with sampling.seed where the API honours seeds."""
        return [texts[0] for texts in self.sample(model, prompts, sampling, 1)]

    def sample(self, model: ModelRef, prompts: list[str], sampling: Sampling, n: int = 1,
               progress: Progress | None = None) -> list[list[str]]:
        """n completions per prompt: one request per prompt with `n` set (chunks of at most
        MAX_N, each with its own seed), so the prompt's input tokens are paid once per chunk."""
        if sampling.constraint is not None:
            raise UserError(f"model {model.base}: constrained decoding needs the local backend "
                            "(set domain.constrained: false for hosted teachers)")
        model_id = self.model_id(model)
        requests, owner = [], []
        for i, prompt in enumerate(prompts):
            messages = ([{"role": "system", "content": model.system}] if model.system else []) + \
                       [{"role": "user", "content": prompt}]
            for c, start in enumerate(range(0, n, MAX_N)):
                body = {"model": model_id, "messages": messages, "temperature": sampling.temperature,
                        "max_tokens": sampling.max_tokens, "seed": (sampling.seed + c) % 2**31}
                if n > 1:
                    body["n"] = min(MAX_N, n - start)
                requests.append((_digest({"backend": self.name, "body": body, "index": i}), body))
                owner.append(i)
        cache = self._cache()
        todo = [(k, b) for k, b in requests if cache.get(k) is None]
        if todo and self.cfg.batch_api and len(todo) >= self.batch_min_requests:
            self._via_batch(todo, cache)
            todo = [(k, b) for k, b in requests if cache.get(k) is None]
        if todo:
            self._via_chat(todo, cache)
        out: list[list[str]] = [[] for _ in prompts]
        for i, (k, body) in zip(owner, requests):
            texts = cache.get(k)["texts"]
            if len(texts) != body.get("n", 1):
                raise UserError(f"backend '{self.name}': asked for {body.get('n', 1)} completions, got {len(texts)}")
            out[i] += texts
        if progress:
            progress(n, n)
        return out

    @staticmethod
    def _record(key: str, resp: Any, via: str) -> dict:
        if isinstance(resp, (str, bytes)) or not hasattr(resp, "choices"):
            raise UserError("the endpoint's answer is not a chat completion; is base_url an OpenAI-compatible /v1 URL?")
        choices = sorted(resp.choices or [], key=lambda c: c.index or 0)
        if not choices:
            raise UserError("the endpoint answered a chat completion with no choices")
        usage = getattr(resp, "usage", None)
        return {"key": key, "via": via, "model": getattr(resp, "model", None),
                "texts": [(c.message.content or "") if c.message else "" for c in choices],
                "finish": [c.finish_reason for c in choices],
                "usage": {"input": getattr(usage, "prompt_tokens", None), "output": getattr(usage, "completion_tokens", None)}}

    def _via_chat(self, todo: list[tuple[str, dict]], cache: RequestCache) -> None:
        client = self.client  # read the key in this thread, before the workers start
        abort = threading.Event()

        def one(key: str, body: dict) -> None:
            if abort.is_set():
                return
            resp = self.call("chat completion", client.chat.completions.create, abort=abort, **body)
            cache.put(self._record(key, resp, "chat"))

        pool = ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(todo))))
        futures = [pool.submit(one, k, b) for k, b in todo]
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

    # -- the Batch API

    def _via_batch(self, todo: list[tuple[str, dict]], cache: RequestCache, rounds: int = 3) -> None:
        """Answer requests through the Batch API; lines that fail are left for the direct path."""
        folder = self._stage_dir()
        state_path = folder / BATCHES_FILE if folder else None
        states = json.loads(state_path.read_text()) if state_path and state_path.exists() else {}

        def save() -> None:
            if state_path:
                _save_json(state_path, states)

        failed_log = []
        for _ in range(rounds):
            pending = [(k, b) for k, b in todo if cache.get(k) is None]
            if not pending:
                return
            call = _digest(sorted(k for k, _ in pending), 16)
            st = states.setdefault(call, {"requests": len(pending)})
            if not st.get("input_file_id"):
                data = "".join(json.dumps({"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
                               for k, b in pending).encode()
                f = self.call("batch upload", self.client.files.create,
                              file=(f"subl-batch-{call}.jsonl", data, "application/jsonl"), purpose="batch")
                st["input_file_id"] = f.id
                save()
            if not st.get("batch_id"):
                found = self._find_batch(st["input_file_id"]) if st.get("create_started") else None
                st["create_started"] = True
                save()
                batch = found or self.call("batch create", self.client.batches.create,
                                           input_file_id=st["input_file_id"], endpoint="/v1/chat/completions",
                                           completion_window="24h")
                st["batch_id"] = batch.id
                save()
            batch = self._poll_batch(st["batch_id"])
            st["status"] = batch.status
            save()
            if batch.status == "failed":
                errs = "; ".join(f"{e.code}: {e.message}" for e in ((batch.errors.data or []) if batch.errors else []))
                states.pop(call)
                save()
                raise UserError(redact(_one_line(f"backend '{self.name}': batch {batch.id} failed: {errs or 'no reason given'}")))
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    failed_log += self._ingest_batch_file(file_id, cache)
            if batch.status in ("cancelled", "cancelling"):
                left = sum(1 for k, _ in pending if cache.get(k) is None)
                states.pop(call)
                save()
                raise UserError(f"backend '{self.name}': batch {batch.id} was cancelled with {left} request(s) "
                                "unanswered; rerun to send them in a new batch")
            if batch.status == "completed":
                break  # lines that failed inside a completed batch go to the direct path
            states.pop(call)  # expired: a new batch for what is left
            save()
        if failed_log and folder:
            with open(folder / "hosted_batch_errors.jsonl", "a") as f:
                for rec in failed_log:
                    f.write(redact(json.dumps(rec)) + "\n")

    def _find_batch(self, input_file_id: str):
        page = self.call("batch list", self.client.batches.list, limit=100)
        return next((b for b in page.data if b.input_file_id == input_file_id), None)

    def _poll_batch(self, batch_id: str):
        while True:
            batch = self.call("batch status", self.client.batches.retrieve, batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            time.sleep(self.poll_seconds)

    def _ingest_batch_file(self, file_id: str, cache: RequestCache) -> list[dict]:
        """Store every answered line of a batch output or error file; return the failed lines."""
        from openai.types.chat import ChatCompletion

        raw = self.call("batch download", self.client.files.content, file_id)
        text = raw.text if hasattr(raw, "text") else raw.read().decode()
        failed = []
        for line in text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            resp = rec.get("response") or {}
            if resp.get("status_code") == 200 and not rec.get("error") and isinstance(resp.get("body"), dict):
                cache.put(self._record(rec["custom_id"], ChatCompletion.construct(**resp["body"]), "batch"))
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

        The file id and job id go into out_dir/hosted_job.json before polling; a rerun on the
        same folder reattaches to the job and never uploads or starts a second one."""
        if teacher is not None or training.objective != "sft":
            raise UserError(f"model {base}: hosted fine-tuning supports objective: sft only")
        model = self.model_id(base)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        examples = to_chat(rows)
        stats = validate_examples(examples)
        data = "".join(json.dumps(e) + "\n" for e in examples).encode()
        digest = hashlib.sha256(data).hexdigest()[:16]
        hp = hyperparameters(training)
        suffix = f"subl-{digest[:10]}"[:SUFFIX_MAX]
        path = out_dir / JOB_FILE
        state = json.loads(path.read_text()) if path.exists() else {}
        if state and state.get("training_sha256") != digest:
            raise UserError(f"{path}: records a job for other training data; delete it to start over")
        if not state:
            state = {"backend": self.name, "model": model, "training_sha256": digest, **stats,
                     "hyperparameters": hp, "seed": training.seed, "suffix": suffix}
        (out_dir / TRAIN_FILE).write_bytes(data)

        def save() -> None:
            _save_json(path, state)

        if not state.get("file_id"):
            filename = f"subl-{digest}.jsonl"
            found = self._find_file(filename, len(data)) if state.get("upload_started") else None
            state["upload_started"] = True
            save()
            state["file_id"] = (found or self.call("training file upload", self.client.files.create,
                                                   file=(filename, data, "application/jsonl"), purpose="fine-tune")).id
            save()
        if not state.get("job_id"):
            found = self._find_job(state["file_id"]) if state.get("create_started") else None
            state["create_started"] = True
            save()
            job = found or self._create_job(model, state["file_id"], hp, training.seed, suffix)
            state.update(job_id=job.id, status=job.status)
            save()
        job = self._poll_job(state, save, out_dir, progress)
        state.update(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
        save()
        return ModelRef(base=f"{self.name}:{job.fine_tuned_model}")

    def _create_job(self, model: str, file_id: str, hp: dict, seed: int, suffix: str):
        tries = {"n": 0}

        def create():
            tries["n"] += 1
            if tries["n"] > 1:  # a retried POST may follow one that did create the job
                found = self._find_job(file_id)
                if found:
                    return found
            return self.client.fine_tuning.jobs.create(
                model=model, training_file=file_id, seed=seed, suffix=suffix,
                method={"type": "supervised", "supervised": {"hyperparameters": hp}})

        return self.call("fine-tuning job create", create)

    def _find_file(self, filename: str, size: int) -> Any:
        page = self.call("file list", self.client.files.list, purpose="fine-tune", limit=100)
        return next((f for f in page.data if f.filename == filename and f.bytes == size), None)

    def _find_job(self, file_id: str) -> Any:
        page = self.call("fine-tuning job list", self.client.fine_tuning.jobs.list, limit=100)
        live = [j for j in page.data if j.training_file == file_id and j.status not in ("failed", "cancelled")]
        return live[0] if live else None

    def _poll_job(self, state: dict, save: Callable[[], None], out_dir: Path, progress: Progress | None):
        job_id = state["job_id"]
        events_path = out_dir / EVENTS_FILE
        seen = set()
        if events_path.exists():
            for line in events_path.read_text().splitlines():
                try:
                    seen.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError):
                    pass
        step, total = 0, 0
        while True:
            job = self.call("fine-tuning job status", self.client.fine_tuning.jobs.retrieve, job_id)
            page = self.call("fine-tuning job events", self.client.fine_tuning.jobs.list_events, job_id, limit=100)
            new = [e for e in reversed(page.data) if e.id not in seen]
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
                for k in ("job_id", "create_started", "status"):
                    state.pop(k, None)
                save()
                raise UserError(redact(_one_line(
                    f"backend '{self.name}': fine-tuning job {job_id} {job.status}: {why} "
                    "(rerun to start a new job on the same uploaded file)")))
            time.sleep(self.poll_seconds)
