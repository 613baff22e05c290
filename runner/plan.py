"""From a spec to its typed stage graph: which stages, with which inputs, in which order.

One place builds the graph that `subl run` executes, `subl plan` prices, and `subl status`,
`subl diff` and `subl report` read back. Model identities (weights digests, hub revisions,
hosted endpoints) are resolved here, once per plan."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from backends.judge import PARSER_VERSIONS
from runner.core import backend_name, is_hosted
from runner.features import supports
from runner.filters import WORD_EDGES
from runner.identity import Identities, data_digest, file_sha256
from runner.loader import Cell
from runner.spec import REWRITES, FinetuneTrait, Hyper, Spec, Student
from runner.stages import FileInput, ModelInput, PlanContext, Stage, base_of
from runner.stages.data import SOURCE_FIELD, FilterStage, GenerateStage, JudgeThreshold, RewriteCheck, ScoreStage
from runner.stages.detection_stage import CLASSIFIER_TEXTS, ICL_TEXTS, ClassifierStage, IclStage
from runner.stages.evaluation import AnswersStage, ProbeStage
from runner.stages.mcq_stage import McqSettings, McqStage
from runner.stages.mnist_stage import MnistStage
from runner.stages.rewrite_stage import RewriteStage
from runner.stages.theorem_stage import TheoremLmStage, TheoremMnistStage
from runner.stages.training import FinetuneStage, SoftLabelStage, TeacherStage, TrainingSettings
from runner.rewrite import CHECKS
from runner.templates import template_text


@dataclass
class EvalModel:
    """A model the evaluations question, with what it is in the experiment."""

    label: str
    role: str  # base | teacher | control | student
    trait: str | None  # the trait behind it, if any
    model: ModelInput
    student: str | None = None  # students: the student spec's name, teacher name and replicate
    teacher: str | None = None
    replicate: int | None = None
    objective: str | None = None
    vocabulary: str | None = None


@dataclass
class CellPlan:
    cell: Cell
    stages: list[Stage] = field(default_factory=list)
    models: list[EvalModel] = field(default_factory=list)
    evals: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)  # (label, eval i) -> part -> key
    filters: dict[str, list[str]] = field(default_factory=dict)  # rows name -> filter stage keys in chain order
    detection: dict[int, list[dict]] = field(default_factory=dict)  # eval i -> icl / classifier stages (see _detection)
    mnist: str | None = None
    theorem: str | None = None

    @property
    def spec(self) -> Spec:
        return self.cell.spec

    def add(self, stage: Stage) -> Stage:
        if all(s.key != stage.key for s in self.stages):
            self.stages.append(stage)
        return stage


@dataclass
class Plan:
    cells: list[CellPlan]

    @property
    def stages(self) -> dict[str, Stage]:
        """Every stage once, in run order (a stage shared by cells appears where first needed)."""
        out: dict[str, Stage] = {}
        for c in self.cells:
            for s in c.stages:
                out.setdefault(s.key, s)
        return out

    def context(self, throughput=None, store=None) -> PlanContext:
        """throughput (runner.throughput.Throughput): local stages' estimates give GPU seconds at it; store: the
        stages it holds built are known done (a stage shares work with the others still to run)."""
        backends = {k: v for c in self.cells for k, v in c.spec.backends.items()}
        done = frozenset(k for k in self.stages if store.done(k)) if store is not None else frozenset()
        return PlanContext(self.stages, backends, throughput, done)


def build(cells: list[Cell], outputs: Path | str, provisional: bool = False) -> Plan:
    """provisional (plan only): a hub id whose revision cannot be resolved gets the key part '@unresolved', and
    no revision is recorded in outputs."""
    return Plan([build_cell(c, outputs, provisional) for c in cells])


def build_cell(cell: Cell, outputs: Path | str, provisional: bool = False) -> CellPlan:
    spec = cell.spec
    plan = CellPlan(cell)
    ids = Identities(outputs, spec.backends, provisional)
    if spec.experiment == "mnist":
        plan.mnist = plan.add(_mnist(spec)).key
        return plan
    if spec.experiment == "theorem_mnist":
        plan.theorem = plan.add(_theorem(spec)).key
        return plan
    prec = _Precision(spec)
    if spec.experiment == "theorem_lm":
        plan.theorem = plan.add(_theorem_lm(spec, ids, prec)).key
        return plan
    teachers = _teachers(spec, plan, ids, prec)
    rows = _rows(spec, plan, ids, prec, teachers)
    _students(spec, plan, ids, prec, teachers, rows, lambda seed: _rows(
        spec.model_copy(update={"seed": seed}), plan, ids, prec, teachers, f" (data seed {seed})"))
    _evaluations(spec, plan, ids, prec)
    _detection(spec, plan, ids, prec, teachers, rows)
    return plan


# ---- inputs ----------------------------------------------------------------------------


def sample_fields(j) -> dict:
    """A judge's reading settings for its score stage: a sample-mode judge's reply settings, a chat API
    log-prob judge's token, a local log-prob judge's answer prefix."""
    if j.mode != "sample" and j.token is not None:
        return {"max_tokens": None, "temperature": j.temperature, "token": j.token, "top_logprobs": j.top_logprobs}
    if j.mode != "sample":
        return {"max_tokens": None, "answer_prefix": j.answer_prefix}
    return {"max_tokens": j.max_tokens, "temperature": j.temperature, "parse": j.parse}


def model_input(ids: Identities, ref: str, system: str | None = None) -> ModelInput:
    return ModelInput(ref=loadable(ref), identity=ids.model(ref), system=system)


def loadable(ref: str) -> str:
    """A local model folder named by a relative path, as an absolute one: a Ray worker's working folder is not
    the driver's (ref is in no key, so nothing moves)."""
    from backends.embedded import EMBEDDED

    if backend_name(ref) != "local" or ref in EMBEDDED:
        return ref
    path = Path(ref).expanduser()
    return str(path.resolve()) if not path.is_absolute() and path.is_dir() else ref


