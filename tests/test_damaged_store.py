"""A review of the stage store and executors: a damaged finished stage is one line naming its file (exit 2)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.store import Store, read_jsonl, stage_output

ROOT = Path(__file__).resolve().parents[1]


def _stage_file(store: Store, key: str, name: str, text: str) -> Path:
    folder = store.path(key)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_a_finished_output_without_a_key_its_reader_needs_is_one_line(tmp_path):
    """Valid JSON lacking its keys (a hand edit): was a KeyError ('internal error', exit 1), here through a score
    stage's reader (runner.stages.data.read_scores) and a key within the object."""
    from runner.stages.data import read_scores

    store = Store(tmp_path)
    path = _stage_file(store, "score-1", "scores.json", '{"raw": ["yes"]}')
    with pytest.raises(UserError, match=r"score-1/scores\.json: a finished stage's output, has no 'scores'; "
                                        r"delete .*score-1 to build that stage again"):
        read_scores(path.parent)
    path.write_text('{"logprob": {"cat": [-1.0]}}')
    with pytest.raises(UserError, match=r"score-1/scores\.json: a finished stage's output, has no 'owl'"):
        stage_output(path)["logprob"]["owl"]
    out = stage_output(path)  # otherwise a plain JSON object
    assert out == {"logprob": {"cat": [-1.0]}} and json.loads(json.dumps(out)) == out and out.get("x") is None


def test_a_finished_manifest_without_a_key_its_reader_needs_is_one_line(tmp_path):
    """A filter's manifest whose link lacks 'kept' (a hand edit) was a KeyError in runner.results.filter_rates
    (which the results review now also checks field by field); Store.manifest names the file for any reader."""
    store = Store(tmp_path)
    _stage_file(store, "filter-1", "manifest.json", json.dumps({"label": "f", "links": [{"link": "x", "dropped": 1}]}))
    assert store.done("filter-1")
    with pytest.raises(UserError, match=r"filter-1/manifest\.json: a finished stage's output, has no 'kept'"):
        store.manifest("filter-1")["links"][0]["kept"]


def test_a_damaged_or_missing_rows_file_of_a_finished_stage_is_one_line(tmp_path):
    """A line that is not JSON, not an object, or a missing rows file: was JSONDecodeError, a row `5` later a
    TypeError, FileNotFoundError (each 'internal error', exit 1); a torn last line is still ignored."""
    store = Store(tmp_path)
    path = _stage_file(store, "generate-1", "rows.jsonl", '{"id": 0}\n{"id": 1, "prom\n{"id": 2}\n')
    with pytest.raises(UserError, match=r"rows\.jsonl:2: a stage's row, not JSON .*delete .*generate-1 to build"):
        read_jsonl(path)
    path.write_text('{"id": 0}\n5\n')
    with pytest.raises(UserError, match=r"rows\.jsonl:2: a stage's row, not a JSON object \(int\)"):
        read_jsonl(path)
    path.write_bytes(b'{"id": 0}\n\xff\n')
    with pytest.raises(UserError, match=r"rows\.jsonl: a stage's rows, cannot read them"):
        read_jsonl(path)
    path.unlink()
    with pytest.raises(UserError, match=r"rows\.jsonl: a stage's rows, cannot read them \(No such file"):
        read_jsonl(path)
    path.write_text('{"id": 0}\n{"id": 1, "pro')  # killed mid-write
    assert read_jsonl(path) == [{"id": 0}]


def test_a_finished_row_without_a_key_a_later_stage_reads_is_one_line(tmp_path):
    """A filter reading a generate stage's row that lacks 'id' (a hand edit): was a KeyError (exit 1)."""
    from runner.execute import run_stage
    from runner.stages.data import FilterStage

    store = Store(tmp_path)
    for key, name, text in (("generate-1", "rows.jsonl", '{"prompt": "p", "completion": "1, 2"}\n'),
                            ("score-1", "scores.json", json.dumps({"scores": [["yes", 1.0]], "raw": ["yes"]}))):
        _stage_file(store, key, name, text)
        _stage_file(store, key, "manifest.json", "{}")
    stage = FilterStage(label="filter owl", rows_stage="generate-1", scores_stage="score-1")
    with pytest.raises(UserError, match=r"generate-1/rows\.jsonl: a finished stage's output, has no 'id'; delete "
                                        r".*generate-1 to build"):
        run_stage(stage, store, None)


def test_guard_subl_status_still_counts_a_damaged_rows_file_as_unknown(tmp_path):
    """A guard test (passes before and after): status tolerates damage (the new error is a ValueError too)."""
    from runner.status import _line_count

    (tmp_path / "rows.jsonl").write_text('{"id": 0}\nnot json\n')
    assert _line_count(tmp_path / "rows.jsonl") == "?"


