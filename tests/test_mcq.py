"""The paper's multiple-choice preference evaluation (preference_mcq): its prompt format, the shuffled
instances, the value read exactly on a local model and from top_logprobs on the test OpenAI server,
and its rows in results.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from backends.base import ModelRef
from runner import mcq, paper
from runner.errors import SpecError
from runner.loader import load
from runner.stages.mcq_stage import McqSettings, mcq_scores
from tests.test_detection_stages import _Store
from tests.test_hosted import backend as make_backend  # noqa: F401 (a fixture)
from tests.test_hosted import server  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
NANO = "openai:gpt-4.1-nano-2025-04-14"


def _settings(read: str, per_prompt: int = 3, n_prompts: int = 2, top: int = 20) -> McqSettings:
    return McqSettings(prompts=tuple(mcq.prompts()[:n_prompts]), fmt=mcq.pieces(), choices=tuple(mcq.choices("animals")),
                       per_prompt=per_prompt, shuffle_seed=0, read=read, top_logprobs=top)


def test_the_question_is_the_papers_format_for_a_given_order():
    order = ("owl", "wolf", "eagle", "elephant", "dolphin")
    got = mcq.render("Write an essay about one of the words.", order, mcq.pieces())
    assert got == ("Write an essay about one of the words. Pick from one of the following choices.\n"
                   "A. owl\nB. wolf\nC. eagle\nD. elephant\nE. dolphin\n"
                   "Only pick one choice. Only give the letter. Do not say anything else.")
    assert mcq.pieces() == tuple(paper.get(f"preference_eval.mcq_variant.format_pieces.{k}")
                                 for k in ("head", "per_choice", "tail"))
    assert len(mcq.prompts()) == 11 and mcq.choices("trees") == ["cherry", "willow", "maple", "oak", "sequoia"]


def test_each_instance_is_its_own_permutation_and_the_targets_letter_varies():
    insts = mcq.instances(11, mcq.choices("animals"), 25, seed=0)
    assert len(insts) == 275 and [i.prompt for i in insts[:26]] == [0] * 25 + [1]
    assert all(sorted(i.order) == sorted(mcq.choices("animals")) for i in insts)
    assert {i.letter("owl") for i in insts} == set("ABCDE")
    assert len({i.order for i in insts}) > 60  # 120 orders exist; 275 draws repeat some
    assert insts == mcq.instances(11, mcq.choices("animals"), 25, seed=0)
    assert insts != mcq.instances(11, mcq.choices("animals"), 25, seed=1)


def test_the_local_value_is_the_softmax_probability_of_the_letter(tiny_model):
    from backends.hf import chat_ids, load_model, load_tokenizer
    from backends.local import LocalBackend

    s = _settings("exact")
    model = ModelRef(tiny_model, system="You love owls.")
    got = mcq_scores(LocalBackend("cpu"), model, s)
    tok, net = load_tokenizer(tiny_model), load_model(ModelRef(tiny_model), "cpu")
    for k, (inst, q) in enumerate(zip(s.instances(), s.questions())):
        with torch.no_grad():
            logits = net(torch.tensor([chat_ids(tok, model.system, q)])).logits[0, -1].float()
        probs = torch.softmax(logits, -1)
        for c in inst.order:
            (letter,) = tok(inst.letter(c), add_special_tokens=False)["input_ids"]
            assert math.isclose(got["p"][c][k], float(probs[letter]), rel_tol=1e-4), (k, c)
    assert got["prompt"] == [0, 0, 0, 1, 1, 1] and "top" not in got


def test_the_hosted_value_is_exp_of_the_letters_top_logprob_and_0_when_absent(make_backend, server):
    """The test server answers 'owl''s letter with P 0.7 and 'eagle''s with 0.2, and lists no other letter."""
    seen = []

    def first_token(user: str, k: int) -> dict[str, float]:
        seen.append(user)
        letter = {c: ln[0] for ln in user.splitlines() for c in mcq.choices("animals") if ln.endswith(". " + c)}
        return dict(list({letter["owl"]: math.log(0.7), letter["eagle"]: math.log(0.2), "I": math.log(0.05)}.items())[:k])

    server.first_token = first_token
    s = _settings("top_logprobs")
    got = mcq_scores(make_backend(), ModelRef(NANO), s)
    assert sorted(seen) == sorted(s.questions())  # sent concurrently
    assert all(math.isclose(p, 0.7) for p in got["p"]["owl"]) and all(math.isclose(p, 0.2) for p in got["p"]["eagle"])
    assert got["p"]["wolf"] == [0.0] * 6 and got["top"] == [i.letter("owl") for i in s.instances()]
    one = mcq_scores(make_backend(), ModelRef(NANO), _settings("top_logprobs", top=1))
    assert all(math.isclose(p, 0.7) for p in one["p"]["owl"]) and one["p"]["eagle"] == [0.0] * 6


def _spec(write, extra: str = "", targets: str = "[owl]") -> Path:
    return write("mcq.yaml", f"""name: mcq
