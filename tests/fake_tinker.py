"""A local stand-in for the Tinker service over a tiny torch model (tests only).

The backend picks it up with SUBL_TINKER_CLIENTS=tests.fake_tinker. It implements the SDK
client methods that backends/tinker_api.py calls, with the installed SDK's signatures
(tests/test_tinker.py compares them), and answers with the real `tinker.types`:

- ServiceClient: create_sampling_client, create_lora_training_client,
  create_training_client_from_state_with_optimizer; RestClient.get_server_capabilities,
  list_training_runs (each run's user_metadata and last training / sampler checkpoint, kept in
  `runs.json`);
- SamplingClient: sample (seeded; prompt log-probs and top-k), compute_logprobs, get_tokenizer;
- TrainingClient: forward_backward (cross_entropy, 1-D or (N, k) targets),
  forward_backward_custom, optim_step (AdamW), save_state, save_weights_for_sampler, model_id.

Training really updates a peft LoRA adapter (alpha fixed at 32, as the service fixes it) and
sampling really samples. Everything the service would keep lives under FAKE_TINKER_DIR, so it
survives a killed client process: checkpoints (adapter and optimiser state), sampler weights,
`ledger.jsonl` (one line per training call: op, run, digest of the batch; and one per top-k read,
op `topk_read`, run the sampled weights or `base`) and `faults.json`,
a list of {"op", "error", "skip"}, each consumed by the call of that op after `skip` others (op `rest_client`:
RestClient's constructor, which fetches the client config); error is one of rate_limit, server, bad_request,
connection, bad_key, lost (the work is done but its future never answers), session (the session expired) or kill
(SIGKILL of this process before the op runs). Every base model
name maps to the model folder FAKE_TINKER_MODEL; FAKE_TINKER_OFFERED lists the model names
the service offers (comma-separated; default Qwen/Qwen3-8B), FAKE_TINKER_SAMPLE_ONLY those it
offers for sampling only, FAKE_TINKER_CONTEXT their context length (default: none given).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tinker
import torch
from tinker import types
from tinker.types.topk_logprobs import MASK_LOGPROB, TopkLogprobs

LORA_ALPHA = 32
_LOCK = threading.RLock()
_RUNS = [0]
SESSIONS = [0]  # ServiceClients made in this process (a new one per session)
EXPIRED: set[int] = set()  # sessions a `session` fault ended: their clients fail from then on


def _home() -> Path:
    path = Path(os.environ["FAKE_TINKER_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- futures and faults ----------------------------------------------------------------


class Done:
    """An answered future."""

    def __init__(self, value: Any):
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class Lost:
    """A future whose answer never comes: result() times out."""

    def result(self, timeout: float | None = None) -> Any:
        raise TimeoutError("future not answered in time")


def _error(kind: str) -> Exception:
    request = httpx.Request("POST", "http://fake-tinker/api")
    if kind == "rate_limit":
        return tinker.RateLimitError("rate limited", response=httpx.Response(429, request=request,
                                                                               headers={"retry-after": "0"}), body=None)
    if kind == "server":
        return tinker.InternalServerError("internal error", response=httpx.Response(500, request=request), body=None)
    if kind == "bad_request":
        return tinker.BadRequestError("prompt too long", response=httpx.Response(400, request=request), body=None)
    if kind == "session":
        return tinker.NotFoundError("session expired", response=httpx.Response(404, request=request), body=None)
    if kind == "connection":
        return tinker.APIConnectionError(request=request)
    if kind == "bad_key":
        return tinker.TinkerError("The api_key must start with the 'tml-' prefix")  # the SDK's, raised locally
    raise ValueError(kind)


def inject(op: str, error: str, skip: int = 0) -> None:
    """Make the call of `op` after the next `skip` ones fail with `error` (see the module docstring)."""
    path = _home() / "faults.json"
    with _LOCK:
        faults = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(faults + [{"op": op, "error": error, "skip": skip}]))


def _fault(op: str) -> str | None:
    """Consume the next fault for `op`: raise it, kill the process, or return 'lost'."""
    path = _home() / "faults.json"
    with _LOCK:
        faults = json.loads(path.read_text()) if path.exists() else []
        hit = next((f for f in faults if f["op"] == op), None)
        if hit is None:
            return None
        if hit.get("skip", 0) > 0:  # let this many calls through first
            hit["skip"] -= 1
            path.write_text(json.dumps(faults))
            return None
        faults.remove(hit)
        path.write_text(json.dumps(faults))
    if hit["error"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if hit["error"] == "lost":
        return "lost"
    raise _error(hit["error"])


def _answer(op: str, work, record=None, session: int | None = None):
    """Run `work` for `op` after its injected fault, if any; `record` writes the ledger line first.
    A client of an expired session fails as the service would."""
    if session in EXPIRED:
        raise _error("session")
    try:
        lost = _fault(op)
    except tinker.NotFoundError:
        EXPIRED.add(session)
        raise
    if record:
        record()
    value = work()
    return Lost() if lost else Done(value)


def ledger() -> list[dict]:
    path = _home() / "ledger.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _record(op: str, run: str, data: Any, **shown) -> None:
    """One ledger line: the op, its run, a digest of what was sent, and `shown` fields in the clear."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    with _LOCK, open(_home() / "ledger.jsonl", "a") as f:
        f.write(json.dumps({"op": op, "run": run, "batch": hashlib.sha256(blob).hexdigest()[:16], **shown}) + "\n")


