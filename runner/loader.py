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
from ruamel.yaml.reader import ReaderError

from runner.errors import SpecError
from runner.questions import BUILTIN
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
    if isinstance(v, dict) and "kind" in v:  # a filter link: its kind and settings, e.g. shuffle(scope=within)
        rest = ",".join(f"{k}={x}" for k, x in v.items() if k != "kind")
        return f"{v['kind']}({rest})" if rest else str(v["kind"])
    return "+".join(_short(x) if isinstance(x, dict) else str(x) for x in v) if isinstance(v, list) else str(v)


def read_yaml(path: Path) -> CommentedMap:
    """Parse one YAML file with the round-trip loader (keeps line numbers)."""
    try:
        if path.is_dir():
            raise SpecError(f"{path}: is a folder, not a spec file")
        if not path.is_file():
            raise SpecError(f"{path}: file not found")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raw = e.object[:e.start]
        line, col = raw.count(b"\n") + 1, e.start - (raw.rfind(b"\n") + 1) + 1
        raise SpecError(f"{path}:{line}:{col}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise SpecError(f"{path}: cannot be read ({_why(e)})") from None
    try:
        data = YAML(typ="rt").load(text)
    except RecursionError:  # ruamel reads nesting recursively; where it gave up is not known
        raise SpecError(f"{path}: nested too deeply to read (more than a few hundred levels of [ ] or {{ }})") from None
    except ReaderError as e:  # control characters, NUL bytes: not a YAML text
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise SpecError(f"{path}:{line}:{col}: not a YAML text file (unacceptable character #x{e.character:04x})") from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        started = e.context_mark if e.problem and e.context else None  # where the unfinished part began
        also = f" ({e.context} at {started.line + 1}:{started.column + 1})" if started else ""
        problem = re.sub(r' with value ".*"\)$', "", e.problem or e.context, flags=re.S)  # a duplicate key's
        problem = re.sub(r"\s*\n\s*", " ", problem)  # values, which may be long or span lines: still one line
        raise SpecError(f"{where}: YAML syntax error: {problem}{also}") from None
    except Exception as e:  # the reader's own failure on odd YAML (a mapping merged into itself)
        raise SpecError(f"{path}: YAML the reader cannot take ({type(e).__name__}: {e})") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise SpecError(f"{path}:1:1: the spec must be a mapping of keys")
    return data


def _why(e: Exception) -> str:
    """An OSError's reason without its (maybe very long) file name."""
    return getattr(e, "strerror", None) or str(e)


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
        for k in node:  # an !!omap's keys have no place of their own: their mapping's
            line, col = ((node.lc.data or {}).get(k) or _merged_place(node, k) or (node.lc.line, node.lc.col))[:2]
            out[prefix + (str(k),)] = (path, line + 1, col + 1)  # as _plain (and so pydantic) spells the key
            _origins(node[k], path, prefix + (str(k),), out)
    elif isinstance(node, CommentedSeq):
        for i, v in enumerate(node):
            line, col = node.lc.item(i)
            out[prefix + (i,)] = (path, line + 1, col + 1)
            _origins(v, path, prefix + (i,), out)
    return out


def _merged_place(node: CommentedMap, key: Any) -> list | None:
    """(line, col) of a key merged in by `<<`: in the mapping it was merged from."""
    for m in getattr(node, "merge", None) or []:
        m = m[1] if isinstance(m, tuple) else m  # ruamel < 0.19: (position, mapping) pairs
        if isinstance(m, CommentedMap) and key in m:
            return (m.lc.data or {}).get(key) or _merged_place(m, key)
    return None


def load_raw(path: Path, _seen: tuple = ()) -> tuple[dict, dict]:
    """The merged raw mapping of a spec and its `extends` chain, with key origins."""
    path = Path(path)
    data = read_yaml(path)
    if not data and not _seen:  # a spec's own file, empty or comments only (a base it extends may be empty)
        raise SpecError(f"{path}:1:1: the spec is empty: it needs at least `name` and what to run (see specs/)")
    origins = _origins(data, path)
    origins.setdefault((), (path, 1, 1))
    parent = data.get("extends")
    if parent is None:
        return data, origins
    where = "%s:%d:%d" % origins[("extends",)]
    if not isinstance(parent, str) or not parent.strip():  # '' would name the spec's own folder
        raise SpecError(f"{where}: extends: must be a file path")
    try:
        ppath = (path.parent / Path(parent).expanduser()).resolve()  # ~ as in data paths
        if ppath in _seen:
            raise SpecError(f"{where}: extends: cycle through {parent}")
        if ppath.is_dir():
            raise SpecError(f"{where}: extends: {parent} is a folder, not a spec file")
        if not ppath.is_file():
            raise SpecError(f"{where}: extends: file not found: {parent}")
    except (OSError, ValueError, RuntimeError) as e:  # ~nosuchuser: RuntimeError
        raise SpecError(f"{where}: extends: not a usable file name ({_why(e)})") from None
    base, base_origins = load_raw(ppath, _seen + (path.resolve(),))
    if not base:  # nothing to inherit: a truncated or wrong file, not what the spec meant
        raise SpecError(f"{where}: extends: {parent} is empty")
    base = dict(base)
    base.pop("matrix", None) if "matrix" in data else None
    sweep = base.get("matrix") if isinstance(base.get("matrix"), dict) else {}  # not a mapping: validate says so
    for key in sweep:  # the inherited sweep would silently overwrite the child's own value
        if isinstance(key, str) and _has(data, key.split(".")):
            where = "%s:%d:%d" % origins[tuple(key.split("."))]
            raise SpecError(f"{where}: {key}: swept by the matrix of {parent}, which would overwrite this value; "
                            "set matrix here too (matrix: {} drops the sweep)")
    return _merge(base, data), {**_inherited(base_origins, data), **origins}


def _has(node: Any, parts: list[str]) -> bool:
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def _inherited(base_origins: dict, data: dict) -> dict:
    """The parent's key places that still hold in the merged spec: not those inside a value the child replaced
    (a list or a text it sets), whose lines are no longer part of the spec."""
    out = {}
    for path, place in base_origins.items():
        node = data
        for k in path[:-1]:
            if not isinstance(node, dict) or k not in node:
                out[path] = place  # the child leaves this part to the parent
                break
            node = node[k]
            if not isinstance(node, dict):
                break  # the child replaced the value this key sits in
        else:
            out[path] = place
    return out


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


def _clean_loc(loc: tuple, raw: Any, missing: bool = False) -> tuple:
    """Drop pydantic's union-tag segments (filters.0.numbers, teacher.trait.str), which are not YAML keys."""
    out, node, entered = [], raw, True
    for i, part in enumerate(loc):  # a kind's tag comes right after entering its mapping, even where a field has
        tagged = entered and isinstance(node, dict) and node.get("kind") == part  # its name (judge)
        # another union member's name (str, FinetuneTrait, a kind-less domain's numbers) is no key of the value
        member = isinstance(part, str) and not (isinstance(node, dict) and part in node) \
            and not (missing and i == len(loc) - 1)
        if tagged or member:
            entered = False
            continue
        entered = True
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _first_error(e: ValidationError, raw: Any) -> tuple[tuple, dict]:
    """The first error and its YAML key path; where it is one member's of a union that every member refused, the
    member error that reached deepest into the value (an unknown key in a finetune mapping, not 'a valid string')."""
    def clean(err: dict) -> tuple:
        return _clean_loc(tuple(err["loc"]), raw, err["type"] == "missing")

    first = e.errors()[0]
    loc = clean(first)
    if len(loc) == len(first["loc"]):
        return loc, first
    rivals = [(clean(err), err) for err in e.errors() if clean(err)[:len(loc)] == loc]
    return max(rivals, key=lambda r: len(r[0]))  # the first of the deepest


def _named(loc: tuple, msg: str, raw: Any) -> tuple[tuple, str]:
    """A check that names its field first (students.1.name: ..., a section's controls: ...) is placed at that field:
    the spec's always, a section's where the spec sets it."""
    named = re.match(r"^([\w.]+): (.*)$", msg)
    if not named:
        return loc, msg
    field = tuple(int(p) if p.isdigit() else p for p in named.group(1).split("."))
    if loc:
        try:
            raw_get(raw, loc + field)
        except (KeyError, IndexError, TypeError):
            return loc, msg  # a field the section leaves to its default: the section's place
    return loc + field, named.group(2)


def validate(raw: dict, origins: dict) -> Spec:
    """Validate a raw mapping; the first problem becomes a SpecError with its place."""
    try:
        return Spec.model_validate(resolve_paths(_plain(raw), origins))
    except ValidationError as e:
        loc, err = _first_error(e, _plain(raw))
        loc, msg = _named(loc, _message(err), _plain(raw))
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
    """`raw` with the dotted key set to (a copy of) `value`; ValueError where the path runs through a value that is
    not a mapping (a system-prompt trait where the key names a finetune trait's field)."""
    parts = dotted.split(".")
    out = _plain(raw)
    node = out
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is not a mapping in this spec")
    node[parts[-1]] = copy.deepcopy(value)  # resolve_paths rewrites the cell in place; the label keeps the value
    return out


def _models_in(ann: Any) -> list:
    """The pydantic models an annotation may hold, through Annotated and Union (discriminated or not)."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in get_args(ann) for m in _models_in(a)]


def _names_field(dotted: str) -> bool:
    """Whether a dotted key names a field; a union (domain, a filter) names it when any member has it."""
    models, parts = _models_in(Spec), dotted.split(".")
    for i, p in enumerate(parts):
        fields = [m.model_fields[p] for m in models if p in m.model_fields]
        if not fields or (i < len(parts) - 1 and any(_holds_many(f.annotation) for f in fields)):
            return False  # a list's items have no single field to sweep (students.method: which student?)
        models = [m for f in fields for m in _models_in(f.annotation)]
    return True


def _holds_many(ann: Any) -> bool:
    """Whether an annotation is (or may be) a list, tuple or mapping."""
    from typing import get_args, get_origin

    return get_origin(ann) in (list, tuple, dict) or any(_holds_many(a) for a in get_args(ann) if a is not type(None))


# ---- data paths: relative to the spec file that sets them ------------------------------------

# (key path, kind): "file" must exist; "file-or-name" is a file unless it is a built-in name (no
# such file beside the spec); "file-or-hub" is a hub id unless a file of that name exists or it
# looks like a file (_file_like); "dataset" may hold {target}. "*" matches any list index or mapping key.
FOLDERS_ALLOWED = ("mnist", "theorem")  # MNIST data may be an IDX folder
PATH_FIELDS = [
    (("domain", "questions"), "file-or-hub"),
    (("domain", "prompts"), "file"),
    (("evaluations", "*", "questions"), "file-or-name"),
    (("teacher", "trait", "finetune", "dataset"), "dataset"),
    (("teacher", "controls", "*", "finetune", "dataset"), "dataset"),
    (("mnist", "data"), "file"),
    (("theorem", "data"), "file"),
    (("theorem_lm", "questions"), "file-or-name"),
]


def _matches(raw: Any, pattern: tuple, prefix: tuple = ()) -> list[tuple]:
    """Key paths in raw that match a PATH_FIELDS pattern and hold a string."""
    if not pattern:
        return [prefix] if isinstance(raw, str) else []
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        items = enumerate(raw) if isinstance(raw, list) else raw.items() if isinstance(raw, dict) else []
        return [m for k, v in items for m in _matches(v, rest, prefix + (k,))]
    if isinstance(raw, dict) and head in raw:
        return _matches(raw[head], rest, prefix + (head,))
    return []


def _resolve_one(value: str, kind: str, folder: Path) -> tuple[str, bool]:
    """(resolved value, must exist) of one path field."""
    if kind == "file-or-name" and value in BUILTIN:
        return value, False
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (folder / path)
    if kind == "file-or-hub" and not (path.exists() or _file_like(value)):
        return value, False  # a hub id
    return str(path.resolve()), kind != "dataset" or "{target}" not in value


def _file_like(value: str) -> bool:
    """A name no hub dataset id has (owner/name): a data file's extension, or a path from ./, ../, / or ~."""
    return value.endswith((".jsonl", ".json", ".parquet", ".csv")) or value.startswith((".", "/", "~"))


MODEL_FIELDS = [("teacher", "base"), ("students", "*", "base"), ("filters", "*", "model"),
                ("filters", "*", "judge", "model"), ("evaluations", "*", "model"), ("evaluations", "*", "judge", "model")]


def resolve_paths(raw: dict, origins: dict, overrides: dict | None = None, picks: dict | None = None) -> dict:
    """Make every data path absolute, read from the folder of the file that sets it (the matrix
    entry's file for a matrix override; `picks`: the index of each override in its matrix list, to place an
    error at that value); a missing file is a SpecError at its place. A model given as a
    local folder (./, /, ~) must exist too (it is read from where subl runs, as backends.embedded does)."""
    for pattern in MODEL_FIELDS:
        for loc in _matches(raw, pattern):
            ref, place = raw_get(raw, loc), "%s:%d:%d: " % _origin_of(origins, loc, overrides, picks)
            try:
                found = not ref.startswith((".", "/", "~")) or Path(ref).expanduser().is_dir()
            except (OSError, ValueError, RuntimeError) as e:  # a name too long, a NUL byte, ~nosuchuser
                raise SpecError(place + f"{'.'.join(map(str, loc))}: not a usable folder name ({_why(e)})") from None
            if not found:
                raise SpecError(place + f"{'.'.join(map(str, loc))}: local model folder not found: {ref}")
    for pattern, kind in PATH_FIELDS:
        for loc in _matches(raw, pattern):
            where = _origin_of(origins, loc, overrides, picks)
            dotted, place = ".".join(map(str, loc)), "%s:%d:%d: " % where
            try:
                value = _checked_path(raw, loc, kind, Path(where[0]).resolve().parent, place + f"{dotted}: ")
            except (OSError, ValueError, RuntimeError) as e:  # a name too long, a NUL byte, ~nosuchuser
                raise SpecError(place + f"{dotted}: not a usable file name ({_why(e)})") from None
            raw = _set_path(raw, loc, value)
    return raw


def _checked_path(raw: dict, loc: tuple, kind: str, folder: Path, place: str) -> str:
    """One path field's resolved value, once the files it names are found (`place` starts the SpecError)."""
    value, must_exist = _resolve_one(raw_get(raw, loc), kind, folder)
    for path in [value] if must_exist else _per_target(raw, loc, value, kind):
        if not Path(path).exists():
            raise SpecError(place + f"file not found: {path}")
        if Path(path).is_dir() and loc[0] not in FOLDERS_ALLOWED:
            raise SpecError(place + f"{path} is a folder, not a file")
    return value


def _per_target(raw: dict, loc: tuple, value: str, kind: str) -> list[str]:
    """A `{target}` dataset's file for each teacher it is filled for (a control: its own name); none for a
    field that need not exist (a built-in name, a hub id)."""
    if kind != "dataset" or "{target}" not in value:
        return []
    if loc[1] != "controls" and "teacher.targets" in (raw.get("matrix") or {}):
        return []  # each matrix cell checks its own targets (its raw has them and no matrix)
    teacher = raw.get("teacher") if isinstance(raw.get("teacher"), dict) else {}
    names = [loc[2]] if loc[1] == "controls" else teacher.get("targets", ["owl"])
    return [value.replace("{target}", str(n)) for n in (names if isinstance(names, list) else [])]


def _origin_of(origins: dict, loc: tuple, overrides: dict | None, picks: dict | None = None) -> tuple:
    dotted = ".".join(map(str, loc))
    for key in overrides or {}:
        if dotted == key or dotted.startswith(key + "."):  # not theorem_lm.questions for a sweep over theorem
            keys = ("matrix", key) + ((picks[key],) + loc[len(key.split(".")):] if picks else ())
            while len(keys) > 2 and keys not in origins:
                keys = keys[:-1]
            return origins.get(keys, origins[()])
    keys = loc
    while keys and keys not in origins:
        keys = keys[:-1]
    return origins[keys] if keys else origins[()]


def raw_get(raw: Any, loc: tuple) -> Any:
    for k in loc:
        raw = raw[k]
    return raw


def _set_path(raw: dict, loc: tuple, value: Any) -> dict:
    node = raw
    for k in loc[:-1]:
        node = node[k]
    node[loc[-1]] = value
    return raw


def load(path: Path | str) -> list[Cell]:
    """Load, validate and expand a spec into its matrix cells."""
    path = Path(path)
    raw, origins = load_raw(path)
    spec = _validate_swept(raw, origins)
    if not spec.matrix:
        return [Cell({}, spec)]
    cells = []
    keys = list(spec.matrix)
    for key in keys:
        if key.split(".")[0] == "backends":  # one set per run: budget, preflight and shared stages read one
            raise SpecError(f"{_locate(origins, ('matrix', key))}: matrix.{key}: the cells of a spec share their "
                            "backends (the spending check, the preflight and a stage two cells share use one "
                            "setting); write a spec per backend setting, or name two backends")
        if not _names_field(key) or key in ("matrix", "name", "extends"):
            where = _locate(origins, ("matrix", key))
            raise SpecError(f"{where}: matrix.{key}: names no field of the spec")
        if not spec.matrix[key]:
            raise SpecError(f"{_locate(origins, ('matrix', key))}: matrix.{key}: an empty list gives no cell")
        labels = [_short(v) for v in spec.matrix[key]]
        if len(set(labels)) < len(labels):  # cells are told apart (and reported) by their labels
            raise SpecError(f"{_locate(origins, ('matrix', key))}: matrix.{key}: a value is listed twice")
        inner = next((k for k in keys if k != key and k.startswith(key + ".")), None)
        if inner:  # the outer key's value would overwrite the inner's, and the cells' labels would lie
            raise SpecError(f"{_locate(origins, ('matrix', key))}: matrix.{key} and matrix.{inner} overlap; "
                            f"sweep one of them")
    for picks in itertools.product(*(list(enumerate(spec.matrix[k])) for k in keys)):
        over = {k: v for k, (_, v) in zip(keys, picks)}
        index = {k: i for k, (i, _) in zip(keys, picks)}
        cell_raw = _plain(raw)
        cell_raw.pop("matrix")
        for k, v in over.items():
            try:
                cell_raw = _set(cell_raw, k, v)
            except ValueError as e:
                raise SpecError(f"{_locate(origins, ('matrix', k))}: matrix.{k}: {e}") from None
        try:
            cells.append(Cell(over, Spec.model_validate(resolve_paths(cell_raw, origins, over, index))))
        except ValidationError as e:
            loc, err = _first_error(e, cell_raw)
            loc, msg = _named(loc, _message(err), cell_raw)
            dotted = ".".join(map(str, loc))
            key = next((k for k in sorted(keys, key=len, reverse=True)  # the matrix key whose value failed
                        if dotted == k or dotted.startswith(k + ".") or (dotted and k.startswith(dotted + "."))), None)
            # at the failing value inside the matrix (its list item, and the place within it), else the matrix line
            inside = loc[len(key.split(".")):] if key and dotted.startswith(key + ".") else ()
            where = _locate(origins, ("matrix", key, index[key]) + inside if key else ("matrix",))
            raise SpecError(f"{where}: matrix {over}: {dotted or 'spec'}: {msg}") from None
    _check_one_teacher_per_target(cells, origins)
    _check_cells_differ(cells, origins)
    return cells


def _check_cells_differ(cells: list[Cell], origins: dict) -> None:
    """Two values that read as one (seed: [1e3, 1000]) would run one experiment twice, reported as two."""
    for i, a in enumerate(cells):
        b = next((b for b in cells[i + 1:] if b.spec == a.spec), None)
        if b is not None:
            key = next(k for k in a.overrides if _short(a.overrides[k]) != _short(b.overrides[k]))
            raise SpecError(f"{_locate(origins, ('matrix', key))}: matrix.{key}: {_short(a.overrides[key])} and "
                            f"{_short(b.overrides[key])} give the same cell; list each value once")


def _validate_swept(raw: dict, origins: dict) -> Spec:
    """The spec, matrix and all. Where it fails without its cells' values (a correct_answer filter whose cot domain
    only the matrix sets), it is read with the first cell's values in place: each cell is validated after."""
    try:
        return validate(raw, origins)
    except SpecError as refused:
        sweep = _plain(raw.get("matrix"))
        if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
            raise
        try:
            first = _plain(raw)
            for key, values in sweep.items():
                first = _set(first, key, values[0])
            return Spec.model_validate(resolve_paths(first, origins, {k: v[0] for k, v in sweep.items()},
                                                     dict.fromkeys(sweep, 0)))
        except (ValueError, ValidationError):  # the cells do not mend it: the spec's own mistake, at its place
            raise refused from None


def _check_one_teacher_per_target(cells: list[Cell], origins: dict) -> None:
    """Cells of other targets whose trait has no {target} would all get one teacher under other names
    (runner.spec.Teacher refuses it within a cell)."""
    seen: dict[str, set] = {}
    for c in cells:
        t = c.spec.teacher
        if "{target}" not in t.trait_text:
            seen.setdefault(t.trait_text, set()).add(tuple(t.targets))
    if any(len(targets) > 1 for targets in seen.values()):
        key = "teacher" if "teacher" in cells[0].overrides else "teacher.targets"  # the key that sweeps targets
        raise SpecError(f"{_locate(origins, ('matrix', key))}: matrix.{key}: the trait has no "
                        "{target}, so every cell's teacher would be one and the same; write {target} where each "
                        "target's name goes")
