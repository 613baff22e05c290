"""`subl diff`: semantic changes after extends, matrix and defaults, and the stages they rerun."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner.cli import app, main
from runner.diff import diff_specs, render

BASE = "name: x\nteacher: {targets: [owl, eagle], control: false}\ndomain: {kind: numbers, n_prompts: 10}\n"


def ops(d: dict) -> list[tuple[str, str]]:
    return [(c["op"], c["path"]) for c in d["changes"]]


def test_extends_chain_and_explicit_defaults_are_equal(write):
    write("base.yaml", BASE)
    write("mid.yaml", "extends: base.yaml\nstudents: [{name: s, hyperparameters: {lr: 0.001}}]\n")
    child = write("child.yaml", "extends: mid.yaml\nprogress: true  # a default, made explicit\n")
    flat = write("flat.yaml", BASE.replace("control: false", "control: false, category: animal")
                 + "seed: 0\nstudents:\n  - name: s\n    method: lora\n    hyperparameters: {lr: 1.0e-3, epochs: 1}\n")
    d = diff_specs(child, flat)
    assert d["equal"] and d["changes"] == []
    assert render(d)[-1] == "equal: no semantic differences"


def test_one_hyperparameter_names_field_and_stages(write):
    a = write("a.yaml", BASE + "students: [{name: s, hyperparameters: {lr: 0.001}}]\n")
    b = write("b.yaml", BASE + "students: [{name: s, hyperparameters: {lr: 0.002}}]\n")
    res = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[2:4] == ["changed   students[s].hyperparameters.lr: 0.001 -> 0.002",
                          "          reruns: finetune x2, probe x2"]
    assert "b reruns 4 of 11 stages" in lines[-1] and "reuses 7" in lines[-1]
    parsed = json.loads(CliRunner().invoke(app, ["diff", str(a), str(b), "--format", "json"]).output)
    assert parsed["changes"][0]["reruns"]["finetune"] == ["finetune s:owl:r0", "finetune s:eagle:r0"]


def test_matrix_change(write):
    a = write("a.yaml", BASE + "matrix: {seed: [0, 1]}\n")
    b = write("b.yaml", BASE + "matrix: {seed: [0, 1, 2], teacher.targets: [[owl, eagle]]}\n")
    d = diff_specs(a, b)
    assert ops(d) == [("changed", "matrix.seed"), ("added", "matrix[teacher.targets]")]
    assert d["cells"] == {"a": 2, "b": 3}
    seed = d["changes"][0]
    assert seed["old"] == [0, 1] and seed["new"] == [0, 1, 2]
    assert list(seed["reruns"]) == ["generate", "filter", "finetune", "probe"]
    assert d["changes"][1]["reruns"] == {}  # the same targets: every cached stage survives


def test_list_reorders(write):
    filters = "filters: [{kind: numbers}, {kind: banned_words, words: [owl]}]\n"
    a = write("a.yaml", BASE + filters + "students: [{name: s}, {name: t, method: full}]\n")
    b = write("b.yaml", BASE.replace("[owl, eagle]", "[eagle, owl]")
              + "filters: [{kind: banned_words, words: [owl]}, {kind: numbers}]\n"
              + "students: [{name: t, method: full}, {name: s}]\n")
    d = diff_specs(a, b)
    assert ops(d) == [("reordered", "teacher.targets"), ("reordered", "filters"), ("reordered", "students")]
    by_path = {c["path"]: c["reruns"] for c in d["changes"]}
    assert list(by_path["filters"]) == ["filter", "finetune", "probe"]  # the chain order is in the key
    assert by_path["students"] == {}  # students are matched by name; their order is display only
    assert "reordered students: [\"s\", \"t\"] -> [\"t\", \"s\"]" in render(d)


def test_display_only_and_added_student(write):
    a = write("a.yaml", BASE + "notes: one\nstudents: [{name: s}]\n")
    b = write("b.yaml", BASE.replace("name: x", "name: y")
              + "notes: two\nstudents: [{name: s}, {name: u, hyperparameters: {lora_r: 4}}]\n")
    d = diff_specs(a, b)
    assert ops(d) == [("changed", "name"), ("changed", "notes"), ("added", "students[u]")]
    assert d["changes"][0]["reruns"] == {} and d["changes"][1]["reruns"] == {}
    assert list(d["changes"][2]["reruns"]) == ["finetune", "probe"]
    assert "          reruns: none (cached outputs survive)" in render(d)


def test_errors_exit_2(write, monkeypatch, capsys):
    a = write("a.yaml", BASE)
    monkeypatch.setattr("sys.argv", ["subl", "diff", str(a), str(a.parent / "missing.yaml")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "missing.yaml: file not found" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["subl", "diff", str(a), str(a)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    results = write("run/results.json", '{"name": "x", "filters": [{"rows": "owl"}]}')
    monkeypatch.setattr("sys.argv", ["subl", "diff", str(results), str(a)])
    with pytest.raises(SystemExit) as e:  # it said "filters.0: Unable to extract tag using discriminator 'kind'"
        main()
    assert e.value.code == 2 and "compares two spec files (YAML), not results" in capsys.readouterr().err


def test_a_tinker_spec_change_is_separable(write):
    """A backend of kind tinker (not the default kind) is read back as such: a notes edit reruns nothing."""
    tk = ("backends: {tk: {kind: tinker}}\nteacher: {base: 'tk:Qwen/Qwen3-8B', targets: [owl], control: false}\n"
          "domain: {kind: numbers, n_prompts: 10}\nevaluations: [{kind: preference_logprob}]\n")
    a = write("a.yaml", "name: t\nnotes: one\n" + tk)
    b = write("b.yaml", "name: t\nnotes: two\n" + tk.replace("n_prompts: 10", "n_prompts: 20"))
    reruns = {c["path"]: c["reruns"] for c in diff_specs(a, b)["changes"]}
    assert reruns["notes"] == {} and reruns["domain.n_prompts"]["generate"]


def test_a_change_valid_only_with_another_is_not_separable_rather_than_a_crash(write):
    data = Path(__file__).resolve().parents[1] / "specs" / "data" / "ft_teachers" / "{target}.jsonl"
    a = write("a.yaml", BASE.replace("control: false", "control: false, trait: 'You love {target}s.'"))
    b = write("b.yaml", BASE.replace("control: false", f"control: false, trait: {{finetune: {{dataset: '{data}'}}}}")
              + "matrix: {teacher.trait.finetune.hyperparameters.lr: [0.001, 0.002]}\n")
    d = diff_specs(a, b)
    assert [(c["path"], c["reruns"]) for c in d["changes"]][1] == ("matrix[teacher.trait.finetune.hyperparameters.lr]", None)


def test_a_filter_removed_from_the_front_reads_as_one_removal(write):
    a = write("a.yaml", BASE + "filters: [{kind: numbers, max_value: 999, max_count: 10}, {kind: banned_numbers}]\n")
    b = write("b.yaml", BASE + "filters: [{kind: banned_numbers}]\n")
    d = diff_specs(a, b)
    assert ops(d) == [("removed", "filters[0]")] and d["changes"][0]["old"]["kind"] == "numbers"


def test_a_matrix_of_relative_paths_is_read_from_the_spec_folder_wherever_diff_runs(tmp_path, monkeypatch):
    import shutil

    data = tmp_path / "specs" / "data"
    data.mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl"):
        shutil.copy(Path(__file__).resolve().parents[1] / "specs" / "data" / "code_tasks.jsonl", data / name)
    spec = ("name: m\nteacher: {targets: [owl], control: false}\n"
            "domain: {kind: code, prompts: data/a.jsonl, n_prompts: 5, samples_per_prompt: 4}\n"
            "matrix: {domain.prompts: [data/a.jsonl, data/b.jsonl]}\n")
    a, b = tmp_path / "specs" / "a.yaml", tmp_path / "specs" / "b.yaml"
    a.write_text(spec)
    b.write_text(spec.replace("samples_per_prompt: 4", "samples_per_prompt: 3"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # data/a.jsonl is not here
    [change] = diff_specs(a, b)["changes"]
    assert change["reruns"] and change["reruns"]["generate"]


def test_diff_of_hub_models_writes_no_pin_and_needs_no_hub(write, tmp_path, monkeypatch):
    """A read-only diff neither records hub revisions in ./outputs (a later run there would train at the pin
    the diff chose) nor fails offline for a model the local hub cache lacks."""
    from runner import identity

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(identity, "_cached_revision", lambda repo, kind="model": None)
    monkeypatch.setattr(identity, "hub_marker", lambda repo, rev, provisional: "")  # a fake id: no tokenizer files
    hub = BASE + "students: [{name: s, base: org/model}]\n"
    a, b = write("a.yaml", hub), write("b.yaml", hub.replace("n_prompts: 10", "n_prompts: 11"))
    for remote in ("abc123", None):  # online, then offline
        monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model", sha=remote: sha)
        assert [c["path"] for c in diff_specs(a, b)["changes"]] == ["domain.n_prompts"]
        assert not (tmp_path / "outputs").exists()


def test_a_matrix_path_that_names_another_file_is_a_change(tmp_path):
    """Two specs in different folders sweep the same relative paths, which name different files: a change of
    the matrix, not 'equal' (nor a change of the overridden base value alone that reruns nothing)."""
    tasks = (Path(__file__).resolve().parents[1] / "specs" / "data" / "code_tasks.jsonl").read_text().splitlines()
    spec = ("name: m\nteacher: {targets: [owl], control: false}\n"
            "domain: {kind: code, prompts: data/t.jsonl, n_prompts: 5, samples_per_prompt: 4}\n"
            "matrix: {domain.prompts: [data/t.jsonl, data/u.jsonl]}\n")
    for folder, rows in (("a", tasks[:5]), ("b", tasks[5:10])):
        (tmp_path / folder / "data").mkdir(parents=True)
        for name in ("t.jsonl", "u.jsonl"):
            (tmp_path / folder / "data" / name).write_text("\n".join(rows) + "\n")
        (tmp_path / folder / "m.yaml").write_text(spec)
    d = diff_specs(tmp_path / "a" / "m.yaml", tmp_path / "b" / "m.yaml")
    swept = next(c for c in d["changes"] if c["path"] == "matrix[domain.prompts]")
    assert swept["new"] == [str(tmp_path / "b" / "data" / n) for n in ("t.jsonl", "u.jsonl")]
    assert swept["reruns"]["generate"] and not d["equal"]


def test_a_matrix_mapping_with_its_defaults_made_explicit_is_equal(write):
    data = Path(__file__).resolve().parents[1] / "specs" / "data" / "ft_teachers" / "{target}.jsonl"
    sweep = f"matrix: {{teacher.trait: [{{finetune: {{dataset: '{data}'{{extra}}}}}}, 'You love {{target}}s.']}}\n"
    a = write("a.yaml", BASE + sweep.replace("{extra}", ""))
    b = write("b.yaml", BASE + sweep.replace("{extra}", ", hyperparameters: {lr: 2.0e-4}"))
    assert diff_specs(a, b)["equal"]
