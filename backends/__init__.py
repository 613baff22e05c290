"""Backends: where a stage's generate / fine-tune / score calls run."""
from __future__ import annotations

import threading

from runner.core import ModelRef, backend_name

__all__ = ["Router", "backend_name"]


class Router:
    """Dispatch each call to the backend that serves its model, by the backend's kind; backends load lazily.

    `device` and `cpu_bf16` configure the local backend; `hosted` maps a backend name to its
    settings (the spec's `backends:` entries)."""

    def __init__(self, device: str = "auto", cpu_bf16: bool = False, hosted: dict | None = None):
        self.device, self.cpu_bf16, self.hosted = device, cpu_bf16, dict(hosted or {})
        self._backends: dict = {}
        self._lock = threading.Lock()  # hosted stages run in threads

    def __reduce__(self):  # pickled (to a Ray worker, say) as its settings; backends load afresh there
        return Router, (self.device, self.cpu_bf16, self.hosted)

    def get(self, base: str):
        name = backend_name(base)
        with self._lock:
            return self._backends.get(name) or self._load(name)

    def _load(self, name: str):
        if name not in self._backends:
            if name == "local":
                from backends.local import LocalBackend

                self._backends[name] = LocalBackend(self.device, self.cpu_bf16)
            elif self.hosted[name].kind == "tinker":
                from backends.tinker_api import TinkerBackend

                self._backends[name] = TinkerBackend(name, self.hosted[name])
            else:
                from backends.openai_api import OpenAIBackend

                self._backends[name] = OpenAIBackend(name, self.hosted[name])
        return self._backends[name]

    def generate(self, model: ModelRef, prompts, sampling):
        return self.get(model.base).generate(model, prompts, sampling)

    def sample(self, model: ModelRef, prompts, sampling, n, progress=None):
        return self.get(model.base).sample(model, prompts, sampling, n, progress)

    def logprobs(self, model: ModelRef, prompts, prefix, targets, space: bool = True):
        return self.get(model.base).logprobs(model, prompts, prefix, targets, space=space)

    def top_logprobs(self, model: ModelRef, prompts, k, sampling):
        return self.get(model.base).top_logprobs(model, prompts, k, sampling)

    def finetune(self, base: ModelRef, rows, training, out_dir, teacher=None, progress=None, soft_labels=None):
        """Train `base` (its name; and its pinned revision, which only a local hub model has) on `rows`."""
        local = {k: v for k, v in (("soft_labels", soft_labels), ("revision", base.revision)) if v is not None}
        return self.get(base.base).finetune(base.base, rows, training, out_dir, teacher, progress, **local)

    def soft_labels(self, teacher: ModelRef, base: ModelRef, rows, training, path):
        """A local teacher's distillation targets on `rows`, stored at `path` for every student of `base`."""
        local = {"revision": base.revision} if base.revision else {}
        return self.get(teacher.base).soft_labels(teacher, base.base, rows, training, path, **local)