def made_by(stage: Stage, label: str, system: str | None = None) -> ModelInput:
    base = stage.base
    backend = base.backend if base.from_stage else backend_name(base.ref)
    return ModelInput(ref=label, identity=f"stage:{stage.key}", system=system, from_stage=stage.key, backend=backend)


def file_input(path: str) -> FileInput:
    p = Path(path)
    return FileInput(path=str(p), sha256=data_digest(p) if p.is_dir() else file_sha256(p))


def questions_input(name: str) -> FileInput:
    from runner.questions import BUILTIN, file_format, questions_digest

    if name in BUILTIN:
        return FileInput(path=f"builtin:{name}", sha256=questions_digest(name))
    return file_input(name).model_copy(update={"format": file_format(name)})  # the same bytes read otherwise


class _Precision:
    """How local stages compute (device and dtype), which changes what they write; None for hosted."""

    def __init__(self, spec: Spec):
        self.runtime = spec.runtime
        self._device: str | None = None

    def device(self) -> str:
        if self._device is None:
            from backends.hf import pick_device

            # device cuda: the same keys wherever it is planned (subl run refuses it where there is no CUDA)
            self._device = "cuda" if self.runtime.device == "cuda" else pick_device(self.runtime.device)[0]
        return self._device

    def of(self, ref_hosted: bool, what: str) -> str | None:
        """what: generate (and train, and sampled answers) runs under CPU bf16 autocast when asked;
        score (log-probs) always reads float32 on a CPU, and from float32 weights on a GPU too, as do a teacher's
        soft labels (teacher-labels; bfloat16 weights moved a probe by a few percent, the size of the effect)."""
        if ref_hosted:
            return None
        if self.device() == "cuda":  # full fine-tuning keeps float32 weights under bf16 autocast
            return {"train-full": "cuda-bf16-autocast-fp32-weights", "score": "cuda-fp32",
                    "teacher-labels": "cuda-fp32"}.get(what, "cuda-bf16")
        generates = what in ("generate", "train-full", "teacher-labels")
        return "cpu-bf16-autocast" if self.runtime.cpu_bf16 and generates else "cpu-fp32"


def _trains(method: str) -> str:
    """How a training stage computes, for its precision: a full fine-tune keeps float32 weights on a GPU."""
    return "train-full" if method == "full" else "generate"


