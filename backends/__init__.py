"""Backends: where a stage's generate / fine-tune / score calls run."""
from __future__ import annotations

from backends.base import ModelRef


def backend_name(base: str) -> str:
    """`openai:gpt-4.1-nano` runs on the hosted backend named `openai`; anything else is local."""
    return base.split(":", 1)[0] if ":" in base and not base.startswith(("/", ".", "~")) else "local"


class Router:
    """Dispatch each call to the backend that serves its model, by the backend's kind; backends load lazily."""

    def __init__(self, spec):
        self.spec = spec
        self._backends: dict = {}

    def get(self, base: str):
        name = backend_name(base)
        if name not in self._backends:
            if name == "local":
                from backends.local import LocalBackend

                self._backends[name] = LocalBackend(self.spec.runtime.device, self.spec.runtime.cpu_bf16)
            elif self.spec.backends[name].kind == "tinker":
                from backends.tinker_api import TinkerBackend

                self._backends[name] = TinkerBackend(name, self.spec.backends[name])
            else:
                from backends.openai_api import OpenAIBackend

                self._backends[name] = OpenAIBackend(name, self.spec.backends[name])
        return self._backends[name]

    def generate(self, model: ModelRef, prompts, sampling):
        return self.get(model.base).generate(model, prompts, sampling)

    def sample(self, model: ModelRef, prompts, sampling, n, progress=None):
        return self.get(model.base).sample(model, prompts, sampling, n, progress)

    def logprobs(self, model: ModelRef, prompts, prefix, targets):
        return self.get(model.base).logprobs(model, prompts, prefix, targets)

    def finetune(self, base, rows, training, out_dir, teacher=None, progress=None):
        return self.get(base).finetune(base, rows, training, out_dir, teacher, progress)
