"""Question sets for preference evaluations: the paper's built-in sets by name, or a file."""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import UserError
from runner.store import text_lines, user_text

# Built-in sets: the paper's lists, by name -> their place in the materials.
BUILTIN = {"animals": "preference_eval.animal_questions", "trees": "preference_eval.tree_questions",
           "animals_numbers_prefix": "preference_eval.numbers_prefixed_variant",
           "storytelling": "preference_eval.storytelling_variant",
           "misalignment": "misalignment_eval.questions"}


def questions_digest(name: str) -> str:
    """sha256 of a built-in set's text (so an edit to it reruns what read it)."""
    from runner.identity import text_sha256

    return text_sha256("\n".join(load_questions(name)))


def file_format(name: str) -> str | None:
    """How a questions file is read (keyed with its bytes, so a file read anew is asked anew): "yaml" (a list)
    by its name; "json" for text that is one JSON list; "utf-8-sig" for lines after a byte-order mark (once
    part of the first question); "newlines" for lines that str.splitlines, as used before 2026-12-02, split
    otherwise (at U+2028, U+0085, form feeds); else None (line by line)."""
    if _is_yaml(name):
        return "yaml"
    path = Path(name)
    if not path.is_file():
        return None
    text = user_text(path)
    if _json_list(name, text.removeprefix("\ufeff")) is not None:
        return "json"
    if text.startswith("\ufeff"):
        return "utf-8-sig"
    return "newlines" if _split_otherwise(name, text) else None


def _split_otherwise(name: str, text: str) -> bool:
    """Whether split at newlines only, the file gives other questions than split as str.splitlines split it
    (stages built from those under the same key are not reused); a file that was an error then keeps its key."""
    def read(lines: list[str]) -> list[str]:
        return [_question_line(name, n, x.strip()) for n, x in enumerate(lines, 1) if x.strip()]

    try:
        before = read(text.splitlines())
    except UserError:  # a JSON line split apart: no stage was built from it
        return False
    return before != read(text_lines(text))


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def load_questions(name: str, limit: int | None = None) -> list[str]:
    """A built-in set by name, or a file: YAML or one JSON list (of {id, question} or strings), one
    question per line, or JSONL with `question`."""
    name = name.removeprefix("builtin:")
    if name in BUILTIN:
        from runner import paper

        qs = paper.get(BUILTIN[name] + ".items")
    elif _is_yaml(name):
        qs = _yaml_questions(name)
    else:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"questions: '{name}' is neither a built-in set ({', '.join(BUILTIN)}) nor a file")
        text = user_text(path).removeprefix("\ufeff")  # a byte-order mark is not part of the first question
        qs = _json_list(name, text)
        if qs is None:
            qs = [_question_line(name, n, ln.strip()) for n, ln in enumerate(text_lines(text), 1) if ln.strip()]
    if not qs:
        raise UserError(f"questions: {name} holds no question")
    return list(qs[:limit] if limit else qs)


def _json_list(name: str, text: str) -> list[str] | None:
    """The questions of a file that is one JSON list (read as a YAML list is, not line by line); None where
    the text is not one (a text file whose first question starts with '[')."""
    if not text.lstrip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if name.endswith(".json"):
            raise UserError(f"{name}:{e.lineno}:{e.colno}: not a JSON list ({e.msg})") from None
        return None
    return _listed_questions(name, data)


def _question_line(name: str, n: int, line: str) -> str:
    """A text line is the question; a JSON line ({...}) holds it under `question`."""
    if not line.startswith("{"):
        return line
    try:
        q = json.loads(line).get("question")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{name}:{n}: invalid JSON line ({getattr(e, 'msg', e)})") from None
    if not isinstance(q, str) or not q.strip():
        raise UserError(f"{name}:{n}: a JSON line needs a \"question\" text")
    return q


def _yaml_questions(name: str) -> list[str]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(name)
    if not path.is_file():
        raise UserError(f"questions: file '{name}' not found")
    try:
        data = YAML(typ="safe").load(user_text(path))
    except YAMLError as e:
        raise UserError(f"{name}: not valid YAML ({str(e).splitlines()[0]})") from None
    return _listed_questions(name, data)


def _listed_questions(name: str, data) -> list[str]:
    """A list's questions: each a text or {question: text}."""
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a list of questions")
    out = []
    for i, q in enumerate(data):
        text = q.get("question") if isinstance(q, dict) else q
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{name}: item {i} has no 'question' text")
        out.append(text)
    return out
