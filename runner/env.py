"""Settings read from the environment (SUBL_*): a value subl cannot use is one line naming the variable, read
before anything is sent (a negative poll interval used to fail after the paid jobs were created)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from runner.errors import UserError


def env_number(name: str, default: float, *, integer: bool = False, least: float = 0.0,
               above: bool = False) -> float:
    """The variable `name` as a finite number >= `least` (> `least` where `above`), else `default` when unset or
    empty; an int where `integer`."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < least or (above and value == least):
        kind = "a whole number" if integer else "a number"
        raise UserError(f"{name}: expected {kind} {'>' if above else '>='} {least:g}, got {raw!r}")
    return value


def cache_root() -> Path:
    """subl's cache folder (converted models, file digests, paid-object locks): SUBL_CACHE, else ~/.cache/subl. An
    empty SUBL_CACHE is unset (it meant the current folder: half a GB of model written there)."""
    root = Path(os.environ.get("SUBL_CACHE") or Path.home() / ".cache" / "subl").expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"SUBL_CACHE: {root} is not a folder")
    return root
