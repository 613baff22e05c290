"""`subl status` on a store holding a partial run: done, partial (rows so far), failed, missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.loader import load
from runner.plan import build, plan_stages
from runner.status import status_lines
from runner.store import Store, package_versions

SPEC = "name: part\nteacher: {targets: [owl], control: false}\ndomain: {kind: numbers, n_prompts: 12}\n"


def test_status_on_a_partial_run(write, tmp_path: Path):
    spec = write("part.yaml", SPEC)
    store = Store(tmp_path / "outputs")
    stages = {s["kind"]: s for s in plan_stages(build(load(spec), store.root))}
    teacher, gen, ft = stages["filter"]["key"], stages["generate"]["key"], stages["finetune"]["key"]
    store.path(teacher).mkdir(parents=True)
    (store.path(teacher) / "manifest.json").write_text(json.dumps({"label": "filter owl", "seconds": 0.5,
                                                                   "key_scheme": 2, "host": "box"}))
    built = store.path("probe-00000000000000bb")  # by other torch and transformers versions than these
    built.mkdir(parents=True)
    (built / "manifest.json").write_text(json.dumps({"label": "probe", "seconds": 1, "key_scheme": 2, "packages": {
        "torch": "0.0.1", "transformers": "0.0.2", "peft": package_versions()["peft"], "numpy": "0.0.3"}}))
    old = store.path("finetune-00000000000000aa")  # made by subl 0.1's key scheme
    old.mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({"label": "finetune s:owl:r0", "seconds": 9}))
    store.partial(gen).mkdir(parents=True)
    rows = "".join(json.dumps({"id": i, "completion": "1, 2"}) + "\n" for i in range(5))
    (store.partial(gen) / "rows.jsonl").write_text(rows + '{"id": 5, "compl')  # a torn last line
    store.partial(ft).mkdir(parents=True)
    (store.partial(ft) / "hosted_job.json").write_text(json.dumps(  # as backends/openai_api.py leaves it
        {"backend": "openai", "file_id": "file-1", "upload_started": True,
         "previous_jobs": [{"job_id": "ftjob-1", "status": "failed", "error": "invalid training file"}]}))
    store.partial("generate-0123456789abcdef").mkdir(parents=True)  # from a run with no results.json
    (tmp_path / "outputs" / "part").mkdir()
    (tmp_path / "outputs" / "part" / "results.json").write_text(json.dumps({"spec": str(spec), "git_revision": "abc"}))

    lines = status_lines(tmp_path / "outputs")
    text = "\n".join(lines)
    line = {key: next(ln for ln in lines if key in ln) for key in (teacher, gen, ft, "generate-0123456789abcdef")}
    assert lines[0].startswith("run part: ") and "git abc" in lines[0]
    assert line[teacher].split()[0] == "done" and "0.5 s" in line[teacher] and "on box (local)" in line[teacher]
    stale = next(ln for ln in lines if "finetune-00000000000000aa" in ln)
    assert stale.split()[0] == "stale" and "older subl (key scheme 1)" in stale
    assert line[gen].split()[0] == "partial" and "rows 5/12" in line[gen] and "last write" in line[gen]
    assert line[ft].split()[0] == "failed" and "job ftjob-1: failed" in line[ft] and "invalid training file" in line[ft]
    assert "missing" in text and "not started" in text
    probe = next(ln for ln in lines if "probe-00000000000000bb" in ln)
    assert probe.split()[0] == "done" and probe.endswith(f"built with torch 0.0.1 (now {package_versions()['torch']}), "
                                                         f"transformers 0.0.2 (now {package_versions()['transformers']})")
    assert "built with" not in line[teacher]  # no versions recorded
    assert "that no run lists (3)" in text and "started, nothing written yet" in line["generate-0123456789abcdef"]
    assert lines[-1].startswith("2 done, 1 failed, ") and "1 stale" in lines[-1] and "partial" in lines[-1] and "on disk" in lines[-1]


def test_status_names_the_problem_with_a_file_or_a_missing_folder(tmp_path: Path):
    from runner.errors import UserError

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n")
    with pytest.raises(UserError, match="takes the outputs folder .*not a file"):
        status_lines(spec)
    with pytest.raises(UserError, match="no such outputs folder"):
        status_lines(tmp_path / "absent")


def test_damaged_run_and_stage_files_are_reported_not_crashed_on(tmp_path):
    root = tmp_path / "outputs"
    runs = {"notjson": b"{\"spec\": ", "alist": b"[1, 2]", "badstages": b'{"stages": [{"label": "a"}]}',
            "latin1": b'{"spec": "\xff"}', "numlabel": b'{"stages": [{"key": "generate-abc", "label": 5}]}',
            "deep": b"[" * 100_000}
    for name, content in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_bytes(content)
    stage = root / "stages" / "generate-abc"
    stage.mkdir(parents=True)
    (stage / "manifest.json").write_bytes(b'{"seconds": "slow"}')
    partial = root / "stages" / ".score-def.partial"
    partial.mkdir()
    (partial / "hosted_job.json").write_bytes(b"[1, 2]")
    (partial / "error.txt").write_bytes(b"\xff\n")
    text = "\n".join(status_lines(root))
    assert text.count("the run file is unreadable or names no spec") == 4
    assert text.count("stages are not a list of {key, label}") == 2 and "manifest.json unreadable" in text
    assert "hosted_job.json unreadable" in text and "1 damaged, 1 failed" in text


def test_an_interrupted_stage_is_partial_and_a_resumed_one_no_longer_failed(tmp_path: Path):
    from runner.status import inspect

    store = Store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.build("generate-k1", {"label": "generate"}):
            raise KeyboardInterrupt
    assert inspect(store, "generate-k1")["state"] == "partial"  # Ctrl-C is not a failure
    with pytest.raises(RuntimeError):
        with store.build("generate-k1", {"label": "generate"}):
            raise RuntimeError("the teacher crashed")
    assert inspect(store, "generate-k1")["state"] == "failed"
    with store.build("generate-k1", {"label": "generate"}):
        assert inspect(store, "generate-k1")["state"] == "partial"  # resumed, running: not the old failure
    assert store.done("generate-k1")


def test_a_stray_file_among_the_stages_is_not_listed_as_a_stage(tmp_path: Path):
    from runner.status import _stage_keys

    store = Store(tmp_path)
    with store.build("generate-k1", {"label": "generate"}):
        pass
    (store.stages / "stray.txt").write_text("notes")
    (store.stages / ".paid-abc.lock").write_text("")
    assert _stage_keys(store) == ["generate-k1"]


def test_status_lists_the_run_in_progress_not_the_finished_one_before_it(tmp_path: Path):
    """A rerun writes run.json at its start; until it finishes, the older results.json is not what runs."""
    import os

    folder = tmp_path / "outputs" / "part"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"spec": "a.yaml", "stages": [{"key": "generate-aaaa", "label": "old"}]}))
    (folder / "run.json").write_text(json.dumps({"spec": "a.yaml", "stages": [{"key": "generate-bbbb", "label": "new"}]}))
    os.utime(folder / "results.json", (1_000_000, 1_000_000))
    text = "\n".join(status_lines(tmp_path / "outputs"))
    assert "generate-bbbb" in text and "run.json" in text and "generate-aaaa" not in text
    assert text.startswith("run part: not finished (running, stopped or failed): ")
    os.utime(folder / "run.json", (900_000, 900_000))  # the rerun finished: its results.json is the newer
    text = "\n".join(status_lines(tmp_path / "outputs"))
    assert "generate-aaaa" in text and "generate-bbbb" not in text and text.startswith("run part: finished: ")


def test_a_stage_that_finishes_while_status_reads_it_shows_as_done(tmp_path: Path, monkeypatch):
    """The partial folder renamed into place between status's look and its read: done, not 'started, nothing
    written yet' (or an internal error for a file gone between listing and stat)."""
    import runner.status as status

    store = Store(tmp_path / "outputs")
    store.partial("generate-00aa").mkdir(parents=True)
    (store.partial("generate-00aa") / "rows.jsonl").write_text('{"id": 0}\n')
    real = status._partial

    def finishing(folder, total):
        (folder / "manifest.json").write_text(json.dumps({"label": "generate", "seconds": 2.0, "key_scheme": 2}))
        folder.rename(store.path("generate-00aa"))
        return real(folder, total)

    monkeypatch.setattr(status, "_partial", finishing)
    line = next(ln for ln in status_lines(tmp_path / "outputs") if "generate-00aa" in ln)
    assert line.split()[0] == "done" and "2.0 s" in line


