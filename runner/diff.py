"""`subl diff`: a semantic diff of two specs, with `extends`, `matrix` and defaults resolved.

Each change is applied alone to spec A to find the stages it reruns: the stage keys of the
changed spec that A's plan lacks. Everything else is reused from the content-addressed cache."""
from __future__ import annotations

import copy
import difflib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from runner.errors import UserError
from runner.loader import Cell, _set, load, load_raw, raw_get, resolve_paths, validate
from runner.spec import Spec

NOT_COMPARED = ("extends",)  # resolved at load
KINDS = ["teacher", "generate", "score", "rewrite", "filter", "soft_labels", "finetune", "answers", "probe", "mcq",
         "icl", "classifier", "mnist"]


@dataclass
class Change:
    op: str  # changed | added | removed | reordered
    path: tuple  # str keys, int indices, ("name", n) for items matched by name
    old: Any
    new: Any
    reruns: dict[str, list[str]] | None = None  # stage kind -> labels; None: not separable

    @property
    def dotted(self) -> str:
        out = ""
        for p in self.path:
            if isinstance(p, tuple) or isinstance(p, int) or "." in p:
                out += f"[{p[1] if isinstance(p, tuple) else p}]"
            else:
                out += ("." if out else "") + p
        return out


def resolved(path: Path) -> dict:
    """The validated spec (defaults filled, extends merged, matrix values as their cells read them) as plain
    JSON data."""
    data = validate(*load_raw(path)).model_dump(mode="json")
    for k in NOT_COMPARED:
        data.pop(k, None)
    if data.get("matrix"):
        data["matrix"] = _matrix_as_read(data["matrix"], load(path))
    return data


def _matrix_as_read(matrix: dict, cells: list[Cell]) -> dict:
    """Each matrix value as its cells hold it: a relative path made absolute from the folder of the file that
    sets it, so one relative path in two folders (two files) differs; defaults of a mapping left out."""
    out = {}
    for key, values in matrix.items():
        loc = tuple(key.split("."))
        out[key] = []
        for v in values:
            cell = next((c for c in cells if _canon(c.overrides.get(key)) == _canon(v)), None)
            out[key].append(v if cell is None else prune(raw_get(cell.spec.model_dump(mode="json"), loc), _ann_at(loc)))
    return out


def _models(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold, through Annotated, Union, list and dict."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in get_args(ann) for m in _models(a)]


def prune(value: Any, ann: Any = Spec) -> Any:
    """Drop fields equal to their defaults (kind excepted): what a spec file would have to say.

    Validators may read which fields were set, so dumped data is pruned before it is validated again."""
    models = _models(ann)
    if isinstance(value, list):
        return [prune(x, ann) for x in value]
    if not isinstance(value, dict) or not models:
        return value
    fits = [m for m in models if set(value) <= set(m.model_fields)]
    model = next((m for m in fits if "kind" not in value or value["kind"] == m.model_fields["kind"].default
                  or value["kind"] in get_args(m.model_fields["kind"].annotation)), None)  # kind: tinker
    if model is None:  # a mapping of names to models (backends)
        return {k: prune(v, ann) for k, v in value.items()}
    out = {}
    for k, v in value.items():
        f = model.model_fields[k]
        if k == "kind" or f.is_required() or v != to_jsonable_python(f.get_default(call_default_factory=True)):
            out[k] = prune(v, f.annotation)
    return out


def _ann_at(path: tuple) -> Any:
    """The annotation of the value at a change's path (list items and mapping values share theirs)."""
    ann = Spec
    for seg in path:
        fields = [m.model_fields[seg] for m in _models(ann) if isinstance(seg, str) and seg in m.model_fields]
        ann = fields[0].annotation if fields else ann
    return ann


def expand(data: dict, origins: dict | None = None) -> list[Cell]:
    """Matrix cells of resolved spec data (as runner.loader.load does for a file); origins (load_raw's): a
    matrix value that is a relative path is read from the folder of the file that sets it, as load does."""
    data = prune(data)
    spec = Spec.model_validate(data)
    if not spec.matrix:
        return [Cell({}, spec)]
    base = {k: v for k, v in data.items() if k != "matrix"}
    cells = []
    for values in itertools.product(*spec.matrix.values()):
        over = dict(zip(spec.matrix, values))
        raw = base
        for k, v in over.items():
            raw = _set(raw, k, v)
        cells.append(Cell(over, Spec.model_validate(resolve_paths(raw, origins, over) if origins else raw)))
    return cells


# ---- structural diff -------------------------------------------------------------------


def _walk(a: Any, b: Any, path: tuple = ()) -> list[Change]:
    if a == b:
        return []
    if isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == b.get("kind"):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                out.append(Change("removed", path + (k,), a[k], None))
            elif k not in a:
                out.append(Change("added", path + (k,), None, b[k]))
            else:
                out += _walk(a[k], b[k], path + (k,))
        return out
    if isinstance(a, list) and isinstance(b, list):
        return _walk_list(a, b, path)
    return [Change("changed", path, a, b)]


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def _names(items: list) -> list | None:
    names = [x.get("name") if isinstance(x, dict) else None for x in items]
    return names if None not in names and len(set(names)) == len(names) else None


def _walk_list(a: list, b: list, path: tuple) -> list[Change]:
    if sorted(map(_canon, a)) == sorted(map(_canon, b)):
        return [Change("reordered", path, a, b)]
    na, nb = _names(a), _names(b)
    if na and nb:  # items with unique names (students) are matched by name
        ia, ib = dict(zip(na, a)), dict(zip(nb, b))
        out = [Change("removed", path + (("name", n),), ia[n], None) for n in na if n not in ib]
        for n in nb:
            out += _walk(ia[n], ib[n], path + (("name", n),)) if n in ia else [
                Change("added", path + (("name", n),), None, ib[n])]
        order = [n for n in nb if n in ia] + [n for n in na if n not in ib]
        if [n for n in na if n in ib] != [n for n in nb if n in ia]:
            out.append(Change("reordered", path, a, [ia[n] for n in order]))
        return out
    if all(isinstance(x, dict) for x in a + b):  # equal items lined up first, the rest paired by position
        out = []
        blocks = difflib.SequenceMatcher(a=list(map(_canon, a)), b=list(map(_canon, b)), autojunk=False)
        for op, i1, i2, j1, j2 in blocks.get_opcodes():
            if op == "equal":
                continue
            paired = min(i2 - i1, j2 - j1) if op == "replace" else 0
            for k in range(paired):
                out += _walk(a[i1 + k], b[j1 + k], path + (i1 + k,))
            out += [Change("removed", path + (i,), a[i], None) for i in range(i1 + paired, i2)]
            out += [Change("added", path + (j,), None, b[j]) for j in range(j1 + paired, j2)]
        return out
    return [Change("changed", path, a, b)]


def _index(node: Any, seg: Any) -> Any:
    if isinstance(seg, tuple):
        return next(i for i, x in enumerate(node) if x.get("name") == seg[1])
    return seg


def apply(data: dict, c: Change) -> dict:
    """Spec data with one change applied."""
    data = copy.deepcopy(data)
    *up, last = c.path
    node = data
    for seg in up:
        node = node[_index(node, seg)]
    if c.op == "removed":
        del node[_index(node, last)]
    elif c.op == "added" and isinstance(node, list):
        node.insert(last if isinstance(last, int) else len(node), c.new)
    else:
        node[_index(node, last)] = c.new
    return data


# ---- stages ----------------------------------------------------------------------------


def stage_labels(cells: list[Cell]) -> dict[str, tuple[str, str]]:
    """Stage key -> (kind, label) for every stage of every cell."""
    from runner.plan import build, plan_stages

    return {s["key"]: (s["kind"], s["label"] if len(cells) == 1 else f"[{s['cell']}] {s['label']}")
            for s in plan_stages(build(cells, "outputs", provisional=True))}  # reads pins, writes none


def _new_stages(base: dict, other: dict) -> dict[str, list[str]]:
    """Labels of the stages in other that base lacks, by kind in pipeline order."""
    out: dict[str, list[str]] = {}
    for key, (kind, label) in other.items():
        if key not in base:
            out.setdefault(kind, []).append(label)
    return {k: out[k] for k in sorted(out, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))}


