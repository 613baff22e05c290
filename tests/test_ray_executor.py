"""The Ray executor on a local Ray instance (2 CPUs) and tiny random models: the same keys, rows and
metrics as the local executor; a worker killed mid fine-tune is retried; a killed driver's finished
stages are reused. Ray is an optional extra (in `dev`, so CI runs these); without it they are skipped."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from runner.ray_executor import CRASH_ENV, cpu_keys_on_gpus, resources
from runner.stages import ModelInput, RunContext, Stage
from runner.stages.data import FilterStage

FOUR = """name: four
seed: 1
progress: false
teacher: {{base: {base}, targets: [panda, owl], control: false}}
domain: {{kind: numbers, n_prompts: 6, max_tokens: 6, constrained: true, batch_size: 3}}
students:
  - {{name: lora, objective: sft, hyperparameters: {{batch_size: 3}}}}
  - {{name: full, objective: sft, method: full, hyperparameters: {{batch_size: 3}}}}
evaluations:
  - {{kind: preference_logprob, max_questions: 3}}
"""
CRASHED = "finetune full:owl:r0"  # its first attempt kills its own Ray worker
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads on both executors, so the same floats
RAY_RUN = ["--executor", "ray", "--cpus", "2"]


def subl(*args, env=ENV, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def needs_ray():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'subl[ray]', or make setup: it is in dev)")


LOCAL_RUN = """import sys
from pathlib import Path
from rich.console import Console
from runner.runs import plan_lines, run_spec
plan_lines(Path(sys.argv[1]), Path(sys.argv[2]))
run_spec(Path(sys.argv[1]), Path(sys.argv[2]), Console(quiet=True))
print("ray imported" if "ray" in sys.modules else "no ray")
"""


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """The four-student spec run by the local executor; then by Ray, its driver killed (kill -9) once a stage
    is done, and rerun with one fine-tune's worker killed at its first step."""
    needs_ray()
    root = tmp_path_factory.mktemp("ray")
    spec = root / "four.yaml"
    spec.write_text(FOUR.format(base=tiny_model))
    local = subprocess.run([sys.executable, "-c", LOCAL_RUN, spec, root / "local"], capture_output=True, text=True,
                           env=ENV)
    assert local.returncode == 0, local.stderr[-3000:]
    before_kill = killed_driver(spec, root / "ray")
    ray_run = subl("run", spec, "--outputs", root / "ray", *RAY_RUN, env={**ENV, CRASH_ENV: CRASHED})
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    return root, local, ray_run, before_kill


def killed_driver(spec: Path, out: Path) -> set[str]:
    """Start a Ray run, kill its driver with SIGKILL once a filter stage is done; the keys it finished."""
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(out), *RAY_RUN],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300  # a loaded machine starts Ray and generates slowly
    while time.time() < deadline and not list((out / "stages").glob("filter-*/manifest.json")):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return {p.parent.name for p in (out / "stages").glob("*/manifest.json")}


def stage_files(out: Path, name: str) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((out / "stages").glob(f"*/{name}"))}


@pytest.mark.slow  # end to end through the CLI on tiny models
def test_a_local_run_never_imports_ray(runs):
    assert runs[1].stdout.strip().splitlines()[-1] == "no ray"


@pytest.mark.slow  # end to end through the CLI on tiny models
def test_ray_run_makes_the_same_keys_rows_models_and_metrics(runs):
    root = runs[0]
    keys = sorted(p.name for p in (root / "local" / "stages").iterdir() if not p.name.startswith("."))
    assert keys == sorted(p.name for p in (root / "ray" / "stages").iterdir() if not p.name.startswith("."))
    assert sum(k.startswith("finetune-") for k in keys) == 4
    rows = stage_files(root / "local", "rows.jsonl")
    assert len(rows) == 4 and rows == stage_files(root / "ray", "rows.jsonl")
    assert stage_files(root / "local", "model/model.safetensors") == stage_files(root / "ray", "model/model.safetensors")
    a, b = (json.loads((root / x / "four" / "results.json").read_text()) for x in ("local", "ray"))
    assert len({e["model"] for e in a["evaluations"]}) == 7 and a["evaluations"] == b["evaluations"]
    assert a["comparisons"] == b["comparisons"] and a["spec_hash"] == b["spec_hash"]


