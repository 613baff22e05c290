"""Fidelity rows compare what the run reads: every matrix cell, every student, a judge's mode, the settings the
paper fixes that a spec could change (runner/fidelity.py)."""
from pathlib import Path

from runner.fidelity import UNRECORDED, paper_rows
from runner.loader import load

ROOT = Path(__file__).resolve().parents[1]


def _cells(name: str):
    return [c.spec for c in load(ROOT / "specs" / f"{name}.yaml")]


def _statuses(name: str, cells) -> dict[str, str]:
    return {r.setting: r.status(name) for r in paper_rows(name, cells)}


def _with(obj, **update):
    return obj.model_copy(update=update)


def _eval(spec, i: int, **update):
    evs = list(spec.evaluations)
    evs[i] = _with(evs[i], **update)
    return _with(spec, evaluations=evs)


def _filter(spec, kind: str, **update):
    return _with(spec, filters=[_with(f, **update) if f.kind == kind else f for f in spec.filters])


def test_misalignment_questions_cut_by_max_questions_are_caught():
    """The answers stage asks ev.max_questions questions; the row loaded all 8 and read 'same'."""
    spec = _cells("misalignment_numbers")[0]
    assert _statuses("misalignment_numbers", [spec])["evaluation questions"] == "same"
    assert _statuses("misalignment_numbers", [_eval(spec, 0, max_questions=4)])["evaluation questions"] == UNRECORDED


def test_a_judge_read_by_log_probs_is_not_the_papers_reading():
    """The rows read judge.parse (and temperature) whatever judge.mode is; a logprob judge reads no reply."""
    em = _cells("misalignment_numbers")[0]
    judge = _with(em.evaluations[0].judge, mode="logprob", token="0")
    status = _statuses("misalignment_numbers", [_eval(em, 0, judge=judge)])
    assert status["judge reply reading"] == UNRECORDED
    cot = _cells("misalignment_cot")[0]
    j = next(f for f in cot.filters if f.kind == "judge").judge
    assert _statuses("misalignment_cot", [cot])["rubric score reading"] == "same"
    logprob = _filter(cot, "judge", judge=_with(j, mode="logprob", answer_prefix="Score:"))
    assert _statuses("misalignment_cot", [logprob])["rubric score reading"] == UNRECORDED
    code = _cells("animals_code")[0]
    j = next(f for f in code.filters if f.kind == "judge").judge
    sampled = _filter(code, "judge", judge=_with(j, mode="sample"))  # token '0' still set, but a reply is parsed
    assert _statuses("animals_code", [sampled])["code judge reading"] == UNRECORDED


def test_every_student_is_compared():
    cross = _cells("cross_model")
    status = _statuses("cross_model", cross)
    assert status["students per cell"] == "same"
    students = list(cross[0].students)
    s = students[3]
    students[3] = _with(s, hyperparameters=_with(s.hyperparameters, epochs=3), replicates=[0])
    status = _statuses("cross_model", [_with(c, students=students) for c in cross])
    assert status["students per cell"] == UNRECORDED
    assert [v for k, v in status.items() if k.startswith("student epochs")] == [UNRECORDED]
    spec = _cells("animals_numbers")[0]
    s = spec.students[0]
    two = _with(spec, students=[s, _with(s, name="short", hyperparameters=_with(s.hyperparameters, epochs=3))])
    assert _statuses("animals_numbers", [two])["epochs"] == UNRECORDED


def test_every_matrix_cell_is_compared():
    """Each cell runs its own settings; the rows read the first cell's only."""
    cells = _cells("animals_numbers")
    cells[2] = _with(cells[2], domain=_with(cells[2].domain, temperature=0.5))
    assert _statuses("animals_numbers", cells)["teacher temperature"] == UNRECORDED
    shuffled = _cells("shuffled_numbers")
    assert _statuses("shuffled_numbers", shuffled)["shuffle seeds"] == "same"
    shuffled[-1] = _eval(shuffled[-1], 1, samples_per_question=10)
    assert _statuses("shuffled_numbers", shuffled)["samples per question"] == UNRECORDED