def diff_specs(a: Path, b: Path) -> dict:
    """Changes from spec a to spec b, each with the stages it reruns."""
    cells_a, cells_b = load(a), load(b)
    da, db = resolved(a), resolved(b)
    changes = _walk(da, db)
    sa, sb = stage_labels(cells_a), stage_labels(cells_b)
    oa, ob = load_raw(a)[1], load_raw(b)[1]
    for c in changes:
        # a matrix entry b changes is read from b's file (its relative paths from b's folder); the rest from a's
        origins = {**oa, **{k: v for k, v in ob.items() if c.path[:1] == ("matrix",) and k[:2] == c.path[:2]}}
        try:
            c.reruns = _new_stages(sa, stage_labels(expand(apply(da, c), origins)))
        except (UserError, ValueError, KeyError, TypeError, AttributeError):  # valid only with other changes
            c.reruns = None
    return {
        "a": str(a), "b": str(b), "equal": not changes,
        "changes": [{"op": c.op, "path": c.dotted, "old": prune(c.old, _ann_at(c.path)),
                     "new": prune(c.new, _ann_at(c.path)), "reruns": c.reruns} for c in changes],
        "cells": {"a": len(cells_a), "b": len(cells_b)},
        "stages": {"a": len(sa), "b": len(sb), "rerun": _new_stages(sa, sb), "reused": len(set(sa) & set(sb))},
    }


# ---- rendering -------------------------------------------------------------------------


def _brief(v: Any) -> str:
    names = _names(v) if isinstance(v, list) and v else None
    return json.dumps(names if names else v)


def _kinds(reruns: dict[str, list[str]]) -> str:
    return ", ".join(f"{k} x{len(v)}" for k, v in reruns.items())


def render(d: dict) -> list[str]:
    lines = [f"a: {d['a']}", f"b: {d['b']}"]
    for c in d["changes"]:
        if c["op"] in ("changed", "reordered"):
            lines.append(f"{c['op']:9s} {c['path']}: {_brief(c['old'])} -> {_brief(c['new'])}")
        else:
            lines.append(f"{c['op']:9s} {c['path']}: {_brief(c['new'] if c['op'] == 'added' else c['old'])}")
        r = c["reruns"]
        what = ("not separable from the other changes" if r is None
                else _kinds(r) if r else "none (cached outputs survive)")
        lines.append(f"{'':9s} reruns: {what}")
    if d["equal"]:
        lines.append("equal: no semantic differences")
        return lines
    s, cells = d["stages"], d["cells"]
    n_rerun = sum(len(v) for v in s["rerun"].values())
    cell_note = f"; cells {cells['a']} -> {cells['b']}" if cells["a"] != cells["b"] else ""
    lines.append(f"{len(d['changes'])} change(s){cell_note}; b reruns {n_rerun} of {s['b']} stages"
                 + (f" ({_kinds(s['rerun'])})" if n_rerun else "") + f", reuses {s['reused']} from a's cache")
    return lines
