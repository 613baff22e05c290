"""Load a spec file: round-trip YAML, `extends`, `matrix`, and errors as file:line:col."""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from runner.errors import SpecError
from runner.spec import Spec


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: its overrides and the validated spec."""

    overrides: dict[str, Any]
    spec: Spec

    @property
    def label(self) -> str:
        return ",".join(f"{k}={_short(v)}" for k, v in self.overrides.items()) or "-"


def _short(v: Any) -> str:
    return "+".join(map(str, v)) if isinstance(v, list) else str(v)


def read_yaml(path: Path) -> CommentedMap:
    """Parse one YAML file with the round-trip loader (keeps line numbers)."""
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    try:
        data = YAML(typ="rt").load(path.read_text())
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise SpecError(f"{path}:1:1: the spec must be a mapping of keys")
    return data


def _merge(base: Any, over: Any) -> Any:
    """Deep-merge mappings; anything else in `over` replaces `base`."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.copy(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def _origins(node: Any, path: Path, prefix: tuple = (), out: dict | None = None) -> dict:
    """Map every key path in a YAML tree to (file, line, col) of its key."""
    out = {} if out is None else out
    if isinstance(node, CommentedMap):
        for k in node:
            line, col = node.lc.key(k)
            out[prefix + (k,)] = (path, line + 1, col + 1)
            _origins(node[k], path, prefix + (k,), out)
    elif isinstance(node, CommentedSeq):
        for i, v in enumerate(node):
            line, col = node.lc.item(i)
            out[prefix + (i,)] = (path, line + 1, col + 1)
            _origins(v, path, prefix + (i,), out)
    return out


def load_raw(path: Path, _seen: tuple = ()) -> tuple[dict, dict]:
    """The merged raw mapping of a spec and its `extends` chain, with key origins."""
    path = Path(path)
    data = read_yaml(path)
    origins = _origins(data, path)
    origins.setdefault((), (path, 1, 1))
    parent = data.get("extends")
    if parent is None:
        return data, origins
    where = "%s:%d:%d" % origins[("extends",)]
    if not isinstance(parent, str):
        raise SpecError(f"{where}: extends: must be a file path")
    ppath = (path.parent / parent).resolve()
    if ppath in _seen:
        raise SpecError(f"{where}: extends: cycle through {parent}")
    if not ppath.is_file():
        raise SpecError(f"{where}: extends: file not found: {parent}")
    base, base_origins = load_raw(ppath, _seen + (path.resolve(),))
    base = dict(base)
    base.pop("matrix", None) if "matrix" in data else None
    return _merge(base, data), {**base_origins, **origins}


def _locate(origins: dict, loc: tuple) -> str:
    """The most specific file:line:col known for a pydantic error location."""
    keys = tuple(k for k in loc)
    while keys:
        if keys in origins:
            return "%s:%d:%d" % origins[keys]
        keys = keys[:-1]
    return "%s:%d:%d" % origins[()]


def _message(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    return msg.removeprefix("Value error, ")


def _clean_loc(loc: tuple, raw: Any) -> tuple:
    """Drop pydantic's union-tag segments (e.g. filters.0.numbers), which are not YAML keys."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def validate(raw: dict, origins: dict) -> Spec:
    """Validate a raw mapping; the first problem becomes a SpecError with its place."""
    try:
        return Spec.model_validate(_plain(raw))
    except ValidationError as e:
        err = e.errors()[0]
        loc, msg = _clean_loc(tuple(err["loc"]), _plain(raw)), _message(err)
        named = re.match(r"^([\w.]+): (.*)$", msg)  # a cross-field check names its field first
        if not loc and named:
            loc = tuple(int(p) if p.isdigit() else p for p in named.group(1).split("."))
            msg = named.group(2)
        dotted = ".".join(map(str, loc)) or "spec"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise SpecError(f"{_locate(origins, loc)}: {dotted}: {msg}{more}") from None


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _set(raw: dict, dotted: str, value: Any) -> dict:
    parts = dotted.split(".")
    out = _plain(raw)
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _names_field(dotted: str) -> bool:
    from pydantic import BaseModel

    model: Any = Spec
    for p in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or p not in model.model_fields:
            return False
        model = model.model_fields[p].annotation
    return True


def load(path: Path | str) -> list[Cell]:
    """Load, validate and expand a spec into its matrix cells."""
    path = Path(path)
    raw, origins = load_raw(path)
    spec = validate(raw, origins)
    if not spec.matrix:
        return [Cell({}, spec)]
    cells = []
    keys = list(spec.matrix)
    for key in keys:
        if not _names_field(key) or key in ("matrix", "name", "extends"):
            where = _locate(origins, ("matrix", key))
            raise SpecError(f"{where}: matrix.{key}: names no field of the spec")
    for values in itertools.product(*(spec.matrix[k] for k in keys)):
        over = dict(zip(keys, values))
        cell_raw = _plain(raw)
        cell_raw.pop("matrix")
        for k, v in over.items():
            cell_raw = _set(cell_raw, k, v)
        cell_origins = {**origins}
        try:
            cells.append(Cell(over, Spec.model_validate(cell_raw)))
        except ValidationError as e:
            err = e.errors()[0]
            where = _locate(cell_origins, ("matrix", keys[0]))
            raise SpecError(f"{where}: matrix {over}: {'.'.join(map(str, err['loc']))}: {_message(err)}") from None
    return cells
