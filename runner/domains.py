"""The prompts of each data domain, as rows: {"prompt": user message, ...what the filters need}."""
from __future__ import annotations

from pathlib import Path

from runner.errors import UserError
from runner.store import json_lines


def domain_rows(domain, seed: int) -> list[dict]:
    """Every prompt the generate stage sends, in order (one completion each).

    numbers: n_prompts generated prompts. cot: each GSM8K question + suffix, k times, with its gold
    answer. code: each task of the JSONL put into the template, samples_per_prompt times."""
    if domain.kind == "numbers":
        from runner.numbers import make_prompts

        return [{"prompt": p} for p in make_prompts(domain.n_prompts, domain.prompts, seed)]
    if domain.kind == "cot":
        from runner import gsm8k

        qs = gsm8k.load(domain.questions, domain.split, domain.n_questions)
        return [{"prompt": q["question"] + domain.suffix, "gold": q["gold"]}
                for q in qs for _ in range(domain.samples_per_question)]
    if domain.kind == "code":
        tasks = load_tasks(domain.prompts, domain.field, domain.n_prompts)
        return [{"prompt": domain.template.replace("{prompt}", t)} for t in tasks for _ in range(domain.samples_per_prompt)]
    raise TypeError(f"unknown domain {domain.kind}")


def load_tasks(path: str, field: str, limit: int | None) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"domain.prompts: file '{path}' not found")
    out = []
    for i, obj in json_lines(p):
        if not isinstance(obj, dict) or field not in obj:
            raise UserError(f"{path}:{i}: no '{field}' key (domain.field)")
        if not isinstance(obj[field], str) or not obj[field].strip():
            raise UserError(f"{path}:{i}: '{field}' is not a text")  # null was sent as the task "None"
        out.append(str(obj[field]))
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"domain.prompts: {path} holds no task")
    return out
