"""OpenAI model aliases that may move to another snapshot are named in a warning by `subl plan` and `subl run`."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.aliases import OPENAI, moving_alias
from runner.runs import plan_lines
from tests.conftest import shared

ROOT = Path(__file__).resolve().parents[1]
PAPER = ["animals_numbers", "misalignment_cot", "cross_model", "animals_code"]


@pytest.mark.parametrize("identity, alias", [
    (OPENAI + "gpt-4.1-nano", "gpt-4.1-nano"),
    (OPENAI + "gpt-4o", "gpt-4o"),
    (OPENAI + "gpt-4.1-nano-2025-04-14", None),
    (OPENAI + "gpt-4-0613", None),
    (OPENAI + "ft:gpt-4.1-nano-2025-04-14:org::abc123", None),
    ("hosted:openai@http://127.0.0.1:8000/v1:Qwen/Qwen2.5-7B-Instruct", None),  # another server's names
    ("hub:HuggingFaceTB/SmolLM2-135M-Instruct@0123abcd", None),
])
def test_only_openais_undated_names_are_moving_aliases(identity, alias):
    assert moving_alias(identity) == alias


def test_plan_warns_once_per_alias_and_not_for_the_paper_specs(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spec = tmp_path / "alias.yaml"
    spec.write_text(f"extends: {ROOT / 'specs' / 'animals_numbers.yaml'}\nname: alias\n"
                    "teacher: {base: 'openai:gpt-4.1-nano'}\n")
    warned = [ln for ln in plan_lines(spec, tmp_path / "out") if ln.startswith("warning:")]
    assert len(warned) == 1 and "openai:gpt-4.1-nano is an alias" in warned[0]
    shared("gsm8k", "train.jsonl")  # misalignment_cot reads it (skipped without ../shared/data)
    for name in PAPER:  # every model of a paper spec is a dated snapshot
        assert not any(ln.startswith("warning:") for ln in plan_lines(ROOT / "specs" / f"{name}.yaml", tmp_path / "o"))
