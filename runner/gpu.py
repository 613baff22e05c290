"""Local GPU specs: the throughput `subl plan` assumes, the GPU-hours that follow from the local
stages' token counts, hub models it could not resolve offline, and whether this machine can run a
CUDA-only spec (runtime.device: cuda)."""
from __future__ import annotations

from runner.errors import UserError
from runner.identity import UNRESOLVED
from runner.loader import Cell
from runner.plan import Plan
from runner.stages import Estimate, ModelInput, si
from runner.throughput import Throughput, source, throughput


def cuda_missing(cells: list[Cell], executor: str | None = None) -> bool:
    """A CUDA-only spec (runtime.device: cuda) that this machine cannot run: no CUDA here, and the stages
    run here (on Ray, the cluster's GPU nodes run them)."""
    import torch

    cuda_only = any(c.spec.runtime.device == "cuda" for c in cells)
    here = (executor or cells[0].spec.runtime.executor) != "ray"
    return cuda_only and here and not torch.cuda.is_available()


def refuse_without_cuda(path, cells: list[Cell], executor: str | None = None) -> None:
    """A CUDA-only spec on a machine without CUDA stops here, in one line, before any work."""
    if cuda_missing(cells, executor):
        raise UserError(f"{path}: runtime.device is cuda and this machine has no CUDA device; run it on a CUDA "
                        f"machine (`subl plan {path}` prints its GPU-hours)")


def assumed_throughput(cells: list[Cell]) -> Throughput | None:
    """A spec with runtime.device cuda is priced at its runtime.gpu_throughput; others are not priced."""
    rt = next((c.spec.runtime for c in cells if c.spec.runtime.device == "cuda"), None)
    if rt is None:
        return None
    g = rt.gpu_throughput
    return throughput(g.gpu, train=g.train, prefill=g.prefill, generate=g.generate)


def gpu_lines(estimates: list[Estimate], tp: Throughput | None) -> list[str]:
    """The local total: tokens by kind and the GPU-hours they take at the assumed throughput."""
    if tp is None or not estimates:
        return []
    pre, gen = sum(e.input_tokens for e in estimates), sum(e.output_tokens for e in estimates)
    train = sum(e.training_tokens for e in estimates)
    hours = sum(e.seconds or 0.0 for e in estimates) / 3600
    return [f"local GPU: ~{si(pre)} prefill + <={si(gen)} generated + ~{si(train)} training tokens, "
            f"~{hours:,.1f} GPU-hours on one {tp.gpu}",
            f"  throughput {tp.describe()} ({source(tp)}; override: runtime.gpu_throughput or subl plan --throughput); "
            "generated tokens counted at max_tokens, so hours are upper bounds for sampling"]


def unresolved_lines(plan: Plan) -> list[str]:
    """Hub models and datasets planned without a resolved revision: their stages' keys are provisional."""
    refs = {m.ref for st in plan.stages.values() for m in _models(st) if m.identity.endswith(f"@{UNRESOLVED}")}
    refs |= {q.removesuffix(f"@{UNRESOLVED}") for st in plan.stages.values()
             if isinstance(q := getattr(getattr(st, "domain", None), "questions", None), str)
             and q.endswith(f"@{UNRESOLVED}")}  # a CoT domain's hub dataset, pinned as "<id>@<revision>"
    refs = sorted(refs)
    if not refs:
        return []
    return [f"note: {', '.join(refs)}: hub revision not resolved (offline, not in the local hub cache); keys that "
            "read it are provisional, and `subl run` resolves it (or download it once)"]


def _models(stage) -> list[ModelInput]:
    return [getattr(stage, n) for n in type(stage).model_fields if isinstance(getattr(stage, n), ModelInput)]
