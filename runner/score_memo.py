"""Judge scores remembered by (judge settings, pair), across score stages of one outputs folder.

A score stage's key names its rows, so a change upstream (a filter link before the judge, more
prompts) makes a new stage that would judge every row again, paying again for the rows judged
before. Where a pair's score depends only on the judge's settings and the pair itself (log-prob
judges, and sampled ones at temperature 0), the new stage reads those scores back and sends only
the pairs no stage has judged. A judge that samples at temperature > 0 seeds each chunk by its
position, so its scores are not remembered.

<outputs>/score_memo/<settings digest>.jsonl: one JSON line per pair (its digest, kind, value, raw),
appended in one write per chunk of pairs as they are scored, so a stage killed midway keeps what it
judged; a torn last line (a kill mid-write) is skipped on reading, and the next append starts on a new
line.

A log-prob probe's values are remembered the same way, per target (TargetMemo): a probe stage's key names its
targets, so a target added to a spec, or matrix cells whose targets overlap, would read every target again
(a paid request per question and target on Tinker). <outputs>/probe_memo/<settings digest>.jsonl: one line per
target (its text and its log-prob for each question).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from backends.judge import Score

FOLDER = "score_memo"
PROBE_FOLDER = "probe_memo"


def pair_digest(prompt: str, completion: str) -> str:
    return hashlib.sha256(json.dumps([prompt, completion]).encode()).hexdigest()[:32]


class ScoreMemo:
    def __init__(self, root: Path, settings_digest: str):
        self.path = Path(root) / FOLDER / f"{settings_digest}.jsonl"

    def known(self) -> dict[str, Score]:
        out: dict[str, Score] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[rec["pair"]] = Score(rec["kind"], rec["value"], rec["raw"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return out

    def add(self, pairs: list[tuple[str, str]], scores: list[Score]) -> None:
        _append(self.path, [{"pair": pair_digest(*p), "kind": s.kind, "value": s.value, "raw": s.raw}
                            for p, s in zip(pairs, scores)])


class TargetMemo:
    """A log-prob probe's values per target, under one digest of everything else the probe reads."""

    def __init__(self, root: Path, settings_digest: str):
        self.path = Path(root) / PROBE_FOLDER / f"{settings_digest}.jsonl"

    def known(self, n: int) -> dict[str, list[float]]:
        """Each remembered target's log-probs, one per question (a record of another length is skipped)."""
        out: dict[str, list[float]] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
                values = [float(v) for v in rec["logprob"]]
                if len(values) == n and isinstance(rec["target"], str):
                    out[rec["target"]] = values
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return out

    def add(self, values: dict[str, list[float]]) -> None:
        _append(self.path, [{"target": t, "logprob": v} for t, v in values.items()])


def _append(path: Path, records: list[dict]) -> None:
    """One append of JSON lines (a short write, rare, continues it): other runs' lines stay whole."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n" * _torn(path) + "".join(json.dumps(r) + "\n" for r in records)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _torn(path: Path) -> bool:
    """The file ends inside a line (a kill mid-write): the next append starts on a line of its own."""
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:  # missing or empty
        return False
