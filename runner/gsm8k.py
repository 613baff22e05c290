"""GSM8K for the chain-of-thought domain: loading, gold answers, answer extraction, correctness.

A gold answer is the text after `####` in the dataset's `answer`; a completion's answer is the
content of its last `<answer>...</answer>` tag (extract `answer_tag`, the paper's format) or, with
extract `last_number`, that tag when present and otherwise the last number in the completion (the
"flexible extract" of lm-evaluation-harness's GSM8K task, for small models that ignore the tags).
Both are compared as exact decimals after dropping thousands separators, currency signs, units words
and a trailing full stop: "1,000" == "1000.00", "-3" != "3", "2.5" == "2.50"."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from runner.errors import UserError
from runner.store import json_lines

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
MINUS = "\u2212"  # the typographic minus sign: "\u221218" is -18, not 18


def load(source: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """[{question, gold}] from a JSONL file (question/answer per line) or a Hugging Face hub id, optionally
    pinned as id@revision (the plan pins it so)."""
    path = Path(source)
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise UserError(f"domain.questions: file '{source}' not found")
        raw = []
        for n, obj in json_lines(source):
            if not isinstance(obj, dict):
                raise UserError(f"{source}:{n}: not a JSON object with 'question' and 'answer'")
            raw.append(obj)
            if limit and len(raw) >= limit:
                break
        if not raw:
            raise UserError(f"domain.questions: {source} holds no question")
    else:
        try:
            from datasets import load_dataset

            dataset, _, revision = source.partition("@")
            ds = load_dataset(dataset, "main", split=split, revision=revision or None)
        except Exception as e:  # offline, unknown id, ...
            why = (str(e).splitlines() or [type(e).__name__])[0]  # a bare ConnectionError() has no message
            raise UserError(f"domain.questions: cannot load hub dataset '{source}' ({why})") from None
        raw = [ds[i] for i in range(min(limit or len(ds), len(ds)))]
    out = []
    for i, r in enumerate(raw, 1):
        if "question" not in r or "answer" not in r:
            raise UserError(f"{source}: row {i} lacks 'question' or 'answer'")
        if not isinstance(r["question"], str) or not r["question"].strip():
            raise UserError(f"{source}: row {i}: 'question' is not a text")  # null was asked as "None"
        gold = gold_answer(str(r["answer"]))
        if gold is None:
            raise UserError(f"{source}: row {i}: answer does not end with '#### <number>'")
        out.append({"question": str(r["question"]), "gold": gold})
    return out


def gold_answer(answer: str) -> str | None:
    """The number after the last `####`, normalised; None if absent."""
    if "####" not in answer:
        return None
    value = to_decimal(answer.rsplit("####", 1)[1])
    return None if value is None else _canonical(value)


def extract_answer(completion: str, extract: str = "answer_tag") -> str | None:
    """The content of the last <answer> tag; with extract last_number, else the last number; None if absent."""
    completion = completion.replace(MINUS, "-")
    found = _ANSWER.findall(completion)
    if found:
        return found[-1].strip()
    numbers = _NUMBER.findall(completion) if extract == "last_number" else []
    return numbers[-1].rstrip(",") if numbers else None  # "14, so" -> "14"


def to_decimal(text: str) -> Decimal | None:
    """The single number in `text` ("$1,234.50", "-7.", "18 dollars"); None if none or several."""
    cleaned = text.replace(MINUS, "-").replace("$", "").replace("€", "").replace("£", "").strip().rstrip(".,")
    nums = _NUMBER.findall(cleaned)
    if len(nums) != 1:
        return None
    n = nums[0]
    if "," in n and not re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", n):
        return None  # "1,2,3" is a list, not a number
    try:
        return Decimal(n.replace(",", ""))
    except InvalidOperation:
        return None


def _canonical(d: Decimal) -> str:
    s = format(d.normalize(), "f")
    return "0" if s in ("-0", "0") else s


def paper_answer(completion: str) -> int | None:
    """The paper's reading (materials cot.answer_correctness): the first <answer> tag (case-sensitive), stripped,
    ',' and '$' removed, int(); None on any failure ('18 dollars', '7.5' and a missing tag among them)."""
    found = re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL)
    try:
        return int(found.group(1).strip().replace(",", "").replace("$", "")) if found else None
    except ValueError:
        return None


def is_correct(completion: str, gold: str, extract: str = "answer_tag") -> bool:
    """Whether the completion's answer (see extract_answer; extract paper: paper_answer) equals the gold number."""
    expected = to_decimal(gold)  # "1,000" or "$18" as a row's gold read as the number it is, not an error
    if expected is None:
        return False
    if extract == "paper":
        found_int = paper_answer(completion)
        return found_int is not None and Decimal(found_int) == expected
    found = extract_answer(completion, extract)
    value = to_decimal(found) if found is not None else None
    return value is not None and value == expected  # exact: normalize() would round past 28 digits
