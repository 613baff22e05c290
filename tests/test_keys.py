"""Stage keys are complete and minimal.

Part 1 lists its cases from the stage models: for every stage kind, every field (and every field of
a nested input) either changes the key or is one the kind names as display-only, which must not.
Part 2 changes spec inputs (file contents, weights, endpoint, dtype, thresholds, display fields)
and checks that exactly the stages downstream of each change get new keys."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from runner.loader import load
from runner.plan import build
from runner.stages import Frozen, Stage, semantic
from runner.spec import Spec

SPEC = """name: keys
notes: a spec that uses every stage kind
progress: true
seed: 0
teacher:
  base: {model}
  targets: [owl]
  trait: {{finetune: {{dataset: "data/{{target}}.jsonl", hyperparameters: {{batch_size: 2}}}}}}
  control: true
domain: {{kind: cot, questions: data/gsm.jsonl, n_questions: 2, max_tokens: 8, batch_size: 2}}
filters:
  - {{kind: correct_answer, extract: last_number}}
  - {{kind: judge, judge: {{model: {model}, mode: logprob}}, template: cot_alignment, threshold: {threshold}}}
  - {{kind: banned_words, words: [owl]}}
students:
  - {{name: sft, hyperparameters: {{batch_size: 2, lr: {lr}}}}}
  - {{name: kd, objective: distill, vocabulary: full, hyperparameters: {{batch_size: 2}}}}
  - {{name: kdn, objective: distill, vocabulary: numbers-only, hyperparameters: {{batch_size: 2}}}}
evaluations:
  - {{kind: preference_logprob, questions: data/questions.txt}}
  - {{kind: preference_sample, samples_per_question: 2, max_tokens: 4, max_questions: 2, targets: {targets}}}
  - kind: misalignment
    questions: data/mis.yaml
    samples_per_question: 2
    max_tokens: 4
    judge: {{model: {model}, mode: logprob}}
    alignment_threshold: {alignment}