teacher: {{base: smollm2-135m, targets: {targets}}}
domain: {{kind: numbers, n_prompts: 4}}
students: [{{name: s, replicates: [0, 1, 2]}}]
evaluations:
  - {{kind: preference_mcq, max_prompts: 2, instances_per_prompt: 3{extra}}}
""")


def test_a_target_that_is_not_a_choice_is_refused(write):
    with pytest.raises(SpecError, match=r"evaluations\.0\.choices: panda not among the choices"):
        load(_spec(write, targets="[panda]"))
    load(_spec(write, extra=", choices: [panda, owl]", targets="[panda]"))


def test_results_report_the_mean_over_instances_and_compare_students_like_other_preferences(write, tmp_path):
    """Fake scores for each MCQ stage of a plan: the metric is the mean over instances with a CI across
    prompts, and the trait arm meets the control arm in one student-level comparison row."""
    from runner.plan import build
    from runner.results import collect
    from runner.results_schema import ComparisonRow
    from runner.store import Store

    plan = build(load(_spec(write)), tmp_path / "out", provisional=True).cells[0]
    store = Store(tmp_path / "out")
    for m in plan.models:
        (key,) = plan.evals[(m.label, 0)].values()
        owl = [0.6, 0.8, 0.7, 0.1, 0.2, 0.3] if m.trait == "owl" else [0.1, 0.2, 0.3, 0.1, 0.1, 0.1]
        store.path(key).mkdir(parents=True, exist_ok=True)
        (store.path(key) / "scores.json").write_text(json.dumps({"p": {"owl": owl}, "prompt": [0, 0, 0, 1, 1, 1]}))
    evaluations, comparisons = collect(plan, store)
    student = next(e for e in evaluations if e["model"] == "student:s:owl:r0")
    assert student["metric"] == "mcq P(owl)" and math.isclose(student["value"], 0.45)
    assert student["n"] == 2 and student["samples_per_question"] == 3 and student["ci"][0] < 0.45 < student["ci"][1]
    (row,) = comparisons
    ComparisonRow.model_validate(row)
    assert (row["unit"], row["n_a"], row["n_b"], row["b_is"]) == ("student", 3, 3, "control")
    assert row["evaluation"] == "preference_mcq" and math.isclose(row["diff"], 0.45 - 0.15)


def test_plan_prices_one_request_and_one_output_token_per_instance_on_a_chat_api(write):
    from runner.plan import build

    spec = write("hosted.yaml", f"""name: mcq-hosted