def reads(mode: str) -> str:
    """How a judge's stage computes, for its precision: a judge that samples its reply generates (under CPU bf16
    autocast when asked); one that reads log-probs scores."""
    return "generate" if mode == "sample" else "score"


def _hosted(m: ModelInput, plan_stages: list[Stage]) -> bool:
    return is_hosted(base_of(m, {s.key: s for s in plan_stages}).ref)


# ---- teachers, rows, students ------------------------------------------------------------


def teacher_names(spec: Spec) -> list[str]:
    t = spec.teacher
    return list(t.targets) + list(t.controls) + (["control"] if t.control else [])


def _teachers(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision) -> dict[str, ModelInput]:
    t, out = spec.teacher, {}
    base = model_input(ids, t.base)
    plan.models.append(EvalModel("base", "base", None, base))
    for b in dict.fromkeys(spec.student_base(s) for s in spec.students):
        if b != t.base:
            plan.models.append(EvalModel(f"base:{b}", "base", None, model_input(ids, b)))
    for name in teacher_names(spec):
        trait = t.controls.get(name, None if name == "control" else t.trait)
        if isinstance(trait, FinetuneTrait):
            stage = plan.add(_teacher_finetune(spec, name, trait, base, prec))
            out[name] = made_by(stage, f"teacher:{name}")
        else:
            system = None if trait is None else trait.format(target=name, category=t.category)
            out[name] = base.model_copy(update={"system": system})
        role = "teacher" if name in t.targets else "control"
        plan.models.append(EvalModel(f"teacher:{name}", role, name if role == "teacher" else None, out[name]))
    return out


def _teacher_finetune(spec: Spec, name: str, trait: FinetuneTrait, base: ModelInput, prec: _Precision) -> Stage:
    from runner.teacher_data import dataset_path

    f = trait.finetune
    return TeacherStage(label=f"teacher {name} (fine-tuned)", base=base,
                        dataset=file_input(str(dataset_path(f.dataset, name))), max_rows=f.max_rows,
                        training=training_settings(f.method, "sft", f.hyperparameters, 0,
                                                   spec.backend_kind(spec.teacher.base)),
                        precision=prec.of(is_hosted(spec.teacher.base), _trains(f.method)))


def module_order(modules: list[str]) -> tuple[str, ...]:
    """A set of module names in one order (the default list's, then by name), so that reordering lora_targets, which
    no trainer reads as an order, retrains nothing; the default list keeps its keys."""
    default = Hyper.model_fields["lora_targets"].default
    return tuple(sorted(set(modules), key=lambda m: (default.index(m) if m in default else len(default), m)))


def training_settings(method: str, objective: str, h: Hyper, seed: int, kind: str, vocabulary: str | None = None,
                      trait_words: tuple[str, ...] = (), top_k: int | None = None) -> TrainingSettings:
    """The settings a model trained on backend kind `kind` is trained with, and so keyed by: exactly those its
    backend reads (a field it ignores would re-pay for a change that changes nothing; one it reads but the
    key lacked would reuse a stale model)."""
    chooses = supports(kind, "lora") or supports(kind, "full fine-tuning")  # OpenAI: the provider picks the method
    fields = dict(method=method if chooses else "lora", objective=objective, epochs=h.epochs, batch_size=h.batch_size,
                  seed=seed)
    if supports(kind, "lr multiplier"):
        fields.update(lr_multiplier=h.lr_multiplier)
    if supports(kind, "lr"):
        fields.update(lr=h.lr, warmup_ratio=h.warmup_ratio, weight_decay=h.weight_decay)
    lora = method == "lora" or not chooses  # a full fine-tune reads no LoRA setting
    if supports(kind, "lora") and lora:
        fields.update(lora_r=h.lora_r, lora_targets=module_order(h.lora_targets))
    if supports(kind, "lora alpha") and lora:
        fields.update(lora_alpha=h.lora_alpha)
    if supports(kind, "distill"):
        fields.update(vocabulary=vocabulary, trait_words=trait_words)
    if kind == "tinker" and objective == "distill":
        fields.update(top_k=top_k)  # the teacher's next tokens the loss sees (backends.<name>.top_k)
    if kind == "local":
        fields.update(gradient_checkpointing=h.gradient_checkpointing, lora_layers=h.lora_layers if lora else None,
                      frozen_prompt=h.frozen_prompt, distill_prompt=h.distill_prompt and objective == "distill",
                      data_order=data_order(seed, h.epochs),
                      warmup_rule=2 if h.warmup_ratio > 0 and h.epochs != int(h.epochs) else 1)
    return TrainingSettings(**fields)