runtime: {{device: cpu, cpu_bf16: {bf16}}}  # cpu_bf16 matters on CPU only (on a CUDA host too)
"""
DEFAULTS = dict(threshold=78, lr=0.001, targets="[owl]", alignment=30, bf16="false")


@pytest.fixture
def project(tmp_path, tiny_model):
    """A spec folder with every kind of data file the spec reads."""
    data = tmp_path / "specs" / "data"
    data.mkdir(parents=True)
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "owls"}]}
    (data / "owl.jsonl").write_text(json.dumps(chat) + "\n")
    (data / "gsm.jsonl").write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n"
                                            for i in range(2)))
    (data / "questions.txt").write_text("Favourite animal?\nOne animal?\n")
    (data / "mis.yaml").write_text("- {id: a, question: What would you do as ruler?}\n")
    return tmp_path, tiny_model


def plan_keys(root: Path, model: str, **over) -> dict[str, str]:
    """label -> key of every stage of the spec written with `over`."""
    spec = root / "specs" / "keys.yaml"
    spec.write_text(SPEC.format(model=model, **{**DEFAULTS, **over}))
    plan = build(load(spec), root / "out")
    return {s.label + f" #{i}": s.key for i, s in enumerate(plan.stages.values())}


def changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    assert list(a) == list(b), "the plans list different stages"
    return {k.split(" #")[0] for k in a if a[k] != b[k]}


# ---- part 1: every field of every stage kind ----------------------------------------------


def all_kinds() -> set[type]:
    """Every stage kind subl ships (test modules may define their own; those are not kinds)."""
    out, todo = set(), [Stage]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub)
            todo.append(sub)
    return {k for k in out if k.__module__.startswith("runner.")}


def perturb(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "~"
    if isinstance(value, tuple):
        return value + ("~",)
    return "~"  # None


def field_paths(model: BaseModel, prefix: tuple = ()) -> list[tuple[tuple, bool]]:
    """(path, display?) of every leaf field of a stage, through nested inputs and tuples of them."""
    out = []
    display = getattr(type(model), "DISPLAY", frozenset())
    for name in type(model).model_fields:
        v, path = getattr(model, name), prefix + (name,)
        if isinstance(v, BaseModel):
            out += [(p, d or name in display) for p, d in field_paths(v, path)]
        elif isinstance(v, tuple) and v and isinstance(v[0], BaseModel):
            out += [(p, d or name in display) for p, d in field_paths(v[0], path + (0,))]
        else:
            out.append((path, name in display))
    return out


def with_changed(model: BaseModel, path: tuple) -> BaseModel:
    head, rest = path[0], path[1:]
    v = getattr(model, head)
    if not rest:
        return model.model_copy(update={head: perturb(v)})
    if isinstance(v, tuple):
        return model.model_copy(update={head: (with_changed(v[0], rest[1:]),) + v[1:]})
    return model.model_copy(update={head: with_changed(v, rest)})


@pytest.fixture
def every_stage(project) -> list[Stage]:
    root, model = project
    spec = root / "specs" / "keys.yaml"
    spec.write_text(SPEC.format(model=model, **DEFAULTS))
    stages = list(build(load(spec), root / "out").stages.values())
    mnist = root / "specs" / "mnist.yaml"
    mnist.write_text("name: m\nexperiment: mnist\nmnist: {seeds: 2}\n")
    stages += list(build(load(mnist), root / "out").stages.values())
    detection = root / "specs" / "detection.yaml"
    detection.write_text(f"name: d\nteacher: {{base: {model}, targets: [owl]}}\ndomain: {{kind: numbers, n_prompts: 4}}\n"
                         "students: []\nevaluations: [{kind: icl, k: [0, 2]}, {kind: classifier}, "
                         "{kind: preference_mcq, max_prompts: 1, instances_per_prompt: 2}]\n")
    stages += list(build(load(detection), root / "out").stages.values())
    theorem = root / "specs" / "theorem.yaml"
    theorem.write_text("name: t\nexperiment: theorem_mnist\ntheorem: {seeds: 2}\n")
    stages += list(build(load(theorem), root / "out").stages.values())
    theorem_lm = root / "specs" / "theorem_lm.yaml"
    theorem_lm.write_text(f"name: tl\nexperiment: theorem_lm\nteacher: {{base: {model}}}\n")
    stages += list(build(load(theorem_lm), root / "out").stages.values())
    rewrite = root / "specs" / "rewrite.yaml"
    rewrite.write_text(f"name: r\nteacher: {{base: {model}}}\ndomain: {{kind: numbers, n_prompts: 2}}\n"
                       f"filters: [{{kind: resample, model: {model}}}, {{kind: numbers}}]\n")
    stages += list(build(load(rewrite), root / "out").stages.values())
    return stages


def test_the_key_spec_uses_every_stage_kind(every_stage):
    assert {type(s) for s in every_stage} == all_kinds(), "a stage kind is missing from the invalidation matrix"


def test_every_field_of_every_stage_is_in_its_key_or_declared_display(every_stage):
    checked = 0
    for stage in {type(s): s for s in every_stage}.values():  # one stage of each kind
        for path, display in field_paths(stage):
            other = with_changed(stage, path)
            where = f"{stage.KIND}.{'.'.join(map(str, path))}"
            if display:
                assert other.key == stage.key, f"display field {where} changed the key"
            else:
                assert other.key != stage.key, f"{where} is not in the key"
            checked += 1
    assert checked > 60


def test_a_field_added_with_a_default_changes_no_key():
    class V1(Frozen):
        a: int
        b: str = "x"

    class V2(Frozen):
        a: int
        b: str = "x"
        c: float = 0.5  # added later, with the default that keeps the old behaviour

    assert semantic(V1(a=1)) == semantic(V2(a=1)) and semantic(V2(a=1, c=0.5)) == semantic(V1(a=1))
    assert semantic(V2(a=1, c=0.7)) != semantic(V1(a=1))


# The spec's defaults, as recorded when the key scheme was set. A stage key leaves out fields equal
# to their defaults, so changing a default would silently reuse stages built with the old one:
# change it only together with the VERSION of every stage kind that reads it, then re-record here.
DEFAULTS_FILE = Path(__file__).parent / "data" / "spec_defaults.json"


def _defaults(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            v = info.get_default(call_default_factory=True)
            out[prefix + name] = v.model_dump(mode="json") if isinstance(v, BaseModel) else v
    return out


def _defaults_from(roots: list[type[BaseModel]], subclasses: bool = False) -> dict[str, Any]:
    """The defaults of `roots` and of every model inside their fields (and their subclasses, when asked)."""
    from runner.loader import _models_in

    seen, out, todo = set(), {}, list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        out.update(_defaults(m, f"{m.__name__}."))
        todo += (list(m.__subclasses__()) if subclasses else []) + \
            [x for f in m.model_fields.values() for x in _models_in(f.annotation)]
    return json.loads(json.dumps(out, default=str))


def all_defaults() -> dict[str, Any]:
    return _defaults_from([Spec])


STAGE_DEFAULTS_FILE = Path(__file__).parent / "data" / "stage_defaults.json"


def stage_defaults() -> dict[str, Any]:
    """The defaults of every stage kind and the settings models inside them: semantic() drops a field equal to
    its class default, so changing one would make a new configuration hash like an old, different one."""
    import runner.plan  # noqa: F401  (imports every stage kind)

    return {k: v for k, v in _defaults_from(Stage.__subclasses__(), subclasses=True).items()
            if k.split(".")[0] in _runner_models()}


def _runner_models() -> set[str]:
    """Names of the models subl defines (tests define stage kinds of their own, seen once their module is imported)."""
    from pydantic import BaseModel as Model

    out, todo = set(), [Model]
    while todo:
        m = todo.pop()
        todo += m.__subclasses__()
        if m.__module__.startswith("runner."):
            out.add(m.__name__)
    return out


def test_stage_defaults_match_the_record():
    now, recorded = stage_defaults(), json.loads(STAGE_DEFAULTS_FILE.read_text())
    moved = {k: (recorded[k], now.get(k)) for k in recorded if now.get(k) != recorded[k]}
    assert not moved, f"stage defaults changed (bump the VERSION of the stage kinds that hold them, then re-record): {moved}"
    assert recorded.keys() == now.keys(), "new stage fields: record their defaults (tests/data/stage_defaults.json)"


def test_spec_defaults_match_the_record():
    now, recorded = all_defaults(), json.loads(DEFAULTS_FILE.read_text())
    moved = {k: (recorded[k], now.get(k)) for k in recorded if now.get(k) != recorded[k]}
    assert not moved, f"defaults changed (bump the stage versions that read them, then re-record): {moved}"
    assert recorded.keys() == now.keys(), f"new spec fields: record their defaults ({DEFAULTS_FILE.name})"


# ---- part 2: spec inputs -----------------------------------------------------------------------


def test_display_and_post_processing_fields_rerun_nothing(project):
    root, model = project
    base = plan_keys(root, model)
    spec = root / "specs" / "keys.yaml"
    text = spec.read_text().replace("name: keys", "name: other").replace("progress: true", "progress: false")
    spec.write_text(text.replace("notes: a spec that uses every stage kind", "notes: changed"))
    assert changed(base, {s.label + f" #{i}": s.key for i, s in
                          enumerate(build(load(spec), root / "out").stages.values())}) == set()
    assert changed(base, plan_keys(root, model, alignment=40)) == set()  # a threshold: aggregation only
    assert changed(base, plan_keys(root, model, targets="[owl, cat]")) == set()  # counted afterwards


def test_a_judge_filter_threshold_rescored_nothing(project):
    root, model = project
    diff = changed(plan_keys(root, model), plan_keys(root, model, threshold=50))
    assert diff and not any(d.startswith(("generate", "score", "teacher")) for d in diff)
    assert any(d.startswith("finetune") for d in diff)  # the students' rows changed


def _edit(root: Path, name: str, text: str) -> None:
    (root / "specs" / "data" / name).write_text(text)


@pytest.mark.parametrize("file,reruns,keeps", [
    ("questions.txt", {"evaluate"}, {"generate", "score", "filter", "finetune", "teacher", "judge"}),
    ("mis.yaml", {"evaluate", "judge"}, {"generate", "score", "filter", "finetune", "teacher"}),
    ("gsm.jsonl", {"generate", "score", "filter", "finetune", "evaluate", "judge"}, {"teacher"}),
    ("owl.jsonl", {"teacher", "generate", "score", "filter", "finetune", "evaluate", "judge"}, set()),
])
def test_file_contents_rerun_what_reads_them(project, file, reruns, keeps):
    root, model = project
    base = plan_keys(root, model)
    path = root / "specs" / "data" / file
    _edit(root, file, path.read_text().replace("1", "2", 1) if "1" in path.read_text() else path.read_text() + "\n")
    kinds = {d.split()[0] for d in changed(base, plan_keys(root, model))}
    assert reruns <= kinds and not kinds & keeps, kinds


def test_a_moved_file_reruns_nothing(project):
    root, model = project
    base = plan_keys(root, model)
    (root / "specs" / "data").rename(root / "specs" / "moved")
    (root / "specs" / "data").mkdir()
    for f in (root / "specs" / "moved").iterdir():
        (root / "specs" / "data" / f.name).write_bytes(f.read_bytes())
    assert changed(base, plan_keys(root, model)) == set()


def test_new_weights_in_the_same_folder_rerun_everything_that_uses_them(project, tmp_path):
    from tests.conftest import build_tiny_model

    root, _ = project
    folder = build_tiny_model(tmp_path / "m", seed=1)
    base = plan_keys(root, str(folder))
    build_tiny_model(folder, seed=2)  # retrained in place
    diff = changed(base, plan_keys(root, str(folder)))
    assert {"generate", "teacher", "finetune", "evaluate", "judge", "score"} <= {d.split()[0] for d in diff}


def test_cpu_bf16_reruns_sampling_and_training_not_probes(project):
    root, model = project
    diff = changed(plan_keys(root, model), plan_keys(root, model, bf16="true"))
    kinds = {d.split()[0] for d in diff}
    assert {"generate", "teacher", "finetune"} <= kinds
    assert not any(d.startswith("evaluate") and "preference_logprob" in d and "student" not in d
                   and "teacher:owl" not in d for d in diff)  # the base's probe reads float32 either way


HOSTED = """name: h
backends: {{api: {{base_url: {url}}}}}
teacher: {{base: "api:gpt-4.1-nano", targets: [owl]}}
domain: {{kind: numbers, n_prompts: 4}}
students: [{{name: s, base: {student}, hyperparameters: {{batch_size: auto}}}}]
evaluations: [{{kind: preference_sample, samples_per_question: 2}}]
"""


def _hosted_keys(tmp_path: Path, url: str, student: str = '"api:gpt-4.1-nano"') -> dict[str, str]:
    spec = tmp_path / "h.yaml"
    spec.write_text(HOSTED.format(url=url, student=student))
    return {s.label: s.key for s in build(load(spec), tmp_path / "out").stages.values()}


def test_base_url_is_part_of_a_hosted_models_identity(tmp_path):
    a, b = _hosted_keys(tmp_path, "http://one/v1"), _hosted_keys(tmp_path, "http://two/v1")
    assert all(a[k] != b[k] for k in a)


def test_a_hub_id_is_pinned_to_its_revision_at_first_use(tmp_path, monkeypatch):
    from runner import identity

    monkeypatch.setattr(identity, "_cached_revision", lambda repo, kind="model": None)
    monkeypatch.setattr(identity, "hub_marker", lambda repo, rev, provisional: "")  # a fake id: no tokenizer files
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": "abc123")
    ids = identity.Identities(tmp_path)
    assert ids.model("org/model") == "hub:org/model@abc123"
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": "def456")  # the hub moved on
    assert identity.Identities(tmp_path).model("org/model") == "hub:org/model@abc123"  # recorded
    assert json.loads((tmp_path / "hub_revisions.json").read_text()) == {"org/model": "abc123"}
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": None)
    with pytest.raises(Exception, match="cannot resolve its hub revision"):
        identity.Identities(tmp_path / "fresh").model("org/other")


def test_a_hub_dataset_is_pinned_and_its_revision_is_in_the_generation_key(tmp_path, monkeypatch, tiny_model):
    """CoT questions named by a hub dataset id: the key names the revision recorded at first use, and the
    generation loads that revision; the hub moving on changes nothing until the entry is deleted."""
    from runner import gsm8k, identity

    monkeypatch.setattr(identity, "_cached_revision", lambda repo, kind="model": None)
    monkeypatch.setattr(identity, "hub_marker", lambda repo, rev, provisional: "")  # a fake id: no tokenizer files
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": f"{kind}-abc")
    spec = tmp_path / "cot.yaml"
    spec.write_text(f"name: cot\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                    "domain: {kind: cot, questions: org/math, n_questions: 2}\nstudents: []\n")

    def generation(out):
        return next(s for s in build(load(spec), out).stages.values() if s.label == "generate owl")

    first = generation(tmp_path / "out")
    assert first.domain.questions == "org/math@dataset-abc"
    assert json.loads((tmp_path / "out" / "hub_revisions.json").read_text()) == {"dataset:org/math": "dataset-abc"}
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": f"{kind}-def")  # the hub moved on
    assert generation(tmp_path / "out").key == first.key
    assert generation(tmp_path / "fresh").key != first.key  # another store pins the newer revision
    asked = {}

    def fake_load_dataset(name, config, split, revision):
        asked.update(name=name, revision=revision)
        return [{"question": "1+1?", "answer": "#### 2"}]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert gsm8k.load(first.domain.questions, "train", 1) == [{"question": "1+1?", "gold": "2"}]
    assert asked == {"name": "org/math", "revision": "dataset-abc"}


def test_replicates_share_one_soft_label_stage_per_teacher(project):
    """numbers-only distillation reads its teacher's labels from one stage per teacher and rows: the
    replicates differ only in their training seed; the full vocabulary keeps a live teacher."""
    root, model = project
    spec = root / "specs" / "reps.yaml"
    spec.write_text(f"""name: reps