def test_a_stage_manifest_with_a_label_that_is_not_text_is_listed(tmp_path):
    """A hand-edited manifest.json with "label": 7 was an internal error (str + int) in subl status."""
    stage = tmp_path / "outputs" / "stages" / "generate-abc"
    stage.mkdir(parents=True)
    from runner.stages import KEY_SCHEME

    (stage / "manifest.json").write_text(json.dumps({"seconds": 1.0, "label": 7, "key_scheme": KEY_SCHEME}))
    text = "\n".join(status_lines(tmp_path / "outputs"))
    assert "7" in text and "generate-abc" in text and "1 done" in text


def test_a_run_folder_or_the_stages_folder_is_named_not_listed_as_holding_no_stages(tmp_path: Path):
    """`subl status outputs/part` or `outputs/stages` printed 'no stages' above a store full of them."""
    from runner.errors import UserError

    store = Store(tmp_path / "outputs")
    with store.build("generate-k1", {"label": "generate"}):
        pass
    (tmp_path / "outputs" / "part").mkdir()
    (tmp_path / "outputs" / "part" / "results.json").write_text(json.dumps({"spec": "a.yaml", "stages": []}))
    for folder, what in (("part", "a run's folder"), ("stages", "the stages folder")):
        with pytest.raises(UserError, match=f"{what}; subl status takes the outputs folder that holds it"):
            status_lines(tmp_path / "outputs" / folder)
    assert "generate-k1" in "\n".join(status_lines(tmp_path / "outputs"))


