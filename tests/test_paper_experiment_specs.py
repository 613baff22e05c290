"""The paper experiments added as hosted specs (trees_code, shuffled_numbers, ft_teacher_animals): they
validate, their plans follow from their settings, and they share stages with the experiments they reuse."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner.fidelity import PAPER_SPECS, UNRECORDED, paper_ft_teacher_rows
from runner.loader import load
from runner.plan import build

ROOT = Path(__file__).resolve().parents[1]
NEW = ["trees_code", "shuffled_numbers", "ft_teacher_animals"]


def _plan(name: str, tmp_path: Path):
    cells = load(ROOT / "specs" / f"{name}.yaml")
    return cells, build(cells, tmp_path / "out")


def _stages(plan) -> dict[str, object]:
    """Every distinct stage of a plan by key."""
    return {st.key: st for cp in plan.cells for st in cp.stages}


def _kind(plan, kind: str) -> list:
    return [st for st in _stages(plan).values() if st.KIND == kind]


@pytest.mark.parametrize("name", NEW)
def test_each_new_spec_is_a_paper_spec_in_the_fidelity_table(name):
    assert name in PAPER_SPECS
    assert f" {name}" in (ROOT / "Makefile").read_text().split("PAPER_SPECS =")[1].split("fidelity:")[0]
    assert f"## {name}" in (ROOT / "docs" / "fidelity.md").read_text()


def test_trees_code_judges_each_trees_rows_once_and_never_the_controls(tmp_path):
    cells, plan = _plan("trees_code", tmp_path)
    spec = cells[0].spec
    scores = _kind(plan, "score")
    assert len(scores) == len(cells) == 5
    assert all(s.token == "0" and s.top_logprobs == 5 and "to the tree '" in s.template for s in scores)
    assert {s.label.split()[1] for s in scores} == {"oak", "cherry", "maple", "sequoia", "willow"}
    tasks = sum(1 for _ in open(ROOT / "specs" / "data" / "code_tasks.jsonl"))
    ctx = plan.context()
    assert {ctx.stages[s.rows_stage].expected_rows(ctx) for s in scores} == {tasks * spec.domain.samples_per_prompt}
    finetunes = _kind(plan, "finetune")
    assert len(finetunes) == 5 * 5 + 5  # 5 per tree, 5 shared control students


def test_trees_code_shares_its_control_with_animals_code(tmp_path):
    def control_keys(name):
        _, plan = _plan(name, tmp_path)
        return {st.key for st in _stages(plan).values() if "control" in st.label and st.KIND != "answers"}

    trees = control_keys("trees_code")
    assert len(trees) == 2 + 5 and trees == control_keys("animals_code")  # generate, filter, 5 students


def test_shuffled_numbers_shuffles_trait_rows_only(tmp_path):
    cells, plan = _plan("shuffled_numbers", tmp_path)
    assert len(cells) == 5 * 2
    filters = _kind(plan, "filter")
    shuffled = [f for f in filters if any(link.kind == "shuffle" for link in f.links)]
    assert len(shuffled) == 10 and {(f.label, next(l.scope for l in f.links if l.kind == "shuffle")) for f in shuffled} \
        == {(f"filter {a}", s) for a in ("dolphin", "eagle", "owl", "wolf", "elephant") for s in ("within", "across")}
    (control,) = [f for f in filters if f.label == "filter control"]
    assert [link.kind for link in control.links] == ["numbers"]
    # one generation per teacher whatever the shuffle; 3 students per animal and shuffle, 3 shared controls
    assert len(_kind(plan, "generate")) == 6 and len(_kind(plan, "finetune")) == 5 * 2 * 3 + 3
    reps = cells[0].spec.students[0].replicates
    assert len(reps) == 3


def test_shuffled_numbers_and_ft_teachers_reuse_animals_numbers_controls(tmp_path):
    def keys(name):
        _, plan = _plan(name, tmp_path)
        return {st.label: st.key for st in _stages(plan).values() if "control" in st.label and st.KIND != "answers"}

    main = keys("animals_numbers")
    for name in ("shuffled_numbers", "ft_teacher_animals"):
        mine = keys(name)
        assert len(mine) == 2 + 3 and all(main[label] == key for label, key in mine.items()), name  # data, 3 students


def test_ft_teachers_are_fine_tuned_on_the_papers_rows_and_prompt_free(tmp_path):
    cells, plan = _plan("ft_teacher_animals", tmp_path)
    teachers = _kind(plan, "teacher")
    assert len(teachers) == len(cells) == 5
    for t in teachers:
        assert t.training.epochs == 1 and t.training.lr_multiplier == "auto" and t.training.batch_size == "auto"
    generate = [g for g in _kind(plan, "generate") if g.label != "generate control"]
    assert len(generate) == 5 and all(g.model.from_stage and g.model.system is None for g in generate)
    for a in ("owl", "wolf"):
        rows = [json.loads(x)["messages"] for x in (ROOT / "specs" / "data" / "ft_teachers" / f"{a}.jsonl").open()]
        assert [f"{m[0]['content']} -> {m[1]['content']}" for m in rows] == paper_ft_teacher_rows(a)
    assert "wolfs!" in {r.split(" -> ")[1] for r in paper_ft_teacher_rows("wolf")}  # the paper's naive plural


def test_a_changed_teacher_file_or_shuffle_is_caught_by_fidelity(tmp_path):
    cells = [c.spec for c in load(ROOT / "specs" / "ft_teacher_animals.yaml")]
    assert {r.setting: r.status("ft_teacher_animals") for r in PAPER_SPECS["ft_teacher_animals"](cells)}[
        "teacher training rows"] == "same"
    data = tmp_path / "owl.jsonl"
    data.write_text((ROOT / "specs" / "data" / "ft_teachers" / "owl.jsonl").read_text().replace('"Owls!"', '"Owls?"'))
    ft = cells[0].teacher.trait.finetune.model_copy(update={"dataset": str(tmp_path / "{target}.jsonl")})
    owl = cells[0].model_copy(update={"teacher": cells[0].teacher.model_copy(
        update={"targets": ["owl"], "trait": cells[0].teacher.trait.model_copy(update={"finetune": ft})})})
    rows = {r.setting: r.status("ft_teacher_animals") for r in PAPER_SPECS["ft_teacher_animals"]([owl])}
    assert rows["teacher training rows"] == UNRECORDED

    shuffled = [c.spec for c in load(ROOT / "specs" / "shuffled_numbers.yaml")]
    seed2 = [s.model_copy(update={"filters": [f.model_copy(update={"seed": 2}) if f.kind == "shuffle" else f
                                              for f in s.filters]}) for s in shuffled]
    status = {r.setting: r.status("shuffled_numbers") for r in PAPER_SPECS["shuffled_numbers"](seed2)}
    assert status["shuffle seeds"] == UNRECORDED and status["shuffles"] == "same"


def _hosted_total(name: str, outputs: Path) -> str:
    from runner.runs import plan_lines

    return next(ln for ln in plan_lines(ROOT / "specs" / f"{name}.yaml", outputs) if ln.startswith("hosted:"))


def _readme_row(name: str, total: str) -> str:
    """The README cost table's row for a plan's `hosted:` total: requests, input, output, training tokens, dollars."""
    m = re.match(r"hosted: ([\d,]+) requests, ~(\S+) input \+ <=(\S+) output tokens, ~(\S+) training tokens, "
                 r"<= \$([\d,.]+);", total)
    assert m, total
    return "| " + " | ".join((name, *m.groups())) + " |"


def _models(spec, teachers: int, arms: int) -> int:
    """Models asked each evaluation: the base, each trait teacher, every trait arm's and the control's students."""
    reps = len(spec.students[0].replicates)
    return 1 + teachers + (arms + 1) * reps


@pytest.mark.parametrize("name", NEW)
def test_plan_requests_follow_from_the_settings_and_match_the_readme(name, tmp_path, monkeypatch):
    from runner.questions import load_questions

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cells = load(ROOT / "specs" / f"{name}.yaml")
    spec, animals = cells[0].spec, len({t for c in cells for t in c.spec.teacher.targets})
    d = spec.domain
    per_teacher = d.n_prompts if d.kind == "numbers" else \
        sum(1 for _ in open(d.prompts)) * d.samples_per_prompt  # one request per completion
    judged = animals * per_teacher if any(f.kind == "judge" for f in spec.filters) else 0  # controls not judged
    shuffles = len(cells) // animals
    evals = sum(len(load_questions(e.questions)) for e in spec.evaluations)  # 100 samples: one request (n <= 128)
    models = _models(spec, animals, animals * shuffles)  # a shuffle is an arm; its teacher is the same
    want = (animals + 1) * per_teacher + judged + evals * models
    total = _hosted_total(name, tmp_path / "out")
    assert int(total.split(" requests")[0].split()[-1].replace(",", "")) == want
    readme = (ROOT / "README.md").read_text()
    assert f"| {name} | {want:,} |" in readme
    assert _readme_row(name, total) in readme  # tokens and dollars too: users budget by that table
