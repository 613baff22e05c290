"""The Ray executor: each stage not done yet becomes a Ray task, submitted as soon as the stages it reads
are done, and runs on whichever node has room.

Workers build stages with runner.execute.run_stage into the same store, so --outputs must be a path every
node sees: the same keys, bytes and locks as a local run. A worker that dies is retried by Ray
(MAX_RETRIES); its flock died with it, and the retry resumes from the stage's partial folder. A stage
with a local model takes a GPU when its key names CUDA (device cuda, or auto resolved on a GPU driver), else a
CPU; a stage whose models are all hosted only waits on its provider, so it takes no CPU and is capped
per backend by parallel_stages, as in the local executor. Only this module imports Ray."""
from __future__ import annotations

import hashlib
import os
import platform
import signal
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from runner.errors import UserError
from runner.execute import HOSTED_SLOTS, hosted_backend, run_stage
from runner.identity import text_sha256
from runner.stages import Stage
from runner.store import Store

VISIBLE_WAIT_S = 120.0  # how long a stage built on a node may take to show in the driver's view of the store
MAX_RETRIES = 3  # attempts after a worker or node dies; a stage's own exception is not retried
# kinds that may compute on a GPU (mnist and theorem run on the CPU whatever the runtime's device)
MODEL_KINDS = frozenset({"generate", "score", "rewrite", "answers", "probe", "mcq", "icl", "classifier", "teacher",
                         "soft_labels", "finetune", "theorem-lm"})
CRASH_ENV = "SUBL_RAY_CRASH_ONCE"  # tests: a stage label whose first attempt kills its worker at its first step
CODE_ROOT = str(Path(__file__).resolve().parents[1])  # workers import this subl (where the nodes see it)


def ray_module():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'subl[ray]'") from None
    return ray


def endpoint_env() -> dict[str, str]:
    """The hosted endpoints as the driver resolves them (its variable, else the SDK's default), set on every
    worker: a backend without base_url is keyed by the driver's endpoint, so a worker must not pick its own."""
    from runner.core import DEFAULT_BASE_URL, TINKER_BASE_URL

    return {"OPENAI_BASE_URL": os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            "TINKER_BASE_URL": os.environ.get("TINKER_BASE_URL") or TINKER_BASE_URL}


@contextmanager
def cluster(address: str | None, cpus: int | None) -> Iterator[dict[str, float]]:
    """Connect to the Ray cluster at `address` (auto, ray://host:10001), or start a local instance with
    `cpus` CPUs (default: all); yield its resources; disconnect (stopping a local instance) at the end."""
    ray = ray_module()
    env = {"PYTHONPATH": os.pathsep.join(p for p in (CODE_ROOT, os.environ.get("PYTHONPATH")) if p),
           **endpoint_env()}
    if os.environ.get(CRASH_ENV):
        env[CRASH_ENV] = os.environ[CRASH_ENV]
    kw = dict(runtime_env={"env_vars": env}, log_to_driver=False, logging_level="WARNING")
    try:
        if address:
            reachable(address)
            ray.init(address=address, **kw)
        else:  # "local": a new instance even with RAY_ADDRESS set or a `ray start` cluster on this machine
            ray.init(address="local", num_cpus=cpus or os.cpu_count(), include_dashboard=False, **kw)
    except (ConnectionError, ValueError) as e:  # ValueError: a malformed address, ray:// without ray[client]
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--address {address}: no Ray cluster there ({first})" if address
                        else f"cannot start a local Ray instance ({first})") from None
    try:
        yield {k: float(v) for k, v in sorted(ray.cluster_resources().items()) if not k.startswith("node:")}
    finally:
        ray.shutdown()


def reachable(address: str, timeout: float = 5.0) -> None:
    """A host:port address that accepts no connection is one line now (Ray retries its GCS for 10-20 minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if address.startswith("ray://") or not sep or not port.isdigit():
        return  # auto, ray://, a malformed address: Ray says what it makes of them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--address {address}: no Ray cluster there (nothing accepts a connection: {e})") from None


def describe(resources: dict[str, float]) -> str:
    """A cluster's resources in one line: counts as they are, memory in GiB."""
    return ", ".join(f"{k} {v / 2**30:.1f} GiB" if "memory" in k else f"{k} {v:g}" for k, v in resources.items())


def check_outputs(outputs: Path, address: str | None) -> None:
    """Workers on other machines resolve no relative path the way this one does."""
    if address and not Path(outputs).is_absolute():
        raise UserError(f"--outputs {outputs} is relative: with --address give an absolute path that every Ray node "
                        "sees (a shared filesystem), e.g. --outputs /shared/subl/outputs")


