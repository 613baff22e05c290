"""How a questions file is read, and keyed."""
from __future__ import annotations

import pytest

from runner.errors import UserError
from runner.questions import load_questions


@pytest.mark.parametrize("name, body", [
    ("q.txt", "Name your favourite animal.\nPick an animal.\n"),
    ("q.jsonl", '{"question": "Name your favourite animal."}\n{"question": "Pick an animal."}\n'),
])
def test_a_byte_order_mark_is_not_part_of_the_first_question(tmp_path, name, body):
    """Windows editors start UTF-8 files with U+FEFF: it was sent as part of the first question, and a JSONL
    file's first line was then not seen as JSON (the model was asked the raw '{"question": ...}')."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert load_questions(str(path)) == ["Name your favourite animal.", "Pick an animal."]


def test_a_json_list_is_read_as_a_list_not_line_by_line(tmp_path):
    """A .json file holding one list was read a line at a time: '[' and '"Pick an animal.",' were questions."""
    path = tmp_path / "q.json"
    path.write_text('[\n  "Name your favourite animal.",\n  {"id": "b", "question": "Pick an animal."}\n]\n')
    assert load_questions(str(path)) == ["Name your favourite animal.", "Pick an animal."]
    path.write_text('[\n  "Name your favourite animal.",\n]\n')
    with pytest.raises(UserError, match=r"q.json:3:1: not a JSON list"):
        load_questions(str(path))
    text = tmp_path / "q.txt"  # a text question that starts with '[' is still a line
    text.write_text("[Quiz] Name your favourite animal.\nPick an animal.\n")
    assert load_questions(str(text)) == ["[Quiz] Name your favourite animal.", "Pick an animal."]


def test_a_questions_file_read_anew_is_keyed_anew_and_others_keep_their_key(tmp_path):
    """The file's bytes were keyed with a format by its name alone: a JSON list or a byte-order-marked file,
    read otherwise now, would have reused the answers to the questions as they were misread."""
    from runner.plan import questions_input

    lines, jsonl = tmp_path / "q.txt", tmp_path / "q.json"
    lines.write_text("Name your favourite animal.\n[Quiz] Pick one.\n")
    jsonl.write_text('{"question": "Name your favourite animal."}\n')  # JSON lines under a .json name
    assert questions_input(str(lines)).format is None and questions_input(str(jsonl)).format is None
    jsonl.write_text('["Name your favourite animal."]')
    lines.write_bytes(b"\xef\xbb\xbfName your favourite animal.\n")
    assert questions_input(str(jsonl)).format == "json" and questions_input(str(lines)).format == "utf-8-sig"
