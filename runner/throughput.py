"""Assumed GPU throughput, for the GPU-hours `subl plan` prints for local stages.

GPU-hours = tokens / (tokens per second) / 3600, per kind of work: training tokens (forward and
backward), prefill tokens (prompts read, answers scored: forward only) and generated tokens
(sampling, one decode step per token per sequence).

The figures are ASSUMPTIONS, not measurements: for a 7-8B model (Qwen2.5-7B-Instruct, 7.6B
parameters) in bf16 under Hugging Face transformers on one GPU, from the GPU's peak and an assumed
utilisation:
- train: LoRA with gradient checkpointing costs ~6 x 7.6G FLOPs per token (forward, recomputed
  forward, backward to the activations); at 35% of an H100's 989 TFLOP/s dense bf16: ~7,600 tokens/s;
- prefill: ~2 x 7.6G FLOPs per token at 40%: ~26,000 tokens/s;
- generate: a decode step reads the 15 GB of weights; transformers' generate runs ~30 steps/s
  (Python overhead, not the 3.35 TB/s bandwidth, limits it), x 64 sequences per batch: ~1,900 tokens/s.
The other GPUs scale those by peak bf16 FLOP/s (train, prefill) and memory bandwidth (generate).
Override them in a spec (runtime.gpu_throughput) or with `subl plan --throughput`."""
from __future__ import annotations

from dataclasses import dataclass, replace

from runner.errors import UserError

SOURCE = "assumed: peak FLOP/s and bandwidth x assumed utilisation, 7-8B model, bf16, transformers (runner/throughput.py)"


@dataclass(frozen=True)
class Throughput:
    gpu: str
    train: float  # training tokens/s
    prefill: float  # prompt or scored tokens/s
    generate: float  # generated tokens/s

    def seconds(self, trained: int = 0, prefill: int = 0, generated: int = 0) -> float:
        return trained / self.train + prefill / self.prefill + generated / self.generate

    def describe(self) -> str:
        return (f"{self.gpu}: {self.train:,.0f} training, {self.prefill:,.0f} prefill, {self.generate:,.0f} "
                "generated tokens/s")


ASSUMED = {
    "H100-80GB": Throughput("H100-80GB", 7600, 26000, 1900),
    "H200": Throughput("H200", 7600, 26000, 2700),  # the H100's compute, 4.8 TB/s
    "A100-80GB": Throughput("A100-80GB", 2400, 8200, 1130),  # 312 TFLOP/s, 2.0 TB/s
}
DEFAULT_GPU = "H100-80GB"
KINDS = ("train", "prefill", "generate")


def throughput(gpu: str = DEFAULT_GPU, **override: float | None) -> Throughput:
    """The assumed figures for `gpu`, with any of train/prefill/generate (tokens/s) overridden."""
    if gpu not in ASSUMED and not all(override.get(k) for k in KINDS):
        raise UserError(f"gpu {gpu!r}: no assumed throughput (known: {', '.join(ASSUMED)}); give train, prefill "
                        "and generate tokens/s")
    base = ASSUMED.get(gpu, Throughput(gpu, 1.0, 1.0, 1.0))
    return replace(base, gpu=gpu, **{k: float(v) for k, v in override.items() if v is not None})


def source(tp: Throughput) -> str:
    """Where tp's figures come from: runner/throughput.py's assumptions, or the spec or command line."""
    base = ASSUMED.get(tp.gpu)
    given = [k for k in KINDS if base is None or getattr(tp, k) != getattr(base, k)]
    if not given:
        return SOURCE
    said = f"{', '.join(given)} as given"
    return said if len(given) == len(KINDS) else f"{said}; the others {SOURCE}"


def parse(text: str) -> Throughput:
    """`subl plan --throughput`: 'H200', 'train=9000,generate=2500' or 'A100-80GB,train=3000'."""
    gpu, override = None, {}
    if not any(p.strip() for p in text.split(",")):  # ',' named nothing, and read as the default GPU
        raise UserError(f"--throughput {text!r}: names no GPU and no rate (e.g. H200, or train=9000)")
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            if gpu is not None:  # two GPUs: which one the rates are for is not said
                raise UserError(f"--throughput {text}: names two GPUs ({gpu}, {part}); name one")
            gpu = part
            continue
        k, _, v = part.partition("=")
        if k.strip() not in KINDS:
            raise UserError(f"--throughput {text}: unknown kind {k.strip()!r} (use {', '.join(KINDS)})")
        try:
            override[k.strip()] = float(v)
        except ValueError:
            raise UserError(f"--throughput {text}: {k.strip()}={v} is not a number of tokens/s") from None
        if not 0 < override[k.strip()] < float("inf"):
            raise UserError(f"--throughput {text}: {k.strip()} must be a positive, finite number of tokens/s")
    return throughput(gpu or DEFAULT_GPU, **override)
