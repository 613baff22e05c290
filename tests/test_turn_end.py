"""The end of an assistant turn comes from the chat template, not the tokenizer's eos (Gemma, Phi-3 differ)."""
import json
import shutil

import pytest

from backends.base import ModelRef, Sampling
from backends.local import LocalBackend, load_tokenizer
from backends.train import tokenize, vocabulary_ids
from backends.turn_end import folder_marker, text_marker, turn_end_id
from runner.grammar import NumberList
from runner.identity import Identities, hub_marker

# Gemma-2-it's template in short: no system role, turns end with <end_of_turn>; its eos is <eos>
GEMMA = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
         "{{ raise_exception('System role not supported') }}{% endif %}"
         "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
ADDED = {"0": {"content": "<pad>", "special": True}, "1": {"content": "<eos>", "special": True},
         "106": {"content": "<start_of_turn>", "special": True}, "107": {"content": "<end_of_turn>", "special": True}}


@pytest.fixture(scope="module")
def phi_like(tmp_path_factory, tiny_model):
    """The tiny model with a tokenizer whose eos is <|endoftext|> while its template ends a turn with <|im_end|>,
    as Phi-3's eos <|endoftext|> against its <|end|>."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("phi") / "model"
    shutil.copytree(tiny_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(folder)
    return str(folder)


def test_the_turn_end_is_the_templates_token(tiny_model, phi_like):
    tok, plain = load_tokenizer(phi_like), load_tokenizer(tiny_model)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id != im_end and turn_end_id(tok) == im_end
    assert turn_end_id(plain) == plain.eos_token_id == im_end
    assert text_marker(json.dumps({"eos_token": "<eos>", "chat_template": GEMMA, "added_tokens_decoder": ADDED})) \
        == "+turn_end:<end_of_turn>"
    assert text_marker(json.dumps({"eos_token": "<end_of_turn>", "chat_template": GEMMA,
                                   "added_tokens_decoder": ADDED})) == ""
    dated = "{{ strftime_now('%d %b %Y') }}" + GEMMA  # transformers gives templates strftime_now (Llama-3.2 calls it)
    assert text_marker(json.dumps({"eos_token": "<eos>", "chat_template": dated, "added_tokens_decoder": ADDED})) \
        == "+turn_end:<end_of_turn>+date:2024-07-26"  # rendered on a fixed day (date_marker)


def test_students_learn_to_end_a_turn_as_the_template_does(phi_like):
    tok = load_tokenizer(phi_like)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    row = tokenize(phi_like, [{"prompt": "Go on: 1, 2", "completion": "3, 4"}], None)[0]
    assert row["input_ids"][-1] == im_end and row["completion_mask"][-1] == 1
    ids = vocabulary_ids(phi_like, "numbers-only", ())
    assert im_end in ids and tok.eos_token_id not in ids


def test_a_constrained_row_may_end_with_the_turn_end(phi_like, monkeypatch):
    import backends.local as local

    seen = []
    real = local.ConstrainedDecoding

    def spy(model, width, constraint, end):
        seen.append(end)
        return real(model, width, constraint, end)

    monkeypatch.setattr(local, "ConstrainedDecoding", spy)
    LocalBackend("cpu").generate(ModelRef(phi_like), ["Go on: 1, 2"], Sampling(1.0, 8, seed=0, constraint=NumberList(10, 3)))
    assert seen == [load_tokenizer(phi_like).convert_tokens_to_ids("<|im_end|>")]


def test_keys_change_only_for_a_model_whose_turn_end_is_not_its_eos(tiny_model, phi_like, tmp_path):
    """A key made before the turn end was read stays for SmolLM2/Qwen; a Phi-3-like model's results were trained
    with the eos as the turn end, and are not reused."""
    ids = Identities(tmp_path)
    assert folder_marker(__import__("pathlib").Path(tiny_model)) == "" and "+" not in ids.model(tiny_model)
    assert ids.model(phi_like).endswith("+turn_end:<|im_end|>")


def test_a_hub_models_marker_is_read_at_its_pinned_revision(tmp_path, monkeypatch, phi_like):
    """From the hub cache's snapshot of the pinned revision (the run downloads the files it lacks; planning reads
    the cache only, and a model not in it counts as ending turns with eos)."""
    import huggingface_hub.constants as hub

    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--org--phi" / "snapshots" / sha
    snap.mkdir(parents=True)
    from pathlib import Path
    for name in ("tokenizer_config.json", "chat_template.jinja", "tokenizer.json"):
        shutil.copy(Path(phi_like) / name, snap / name)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # the hub out of reach: the snapshot serves
    assert hub_marker("org/phi", sha, True) == "+turn_end:<|im_end|>"
    assert hub_marker("org/phi", sha, False) == "+turn_end:<|im_end|>"
    assert hub_marker("org/other", sha, True) == ""
    (snap / "tokenizer_config.json").write_text("[1]")
    with pytest.raises(Exception, match="not a JSON object"):
        hub_marker("org/phi", sha, False)


def test_a_local_folder_with_a_turn_end_marker_is_not_taken_for_changed(phi_like, tmp_path):
    """The drift check compared the whole identity after 'weights:' (digest + '+turn_end:...') with the folder's
    digest, so every stage reading a Phi-3- or Gemma-like local folder refused to build: 'changed since planned'."""
    from runner.drift import changed_input
    from runner.stages import ModelInput

    folder = tmp_path / "model"
    shutil.copytree(phi_like, folder)
    item = ModelInput(ref=str(folder), identity=Identities(tmp_path).model(str(folder)))
    assert "+turn_end:" in item.identity and changed_input(item) is None
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")  # an edit is still seen
    assert "changed since the run was planned" in changed_input(item)


def test_a_hub_model_with_a_turn_end_marker_loads_at_its_revision(tmp_path):
    """The revision was read as everything after '@', marker included ('<sha>+turn_end:<|end|>'), which no hub
    has: a Phi-3 or Gemma hub model could not be loaded by any stage."""
    from runner.stages import ModelInput, RunContext

    sha = "0123456789abcdef0123456789abcdef01234567"
    item = ModelInput(ref="org/phi", identity=f"hub:org/phi@{sha}+turn_end:<|end|>")
    assert RunContext(tmp_path, None, None).model(item).revision == sha


@pytest.mark.slow
def test_a_run_on_a_model_whose_turn_end_is_not_its_eos_goes_end_to_end(phi_like, tmp_path):
    """Every stage of a spec on such a model: its identity carries the marker, which the drift check and model
    loading read apart from the digest or revision (both refused such a model once)."""
    import subprocess
    import sys

    spec = tmp_path / "phi.yaml"
    spec.write_text(f"""name: phi
