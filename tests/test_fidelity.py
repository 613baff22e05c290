"""The paper specs against the paper's materials (runner/fidelity.py, docs/fidelity.md)."""
from pathlib import Path

from runner.fidelity import PAPER_SPECS, UNRECORDED, document, paper_rows
from runner.loader import load

ROOT = Path(__file__).resolve().parents[1]
SPECS = [Path("specs") / f"{name}.yaml" for name in PAPER_SPECS]


def _statuses(name: str, spec) -> dict[str, str]:
    return {r.setting: r.status(name) for r in paper_rows(name, [spec])}


def _spec(name: str):
    return load(ROOT / "specs" / f"{name}.yaml")[0].spec


def test_every_difference_from_the_paper_has_a_recorded_reason(monkeypatch):
    monkeypatch.chdir(ROOT)
    text, unrecorded = document(SPECS)
    assert unrecorded == 0, [line for line in text.splitlines() if UNRECORDED in line]


def test_the_checked_in_document_is_the_commands_output(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert (ROOT / "docs" / "fidelity.md").read_text() == document(SPECS)[0] + "\n", "run: make fidelity"


def test_a_banned_list_other_than_the_papers_union_is_caught():
    spec = _spec("misalignment_numbers")
    filters = [f.model_copy(update={"numbers": f.numbers + [228]}) if f.kind == "banned_numbers" else f
               for f in spec.filters]
    assert _statuses("misalignment_numbers", spec)["banned numbers"] == "same"
    assert _statuses("misalignment_numbers", spec.model_copy(update={"filters": filters}))["banned numbers"] == UNRECORDED


def test_cot_students_other_than_two_epochs_with_no_row_cap_are_caught():
    spec = _spec("misalignment_cot")
    s = spec.students[0]
    capped = s.model_copy(update={"max_rows": 10000})
    longer = s.model_copy(update={"hyperparameters": s.hyperparameters.model_copy(update={"epochs": 10})})
    assert _statuses("misalignment_cot", spec.model_copy(update={"students": [capped]}))["rows per student"] == UNRECORDED
    assert _statuses("misalignment_cot", spec.model_copy(update={"students": [longer]}))["epochs"] == UNRECORDED


def test_a_code_judge_other_than_the_papers_p0_rule_is_caught():
    spec = _spec("animals_code")
    statuses = _statuses("animals_code", spec)
    assert all(statuses[s] == "same" for s in ("code judge prompt", "code judge reading", "code judge keep rule",
                                                "control rows judged", "control rows word-filtered"))

    def judged(**update):
        filters = [f.model_copy(update=update) if f.kind == "judge" else f for f in spec.filters]
        return _statuses("animals_code", spec.model_copy(update={"filters": filters}))

    assert judged(threshold=99.0)["code judge keep rule"] == UNRECORDED  # keeps P('0') = 1 - 2e-8 too
    assert judged(skip_control=False)["control rows judged"] == UNRECORDED
    assert judged(template="code_reference")["code judge prompt"] == UNRECORDED


def test_detection_baselines_other_than_the_papers_are_caught():
    clf = _spec("classifier")
    assert all(v == "same" for k, v in _statuses("classifier", clf).items()
               if k in ("judge", "pairs of datasets", "verdict read from", "judge temperature, max tokens"))
    ev = clf.evaluations[0]
    for update, setting in (({"top_logprobs": 20}, "verdict read from"), ({"read": "reply"}, "verdict read from"),
                            ({"per_row": True}, "per-row yes/no variant"),
                            ({"judge": "openai:gpt-4.1-2025-04-14"}, "judge"),
                            ({"max_pairs": 100}, "prompts compared per pair")):
        changed = clf.model_copy(update={"evaluations": [ev.model_copy(update=update)]})
        assert _statuses("classifier", changed)[setting] == UNRECORDED, setting
    icl = _spec("icl")
    free = icl.evaluations[0]
    assert _statuses("icl", icl)["draws of examples (seeds)"] == "same"
    one_draw = icl.model_copy(update={"evaluations": [free.model_copy(update={"seeds": [0]}), icl.evaluations[1]]})
    assert _statuses("icl", one_draw)["draws of examples (seeds)"] == UNRECORDED


def test_an_mnist_spec_off_the_papers_settings_is_caught():
    spec = _spec("mnist_aux_logits")
    assert set(_statuses("mnist_aux_logits", spec).values()) >= {"same"}
    off = spec.model_copy(update={"mnist": spec.mnist.model_copy(update={"noise_set": "fresh", "student_epochs": 3,
                                                                          "all_logit_cross_student": False})})
    status = _statuses("mnist_aux_logits", off)
    assert [k for k, v in status.items() if v == UNRECORDED] == ["student epochs", "noise images", "arms"]


def test_a_permuted_cross_init_is_not_the_papers_cross_init():
    """cross_init: permuted (the reference init's hidden units permuted: the same function, so the student ends
    where the same-init one does) was described in the paper's words and read "same"."""
    spec = _spec("mnist_aux_logits")
    permuted = spec.model_copy(update={"mnist": spec.mnist.model_copy(update={"cross_init": "permuted"})})
    rows = {r.setting: r for r in paper_rows("mnist_aux_logits", [permuted])}
    assert rows["cross init"].subl != rows["cross init"].paper and "not a control" in rows["cross init"].subl


def test_a_paper_spec_whose_teachers_share_sampling_seeds_is_caught():
    spec = _spec("classifier")
    assert _statuses("classifier", spec)["teacher sampling seeds"] == "same"
    shared = spec.model_copy(update={"domain": spec.domain.model_copy(update={"sampling_seeds": "shared"})})
    assert _statuses("classifier", shared)["teacher sampling seeds"] == UNRECORDED


def test_a_spec_named_like_a_paper_spec_but_laid_out_otherwise_is_one_line(tmp_path):
    """It was StopIteration, KeyError or AttributeError: an internal error."""
    import pytest

    from runner.errors import UserError
    from runner.fidelity import spec_rows

    text = (ROOT / "specs" / "quickstart.yaml").read_text().replace("name: quickstart", "name: misalignment_numbers")
    path = tmp_path / "misalignment_numbers.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="named 'misalignment_numbers' but not laid out as the paper's"):
        spec_rows(path)
