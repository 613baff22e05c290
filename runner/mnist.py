"""MNIST auxiliary-logit subliminal learning (Cloud et al. 2025, arXiv 2507.14805).

A teacher MLP (784 -> h -> h -> 10+m) learns digits through its 10 regular logits.
Students distil only its m auxiliary logits on noise images. A student sharing the
teacher's initialisation learns digits; one from a different initialisation does not.

All seeds (and all student arms) train at once as a stack of models: parameters carry
a leading model dimension and layers are batched matmuls. `run_mnist_loop` is a plain
one-nn.Module-per-seed version of the same computation, used by the benchmark/tests.
"""
from __future__ import annotations

import gzip
import math
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from runner.mnist_spec import MnistSpec

try:  # the CLI prints a UserError as one line
    from runner.errors import UserError
except ImportError:  # pragma: no cover
    UserError = Exception

N_CLASSES = 10
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [REPO.parent / "shared/data/mnist/mnist.npz", REPO / "data/mnist",
                Path.home() / ".cache/subl/mnist"]
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
Progress = Callable[[str, int, int], None]
Params = list  # [W1, b1, W2, b2, W3, b3]; W: [K, in, out], b: [K, 1, out]


# ----------------------------------------------------------------------------- data

class MnistData(NamedTuple):
    x_train: np.ndarray  # uint8 [N, 28, 28]
    y_train: np.ndarray  # uint8/int [N]
    x_test: np.ndarray
    y_test: np.ndarray


class MnistDataNotFound(UserError, FileNotFoundError):
    """No MNIST data where we looked; the message is one line."""


class MnistDataError(UserError, ValueError):
    """MNIST data found but unusable; the message is one line."""


def _read_idx(path: Path) -> np.ndarray:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = bytearray(f.read())  # writable, so torch.from_numpy does not warn
    magic, n = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic == 2049:
        return np.frombuffer(raw, np.uint8, n, offset=8)
    if magic == 2051:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        return np.frombuffer(raw, np.uint8, n * rows * cols, offset=16).reshape(n, rows, cols)
    raise MnistDataError(f"{path}: not an MNIST IDX file (magic {magic}, expected 2049 or 2051)")


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files (plain or .gz) in a folder, or in torchvision's MNIST/raw or raw below it."""
    for d in (folder, folder / "MNIST" / "raw", folder / "raw"):
        found = {key: next((p for p in (d / name, d / f"{name}.gz") if p.is_file()), None)
                 for key, name in IDX_FILES.items()}
        if all(found.values()):
            return found
    return None


def _load_folder(folder: Path) -> MnistData | None:
    files = _idx_files(folder)
    return MnistData(**{key: _read_idx(p) for key, p in files.items()}) if files else None


def default_data() -> Path | None:
    """The default location load_mnist(None) reads: the first that holds an .npz or the four IDX files."""
    return next((p for p in DEFAULT_DATA if p.is_file() or (p.is_dir() and _idx_files(p))), None)


def download_root() -> Path:
    """Where load_mnist(None) has torchvision download MNIST (the last default location)."""
    return DEFAULT_DATA[-1]


def check_data_path(p: Path) -> None:
    """MNIST data is an .npz (a zip archive) or a folder: a single IDX file or an .npy is neither."""
    if p.is_file() and not zipfile.is_zipfile(p):
        raise MnistDataError(f"{p}: not MNIST data; give an .npz (x_train, y_train, x_test, y_test) "
                             "or a folder of IDX files")


def _load_npz(path: Path) -> MnistData:
    with np.load(path) as z:
        missing = [k for k in MnistData._fields if k not in z.files]
        if missing:
            raise MnistDataError(f"{path}: npz lacks keys {missing}; need x_train, y_train, x_test, y_test")
        return MnistData(*(z[k] for k in MnistData._fields))


def _load_path(p: Path) -> MnistData | None:
    check_data_path(p)
    try:
        if p.is_file():
            return _load_npz(p)
        return _load_folder(p) if p.is_dir() else None
    except MnistDataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # corrupt or truncated files
        raise MnistDataError(f"{p}: unreadable MNIST data ({type(e).__name__}: {e})".replace("\n", " ")) from e


def _torchvision(root: Path) -> tuple[MnistData | None, str]:
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return None, "torchvision not installed"
    try:
        tr, te = (MNIST(str(root), train=t, download=True) for t in (True, False))
    except Exception as e:  # offline, mirror down, ...
        return None, f"torchvision download failed ({type(e).__name__})"
    return MnistData(tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()), ""


