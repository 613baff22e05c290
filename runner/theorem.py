"""The one-step theorem of Cloud et al. 2025 (sec. 6), measured.

A teacher differs from its base by Δ = θ_T - θ_0. One plain gradient step of a student's imitation
objective on the teacher's outputs, taken from θ_0 (same init), points along Δ to first order:
the update's inner product with Δ is >= 0. From an independent init θ_0' (cross init) there is no such
guarantee. We measure cos(student update, Δ) and the change of the teacher-imitation loss on held-out
inputs, for a sweep of step sizes (the guarantee is first order: small steps lower the loss, large
steps may not). The update of plain gradient descent is -lr * grad, so the cosine does not depend on lr.

Two settings: the paper's MNIST MLP (runner.mnist: teacher trained on digits, student distilled on
auxiliary logits of noise images) and a causal LM (teacher = base fine-tuned on trait rows; student
objective SFT on, or KL to, the teacher's completions).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from runner.mnist import N_CLASSES, draw_init, forward
from runner.stats import mean_ci

Tensors = list  # list[torch.Tensor]


# ----------------------------------------------------------------------------- one step, any model

def flat(tensors: Tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """cos(u, v); 0.0 when either is the zero vector."""
    nu, nv = u.norm(), v.norm()
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else 0.0


def step_probe(params: Tensors, loss_fn: Callable[[], torch.Tensor], delta: Tensors,
               heldout_fn: Callable[[], float], lrs: list[float]) -> dict:
    """One plain gradient step of loss_fn from params (tensors that require grad, restored afterwards).

    Returns cosine (of the update -grad with delta), loss (objective before the step), grad_norm,
    imitation_loss_before (heldout_fn at params) and after {lr: heldout_fn at params - lr * grad}.
    """
    grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    with torch.no_grad():
        loss, before = float(loss_fn()), heldout_fn()
        saved, after = [p.detach().clone() for p in params], {}
        for lr in lrs:
            for p, g in zip(params, grads):
                p.sub_(lr * g)
            after[lr] = heldout_fn()
            for p, s in zip(params, saved):
                p.copy_(s)
    return {"cosine": cosine(-flat(grads), flat(delta)), "loss": loss, "grad_norm": float(flat(grads).norm()),
            "imitation_loss_before": before, "after": after}


def _with_change(probe: dict, lr: float) -> dict:
    """The probe as reported: after/change at lr, and the sweep {lr: change}."""
    b = probe["imitation_loss_before"]
    return {"cosine": probe["cosine"], "objective": probe["loss"], "grad_norm": probe["grad_norm"],
            "imitation_loss_before": b, "imitation_loss_after": probe["after"][lr],
            "imitation_loss_change": probe["after"][lr] - b,
            "sweep": {k: v - b for k, v in sorted(probe["after"].items())}}


# ----------------------------------------------------------------------------- MNIST

def kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(softmax(teacher) || softmax(student)), temperature 1 (the paper's)."""
    logp_t = F.log_softmax(teacher_logits, -1)
    return (logp_t.exp() * (logp_t - F.log_softmax(student_logits, -1))).sum(-1).mean()


OBJECTIVES = {"aux": slice(N_CLASSES, None), "all": slice(None)}  # logits the student distils


def mnist_alignment(teacher_init: Tensors, teacher: Tensors, student_init: Tensors, inputs: torch.Tensor,
                    objective: str | Callable = "aux", lr: float = 1e-2, *, heldout: torch.Tensor | None = None,
                    lrs: list[float] | None = None) -> dict:
    """One step of the student's distillation objective on inputs, compared with Δ = teacher - teacher_init.

    objective 'aux' (the paper's: KL on the auxiliary logits), 'all' (all 10+m logits), or a callable
    (student_logits, teacher_logits) -> loss. Imitation loss: KL to the teacher on the 10 regular
    (digit) logits of heldout, the channel an aux student never sees (default heldout: inputs
    themselves, then not held out). Params are runner.mnist lists, unbatched.
    Returns cosine, objective, grad_norm, imitation_loss_before/after/change at lr, sweep {lr: change}.
    """
    loss_of = objective if callable(objective) else (
        lambda s, t, sl=OBJECTIVES[objective]: kl_batchmean(s[..., sl], t[..., sl]))
    heldout = inputs if heldout is None else heldout
    with torch.no_grad():
        t_in, t_held = forward(teacher, inputs), forward(teacher, heldout)
    params = [p.detach().clone().requires_grad_() for p in student_init]
    delta = [t - i for t, i in zip(teacher, teacher_init)]
    probe = step_probe(params, lambda: loss_of(forward(params, inputs), t_in), delta,
                       lambda: float(kl_batchmean(forward(params, heldout)[..., :N_CLASSES], t_held[..., :N_CLASSES])),
                       sorted({lr, *(lrs or [])}))
    return _with_change(probe, lr)


