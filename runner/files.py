"""Files replaced whole or not at all. Imports nothing of the project (a leaf: backends may use it)."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Whole or not at all: written and synced beside `path`, then renamed over it (two processes or threads may
    write it at once: each through its own temporary file, the last rename wins)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone once renamed; a write that failed leaves nothing behind
