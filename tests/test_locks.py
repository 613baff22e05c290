"""A stage is built by one process at a time; a dead holder releases its lock; a stage whose
folder does not hold what it was asked for is never committed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runner.errors import UserError
from runner.execute import run_stage
from runner.stages.data import GenerateStage
from runner.store import Store
from tests.test_pipeline import TINY


def test_a_dead_holder_does_not_keep_the_lock(tmp_path):
    store = Store(tmp_path)
    store.stages.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"), str(store.lock_path("k-1"))], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    waits = []
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t = time.time()
    with store.claim("k-1", waits.append) as needed:
        assert needed
    assert time.time() - t < 5


def test_a_second_claim_waits_and_then_finds_the_stage_done(tmp_path):
    store = Store(tmp_path)
    store.stages.mkdir(parents=True)
    script = ("import sys, time; sys.path.insert(0, sys.argv[2]); from runner.store import Store; "
              "s = Store(sys.argv[1]);\nwith s.claim('k-1') as n:\n    print('held', flush=True); time.sleep(2)\n"
              "    with s.build('k-1', {}) as b: pass\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), os.getcwd()], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    waits = []
    with store.claim("k-1", waits.append) as needed:
        assert not needed  # built by the other process meanwhile
    assert waits and "waiting for another run" in waits[0]
    holder.wait()


class _Stub:
    def generate(self, model, prompts, sampling):
        return ["1, 2"] * len(prompts)


def test_a_generate_stage_with_duplicate_rows_is_not_committed(tiny_model, tmp_path, monkeypatch):
    from runner.stages import ModelInput
    from runner.spec import NumbersDomain

    stage = GenerateStage(label="generate owl", model=ModelInput(ref=tiny_model, identity="w"),
                          domain=NumbersDomain(n_prompts=4, batch_size=2), seed=0)
    store = Store(tmp_path)
    original = GenerateStage.run

    def twice(self, ctx):  # what two writers sharing one partial folder produced before locks
        original(self, ctx)
        rows = (ctx.dir / "rows.jsonl").read_text()
        (ctx.dir / "rows.jsonl").write_text(rows + rows)

    monkeypatch.setattr(GenerateStage, "run", twice)
    with pytest.raises(UserError, match="wrote 8 rows .4 distinct ids. for 4 prompts"):
        run_stage(stage, store, _Stub())
    assert not store.done(stage.key) and (store.partial(stage.key) / "error.txt").is_file()
    monkeypatch.setattr(GenerateStage, "run", original)
    assert run_stage(stage, store, _Stub()) is not None and store.done(stage.key)


@pytest.mark.slow
def test_two_runs_of_one_spec_on_one_outputs(tiny_model, tmp_path):
    """The same spec started twice, 2 s apart, on the same --outputs: both finish, every stage once."""
    spec = tmp_path / "twice.yaml"
    one_student = TINY.replace("  - {{name: s, objective: sft, method: full, hyperparameters: {{batch_size: 4}}}}\n", "")
    assert one_student != TINY
    spec.write_text(one_student.format(base=tiny_model, n=24).replace("targets: [panda, owl]", "targets: [owl]"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    for rows_file in (out / "stages").glob("generate-*/rows.jsonl"):
        ids = [json.loads(line)["id"] for line in rows_file.read_text().splitlines()]
        assert ids == list(range(24))
    assert "waiting for another run" in outs[0][0] + outs[1][0]
    assert not list((out / "stages").glob(".*.partial"))


def test_a_stage_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Every file and folder of a stage is fsynced before the rename that makes it a hit, the stages folder
    after it; a manifest a crash left empty is not taken as a hit (the stage is rebuilt)."""
    store, synced, renamed = Store(tmp_path), [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(len(synced)), real_replace(a, b)))
    with store.build("gen-1", {"label": "g"}) as b:
        (b.dir / "sub").mkdir()
        (b.dir / "sub" / "rows.jsonl").write_text("{}\n")
    tmp = str(store.partial("gen-1"))
    before = set(synced[:renamed[-1]])
    assert {f"{tmp}/sub/rows.jsonl", f"{tmp}/manifest.json", f"{tmp}/sub", tmp} <= before
    assert synced[renamed[-1]:] == [str(store.stages)] and store.done("gen-1")
    (store.path("gen-1") / "manifest.json").write_text("")  # written, renamed, never reached the disk
    assert not store.done("gen-1")


def test_the_run_files_are_replaced_whole(tmp_path, monkeypatch):
    from runner.files import write_text_atomic

    path = tmp_path / "results.json"
    write_text_atomic(path, json.dumps({"a": 1}))

    def full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", full)  # the new text never made it: the old file stays whole
    with pytest.raises(OSError):
        write_text_atomic(path, json.dumps({"a": 2}))
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_runs_into_two_outputs_folders_create_one_paid_object_in_turn(tmp_path):
    """The same training in two outputs folders (the same fingerprint, tagged alike on the service): the lock
    beside each store let both look up, find nothing and create at once. They now also meet in the user's cache."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = r"""
import sys, time
from pathlib import Path
from backends.paid_objects import one_at_a_time
from runner.core import enter_stage

out, log = Path(sys.argv[1]), Path(sys.argv[2])
folder = out / "stages" / ".train-k.partial"
folder.mkdir(parents=True)
enter_stage("train-k", folder)
with one_at_a_time("same-fingerprint"):
    with open(log, "a") as f:
        f.write("start\n")
    time.sleep(1.0)
    with open(log, "a") as f:
        f.write("end\n")
"""
    log, env = tmp_path / "log", {**os.environ, "SUBL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"out{i}"), str(log)], env=env, cwd=root)
             for i in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert log.read_text().split() == ["start", "end", "start", "end"]
