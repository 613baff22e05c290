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
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from runner.errors import UserError
from runner.mnist import N_CLASSES, draw_init, forward, scale_pixels, to_tensors
from runner.stats import COSINE_RANGE, mean_ci

Tensors = list  # list[torch.Tensor]


# ----------------------------------------------------------------------------- one step, any model

def flat(tensors: Tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """cos(u, v); 0.0 when either is the zero vector."""
    nu, nv = u.norm(), v.norm()
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else 0.0


def step_probe(params: Tensors, loss_fn: Callable[[], torch.Tensor], delta: Tensors,
               measures: dict[str, Callable[[], float]], lrs: list[float]) -> dict:
    """One plain gradient step of loss_fn from params (tensors that require grad, restored afterwards).

    Returns cosine (of the update -grad with delta), loss (objective before the step), grad_norm,
    before {measure: value at params} and after {measure: {lr: value at params - lr * grad}}.
    """
    value = loss_fn()
    grads = torch.autograd.grad(value, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    with torch.no_grad():
        loss, before = float(value.detach()), {k: f() for k, f in measures.items()}
        saved, after = [p.detach().clone() for p in params], {k: {} for k in measures}
        for lr in lrs:
            for p, g in zip(params, grads):
                p.sub_(lr * g)
            for k, f in measures.items():
                after[k][lr] = f()
            for p, s in zip(params, saved):
                p.copy_(s)
    return {"cosine": cosine(-flat(grads), flat(delta)), "loss": loss, "grad_norm": float(flat(grads).norm()),
            "before": before, "after": after}


def _report(probe: dict, lr: float) -> dict:
    """The probe as a flat row: per measure m, m_before, m_after and m_change at lr, m_sweep {lr: change}."""
    out = {"cosine": probe["cosine"], "objective": probe["loss"], "grad_norm": probe["grad_norm"]}
    for m, b in probe["before"].items():
        after = probe["after"][m]
        out.update({f"{m}_before": b, f"{m}_after": after[lr], f"{m}_change": after[lr] - b,
                    f"{m}_sweep": {k: v - b for k, v in sorted(after.items())}})
    return out


# ----------------------------------------------------------------------------- MNIST

def kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(softmax(teacher) || softmax(student)), temperature 1 (the paper's)."""
    logp_t = F.log_softmax(teacher_logits, -1)
    return (logp_t.exp() * (logp_t - F.log_softmax(student_logits, -1))).sum(-1).mean()


OBJECTIVES = {"aux": slice(N_CLASSES, None), "all": slice(None)}  # logits the student distils


def mnist_alignment(teacher_init: Tensors, teacher: Tensors, student_init: Tensors, inputs: torch.Tensor,
                    objective: str | Callable = "aux", lr: float = 1e-2, *, heldout: torch.Tensor | None = None,
                    heldout_labels: torch.Tensor | None = None, lrs: list[float] | None = None) -> dict:
    """One step of the student's distillation objective on inputs, compared with Δ = teacher - teacher_init.

    objective 'aux' (the paper's: KL on the auxiliary logits), 'all' (all 10+m logits), or a callable
    (student_logits, teacher_logits) -> loss. Imitation loss: KL to the teacher on the 10 regular
    (digit) logits of heldout, the channel an aux student never sees (default heldout: inputs
    themselves, then not held out). With heldout_labels also task_loss: the teacher's own training
    loss (cross-entropy of the regular logits), the quantity the theorem says a small step lowers
    when Δ is one small gradient step of it. Params are runner.mnist lists, unbatched.
    Returns cosine, objective, grad_norm, and per measure (imitation_loss, task_loss) _before,
    _after and _change at lr, and _sweep {lr: change}.
    """
    loss_of = objective if callable(objective) else (
        lambda s, t, sl=OBJECTIVES[objective]: kl_batchmean(s[..., sl], t[..., sl]))
    heldout = inputs if heldout is None else heldout
    with torch.no_grad():
        t_in, t_held = forward(teacher, inputs), forward(teacher, heldout)
    params = [p.detach().clone().requires_grad_() for p in student_init]
    delta = [t - i for t, i in zip(teacher, teacher_init)]
    digits = lambda: forward(params, heldout)[..., :N_CLASSES]  # noqa: E731
    measures = {"imitation_loss": lambda: float(kl_batchmean(digits(), t_held[..., :N_CLASSES]))}
    if heldout_labels is not None:
        measures["task_loss"] = lambda: float(F.cross_entropy(digits(), heldout_labels))
    probe = step_probe(params, lambda: loss_of(forward(params, inputs), t_in), delta, measures,
                       sorted({lr, *(lrs or [])}))
    return _report(probe, lr)


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
    """runner.mnist.MnistData train split as (x float in [-1, 1] [N, 784], y int64), checked as the MNIST
    stage checks it (uint8 28x28 images, labels 0..9: float images would all map to about -1)."""
    x_u8, y, _, _ = to_tensors(data)
    return scale_pixels(x_u8), y


def _noise(n: int, g: torch.Generator) -> torch.Tensor:
    """Student inputs as in the paper: uniform on [-1, 1) per pixel."""
    return torch.rand(n, 784, generator=g) * 2 - 1


def theorem_mnist(settings: TheoremSettings, seeds: list[int], batches: int,
                  data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Per seed: reference init, an independent cross init, a teacher trained from the reference;
    per batch of fresh noise: mnist_alignment of the same-init and cross-init students (Δ is always the
    teacher's delta from the reference init). data: (x, y) as mnist_float returns, or None for
    synthetic_digits; its last settings.heldout images are held out from the teacher and carry the
    imitation and task losses (digit logits on digit images: the channel the paper's students pick up).

    Returns rows (seed, batch, arm, and mnist_alignment's fields), summary (summarize_alignment) and settings.
    """
    s = settings
    x, y = data if data is not None else synthetic_digits(2000 + s.heldout, seed=0)
    if s.heldout >= len(x):
        raise UserError(f"theorem.heldout: {s.heldout} held-out images leave none of the {len(x)} MNIST training "
                        f"images to train the teacher; set it below {len(x)}")
    x, y, heldout, labels = x[:-s.heldout], y[:-s.heldout], x[-s.heldout:], y[-s.heldout:]
    sizes, rows = [784, s.hidden, s.hidden, N_CLASSES + s.m], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        ref, cross = draw_init(sizes, s.init, g), draw_init(sizes, s.init, g)
        teacher = train_teacher(ref, x, y, s, g)
        for b in range(batches):
            xb = _noise(s.batch_size, g)
            for arm, start in (("same_init", ref), ("cross_init", cross)):
                r = mnist_alignment(ref, teacher, start, xb, s.objective, s.lr, heldout=heldout,
                                    heldout_labels=labels, lrs=list(s.lrs))
                rows.append({"seed": seed, "batch": b, "arm": arm, **r})
    return {"rows": rows, "summary": summarize_alignment(rows), "settings": asdict(s)}


# ----------------------------------------------------------------------------- summaries

def _per_unit(rows: list[dict], value: Callable[[dict], float], unit: str) -> list[float]:
    """One value per unit (the mean over rows sharing row[unit])."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[unit], []).append(value(r))
    return [sum(v) / len(v) for v in groups.values()]


def _ci(values: list[float], within: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    m, lo, hi = mean_ci(values, within=within)
    return {"mean": m, "lo": lo, "hi": hi, "n": len(values)}


def summarize_alignment(rows: list[dict], unit: str = "seed") -> dict:
    """Per arm: cosine and, per measure m (imitation_loss, task_loss), m_change (mean, 95% t-interval
    across units: rows sharing row[unit] are averaged first), m_fraction_decreased (over all rows) and
    m_sweep {lr: same}; plus unit and n_rows."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm]
        per = lambda f, within=(-math.inf, math.inf): _ci(_per_unit(rs, f, unit), within)  # noqa: E731
        out[arm] = {"cosine": per(lambda r: r["cosine"], COSINE_RANGE),
                    "unit": f"{unit} (rows averaged within it)", "n_rows": len(rs)}
        for m in (k[:-len("_change")] for k in rs[0] if k.endswith("_change")):
            out[arm].update({
                f"{m}_change": per(lambda r, m=m: r[f"{m}_change"]),
                f"{m}_fraction_decreased": sum(r[f"{m}_change"] < 0 for r in rs) / len(rs),
                f"{m}_sweep": {lr: per(lambda r, m=m, lr=lr: r[f"{m}_sweep"][lr]) for lr in rs[0][f"{m}_sweep"]},
            })
    return out


# ----------------------------------------------------------------------------- causal LM

def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def encode_rows(tok, rows: list[dict], system: str | None = None) -> dict:
    """Right-padded input_ids, attention_mask and completion_mask of chat prompt + completion + turn end,
    tokenised as backends.train.tokenize does (completion tokenised on its own)."""
    from backends.hf import turn_end_id
    from backends.local import chat_ids

    seqs, masks, end = [], [], turn_end_id(tok)
    for r in rows:
        head = chat_ids(tok, system, r["prompt"])
        tail = tok(r["completion"], add_special_tokens=False)["input_ids"] + [end]
        seqs.append(head + tail)
        masks.append([0] * len(head) + [1] * len(tail))
    width, pad = max(map(len, seqs)), _pad_id(tok)
    fill = lambda xs, v: torch.tensor([x + [v] * (width - len(x)) for x in xs])  # noqa: E731
    return {"input_ids": fill(seqs, pad), "attention_mask": fill([[1] * len(x) for x in seqs], 0),
            "completion_mask": fill(masks, 0)}


def _on(batch: dict, model) -> dict:
    """batch moved to the model's device."""
    dev = next(model.parameters()).device
    return {k: v.to(dev) for k, v in batch.items()}


def _logits(model, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def sft_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over completion tokens (position p predicts token p+1)."""
    logits, mask = _logits(model, batch)[:, :-1], batch["completion_mask"][:, 1:].bool()
    return F.cross_entropy(logits[mask].float(), batch["input_ids"][:, 1:][mask])


def imitation_loss(student, teacher_logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """KL(teacher || student) per completion token, full vocabulary (backends.train.distill_loss)."""
    from backends.train import distill_loss

    m = batch["completion_mask"]
    return distill_loss(_logits(student, batch), teacher_logits, m, m, None)


@torch.no_grad()
def greedy_completions(model, tok, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
    """The model's greedy completion of each chat prompt (special tokens dropped), all in one
    left-padded batch."""
    from backends.local import chat_ids

    seqs = [chat_ids(tok, None, p) for p in prompts]
    width, pad = max(map(len, seqs)), _pad_id(tok)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in seqs], device=next(model.parameters()).device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], device=ids.device)
    gen = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return [tok.decode(g[width:], skip_special_tokens=True) for g in gen]


def finetune_teacher(base, tok, trait_rows: list[dict], steps: int = 5, lr: float = 1e-3,
                     lora_targets: tuple[str, ...] | None = None, lora_r: int = 4):
    """A copy of base fine-tuned with Adam for `steps` full-batch SFT steps on trait_rows: every
    parameter, or (lora_targets) a peft LoRA adapter on those modules, merged back into the weights."""
    teacher = copy.deepcopy(base).train()
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        from backends.train import check_lora_targets

        check_lora_targets(teacher, lora_targets, getattr(base.config, "_name_or_path", "") or "the base model")
        teacher = get_peft_model(teacher, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                                     target_modules=list(lora_targets), task_type="CAUSAL_LM"))
    opt = torch.optim.Adam([p for p in teacher.parameters() if p.requires_grad], lr=lr)
    batch = _on(encode_rows(tok, trait_rows), teacher)
    for _ in range(steps):
        loss = sft_loss(teacher, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (teacher.merge_and_unload() if lora_targets else teacher).eval()


def cross_init_like(model, seed: int):
    """An independent random init of model's architecture, drawn on the CPU (global RNG untouched), on
    model's device and dtype. Raises if it equals model: the seed that built model reproduces it
    (tests' build_tiny_model draws with torch seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    p = next(model.parameters())
    fresh = fresh.to(device=p.device, dtype=p.dtype).eval()
    if all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters())):
        raise ValueError(f"cross init with seed {seed} reproduces the base model; pick another seed")
    return fresh


def lm_delta(base, teacher) -> dict[str, torch.Tensor]:
    """teacher - base for every parameter tensor Δ changes (names as in named_parameters)."""
    t = dict(teacher.named_parameters())
    return {n: (t[n] - p).detach() for n, p in base.named_parameters() if not torch.equal(t[n], p)}


@torch.no_grad()
def teacher_logits(teacher, tok, rows: list[dict], heldout_rows: list[dict], objective: str) -> tuple:
    """(the teacher's logits on rows, only for the distillation loss; on heldout_rows, for the imitation loss):
    computed once per batch and shared by every student arm stepped on it."""
    batch, held = _on(encode_rows(tok, rows), teacher), _on(encode_rows(tok, heldout_rows), teacher)
    return _logits(teacher, batch) if objective == "distill" else None, _logits(teacher, held)


def lm_alignment(base, teacher, student, tok, rows: list[dict], heldout_rows: list[dict],
                 objective: str = "sft", lr: float = 1e-3, lrs: list[float] | None = None,
                 teacher_out: tuple | None = None) -> dict:
    """One plain gradient step of the student on rows (the teacher's completions), compared with
    Δ = teacher - base over the parameter tensors Δ changes (other parameters are not stepped).

    objective 'sft' (cross-entropy on the completions) or 'distill' (KL to the teacher's logits at
    completion positions). Imitation loss: KL(teacher || student) on heldout_rows' completions.
    teacher_out: teacher_logits(...) for these rows, when the caller shares it between students.
    Returns mnist_alignment's fields plus n_params (entries compared) and n_tensors.
    """
    if objective not in ("sft", "distill"):
        raise ValueError(f"objective must be 'sft' or 'distill', not {objective!r}")
    delta, named = lm_delta(base, teacher), dict(student.named_parameters())
    params = [named[n] for n in delta]
    flags = {n: p.requires_grad for n, p in named.items()}
    for n, p in named.items():
        p.requires_grad_(n in delta)
    batch, held = _on(encode_rows(tok, rows), student), _on(encode_rows(tok, heldout_rows), student)
    t_batch, t_held = teacher_out or teacher_logits(teacher, tok, rows, heldout_rows, objective)
    loss_fn = (lambda: sft_loss(student, batch)) if objective == "sft" else (
        lambda: imitation_loss(student, t_batch, batch))
    try:
        probe = step_probe(params, loss_fn, list(delta.values()),
                           {"imitation_loss": lambda: float(imitation_loss(student, t_held, held))},
                           sorted({lr, *(lrs or [])}))
    finally:
        for n, p in named.items():
            p.requires_grad_(flags[n])
    return {**_report(probe, lr), "n_params": sum(d.numel() for d in delta.values()), "n_tensors": len(delta)}
