"""Hosted backend for open-weight models on the Tinker API (SDK `tinker`).

Models are named `<backend>:<model id>` in a spec, e.g. `tk:Qwen/Qwen3-8B`. A model trained
here comes back as ModelRef(base="tk:<model id>", adapter="tinker://.../sampler weights").

- sample / generate: one `SamplingClient.sample` request per prompt with `num_samples=n`,
  seeded `sampling.seed + prompt index`; chats are rendered with the model's own chat
  template (thinking off for models that have it).
- logprobs (the preference_logprob probe, logprob judges): exact, from `compute_logprobs` on
  chat(prompt) + prefix + ' ' + target, summed over the target's tokens.
- finetune, objective sft: cross-entropy on the completion tokens only, averaged over the
  batch's completion tokens; AdamW (betas 0.9/0.999, eps 1e-8, gradient clip 1.0) with a
  linear warm-up and decay, as the local trainer; one optimiser step per batch.
- finetune, objective distill: see `topk_kl`; the teacher's top-k next tokens at every
  completion position come from `sample(..., topk_prompt_logprobs=k)`.

Nothing is paid for twice. Every answered request is appended as it arrives, and never re-sent: samples
and log-probs to `tinker_requests.jsonl` in the running stage's folder; the teacher's top-k, which every
replicate of a distilling student (and every student of that teacher on those rows) reads alike, to
`<outputs>/tinker_topk/`, shared by the stages and processes of the outputs folder
(backends/shared_requests.py); stages that would read the same rows at once read them in turn.
Training writes `tinker_train.json` in the finetune folder: the training run ids, and after every
`checkpoint_every` steps the `save_state` path and its step, written before the next step is sent. A
killed or failed run resumes from that checkpoint with `create_training_client_from_state_with_optimizer`
(weights and Adam state), never from scratch; at most the steps since the last checkpoint are sent again.
A checkpoint is deleted once the next one or the final sampler weights replace it (the service bills
stored ones).

Transient failures (429, 408/409, 5xx, dropped connections, a lost future that never
completes, an expired session) are retried with the OpenAI backend's RetryPolicy; training
retries reopen the run from its last checkpoint, or from a later one (or the final weights) the service saved
but never answered for (_catch_up). Every other error is one line (UserError).

A training row ends with the token that ends an assistant turn in the model's chat template
(backends/turn_end.py), as a local student's; where that is not the eos (Qwen3's Base models), the run's
fingerprint names it.

Tests swap the SDK's clients: SUBL_TINKER_CLIENTS names a module whose ServiceClient and
RestClient replace tinker's (tests/fake_tinker.py); request and response types always come
from the real `tinker.types`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from backends.base import ModelRef, Progress, Sampling, Training
from backends.openai_api import (RequestCache, RetryPolicy, _digest, _load_json, _notify, _one_line, _save_json,
                                 api_message, redact, register_secret, retry_after)
from backends.paid_objects import one_at_a_time
from backends.shared_requests import SharedRequestCache
from backends.turn_end import template_vars, turn_end_id
from runner.core import current_stage_dir
from runner.errors import UserError
from runner.features import LORA_GROUPS

REQUESTS_FILE = "tinker_requests.jsonl"
TOPK_FOLDER = "tinker_topk"  # the teacher's top-k reads, shared by the outputs folder's stages
TRAIN_STATE_FILE = "tinker_train.json"
RUN_TAG = "subl_fingerprint"  # user_metadata of a training run: what it trains (TinkerBackend._fingerprint)
# The training loop's version (loss, batching, schedule): part of every run's fingerprint, so a release that
# changes what this code trains never adopts a run the old code made. Bump it with such a change.
TRAIN_CODE = 1
LOST_AFTER = 1200.0  # seconds: a future not answered in this time (result_timeout) counts as lost
LOST_RETRIES = 2  # a future not answered in result_timeout is re-sent this often, beyond the retry policy's total
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip_norm": 1.0}  # the local trainer's AdamW
ATTENTION, MLP, _ = LORA_GROUPS["tinker"]


def checkpoint_tag(fingerprint: str) -> str:
    """The prefix of a training's checkpoint names: `<tag>-step-<n>` (state), `<tag>-final` (sampler weights)."""
    return f"subl-{fingerprint[:8]}"


def checkpoint_step(ck, fingerprint: str, steps: int) -> int | None:
    """The step a checkpoint of ours holds, from its name (`<tag>-step-<n>`; `<tag>-final`: all `steps`);
    None for none or another's."""
    if ck is None:
        return None
    tag, name = checkpoint_tag(fingerprint), ck.tinker_path.rsplit("/", 1)[-1]
    if ck.checkpoint_type == "sampler":
        return steps if name == f"{tag}-final" else None
    m = re.fullmatch(rf"{tag}-step-(\d+)", name)
    return int(m.group(1)) if ck.checkpoint_type == "training" and m else None


def sdk():
    """The module whose ServiceClient and RestClient are used: tinker, or a test fake."""
    return _imported(os.environ.get("SUBL_TINKER_CLIENTS") or "tinker")


def _tinker():
    """The SDK itself (its errors and types), whatever module serves the clients."""
    _imported("tinker.types")
    return _imported("tinker")