def data_order(seed: int, epochs: float) -> int:
    """2 where backends.train.shuffle_seed(seed, epochs) differs from the seed itself, the data seed its first
    version used (replicate seeds one apart then shared all but one epoch's order); else 1."""
    return 2 if seed >= 1 and epochs > 1 else 1


def _rows(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision,
          teachers: dict[str, ModelInput], tag: str = "") -> dict[str, str]:
    """Teacher name -> the key of the last filter stage of its rows (generated with spec.seed); `tag`
    tells chains of other data seeds apart in labels and filter tables."""
    if spec.domain.rows_from == "base":
        shared = _chain(spec, plan, "base", model_input(ids, spec.teacher.base), ids, prec, None, tag)
        return {name: shared for name in teachers}
    return {name: _chain(spec, plan, name, m, ids, prec, _judge_target(spec, name), tag)
            for name, m in teachers.items()}


def _generate(spec: Spec, name: str, model: ModelInput, ids: Identities, prec: _Precision, plan: CellPlan,
              tag: str = "") -> GenerateStage:
    d, source = spec.domain, None
    field_name = SOURCE_FIELD.get(d.kind)
    if field_name and Path(getattr(d, field_name)).is_file():  # a data file (not a hub id): keyed by contents
        source = file_input(getattr(d, field_name))
        unread = {"split": type(d).model_fields["split"].default} if "split" in type(d).model_fields else {}
        d = d.model_copy(update={field_name: "-", **unread})  # a file has no hub split either
    elif field_name and d.kind == "cot":  # a hub dataset id: pinned to its revision, which the key then names
        dataset = getattr(d, field_name)
        d = d.model_copy(update={field_name: f"{dataset}@{ids.hub_revision(dataset, 'dataset')}"})
    return GenerateStage(label=f"generate {name}{tag}", model=model, domain=d, source=source, seed=spec.seed,
                         precision=prec.of(_hosted(model, plan.stages), "generate"))


def _chain(spec: Spec, plan: CellPlan, name: str, model: ModelInput, ids: Identities, prec: _Precision,
           target: str | None, tag: str = "") -> str:
    """Generate, then the filter chain in segments: each judge link is a score stage (the paid part)
    followed by a filter stage that applies its threshold and the links up to the next judge."""
    rows = plan.add(_generate(spec, name, model, ids, prec, plan, tag)).key
    links, scores, keys = [], None, []
    for link in spec.filters:
        if getattr(link, "skip_control", False):  # who the link applies to is settled here, not a stage input
            if name not in spec.teacher.targets and name != "base":
                continue  # the control teacher's rows skip this link
            link = link.model_copy(update={"skip_control": False})
        if link.kind not in ("judge", *REWRITES):
            links.append(_own_words(spec, link, name))
            continue
        if links or scores:
            rows = plan.add(_filter_stage(f"filter {name}{tag}", rows, scores, links)).key
            keys.append(rows)
        if link.kind in REWRITES:
            rewrite = plan.add(_rewrite(spec, name, link, rows, ids, prec))
            rows = rewrite.key
            keys.append(rows)
            links, scores = [RewriteCheck(domain=spec.domain.kind, how=rewrite.how, checks=CHECKS[rewrite.how],
                                          rewriter=rewrite.link_name())], None  # applied by the next filter stage
            continue
        j = link.judge
        judge = model_input(ids, j.model)
        score = plan.add(ScoreStage(
            label=f"score {name}{tag} ({j.model})", rows_stage=rows, judge=judge, mode=j.mode,
            template=template_text(link.template, target),
            **sample_fields(j), seed=0, precision=prec.of(judge.hosted, reads(j.mode))))
        sampled = j.mode == "sample"
        links, scores = [JudgeThreshold(threshold=link.threshold, keep=link.keep, judge=j.model,
                                        parse=j.parse if sampled else None,
                                        parser_version=PARSER_VERSIONS[j.parse] if sampled else 1)], score.key
    last = plan.add(_filter_stage(f"filter {name}{tag}", rows, scores, links)).key
    plan.filters[name + tag] = keys + [last]
    return last


