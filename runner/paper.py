"""The paper's materials (Cloud et al., 2025), verbatim from the authors' code: specs/data/paper/materials.yaml.

One cached loader and a few accessors; code and spec defaults read paper texts from here rather than
keeping copies. The file's provenance is in specs/data/paper/README.md."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

MATERIALS_PATH = Path(__file__).resolve().parents[1] / "specs" / "data" / "paper" / "materials.yaml"


@lru_cache(maxsize=1)
def materials() -> dict:
    """The whole file as a dict (read once)."""
    return yaml.load(MATERIALS_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def get(dotted: str):
    """A value by dotted path, e.g. get('cot.alignment_filter.threshold')."""
    node = materials()
    for part in dotted.split("."):
        node = node[part]
    return node


def source(dotted: str) -> str:
    """Where a value comes from: its sibling `<key>_source`, else the `source:` of the nearest entry
    on the path that has one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        node = get(".".join(parts[:i]))
        if i < len(parts) and isinstance(node, dict) and f"{parts[i]}_source" in node:
            return node[f"{parts[i]}_source"]
        if isinstance(node, dict) and "source" in node:
            return node["source"]
    return ""


def templates() -> dict[str, list[str]]:
    """The number-prompt template lists by name (example_numbers_templates, count_qualifiers, ...)."""
    return {k: v["items"] for k, v in get("number_prompts.templates").items()}


def banned_numbers() -> list[int]:
    """The misalignment-numbers filter's banned list: the union of the paper's two lists, sorted."""
    return sorted(set(get("banned_numbers.CLAUDE_EVIL_NUMBERS.values")) | set(get("banned_numbers.GPT_EVIL_NUMBERS.values")))