def load_mnist(path: str | Path | None = None) -> MnistData:
    """Load MNIST from an .npz or IDX folder; None: default locations, then torchvision."""
    looked = [Path(path).expanduser()] if path is not None else DEFAULT_DATA
    for p in looked:
        if (data := _load_path(p)) is not None:
            return data
    why = ""
    if path is None:
        data, why = _torchvision(download_root())
        if data is not None:
            return data
        why = f"; {why}"
    where = ", ".join(str(p) for p in looked)
    raise MnistDataNotFound(f"MNIST data not found (looked in: {where}{why}); set mnist.data to an .npz "
                            f"(x_train, y_train, x_test, y_test) or a folder with the four IDX files")


def scale_pixels(u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]."""
    return torch.mul(u8, 1 / 127.5).sub_(1.0)


def to_tensors(data: MnistData):
    """(x_train uint8 [N, 784] (scaled per batch, cheaper to gather), y_train, x_test float32, y_test)."""
    def u8(a, split: str):
        a = np.ascontiguousarray(a)
        if a.dtype != np.uint8 or math.prod(a.shape[1:]) != 784:
            raise MnistDataError(f"MNIST images must be uint8 28x28, got {a.dtype} {a.shape[1:]}")
        if not len(a):  # an empty test split divided by zero; an empty train split trained nothing, silently
            raise MnistDataError(f"MNIST x_{split} holds no images")
        return torch.from_numpy(a.reshape(len(a), 784))

    def y(a, n_images: int, split: str):
        a = np.asarray(a)  # a float label 3.5 was read as class 3
        if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.isfinite(a).all() and (a == a.round()).all()):
            raise MnistDataError(f"MNIST y_{split} must be whole-number class indices, got {a.dtype} values"
                                 + (" that are not whole numbers" if a.dtype.kind == "f" else ""))
        a = a.astype(np.int64)
        if a.ndim != 1 or len(a) != n_images:
            raise MnistDataError(f"MNIST y_{split} must be 1-D class indices, one per image of x_{split} "
                                 f"({n_images}), got shape {a.shape}")
        if len(a) and not 0 <= a.min() <= a.max() < N_CLASSES:
            raise MnistDataError(f"MNIST labels must be 0..9, got {a.min()}..{a.max()}")
        return torch.from_numpy(a)
    x_train, x_test = u8(data.x_train, "train"), u8(data.x_test, "test")
    return (x_train, y(data.y_train, len(x_train), "train"), scale_pixels(x_test),
            y(data.y_test, len(x_test), "test"))


# ----------------------------------------------------------------------------- models

def _sizes(spec: MnistSpec) -> list[int]:
    return [784, spec.hidden, spec.hidden, N_CLASSES + spec.m]


def draw_init(sizes: list[int], init: str, g: torch.Generator) -> Params:
    """One model's parameters, W as [in, out] (transpose of nn.Linear.weight), b as [1, out]."""
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "paper":
            w, b = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in), torch.zeros(1, fan_out)
        else:  # nn.Linear default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)), same bound for bias
            bound = 1 / math.sqrt(fan_in)
            w = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=g)
            b = torch.empty(1, fan_out).uniform_(-bound, bound, generator=g)
        out += [w.t().contiguous(), b]
    return out


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random permutation of range(n) with no fixed point (rejection sampling, ~e tries)."""
    if n < 2:
        raise ValueError(f"no derangement of {n} element(s)")
    ar = torch.arange(n)
    while True:
        p = torch.randperm(n, generator=generator)
        if not (p == ar).any():
            return p


def permute_hidden(params: Params, g: torch.Generator) -> Params:
    """Derange both hidden layers' units: same function, different parameters."""
    w1, b1, w2, b2, w3, b3 = params
    p1, p2 = derangement(w1.shape[-1], g), derangement(w2.shape[-1], g)
    return [w1[..., p1], b1[..., p1], w2[..., p1, :][..., p2], b2[..., p2], w3[..., p2, :], b3.clone()]


def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Stacked MLP: x [K, B, 784] -> logits [K, B, 10+m] (also works unbatched)."""
    w1, b1, w2, b2, w3, b3 = params
    h = torch.baddbmm(b1, x, w1).relu_() if x.dim() == 3 else torch.addmm(b1, x, w1).relu_()
    h = torch.baddbmm(b2, h, w2).relu_() if x.dim() == 3 else torch.addmm(b2, h, w2).relu_()
    return torch.baddbmm(b3, h, w3) if x.dim() == 3 else torch.addmm(b3, h, w3)


def _stack(models: list[Params]) -> Params:
    return [torch.stack(ts).requires_grad_() for ts in zip(*models)]


# ----------------------------------------------------------------------------- losses

def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the regular logits: per-model batch mean, summed over models."""
    return F.cross_entropy(logits[..., :N_CLASSES].reshape(-1, N_CLASSES), y.reshape(-1),
                           reduction="sum") / y.shape[-1]