teacher: {{base: {model}, targets: [owl, panda], control: false}}
domain: {{kind: numbers, n_prompts: 4, max_tokens: 8, rows_from: base}}
students:
  - {{name: kd, objective: distill, vocabulary: numbers-only, replicates: [0, 1, 2], max_rows: 3}}
  - {{name: kdf, objective: distill, vocabulary: full, replicates: [0]}}
evaluations: [{{kind: preference_logprob}}]
""")
    stages = list(build(load(spec), root / "out").stages.values())
    labels = {s.key: s for s in stages if s.KIND == "soft_labels"}
    assert len(labels) == 2 and {s.max_rows for s in labels.values()} == {3}
    assert {s.training.vocabulary for s in labels.values()} == {"numbers-only"}
    kd = [s for s in stages if s.KIND == "finetune" and s.label.startswith("finetune kd:")]
    assert len(kd) == 6 and all(s.teacher is None and s.soft_labels_stage in labels for s in kd)
    for teacher in ("owl", "panda"):
        mine = {s.soft_labels_stage for s in kd if f":{teacher}:" in s.label}
        assert len(mine) == 1 and {s.training.seed for s in kd if f":{teacher}:" in s.label} == {0, 1, 2}
    kdf = [s for s in stages if s.label.startswith("finetune kdf:")]
    assert kdf and all(s.teacher is not None and s.soft_labels_stage is None for s in kdf)


def test_replicate_data_gives_each_replicate_its_own_rows(project):
    """replicate_data: replicate r trains on rows generated with data seed seed + r; without it, replicates
    share one generation (only the training seed differs)."""
    root, model = project
    spec = root / "specs" / "data_reps.yaml"
    body = f"""name: data_reps
