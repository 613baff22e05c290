"""The MNIST auxiliary-logit experiment as one stage: teacher, students of every arm, test accuracy."""
from __future__ import annotations

import json
from typing import ClassVar

from runner.mnist_spec import MnistSpec
from runner.stages import FileInput, RunContext, Stage


class MnistStage(Stage):
    KIND: ClassVar[str] = "mnist"
    settings: MnistSpec  # its `data` path is blanked: `data` keys the file's contents
    data: FileInput | None = None  # None: torchvision's MNIST, read from or downloaded to its folder
    seed: int
    title: str = ""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"label", "title"})

    def run(self, ctx: RunContext) -> None:
        from runner.mnist import plot_arms, run_mnist, summarize

        def update(what: str, done: int, total: int) -> None:
            ctx.progress(done, total, note=what)

        settings = self.settings.model_copy(update={"data": self.data.path if self.data else None})
        res = run_mnist(settings, self.seed, update)
        summary = summarize(res["arms"])
        plot = plot_arms(summary, ctx.dir / "mnist_arms.png", f"{self.title}: auxiliary-logit distillation on noise")
        (ctx.dir / "result.json").write_text(json.dumps({**res, "summary": summary, "plot": plot.name}))
        ctx.rows["seeds"] = self.settings.seeds