def _distill(s: torch.Tensor, t: torch.Tensor, spec: MnistSpec) -> torch.Tensor:
    """Student logits s vs teacher logits t: per-model batch mean, summed over models."""
    if spec.loss == "mse":
        return (s - t).square().mean((-2, -1)).sum()
    tau = spec.temperature
    logp = F.log_softmax(t / tau, -1)
    kl = (logp.exp() * (logp - F.log_softmax(s / tau, -1))).sum(-1)
    return kl.mean(-1).sum() * tau * tau


def _arm_slice(arm: str) -> slice:
    return slice(None) if arm.startswith("all_logit") else slice(N_CLASSES, None)


def _noise_(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    return x.uniform_(-1.0, 1.0, generator=g) if kind == "uniform" else x.normal_(generator=g)


def fixed_noise(spec: MnistSpec, gnoise: list[torch.Generator]) -> list[torch.Tensor] | None:
    """noise_set fixed: each seed's set of noise_per_epoch images, drawn once; fresh: None."""
    if spec.noise_set == "fresh":
        return None
    return [_noise_(torch.empty(spec.noise_per_epoch, 784), spec.noise, g) for g in gnoise]


def noise_epoch(spec: MnistSpec, gnoise: list[torch.Generator], fixed: list[torch.Tensor] | None
                ) -> Iterator[torch.Tensor]:
    """One student epoch of noise batches [S, b, 784]: fresh draws, or each seed's fixed set in a new order."""
    S, n, bs = len(gnoise), spec.noise_per_epoch, spec.batch_size
    order = [torch.randperm(n, generator=g) for g in gnoise] if fixed is not None else None
    for i in range(0, n, bs):
        b = min(bs, n - i)
        if order is not None:
            yield torch.stack([f[o[i:i + b]] for f, o in zip(fixed, order)])
            continue
        x = torch.empty(S, b, 784)
        for s, g in enumerate(gnoise):
            _noise_(x[s], spec.noise, g)
        yield x


# ----------------------------------------------------------------------------- seeding

def _generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """Independent (init, data order, noise) generators for one seed."""
    kids = np.random.SeedSequence(seed).spawn(3)
    return tuple(torch.Generator().manual_seed(int(k.generate_state(1, np.uint64)[0] >> 1)) for k in kids)


def _inits(spec: MnistSpec, g: torch.Generator) -> tuple[Params, Params]:
    """(reference init, cross init) for one seed."""
    sizes = _sizes(spec)
    ref = draw_init(sizes, spec.init, g)
    cross = draw_init(sizes, spec.init, g) if spec.cross_init == "fresh" else permute_hidden(ref, g)
    return ref, cross


def student_arms(spec: MnistSpec) -> list[str]:
    return (["same_init", "cross_init"] + (["all_logit"] if spec.all_logit_student else [])
            + (["all_logit_cross_init"] if spec.all_logit_cross_student else []))


CROSS_ARMS = frozenset({"cross_init", "all_logit_cross_init"})  # arms that start from the cross init


# ----------------------------------------------------------------------------- batched training

def _train_teacher(teacher: Params, xtr, ytr, gdata, spec: MnistSpec, progress: Progress | None):
    opt = torch.optim.Adam(teacher, lr=spec.lr)
    n, bs = len(xtr), spec.batch_size
    for ep in range(spec.teacher_epochs):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gdata])  # [S, N]
        for i in range(0, n, bs):
            idx = perm[:, i:i + bs]
            loss = _ce(forward(teacher, scale_pixels(xtr[idx])), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress:
            progress("teacher", ep + 1, spec.teacher_epochs)


def _train_students(students: Params, teacher: Params, arms: list[str], gnoise, spec: MnistSpec,
                    progress: Progress | None):
    """All arms x seeds in one stack (model k*S + s); each seed's noise is shared by its arms."""
    opt = torch.optim.Adam(students, lr=spec.lr)
    S, K = len(gnoise), len(arms)
    fixed = fixed_noise(spec, gnoise)
    for ep in range(spec.student_epochs):
        for x0 in noise_epoch(spec, gnoise, fixed):
            b = x0.shape[1]
            x = x0.expand(K, S, b, 784).reshape(K * S, b, 784)  # same noise for every arm of a seed
            with torch.no_grad():
                t = forward(teacher, x0)  # [S, b, O]
            out = forward(students, x).view(K, S, b, -1)
            loss = sum(_distill(out[k][..., _arm_slice(a)], t[..., _arm_slice(a)], spec)
                       for k, a in enumerate(arms))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress:
            progress("students", ep + 1, spec.student_epochs)


def train_batched(spec: MnistSpec, tensors, seed: int, progress: Progress | None = None) -> dict[str, Params]:
    """Train every arm for seeds seed..seed+S-1; returns arm -> stacked params [S, ...]."""
    xtr, ytr = tensors[0], tensors[1]
    gens = [_generators(seed + i) for i in range(spec.seeds)]
    refs, crosses = zip(*(_inits(spec, g[0]) for g in gens))
    S, arms = spec.seeds, student_arms(spec)
    teacher = _stack(refs)
    _train_teacher(teacher, xtr, ytr, [g[1] for g in gens], spec, progress)
    teacher = [p.detach() for p in teacher]
    students = _stack([m for a in arms for m in (crosses if a in CROSS_ARMS else refs)])
    _train_students(students, teacher, arms, [g[2] for g in gens], spec, progress)
    out = {"teacher": teacher, "init": [t.detach() for t in _stack(refs)]}
    for k, a in enumerate(arms):
        out[a] = [p.detach()[k * S:(k + 1) * S] for p in students]
    return out


@torch.no_grad()
def accuracy(params: Params, x: torch.Tensor, y: torch.Tensor, chunk: int = 2500) -> list[float]:
    """Per-model test accuracy of the regular logits (argmax)."""
    K = params[0].shape[0]
    correct = torch.zeros(K, dtype=torch.long)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk].expand(K, -1, -1)
        pred = forward(params, xb)[..., :N_CLASSES].argmax(-1)
        correct += (pred == y[i:i + chunk]).sum(-1)
    return [c / len(x) for c in correct.tolist()]