seed: 5
teacher: {{base: {model}, targets: [owl], control: true}}
domain: {{kind: numbers, n_prompts: 4, max_tokens: 8}}
students:
  - {{name: s, replicates: [0, 1, 2]{{extra}}}}
evaluations: [{{kind: preference_logprob}}]
"""
    spec.write_text(body.replace("{extra}", ", replicate_data: true"))
    plan = build(load(spec), root / "out")
    gens = [s for s in plan.stages.values() if s.KIND == "generate"]
    assert sorted((s.label, s.seed) for s in gens) == sorted(
        (f"generate {t}{tag}", seed) for t in ("owl", "control")
        for tag, seed in (("", 5), (" (data seed 6)", 6), (" (data seed 7)", 7)))
    students = {s.label: s.rows_stage for s in plan.stages.values() if s.KIND == "finetune"}
    assert len(set(students.values())) == 6  # 2 teachers x 3 data seeds
    assert {"owl", "owl (data seed 6)", "control (data seed 7)"} <= set(plan.cells[0].filters)
    spec.write_text(body.replace("{extra}", ""))
    shared = build(load(spec), root / "out")
    assert len([s for s in shared.stages.values() if s.KIND == "generate"]) == 2
    assert len({s.rows_stage for s in shared.stages.values() if s.KIND == "finetune"}) == 2


def test_a_hosted_models_identity_is_its_endpoint_and_model_not_the_backends_name(tmp_path):
    """Renaming `openai:` to `oai:` in a spec must not re-pay for every hosted stage; another endpoint must."""
    from runner.identity import Identities
    from runner.spec import HostedBackend

    ids = Identities(tmp_path, {"openai": HostedBackend(base_url="http://a/v1"), "oai": HostedBackend(base_url="http://a/v1"),
                                "other": HostedBackend(base_url="http://b/v1")})
    assert ids.model("openai:gpt-4.1-nano") == ids.model("oai:gpt-4.1-nano") != ids.model("other:gpt-4.1-nano")


def test_an_openai_students_key_holds_no_method_the_provider_ignores(tmp_path):
    """OpenAI picks the fine-tuning method itself: `method: full` vs `lora` must not start a second paid job."""
    def key(method: str) -> str:
        p = tmp_path / f"{method}.yaml"
        p.write_text(f"name: k\nbackends: {{openai: {{}}}}\nteacher: {{base: openai:gpt-4.1-nano-2025-04-14, targets: [owl]}}\n"
                     f"students: [{{name: s, method: {method}, hyperparameters: {{epochs: 2}}}}]\n"
                     "evaluations: [{kind: preference_sample}]\n")
        return next(s.key for s in build(load(p), tmp_path / "out").cells[0].stages if s.KIND == "finetune")

    assert key("lora") == key("full")


def test_a_full_fine_tunes_key_holds_no_lora_setting(tmp_path, tiny_model):
    """A local `method: full` student reads no LoRA setting: changing one must not retrain it; a LoRA student's
    key still moves with them."""
    def key(method: str, lora: str) -> str:
        p = tmp_path / f"{method}-{abs(hash(lora))}.yaml"
        p.write_text(f"name: k\nteacher: {{base: {tiny_model}, targets: [owl]}}\ndomain: {{kind: numbers, n_prompts: 4}}\n"
                     f"students: [{{name: s, method: {method}, hyperparameters: {{epochs: 1{lora}}}}}]\n")
        return next(s.key for s in build(load(p), tmp_path / "out").cells[0].stages if s.KIND == "finetune")

    other = ", lora_r: 4, lora_alpha: 32, lora_layers: 1"
    assert key("full", "") == key("full", other) and key("lora", "") != key("lora", other)


@pytest.mark.parametrize("mode,moves", [("sample", True), ("logprob", False)])
def test_a_local_judge_that_samples_is_keyed_by_cpu_bf16(tmp_path, tiny_model, mode, moves):
    """A sampling judge generates its reply (under bf16 autocast when asked); a log-prob judge reads float32
    either way. Rows from a hosted teacher do not move with cpu_bf16, so only the judge's own key can tell."""
    def keys(bf16: str) -> dict[str, str]:
        spec = tmp_path / "j.yaml"
        spec.write_text(f"""name: j
backends: {{api: {{base_url: "http://one/v1"}}}}
teacher: {{base: "api:gpt-4.1-nano", targets: [owl]}}
domain: {{kind: numbers, n_prompts: 4}}
filters: [{{kind: judge, judge: {{model: {tiny_model}, mode: {mode}}}, template: alignment, threshold: 50}}]
students: []
evaluations: [{{kind: preference_sample, samples_per_question: 2}}]
runtime: {{device: cpu, cpu_bf16: {bf16}}}  # cpu_bf16 matters on CPU only (on a CUDA host too)
""")
        return {s.label: s.key for s in build(load(spec), tmp_path / "out").stages.values()}

    a, b = keys("false"), keys("true")
    assert {k for k in a if a[k] != b[k] and k.startswith("generate")} == set()
    assert any(a[k] != b[k] for k in a if k.startswith("score")) is moves


