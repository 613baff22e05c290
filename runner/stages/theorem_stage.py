"""The one-step theorem measured as one stage, on MNIST (per seed a reference init, a cross init and a
teacher; per noise batch one distillation step of a same-init and a cross-init student) or on a causal
LM, compared with the teacher's parameter delta (runner.theorem, runner.theorem_lm)."""
from __future__ import annotations

import json
from dataclasses import fields
from typing import ClassVar

from runner.mnist_spec import TheoremSpec
from runner.stages import FileInput, ModelInput, RunContext, Stage
from runner.theorem_lm_spec import TheoremLmSpec


class TheoremMnistStage(Stage):
    KIND: ClassVar[str] = "theorem"
    VERSION: ClassVar[int] = 2  # 2: pixels scaled as the MNIST stage scales them (x * (1/127.5) - 1, was x / 127.5 - 1)
    settings: TheoremSpec  # its `data` path is blanked: `data` keys the file's contents
    data: FileInput | None = None  # None: torchvision's MNIST, as for MnistStage
    seed: int
    title: str = ""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"label", "title"})

    def run(self, ctx: RunContext) -> None:
        from runner.mnist import load_mnist
        from runner.theorem import TheoremSettings, mnist_float, theorem_mnist

        s = self.settings
        known = {f.name for f in fields(TheoremSettings)}
        settings = TheoremSettings(**{k: v for k, v in s.model_dump().items() if k in known} | {"lrs": tuple(s.lrs)})
        seeds = [self.seed + k for k in range(s.seeds)]
        ctx.progress(0, len(seeds))
        res = theorem_mnist(settings, seeds, s.batches, mnist_float(load_mnist(self.data.path if self.data else None)))
        ctx.progress(len(seeds), len(seeds))
        plot_cosines(res["rows"], ctx.dir / "theorem.png", self.title)
        (ctx.dir / "result.json").write_text(json.dumps({**res, "plot": "theorem.png"}, default=str))
        ctx.rows["students"] = len(res["rows"])


def plot_cosines(rows: list[dict], path, title: str, what: str = "one distillation step on noise") -> None:
    """Per arm, each (seed, batch) cosine between the student's step and the teacher's delta, with a zero line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for i, arm in enumerate(arms):
        values = [r["cosine"] for r in rows if r["arm"] == arm]
        ax.plot([i] * len(values), values, "o", alpha=0.6)
        ax.hlines(sum(values) / len(values), i - 0.25, i + 0.25, colors="black")
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("cos(student step, teacher delta)")
    ax.set_title(f"{title}: {what}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


class TheoremLmStage(Stage):
    """The one-step theorem on a causal LM (runner.theorem_lm): a LoRA teacher per seed, one student
    step from the base (same init) and from a fresh init (cross init), in float32."""

    KIND: ClassVar[str] = "theorem-lm"
    VERSION: ClassVar[int] = 2  # 2: float32 weights loaded on CUDA too (bfloat16 ones were cast up)
    settings: TheoremLmSpec
    model: ModelInput  # the base (teacher's and same-init student's start)
    target: str
    category: str
    questions: FileInput
    seed: int
    device: str  # cpu or cuda; the measurement is float32 on either
    title: str = ""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"label", "title"})

    def run(self, ctx: RunContext) -> None:
        from backends.hf import load_model, load_tokenizer
        from runner.numbers import make_prompts
        from runner.questions import load_questions
        from runner.spec import NumbersDomain
        from runner.theorem_lm import theorem_lm_seeds

        ref = ctx.model(self.model)
        base = load_model(ref, device=self.device, fp32_weights=True)  # not bfloat16 on a GPU
        tok = load_tokenizer(ref.base, ref.revision)
        prompts_of = lambda seed, n: make_prompts(n, NumbersDomain().prompts, seed)  # noqa: E731
        seeds = [self.seed + k for k in range(self.settings.seeds)]
        res = theorem_lm_seeds(base, tok, load_questions(self.questions.path), self.target, self.category,
                               self.settings, seeds, prompts_of, ctx.progress,
                               memo_key=f"{self.model.identity}|{self.model.system}|{self.device}")
        plot_cosines(res["rows"], ctx.dir / "theorem.png", self.title,
                     f"one {self.settings.objective} step on the teacher's number completions")
        (ctx.dir / "result.json").write_text(json.dumps({**res, "plot": "theorem.png"}, default=str))
        ctx.rows["students"] = len(res["rows"])