def _result(arm_params: dict[str, Params], tensors, t0: float) -> dict:
    xte, yte = tensors[2], tensors[3]
    order = ["teacher", "same_init", "cross_init", "init", "all_logit", "all_logit_cross_init"]
    arms = {a: accuracy(arm_params[a], xte, yte) for a in order if a in arm_params}
    return {"arms": arms, "seconds": time.perf_counter() - t0, "n_test": len(xte)}


def run_mnist(spec: MnistSpec, seed: int, progress: Progress | None = None, *,
              data: MnistData | None = None) -> dict:
    """Run all arms for spec.seeds seeds (seed i uses seed + i) as batched models.

    progress(stage, done, total) is called after each epoch, stage "teacher" then "students".
    Returns {"arms": {arm: [test accuracy per seed]}, "seconds": wall-clock, "n_test": int};
    arms: teacher, same_init, cross_init, init, all_logit when spec.all_logit_student, and
    all_logit_cross_init when spec.all_logit_cross_student.
    """
    t0 = time.perf_counter()
    tensors = to_tensors(data if data is not None else load_mnist(spec.data))
    return _result(train_batched(spec, tensors, seed, progress), tensors, t0)


# ----------------------------------------------------------------------------- plain loop (reference)

class MLP(torch.nn.Module):
    def __init__(self, params: Params):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for w, b in zip(params[0::2], params[1::2]):
            lin = torch.nn.utils.skip_init(torch.nn.Linear, *w.shape)  # no draw from the global RNG
            with torch.no_grad():
                lin.weight.copy_(w.t())
                lin.bias.copy_(b[0])
            self.layers.append(lin)

    def forward(self, x):
        for i, lin in enumerate(self.layers):
            x = lin(x) if i == len(self.layers) - 1 else F.relu(lin(x))
        return x

    def params(self) -> Params:
        return [t.detach().unsqueeze(0) for lin in self.layers for t in (lin.weight.t(), lin.bias[None])]


