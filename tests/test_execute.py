"""The local executor: stages run once their inputs are done; hosted stages wait on their provider
side by side, local ones run one at a time; a failure stops the run with its own error."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from runner.execute import execute
from runner.stages import FileInput, ModelInput, RunContext, Stage
from runner.store import Store

SPANS: dict[str, tuple[float, float]] = {}


class Wait(Stage):
    """A stand-in for a stage that waits on a provider (or, with a local model, on this machine)."""

    KIND: ClassVar[str] = "wait"
    model: ModelInput
    seconds: float
    after_stage: str | None = None
    fail: bool = False

    def run(self, ctx: RunContext) -> None:
        start = time.monotonic()
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError(f"{self.label} failed")
        SPANS[self.label] = (start, time.monotonic())
        (ctx.dir / "done").write_text(threading.current_thread().name)


HOSTED = ModelInput(ref="api:model", identity="hosted:api@http://x:model")
LOCAL = ModelInput(ref="local-model", identity="hub:local-model@0")  # a stand-in: hub models pin a revision


def test_hosted_stages_wait_side_by_side_and_local_ones_in_turn(tmp_path):
    SPANS.clear()
    hosted = [Wait(label=f"h{i}", model=HOSTED, seconds=0.6 + i / 1000) for i in range(6)]  # distinct keys
    local = [Wait(label=f"l{i}", model=LOCAL, seconds=0.3 + i / 1000) for i in range(2)]
    after = Wait(label="after", model=HOSTED, seconds=0.0, after_stage=hosted[0].key)
    t = time.monotonic()
    ran = execute(hosted + local + [after], Store(tmp_path), router=None, slots={"api": 3})
    wall = time.monotonic() - t
    assert set(ran) == {s.key for s in hosted + local + [after]}
    assert wall < 4 * 0.6  # the six hosted waits overlapped, three at a time
    spans = [SPANS[f"h{i}"] for i in range(6)]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) == 3  # as many as the backend's slots, no more
    l0, l1 = SPANS["l0"], SPANS["l1"]
    assert l0[1] <= l1[0] or l1[1] <= l0[0]  # local stages never overlap
    assert SPANS["after"][0] >= SPANS["h0"][1]  # a stage starts after the stage it reads
    assert execute(hosted + local + [after], Store(tmp_path), router=None) == {}  # all reused


def test_a_failed_hosted_stage_stops_the_run_with_its_error(tmp_path):
    stages = [Wait(label="ok", model=HOSTED, seconds=0.1), Wait(label="bad", model=HOSTED, seconds=0.1, fail=True)]
    with pytest.raises(RuntimeError, match="bad failed"):
        execute(stages, Store(tmp_path), router=None)
    store = Store(tmp_path)
    assert not store.done(stages[1].key) and (store.partial(stages[1].key) / "error.txt").is_file()


def test_stages_that_share_a_label_are_each_counted(tmp_path):
    twins = [Wait(label="evaluate base", model=LOCAL, seconds=0.01 * (i + 1)) for i in range(3)]  # as matrix cells
    ran = execute(twins, Store(tmp_path), router=None)
    assert sorted(ran) == sorted(s.key for s in twins) and len(ran) == 3


def test_a_model_trained_from_a_relative_local_base_loads_its_base_again(tmp_path, monkeypatch):
    """model.json's ./ names the stage folder, so a base given as ./mybase (read from where subl runs) is
    stored absolute; stored as given, the student's base became <stage>/mybase and could never load."""
    from runner.core import ModelRef
    from runner.stages.training import write_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mybase").mkdir()
    store = Store(tmp_path / "out")
    folder = store.path("finetune-abc")
    (folder / "adapter").mkdir(parents=True)
    write_model(folder, ModelRef("./mybase", str(folder / "adapter")))
    ref = RunContext(folder, store, None).model(ModelInput(ref="x", identity="stage:finetune-abc",
                                                           from_stage="finetune-abc"))
    assert ref.base == str(tmp_path / "mybase") and ref.adapter == str(folder / "adapter")


class ReadFile(Stage):
    """A stage that reads a pinned file (and can edit it while it runs, as a user might)."""

    KIND: ClassVar[str] = "readfile"
    source: FileInput
    model: ModelInput | None = None
    edit_while_running: bool = False

    def run(self, ctx: RunContext) -> None:
        (ctx.dir / "copy").write_text(Path(self.source.path).read_text())
        if self.edit_while_running:
            Path(self.source.path).write_text("edited while the stage ran\n")


def test_a_file_edited_after_the_plan_is_refused_not_stored_under_its_old_key(tmp_path):
    from runner.errors import UserError
    from runner.plan import file_input

    data = tmp_path / "prompts.txt"
    data.write_text("one\n")
    stage = ReadFile(label="read", source=file_input(str(data)))
    data.write_text("two\n")  # edited between plan and run
    store = Store(tmp_path / "out")
    with pytest.raises(UserError, match="prompts.txt: changed since the run was planned"):
        execute([stage], store, router=None)
    assert not store.done(stage.key)
    data.write_text("one\n")  # back as planned: it runs
    assert stage.key in execute([stage], store, router=None)
    assert (store.path(stage.key) / "copy").read_text() == "one\n"


def test_a_file_edited_while_its_stage_runs_is_not_renamed_into_place(tmp_path):
    from runner.errors import UserError
    from runner.plan import file_input

    data = tmp_path / "prompts.txt"
    data.write_text("one\n")
    stage = ReadFile(label="read", source=file_input(str(data)), edit_while_running=True)
    store = Store(tmp_path / "out")
    with pytest.raises(UserError, match="changed since the run was planned"):
        execute([stage], store, router=None)
    assert not store.done(stage.key)


def test_a_local_model_folder_retrained_after_the_plan_is_refused(tmp_path):
    from runner.errors import UserError
    from runner.identity import Identities
    from runner.plan import file_input

    base = tmp_path / "mybase"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights one")
    (tmp_path / "p.txt").write_text("x\n")
    model = ModelInput(ref=str(base), identity=Identities(tmp_path / "out").model(str(base)))
    stage = ReadFile(label="read", source=file_input(str(tmp_path / "p.txt")), model=model)
    (base / "model.safetensors").write_bytes(b"weights two")
    with pytest.raises(UserError, match="mybase: changed since the run was planned"):
        execute([stage], Store(tmp_path / "out"), router=None)


def test_a_file_rewritten_with_its_size_and_mtime_restored_is_hashed_again(tmp_path, monkeypatch):
    """The digest cache's stamp holds the inode change time: `cp -p` or `touch -r` cannot hide new contents."""
    import os

    from runner.identity import file_sha256

    monkeypatch.setenv("SUBL_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "rows.jsonl"
    f.write_text('{"a": 1}\n')
    before, st = file_sha256(f), f.stat()
    f.write_text('{"a": 2}\n')  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert file_sha256(f) != before