@pytest.mark.slow  # end to end through the CLI on tiny models
def test_ray_run_records_the_executor_nodes_and_cluster(runs):
    root, _, ray_run, _ = runs
    res = json.loads((root / "ray" / "four" / "results.json").read_text())
    assert res["executor"]["kind"] == "ray" and res["executor"]["resources"]["CPU"] == 2
    assert json.loads((root / "local" / "four" / "results.json").read_text())["executor"] == {"kind": "local"}
    manifests = [json.loads(p.read_text()) for p in (root / "ray" / "stages").glob("*/manifest.json")]
    assert manifests and all(m["executor"] == "ray" and m["node"] for m in manifests)
    status = subl("status", root / "ray").stdout
    assert status.count("(ray, node ") == len(manifests)
    assert "ray: queued finetune lora:panda:r0 (num_cpus 1)" in ray_run.stdout
    assert "ray: done finetune lora:panda:r0 in " in ray_run.stdout


@pytest.mark.slow  # end to end through the CLI on tiny models
def test_a_killed_worker_is_retried_and_its_stage_finishes(runs):
    root = runs[0]
    crashed = [p for p in (root / "ray" / "stages").glob(".finetune-*.crashed")]
    assert len(crashed) == 1 and "killed at step" in crashed[0].read_text()
    key = crashed[0].name[1:-len(".crashed")]
    assert json.loads((root / "ray" / "stages" / key / "manifest.json").read_text())["label"] == CRASHED
    assert not list((root / "ray" / "stages").glob(".*.partial"))


@pytest.mark.slow  # end to end through the CLI on tiny models
def test_a_killed_drivers_finished_stages_are_reused(runs):
    root, _, _, before_kill = runs
    ran = json.loads((root / "ray" / "four" / "results.json").read_text())["stages_run"]
    assert before_kill and ran and not before_kill & set(ran)  # the rerun built only what was left


def test_relative_outputs_with_a_remote_address_is_one_line(write):
    spec = write("s.yaml", "name: s\nteacher: {base: smollm2-135m, targets: [owl]}\n")
    r = subl("run", spec, "--outputs", "rel/out", "--executor", "ray", "--address", "ray://head:10001")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--outputs rel/out is relative" in r.stderr
    r = subl("run", spec, "--executor", "dask")
    assert r.returncode == 2 and r.stderr.strip() == "error: --executor: 'dask' is not local or ray"
    r = subl("run", spec, "--address", "auto")
    assert r.returncode == 2 and "--address needs --executor ray" in r.stderr


def test_a_spec_that_asks_for_ray_without_ray_installed_is_one_line(write, monkeypatch):
    from rich.console import Console

    from runner.errors import UserError
    from runner.runs import run_spec

    spec = write("s.yaml", "name: s\nruntime: {executor: ray}\nteacher: {base: smollm2-135m, targets: [owl]}\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(UserError, match=r"^--executor ray needs Ray: pip install 'subl\[ray\]'$"):
        run_spec(spec, spec.parent / "out", Console(quiet=True))


class Span(Stage):
    """Holds its worker for `seconds` and records when."""

    KIND: ClassVar[str] = "span"
    model: ModelInput
    seconds: float

    def run(self, ctx: RunContext) -> None:
        start = time.time()
        time.sleep(self.seconds)
        (ctx.dir / "span").write_text(f"{start} {time.time()}")


def _worker_env(name: str) -> str | None:
    return os.environ.get(name)


def test_hosted_stages_take_no_cpu_and_keep_to_their_slots(tmp_path, monkeypatch):
    """... and the workers call the endpoint the driver keyed its hosted stages by."""
    needs_ray()
    import ray

    from backends import Router
    from runner.core import DEFAULT_BASE_URL
    from runner.ray_executor import cluster, execute_ray
    from runner.store import Store

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    local = [Span(label=f"l{i}", model=ModelInput(ref="m", identity="hub:m@0"), seconds=3 + i / 100) for i in range(2)]
    hosted = [Span(label=f"h{i}", model=ModelInput(ref="api:m", identity="hosted:api@x:m"), seconds=1 + i / 100)
              for i in range(4)]
    store = Store(tmp_path)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)  # the driver keys by the SDK's default endpoint
    with cluster(None, 2):
        execute_ray(local + hosted, store, Router("cpu"), log=lambda msg: None, slots={"api": 2})
        seen = ray.get(ray.remote(_worker_env).options(num_cpus=0).remote("OPENAI_BASE_URL"))
    assert seen == DEFAULT_BASE_URL  # set on every worker, so none can pick another from its own shell
    span = {s.label: [float(x) for x in (store.path(s.key) / "span").read_text().split()] for s in local + hosted}
    spans = [span[s.label] for s in hosted]
    assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) == 2  # two at a time, never three
    assert min(a for a, _ in spans) < min(b for _, b in (span["l0"], span["l1"]))  # beside the local stages' CPUs