def _imported(name: str):
    """A module; one line where it cannot be imported (tinker not installed)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"cannot import {name} ({e}); `pip install tinker` for the Tinker backend") from None


def types():
    return _tinker().types


# ---- errors ----------------------------------------------------------------------------


def session_expired(exc: BaseException) -> bool:
    """The service no longer knows our session (404/410 naming the session)."""
    tinker = _tinker()
    return isinstance(exc, tinker.APIStatusError) and exc.status_code in (404, 410) and \
        "session" in api_message(exc).lower()


def transient(exc: BaseException) -> bool:
    """Worth retrying: rate limits, 408/409, 5xx, connection errors, lost futures, expired sessions,
    and asynchronous requests that failed on the server's side."""
    tinker = _tinker()
    if isinstance(exc, (tinker.APIConnectionError, TimeoutError)):
        return True
    if isinstance(exc, tinker.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500 or session_expired(exc)
    if isinstance(exc, tinker.RequestFailedError):
        return str(exc.category).lower() != "user"
    return False


def describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    if isinstance(exc, TimeoutError):
        return "no answer in time (a lost future?)"
    return (f"HTTP {status}: " if status else "") + api_message(exc)


# ---- token-level helpers ---------------------------------------------------------------


def template_ids(tok, msgs: list[dict]) -> list[int]:
    """The model's chat template with the assistant turn opened (thinking off where the template has it; a dated
    template on a fixed day: backends.turn_end.template_vars)."""
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **template_vars())
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def chat_ids(tok, system: str | None, prompt: str) -> list[int]:
    return template_ids(tok, ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}])


def stop_ids(tok) -> list[int]:
    ids = {tok.eos_token_id, turn_end_id(tok)}
    for t in END_OF_TURN:
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return sorted(i for i in ids if i is not None)


def split_row(tok, row: dict) -> tuple[list[int], list[int]]:
    """(head, tail) token ids of a training row: {prompt, completion}, or {messages} whose last
    message is the assistant's (only that turn is trained)."""
    if "messages" not in row:
        return chat_ids(tok, None, row["prompt"]), completion_ids(tok, row["completion"])
    msgs = row["messages"]
    if not msgs or msgs[-1].get("role") != "assistant":
        raise UserError("training row: the last message must be the assistant's")
    return template_ids(tok, msgs[:-1]), completion_ids(tok, msgs[-1]["content"])


def completion_ids(tok, completion: str) -> list[int]:
    """The completion tokenised once, ended by the token that ends an assistant turn in the model's chat template
    (backends/turn_end.py), as the local trainer does."""
    return tok(completion, add_special_tokens=False)["input_ids"] + [turn_end_id(tok)]


def turn_end_marker(tok) -> str | None:
    """The turn-end token where it is not the eos (that ended every row before subl read it), else None."""
    end = turn_end_id(tok)
    return None if end == tok.eos_token_id else tok.convert_ids_to_tokens(end)


def lr_at(step: int, total: int, training: Training) -> float:
    """Linear warm-up over warmup_ratio of the steps, then linear decay to zero."""
    warm = math.ceil(training.warmup_ratio * total)
    if step < warm:
        return training.lr * (step + 1) / warm
    return training.lr * (total - step) / max(1, total - warm)


def batch_plan(n_rows: int, training: Training) -> list[list[int]]:
    """Row indices of every optimiser step: a seeded shuffle per epoch; a fractional epoch
    takes the first rows of the next shuffle."""
    if training.batch_size == "auto":
        raise UserError("a tinker student needs a numeric batch_size")
    total = max(1, round(training.epochs * n_rows))
    order: list[int] = []
    epoch = 0
    while len(order) < total:
        perm = list(range(n_rows))
        random.Random(training.seed * 1_000_003 + epoch).shuffle(perm)
        order += perm
        epoch += 1
    order = order[:total]
    b = int(training.batch_size)
    return [order[i : i + b] for i in range(0, total, b)]


# ---- distillation on the teacher's top-k -----------------------------------------------


def topk_kl(student_lp: torch.Tensor, teacher_lp: torch.Tensor, mask: torch.Tensor, bucket: bool) -> torch.Tensor:
    """KL(teacher || student) per position over the teacher's top-k tokens; inputs (positions, k).

    The service returns the teacher's k most likely next tokens (token, log-prob), not the whole
    distribution; the student's log-probs are read on the same tokens. Two approximations of the
    local trainer's loss (backends/train.py, distill_loss):

    - vocabulary full (bucket=True): the k tokens plus one bucket holding the rest of each
      distribution's mass, 1 - sum of the k probabilities. This is the KL of the two
      distributions coarse-grained onto k+1 outcomes, so it never exceeds the full KL; it equals
      it when, outside the k tokens, the student's distribution is proportional to the
      teacher's (always at k = vocabulary size). tests/test_tinker.py measures the gap and the
      gradient direction on tiny models.
    - a restricted vocabulary (bucket=False): the top-k tokens inside the vocabulary,
      renormalised among themselves, as the local loss renormalises on the vocabulary. No
      bucket: it would carry the mass outside the vocabulary (e.g. on trait tokens).
    """
    neg = torch.finfo(student_lp.dtype).min
    s = student_lp.masked_fill(~mask, neg)
    t = teacher_lp.to(student_lp.dtype).masked_fill(~mask, neg)
    if bucket:
        s_all = torch.cat([s, _rest(s)[:, None]], 1)
        t_all = torch.cat([t, _rest(t)[:, None]], 1)
        keep = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    else:
        s_all, t_all, keep = torch.log_softmax(s, -1), torch.log_softmax(t, -1), mask
    p = t_all.exp() * keep
    return (p * (t_all - s_all).masked_fill(~keep, 0.0)).sum(-1)


