"""A hub model pinned to a revision is trained, labelled and evaluated at that revision, not at whatever
the hub's main has moved to: the stage key names the pinned revision, so anything else would be a stale
hit. Checked offline on a hub cache built here with two revisions of a tiny model (main = the newer)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = "a" * 40, "b" * 40  # commit hashes of the two snapshots

# Run in a fresh process: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported.
SCRIPT = r"""
import json, sys, torch
from backends import Router
from backends.base import ModelRef, Training
from backends.hf import load_model
from backends.train import teacher_soft_labels

hub, old, out = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [{"prompt": f"Continue: {i}, {i + 1}.", "completion": f"{i + 2}, {i + 3}"} for i in range(8)]
router = Router("cpu")
full = router.finetune(ModelRef(hub, revision=old), rows, Training(method="full", lr=1e-12, epochs=1, batch_size=4),
                       out + "/full")
lora_training = Training(lr=1e-3, epochs=1, batch_size=4, lora_targets=("q_proj", "v_proj"))
lora = router.finetune(ModelRef(hub, revision=old), rows, lora_training, out + "/lora")
trained = load_model(full, "cpu").state_dict()
labels = teacher_soft_labels(ModelRef(hub, system="You love owls.", revision=old), rows[:2], None, "cpu")
torch.save({"weights": trained, "labels": labels}, out + "/got.pt")
print(json.dumps({"lora_revision": lora.revision, "lora_adapter": lora.adapter}))
"""


def _hub_cache(root: Path, old: Path, new: Path) -> Path:
    repo = root / "models--subl-test--tiny"
    for sha, src in ((OLD, old), (NEW, new)):
        shutil.copytree(src, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(NEW)
    return root


@pytest.mark.slow
def test_a_pinned_hub_model_is_trained_and_labelled_at_its_revision_not_main(tmp_path):
    from transformers import AutoModelForCausalLM

    from backends.base import ModelRef
    from backends.train import teacher_soft_labels

    old, new = build_tiny_model(tmp_path / "old", seed=0), build_tiny_model(tmp_path / "new", seed=1)
    env = {**os.environ, "HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub", old, new)), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, "subl-test/tiny", OLD, str(tmp_path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info, got = json.loads(r.stdout.strip().splitlines()[-1]), torch.load(tmp_path / "got.pt")
    want = AutoModelForCausalLM.from_pretrained(old).state_dict()
    other = AutoModelForCausalLM.from_pretrained(new).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    # a full fine-tune at lr 1e-12 saves its starting weights: the pinned revision's, not main's
    assert torch.allclose(got["weights"][name], want[name], atol=1e-6)
    assert not torch.allclose(got["weights"][name], other[name], atol=1e-2)
    # the adapter is recorded on the revision it was trained on, so evaluations load that base
    assert info["lora_revision"] == OLD and Path(info["lora_adapter"]).is_dir()
    # a pinned teacher labels with the pinned weights
    rows = [{"prompt": f"Continue: {i}, {i + 1}.", "completion": f"{i + 2}, {i + 3}"} for i in range(2)]
    for ours, theirs in zip(got["labels"], teacher_soft_labels(ModelRef(str(old), system="You love owls."), rows,
                                                                None, "cpu")):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_runs_recording_pins_at_once_keep_each_others(tmp_path, monkeypatch):
    """Two runs into one outputs folder pin hub ids at the same time: each read-modify-write of
    hub_revisions.json used to be able to drop the other's pins (a later run then re-pinned to the newest
    revision and redid everything downstream)."""
    import threading

    from runner import identity

    monkeypatch.setattr(identity, "_cached_revision", lambda repo, kind: f"sha-{repo}")
    monkeypatch.setattr(identity, "hub_marker", lambda repo, rev, provisional: "")  # a fake id: no tokenizer files
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind: None)
    ids = [f"org/model-{i}" for i in range(160)]

    def pin(chunk):
        for repo in chunk:
            identity.Identities(tmp_path).hub_revision(repo)

    threads = [threading.Thread(target=pin, args=(ids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = json.loads((tmp_path / "hub_revisions.json").read_text())
    assert recorded == {repo: f"sha-{repo}" for repo in ids}


def test_a_damaged_pin_file_is_one_line_not_every_pin_moved(tmp_path, monkeypatch):
    """A hand edit that leaves hub_revisions.json unreadable (a trailing comma) read as no pins: every hub id was
    pinned anew at main and the file rewritten without the others."""
    from runner import identity
    from runner.errors import UserError

    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": "NEW")
    pins = tmp_path / "hub_revisions.json"
    for text in ('{"org/a": "OLD_A", "org/b": "OLD_B",}', '["org/a"]', '{"org/a": 3}'):
        pins.write_text(text)
        with pytest.raises(UserError, match="hub_revisions.json: not"):
            identity.Identities(tmp_path).hub_revision("org/a")
        assert pins.read_text() == text
    pins.unlink()
    assert identity.Identities(tmp_path).hub_revision("org/a") == "NEW"


def test_a_fresh_pin_is_the_hubs_newest_revision_else_the_cached_one(tmp_path, monkeypatch):
    """Deleting a pin moves to the hub's newest revision (the README's way to update), not to whatever an old
    download left in the local cache; offline, the cached revision."""
    from runner import identity

    monkeypatch.setattr(identity, "_cached_revision", lambda repo, kind="model": "CACHED")
    monkeypatch.setattr(identity, "hub_marker", lambda repo, rev, provisional: "")  # a fake id: no tokenizer files
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": "NEWEST")
    assert identity.Identities(tmp_path / "a").hub_revision("org/m") == "NEWEST"
    monkeypatch.setattr(identity, "_remote_revision", lambda repo, kind="model": None)
    assert identity.Identities(tmp_path / "b").hub_revision("org/m") == "CACHED"


def test_a_model_folder_is_keyed_by_what_from_pretrained_reads(tmp_path):
    """A checkpoint-N/ subfolder or a trainer's records beside the weights left the model what it was, but
    re-keyed (and reran) every stage that used it; its config or weights do re-key it."""
    from runner.errors import UserError
    from runner.identity import Identities, folder_digest

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(b"weights")
    before = folder_digest(model)
    (model / "checkpoint-500").mkdir()
    (model / "checkpoint-500" / "trainer_state.json").write_text("{}")
    (model / "trainer_state.json").write_text("{}")
    (model / "training_args.bin").write_bytes(b"args")
    assert folder_digest(model) == before
    (model / "config.json").write_text('{"a": 2}')
    assert folder_digest(model) != before
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/base"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"delta")
    with pytest.raises(UserError, match="PEFT adapter folder"):
        Identities(tmp_path / "out").model(str(adapter))
