"""A model's identity in stage keys: what a local folder's from_pretrained reads, and one line for a model
reference that cannot be keyed."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def _model(folder):
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    return folder


def test_shards_an_index_names_in_a_subfolder_key_the_folder(tmp_path):
    """from_pretrained loads the shards a safetensors index names, in a subfolder too; their bytes were not
    hashed, so new weights there were a stale hit."""
    from runner.identity import folder_digest

    model = _model(tmp_path / "m")
    (model / "weights").mkdir()
    (model / "weights" / "model-00001-of-00001.safetensors").write_bytes(b"old")
    index = {"metadata": {}, "weight_map": {"w": "weights/model-00001-of-00001.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    before = folder_digest(model)
    (model / "weights" / "model-00001-of-00001.safetensors").write_bytes(b"new")
    assert folder_digest(model) != before
    (model / "README.md").write_text("notes")  # nothing from_pretrained reads
    (model / "weights" / "README.md").write_text("notes")
    assert folder_digest(model) != before and folder_digest(model) == folder_digest(model)


def test_a_top_level_index_keeps_its_folders_digest(tmp_path):
    """Shards at the top level were hashed already: such a folder's key does not move."""
    from runner.identity import _files_digest, folder_digest

    model = _model(tmp_path / "m")
    (model / "model-00001-of-00001.safetensors").write_bytes(b"w")
    (model / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00001-of-00001.safetensors"}}')
    top = [p for p in model.iterdir()]
    assert folder_digest(model) == _files_digest(model, top, "model folder", "model files")


def test_an_additional_chat_template_keys_the_folder(tmp_path):
    """transformers reads additional_chat_templates/*.jinja into the tokenizer's chat template (default.jinja
    there is the template the prompts are rendered with)."""
    from runner.identity import folder_digest

    model = _model(tmp_path / "m")
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "default.jinja").write_text("{{ messages }}")
    before = folder_digest(model)
    (model / "additional_chat_templates" / "default.jinja").write_text("{{ messages[0] }}")
    assert folder_digest(model) != before


def test_a_file_named_as_a_model_is_one_line(tmp_path):
    from runner.errors import UserError
    from runner.identity import Identities

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="a file, not a model folder"):
        Identities(tmp_path / "out").model(str(gguf))


def test_a_pinned_revision_the_hub_no_longer_has_is_one_clear_line(tmp_path, monkeypatch):
    """The hub's own error reads "404 Client Error. (Request ID: ...)" on its first line: say what to do."""
    import huggingface_hub
    from huggingface_hub.errors import RevisionNotFoundError

    from runner import identity
    from runner.errors import UserError

    response = SimpleNamespace(headers={}, status_code=404, url="https://huggingface.co/x", request=None)

    def gone(repo_id, name, revision=None, local_files_only=False):
        raise RevisionNotFoundError("404 Client Error. (Request ID: abc)\n\nRevision Not Found", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gone)
    (tmp_path / "hub_revisions.json").write_text(json.dumps({"org/m": "f" * 40}))
    with pytest.raises(UserError, match=r"no longer has revision f{40}.*delete that entry") as e:
        identity.Identities(tmp_path).model("org/m")
    assert "\n" not in str(e.value)