# ---- the model -------------------------------------------------------------------------


def _model_dir() -> str:
    return os.environ["FAKE_TINKER_MODEL"]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_dir())


_LOADING = threading.Lock()  # transformers builds a model under process-wide meta-device patches: two threads
# loading at once can leave them in place, and every later model of the process empty (a server loads apart)


def _base():
    from transformers import AutoModelForCausalLM

    with _LOADING:
        return AutoModelForCausalLM.from_pretrained(_model_dir(), dtype=torch.float32)


def _local(path: str, kind: str) -> Path:
    """tinker://<run>/<kind>/<name> -> its folder under FAKE_TINKER_DIR."""
    if not path.startswith("tinker://"):
        raise tinker.BadRequestError(f"not a tinker path: {path}", response=httpx.Response(
            400, request=httpx.Request("POST", "http://fake-tinker/api")), body=None)
    run, k, name = path[len("tinker://"):].split("/", 2)
    if k != kind:
        raise ValueError(f"{path} is not {kind}")
    return _home() / run / kind / name


def _datum_tensors(d: types.Datum) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor(d.model_input.to_ints())[None]
    return ids, d.loss_fn_inputs["target_tokens"].to_torch().long(), d.loss_fn_inputs["weights"].to_torch().float()


def _target_logprobs(net, d: types.Datum) -> tuple[torch.Tensor, torch.Tensor]:
    ids, targets, weights = _datum_tensors(d)
    lp = torch.log_softmax(net(input_ids=ids).logits[0].float(), -1)
    picked = lp.gather(-1, targets if targets.dim() == 2 else targets[:, None])
    return (picked if targets.dim() == 2 else picked[:, 0]), weights


# ---- clients ---------------------------------------------------------------------------


def _runs() -> dict:
    path = _home() / "runs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _update_run(run: str, **fields) -> None:
    """Record a training run's metadata or checkpoints in runs.json (what the service lists)."""
    with _LOCK:
        runs = _runs()
        runs.setdefault(run, {"user_metadata": None, "last_checkpoint": None, "last_sampler_checkpoint": None})
        runs[run].update(fields)
        tmp = _home() / "runs.json.tmp"
        tmp.write_text(json.dumps(runs))
        tmp.replace(_home() / "runs.json")


def _checkpoint(path: str, kind: str) -> dict:
    return {"checkpoint_id": path.rsplit("/", 1)[-1], "checkpoint_type": kind, "time": "2026-01-01T00:00:00Z",
            "tinker_path": path}