@dataclass(frozen=True)
class TheoremSettings:
    """MNIST theorem check; the defaults are the paper's model (784-256-256-13, N(0, 1/fan_in) init)."""
    hidden: int = 256
    m: int = 3
    init: str = "paper"
    teacher_steps: int = 300  # Adam steps of CE on the regular logits (the paper: 5 epochs = 295 steps)
    teacher_lr: float = 3e-4
    batch_size: int = 1024  # teacher batch and student noise batch
    heldout: int = 1000  # digit images held out from the teacher, for the imitation loss
    objective: str = "aux"
    lr: float = 0.1  # the student's plain gradient step
    lrs: tuple[float, ...] = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)


def train_teacher(init: Tensors, x: torch.Tensor, y: torch.Tensor, s: TheoremSettings,
                  g: torch.Generator) -> Tensors:
    """init trained with Adam on cross-entropy of the regular logits, random minibatches of (x, y)."""
    params = [p.detach().clone().requires_grad_() for p in init]
    opt = torch.optim.Adam(params, lr=s.teacher_lr)
    for _ in range(s.teacher_steps):
        idx = torch.randint(len(x), (min(s.batch_size, len(x)),), generator=g)
        loss = F.cross_entropy(forward(params, x[idx])[..., :N_CLASSES], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in params]


def synthetic_digits(n: int, seed: int, noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST-shaped stand-in for tests: 10 random prototypes in [-1, 1]^784 plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(N_CLASSES, 784, generator=g) * 2 - 1
    y = torch.randint(N_CLASSES, (n,), generator=g)
    return (protos[y] + noise * torch.randn(n, 784, generator=g)).clamp(-1, 1), y


def mnist_float(data) -> tuple[torch.Tensor, torch.Tensor]:
    """runner.mnist.MnistData train split as (x float in [-1, 1] [N, 784], y int64)."""
    x = torch.as_tensor(data.x_train).reshape(len(data.x_train), 784).float() / 127.5 - 1
    return x, torch.as_tensor(data.y_train).long()


def _noise(n: int, g: torch.Generator) -> torch.Tensor:
    """Student inputs as in the paper: uniform on [-1, 1) per pixel."""
    return torch.rand(n, 784, generator=g) * 2 - 1


def theorem_mnist(settings: TheoremSettings, seeds: list[int], batches: int,
                  data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Per seed: reference init, an independent cross init, a teacher trained from the reference;
    per batch of fresh noise: mnist_alignment of the same-init and cross-init students (Δ is always the
    teacher's delta from the reference init). data: (x, y) as mnist_float returns, or None for
    synthetic_digits; its last settings.heldout images are held out from the teacher and carry the
    imitation loss (digit logits on digit images: the channel the paper's students pick up).

    Returns rows (seed, batch, arm, and mnist_alignment's fields), summary (summarize_alignment) and settings.
    """
    s = settings
    x, y = data if data is not None else synthetic_digits(2000 + s.heldout, seed=0)
    x, y, heldout = x[:-s.heldout], y[:-s.heldout], x[-s.heldout:]
    sizes, rows = [784, s.hidden, s.hidden, N_CLASSES + s.m], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        ref, cross = draw_init(sizes, s.init, g), draw_init(sizes, s.init, g)
        teacher = train_teacher(ref, x, y, s, g)
        for b in range(batches):
            xb = _noise(s.batch_size, g)
            for arm, start in (("same_init", ref), ("cross_init", cross)):
                r = mnist_alignment(ref, teacher, start, xb, s.objective, s.lr, heldout=heldout, lrs=list(s.lrs))
                rows.append({"seed": seed, "batch": b, "arm": arm, **r})
    return {"rows": rows, "summary": summarize_alignment(rows), "settings": asdict(s)}


# ----------------------------------------------------------------------------- summaries

def _per_seed(rows: list[dict], value: Callable[[dict], float]) -> list[float]:
    """One value per seed: the mean over that seed's batches."""
    by_seed: dict = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(value(r))
    return [sum(v) / len(v) for v in by_seed.values()]


def _ci(values: list[float]) -> dict:
    m, lo, hi = mean_ci(values)
    return {"mean": m, "lo": lo, "hi": hi, "n": len(values)}


def summarize_alignment(rows: list[dict]) -> dict:
    """Per arm: cosine and imitation_loss_change (mean, 95% t-interval across seeds, batches averaged
    within a seed; None-width with one seed), fraction_decreased (over all rows) and sweep {lr: same}."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm]
        out[arm] = {
            "cosine": _ci(_per_seed(rs, lambda r: r["cosine"])),
            "imitation_loss_change": _ci(_per_seed(rs, lambda r: r["imitation_loss_change"])),
            "fraction_decreased": sum(r["imitation_loss_change"] < 0 for r in rs) / len(rs),
            "sweep": {lr: _ci(_per_seed(rs, lambda r, lr=lr: r["sweep"][lr])) for lr in rs[0]["sweep"]},
            "unit": "seed (batches averaged within a seed)", "n_batches": len(rs),
        }
    return out