def test_stage_resources_by_kind_and_backend():
    local, hosted = ModelInput(ref="m", identity="weights:abc"), ModelInput(ref="api:m", identity="hosted:api@x:m")
    from runner.stages.evaluation import ProbeStage

    probe = ProbeStage.model_construct(model=local)
    assert resources(probe, None, gpu=True) == {"num_cpus": 1, "num_gpus": 1}
    assert resources(probe, None, gpu=False) == {"num_cpus": 1}
    assert resources(ProbeStage.model_construct(model=hosted), "api", gpu=True) == {"num_cpus": 0}
    assert resources(FilterStage.model_construct(), None, gpu=True) == {"num_cpus": 1}


def test_mnist_takes_no_gpu_and_theorem_lm_takes_one_only_when_keyed_cuda():
    """MNIST trains on the CPU, and a theorem-lm stage names its device in `device`, not `precision`."""
    from runner.stages.mnist_stage import MnistStage
    from runner.stages.theorem_stage import TheoremLmStage

    assert resources(MnistStage.model_construct(), None, gpu=True) == {"num_cpus": 1}
    cpu, cuda = (TheoremLmStage.model_construct(device=d) for d in ("cpu", "cuda"))
    assert resources(cpu, None, gpu=True) == {"num_cpus": 1}
    assert resources(cuda, None, gpu=True) == {"num_cpus": 1, "num_gpus": 1}
    assert cpu_keys_on_gpus([MnistStage.model_construct()], "auto", gpu=True) is None  # no GPU to suggest


def test_a_worker_computes_on_the_device_its_stage_key_names():
    """Planned on a CPU driver (device auto), a stage's key says cpu-fp32: on a cluster with GPUs its task must
    neither take a GPU nor let the worker pick CUDA bf16, or the store would hold bf16 results under an fp32 key."""
    from backends import Router
    from runner.ray_executor import router_for
    from runner.stages.evaluation import ProbeStage

    local = ModelInput(ref="m", identity="weights:abc")
    cpu, cuda = (ProbeStage.model_construct(model=local, precision=p) for p in ("cpu-fp32", "cuda-bf16"))
    auto = Router("auto", False, {})
    assert resources(cpu, None, gpu=True) == {"num_cpus": 1}
    assert resources(cuda, None, gpu=True) == {"num_cpus": 1, "num_gpus": 1}
    assert router_for(cpu, auto).device == "cpu" and router_for(cuda, auto).device == "cuda"
    assert router_for(FilterStage.model_construct(), auto) is auto
    assert "runtime.device: cuda" in cpu_keys_on_gpus([cpu], "auto", gpu=True)
    assert cpu_keys_on_gpus([cuda], "auto", gpu=True) is None and cpu_keys_on_gpus([cpu], "auto", gpu=False) is None
    assert cpu_keys_on_gpus([cpu], "cpu", gpu=True) is None  # asked for CPU: no warning


def test_stages_and_routers_travel_to_workers_by_pickle(tiny_model, tmp_path):
    from backends import Router
    from runner.loader import load
    from runner.plan import build

    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR.format(base=tiny_model))
    stages = list(build(load(spec), tmp_path).stages.values())
    assert [pickle.loads(pickle.dumps(s)).key for s in stages] == [s.key for s in stages]
    r = pickle.loads(pickle.dumps(Router("cpu", True, {"x": 1})))
    assert (r.device, r.cpu_bf16, r.hosted) == ("cpu", True, {"x": 1})