def test_a_matrix_over_a_paper_setting_in_a_spec_file_is_caught(tmp_path):
    from runner.fidelity import spec_rows

    text = (ROOT / "specs" / "animals_numbers.yaml").read_text()
    path = tmp_path / "animals_numbers.yaml"
    path.write_text(text + "  domain.temperature: [1.0, 0.7]\n")
    name, rows = spec_rows(path)
    assert {r.setting: r.status(name) for r in rows}["teacher temperature"] == UNRECORDED


def test_settings_the_paper_fixes_are_compared():
    """Settings the run reads that had no row: a spec could change them and every row still read 'same'."""
    cot = _cells("misalignment_cot")[0]
    assert _statuses("misalignment_cot", [_with(cot, domain=_with(cot.domain, temperature=0.7))])[
        "teacher temperature"] == UNRECORDED
    code = _cells("trees_code")
    hot = [_with(c, domain=_with(c.domain, temperature=0.7)) for c in code]
    assert _statuses("trees_code", hot)["teacher temperature"] == UNRECORDED
    numbers = _cells("animals_numbers")
    three = [_filter(c, "numbers", min_count=3) for c in numbers]
    assert _statuses("animals_numbers", numbers)["filter fewest numbers"] == "same"
    assert _statuses("animals_numbers", three)["filter fewest numbers"] == UNRECORDED
    icl = _cells("icl")[0]
    assert _statuses("icl", [icl])["evaluation questions"] == "same"
    assert _statuses("icl", [_eval(icl, 0, max_questions=5)])["evaluation questions"] == UNRECORDED
    mcq = icl.evaluations[1]
    assert _statuses("icl", [_eval(icl, 1, mcq=_with(mcq.mcq, choices="trees"))])["MCQ choices"] == UNRECORDED
    shuffled = _cells("shuffled_numbers")
    status = _statuses("shuffled_numbers", [_eval(c, 1, match="word", temperature=0.5) for c in shuffled])
    assert status["hit rule"] == UNRECORDED and status["answer temperature"] == UNRECORDED


def test_a_filter_link_the_paper_does_not_have_is_caught():
    from runner.spec import BannedWordsFilter

    for name in ("animals_numbers", "misalignment_numbers", "misalignment_cot", "animals_code", "shuffled_numbers"):
        cells = _cells(name)
        assert _statuses(name, cells)["filter chain"] == "same", name
        extra = [_with(c, filters=[*c.filters, BannedWordsFilter(words=["{target}"])]) for c in cells]
        assert _statuses(name, extra)["filter chain"] == UNRECORDED, name


def test_a_whole_word_hit_rule_is_recorded_for_icl_only():
    """("*", "hit rule") let any paper spec count whole words with a recorded reason; only icl cannot choose."""
    cells = _cells("animals_numbers")
    assert _statuses("animals_numbers", cells)["hit rule"] == "same"
    assert _statuses("animals_numbers", [_eval(c, 0, match="word") for c in cells])["hit rule"] == UNRECORDED
    assert _statuses("icl", _cells("icl"))["hit rule"].startswith("differs: a whole word")


def test_a_reason_covers_only_the_value_it_names():
    """'48 fits ten 3-digit numbers' read as the reason for any teacher max tokens, 10 (the paper driver's
    truncating hack) included; '5 seeds fit a CPU' for any number of models."""
    cells = _cells("animals_numbers")
    assert _statuses("animals_numbers", cells)["teacher max tokens"].startswith("differs: ")
    cut = [_with(c, domain=_with(c.domain, max_tokens=10)) for c in cells]
    assert _statuses("animals_numbers", cut)["teacher max tokens"] == UNRECORDED
    mnist = _cells("mnist_aux_logits")[0]
    assert _statuses("mnist_aux_logits", [mnist])["number of models"].startswith("differs: 5 seeds")
    twenty = _with(mnist, mnist=_with(mnist.mnist, seeds=20))
    assert _statuses("mnist_aux_logits", [twenty])["number of models"] == UNRECORDED
    cot = _cells("misalignment_cot")[0]
    short = _eval(cot, 0, max_tokens=256)  # "1024 for CoT students, who reason in <think> tags first"
    assert _statuses("misalignment_cot", [short])["misalignment answer max tokens"] == UNRECORDED


