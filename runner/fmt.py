"""`subl fmt`: the canonical layout of a spec file, comments kept (a ruamel.yaml round trip)."""
from __future__ import annotations

import io
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.scalarfloat import ScalarFloat
from ruamel.yaml.error import YAMLError
from ruamel.yaml.reader import ReaderError

from runner.errors import UserError
from runner.store import user_text

HEAD = re.compile(r"(?:[ \t]*(?:#.*)?\n|%.*\n)*---[ \t]*(?:#.*)?\n")  # comments and directives up to `---`


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 100
    y.preserve_quotes = True
    y.representer.add_representer(type(None), _null)
    y.representer.add_representer(ScalarFloat, _float)
    return y


def _null(representer, _):
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")  # ruamel writes nothing


def _float(representer, value):
    """ruamel keeps each float's written form, but a mantissa with no digit before its point and an exponent
    comes out scaled (.5e-3 as 50.e-5): such a float is written as Python writes it (0.0005)."""
    sign = 1 if getattr(value, "_m_sign", False) else 0  # the point's place counts a written sign
    if getattr(value, "_exp", None) and getattr(value, "_prec", None) == sign:
        return representer.represent_scalar("tag:yaml.org,2002:float", repr(float(value)))
    return representer.represent_scalar_float(value)


def _load(text: str, where: str, first_line: int = 1):
    """Parse text that starts at first_line of its file (errors name the file's line and column)."""
    try:
        return _yaml().load(text)
    except ReaderError as e:  # control characters, NUL bytes
        line = text.count("\n", 0, e.position) + first_line
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise UserError(f"{where}:{line}:{col}: not a YAML text file (unacceptable character "
                        f"#x{e.character:04x})") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + first_line}:{mark.column + 1}" if mark else where
        what = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        raise UserError(f"{at}: YAML syntax error: {what}") from None


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def canonical(text: str, where: str = "<text>") -> str:
    """The canonical text of one YAML document; raises UserError if it would change the data."""
    head = HEAD.match(text)  # ruamel drops what precedes an explicit `---`, so keep it verbatim
    prefix, body = (head.group(0), text[head.end():]) if head else ("", text)
    data = _load(body, where, prefix.count("\n") + 1)
    if data is None:  # empty or comments only
        return text
    if not isinstance(data, dict):
        raise UserError(f"{where}:1:1: not a spec (a spec is a mapping of keys such as name:); file left as is")
    buf = io.StringIO()
    _yaml().dump(data, buf)
    out = buf.getvalue()
    stripped = "\n".join(line.rstrip() for line in out.split("\n"))  # ruamel leaves spaces at wraps
    if _plain(_load(stripped, where)) == _plain(data):
        out = stripped
    elif _plain(_load(out, where)) != _plain(data):
        raise UserError(f"{where}: formatting would change the data; file left as is")
    lost = Counter(_comments(body)) - Counter(_comments(out))
    if lost:  # ruamel drops a comment inside a [...] or {...} that spans lines
        raise UserError(f"{where}: formatting would drop the comment '{next(iter(lost))}' (ruamel drops comments inside a "
                        "[...] or {{...}} that spans lines: move it above that key); file left as is")
    return prefix + out


def _comments(text: str) -> list[str]:
    """Every comment of a YAML text, as the scanner reads it (a '#' inside a quoted string is not one)."""
    out: list[str] = []

    def walk(c) -> None:
        if isinstance(c, (list, tuple)):
            for x in c:
                walk(x)
        elif c is not None and hasattr(c, "value"):
            out.extend(line.strip() for line in c.value.splitlines() if line.strip())

    for token in YAML(typ="rt").scan(text):
        walk(getattr(token, "comment", None))
    return out


def format_files(files: list[Path], check: bool) -> list[Path]:
    """Rewrite (or, with check, only report) the files whose text is not canonical."""
    changed = []
    for path in files:
        if path.is_dir():
            raise UserError(f"{path}: is a folder, not a spec file")
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        text = user_text(path)
        try:
            new = canonical(text, str(path))
        except RecursionError:  # ruamel reads and writes nesting recursively
            raise UserError(f"{path}: nested too deeply to format (more than a few hundred levels of [ ] or {{ }}); "
                            "file left as is") from None
        if new != text:
            changed.append(path)
            if not check:  # beside it, then renamed over it: Ctrl-C never leaves a spec cut short
                real = path.resolve()  # a symlink stays one (renaming over it made it a copy of its target)
                tmp = real.with_name(f".{real.name}.fmt-tmp")
                try:
                    tmp.write_text(new)
                    shutil.copymode(real, tmp)
                    os.replace(tmp, real)
                finally:
                    tmp.unlink(missing_ok=True)
    return changed