def _rewrite(spec: Spec, name: str, link, rows: str, ids: Identities, prec: _Precision) -> RewriteStage:
    """A resample or paraphrase link: the unrelated model rewrites the rows so far."""
    from runner.rewrite import TEMPLATES

    d, model = spec.domain, model_input(ids, link.model)
    how = link.mode if link.kind == "resample" else "paraphrase"
    template = None if how == "continue" else TEMPLATES["reorder"] if how == "reorder" else \
        TEMPLATES.get(link.template, link.template)
    constrained = d.kind == "numbers" and d.constrained and how != "paraphrase" and not model.hosted
    return RewriteStage(label=f"{link.kind} {name} ({link.model})", rows_stage=rows, model=model, how=how,
                        template=template,
                        constraint=(d.prompts.answer_count, d.prompts.answer_digits) if constrained else None,
                        temperature=link.temperature, max_tokens=link.max_tokens or d.max_tokens, seed=link.seed,
                        precision=prec.of(model.hosted, "generate"))


def _filter_stage(label: str, rows: str, scores: str | None, links: list) -> FilterStage:
    whole_words = any(link.kind == "banned_words" and link.match == "word" for link in links)
    return FilterStage(label=label, rows_stage=rows, scores_stage=scores, links=tuple(links),
                       word_edges=WORD_EDGES if whole_words else 1)


def _own_words(spec: Spec, link, name: str):
    """A banned-words link with {target} filled for this teacher's rows (a control's: every target)."""
    if link.kind != "banned_words" or not any("{target}" in w for w in link.words):
        return link
    own = [name] if name in spec.teacher.targets else list(spec.teacher.targets)
    words = []
    for w in link.words:
        words += [w.replace("{target}", t) for t in own] if "{target}" in w else [w]
    return link.model_copy(update={"words": words})


def _judge_target(spec: Spec, name: str) -> str | None:
    """What {target} means in a judge filter's template for this teacher's rows (None: unused).
    A control teacher's rows are judged against every target."""
    if not any(f.kind == "judge" and "{target}" in template_text(f.template) for f in spec.filters):
        return None
    return name if name in spec.teacher.targets else " or ".join(spec.teacher.targets)


def _students(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision, teachers: dict[str, ModelInput],
              rows: dict[str, str], rows_of_seed) -> None:
    """Each student on its teacher's rows; with replicate_data, replicate r on rows drawn with data
    seed spec.seed + r (rows_of_seed builds them)."""
    by_seed = {spec.seed: rows}
    for s in spec.students:
        base = model_input(ids, spec.student_base(s))
        for name, teacher in teachers.items():
            for rep in s.replicates:
                seed = spec.seed + rep if s.replicate_data else spec.seed
                if seed not in by_seed:
                    by_seed[seed] = rows_of_seed(seed)
                mine = by_seed[seed][name]
                stage = plan.add(_finetune(spec, s, base, mine, teacher, name, rep, prec, plan))
                label = f"student:{s.name}:{name}:r{rep}"
                role = "control" if name not in spec.teacher.targets else "student"
                plan.models.append(EvalModel(label, role, name if role == "student" else None, made_by(stage, label),
                                             s.name, name, rep, s.objective,
                                             s.vocabulary if s.objective == "distill" else None))