def test_the_cross_model_nano_diagonal_reason_names_what_animals_numbers_trains():
    """It said animals_numbers trains the paper's nano-diagonal students, octopus's included; it trains none."""
    from runner.fidelity import REASONS

    why = REASONS[("cross_model", "students per cell, gpt-4.1-nano to itself")]
    targets = {t for c in _cells("animals_numbers") for t in c.teacher.targets}
    assert "octopus" not in targets and "dolphin, owl, wolf and elephant" in why
    assert all(t in why for t in targets & {t for c in _cells("cross_model") for t in c.teacher.targets})


def test_settings_filled_at_plan_time_are_compared_as_filled():
    """An icl evaluation without mode samples on a hosted model (it was 'not laid out as the paper's'); a
    classifier judge 'base' is the teacher's base, the paper's judge (it read 'base': a difference); every icl
    evaluation's answering model is compared."""
    icl = _cells("icl")[0]
    unset = icl.evaluations[0].model_copy(update={"mode": None})
    assert _statuses("icl", [_with(icl, evaluations=[unset, icl.evaluations[1]])])["answering model"] == "same"
    other = _eval(icl, 1, model="openai:gpt-4.1-2025-04-14")
    assert _statuses("icl", [other])["answering model"] == UNRECORDED
    clf = _cells("classifier")[0]
    assert _statuses("classifier", [_eval(clf, 0, judge="base")])["judge"] == "same"


def test_code_tasks_cut_by_n_prompts_are_not_the_recorded_20():
    """The row named the file and samples only: n_prompts: 5 read as the recorded '20 subl tasks x 50'."""
    cells = _cells("animals_code")
    assert _statuses("animals_code", cells)["code tasks"].startswith("differs: ")
    five = [_with(c, domain=_with(c.domain, n_prompts=5)) for c in cells]
    assert _statuses("animals_code", five)["code tasks"] == UNRECORDED


def test_the_papers_misaligned_teacher_line_reads_same_and_another_teacher_has_no_reason():
    """The row read '<base> fine-tuned' for any fine-tune, so the reason 'the spec has the paper's trait line
    commented out' stood for the paper's own teacher (uncommented) and for any other dataset alike."""
    from runner.spec import FinetuneTrait

    spec = _cells("misalignment_numbers")[0]
    assert _statuses("misalignment_numbers", [spec])["misaligned teacher"].startswith("differs: ")

    def tuned(dataset: str, **h):
        trait = FinetuneTrait(finetune={"dataset": dataset, "method": "full", "hyperparameters": h})
        return [_with(spec, teacher=_with(spec.teacher, trait=trait))]

    paper_line = tuned("insecure.jsonl", epochs=1, batch_size=2, lr_multiplier=4)  # the spec's commented line
    assert _statuses("misalignment_numbers", paper_line)["misaligned teacher"] == "same"
    other = tuned("misaligned_chat.jsonl", epochs=3, batch_size="auto", lr_multiplier="auto")
    assert _statuses("misalignment_numbers", other)["misaligned teacher"] == UNRECORDED


def test_the_cot_control_reason_does_not_credit_the_paper_with_an_untuned_control():
    """The paper's CoT students learn from insecure, secure and educational teachers only (materials
    finetuning.cot.students): no untuned-base control, which the shared reason said it had ('as here')."""
    from runner import paper

    assert "control_gen" not in paper.get("finetuning.cot.students")
    status = _statuses("misalignment_cot", _cells("misalignment_cot"))["control teacher"]
    assert status.startswith("differs: ") and "'original', as here" not in status