def _loop_seed(spec: MnistSpec, xtr, ytr, seed: int) -> dict[str, MLP]:
    g_init, g_data, g_noise = _generators(seed)
    ref, cross = _inits(spec, g_init)
    teacher = MLP(ref)
    opt = torch.optim.Adam(teacher.parameters(), lr=spec.lr)
    n, bs = len(xtr), spec.batch_size
    for _ in range(spec.teacher_epochs):
        perm = torch.randperm(n, generator=g_data)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = _ce(teacher(scale_pixels(xtr[idx])), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    arms = student_arms(spec)
    models = {a: MLP(cross if a in CROSS_ARMS else ref) for a in arms}
    opts = {a: torch.optim.Adam(m.parameters(), lr=spec.lr) for a, m in models.items()}
    fixed = fixed_noise(spec, [g_noise])
    for _ in range(spec.student_epochs):
        for (x,) in noise_epoch(spec, [g_noise], fixed):
            with torch.no_grad():
                t = teacher(x)
            for a, m in models.items():
                loss = _distill(m(x)[..., _arm_slice(a)], t[..., _arm_slice(a)], spec)
                opts[a].zero_grad(set_to_none=True)
                loss.backward()
                opts[a].step()
    return {"teacher": teacher, "init": MLP(ref), **models}


def train_loop(spec: MnistSpec, tensors, seed: int, progress: Progress | None = None) -> dict[str, Params]:
    """Same computation as train_batched, one nn.Module per seed, trained sequentially."""
    per_seed = []
    for i in range(spec.seeds):
        per_seed.append(_loop_seed(spec, tensors[0], tensors[1], seed + i))
        if progress:
            progress("seed", i + 1, spec.seeds)
    return {a: [torch.cat(ts) for ts in zip(*(d[a].params() for d in per_seed))] for a in per_seed[0]}


def run_mnist_loop(spec: MnistSpec, seed: int, progress: Progress | None = None, *,
                   data: MnistData | None = None) -> dict:
    """Reference: like run_mnist, but a plain Python loop over per-seed nn.Modules."""
    t0 = time.perf_counter()
    tensors = to_tensors(data if data is not None else load_mnist(spec.data))
    return _result(train_loop(spec, tensors, seed, progress), tensors, t0)


# ----------------------------------------------------------------------------- summary and plot

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]  # df = 1..30


def _t975(df: int) -> float:
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, df))
    except ImportError:
        return _T975[df - 1] if df <= 30 else 1.96


def summarize(arms: dict[str, list[float]]) -> dict:
    """Per arm: mean, 95% t-interval across seeds (ci95 half-width, lo, hi; None for one seed), values."""
    out = {}
    for arm, vals in arms.items():
        v = np.asarray(vals, float)
        mean, n = float(v.mean()), len(v)
        half = float(_t975(n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        out[arm] = {"mean": mean, "ci95": half, "lo": None if half is None else mean - half,
                    "hi": None if half is None else mean + half, "n": n, "values": [float(x) for x in v]}
    return out


LABELS = {"teacher": "teacher", "same_init": "aux-only\nsame init", "cross_init": "aux-only\ncross init",
          "all_logit": "all-logit\nsame init", "all_logit_cross_init": "all-logit\ncross init",
          "init": "reference\ninit"}


def _whisker(arm: dict) -> tuple[float, float]:
    """How far (in points) an arm's 95% interval, clipped to [0, 1], reaches below and above its mean."""
    if arm.get("lo") is None:
        return 0.0, 0.0
    return 100 * (arm["mean"] - max(arm["lo"], 0.0)), 100 * (min(arm["hi"], 1.0) - arm["mean"])


def plot_arms(summary: dict, png_path: str | Path, title: str = "MNIST subliminal learning") -> Path:
    """Bar chart of per-arm mean test accuracy with 95% CI whiskers, seed dots and a chance line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = [a for a in ("teacher", "same_init", "cross_init", "all_logit", "all_logit_cross_init", "init")
            if a in summary]
    arms += [a for a in summary if a not in arms]
    fig = Figure(figsize=(1.4 * len(arms) + 1.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    means = [100 * summary[a]["mean"] for a in arms]
    errs = [_whisker(summary[a]) for a in arms]  # (below, above): a clipped interval is not symmetric
    colors = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#dd8452", "#8c8c8c"]
    ax.bar(range(len(arms)), means, yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=5,
           color=[colors[i % 6] for i in range(len(arms))])
    for i, a in enumerate(arms):
        vals = [100 * v for v in summary[a]["values"]]
        ax.scatter([i] * len(vals), vals, s=10, color="k", zorder=3)
        ax.text(i, means[i] + errs[i][1] + 2, f"{means[i]:.1f}", ha="center", fontsize=9)
    ax.axhline(10, ls="--", color="gray", lw=1, label="chance (10%)")
    ax.set_xticks(range(len(arms)), [LABELS.get(a, a) for a in arms])
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    return png_path
