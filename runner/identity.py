"""What a stage's inputs are, as opposed to where they are: file contents, model weights, hub
revisions and hosted endpoints, as short strings that go into stage keys.

- a file: the sha256 of its bytes (its path is not part of any key, so a moved file is reused);
- a local model folder or the embedded model: a digest of its weight, config and tokenizer files;
- a hub id: the revision it resolved to at first use (the hub's newest, else the local cache's), recorded in
  <outputs>/hub_revisions.json (delete an entry to move to the hub's newest revision); a hub dataset (CoT questions) likewise,
  recorded as "dataset:<id>";
- a hosted model: backend name, endpoint (base_url) and model id.
Digests of large files are cached by (path, size, mtime) in ~/.cache/subl/digests.json."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from backends.turn_end import FILES, folder_marker, needs_tokenizer_json, text_marker
from runner.core import backend_name, hosted_endpoint, hosted_model_id
from runner.env import cache_root
from runner.errors import UserError

MODEL_FILES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".tiktoken")


def _cache_path() -> Path:
    return cache_root() / "digests.json"


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, cached by (absolute path, size, mtime, inode, ctime): ctime moves on every
    write and cannot be set back, so contents replaced with the same size and a restored mtime
    (`cp -p`, `rsync -a`, `touch -r`) are hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if stamp in cache:
        return cache[stamp]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    cache[stamp] = h.hexdigest()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only home: digests are recomputed next time
    return cache[stamp]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


TRAINER_FILES = {"training_args.bin", "trainer_state.json"}  # a Trainer's records beside the weights: not loaded


def folder_digest(folder: Path) -> str:
    """A digest over the model files of a folder (names and contents): the files at its top level, where
    from_pretrained reads them (a checkpoint-N/ subfolder or a trainer's records leave the model what it is),
    and those it reads below it (read_below)."""
    top = [p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_FILES and p.name not in TRAINER_FILES]
    return _files_digest(folder, sorted(set(top) | set(read_below(folder, top))), "model folder", "model files")


def read_below(folder: Path, top: list[Path]) -> list[Path]:
    """The files from_pretrained reads beyond the top level: the shards a *.index.json names (a weight_map may
    name "weights/model-00001.safetensors"), and the tokenizer's additional_chat_templates/*.jinja."""
    named: set[str] = set()
    for index in (p for p in top if p.name.endswith(".index.json")):
        try:
            named |= {v for v in json.loads(index.read_text()).get("weight_map", {}).values() if isinstance(v, str)}
        except (ValueError, AttributeError, UnicodeDecodeError):
            continue  # not an index transformers could read either
    shards = [folder / name for name in named if (folder / name).is_file()]
    return shards + [p for p in (folder / "additional_chat_templates").glob("*.jinja") if p.is_file()]


def data_digest(folder: Path) -> str:
    """A digest over every file of a data folder (names and contents; MNIST's IDX files have no suffix)."""
    return _files_digest(folder, [p for p in folder.rglob("*") if p.is_file()], "data folder", "files")


def _files_digest(folder: Path, files: list[Path], what: str, kind: str) -> str:
    if not files:
        raise UserError(f"{what} {folder}: no {kind} in it")
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(f"{p.relative_to(folder)}\0{file_sha256(p)}\0".encode())
    return h.hexdigest()[:32]


class Identities:
    """Model identities for one outputs folder (hub revisions are recorded there)."""

    def __init__(self, outputs: Path | str, backends: dict | None = None, provisional: bool = False):
        self.revisions_file = Path(outputs) / "hub_revisions.json"
        self.backends = backends or {}
        self.provisional = provisional  # planning only (`subl plan`, diff, status): an unresolvable hub id is
        # "@unresolved", not an error, and no pin is recorded
        self._memo: dict[str, str] = {}

    def model(self, ref: str) -> str:
        if ref not in self._memo:
            self._memo[ref] = self._identify(ref)
        return self._memo[ref]

    def _identify(self, ref: str) -> str:
        name = backend_name(ref)
        if name != "local":  # the backend's name is the spec's label for it: not part of what answers
            cfg = self.backends.get(name)
            return f"hosted:{getattr(cfg, 'kind', 'openai')}@{hosted_endpoint(cfg)}:{hosted_model_id(ref)}"
        from backends.embedded import EMBEDDED, resolve

        path = Path(resolve(ref))
        if path.exists() and not path.is_dir():
            raise UserError(f"{ref}: a file, not a model folder (a hub id, a folder from save_pretrained, or an "
                            "embedded name)")
        if ref in EMBEDDED or path.exists():
            if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
                raise UserError(f"{ref}: a PEFT adapter folder (adapter_config.json, no config.json); transformers "
                                "would load the base it names unpinned, which no key covers: merge the adapter into "
                                "its base (merge_and_unload, save_pretrained) and name that folder")
            try:
                end = folder_marker(path)
            except (ValueError, AttributeError) as e:
                raise UserError(f"{ref}: its tokenizer files are not valid JSON objects ({e})") from None
            return f"weights:{folder_digest(path)}{end}"
        revision = self.hub_revision(ref)
        return f"hub:{ref}@{revision}{hub_marker(ref, revision, self.provisional)}"

    def hub_revision(self, repo_id: str, repo_type: str = "model") -> str:
        """The revision recorded for a hub id, else the one it resolves to now (then recorded)."""
        recorded, entry = self._revisions(), repo_id if repo_type == "model" else f"{repo_type}:{repo_id}"
        if entry in recorded:
            return recorded[entry]
        # the hub's newest first (a deleted pin moves there), the local cache's when the hub is out of reach
        sha = _remote_revision(repo_id, repo_type) or _cached_revision(repo_id, repo_type)
        if self.provisional:  # planning only: nothing is written, the run records the pin
            return sha or UNRESOLVED
        if not sha:
            raise UserError(f"{repo_type} {repo_id}: cannot resolve its hub revision (not in the local hub cache, "
                            "and the hub cannot be reached); download it once or name a local file")
        return self._record(entry, sha)

    def _record(self, entry: str, sha: str) -> str:
        """Add one pin under a lock, re-reading the file first: two runs into one folder each keep the other's
        pins, and a pin already recorded by the other run wins (every later key names it)."""
        import fcntl

        self.revisions_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.revisions_file.with_name(".hub_revisions.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            recorded = self._revisions()
            recorded.setdefault(entry, sha)
            tmp = self.revisions_file.with_name(self.revisions_file.name + ".tmp")
            tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True))
            os.replace(tmp, self.revisions_file)
        return recorded[entry]

    def _revisions(self) -> dict:
        """The recorded pins; a damaged file is one line (read as none, every pin would move and be rewritten)."""
        try:
            text = self.revisions_file.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.revisions_file}: cannot read it ({e})") from None
        try:
            pins = json.loads(text)
        except ValueError as e:
            raise UserError(f"{self.revisions_file}: not valid JSON ({e}); fix it, or delete it to pin every hub "
                            "id anew") from None
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise UserError(f"{self.revisions_file}: not a JSON object of hub id -> revision; fix it, or delete it "
                            "to pin every hub id anew")
        return pins