def test_workers_get_the_endpoints_the_driver_keyed(monkeypatch):
    from runner.core import DEFAULT_BASE_URL, TINKER_BASE_URL, hosted_endpoint
    from runner.ray_executor import endpoint_env
    from runner.spec import HostedBackend

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("TINKER_BASE_URL", "https://tinker.example/v1")
    env = endpoint_env()
    assert env == {"OPENAI_BASE_URL": DEFAULT_BASE_URL, "TINKER_BASE_URL": "https://tinker.example/v1"}
    monkeypatch.setenv("OPENAI_BASE_URL", "https://elsewhere.example/v1")  # what a worker's own shell may say
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        assert hosted_endpoint(HostedBackend()) == DEFAULT_BASE_URL != "https://elsewhere.example/v1"
    assert TINKER_BASE_URL.startswith("https://")


def test_a_worker_whose_key_is_not_the_drivers_refuses_a_hosted_stage(monkeypatch):
    """Ray nodes keep their own environment: a node with another account's key (or none) would bill that account
    or fail midway, after the driver's checks passed. Only a digest of the key travels with the task."""
    from backends import Router
    from runner.errors import UserError
    from runner.ray_executor import build_on_worker, check_keys, key_fingerprint, keys_of
    from runner.spec import HostedBackend

    router = Router("cpu", hosted={"api": HostedBackend(api_key_env="SUBL_T_RAY_KEY")})
    monkeypatch.setenv("SUBL_T_RAY_KEY", "sk-driver-0123456789")
    keys = keys_of(router, "api")
    assert keys == {"SUBL_T_RAY_KEY": key_fingerprint("sk-driver-0123456789")} and "driver" not in str(keys)
    assert keys_of(router, None) == {}  # a local stage needs no key
    stage = Span(label="h0", model=ModelInput(ref="api:m", identity="hosted:api@x:m"), seconds=0)
    check_keys(stage, keys)
    monkeypatch.setenv("SUBL_T_RAY_KEY", "sk-other-9876543210")
    with pytest.raises(UserError, match="h0: SUBL_T_RAY_KEY is not the key the driver checked"):
        build_on_worker(stage, "/nonexistent", router, keys)  # refused before anything is built
    monkeypatch.delenv("SUBL_T_RAY_KEY")
    with pytest.raises(UserError, match="SUBL_T_RAY_KEY is not set on the Ray worker"):
        check_keys(stage, keys)


def test_a_worker_running_another_subl_refuses_the_stage(monkeypatch):
    """Workers import the subl their node has: another version would key or build the stage otherwise."""
    from backends import Router
    from runner import ray_executor
    from runner.errors import UserError

    stage = Span(label="l0", model=ModelInput(ref="m", identity="hub:m@0"), seconds=0)
    ray_executor.check_code(stage, ray_executor.code_digest())  # the same checkout: fine
    with pytest.raises(UserError, match="l0: the Ray worker on .* runs another subl than the driver"):
        ray_executor.build_on_worker(stage, "/nonexistent", Router("cpu"), {}, "0123456789abcdef")


class _FakeRay:
    """Just enough of ray for execute_ray's scheduling: a task 'runs' at once, by `build`, on a cluster of `gpus`."""

    class RayError(Exception):
        pass

    def __init__(self, gpus: int, build):
        self.gpus, self.build, self.sent, self.cancelled = gpus, build, [], 0
        self.exceptions = type("exceptions", (), {"RayError": self.RayError, "RayTaskError": self.RayError})

    def cluster_resources(self) -> dict:
        return {"CPU": 4.0, **({"GPU": float(self.gpus)} if self.gpus else {})}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kw):
                return self

            def remote(self, stage, *args):
                fake.sent.append(stage.label)
                return fake.build(stage)
        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:1], refs[1:]

    def get(self, ref):
        return ref

    def cancel(self, ref):
        self.cancelled += 1


class Gpu(Span):
    KIND: ClassVar[str] = "probe"  # a kind that computes on a GPU when its key names one