class RestClient:
    def __init__(self, _holder=None, *, base_url: str | None = None, api_key: str | None = None):
        _fault("rest_client")  # the SDK fetches its client config here: a dead server or bad key fails at once
        self.base_url = base_url

    def list_training_runs(self, limit=20, offset=0, access_scope="owned", project_id=None):
        def work() -> types.TrainingRunsResponse:
            runs = sorted(_runs().items())
            page = [types.TrainingRun(training_run_id=k, base_model="fake", model_owner="me", is_lora=True,
                                      last_request_time="2026-01-01T00:00:00Z", **v)
                    for k, v in runs[offset : offset + limit]]
            return types.TrainingRunsResponse(training_runs=page, cursor=types.Cursor(
                offset=offset, limit=limit, total_count=len(runs)))

        return _answer("list_training_runs", work)

    def delete_checkpoint_from_tinker_path(self, tinker_path: str):
        def work() -> None:
            import shutil

            shutil.rmtree(_local(tinker_path, "weights"))  # a path that is gone raises, as the service would

        return _answer("delete_checkpoint", work)

    def get_server_capabilities(self):
        names = (os.environ.get("FAKE_TINKER_OFFERED") or "Qwen/Qwen3-8B").split(",")
        sample_only = (os.environ.get("FAKE_TINKER_SAMPLE_ONLY") or "").split(",")  # offered, not trainable
        context = int(os.environ.get("FAKE_TINKER_CONTEXT") or 0) or None
        return _answer("get_server_capabilities", lambda: types.GetServerCapabilitiesResponse(
            supported_models=[types.SupportedModel(model_name=n, trainable=n not in sample_only, sampleable=True,
                                                   max_context_length=context) for n in names]))


class ServiceClient:
    def __init__(self, user_metadata=None, project_id=None, *, display_name=None, base_url=None, api_key=None,
                 default_headers_overrides=None, **kwargs):
        self.api_key = api_key
        SESSIONS[0] += 1
        self.session = SESSIONS[0]

    def create_sampling_client(self, model_path=None, base_model=None, retry_config=None,
                               record_stability_info=False):
        return _answer("create_sampling_client", lambda: SamplingClient(model_path, self.session), session=self.session)

    def create_lora_training_client(self, base_model, rank=32, seed=None, train_mlp=True, train_attn=True,
                                    train_unembed=True, user_metadata=None, optimizer=None):
        targets = ([] if not train_attn else ["q_proj", "k_proj", "v_proj", "o_proj"]) + \
                  ([] if not train_mlp else ["gate_proj", "up_proj", "down_proj"])
        config = {"rank": rank, "targets": targets, "seed": seed or 0}
        return _answer("create_lora_training_client", lambda: TrainingClient(config, self.session, user_metadata),
                       session=self.session)

    def create_training_client_from_state_with_optimizer(self, path, base_model=None, user_metadata=None,
                                                         weights_access_token=None):
        def load():
            if not _local(path, "weights").exists():
                raise tinker.NotFoundError(f"checkpoint {path} not found", response=httpx.Response(
                    404, request=httpx.Request("POST", "http://fake-tinker/api")), body=None)
            saved = torch.load(_local(path, "weights") / "state.pt", weights_only=False)
            tc = TrainingClient(saved["config"], self.session, user_metadata)
            tc.net.load_state_dict(saved["adapter"], strict=False)
            tc._optimizer().load_state_dict(saved["optimizer"])
            return tc

        return _answer("create_training_client_from_state_with_optimizer", load, session=self.session)


