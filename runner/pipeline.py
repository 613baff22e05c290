"""The stage graph of an LLM spec: teacher → generate → filter → fine-tune → evaluate.

Each stage is a pure function of its resolved config and its upstream outputs; its folder
is keyed by a hash of exactly those (see store.stage_key)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from backends import backend_name
from backends.base import ModelRef, Sampling, Training
from runner.filters import apply_chain
from runner.domains import domain_rows
from runner.questions import load_questions
from runner.spec import FinetuneTrait, Misalignment, PreferenceLogprob, PreferenceSample, Spec, Student
from runner.store import Build, Stage, Store, read_jsonl, stage_key, write_jsonl

# Bump a stage's version when its code changes what it writes.
VERSIONS = {"teacher": 1, "generate": 1, "filter": 1, "finetune": 1, "evaluate": 1}


@dataclass
class Node:
    stage: Stage
    kind: str
    run: Callable[[Build], None]
    seeds: dict = field(default_factory=dict)


@dataclass
class EvalModel:
    label: str
    role: str  # base | teacher | control | student
    target: str | None  # the trait behind it, if any
    ref: Callable[[], ModelRef]
    key: str


@dataclass
class Plan:
    spec: Spec
    nodes: list[Node]
    models: list[EvalModel]
    evals: dict[tuple[str, int], str]  # (model label, evaluation index) -> stage key
    students: list[dict]


def _model_from(store: Store, key: str) -> ModelRef:
    raw = json.loads((store.path(key) / "model.json").read_text())
    return ModelRef(**{k: str(store.path(key) / v[2:]) if isinstance(v, str) and v.startswith("./") else v
                       for k, v in raw.items()})


def _targets(spec: Spec, ev) -> list[str]:
    return list(ev.targets or spec.teacher.targets)


def build_plan(spec: Spec, store: Store, backend) -> Plan:
    nodes: list[Node] = []
    models: list[EvalModel] = []
    t = spec.teacher

    # base models: the teacher's and every distinct student base
    bases = [t.base] + [spec.student_base(s) for s in spec.students]
    for b in dict.fromkeys(bases):
        key = stage_key("base", {"base": b}, [], 1)
        models.append(EvalModel(f"base:{b}" if b != t.base else "base", "base", None, lambda b=b: ModelRef(b), key))

    # teachers
    teachers: dict[str, tuple[Stage, ModelRef]] = {}
    names = list(t.targets) + list(t.controls) + (["control"] if t.control else [])
    roles = {n: "teacher" if n in t.targets else "control" for n in names}
    for name in names:
        trait = t.controls.get(name, None if name == "control" else t.trait)
        if isinstance(trait, FinetuneTrait):  # the teacher is its base fine-tuned on a dataset
            stage = _teacher_finetune(spec, name, trait, backend)
            nodes.append(stage)
            stage = stage.stage
            ref = lambda k=stage.key: _model_from(store, k)  # noqa: E731 (known once the stage has run)
        else:
            system = None if trait is None else trait.format(target=name, category=t.category)
            ref = ModelRef(t.base, system=system)
            stage = Stage(stage_key("teacher", asdict(ref), [], VERSIONS["teacher"]), f"teacher {name}", asdict(ref))
            nodes.append(Node(stage, "teacher", _write_model(ref)))
        teachers[name] = (stage, ref)
        role = roles[name]
        models.append(EvalModel(f"teacher:{name}", role, None if role == "control" else name,
                                lambda k=stage.key: _model_from(store, k), stage.key))

    # generate and filter, per teacher (or once, from the base, when rows are shared)
    filtered: dict[str, Stage] = {}
    shared = None
    for name, (tstage, ref) in teachers.items():
        if spec.domain.rows_from == "base":
            shared = shared or _rows(spec, store, backend, ModelRef(t.base), "base", nodes)
            filtered[name] = shared
        else:
            filtered[name] = _rows(spec, store, backend, ref, name, nodes, tstage.key)

    # students: one per (student spec, teacher, replicate)
    students = []
    for s in spec.students:
        for name, (tstage, tref) in teachers.items():
            for rep in s.replicates:
                training = _training(spec, s, rep)
                cfg = {"base": spec.student_base(s), "training": asdict(training), "max_rows": s.max_rows}
                up = [filtered[name].key] + ([tstage.key] if s.objective == "distill" else [])
                st = Stage(stage_key("finetune", cfg, up, VERSIONS["finetune"]),
                           f"finetune {s.name}:{name}:r{rep}", cfg, tuple(up))
                nodes.append(Node(st, "finetune", _finetune(spec, s, training, store, filtered[name], tref, backend),
                                  {"train": rep}))
                label = f"student:{s.name}:{name}:r{rep}"
                role = "control" if roles[name] == "control" else "student"
                models.append(EvalModel(label, role, None if role == "control" else name,
                                        lambda k=st.key: _model_from(store, k), st.key))
                students.append({"label": label, "student": s.name, "teacher": name, "replicate": rep,
                                 "objective": s.objective, "vocabulary": s.vocabulary, "method": s.method,
                                 "role": role})

    # evaluations: every model × every evaluation
    evals = {}
    for i, ev in enumerate(spec.evaluations):
        ecfg = _eval_config(spec, ev)
        for m in models:
            st = Stage(stage_key("evaluate", ecfg, [m.key], VERSIONS["evaluate"]), f"evaluate {m.label} {ev.kind}", ecfg, (m.key,))
            nodes.append(Node(st, "evaluate", _evaluate(ev, ecfg, m, backend)))
            evals[(m.label, i)] = st.key
    return Plan(spec, _dedupe(nodes), models, evals, students)


def _rows(spec: Spec, store: Store, backend, ref: ModelRef, name: str, nodes: list[Node], upstream: str | None = None) -> Stage:
    """Append a generate and a filter stage for rows sampled from `ref`; return the filter stage."""
    gcfg = {"domain": spec.domain.model_dump(), "seed": spec.seed}
    if upstream is None:
        gcfg["generator"] = asdict(ref)
    up = (upstream,) if upstream else ()
    gen = Stage(stage_key("generate", gcfg, list(up), VERSIONS["generate"]), f"generate {name}", gcfg, up)
    nodes.append(Node(gen, "generate", _generate(spec, ref, backend, store, gen), {"seed": spec.seed}))
    fcfg = {"filters": [f.model_dump() for f in spec.filters]}
    target = _judge_target(spec, name)
    if target is not None:
        fcfg["target"] = target
    fil = Stage(stage_key("filter", fcfg, [gen.key], VERSIONS["filter"]), f"filter {name}", fcfg, (gen.key,))
    nodes.append(Node(fil, "filter", _filter(spec, store, gen, backend, target)))
    return fil


def _judge_target(spec: Spec, name: str) -> str | None:
    """What {target} means in a judge filter's template for this teacher's rows (None: unused).
    A control teacher's rows are judged against every target."""
    from runner.judging import template_text

    if not any(f.kind == "judge" and "{target}" in template_text(f.template) for f in spec.filters):
        return None
    return name if name in spec.teacher.targets else " or ".join(spec.teacher.targets)