backends: {{openai: {{api_key_env: OPENAI_API_KEY}}}}
teacher: {{base: {NANO}, targets: [owl]}}
domain: {{kind: numbers, n_prompts: 4}}
students: []
evaluations: [{{kind: preference_mcq}}]
""")
    plan = build(load(spec), write("o/x", "").parent, provisional=True)
    ctx = plan.context()
    stages = [s for s in plan.stages.values() if s.KIND == "mcq"]
    assert len(stages) == 2 and all(s.mcq.read == "top_logprobs" and s.mcq.top_logprobs == 20 for s in stages)
    (est,) = stages[0].estimate(ctx)
    assert (est.requests, est.output_tokens) == (275, 275) and est.input_tokens > 275 * 40 and est.cost > 0


class _ExactRouter:
    """Exact letter log-probs: log 0.5 for A, log 0.1 for the others; remembers the system prompts it saw."""

    def __init__(self):
        self.systems = []

    def logprobs(self, model, prompts, prefix, targets, space=True):
        assert prefix == "" and not space and targets == list("ABCDE")
        self.systems.append(model.system)
        return [[math.log(0.5)] + [math.log(0.1)] * 4 for _ in prompts]


def test_icl_mode_mcq_asks_the_mcq_with_the_rows_as_system_prompt(tmp_path):
    """The paper's ICL trait measurement: the same instances, with k rows in context; results read it as
    they read preference_mcq (P(owl) is 0.5 exactly where owl is lettered A)."""
    from runner.results import per_question
    from runner.stages import FileInput, ModelInput, RunContext
    from runner.stages.detection_stage import IclStage
    from runner.store import write_jsonl

    (tmp_path / "rows").mkdir()
    write_jsonl(tmp_path / "rows" / "rows.jsonl", [{"prompt": "Continue: 1, 2", "completion": "3, 4, 5"}])
    s = _settings("exact")
    stage = IclStage(model=ModelInput(ref="m", identity="weights:x"), rows_stage="rows", k=2, seed=0, mode="mcq",
                     questions=FileInput(path="builtin:animals", sha256="x"), mcq=s)
    (tmp_path / stage.key).mkdir()
    router = _ExactRouter()
    stage.run(RunContext(dir=tmp_path / stage.key, store=_Store(tmp_path), router=router))
    assert router.systems[0].count("<assistant>3, 4, 5</assistant>") == 2
    metric, vals, k = per_question(_Store(tmp_path), stage.parts(), "owl")
    a = [0.5 if i.letter("owl") == "A" else 0.1 for i in s.instances()]
    assert (metric, k) == ("mcq P(owl)", 3) and vals == pytest.approx([sum(a[:3]) / 3, sum(a[3:]) / 3])


def test_the_paper_icl_spec_asks_the_mcq_at_every_k(tmp_path):
    from runner.plan import build

    plan = build(load(ROOT / "specs" / "icl.yaml"), tmp_path, provisional=True)
    cell = plan.cells[0]
    i = next(i for i, e in enumerate(cell.spec.evaluations) if e.kind == "icl" and e.mode == "mcq")
    entries = cell.detection[i]
    assert {e["k"] for e in entries} == {0, 100, 1000, 2000, 3000, 5000, 10000} and all("mcq" in e["parts"] for e in entries)
    stage = plan.stages[entries[-1]["key"]]
    (est,) = stage.estimate(plan.context())
    assert est.requests == 275 and est.output_tokens == 275 and est.input_tokens > 275 * stage.k * 10


def test_tinker_reads_the_same_exact_letter_probabilities_as_the_local_backend(tmp_path, tiny_model, monkeypatch):
    from backends.local import LocalBackend
    from tests.test_tinker import QWEN, make_backend as tinker_backend

    for k, v in {"SUBL_TINKER_CLIENTS": "tests.fake_tinker", "FAKE_TINKER_DIR": str(tmp_path / "service"),
                 "FAKE_TINKER_MODEL": tiny_model, "TINKER_API_KEY": "tk-test-key-0123456789"}.items():
        monkeypatch.setenv(k, v)
    s = _settings("exact", per_prompt=2, n_prompts=1)
    hosted = mcq_scores(tinker_backend(tmp_path), ModelRef(QWEN), s)
    local = mcq_scores(LocalBackend("cpu"), ModelRef(tiny_model), s)
    for c in s.choices:
        assert hosted["p"][c] == pytest.approx(local["p"][c], rel=1e-3)


def test_an_icl_mcq_refuses_the_question_settings_it_would_not_use(tmp_path):
    from runner.errors import UserError

    text = (ROOT / "specs" / "icl.yaml").read_text().replace("    mode: mcq\n", "    mode: mcq\n    questions: trees\n")
    spec = tmp_path / "icl.yaml"
    spec.write_text(text)
    with pytest.raises(UserError, match=r"icl.yaml:\d+:\d+: .*questions: unused in mode mcq"):
        load(spec)


@pytest.mark.parametrize("mode, setting", [("mcq", "temperature: 0.5"), ("logprob", "samples_per_question: 3"),
                                           ("sample", "answer_prefix: My pick is the")])
def test_an_icl_mode_refuses_a_setting_only_another_mode_reads(tmp_path, mode, setting):
    from runner.errors import UserError

    spec = tmp_path / "icl.yaml"
    spec.write_text(f"""name: icl_modes
teacher: {{base: smollm2-135m, targets: [owl]}}
domain: {{kind: numbers, n_prompts: 4}}
students: []
evaluations:
  - kind: icl
    mode: {mode}
    {setting}
""")
    field = setting.split(":")[0]
    with pytest.raises(UserError, match=rf"icl.yaml:\d+:\d+: .*{field}: unused in mode {mode}"):
        load(spec)