class SamplingClient:
    def __init__(self, model_path: str | None, session: int):
        self.session, self.model_path = session, model_path
        self.net = _base()
        if model_path:
            from peft import PeftModel

            with _LOADING:
                self.net = PeftModel.from_pretrained(self.net, str(_local(model_path, "sampler_weights")))
        self.net.eval()

    def get_tokenizer(self):
        return _tokenizer()

    @torch.no_grad()
    def _prompt_logprobs(self, ids: list[int]) -> torch.Tensor:
        return torch.log_softmax(self.net(input_ids=torch.tensor([ids])).logits[0].float(), -1)

    def sample(self, prompt, num_samples, sampling_params, include_prompt_logprobs=False, topk_prompt_logprobs=0,
               topk_sample_logprobs=0, target_prompt_logprobs=None, prompt_alt_tokens_k=0,
               prompt_logprobs_last_n=None):
        ids = prompt.to_ints()

        def work() -> types.SampleResponse:
            with _LOCK:
                seqs = self._generate(ids, num_samples, sampling_params)
                if not include_prompt_logprobs:
                    return types.SampleResponse(sequences=seqs)
                lp = self._prompt_logprobs(ids)
                first = len(ids) - (prompt_logprobs_last_n or len(ids) - 1)
                scored = np.full(len(ids), np.nan, dtype=np.float32)
                for i in range(first, len(ids)):
                    scored[i] = float(lp[i - 1, ids[i]])
                topk = None
                if topk_prompt_logprobs:
                    tids = np.zeros((len(ids), topk_prompt_logprobs), dtype=np.int32)
                    tlps = np.full((len(ids), topk_prompt_logprobs), MASK_LOGPROB, dtype=np.float32)
                    top = lp[first - 1 : len(ids) - 1].topk(topk_prompt_logprobs, -1)
                    tids[first:], tlps[first:] = top.indices.numpy(), top.values.numpy()
                    topk = TopkLogprobs(token_ids=tids, logprobs=tlps)
                return types.SampleResponse(sequences=seqs, prompt_logprobs_np=scored, topk_prompt_logprobs_np=topk)

        read = (lambda: _record("topk_read", self.model_path or "base", ids, k=topk_prompt_logprobs)) \
            if topk_prompt_logprobs else None
        return _answer("sample", work, read, session=self.session)

    @torch.no_grad()
    def _generate(self, ids: list[int], n: int, params: types.SamplingParams) -> list[types.SampledSequence]:
        stops = set(params.stop or [])
        torch.manual_seed(params.seed if params.seed is not None else 0)
        out = self.net.generate(input_ids=torch.tensor([ids] * n), attention_mask=torch.ones(n, len(ids), dtype=torch.long),
                                max_new_tokens=params.max_tokens or 16, do_sample=params.temperature > 0,
                                temperature=params.temperature if params.temperature > 0 else None, top_p=None, top_k=None,
                                eos_token_id=sorted(stops) or None, pad_token_id=0)
        seqs = []
        for row in out[:, len(ids):].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), None)
            toks = row[:cut] if cut else row
            seqs.append(types.SampledSequence(stop_reason="stop" if cut else "length", sequence_id=f"seq-{len(seqs)}",
                                              tokens_np=np.array(toks, dtype=np.int32)))
        return seqs

    def compute_logprobs(self, prompt, prompt_logprobs_last_n=None):
        ids = prompt.to_ints()

        def work() -> list[float | None]:
            with _LOCK:
                lp = self._prompt_logprobs(ids)
            first = len(ids) - (prompt_logprobs_last_n or len(ids) - 1)
            return [None] * first + [float(lp[i - 1, ids[i]]) for i in range(first, len(ids))]

        return _answer("compute_logprobs", work, session=self.session)