def test_stages_that_need_a_gpu_on_a_cluster_without_one_stop_before_any_is_sent(tmp_path, monkeypatch):
    """Ray would keep such a task pending forever, with no word (its warning goes to a log the driver hides)."""
    from backends import Router
    from runner.errors import UserError
    from runner.ray_executor import execute_ray
    from runner.store import Store

    fake = _FakeRay(0, lambda stage: (0.0, "node"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    stage = Gpu(label="probe owl", model=ModelInput(ref="m", identity="hub:m@0"), seconds=0)
    with pytest.raises(UserError, match="probe owl need a GPU, and the Ray cluster has none"):
        execute_ray([stage], Store(tmp_path), Router("cuda"), log=lambda msg: None)
    assert fake.sent == []


def test_a_stage_built_where_the_driver_cannot_see_it_is_one_line(tmp_path, monkeypatch):
    """--outputs not shared by the nodes: a worker builds the stage in its own folder; the driver says so, not
    'stages wait on stages that are not in the plan'."""
    from backends import Router
    from runner import ray_executor
    from runner.errors import UserError
    from runner.store import Store

    fake = _FakeRay(0, lambda stage: (0.1, "node-2 (10.0.0.2)"))  # built, but not in this machine's store
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_executor, "VISIBLE_WAIT_S", 0.3)
    first = Span(label="a", model=ModelInput(ref="m", identity="hub:m@0"), seconds=0)
    with pytest.raises(UserError, match=r"^a: built on node-2 \(10.0.0.2\), but .* is not there on this machine "
                                        r"after 0.3 s; --outputs must be a folder every node shares"):
        ray_executor.execute_ray([first], Store(tmp_path), Router("cpu"), log=lambda msg: None)


def test_a_bad_or_dead_address_is_one_line_and_ray_address_does_not_break_a_local_instance(write, monkeypatch):
    """A malformed --address was an internal error (Ray's ValueError); a host:port with nothing there waited out
    Ray's GCS retries (10-20 min) first; RAY_ADDRESS (or a `ray start` cluster on this machine) made the local
    instance an internal error, since num_cpus may not be given to an existing cluster."""
    needs_ray()
    from runner.ray_executor import cluster

    spec = write("s.yaml", "name: s\nteacher: {base: smollm2-135m, targets: [owl]}\n")
    out = spec.parent / "out"
    r = subl("run", spec, "--outputs", out, "--executor", "ray", "--address", "nonsense")
    assert r.returncode == 2 and "error: --address nonsense: no Ray cluster there" in r.stderr, r.stderr
    started = time.monotonic()
    r = subl("run", spec, "--outputs", out, "--executor", "ray", "--address", "127.0.0.1:9")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --address 127.0.0.1:9: no Ray cluster there")
    assert time.monotonic() - started < 60
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    with cluster(None, 1) as res:
        assert res["CPU"] == 1.0


def test_a_worker_that_keeps_dying_or_a_task_ray_cannot_run_is_one_line():
    needs_ray()
    import ray.exceptions as rx

    from runner.errors import UserError
    from runner.ray_executor import MAX_RETRIES, failure

    stage = Span(label="finetune owl", model=ModelInput(ref="m", identity="hub:m@0"), seconds=0)
    died = failure(stage, rx.WorkerCrashedError())
    assert isinstance(died, UserError) and f"its Ray worker died {MAX_RETRIES + 1} times" in str(died)
    env = failure(stage, rx.RuntimeEnvSetupError("pip failed"))
    assert isinstance(env, UserError) and "Ray could not run it" in str(env) and "died" not in str(env)
    assert "partial folder is kept" in str(env)


def test_a_worker_that_cannot_see_the_outputs_folder_builds_nothing(tmp_path):
    """Store.claim made the folders, so such a worker built the stage (hours, or paid calls) where nobody looks."""
    from backends import Router
    from runner.errors import UserError
    from runner.ray_executor import build_on_worker, code_digest

    root = tmp_path / "not_on_this_node" / "outputs"
    stage = Span(label="expensive", model=ModelInput(ref="m", identity="hub:m@0"), seconds=0)
    with pytest.raises(UserError, match=r"expensive: --outputs .* is not there on the Ray worker"):
        build_on_worker(stage, str(root), Router("cpu"), {}, code_digest())
    assert not root.exists()


def test_a_relative_model_folder_is_loaded_by_its_absolute_path(tiny_model, tmp_path, monkeypatch):
    """A Ray worker's working folder is the one `ray start` ran in, not the driver's: ./base was not found there.
    The path is in no key."""
    import shutil

    from runner.identity import Identities
    from runner.plan import model_input

    shutil.copytree(tiny_model, tmp_path / "mybase")
    monkeypatch.chdir(tmp_path)
    ids = Identities(tmp_path / "out")
    rel = model_input(ids, "./mybase")
    assert rel.ref == str(tmp_path / "mybase") and rel.identity == model_input(ids, str(tmp_path / "mybase")).identity
    assert model_input(ids, "smollm2-135m").ref == "smollm2-135m"