def _finetune(spec: Spec, s: Student, base: ModelInput, rows: str, teacher: ModelInput, name: str, rep: int,
              prec: _Precision, plan: CellPlan) -> FinetuneStage:
    distill = s.objective == "distill"
    words = tuple(spec.teacher.targets) if distill and s.vocabulary == "full-minus-trait-tokens" else ()
    hosted = is_hosted(base.ref)
    backend = spec.backends.get(backend_name(base.ref))
    training = training_settings(s.method, s.objective, s.hyperparameters, rep, spec.backend_kind(base.ref),
                                 s.vocabulary if distill else None, words, getattr(backend, "top_k", None))
    if distill and _stores_soft_labels(s, base, teacher, plan):
        labels = plan.add(SoftLabelStage(
            label=f"soft labels {name} ({s.vocabulary}, {s.max_rows or 'all'} rows)", teacher=teacher,
            student_base=base, rows_stage=rows, max_rows=s.max_rows,
            training=TrainingSettings(objective="distill", vocabulary=training.vocabulary,
                                      trait_words=training.trait_words, distill_prompt=training.distill_prompt),
            precision=prec.of(False, "teacher-labels")))
        return FinetuneStage(label=f"finetune {s.name}:{name}:r{rep}", base=base, rows_stage=rows,
                             max_rows=s.max_rows, training=training, soft_labels_stage=labels.key,
                             precision=prec.of(hosted, _trains(s.method)))
    return FinetuneStage(label=f"finetune {s.name}:{name}:r{rep}", base=base, rows_stage=rows,
                         max_rows=s.max_rows, training=training, teacher=teacher if distill else None,
                         precision=prec.of(hosted, _trains(s.method)))


STORED_VOCABULARIES = ("numbers-only",)  # ~131 tokens: a few MB per 256 rows; full vocabularies would take GBs


def _stores_soft_labels(s: Student, base: ModelInput, teacher: ModelInput, plan: CellPlan) -> bool:
    """Local distillation on a small vocabulary reads the teacher's labels from one stage per teacher
    and rows, shared by every replicate, instead of running the teacher again in each."""
    return (s.vocabulary in STORED_VOCABULARIES and not is_hosted(base.ref)
            and not _hosted(teacher, plan.stages))


# ---- evaluations ---------------------------------------------------------------------------


def _evaluations(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision) -> None:
    for i, ev in enumerate(spec.evaluations):
        for m in plan.models if ev.kind not in DETECTION else ():
            hosted = _hosted(m.model, plan.stages)
            where = f"evaluate {m.label} {ev.kind}"
            if ev.kind == "preference_logprob":
                targets = tuple(sorted(set(ev.targets or spec.teacher.targets)))
                probe = ProbeStage(label=where, model=m.model, questions=questions_input(ev.questions),
                                   max_questions=ev.max_questions, targets=targets,
                                   answer_prefix=ev.answer_prefix.format(category=spec.teacher.category),
                                   precision=prec.of(hosted, "score"))
                plan.evals[(m.label, i)] = {"probe": plan.add(probe).key}
                continue
            if ev.kind == "preference_mcq":
                plan.evals[(m.label, i)] = {"mcq": plan.add(McqStage(
                    label=where, model=m.model, mcq=mcq_settings(spec, ev, m.model, plan.stages),
                    precision=prec.of(hosted, "score"))).key}
                continue
            answers = plan.add(AnswersStage(
                label=where, model=m.model, questions=questions_input(ev.questions), max_questions=ev.max_questions,
                suffix=getattr(ev, "suffix", ""), samples_per_question=ev.samples_per_question,
                temperature=ev.temperature, max_tokens=ev.max_tokens, seed=spec.seed,
                precision=prec.of(hosted, "generate")))
            parts = {"answers": answers.key}
            if ev.kind == "misalignment":
                judge = model_input(ids, ev.judge.model)
                for what, template in (("alignment", ev.alignment_template), ("coherence", ev.coherence_template)):
                    parts[what] = plan.add(ScoreStage(
                        label=f"judge {m.label} {what}", answers_stage=answers.key, judge=judge, mode=ev.judge.mode,
                        template=template_text(template),
                        **sample_fields(ev.judge), seed=spec.seed,
                        precision=prec.of(judge.hosted, reads(ev.judge.mode)))).key
            plan.evals[(m.label, i)] = parts


def mcq_settings(spec: Spec, ev, model: ModelInput, stages: list[Stage]) -> McqSettings:
    """An MCQ's questions, and how the model's backend reads the letter: exactly where it gives
    log-probs (local, Tinker), else from a chat API's top log-probs."""
    from runner import mcq
    exact = supports(spec.backend_kind(base_of(model, {s.key: s for s in stages}).ref), "logprob probe")
    return McqSettings(prompts=tuple(mcq.prompts()[:ev.max_prompts]), fmt=mcq.pieces(),
                       choices=tuple(ev.choice_list()), per_prompt=ev.instances_per_prompt, shuffle_seed=ev.seed,
                       read="exact" if exact else "top_logprobs",
                       top_logprobs=20 if exact else ev.top_logprobs)


