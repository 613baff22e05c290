import json

from runner.loader import load
from runner.pipeline import build_plan
from runner.store import Stage, Store, stage_key

SPEC = """name: {name}
notes: {notes}
progress: {progress}
teacher: {{targets: [owl, panda]}}
domain: {{kind: numbers, n_prompts: 10}}
students:
  - {{name: s, hyperparameters: {{lr: {lr}}}}}
"""


def _keys(write, **kw) -> dict[str, str]:
    args = {"name": "a", "notes": "x", "progress": "true", "lr": 0.001, **kw}
    spec = load(write("s.yaml", SPEC.format(**args)))[0].spec
    plan = build_plan(spec, Store(write("x", "").parent / "out"), backend=None)
    return {n.stage.label: n.stage.key for n in plan.nodes}


def test_display_fields_do_not_change_any_key(write):
    base = _keys(write)
    assert _keys(write, name="b", notes="other words", progress="false") == base


def test_semantic_change_invalidates_only_downstream(write):
    base, changed = _keys(write), _keys(write, lr=0.002)
    same = {k for k in base if base[k] == changed[k]}
    assert all(k.startswith(("teacher", "generate", "filter")) or k.startswith("evaluate base") or
               k.startswith("evaluate teacher") for k in same)
    assert {k for k in base if k.startswith("finetune")} <= set(base) - same
    assert any(k.startswith("evaluate student") for k in set(base) - same)


def test_key_covers_config_upstream_and_version():
    k = stage_key("x", {"a": 1}, ["u"], 1)
    assert k != stage_key("x", {"a": 2}, ["u"], 1)
    assert k != stage_key("x", {"a": 1}, ["v"], 1)
    assert k != stage_key("x", {"a": 1}, ["u"], 2)
    assert k == stage_key("x", {"a": 1}, ["u"], 1)


def test_build_is_atomic_and_records_a_manifest(tmp_path):
    store = Store(tmp_path)
    stage = Stage("k-1", "label", {"a": 1})
    try:
        with store.build(stage) as b:
            (b.dir / "half.txt").write_text("x")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert not store.done("k-1") and (store.partial("k-1") / "error.txt").is_file()
    with store.build(stage, {"seed": 3}) as b:
        b.rows["n"] = 5
    m = json.loads((store.path("k-1") / "manifest.json").read_text())
    assert m["config"] == {"a": 1} and m["seeds"] == {"seed": 3} and m["rows"] == {"n": 5}
    assert "torch" in m["packages"] and "seconds" in m and "git_revision" in m
    assert not store.partial("k-1").exists()