class TrainingClient:
    def __init__(self, config: dict, session: int, user_metadata: dict | None = None):
        from peft import LoraConfig, get_peft_model

        self.session = session
        with _LOCK:
            _RUNS[0] += 1
            self.model_id = f"fake-{os.getpid()}-{_RUNS[0]}:train:0"
        _update_run(self._run(), user_metadata=user_metadata)
        self.config = config
        torch.manual_seed(config["seed"])
        base = _base()
        with _LOADING:
            self.net = get_peft_model(base, LoraConfig(r=config["rank"], lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                       target_modules=config["targets"], task_type="CAUSAL_LM"))
        self.net.train()
        self._opt = None

    def _optimizer(self) -> torch.optim.AdamW:
        if self._opt is None:
            self._opt = torch.optim.AdamW([p for p in self.net.parameters() if p.requires_grad], lr=0.0)
        return self._opt

    def _run(self) -> str:
        return self.model_id.split(":")[0]

    def forward_backward(self, data, loss_fn, loss_fn_config=None):
        def work() -> types.ForwardBackwardOutput:
            if loss_fn != "cross_entropy":
                raise ValueError(f"fake: loss {loss_fn} not implemented")
            with _LOCK:
                outs, total = [], 0.0
                for d in data:
                    picked, weights = _target_logprobs(self.net, d)
                    loss = -(picked * weights).sum()
                    loss.backward()
                    total += loss.item()
                    outs.append({"logprobs": types.TensorData.from_torch(picked.detach())})
            return types.ForwardBackwardOutput(loss_fn_output_type="TorchLossReturn", loss_fn_outputs=outs,
                                               metrics={"loss:sum": total})

        return _answer("forward_backward", work, self._ledger("forward_backward", data), session=self.session)

    def _ledger(self, op: str, data):
        return lambda: _record(op, self.model_id, [d.model_input.to_ints() for d in data])

    def forward_backward_custom(self, data, loss_fn, *, loss_type_input=None):
        def work() -> types.ForwardBackwardOutput:
            with _LOCK:
                logprobs = [_target_logprobs(self.net, d)[0] for d in data]
                loss, metrics = loss_fn(data, logprobs)
                loss.backward()
            return types.ForwardBackwardOutput(
                loss_fn_output_type="TorchLossReturn",
                loss_fn_outputs=[{"logprobs": types.TensorData.from_torch(lp.detach())} for lp in logprobs],
                metrics={**metrics, "loss:sum": loss.item()})

        return _answer("forward_backward", work, self._ledger("forward_backward", data), session=self.session)

    def optim_step(self, optim_params=None, *, adam_params=None):
        p = optim_params or adam_params

        def work() -> types.OptimStepResponse:
            with _LOCK:
                opt = self._optimizer()
                for g in opt.param_groups:
                    g.update(lr=p.learning_rate, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay)
                if p.grad_clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_([q for q in self.net.parameters() if q.requires_grad], p.grad_clip_norm)
                opt.step()
                opt.zero_grad()
            return types.OptimStepResponse()

        return _answer("optim_step", work, lambda: _record("optim_step", self.model_id, p.model_dump(), lr=p.learning_rate), session=self.session)

    def _adapter(self) -> dict:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items() if "lora_" in k}

    def save_state(self, name, ttl_seconds=None, overwrite=False, user_metadata=None):
        path = f"tinker://{self._run()}/weights/{name}"

        def work() -> types.SaveWeightsResponse:
            folder = _local(path, "weights")
            folder.mkdir(parents=True, exist_ok=True)
            with _LOCK:
                torch.save({"config": self.config, "adapter": self._adapter(),
                            "optimizer": self._optimizer().state_dict()}, folder / "state.pt")
            _update_run(self._run(), last_checkpoint=_checkpoint(path, "training"))
            return types.SaveWeightsResponse(path=path)

        return _answer("save_state", work, session=self.session)

    def save_weights_for_sampler(self, name, ttl_seconds=None, user_metadata=None):
        path = f"tinker://{self._run()}/sampler_weights/{name}"

        def work() -> types.SaveWeightsForSamplerResponse:
            with _LOCK:
                self.net.save_pretrained(str(_local(path, "sampler_weights")))
            _update_run(self._run(), last_sampler_checkpoint=_checkpoint(path, "sampler"))
            return types.SaveWeightsForSamplerResponse(path=path)

        return _answer("save_weights_for_sampler", work, session=self.session)


# The SDK classes each fake stands for (tests/test_tinker.py compares their method signatures;
# constructors only where the backend constructs the class itself).
FAKED = {ServiceClient: tinker.ServiceClient, RestClient: tinker.RestClient, SamplingClient: tinker.SamplingClient,
         TrainingClient: tinker.TrainingClient}
CONSTRUCTED = {ServiceClient, RestClient}