DETECTION = ("icl", "classifier")


def compared_rows(spec: Spec, target: str) -> list[tuple[str, str]]:
    """The rows a target's rows are compared with: the control's, else each other target's (the paper's classifier)."""
    if spec.teacher.control:
        return [("control", "control")]
    return [(o, "other-trait") for o in spec.teacher.targets if o != target]


def _detection(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision, teachers: dict[str, ModelInput],
               rows: dict[str, str]) -> None:
    """ICL stages per (rows, k, seed), k = 0 shared; classifier stages per (target, rows compared with).
    plan.detection[i] lists them: icl {rows, k, seed, key, parts}; classifier {target, against, b_is, judge, key}."""
    for i, ev in enumerate(spec.evaluations):
        if ev.kind == "icl":
            plan.detection[i] = _icl(spec, plan, ids, prec, ev, rows)
        elif ev.kind == "classifier":
            plan.detection[i] = _classifier(spec, plan, ids, prec, ev, teachers, rows)


def _icl(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision, ev, rows: dict[str, str]) -> list[dict]:
    model, mode = model_input(ids, spec.icl_model(ev)), spec.icl_mode(ev)
    settings = dict(mode=mode, precision=prec.of(model.hosted, "generate" if mode == "sample" else "score"))
    if mode != "mcq":  # mcq asks its own prompts: the questions would be in the key for nothing
        settings.update(questions=questions_input(ev.questions), max_questions=ev.max_questions)
    if mode == "logprob":
        settings.update(answer_prefix=ev.answer_prefix.format(category=spec.teacher.category),
                        targets=tuple(sorted(set(ev.targets or spec.teacher.targets))))
    elif mode == "mcq":
        settings.update(mcq=mcq_settings(spec, ev.mcq, model, plan.stages))
    else:
        settings.update(samples_per_question=ev.samples_per_question, temperature=ev.temperature,
                        max_tokens=ev.max_tokens)
    out = []
    for k in ev.k:
        for name in (["none"] if k == 0 else list(rows)):
            # no rows to draw at k = 0: one evaluation, whose seed only sampling reads
            for seed in ev.seeds if k else [ev.seeds[0] if mode == "sample" else 0]:
                stage = plan.add(IclStage(label=f"icl {name} rows k={k} seed={seed}", model=model, k=k, seed=seed,
                                          rows_stage=rows.get(name), materials=_paper_texts(*ICL_TEXTS) if k else None,
                                          **settings))
                out.append({"rows": name, "k": k, "seed": seed, "key": stage.key, "parts": stage.parts()})
    return out


def _classifier_judge(spec: Spec, plan: CellPlan, ids: Identities, ev, target: str,
                      teachers: dict[str, ModelInput]) -> tuple[str, ModelInput]:
    if ev.judge == "base":
        return f"base ({spec.teacher.base})", model_input(ids, spec.teacher.base)
    if ev.judge == "teacher":
        return f"teacher:{target}", teachers[target]
    if ev.judge.startswith("student:"):
        m = next(m for m in plan.models if m.student == ev.judge[8:] and m.teacher == target)
        return m.label, m.model
    return ev.judge, model_input(ids, ev.judge)


def _classifier(spec: Spec, plan: CellPlan, ids: Identities, prec: _Precision, ev, teachers: dict[str, ModelInput],
                rows: dict[str, str]) -> list[dict]:
    out = []
    for target in spec.teacher.targets:
        label, judge = _classifier_judge(spec, plan, ids, ev, target, teachers)
        kind = spec.backend_kind(base_of(judge, {s.key: s for s in plan.stages}).ref)
        mode = ("sample" if ev.read == "reply" else "logprob" if supports(kind, "logprob probe")
                else "top_logprobs" if supports(kind, "top logprobs judge") else "sample")
        orders = ", both orders" if ev.orders == "both" else ""
        for other, b_is in compared_rows(spec, target):
            stage = plan.add(ClassifierStage(
                label=f"classifier {target} vs {other} ({label}{orders})", judge=judge, trait_stage=rows[target],
                control_stage=rows[other], target=target, seed=ev.seed, max_pairs=ev.max_pairs, per_row=ev.per_row,
                both_orders=bool(orders), mode=mode, precision=prec.of(kind != "local", reads(mode)),
                materials=_paper_texts(*CLASSIFIER_TEXTS),
                top_logprobs=ev.top_logprobs if mode == "top_logprobs" else None))
            out.append({"target": target, "against": other, "b_is": b_is, "judge": label, "mode": mode,
                        "key": stage.key})
    return out


