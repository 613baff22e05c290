"""Stage kinds as typed, frozen models.

A stage is a pure function of its declared inputs. Each kind is a pydantic model whose fields are
exactly those inputs: settings, upstream stage keys, files (FileInput: path + sha256) and models
(ModelInput: how to load it + what it is). Its key hashes every field except the ones the kind
names in DISPLAY (labels, file paths, load paths), and leaves out a field whose value equals its
default, so a field added later with a default that keeps today's behaviour changes no key
(tests/test_keys.py holds the recorded defaults). Bump a kind's VERSION when its code changes what
it writes. `run(ctx)` builds the stage's folder; `estimate(ctx)` says what a hosted stage will cost.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from runner.display import usd

KEY_SCHEME = 2  # 1: subl <= 0.1 (untyped dict configs); 2: typed stages


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    DISPLAY: ClassVar[frozenset[str]] = frozenset()


class FileInput(Frozen):
    """A file a stage reads: keyed by its contents, not its place."""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"path"})
    path: str
    sha256: str
    format: str | None = None  # how it is read where its name decides it (a questions file: yaml, else lines)


class ModelInput(Frozen):
    """A model a stage reads. `identity` is what it is (weights digest, hub revision, hosted endpoint
    and id, or the stage that made it); `ref` is how to load it, which may move without a rerun."""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"ref", "backend"})
    ref: str
    identity: str
    system: str | None = None  # a system prompt is part of the model's behaviour
    from_stage: str | None = None  # the stage whose model.json names it (fine-tuned teachers, students)
    backend: str | None = None  # a stage-made model: the spec's name now for the backend that serves it

    @property
    def hosted(self) -> bool:
        return self.identity.startswith("hosted:")


def base_of(m: ModelInput, stages: dict[str, "Stage"]) -> ModelInput:
    """The model a stage-made model was trained from (through any chain of stages); m itself otherwise."""
    while m.from_stage:
        m = stages[m.from_stage].base
    return m


def semantic(value: Any) -> Any:
    """The part of a value that goes into a key: DISPLAY fields and default-valued fields dropped
    (except `kind`, which tells union members apart)."""
    if isinstance(value, BaseModel):
        out = {}
        display = getattr(type(value), "DISPLAY", frozenset())
        for name, info in type(value).model_fields.items():
            v = getattr(value, name)
            if name in display:
                continue
            if name != "kind" and not info.is_required() and v == info.get_default(call_default_factory=True):
                continue
            out[name] = semantic(v)
        return out
    if isinstance(value, (list, tuple)):
        return [semantic(v) for v in value]
    if isinstance(value, dict):
        return {str(k): semantic(v) for k, v in value.items()}
    return value


class Stage(Frozen):
    KIND: ClassVar[str] = "stage"
    VERSION: ClassVar[int] = 1
    DISPLAY: ClassVar[frozenset[str]] = frozenset({"label"})
    label: str = ""

    @property
    def key(self) -> str:
        blob = json.dumps({"kind": self.KIND, "version": self.VERSION, "inputs": semantic(self)},
                          sort_keys=True, default=str)
        return f"{self.KIND}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def upstream(self) -> list[str]:
        """Keys of the stages this one reads (fields ending in _stage, and stage-made models)."""
        out: list[str] = []

        def walk(v: Any, name: str = "") -> None:
            if isinstance(v, ModelInput):
                out.extend([v.from_stage] if v.from_stage else [])
            elif isinstance(v, BaseModel):
                for n in type(v).model_fields:
                    walk(getattr(v, n), n)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    walk(x, name)
            elif isinstance(v, str) and name.endswith("_stage"):
                out.append(v)

        walk(self)
        return list(dict.fromkeys(out))

    def run(self, ctx: "RunContext") -> None:
        raise NotImplementedError

    def estimate(self, ctx: "PlanContext") -> list["Estimate"]:
        """Requests, tokens, cost (and seconds where known) of the hosted calls this stage makes; for a
        local stage, when the plan assumes a GPU throughput, its tokens and GPU seconds."""
        return []

    def verify(self, folder: Path) -> None:
        """Checks on a finished folder before it is renamed into place (raise on a bad build)."""

    def expected_rows(self, ctx: "PlanContext") -> int | None:
        """Rows this stage writes at most (None: not a row stage, or unknown)."""
        return None


@dataclass
class Estimate:
    backend: str
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0  # an upper bound: every completion at max_tokens
    training_tokens: int = 0
    cost: float | None = 0.0
    seconds: float | None = None
    note: str = ""
    table: str = "openai"  # the price table behind `cost`: openai (runner/prices.py) or tinker

    def line(self) -> str:
        parts = []
        if self.requests:
            parts.append(f"{self.requests:,} requests, ~{si(self.input_tokens)} input + <={si(self.output_tokens)} "
                         "output tokens")
        elif self.input_tokens:  # tokens read with no request of their own (a training step's extra forward)
            parts.append(f"~{si(self.input_tokens)} input tokens")
        if self.training_tokens:
            parts.append(f"~{si(self.training_tokens)} training tokens")
        cost = f"<= {usd(self.cost)}" if self.cost is not None else "cost unknown"
        time = f", ~{self.seconds / 3600:.1f} h" if self.seconds else ""
        if self.backend == "local":  # no price: GPU time at the plan's assumed throughput
            cost, time = f"~{(self.seconds or 0) / 3600:.2f} GPU-h", ""
        return f"{self.backend}:{self.model}: " + ", ".join(parts) + f", {cost}{time}" + (
            f" ({self.note})" if self.note else "")


def si(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


@dataclass
class RunContext:
    """What a running stage may use: its folder, finished upstream folders, the backends."""

    dir: Path
    store: Any  # runner.store.Store
    router: Any  # backends.Router
    progress: Callable[..., None] = lambda done, total, **kw: None
    rows: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def path(self, key: str) -> Path:
        return self.store.path(key)

    def model(self, m: ModelInput):
        """The loadable ModelRef of a model input (a stage-made model is read from its model.json)."""
        from runner.core import ModelRef
        from runner.store import stage_output

        if m.from_stage:
            folder = self.path(m.from_stage)
            made = stage_output(folder / "model.json")  # a missing or damaged file: one line naming it
            stored = made["base"].split(":", 1)
            raw = {k: str(folder / v[2:]) if isinstance(v, str) and v.startswith("./") else v for k, v in made.items()}
            if m.backend and m.backend != "local" and len(stored) == 2 and stored[0] != m.backend:
                raw["base"] = f"{m.backend}:{stored[1]}"  # the backend was renamed in the spec since (same key)
            return ModelRef(**{**raw, "system": m.system})
        # hub:<id>@<revision>, then '+turn_end:<token>' for a model whose turn end is not its eos
        revision = m.identity.rsplit("@", 1)[1].split("+", 1)[0] if m.identity.startswith("hub:") else None
        return ModelRef(m.ref, system=m.system, revision=revision)


@dataclass
class PlanContext:
    """What an estimate may read: every stage of the plan by key, and the hosted backends' settings."""

    stages: dict[str, Stage]
    backends: dict[str, Any]
    throughput: Any = None  # runner.throughput.Throughput: local stages get GPU-hours; None: no estimate
    done: frozenset = frozenset()  # keys of the stages already built (they will spend nothing)