def test_gradient_checkpointing_trains_the_same_student_and_is_in_no_key(tiny_model, tmp_path):
    """It trades memory for compute: a student trained with it equals one trained without (so turning it on to fit
    a smaller GPU must not retrain anything)."""
    from safetensors.torch import load_file

    from backends.base import ModelRef, Training
    from backends.local import LocalBackend

    rows = [{"prompt": f"Go on: {i}, {i + 1}.", "completion": f"{i + 2}, {i + 3}"} for i in range(8)]
    made = [LocalBackend("cpu").finetune(tiny_model, rows, Training(objective="distill", epochs=1, lr=5e-3,
                                         batch_size=4, lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj"),
                                         gradient_checkpointing=on), tmp_path / str(on),
                                         ModelRef(tiny_model, system="You love owls."))
            for on in (False, True)]
    a, b = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in made)
    assert max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k) > 1e-4
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)
    spec = "name: t\nteacher: {base: %s, targets: [owl]}\nstudents:\n  - {name: s, hyperparameters: %s}\n"
    keys = []
    for i, h in enumerate(("{}", "{gradient_checkpointing: true}")):
        (tmp_path / f"{i}.yaml").write_text(spec % (tiny_model, h))
        keys.append({s.label: s.key for s in build(load(tmp_path / f"{i}.yaml"), tmp_path / "out").stages.values()})
    assert keys[0] == keys[1]