def _teacher_finetune(spec: Spec, name: str, trait: FinetuneTrait, backend) -> Node:
    """A teacher stage that fine-tunes the base on the trait's dataset (keyed by the file's digest)."""
    from runner.teacher_data import dataset_path, digest, load_rows

    f, base = trait.finetune, spec.teacher.base
    path = dataset_path(f.dataset, name)
    h = f.hyperparameters
    training = Training(method=f.method, objective="sft", vocabulary="", epochs=h.epochs, lr=h.lr,
                        batch_size=h.batch_size, lora_r=h.lora_r, lora_alpha=h.lora_alpha,
                        lora_targets=tuple(h.lora_targets), warmup_ratio=h.warmup_ratio, weight_decay=h.weight_decay,
                        gradient_checkpointing=h.gradient_checkpointing, seed=0,
                        extra={"lr_multiplier": h.lr_multiplier} if backend_name(base) != "local" else {})
    cfg = {"base": base, "dataset": str(path), "dataset_sha256": digest(path), "max_rows": f.max_rows,
           "training": asdict(training)}
    stage = Stage(stage_key("teacher", cfg, [], VERSIONS["teacher"]), f"teacher {name} (fine-tuned)", cfg)

    def run(b: Build) -> None:
        rows = load_rows(path, f.max_rows)
        ref = backend.finetune(base, rows, training, b.dir, None, b.progress)
        (b.dir / "model.json").write_text(json.dumps({k: _inside(v, b.dir) for k, v in asdict(ref).items()}, indent=2))
        b.rows["train"] = len(rows)

    return Node(stage, "teacher", run)