def resources(stage: Stage, hosted: str | None, gpu: bool) -> dict:
    """What a stage's task asks of a node (a GPU only where its key names CUDA, or names no device)."""
    if hosted:
        return {"num_cpus": 0}
    if gpu and stage.KIND in MODEL_KINDS and device_of(stage) != "cpu":
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


def device_of(stage: Stage) -> str | None:
    """The device a local model stage's key names (its precision or device, decided where the run was planned),
    which the worker must use: with device auto a worker would pick its own, and a CPU driver's cpu-fp32 key
    would hold a GPU's bf16 results (or the reverse)."""
    named = getattr(stage, "precision", None) or getattr(stage, "device", None) or ""
    return "cuda" if named.startswith("cuda") else "cpu" if named.startswith("cpu") else None


def router_for(stage: Stage, router):
    device = device_of(stage)
    if device is None or router.device == device:
        return router
    return type(router)(device, router.cpu_bf16, router.hosted)


def key_fingerprint(value: str) -> str:
    """What a worker compares of an API key: a digest, so the key itself never travels in a task."""
    return text_sha256(value)[:16]


def keys_of(router, backend: str | None) -> dict[str, str]:
    """The driver's fingerprint of the key a hosted stage's backend reads ({} for a local stage)."""
    if backend is None or backend not in router.hosted:
        return {}
    env = router.hosted[backend].api_key_env
    return {env: key_fingerprint(os.environ.get(env, ""))}


def check_keys(stage: Stage, keys: dict[str, str]) -> None:
    """A worker refuses a hosted stage when its key is not the one the driver checked: Ray nodes keep their own
    environment, and another account's key would be billed (and its jobs never adopted by a later run)."""
    for env, want in keys.items():
        if key_fingerprint(os.environ.get(env, "")) != want:
            what = "is not set" if not os.environ.get(env) else "is not the key the driver checked (another account)"
            raise UserError(f"{stage.label}: {env} {what} on the Ray worker on {platform.node()}; set the same key "
                            "on every node (nothing was sent from that worker)")


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the subl this process runs (every .py under runner/ and backends/): what computes keys and
    builds stages."""
    h = hashlib.sha256()
    for p in sorted(f for d in ("runner", "backends") for f in (Path(CODE_ROOT) / d).rglob("*.py")):
        h.update(f"{p.relative_to(CODE_ROOT)}\0".encode() + p.read_bytes())
    return h.hexdigest()[:16]


def check_code(stage: Stage, driver_code: str | None) -> None:
    """A worker refuses a stage when its subl is not the driver's: it would compute other keys, or build a stage
    with other code under the driver's key (a stale result every later run reuses)."""
    if driver_code and code_digest() != driver_code:
        raise UserError(f"{stage.label}: the Ray worker on {platform.node()} runs another subl than the driver "
                        f"(code {code_digest()} vs {driver_code}); install the driver's version on every node, or "
                        "give the nodes the driver's checkout at the same path")


def build_on_worker(stage: Stage, root: str, router, keys: dict[str, str] | None = None,
                    driver_code: str | None = None) -> tuple[float | None, str]:
    """The task: build one stage into the shared store; (seconds or None when reused, where it ran)."""
    check_code(stage, driver_code)
    check_keys(stage, keys or {})
    if not Path(root).is_dir():  # the driver's outputs folder: this node does not see the shared folder
        raise UserError(f"{stage.label}: --outputs {root} is not there on the Ray worker on {platform.node()}; it "
                        "must be a folder every node shares at the same path (nothing was built)")
    import ray

    store = Store(root)
    node = ray.util.get_node_ip_address()
    seconds = run_stage(stage, store, router, crash_hook(stage, store), placement={"executor": "ray", "node": node})
    return seconds, f"{platform.node()} ({node})"


def crash_hook(stage: Stage, store: Store) -> Callable:
    """A progress callback; under CRASH_ENV naming this stage, the first attempt kills its own worker at
    its first step (leaving a marker beside the stage's folder, so the retry goes on)."""
    marker = store.stages / f".{stage.key}.crashed"
    if os.environ.get(CRASH_ENV) != stage.label or marker.exists():
        return lambda done, total, **kw: None

    def progress(done: int, total: int, **kw) -> None:
        marker.write_text(f"killed at step {done} of {total}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    return progress


def wants_gpu(device: str) -> bool:
    import ray

    return device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)