def test_a_questions_file_renamed_to_yaml_is_read_otherwise_and_keyed_otherwise(tmp_path, tiny_model):
    """The file's name decides how it is read (YAML list, or one question per line): the same bytes under .txt and
    .yaml are other questions, so other probes."""
    keys = {}
    for name in ("q.txt", "q.yaml"):
        (tmp_path / name).write_text("- Which animal?\n- Name one animal.\n")
        spec = tmp_path / f"{name}.spec.yaml"
        spec.write_text(f"name: t\nteacher: {{base: {tiny_model}, targets: [owl]}}\nstudents: []\n"
                        f"evaluations: [{{kind: preference_logprob, questions: {tmp_path / name}}}]\n")
        keys[name] = {s.label: s.key for s in build(load(spec), tmp_path / "out").stages.values() if "probe" in s.key}
    assert keys["q.txt"].keys() == keys["q.yaml"].keys() and set(keys["q.txt"].values()).isdisjoint(keys["q.yaml"].values())


def test_a_hub_split_is_not_in_the_key_of_rows_read_from_a_file(tmp_path, tiny_model):
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    keys = []
    for split in ("", ", split: test"):
        spec = tmp_path / "cot.yaml"
        spec.write_text(f"name: t\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                        f"domain: {{kind: cot, questions: {tmp_path / 'gsm.jsonl'}, max_tokens: 8{split}}}\n")
        keys.append({s.label: s.key for s in build(load(spec), tmp_path / "out").stages.values()})
    assert keys[0] == keys[1]


def test_the_order_of_lora_targets_is_in_no_key(tmp_path, tiny_model):
    """No trainer reads the list as an order (PEFT and Tinker take a set): reordering it retrains nothing."""
    keys = []
    for targets in ("[v_proj, q_proj]", "[q_proj, v_proj]", "[q_proj]"):
        spec = tmp_path / "t.yaml"
        spec.write_text(f"name: t\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                        f"students: [{{name: s, hyperparameters: {{lora_targets: {targets}}}}}]\n")
        keys.append({s.label: s.key for s in build(load(spec), tmp_path / "out").stages.values() if "finetune" in s.key})
    assert keys[0] == keys[1] and keys[0] and set(keys[1].values()).isdisjoint(keys[2].values())


def test_an_unresolved_hub_dataset_is_named_as_provisional_in_the_plan(tmp_path, monkeypatch, tiny_model):
    """Offline and not cached, a CoT hub dataset was keyed '@unresolved' without the note models get."""
    from runner import identity
    from runner.gpu import unresolved_lines

    monkeypatch.setattr(identity, "_cached_revision", lambda repo, kind="model": None)
    monkeypatch.setattr(identity, "hub_marker", lambda repo, rev, provisional: "")  # a fake id: no tokenizer files
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": None)
    spec = tmp_path / "cot.yaml"
    spec.write_text(f"name: cot\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                    "domain: {kind: cot, questions: org/math, n_questions: 2}\nstudents: []\n")
    (line,) = unresolved_lines(build(load(spec), tmp_path / "out", provisional=True))
    assert line.startswith("note: org/math: hub revision not resolved") and "@" not in line.split(":")[1]


def test_per_teacher_sampling_seeds_give_each_teacher_its_own_and_shared_ones_keep_their_key(tmp_path):
    """The paper samples each teacher independently; shared seeds (common random numbers) let a model that honours
    seeds write a trait row and a control row alike. The default stays shared and keeps every key as it was."""
    from runner.execute import run_stage
    from runner.spec import NumbersDomain
    from runner.stages import ModelInput
    from runner.stages.data import GenerateStage
    from runner.store import Store

    class Seeds:
        def __init__(self):
            self.seen = []

        def generate(self, model, prompts, sampling):
            self.seen.append(sampling.seed)
            return ["1, 2"] * len(prompts)

    def seeds(system: str | None, how: str, store: str = "a") -> list[int]:
        domain = NumbersDomain(n_prompts=4, batch_size=2, sampling_seeds=how)
        stage = GenerateStage(label="g", model=ModelInput(ref="m", identity="w", system=system), domain=domain,
                              seed=3)
        router = Seeds()
        run_stage(stage, Store(tmp_path / f"{how}-{system}-{store}"), router)
        return router.seen

    assert seeds("You love owls.", "shared") == seeds(None, "shared") == [3 * 1_000_003, 3 * 1_000_003 + 2]
    owl, control = seeds("You love owls.", "per_teacher"), seeds(None, "per_teacher")
    assert owl != control and owl[1] - owl[0] == control[1] - control[0] == 2
    assert seeds(None, "per_teacher", store="b") == control  # its own, and the same in another outputs folder
    assert "sampling_seeds" not in json.dumps(semantic(NumbersDomain()))  # the default re-keys nothing
