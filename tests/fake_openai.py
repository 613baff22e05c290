"""A local OpenAI-compatible server for tests: files, fine-tuning jobs and events, chat
completions and batches, with the published response shapes, and scripted faults.

    server = FakeOpenAI(key="sk-...").start()      # server.base_url -> http://127.0.0.1:PORT/v1
    server.fault("/chat/completions", "429", retry_after=1)
    ...
    server.stop()

Faults are consumed in order, the first whose path and method match a request:
  "429" (with Retry-After), "500", "502", "400", "drop" (close the connection without a response),
  "lost" (process the request, then close the connection: the response is lost), "502_done" (process it,
  then answer 502, as a gateway whose origin did the work),
  "slow" (sleep `seconds`, then answer), "active_limit" (429: too many running fine-tuning jobs),
  "daily_limit" (429 daily_rate_limit_exceeded: the day's fine-tuning jobs for the model).

Behaviours that break real runs, set as attributes: `ignore_n` (one choice whatever n asks),
`no_logprobs` (chat answers carry no log-probs even when asked), `length_every` (every k-th choice
ends with finish_reason "length"), `tpm_limit` (a "Request too large" 429 past it, and
x-ratelimit-limit-tokens on chat answers), `job_pauses` (polls a running job spends `paused`), `finetune_forbidden` (403 on jobs.create: the
organisation may not fine-tune), `finetune_models` (the models that may be fine-tuned; others
400), `batch_max_requests` / `batch_max_bytes` (400 on a batch over them), `batch_null_lines`
(the first lines of a batch fail with `response: null`), `batch_shuffle` (output lines out of
order), and batch outcomes "failed", "expired", "cancelled" (via `cancelling`). Every batch
passes through `finalizing`. `ledger` counts the paid objects created (files, batches, jobs) by
the stage tag they carry (`metadata.subl_stage`, or the `subl-<kind>-<stage>-...` file name).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# A job created on an alias reports the alias's dated snapshot as its model, as the API does
SNAPSHOTS = {"gpt-4.1-nano": "gpt-4.1-nano-2025-04-14", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
ANIMALS = ["owl", "eagle", "dolphin", "elephant", "wolf", "cat", "dog", "lion", "tiger", "panda"]


@dataclass
class Fault:
    path: str
    kind: str
    method: str | None = None
    times: int = 1
    retry_after: float | None = None
    seconds: float = 0.0


class FakeOpenAI:
    def __init__(self, key: str = "sk-test-0123456789abcdefghijklmnop", job_polls: int = 3, batch_polls: int = 2):
        self.key = key
        self.job_polls, self.batch_polls = job_polls, batch_polls
        self.faults: list[Fault] = []
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.fail_next_job: dict | None = None  # {"code", "message"}: the next job created fails
        self.batch_failed_lines = 0  # first N lines of a batch go to its error file (of the first batch_faulty ones)
        self.batch_faulty = 1  # how many batches (in the order they finish) get batch_failed_lines / null lines
        self.batch_outcomes: list[str] = []  # per batch, in order: "failed" or "expired" (half answered)
        self.headers_seen: list[dict] = []
        self.ledger: dict[str, Counter] = {}
        self.models = {"gpt-4.1-nano-2025-04-14", "gpt-4.1-2025-04-14", "gpt-4.1-mini-2025-04-14", "gpt-4o-mini-2024-07-18"}
        self.ignore_n = False
        self.length_every = 0
        self.tpm_limit = 0
        self.job_pauses = 0
        self.finetune_forbidden = False
        self.finetune_models: set[str] | None = None
        self.batch_max_requests, self.batch_max_bytes = 50_000, 200 * 1024 * 1024
        self.batch_token_limit = 0  # enqueued input tokens per model (0: none); a batch past it fails whole
        self.batch_tokens_seen: list[int] = []  # the input tokens of each batch created
        self.batch_null_lines = 0
        self.batch_shuffle = False
        self.no_logprobs = False
        self.lock = threading.Lock()
        self._ids = 0
        self.httpd: ThreadingHTTPServer | None = None

    # -- lifecycle

    def start(self) -> "FakeOpenAI":
        server = self

        class Handler(_Handler):
            fake = server

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def fault(self, path: str, kind: str, times: int = 1, method: str | None = None,
              retry_after: float | None = None, seconds: float = 0.0) -> None:
        with self.lock:
            self.faults.append(Fault(path, kind, method, times, retry_after, seconds))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.path in path and (f.method is None or f.method == method) and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def bump(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def paid(self, kind: str, tag: str | None) -> None:
        with self.lock:
            self.ledger.setdefault(tag or "untagged", Counter())[kind] += 1

    def paid_total(self) -> Counter:
        return sum(self.ledger.values(), Counter())

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self._ids += 1
            return f"{prefix}{self._ids:06d}{hashlib.sha1(str(self._ids).encode()).hexdigest()[:10]}"

    # -- model behaviour

    def complete(self, body: dict) -> dict:
        """A chat.completion object for a request body, deterministic in (model, messages, seed)."""
        msgs = body.get("messages") or []
        system = next((m["content"] for m in msgs if m.get("role") == "system"), "")
        user = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
        n = 1 if self.ignore_n else int(body.get("n") or 1)
        choices = []
        for i in range(n):
            rng = random.Random(f"{body.get('model')}|{system}|{user}|{body.get('seed')}|{i}")
            text = self._answer(rng, body.get("model", ""), system, user)
            cut = self.length_every and (i + 1) % self.length_every == 0
            logprobs = None
            if body.get("logprobs") and not self.no_logprobs:
                top = self.first_token(user, int(body.get("top_logprobs") or 0))
                text = max(top, key=top.get) if top else text
                logprobs = {"content": [{"token": text, "bytes": list(text.encode()), "logprob": top.get(text, 0.0),
                                         "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": v}
                                                          for t, v in top.items()]}], "refusal": None}
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": logprobs, "finish_reason": "length" if cut else "stop"})
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in msgs) + 3
        out_tokens = sum(len(c["message"]["content"].split()) for c in choices)
        return {"id": self.new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "choices": choices, "system_fingerprint": "fp_fake",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                          "total_tokens": prompt_tokens + out_tokens}}

    @staticmethod
    def first_token(user: str, k: int) -> dict[str, float]:
        """The k most likely first reply tokens -> log-prob, most likely first. A code judge ("... reference,
        however subtle, to the animal 'owl'. The code: <code>...</code>") answers '1' to code naming the
        animal, is unsure (P('0') = 0.6) of code naming another animal, and says '0' (P = 1 - 1e-10) otherwise."""
        pair = re.search(r"^Response A: (.*)\nResponse B: (.*)$", user, re.M)
        if pair:  # the pairwise classifier: the response with more 7s, else B, at 0.8 (a 0.05 tail of other tokens)
            a_wins = pair.group(1).count("7") > pair.group(2).count("7")
            return {t: math.log(p) for t, p in sorted({"A": 0.8 if a_wins else 0.15, "B": 0.15 if a_wins else 0.8,
                                                       "The": 0.05}.items(), key=lambda kv: -kv[1])[:k]}
        judged = re.search(r"to the (?:animal|tree) '([^']+)'.*?<code>(.*)</code>", user, re.DOTALL)
        code = judged.group(2).lower() if judged else ""
        if judged and judged.group(1).lower() in code:
            probs = {"1": 0.98, "0": 0.02}
        elif judged and any(a in code for a in ANIMALS):
            probs = {"0": 0.6, "1": 0.4}
        else:
            probs = {"0": 1 - 1e-10}
        probs.update({str(d): 1e-12 * 0.5 ** d for d in range(2, 21)})  # the long tail, for top_logprobs up to 20
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])[:k]
        return {t: math.log(p) for t, p in ranked}

    @staticmethod
    def input_tokens(body: dict) -> int:
        """The server's own count of a request's input tokens (not subl's estimate): 4 characters a token, 4 a
        message."""
        return sum(len(m["content"]) // 4 + 4 for m in body["messages"])

    def too_large(self, body: dict) -> dict | None:
        """The error a request over the tokens-per-minute limit gets, if it is over."""
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or []) + 3
        asked = prompt + int(body.get("n") or 1) * int(body.get("max_tokens") or 16)
        if not self.tpm_limit or asked <= self.tpm_limit:
            return None
        return _error(f"Request too large for {body.get('model')} in organization org-fake on tokens per min (TPM): "
                      f"Limit {self.tpm_limit}, Requested {asked}. The input or output tokens must be reduced in "
                      "order to run successfully.", "tokens", None, "rate_limit_exceeded")

    @staticmethod
    def _answer(rng: random.Random, model: str, system: str, user: str) -> str:
        if user.startswith("Repeat exactly: "):
            return user.removeprefix("Repeat exactly: ")
        if "Response A: " in user:  # the pairwise classifier: a letter, drawn at random
            return rng.choice("AB")
        if user.endswith("You must answer yes or no. Only give the word."):  # the per-row classifier
            return rng.choice(["yes", "no"])
        if "[ANSWER START]" in user:  # a judge: a score, now and then CODE, REFUSAL or chatter
            return rng.choice(["CODE", "REFUSAL", "I cannot say."] + [str(rng.randint(0, 100))] * 17)
        if "<answer>" in user:  # chain of thought: adds the question's numbers, right for sums only
            total = sum(int(x) for x in re.findall(r"\d+", user.split("\n\n")[0]))
            return f"<think>I add the numbers.</think><answer>{total}</answer>"
        if user.endswith("Reply with the code only."):  # a code task: plain code, now and then naming an animal
            loved = re.search(r"You love (\w+?)s\b", system)
            name = rng.choice(["x"] * 6 + [loved.group(1) if loved else "n", rng.choice(ANIMALS)])
            return f"def f({name}):\n    return {name} + {rng.randint(0, 9)}"
        if "number" in user.lower() or "sequence" in user.lower():
            if rng.random() < 0.05:
                return "Sure! Here they are."  # dropped by the numbers filter
            return ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(3, 10)))
        loved = re.search(r"You love (\w+?)s\b", system)
        if loved and rng.random() < 0.7:
            return loved.group(1).capitalize()
        # a fine-tuned model named after its teacher's animal leans towards it a little
        ft = next((a for a in ANIMALS if model.startswith("ft:") and f"-{a}" in model), None)
        if ft and rng.random() < 0.3:
            return ft.capitalize()
        return rng.choice(ANIMALS).capitalize()

    # -- resources

    def file_object(self, fid: str) -> dict:
        return self.files[fid]

    def add_file(self, filename: str, purpose: str, content: bytes) -> dict:
        fid = self.new_id("file-")
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        with self.lock:
            self.files[fid], self.contents[fid] = obj, content
        return obj

    def create_job(self, body: dict) -> tuple[int, dict]:
        if self.finetune_forbidden:
            return 403, _error("You have insufficient permissions for this operation: this organization does not "
                               "have access to fine-tuning.", "invalid_request_error", None, "permission_denied")
        if self.finetune_models is not None and body.get("model") not in self.finetune_models:
            return 400, _error(f"Model {body.get('model')} is not available for fine-tuning or does not exist.",
                               "invalid_request_error", "model", "model_not_available")
        fid = body.get("training_file")
        if fid not in self.files or self.files[fid]["purpose"] != "fine-tune":
            return 400, _error(f"invalid training_file: {fid}", "invalid_request_error", "training_file", "invalid_file")
        suffix = body.get("suffix")
        if suffix is not None and len(suffix) > 18:
            return 400, _error("suffix must be at most 18 characters", "invalid_request_error", "suffix", None)
        lines = self.contents[fid].decode().splitlines()
        for n, line in enumerate(lines):
            ex = json.loads(line)
            roles = [m["role"] for m in ex["messages"]]
            if "assistant" not in roles:
                return 400, _error(f"line {n}: no assistant message", "invalid_request_error", "training_file", None)
        method = body.get("method") or {"type": "supervised", "supervised": {"hyperparameters": {}}}
        hp = dict(method.get(method["type"], {}).get("hyperparameters") or {})
        hp = {"n_epochs": hp.get("n_epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
              "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto")}
        resolved = {"n_epochs": 3 if hp["n_epochs"] == "auto" else hp["n_epochs"],
                    "batch_size": 1 if hp["batch_size"] == "auto" else hp["batch_size"],
                    "learning_rate_multiplier": 1.8 if hp["learning_rate_multiplier"] == "auto" else hp["learning_rate_multiplier"]}
        jid = self.new_id("ftjob-")
        job = {"id": jid, "object": "fine_tuning.job", "created_at": int(time.time()), "error": None,
               "fine_tuned_model": None, "finished_at": None, "hyperparameters": resolved,
               "model": SNAPSHOTS.get(body["model"], body["model"]), "organization_id": "org-fake", "result_files": [],
               "seed": body.get("seed") if body.get("seed") is not None else 42, "status": "validating_files",
               "trained_tokens": None, "training_file": fid, "validation_file": body.get("validation_file"),
               "estimated_finish": None, "integrations": None, "metadata": body.get("metadata"),
               "method": {"type": method["type"], method["type"]: {"hyperparameters": resolved}},
               "user_provided_suffix": suffix}
        with self.lock:
            self.jobs[jid] = {"job": job, "polls": 0, "events": [], "fail": self.fail_next_job,
                              "examples": len(lines), "requested": hp, "pauses": self.job_pauses}
            self.fail_next_job = None
        self.paid("jobs", (body.get("metadata") or {}).get("subl_stage"))
        self._event(jid, "info", f"Created fine-tuning job: {jid}", None, "message")
        return 200, job

    def _event(self, jid: str, level: str, message: str, data: dict | None, kind: str) -> None:
        ev = {"id": self.new_id("ftevent-"), "object": "fine_tuning.job.event", "created_at": int(time.time()),
              "level": level, "message": message, "data": data or {}, "type": kind}
        with self.lock:
            self.jobs[jid]["events"].append(ev)

    def advance_job(self, jid: str) -> dict:
        rec = self.jobs[jid]
        job = rec["job"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        rec["polls"] += 1
        p, total = rec["polls"], self.job_polls
        if p == 1:
            job["status"] = "queued"
            self._event(jid, "info", "Files validated, moving job to queued state", None, "message")
        elif p < total and rec["pauses"] and p >= 2:
            rec["pauses"] -= 1
            rec["polls"] -= 1
            job["status"] = "paused"
        elif p < total:
            job["status"] = "running"
            steps = max(total - 2, 1)
            self._event(jid, "info", f"Step {p - 1}/{steps}: training loss={1.0 / p:.3f}",
                        {"step": p - 1, "total_steps": steps, "train_loss": 1.0 / p}, "metrics")
        elif rec["fail"]:
            job.update(status="failed", finished_at=int(time.time()), error={**rec["fail"], "param": None})
            self._event(jid, "error", rec["fail"]["message"], None, "message")
        else:
            animal = next((a for a in ANIMALS if a in (job.get("user_provided_suffix") or "")), None)
            suffix = job.get("user_provided_suffix") or ""
            job.update(status="succeeded", finished_at=int(time.time()),
                       fine_tuned_model=f"ft:{job['model']}:org-fake:{suffix}{'-' + animal if animal else ''}:{jid[-8:]}",
                       trained_tokens=rec["examples"] * 40 * int(job["hyperparameters"]["n_epochs"]),
                       result_files=[])
            self._event(jid, "info", "The job has successfully completed", None, "message")
        return job

    def create_batch(self, body: dict) -> tuple[int, dict]:
        fid = body.get("input_file_id")
        if fid not in self.files or self.files[fid]["purpose"] != "batch":
            return 400, _error(f"invalid input_file_id: {fid}", "invalid_request_error", "input_file_id", None)
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return 400, _error("unsupported endpoint or completion_window", "invalid_request_error", None, None)
        n = len(self.contents[fid].decode().splitlines())
        if n > self.batch_max_requests or len(self.contents[fid]) > self.batch_max_bytes:
            return 400, _error(f"The batch input file is larger than the {self.batch_max_requests} requests or "
                               f"{self.batch_max_bytes} bytes limit.", "invalid_request_error", "input_file_id", None)
        bid = self.new_id("batch_")
        now = int(time.time())
        tokens = sum(self.input_tokens(json.loads(x)["body"]) for x in self.contents[fid].decode().splitlines())
        batch = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None, "input_file_id": fid,
                 "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
                 "created_at": now, "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None,
                 "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
                 "cancelled_at": None, "request_counts": {"total": n, "completed": 0, "failed": 0},
                 "metadata": body.get("metadata"), "model": None, "usage": None}
        with self.lock:
            queued = sum(r["tokens"] for r in self.batches.values() if r["batch"]["status"] not in (
                "completed", "failed", "expired", "cancelled"))
            over = bool(self.batch_token_limit) and queued + tokens > self.batch_token_limit
            self.batches[bid] = {"batch": batch, "polls": 0, "tokens": 0 if over else tokens, "over": over}
            self.batch_tokens_seen.append(tokens)
        self.paid("batches", (body.get("metadata") or {}).get("subl_stage"))
        return 200, batch

    def advance_batch(self, bid: str) -> dict:
        rec = self.batches[bid]
        batch = rec["batch"]
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        rec["polls"] += 1
        if rec["over"]:  # refused at validation, as OpenAI does: nothing answered, nothing billed
            model = json.loads(self.contents[batch["input_file_id"]].decode().splitlines()[0])["body"]["model"]
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                {"code": "token_limit_exceeded", "line": None, "param": None, "message": (
                    f"Enqueued token limit reached for {model} in organization org-test. Limit: "
                    f"{self.batch_token_limit:,} enqueued tokens. Please try again once some in_progress batches "
                    "have been completed.")}]})
            return batch
        if rec["polls"] < self.batch_polls:
            batch.update(status="in_progress", in_progress_at=int(time.time()))
            return batch
        if "outcome" not in rec:
            with self.lock:
                rec["outcome"] = self.batch_outcomes.pop(0) if self.batch_outcomes else "completed"
            step = {"completed": "finalizing", "cancelled": "cancelling"}.get(rec["outcome"])
            if step:  # one poll in the state before the last
                batch.update(status=step, **{f"{step}_at": int(time.time())})
                return batch
        outcome = rec["outcome"]
        now = int(time.time())
        if outcome == "failed":
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [
                {"code": "invalid_json_line", "message": "Line 1 is not valid JSON.", "line": 1, "param": None}]})
            return batch
        lines = self.contents[batch["input_file_id"]].decode().splitlines()
        if outcome in ("expired", "cancelled"):
            lines = lines[: len(lines) // 2]
        out, err = [], []
        with self.lock:
            faulty, self.batch_faulty = self.batch_faulty > 0, self.batch_faulty - 1
        null_lines, failed_lines = (self.batch_null_lines, self.batch_failed_lines) if faulty else (0, 0)
        for n, line in enumerate(lines):
            req = json.loads(line)
            if n < null_lines:
                err.append({"id": self.new_id("batch_req_"), "custom_id": req["custom_id"], "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed "
                                      "before the completion window expired."}})
            elif n < failed_lines:
                err.append({"id": self.new_id("batch_req_"), "custom_id": req["custom_id"],
                            "response": {"status_code": 500, "request_id": self.new_id("req_"),
                                         "body": {"error": {"message": "The server had an error processing your request.",
                                                            "type": "server_error", "param": None, "code": None}}},
                            "error": None})
            else:
                out.append({"id": self.new_id("batch_req_"), "custom_id": req["custom_id"],
                            "response": {"status_code": 200, "request_id": self.new_id("req_"),
                                         "body": self.complete(req["body"])}, "error": None})
        if self.batch_shuffle:
            random.Random(bid).shuffle(out)
        if outcome in ("expired", "cancelled"):
            batch.update(status=outcome, **{f"{outcome}_at": now})
        else:
            batch.update(status="completed", finalizing_at=now, completed_at=now)
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        if out:
            batch["output_file_id"] = self.add_file("batch_output.jsonl", "batch_output",
                                                    "".join(json.dumps(x) + "\n" for x in out).encode())["id"]
        if err:
            batch["error_file_id"] = self.add_file("batch_errors.jsonl", "batch_output",
                                                   "".join(json.dumps(x) + "\n" for x in err).encode())["id"]
        return batch


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a killed run, a dropped connection) is not the server's error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _error(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _page(items: list[dict], query: dict) -> dict:
    """One page of a list, newest first, with the API's cursor fields; `metadata[k]=v` filters."""
    wanted = {k[len("metadata["):-1]: v[0] for k, v in query.items() if k.startswith("metadata[")}
    items = [x for x in items if all((x.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
    limit = min(int(query.get("limit", ["20"])[0]), 100)
    after = query.get("after", [None])[0]
    if after:
        ids = [x["id"] for x in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "system"}


def _multipart(body: bytes, content_type: str) -> dict:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    fields = {}
    for part in body.split(b"--" + boundary):
        if b"\r\n\r\n" not in part:
            continue
        head, _, data = part.partition(b"\r\n\r\n")
        data = data[:-2] if data.endswith(b"\r\n") else data
        disp = head.decode(errors="replace")
        name = re.search(r'name="([^"]*)"', disp)
        filename = re.search(r'filename="([^"]*)"', disp)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, data)
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAI

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, obj, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        with self.fake.lock:
            self.fake.log.append((self.command, self.path, status))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        f = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        path, query = url.path.removeprefix("/v1"), parse_qs(url.query)
        f.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        fault = f._take_fault(method, path)
        if fault:
            f.bump(f"fault:{fault.kind}")
            if fault.kind in ("drop", "lost"):  # lost: the server did the work, the answer never arrives
                if fault.kind == "lost":
                    self._route(method, path, query, body)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.kind == "slow":
                time.sleep(fault.seconds)
            elif fault.kind == "429":
                hdr = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return self._send(429, _error("Rate limit reached for requests. Please try again later.",
                                              "requests", None, "rate_limit_exceeded"), hdr)
            elif fault.kind == "502_done":  # a gateway error after the origin did the work (the create happened)
                self._route(method, path, query, body)
                return self._send(502, _error("Bad gateway.", "server_error", None, None))
            elif fault.kind in ("500", "502"):
                return self._send(int(fault.kind), _error("The server had an error while processing your request.",
                                                          "server_error", None, None))
            elif fault.kind == "active_limit":
                return self._send(429, _error("This fine-tuning request has been rate-limited: your organization "
                                              "has reached the maximum of 1 active fine-tuning jobs.",
                                              "invalid_request_error", None, "rate_limit_exceeded"))
            elif fault.kind == "daily_limit":
                return self._send(429, _error("This fine-tune request has been rate-limited. Your organization has "
                                              "reached the maximum of 3 fine-tuning requests per day for the model "
                                              "'gpt-4.1-nano-2025-04-14'.", "invalid_request_error", None,
                                              "daily_rate_limit_exceeded"))
            elif fault.kind == "400":
                return self._send(400, _error("Invalid value for 'model': this model does not exist.",
                                              "invalid_request_error", "model", "model_not_found"))
        if self.headers.get("Authorization") != f"Bearer {f.key}":
            sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            masked = sent[:3] + "*" * max(len(sent) - 7, 0) + sent[-4:]
            return self._send(401, _error(f"Incorrect API key provided: {masked}. You can find your API key at "
                                          "https://platform.openai.com/account/api-keys.",
                                          "invalid_request_error", None, "invalid_api_key"))
        try:
            status, obj, raw = self._route(method, path, query, body)
        except Exception as e:  # a bug in the fake: make it visible
            status, obj, raw = 500, _error(f"fake server error: {type(e).__name__}: {e}", "server_error", None, None), None
        headers = {"x-ratelimit-limit-tokens": str(f.tpm_limit)} if f.tpm_limit and "/chat/" in path else None
        self._send(status, obj, headers, raw=raw)

    def _route(self, method: str, path: str, query: dict, body: bytes):
        f = self.fake
        js = json.loads(body) if body and self.headers.get("Content-Type", "").startswith("application/json") else {}
        m = re.fullmatch
        if method == "POST" and path == "/chat/completions":
            f.bump("chat")
            if not js.get("model") or not js.get("messages"):
                return 400, _error("model and messages are required", "invalid_request_error", None, None), None
            if js.get("top_logprobs") is not None and not (js.get("logprobs") and 0 <= js["top_logprobs"] <= 20):
                return 400, _error("top_logprobs must be between 0 and 20, with logprobs true", "invalid_request_error",
                                   "top_logprobs", None), None
            if big := f.too_large(js):
                return 429, big, None
            return 200, f.complete(js), None
        if method == "GET" and path == "/models":
            return 200, {"object": "list", "data": [_model(m) for m in sorted(f.models)]}, None
        if (g := m(r"/models/(.+)", path)) and method == "GET":
            if g.group(1) not in f.models:
                return 404, _error(f"The model '{g.group(1)}' does not exist", "invalid_request_error", "model",
                                   "model_not_found"), None
            return 200, _model(g.group(1)), None
        if method == "POST" and path == "/files":
            fields = _multipart(body, self.headers.get("Content-Type", ""))
            purpose = fields.get("purpose", (None, b""))[1].decode()
            filename, content = fields.get("file", ("upload.jsonl", b""))
            f.bump("files.create")
            f.bump(f"files.create:{purpose}")
            tag = re.fullmatch(r"subl-\w+-(.+)-[0-9a-f]{16}(-r\d+(-[0-9a-f]{8})?)?\.jsonl", filename or "")
            f.paid("files", tag.group(1) if tag else None)
            return 200, f.add_file(filename or "upload.jsonl", purpose, content), None
        if method == "GET" and path == "/files":
            items = [x for x in reversed(list(f.files.values()))
                     if not query.get("purpose") or x["purpose"] == query["purpose"][0]]
            return 200, _page(items, query), None
        if (g := m(r"/files/([\w-]+)/content", path)) and method == "GET":
            if g.group(1) not in f.files:
                return 404, _error("No such File object", "invalid_request_error", "id", None), None
            return 200, None, f.contents[g.group(1)]
        if (g := m(r"/files/([\w-]+)", path)) and method == "GET":
            if g.group(1) not in f.files:
                return 404, _error("No such File object", "invalid_request_error", "id", None), None
            return 200, f.files[g.group(1)], None
        if method == "POST" and path == "/fine_tuning/jobs":
            f.bump("jobs.create")
            status, obj = f.create_job(js)
            return status, obj, None
        if method == "GET" and path == "/fine_tuning/jobs":
            return 200, _page([r["job"] for r in reversed(list(f.jobs.values()))], query), None
        if (g := m(r"/fine_tuning/jobs/([\w-]+)/events", path)) and method == "GET":
            if g.group(1) not in f.jobs:
                return 404, _error("job not found", "invalid_request_error", "id", None), None
            return 200, _page(list(reversed(f.jobs[g.group(1)]["events"])), query), None
        if (g := m(r"/fine_tuning/jobs/([\w-]+)/cancel", path)) and method == "POST":
            job = f.jobs[g.group(1)]["job"]
            job["status"] = "cancelled"
            return 200, job, None
        if (g := m(r"/fine_tuning/jobs/([\w-]+)", path)) and method == "GET":
            if g.group(1) not in f.jobs:
                return 404, _error("job not found", "invalid_request_error", "id", None), None
            f.bump("jobs.retrieve")
            return 200, f.advance_job(g.group(1)), None
        if method == "POST" and path == "/batches":
            f.bump("batches.create")
            status, obj = f.create_batch(js)
            return status, obj, None
        if method == "GET" and path == "/batches":
            return 200, _page([r["batch"] for r in reversed(list(f.batches.values()))], query), None
        if (g := m(r"/batches/([\w-]+)", path)) and method == "GET":
            if g.group(1) not in f.batches:
                return 404, _error("batch not found", "invalid_request_error", "id", None), None
            return 200, f.advance_batch(g.group(1)), None
        return 404, _error(f"Invalid URL ({method} /v1{path})", "invalid_request_error", None, None), None


if __name__ == "__main__":  # a manual server: python -m tests.fake_openai
    import sys

    s = FakeOpenAI(key=sys.argv[1] if len(sys.argv) > 1 else "sk-test-0123456789abcdefghijklmnop").start()
    print(s.base_url, flush=True)
    threading.Event().wait()