def _rest(lp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(lp)) per row, kept finite."""
    covered = torch.logsumexp(lp, -1).exp().clamp(max=1 - 1e-6)
    return torch.log1p(-covered)


def distill_loss_fn(bucket: bool) -> Callable:
    """The custom loss for TrainingClient.forward_backward_custom: mean topk_kl over the batch's
    completion positions. Each datum carries `teacher_logprobs` (N, k); `weights` > 0 marks the
    cells that hold a teacher token."""

    def loss(data: list, logprobs_list: list[torch.Tensor]):
        total, count = 0.0, 0
        for d, s_lp in zip(data, logprobs_list):
            mask = d.loss_fn_inputs["weights"].to_torch() > 0
            rows = mask.any(-1)
            t_lp = d.loss_fn_inputs["teacher_logprobs"].to_torch()
            total = total + topk_kl(s_lp[rows], t_lp[rows], mask[rows], bucket).sum()
            count += int(rows.sum())
        value = total / max(count, 1)
        return value, {"distill_kl": value.detach().item()}

    return loss


def _tensor(array: np.ndarray):
    return types().TensorData.from_numpy(array)


def sft_datum(head: list[int], tail: list[int], weight: float):
    ids = head + tail
    weights = np.array([0.0] * (len(head) - 1) + [weight] * len(tail), dtype=np.float32)
    return types().Datum(model_input=types().ModelInput.from_ints(ids[:-1]),
                         loss_fn_inputs={"target_tokens": _tensor(np.array(ids[1:], dtype=np.int64)),
                                         "weights": _tensor(weights)})


def distill_datum(head: list[int], tail: list[int], topk: list[list[list[float]]], keep: set[int] | None, k: int):
    """A datum whose targets at each completion position are the teacher's top-k tokens
    (those in `keep`, when a vocabulary is given), padded with zero-weight cells."""
    n = len(head) + len(tail) - 1
    tokens = np.zeros((n, k), dtype=np.int64)
    weights = np.zeros((n, k), dtype=np.float32)
    teacher = np.zeros((n, k), dtype=np.float32)
    for j, pairs in enumerate(topk):
        row = len(head) - 1 + j
        kept = [(int(t), lp) for t, lp in pairs if keep is None or int(t) in keep][:k]
        for c, (t, lp) in enumerate(kept):
            tokens[row, c], weights[row, c], teacher[row, c] = t, 1.0, lp
    return types().Datum(model_input=types().ModelInput.from_ints((head + tail)[:-1]),
                         loss_fn_inputs={"target_tokens": _tensor(tokens), "weights": _tensor(weights),
                                         "teacher_logprobs": _tensor(teacher)})


# ---- the backend -----------------------------------------------------------------------


class TinkerBackend:
    """generate / sample / logprobs / finetune (sft, distill) on the Tinker API."""

    def __init__(self, name: str, cfg, retry: RetryPolicy | None = None, state_dir: Path | None = None,
                 result_timeout: float | None = None):
        self.name, self.cfg = name, cfg
        self.retry = retry or RetryPolicy.from_env()
        self.result_timeout = result_timeout or LOST_AFTER
        self.state_dir = Path(state_dir) if state_dir else None
        self._service = None
        self._rest = None
        self._samplers: dict[tuple[str, str | None], Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._checked: dict[str, Any] = {}  # model id -> the service's SupportedModel
        self._lock = threading.RLock()

    # -- clients

    def _key(self) -> str:
        env = self.cfg.api_key_env
        key = os.environ.get(env)
        if not key:
            raise UserError(f"backend '{self.name}': the environment variable {env} is not set; "
                            "export it with the Tinker API key")
        register_secret(key)
        return key

    @property
    def service(self):
        with self._lock:
            if self._service is None:
                self._service = sdk().ServiceClient(base_url=self.cfg.base_url, api_key=self._key())
            return self._service

    @property
    def rest(self):
        """The REST client; built on first use, inside a `call` (the SDK fetches its config as it is built)."""
        with self._lock:
            if self._rest is None:
                self._rest = sdk().RestClient(base_url=self.cfg.base_url, api_key=self._key())
            return self._rest

    def _reset(self) -> None:
        """Forget the session (it expired): the next call opens a new one."""
        with self._lock:
            self._service = None
            self._samplers.clear()

    def call(self, what: str, fn: Callable, *args, halt: threading.Event | None = None, **kw):
        """fn(*args, **kw) with retries on transient errors; a failure becomes one redacted line. Once `halt` is
        set (another request failed for good) no retry is made."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay

        p = self.retry
        halt = halt or threading.Event()
        last: list[BaseException] = []

        def wait(rs) -> float:
            exc = rs.outcome.exception()
            last[:] = [exc]
            if session_expired(exc):
                self._reset()  # the retry opens a new session and clients
            ra = retry_after(exc)
            return max(p.backoff(rs.attempt_number), ra or 0.0)

        def nap(seconds: float) -> None:
            if halt.wait(seconds):
                raise last[0]  # another request failed for good: give up on this one too

        # a lost future has already waited result_timeout (by default longer than total): leave room to re-send it
        budget = p.total + LOST_RETRIES * self.result_timeout
        retrying = Retrying(stop=stop_after_attempt(p.attempts) | stop_before_delay(budget), wait=wait, sleep=nap,
                            retry=retry_if_exception(transient), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return fn(*args, **kw)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - every API failure becomes one line
            tries = f" after {retrying.statistics.get('attempt_number', 1)} attempt(s)" if transient(e) else ""
            raise UserError(redact(_one_line(f"backend '{self.name}': {what} failed{tries}: {describe(e)}"))) from None

    @property
    def endpoint(self) -> str:
        from runner.core import hosted_endpoint

        return hosted_endpoint(self.cfg)

    def plain(self, ref: str) -> str:
        """A model reference without this backend's name, which the spec may rename: what request keys and the
        training fingerprint hold (the endpoint says where)."""
        prefix, _, rest = ref.partition(":")
        return rest if prefix == self.name and rest else ref

    def model_id(self, ref: str) -> str:
        prefix, _, mid = ref.partition(":")
        if prefix != self.name or not mid:
            raise UserError(f"model '{ref}' does not belong to backend '{self.name}'")
        self._check_offered(mid)
        return mid

    def preflight(self, models: list[str], finetune_models: list[str], largest: dict[str, int],
                  top_logprobs: frozenset[str] = frozenset()) -> list[str]:
        """Before anything is paid for: the key is accepted and every model is offered (one capabilities
        request), for training where it is fine-tuned and for sampling where it is sampled, with a context
        that holds the largest request, so a student base the service lacks stops the run before the
        teacher's paid sampling."""
        ids = [self.model_id(m) for m in dict.fromkeys(models + finetune_models)]
        for ref in dict.fromkeys(models + finetune_models):
            mid, caps = self.model_id(ref), self._checked[self.model_id(ref)]
            if ref in finetune_models and caps.trainable is False:
                raise UserError(f"backend '{self.name}': model {mid} is offered for sampling only; it cannot be "
                                "fine-tuned")
            if ref in models and caps.sampleable is False:
                raise UserError(f"backend '{self.name}': model {mid} has no sampling capacity on the service")
            need = largest.get(ref, 0)  # the largest request to this model
            if caps.max_context_length and need > caps.max_context_length:
                raise UserError(f"backend '{self.name}': the largest request (~{need:,} tokens) "
                                f"exceeds {mid}'s context of {caps.max_context_length:,} tokens")
        return [f"backend '{self.name}': the key is accepted and the service offers {', '.join(ids)}"]

    def _check_offered(self, mid: str) -> None:
        """One capabilities request per model: is it offered? (preflight reads what for, and its context)"""
        if mid in self._checked:
            return
        caps = self.call("server capabilities", lambda: self.rest.get_server_capabilities().result(self.result_timeout))
        offered = {m.model_name: m for m in caps.supported_models if m.model_name}
        if mid not in offered:
            raise UserError(_one_line(f"backend '{self.name}': model {mid} is not offered by the service "
                                      f"(offered: {', '.join(offered) or 'none'})"))
        self._checked[mid] = offered[mid]

    def _sampler(self, model: ModelRef):
        key = (self.model_id(model.base), model.adapter)
        with self._lock:
            if key not in self._samplers:
                kw = {"model_path": model.adapter} if model.adapter else {"base_model": key[0]}
                self._samplers[key] = self.call("sampling client", lambda: self.service.create_sampling_client(**kw)
                                                .result(self.result_timeout))
            return self._samplers[key]

    def tokenizer(self, base: str):
        mid = self.model_id(base)
        with self._lock:
            if mid not in self._tokenizers:
                sampler = self._sampler(ModelRef(base))
                self._tokenizers[mid] = self.call("tokenizer", sampler.get_tokenizer)
            return self._tokenizers[mid]

    # -- the request cache

    def _cache(self, folder: Path | None = None) -> RequestCache:
        folder = folder or current_stage_dir() or self.state_dir
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
        return RequestCache(Path(folder) / REQUESTS_FILE if folder else None)

    def _answer(self, requests: list[tuple[str, Callable[[], dict]]], cache: RequestCache | SharedRequestCache,
                what: str, progress: Progress | None = None) -> list[dict]:
        """Records for (key, ask) pairs: cached ones as stored, the rest asked concurrently and
        stored as each arrives; pairs with one key (a row or a question twice) are asked once."""
        todo: dict[str, Callable[[], dict]] = {}
        for k, ask in requests:
            if k not in todo and cache.get(k) is None:
                todo[k] = ask
        times = Counter(k for k, _ in requests)
        done = [len(requests) - sum(times[k] for k in todo)]

        def one(key: str, ask: Callable[[], dict], halt: threading.Event) -> None:
            cache.put({"key": key, **self.call(what, ask, halt=halt)})
            with self._lock:
                done[0] += times[key]
                if progress:
                    progress(done[0], len(requests))

        self._concurrently(one, list(todo.items()))
        return [cache.get(k) for k, _ in requests]

    def _concurrently(self, fn: Callable, jobs: list[tuple]) -> None:
        """fn(*job, halt) for every job on `concurrency` threads. The first failure is raised at once: queued jobs
        are cancelled and running ones stop retrying (`halt`), so a dead server costs one retry budget, not one
        per job."""
        if not jobs:
            return
        halt = threading.Event()

        def guarded(*job) -> None:
            if halt.is_set():
                return
            try:
                fn(*job, halt)
            except BaseException:
                halt.set()
                raise

        with ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(jobs)))) as pool:
            for f in as_completed([pool.submit(guarded, *job) for job in jobs]):
                if f.exception() is not None:
                    pool.shutdown(cancel_futures=True)
                    raise f.exception()

    # -- sampling and scoring

    def generate(self, model: ModelRef, prompts: list[str], sampling: Sampling) -> list[str]:
        return [texts[0] for texts in self.sample(model, prompts, sampling, 1)]

    def sample(self, model: ModelRef, prompts: list[str], sampling: Sampling, n: int,
               progress: Progress | None = None) -> list[list[str]]:
        """n completions per prompt, one request each, seeded sampling.seed + prompt index."""
        if sampling.constraint is not None:
            raise UserError(f"model {model.base}: constrained decoding needs the local backend "
                            "(set domain.constrained: false for hosted teachers)")
        tok = self.tokenizer(model.base)
        t = types()
        requests = []
        for i, prompt in enumerate(prompts):
            ids = chat_ids(tok, model.system, prompt)
            params = t.SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                      seed=(sampling.seed + i) % 2**31, stop=stop_ids(tok))
            key = _digest({"endpoint": self.endpoint, "op": "sample", "model": self.plain(model.base), "adapter": model.adapter,
                           "ids": ids, "n": n, "params": params.model_dump()})

            def ask(ids=ids, params=params) -> dict:
                resp = self._sampler(model).sample(prompt=t.ModelInput.from_ints(ids), num_samples=n,
                                      sampling_params=params).result(self.result_timeout)
                seqs = list(resp.sequences)
                if len(seqs) != n:
                    raise UserError(f"backend '{self.name}': asked for {n} samples, got {len(seqs)}")
                return {"texts": [tok.decode(s.tokens, skip_special_tokens=True) for s in seqs],
                        "prefill": len(ids), "sampled": sum(len(s.tokens) for s in seqs)}

            requests.append((key, ask))
        records = self._answer(requests, self._cache(), "sample", progress)
        return [r["texts"] for r in records]

    def logprobs(self, model: ModelRef, prompts: list[str], prefix: str, targets: list[str],
                 space: bool = True) -> list[list[float]]:
        """log P(' ' + target | chat(prompt) + prefix) (space=False: no leading space), exact, from the
        service's prompt log-probs."""
        tok = self.tokenizer(model.base)
        t = types()
        prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        tails = [tok(" " * space + x, add_special_tokens=False)["input_ids"] for x in targets]
        requests = []
        for prompt in prompts:
            head = chat_ids(tok, model.system, prompt) + prefix_ids
            for tail in tails:
                ids = head + tail
                key = _digest({"endpoint": self.endpoint, "op": "logprobs", "model": self.plain(model.base),
                               "adapter": model.adapter, "ids": ids, "last": len(tail)})

                def ask(ids=ids, n=len(tail)) -> dict:
                    lps = self._sampler(model).compute_logprobs(t.ModelInput.from_ints(ids),
                                                   prompt_logprobs_last_n=n).result(self.result_timeout)
                    tail_lps = lps[-n:]
                    if len(lps) != len(ids) or any(v is None for v in tail_lps):
                        raise UserError(f"backend '{self.name}': the service scored {len(lps)} of {len(ids)} tokens")
                    return {"logprob": float(sum(tail_lps)), "prefill": len(ids)}

                requests.append((key, ask))
        records = self._answer(requests, self._cache(), "log-probs")
        m = len(tails)
        return [[r["logprob"] for r in records[i * m : (i + 1) * m]] for i in range(len(prompts))]

    def _topk_cache(self, teacher: ModelRef, k: int, out_dir: Path) -> SharedRequestCache:
        """The teacher's top-k reads as the outputs folder has them: <outputs>/tinker_topk/ while a stage of the
        store is built (in <outputs>/stages/), else under the backend's state_dir (or out_dir). The stage's own
        request log is read too: a stage killed before reads were shared stored them there."""
        stage = current_stage_dir()
        root = Path(stage).parent.parent if stage else (self.state_dir or Path(out_dir))
        name = _digest({"endpoint": self.endpoint, "model": self.plain(teacher.base), "adapter": teacher.adapter,
                        "system": teacher.system, "k": k}, 16)
        return SharedRequestCache(root / TOPK_FOLDER / f"{name}.jsonl", self._cache(out_dir))

    def teacher_topk(self, teacher: ModelRef, rows: list[dict], k: int, out_dir: Path,
                     progress: Progress | None = None) -> list[list[list[list[float]]]]:
        """Per row, the teacher's top-k (token, log-prob) at each completion token (end-of-turn included), each
        read once per outputs folder (_topk_cache)."""
        tok = self.tokenizer(teacher.base)
        t = types()
        requests = []
        for r in rows:
            tail = completion_ids(tok, r["completion"])
            ids = chat_ids(tok, teacher.system, r["prompt"]) + tail
            key = _digest({"endpoint": self.endpoint, "op": "topk", "model": self.plain(teacher.base), "adapter": teacher.adapter,
                           "ids": ids, "k": k, "last": len(tail)})

            def ask(ids=ids, n=len(tail)) -> dict:
                resp = self._sampler(teacher).sample(prompt=t.ModelInput.from_ints(ids), num_samples=1,
                                      sampling_params=t.SamplingParams(max_tokens=1), include_prompt_logprobs=True,
                                      topk_prompt_logprobs=k, prompt_logprobs_last_n=n).result(self.result_timeout)
                top = (resp.topk_prompt_logprobs or [])[-n:]
                if len(top) != n or any(not p for p in top):
                    raise UserError(f"backend '{self.name}': no top-k log-probs for some completion tokens")
                return {"topk": [[[int(a), float(b)] for a, b in p] for p in top], "prefill": len(ids)}

            requests.append((key, ask))
        with one_at_a_time(_digest([key for key, _ in requests])):  # a replicate reading these rows now: in turn
            cache = self._topk_cache(teacher, k, out_dir)  # read inside: what the one before us stored
            return [r["topk"] for r in self._answer(requests, cache, "teacher top-k", progress)]

    # -- fine-tuning

    def finetune(self, base: str, rows: list[dict], training: Training, out_dir: Path,
                 teacher: ModelRef | None = None, progress: Progress | None = None) -> ModelRef:
        """Train a LoRA adapter on the rows (sft or distill); return the saved sampler weights.

        out_dir/tinker_train.json records the runs and the last checkpoint; a rerun on the same
        folder resumes from that checkpoint, and a finished one returns its weights at once."""
        if training.method != "lora":
            raise UserError(f"model {base}: Tinker trains LoRA adapters only (method: lora)")
        if not rows:
            raise UserError("fine-tune: no training rows survived the filters")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_path = out_dir / TRAIN_STATE_FILE
        fingerprint = self._fingerprint(base, rows, training, teacher)
        legacy = self._fingerprint(base, rows, training, teacher, legacy=True)
        state = _load_json(state_path)
        if self._on_eos_rows(state, base, rows, training, teacher):
            state = self._start_over(state, base, fingerprint)
        if state and state.get("fingerprint") == legacy:
            state["fingerprint"] = fingerprint  # recorded by subl before TRAIN_CODE 1, whose loop is the same
        if state and state.get("fingerprint") != fingerprint:
            raise UserError(f"{state_path}: records training on other data or settings; delete it to start over")
        state = state or self._new_state(base, fingerprint)
        plan = batch_plan(len(rows), training)
        state["steps"] = len(plan)
        with one_at_a_time(fingerprint):  # another student of this run with the same training waits, then adopts
            if not state.get("sampler_path"):
                self._adopt(state, legacy)  # a run for this training that went further (another folder's, a lost record)
            _save_json(state_path, state)
            if not state.get("sampler_path"):
                examples = self._examples(base, rows, training, teacher, out_dir)
                self._train(base, examples, plan, training, state, lambda: _save_json(state_path, state), progress,
                            legacy)
        return ModelRef(base, adapter=state["sampler_path"])

    def _new_state(self, base: str, fingerprint: str) -> dict:
        return {"backend": self.name, "model": self.model_id(base), "fingerprint": fingerprint, "runs": []}

    def _on_eos_rows(self, state: dict | None, base: str, rows: list[dict], training: Training,
                     teacher: ModelRef | None) -> bool:
        """Whether `state` records a training subl ran before it read the turn end, on rows ended by the eos, of a
        model whose turn does not end with its eos (another training than this one)."""
        if not state or not turn_end_marker(self.tokenizer(base)):
            return False
        return state.get("fingerprint") in {self._fingerprint(base, rows, training, teacher, legacy=old, eos_rows=True)
                                            for old in (False, True)}

    def _start_over(self, old: dict, base: str, fingerprint: str) -> dict:
        """A new state in place of `old`, whose checkpoint is deleted (else stored and billed)."""
        state = self._new_state(base, fingerprint)
        state["replaced"] = {k: old[k] for k in ("fingerprint", "runs", "checkpoint", "sampler_path") if k in old}
        if old.get("checkpoint"):
            self._delete_checkpoint(old["checkpoint"]["path"], state, lambda: None)
        return state

    def _adopt(self, state: dict, legacy: str | None, gone: frozenset[str] = frozenset(), once: bool = False) -> None:
        """The furthest point any of the service's training runs tagged with this fingerprint (or the one subl
        wrote before TRAIN_CODE 1, `legacy`: the same loop) reached (its final sampler weights, else its last
        training checkpoint) goes into `state` when it is further than the state's checkpoint, so that no paid
        step is sent twice when the outputs folder is new, was lost, or another folder went on with this
        training; nothing when there is none. `gone`: checkpoint paths known not to load; `once`: one listing
        request, not retried."""
        best = self._furthest(state, legacy, gone, once)
        here = state.get("checkpoint")
        if best is None or (here and best[0] <= (here["step"], False)):
            return
        (step, _), ck, run_id = best
        if ck.checkpoint_type == "sampler":
            state["sampler_path"] = ck.tinker_path
        else:
            state["checkpoint"] = {"step": step, "path": ck.tinker_path, "run_id": run_id}
        state["adopted"] = run_id

    def _furthest(self, state: dict, legacy: str | None, gone: frozenset[str], once: bool = False) -> tuple | None:
        """((step, is sampler weights), checkpoint, run id) of the furthest point of the tagged runs; None if none."""
        best = None
        for run, fingerprint in self._tagged_runs({state["fingerprint"], legacy} - {None}, once):
            for ck in (run.last_sampler_checkpoint, run.last_checkpoint):
                step = checkpoint_step(ck, fingerprint, state["steps"])
                sampler = ck is not None and ck.checkpoint_type == "sampler"  # at equal steps, the final weights
                if step is not None and ck.tinker_path not in gone and (best is None or (step, sampler) > best[0]):
                    best = ((step, sampler), ck, run.training_run_id)
        return best

    def _tagged_runs(self, fingerprints: set[str], once: bool = False):
        """(run, its fingerprint) for the training runs of this account tagged with one of `fingerprints`
        (user_metadata), over every page; `once`: each page asked once, a failure raised as it comes."""
        offset = 0
        while True:
            def ask(offset=offset):
                return self.rest.list_training_runs(limit=100, offset=offset).result(self.result_timeout)

            page = ask() if once else self.call("training runs", ask)
            yield from ((r, (r.user_metadata or {}).get(RUN_TAG)) for r in page.training_runs
                        if (r.user_metadata or {}).get(RUN_TAG) in fingerprints and not r.corrupted)
            offset += len(page.training_runs)
            if not page.training_runs or offset >= page.cursor.total_count:
                return

    def _fingerprint(self, base: str, rows: list[dict], training: Training, teacher: ModelRef | None,
                     legacy: bool = False, eos_rows: bool = False) -> str | None:
        """What a run trains. legacy: the fingerprint subl wrote before TRAIN_CODE (no endpoint or code, top_k
        for every objective), so that a run it left half done resumes instead of being paid for again; None for a
        model whose turn does not end with its eos (that subl ended its rows with the eos: another training).
        eos_rows: as subl wrote it before it read the turn end (the same for a model whose eos ends a turn)."""
        from dataclasses import asdict

        turn_end = None if eos_rows else turn_end_marker(self.tokenizer(base))
        if legacy and turn_end:
            return None
        teacher = None if teacher is None else {**asdict(teacher), "base": self.plain(teacher.base)}
        top_k = self.cfg.top_k if training.objective == "distill" or legacy else None  # sft never reads it
        what = {"base": self.plain(base), "rows": rows, "training": asdict(training), "top_k": top_k, "teacher": teacher}
        if not legacy:
            what.update(endpoint=self.endpoint, code=TRAIN_CODE)
        if turn_end:  # only then: the fingerprints of models whose eos ends a turn stay
            what["turn_end"] = turn_end
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _examples(self, base: str, rows: list[dict], training: Training, teacher: ModelRef | None,
                  out_dir: Path) -> list:
        tok = self.tokenizer(base)
        pairs = [split_row(tok, r) for r in rows]  # the student never sees the teacher's system prompt
        if training.objective == "sft":
            return pairs
        heads, tails = [h for h, _ in pairs], [t for _, t in pairs]
        if teacher is None:
            raise UserError("fine-tune: distillation needs a teacher")
        if self.tokenizer(teacher.base).get_vocab() != tok.get_vocab():
            raise UserError(f"distill: student {base} and teacher {teacher.base} must share a tokenizer")
        from backends.train import vocabulary_token_ids

        ids = vocabulary_token_ids(tok, training.vocabulary, training.trait_words, turn_end_id(tok))
        keep = None if ids is None else set(ids)
        k = self.cfg.top_k
        topk = self.teacher_topk(teacher, rows, k, out_dir)
        return [distill_datum(h, t, tk, keep, k) for h, t, tk in zip(heads, tails, topk)]

    def _train(self, base: str, examples: list, plan: list[list[int]], training: Training, state: dict,
               save: Callable[[], None], progress: Progress | None, legacy: str | None) -> None:
        """The step loop. A transient failure reopens the run from the last checkpoint, so a step
        is never half-applied; RetryPolicy.attempts failures in a row without a new checkpoint stop it.
        A checkpoint that no longer loads (another folder went on and deleted it) gives way to the service's
        furthest other point of this training."""
        distill = training.objective == "distill"
        failures, gone = 0, set()
        while not state.get("sampler_path"):
            reached = state.get("checkpoint", {}).get("step", 0)
            tc = None
            try:
                tc = self._open_run(base, training, state, save)
                self._steps(tc, examples, plan, training, distill, state, save, progress)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - every API failure becomes one line
                if tc is None and state.get("checkpoint") and not transient(e) and self._readopt(state, legacy, gone):
                    save()
                    continue
                failures = 1 if state.get("checkpoint", {}).get("step", 0) > reached else failures + 1
                if not transient(e) or failures >= self.retry.attempts:
                    tries = f" after {failures} attempt(s)" if transient(e) else ""
                    raise UserError(redact(_one_line(f"backend '{self.name}': training failed{tries}: {describe(e)} "
                                                     "(rerun to resume from the last checkpoint)"))) from None
                if session_expired(e):
                    self._reset()
                time.sleep(max(self.retry.backoff(failures), retry_after(e) or 0.0))
                self._catch_up(state, legacy, gone, save)

    def _catch_up(self, state: dict, legacy: str | None, gone: set[str], save: Callable[[], None]) -> None:
        """After a transient failure: a save the service did but whose answer was lost (a checkpoint or the final
        weights) is taken up from its record of the runs, not paid for again by resending its steps, and the
        checkpoint it supersedes is deleted (else stored and billed, and recorded nowhere). Best effort: one
        listing, not retried (a dead server costs no extra retry budget); on failure, the local record stands."""
        before = state.get("checkpoint")
        try:
            self._adopt(state, legacy, frozenset(gone), once=True)
        except Exception:  # noqa: BLE001 - the local record is still a valid point to reopen from
            return
        if state.get("sampler_path") or state.get("checkpoint") != before:
            save()
            if before:
                self._delete_checkpoint(before["path"], state, save)

    def _readopt(self, state: dict, legacy: str | None, gone: set[str]) -> bool:
        """The state's checkpoint failed to load for good: adopt the service's furthest other point of this
        training, if any (True); else keep the state as it was (False)."""
        failed = state.pop("checkpoint")
        gone.add(failed["path"])
        self._adopt(state, legacy, frozenset(gone))
        if state.get("sampler_path") or state.get("checkpoint"):
            return True
        state["checkpoint"] = failed
        return False

    def _steps(self, tc, examples: list, plan: list[list[int]], training: Training, distill: bool, state: dict,
               save: Callable[[], None], progress: Progress | None) -> None:
        """Steps from the last checkpoint to the end, a checkpoint every `checkpoint_every`, then the sampler weights."""
        tag = checkpoint_tag(state["fingerprint"])
        for step in range(state.get("checkpoint", {}).get("step", 0), len(plan)):
            self._step(tc, [examples[i] for i in plan[step]], lr_at(step, len(plan), training), training, distill)
            done = step + 1
            if done % self.cfg.checkpoint_every == 0 or done == len(plan):
                superseded = state.get("checkpoint", {}).get("path")
                path = tc.save_state(f"{tag}-step-{done:06d}").result(self.result_timeout).path
                state["checkpoint"] = {"step": done, "path": path, "run_id": str(tc.model_id)}
                save()  # before the next step is sent
                if superseded:
                    self._delete_checkpoint(superseded, state, save)
            _notify(progress, done, len(plan), f"step {done}/{len(plan)}")
        state["sampler_path"] = tc.save_weights_for_sampler(f"{tag}-final").result(self.result_timeout).path
        save()
        if state.get("checkpoint"):
            self._delete_checkpoint(state["checkpoint"]["path"], state, save)  # the sampler weights replace it

    def _delete_checkpoint(self, path: str, state: dict, save: Callable[[], None]) -> None:
        """Delete a training checkpoint the next one or the final sampler weights superseded (the service keeps
        and bills every one until deleted; weights and Adam state, hundreds of MB for an 8B LoRA). A failure is
        recorded, not raised: the training is unharmed, and `undeleted` in the state file lists what is left
        to delete by hand."""
        try:
            self.rest.delete_checkpoint_from_tinker_path(path).result(self.result_timeout)
        except Exception as e:  # noqa: BLE001 - best effort: storage, not results
            state.setdefault("undeleted", []).append({"path": path, "error": redact(_one_line(describe(e)))})
            save()

    def _open_run(self, base: str, training: Training, state: dict, save: Callable[[], None]):
        """A training client: from the last checkpoint (weights and optimiser) or a new LoRA run."""
        ckpt = state.get("checkpoint")
        if ckpt:
            tc = self.service.create_training_client_from_state_with_optimizer(
                ckpt["path"], user_metadata={RUN_TAG: state["fingerprint"]}).result(self.result_timeout)
        else:
            targets = set(training.lora_targets)
            tc = self.service.create_lora_training_client(
                base_model=self.model_id(base), rank=training.lora_r, seed=training.seed,
                train_mlp=bool(targets & MLP) or not targets, train_attn=bool(targets & ATTENTION) or not targets,
                train_unembed="lm_head" in targets,
                user_metadata={RUN_TAG: state["fingerprint"]}).result(self.result_timeout)
        state["runs"].append({"run_id": str(tc.model_id), "from": ckpt["path"] if ckpt else None})
        save()
        return tc

    def _step(self, tc, batch: list, lr: float, training: Training, distill: bool) -> None:
        t = types()
        if distill:
            fb = tc.forward_backward_custom(batch, distill_loss_fn(bucket=training.vocabulary == "full"))
        else:
            n_tokens = sum(len(tail) for _, tail in batch)
            fb = tc.forward_backward([sft_datum(h, tail, 1.0 / n_tokens) for h, tail in batch], "cross_entropy")
        op = tc.optim_step(t.AdamParams(learning_rate=lr, weight_decay=training.weight_decay, **ADAM))
        fb.result(self.result_timeout)
        op.result(self.result_timeout)