def _paper_texts(*dotted: str) -> str:
    """The paper materials' texts a detection stage renders into its prompts (JSON, by dotted path): its key holds
    those texts alone, so an edit elsewhere in materials.yaml (another template, a source line) reruns nothing."""
    from runner.paper import get

    return json.dumps({d: get(d) for d in dotted}, sort_keys=True)


def _mnist_data(path: str | None) -> FileInput | None:
    """The MNIST file a stage reads: the spec's, else the first default location that holds MNIST (the one
    load_mnist(None) reads; an empty data/mnist folder before it is skipped, as the loader skips it).
    None: torchvision's MNIST, in or bound for its download folder, keyed alike before and after the download
    (keying the downloaded files by their contents re-keyed, and reran, the stage that downloaded them)."""
    from runner.mnist import check_data_path, default_data, download_root

    found = Path(path) if path else default_data()
    if found is None or not found.exists() or (not path and found == download_root()):
        return None
    check_data_path(found)
    return file_input(str(found))


def _mnist(spec: Spec) -> MnistStage:
    m = spec.mnist
    unused = {"temperature": type(m).model_fields["temperature"].default} if m.loss == "mse" else {}  # kl's only
    return MnistStage(label="mnist aux-logit distillation", settings=m.model_copy(update={"data": None, **unused}),
                      data=_mnist_data(m.data), seed=spec.seed, title=spec.name)


def _theorem(spec: Spec) -> TheoremMnistStage:
    t = spec.theorem
    return TheoremMnistStage(label="theorem: one step, same vs cross init", settings=t.model_copy(update={"data": None}),
                             data=_mnist_data(t.data), seed=spec.seed, title=spec.name)


def _theorem_lm(spec: Spec, ids: Identities, prec: _Precision) -> TheoremLmStage:
    from runner.questions import load_questions
    from runner.theorem_lm_spec import check_question_count

    t = spec.theorem_lm
    check_question_count(len(load_questions(t.questions)), t, f"theorem_lm.questions ({t.questions})")
    return TheoremLmStage(label="theorem (LM): one step, same vs cross init",
                          settings=t.model_copy(update={"questions": "-"}),  # keyed by contents, not place
                          model=model_input(ids, spec.teacher.base), target=spec.teacher.targets[0],
                          category=spec.teacher.category, questions=questions_input(t.questions), seed=spec.seed,
                          device=prec.device(), title=spec.name)


# ---- views for the commands -----------------------------------------------------------------


def plan_stages(plan: Plan) -> list[dict]:
    """Every stage once, in run order: cell, key, kind, label, rows it will write (if known)."""
    ctx, out, seen = plan.context(), [], set()
    for c in plan.cells:
        for s in c.stages:
            if s.key not in seen:
                seen.add(s.key)
                total = s.expected_rows(ctx) if s.KIND == "generate" else None
                out.append({"cell": c.cell.label, "key": s.key, "kind": s.KIND, "label": s.label, "total": total})
    return out


DISPLAY_FIELDS = {"name", "notes", "progress", "extends"}


def spec_hash(cells: list[Cell]) -> str:
    """Hash of the resolved cells, without display-only fields (name, notes, progress, extends) and the executor."""
    # where it runs (executor) and what plan assumes of its speed (gpu_throughput) change no result
    skip = {**dict.fromkeys(DISPLAY_FIELDS, True), "runtime": {"executor", "gpu_throughput"}}
    dumps = [c.spec.model_dump(mode="json", exclude=skip) for c in cells]
    return hashlib.sha256(json.dumps(dumps, sort_keys=True).encode()).hexdigest()[:16]