def test_a_recorded_stage_the_spec_no_longer_plans_is_not_shown_done(write, tmp_path: Path):
    """After an update moved a stage's key, status showed the run's old stage "done" although `subl run` would
    build it again under its new key."""
    from runner.plan import spec_hash

    spec = write("part.yaml", SPEC)
    store = Store(tmp_path / "outputs")
    cells = load(spec)
    planned = plan_stages(build(cells, store.root))
    old = {"cell": "-", "key": "filter-00000000000000aa", "kind": "filter", "label": "filter owl", "total": None}
    for s in (planned[0], old):
        store.path(s["key"]).mkdir(parents=True)
        (store.path(s["key"]) / "manifest.json").write_text(json.dumps({"label": s["label"], "seconds": 1,
                                                                          "key_scheme": 2}))
    run = tmp_path / "outputs" / "part"
    run.mkdir()
    results = {"spec": str(spec), "spec_hash": spec_hash(cells), "stages": [planned[0], old]}
    (run / "results.json").write_text(json.dumps(results))

    lines = status_lines(tmp_path / "outputs")
    assert next(ln for ln in lines if old["key"] in ln).split()[0] == "superseded"
    assert next(ln for ln in lines if planned[0]["key"] in ln).split()[0] == "done"
    assert any("1 of these stages are not in the spec's plan now: this subl keys them otherwise" in ln for ln in lines)
    assert lines[-1].startswith("1 done, 1 superseded")

    spec.write_text(SPEC.replace("12", "13"))  # the spec edited since: every recorded stage may be superseded
    text = "\n".join(status_lines(tmp_path / "outputs"))
    assert "the spec file (or a default) changed since the run" in text

    spec.write_text("name: [")
    text = "\n".join(status_lines(tmp_path / "outputs"))
    assert "the spec file does not plan now: " in text and text.count("superseded") == 0