def cpu_keys_on_gpus(stages: list[Stage], device: str, gpu: bool) -> str | None:
    """A warning when the cluster has GPUs but device auto, resolved on a CPU driver, keyed the model stages CPU."""
    if gpu and device == "auto" and any(device_of(s) == "cpu" for s in stages if s.KIND in MODEL_KINDS):
        return ("ray: warning: the cluster has GPUs, but runtime.device auto was resolved on this CPU driver, so the "
                "model stages are keyed (and run) on CPU; set runtime.device: cuda to train and sample on the GPUs")
    return None


def refuse_gpus_missing(todo: list[Stage], by_key: dict, gpu: bool) -> None:
    """A task asking for a GPU the cluster lacks would wait forever (Ray keeps it pending, silently)."""
    import ray

    wanting = [s.label for s in todo if resources(s, hosted_backend(s, by_key), gpu).get("num_gpus")]
    if wanting and not ray.cluster_resources().get("GPU", 0):
        more = f" and {len(wanting) - 1} more stages" if len(wanting) > 1 else ""
        raise UserError(f"runtime.device cuda: {wanting[0]}{more} need a GPU, and the Ray cluster has none; add GPU "
                        "nodes or set runtime.device: cpu")


def visible(store: Store, key: str) -> bool:
    """Whether a stage a worker reports built is there for the driver (a network filesystem may show it late)."""
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while not store.done(key):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def execute_ray(stages: list[Stage], store: Store, router, progress_factory: Callable | None = None,
                log: Callable[[str], None] = print, slots: dict[str, int] | None = None) -> dict[str, float]:
    """Run every stage not yet done as a Ray task (connect with `cluster` first); return {stage key: seconds}
    of what ran. The first failure cancels the stages still running and is raised as the stage raised it."""
    import ray

    by_key = {s.key: s for s in stages}
    todo = [s for s in stages if not store.done(s.key)]
    task = ray.remote(build_on_worker)
    gpu = wants_gpu(router.device)
    refuse_gpus_missing(todo, by_key, gpu)
    if warning := cpu_keys_on_gpus(todo, router.device, gpu):
        log(warning)
    pending: dict = {}  # ObjectRef -> (stage, its progress bar, its hosted backend)
    ran: dict[str, float] = {}

    def free(backend: str | None) -> bool:
        busy = sum(b == backend for _, _, b in pending.values())
        return backend is None or busy < (slots or {}).get(backend, HOSTED_SLOTS)

    while todo or pending:
        for stage in [s for s in todo if all(store.done(k) for k in s.upstream())]:
            backend = hosted_backend(stage, by_key)
            if not free(backend):
                continue
            todo.remove(stage)
            need = resources(stage, backend, gpu)
            ref = task.options(**need, max_retries=MAX_RETRIES, retry_exceptions=False,
                               name=stage.label[:100]).remote(stage, str(store.root), router_for(stage, router),
                                                              keys_of(router, backend), code_digest())
            pending[ref] = (stage, progress_factory(stage) if progress_factory else None, backend)
            log(f"ray: queued {stage.label} ({', '.join(f'{k} {v:g}' for k, v in need.items())})")
        if not pending:
            missing = sorted({k for s in todo for k in s.upstream() if not store.done(k)})
            raise RuntimeError(f"stages wait on stages that are not in the plan: {missing}")
        [ref], _ = ray.wait(list(pending), num_returns=1)
        stage, bar, _ = pending.pop(ref)
        try:
            seconds, where = ray.get(ref)
        except ray.exceptions.RayError as e:
            for other in pending:
                ray.cancel(other)
            raise failure(stage, e) from None
        if not visible(store, stage.key):
            for other in pending:
                ray.cancel(other)
            raise UserError(f"{stage.label}: built on {where}, but {store.path(stage.key)} is not there on this "
                            f"machine after {VISIBLE_WAIT_S:g} s; --outputs must be a folder every node shares at "
                            "the same path")
        if bar is not None and hasattr(bar, "finish"):
            bar.finish()
        if seconds is not None:
            ran[stage.key] = seconds
        log(f"ray: {'done' if seconds is not None else 'reused'} {stage.label}"
            + (f" in {seconds:.1f} s" if seconds is not None else "") + f" on {where}")
    return ran


def failure(stage: Stage, e: Exception) -> BaseException:
    """The stage's own exception, or one line (exit 2) for a worker that kept dying or a task Ray could not run."""
    import ray

    if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, BaseException):
        return e.cause
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    died = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)
    what = (f"its Ray worker died {MAX_RETRIES + 1} times" if isinstance(e, died)
            else "Ray could not run it")
    return UserError(f"{stage.label}: {what}; finished stages are kept and the partial folder is kept for a rerun "
                     f"({type(e).__name__}: {first})")