UNRESOLVED = "unresolved"


def hub_marker(repo_id: str, revision: str, provisional: bool) -> str:
    """backends.turn_end.marker of a hub model's tokenizer files at its pinned revision (downloaded: a few KB,
    and tokenizer.json where the config does not list the added tokens); planning reads the local hub cache
    only, and a model not in it is taken as ending turns with eos."""
    if revision == UNRESOLVED:
        return ""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RevisionNotFoundError

    texts: dict[str, str] = {}
    for name in FILES:
        if name != FILES[0] and FILES[0] not in texts or name == FILES[3] and not needs_tokenizer_json(texts[FILES[0]]):
            continue
        try:
            texts[name] = Path(hf_hub_download(repo_id, name, revision=revision,
                                               local_files_only=provisional)).read_text()
        except RemoteEntryNotFoundError:
            continue
        except RevisionNotFoundError:  # its first line is only "404 Client Error. (Request ID: ...)"
            raise UserError(f"model {repo_id}: the hub no longer has revision {revision}, its pin in "
                            "hub_revisions.json; delete that entry to pin the hub's newest (its stages then run "
                            "again)") from None
        except Exception as e:  # not cached and the hub out of reach, gated, ...
            if provisional or name != FILES[0]:
                continue
            raise UserError(f"model {repo_id}: cannot read its {name} at revision {revision} "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if name == FILES[0] and not _json_object(texts[name]):
            raise UserError(f"model {repo_id}: its {name} at revision {revision} is not a JSON object")
    if FILES[0] not in texts:
        return ""
    try:
        return text_marker(*(texts.get(n) for n in FILES))
    except (ValueError, AttributeError) as e:
        raise UserError(f"model {repo_id}: its tokenizer files at revision {revision} are not valid ({e})") from None


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _cached_revision(repo_id: str, repo_type: str = "model") -> str | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def _remote_revision(repo_id: str, repo_type: str = "model") -> str | None:
    try:
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            return None

        return HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10).sha
    except Exception:  # offline, unknown id, gated: the caller says what to do
        return None