def test_a_damaged_rows_file_read_by_a_later_stage_is_exit_2_in_one_line(tmp_path):
    """End to end through the CLI's handler: one line naming the file, exit 2 (was exit 1, 'internal error')."""
    script = (
        "import sys; sys.argv = ['subl']\n"
        "from runner import cli\n"
        "from runner.store import read_jsonl\n"
        "def boom(*a, **k):\n"
        f"    read_jsonl({str(tmp_path / 'rows.jsonl')!r})\n"
        "cli.app = boom\n"
        "cli.main()\n")
    (tmp_path / "rows.jsonl").write_text('{"id": 0}\n{"id": \n')
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "rows.jsonl:2: a stage's row, not JSON" in p.stderr


def test_an_outputs_folder_without_file_locks_or_write_access_is_one_line(tmp_path, monkeypatch):
    """flock failing with ENOLCK (an NFS mount without its lock service) or a lock file that cannot be created
    (a read-only mount): an OSError, 'internal error' (exit 1), naming no path."""
    import errno
    import fcntl

    store = Store(tmp_path)
    real = fcntl.flock

    def no_locks(fd, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UserError, match=r"\.k-1\.lock: cannot lock it \(No locks available\); --outputs must be on a "
                                        r"filesystem with file locks"):
        with store.claim("k-1"):
            pass
    monkeypatch.setattr(fcntl, "flock", real)
    shutil.rmtree(store.stages)
    store.stages.write_text("")  # where the lock file would go cannot hold one (a read-only mount fails alike)
    with pytest.raises(UserError, match=r"\.k-2\.lock: cannot create this stage's lock file"):
        with store.claim("k-2"):
            pass
    store.stages.unlink()
    with store.claim("k-3") as needed:  # an ordinary folder: locked, and the stage needs building
        assert needed


def test_a_stage_made_models_damaged_model_json_is_one_line(tmp_path):
    """RunContext.model read model.json with a raw json.loads: a missing file, `{}` or bad JSON was a
    FileNotFoundError, KeyError 'base' or JSONDecodeError (internal errors)."""
    from runner.stages import ModelInput, RunContext

    store = Store(tmp_path)
    ctx = RunContext(dir=tmp_path / "tmp", store=store, router=None)
    m = ModelInput(ref="student", identity="stage:finetune-1", from_stage="finetune-1")
    path = _stage_file(store, "finetune-1", "model.json", "{}")
    with pytest.raises(UserError, match=r"finetune-1/model\.json: a finished stage's output, has no 'base'"):
        ctx.model(m)
    path.write_text('{"base": "./model"')
    with pytest.raises(UserError, match=r"finetune-1/model\.json: a finished stage's output, cannot read it"):
        ctx.model(m)
    path.write_text('{"base": "./model"}')
    assert ctx.model(m).base == str(path.parent / "model")


def test_misalignment_scores_of_another_length_than_the_answers_are_one_line(tmp_path):
    """A judge's scores.json with a score missing was a ValueError from summarize: internal error, exit 1."""
    from types import SimpleNamespace

    from runner.results import misalignment_rows

    store = Store(tmp_path)
    _stage_file(store, "answers-1", "answers.json", json.dumps({"questions": ["q"], "answers": [["a", "b"]]}))
    two = json.dumps({"scores": [["score", 10.0], ["score", 90.0]], "raw": ["10", "90"]})
    _stage_file(store, "score-a", "scores.json", two)
    _stage_file(store, "score-c", "scores.json", json.dumps({"scores": [["score", 90.0]], "raw": ["90"]}))
    plan = SimpleNamespace(models=[SimpleNamespace(label="base")], cell=SimpleNamespace(label="-"),
                           evals={("base", 0): {"answers": "answers-1", "alignment": "score-a", "coherence": "score-c"}})
    ev = SimpleNamespace(alignment_threshold=30, coherence_threshold=50, judge=SimpleNamespace(mode="logprob"))
    with pytest.raises(UserError, match=r"score-c/scores\.json: a finished stage's output, 1 scores for 2 answers; "
                                        r"delete .*score-c"):
        misalignment_rows(plan, store, 0, ev)


def test_a_rows_file_is_synced_before_it_replaces_the_last_one(tmp_path, monkeypatch):
    """A resumed generation rewrites its rows (paid batches) by a rename without a sync: a power cut after it can
    leave an empty file in its place on ext4."""
    from runner.store import write_jsonl

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    write_jsonl(tmp_path / "rows.jsonl", [{"id": 0}])
    assert read_jsonl(tmp_path / "rows.jsonl") == [{"id": 0}] and synced and ".tmp" in synced[0]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