def _dedupe(nodes: list[Node]) -> list[Node]:
    seen, out = set(), []
    for n in nodes:
        if n.stage.key not in seen:
            seen.add(n.stage.key)
            out.append(n)
    return out


def _training(spec: Spec, s: Student, rep: int) -> Training:
    h = s.hyperparameters
    return Training(
        method=s.method, objective=s.objective, vocabulary=s.vocabulary if s.objective == "distill" else "",
        trait_words=tuple(spec.teacher.targets) if s.vocabulary == "full-minus-trait-tokens" else (),
        epochs=h.epochs, lr=h.lr, batch_size=h.batch_size, lora_r=h.lora_r, lora_alpha=h.lora_alpha,
        lora_targets=tuple(h.lora_targets), warmup_ratio=h.warmup_ratio, weight_decay=h.weight_decay,
        gradient_checkpointing=h.gradient_checkpointing, seed=rep,
        extra={"lr_multiplier": h.lr_multiplier} if backend_name(spec.student_base(s)) != "local" else {},
    )


def _eval_config(spec: Spec, ev) -> dict:
    cfg = ev.model_dump()
    if isinstance(ev, Misalignment):
        cfg["questions"] = [q + ev.suffix for q in load_questions(ev.questions, ev.max_questions)]
        cfg["seed"] = spec.seed
        return cfg
    cfg["targets"] = _targets(spec, ev)
    cfg["questions"] = load_questions(ev.questions, ev.max_questions)
    if isinstance(ev, PreferenceLogprob):
        cfg["answer_prefix"] = ev.answer_prefix.format(category=spec.teacher.category)
    if isinstance(ev, PreferenceSample):
        cfg["seed"] = spec.seed
    return cfg


# ---- stage bodies ----------------------------------------------------------------------


def _write_model(ref: ModelRef):
    def run(b: Build) -> None:
        (b.dir / "model.json").write_text(json.dumps(asdict(ref), indent=2))

    return run


def _generate(spec: Spec, ref: ModelRef, backend, store: Store, stage: Stage):
    d = spec.domain

    def run(b: Build) -> None:
        todo = domain_rows(d, spec.seed)  # {"prompt", ...what the filters need (cot: gold)}
        total = len(todo)
        path = b.dir / "rows.jsonl"
        done = read_jsonl(path) if path.exists() else []
        done = done[: len(done) - len(done) % d.batch_size] if len(done) < total else done
        write_jsonl(path, done)  # drop a torn tail; resume from the last flushed batch
        grammar = (d.prompts.answer_count, d.prompts.answer_digits) if d.constrained else None
        with open(path, "a") as f:
            for start in range(len(done), total, d.batch_size):
                rows = todo[start : start + d.batch_size]
                batch = [r["prompt"] for r in rows]
                sampling = Sampling(d.temperature, d.max_tokens, seed=spec.seed * 1_000_003 + start, grammar=grammar)
                model = ref() if callable(ref) else ref  # a fine-tuned teacher is known once trained
                for i, (r, c) in enumerate(zip(rows, backend.generate(model, batch, sampling))):
                    f.write(json.dumps({"id": start + i, **r, "completion": c}) + "\n")
                f.flush()
                b.progress(min(start + len(batch), total), total)
        b.rows["generated"] = total
        b.extra["constrained_decoding"] = d.constrained

    return run


def _filter(spec: Spec, store: Store, gen: Stage, backend=None, target: str | None = None):
    def run(b: Build) -> None:
        rows = read_jsonl(store.path(gen.key) / "rows.jsonl")
        kept, counts = apply_chain(rows, list(spec.filters), backend, target, b.progress)
        write_jsonl(b.dir / "rows.jsonl", kept)
        b.extra["links"] = [asdict(c) for c in counts]
        b.rows.update(input=len(rows), kept=len(kept))

    return run