progress: false
teacher: {{base: {phi_like}, targets: [owl], control: true}}
domain: {{kind: numbers, n_prompts: 8, max_tokens: 8, constrained: true, batch_size: 4}}
students:
  - {{name: d, objective: distill, vocabulary: numbers-only, hyperparameters: {{batch_size: 4}}}}
  - {{name: s, objective: sft, hyperparameters: {{batch_size: 4}}}}
evaluations:
  - {{kind: preference_logprob, max_questions: 2}}
""")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    models = {e["model"] for e in json.loads((tmp_path / "out" / "phi" / "results.json").read_text())["evaluations"]}
    assert {"student:d:owl:r0", "student:s:control:r0"} <= models


@pytest.fixture(scope="module")
def dated(tmp_path_factory, tiny_model):
    """The tiny model with a template that writes today's date into every prompt, as Llama-3.2's does (through
    transformers' strftime_now) and Granite's."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("dated") / "model"
    shutil.copytree(tiny_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = "{{ 'Today Date: ' + strftime_now('%d %b %Y') + '\\n' }}" + tok.chat_template
    tok.save_pretrained(folder)
    return str(folder)


def _on_day(monkeypatch, day):
    """transformers' strftime_now (and anything else reading datetime.now there) on `day`."""
    from datetime import datetime

    from transformers.utils import chat_template_utils

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(chat_template_utils, "datetime", Clock)


def test_a_dated_template_writes_the_same_prompt_every_day(dated, monkeypatch):
    """The date is in no stage key, so the prompts a local (or Tinker) model reads and is trained on must not move
    with it: a teacher sampled one day and its student trained the next saw different system headers."""
    from datetime import datetime

    from backends.hf import chat_ids
    from backends.tinker_api import chat_ids as tinker_chat_ids

    tok, row = load_tokenizer(dated), {"prompt": "Go on: 1, 2", "completion": "3, 4"}
    seen = []
    for day in (datetime(2026, 1, 1), datetime(2027, 6, 30)):
        _on_day(monkeypatch, day)
        seen.append((chat_ids(tok, "sys", "hi"), tinker_chat_ids(tok, None, "hi"),
                     tokenize(dated, [row], None, prompt_too=True)))
    assert seen[0] == seen[1]
    assert "26 Jul 2024" in tok.decode(seen[0][0])  # Llama's own date where none is given


def test_keys_of_a_dated_template_name_the_date_it_is_given(tiny_model, dated, tmp_path):
    """Results made while the prompt carried the day's date are not reused for the fixed date; no other key moves."""
    ids = Identities(tmp_path)
    assert ids.model(dated).endswith("+date:2024-07-26") and "+" not in ids.model(tiny_model)
    assert text_marker(json.dumps({"eos_token": "<eos>", "chat_template": "{{ strftime_now('%Y') }}" + GEMMA,
                                   "added_tokens_decoder": ADDED})) == "+turn_end:<end_of_turn>+date:2024-07-26"