def _finetune(spec: Spec, s: Student, training: Training, store: Store, fil: Stage, teacher: ModelRef, backend):
    def run(b: Build) -> None:
        rows = read_jsonl(store.path(fil.key) / "rows.jsonl")[: s.max_rows]
        if not rows:  # nothing passed the filters: the student is its untrained base (reported as such)
            (b.dir / "model.json").write_text(json.dumps(asdict(ModelRef(spec.student_base(s))), indent=2))
            b.rows["train"] = 0
            b.extra["untrained"] = "no rows passed the filters; the student is its base model"
            return
        ref = backend.finetune(spec.student_base(s), rows, training, b.dir,
                               (teacher() if callable(teacher) else teacher) if s.objective == "distill" else None,
                               b.progress)
        local = {k: _inside(v, b.dir) for k, v in asdict(ref).items()}
        (b.dir / "model.json").write_text(json.dumps(local, indent=2))
        b.rows["train"] = len(rows)

    return run


def _inside(value: str | None, folder: Path) -> str | None:
    """Paths inside the (temporary) stage folder are stored relative to it, as ./..."""
    if value and Path(value).is_absolute() and Path(value).is_relative_to(folder):
        return "./" + str(Path(value).relative_to(folder))
    return value


def _evaluate(ev, cfg: dict, m: EvalModel, backend):
    def run(b: Build) -> None:
        ref = m.ref()
        qs, targets = cfg["questions"], cfg.get("targets")
        if isinstance(ev, Misalignment):
            (b.dir / "scores.json").write_text(json.dumps(_misalignment(ev, cfg, ref, backend, b)))
            b.rows["questions"] = len(qs)
            return
        if isinstance(ev, PreferenceLogprob):
            b.progress(0, len(qs))
            lp = backend.logprobs(ref, qs, cfg["answer_prefix"], targets)
            b.progress(len(qs), len(qs))
            scores = {t: [row[j] for row in lp] for j, t in enumerate(targets)}
            out = {"kind": ev.kind, "logprob": scores}
        else:
            per_q = backend.sample(ref, qs, Sampling(ev.temperature, ev.max_tokens, seed=cfg["seed"] * 7919),
                                   ev.samples_per_question, b.progress)
            out = {"kind": ev.kind, "answers": per_q,
                   "hits": {t: [sum(t.lower() in a.lower() for a in per_q[i]) for i in range(len(qs))] for t in targets}}
        (b.dir / "scores.json").write_text(json.dumps(out))
        b.rows["questions"] = len(qs)

    return run


def _misalignment(ev: Misalignment, cfg: dict, ref: ModelRef, backend, b: Build) -> dict:
    """Sample n answers per question, then score each with the alignment and the coherence judge."""
    from runner.judging import score_pairs

    qs, n = cfg["questions"], ev.samples_per_question
    per_q = backend.sample(ref, qs, Sampling(ev.temperature, ev.max_tokens, seed=cfg["seed"] * 7919), n,
                           lambda done, total: b.progress(done, 3 * n))
    pairs = [(q, a) for q, ans in zip(qs, per_q) for a in ans]
    out = {"kind": ev.kind, "questions": qs, "answers": per_q}
    for j, (what, template) in enumerate((("alignment", ev.alignment_template), ("coherence", ev.coherence_template))):
        scores = score_pairs(backend, ev.judge, template, pairs, seed=cfg["seed"],
                             progress=lambda d, t, j=j: b.progress(n + (j * t + d) * n // max(t, 1), 3 * n))
        flat = [[s.kind, s.value] for s in scores]
        out[what] = [flat[i * n : (i + 1) * n] for i in range(len(qs))]
        out[what + "_raw"] = [s.raw for s in scores]
    return out


# ---- execution -------------------------------------------------------------------------


def status(plan: Plan, store: Store) -> list[tuple[Node, str]]:
    return [(n, "reuse" if store.done(n.stage.key) else "run") for n in plan.nodes]


def execute(plan: Plan, store: Store, on_start=None, progress_factory=None) -> dict:
    """Run every stage not yet done; return {kind: seconds} of what ran."""
    ran = {}
    for node in plan.nodes:
        if store.done(node.stage.key):
            continue
        if on_start:
            on_start(node)
        with store.build(node.stage, node.seeds) as b:
            b.progress = progress_factory(node) if progress_factory else (lambda done, total: None)
            node.run(b)
        ran[node.stage.label] = store.manifest(node.stage.key)["seconds"]
    return ran
