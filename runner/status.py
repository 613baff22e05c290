"""`subl status`: every run under outputs/ and each of its stages, done, partial or failed."""
from __future__ import annotations

import json
import re
import time
from functools import cache
from pathlib import Path

from runner.errors import UserError
from runner.store import Store, package_versions, read_jsonl

FAILED_JOB_STATES = ("failed", "cancelled", "canceled", "expired")


def old_scheme_stages(store: Store) -> list[str]:
    """Finished stages whose manifest predates typed stages (key scheme 1): never reused now."""
    from runner.stages import KEY_SCHEME

    out = []
    for key in _stage_keys(store):
        if store.done(key):
            try:
                scheme = store.manifest(key).get("key_scheme", 1)
            except (OSError, ValueError):
                continue
            if scheme != KEY_SCHEME:
                out.append(key)
    return out


def cell_prefix(stage: dict) -> str:
    """"[cell] " for a stage of a matrix cell, else nothing."""
    return f"[{stage['cell']}] " if stage.get("cell", "-") != "-" else ""


def run_stages(info: dict, store_root: Path = Path("outputs")) -> tuple[list[dict], str | None]:
    """A run's stages: as recorded in its results, else planned from its spec file as it is now."""
    stages = info.get("stages")
    if stages:
        if isinstance(stages, list) and all(isinstance(x, dict) and isinstance(x.get("key"), str)
                                            and all(isinstance(x.get(f, ""), str) for f in ("label", "cell"))
                                            for x in stages):
            return stages, None
        return [], "stages unknown: the run file's stages are not a list of {key, label}"
    if not isinstance(info.get("spec"), str):
        return [], "stages unknown: the run file is unreadable or names no spec"
    from runner.loader import load
    from runner.plan import build, plan_stages

    try:
        stages = plan_stages(build(load(Path(info["spec"])), store_root, provisional=True))
        return stages, "stages planned from the spec file as it is now"
    except (UserError, KeyError, TypeError) as e:
        return [], f"stages unknown: {e}"


def moved_keys(info: dict, stages: list[dict], store_root: Path) -> tuple[set[str], str | None]:
    """Recorded stages that the run's spec file no longer plans (a subl update moved their keys, or the spec
    changed): `subl run` builds them anew, so they are not "done" for that spec. With a line saying why."""
    spec = info.get("spec")
    if not isinstance(spec, str) or not Path(spec).is_file():
        return set(), None
    from runner.loader import load
    from runner.plan import build, plan_stages, spec_hash

    try:
        cells = load(Path(spec))
        planned = {s["key"] for s in plan_stages(build(cells, store_root, provisional=True))}
    except (UserError, KeyError, TypeError) as e:
        return set(), f"the spec file does not plan now: {e}"
    moved = {s["key"] for s in stages} - planned
    if not moved:
        return set(), None
    why = ("this subl keys them otherwise (an update moved their keys)" if spec_hash(cells) == info.get("spec_hash")
           else "the spec file (or a default) changed since the run")
    return moved, (f"{len(moved)} of these stages are not in the spec's plan now: {why}; `subl run {spec}` builds "
                   "what the plan needs anew")


# ---- one stage folder ------------------------------------------------------------------


def size_of(path: Path) -> int:
    total = 0
    for f in path.rglob("*") if path.is_dir() else []:
        try:
            total += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:  # replaced or removed by a running build while we walked
            pass
    return total


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


def hosted_jobs(folder: Path) -> list[dict]:
    """Hosted fine-tuning jobs and batches a backend recorded in the folder, oldest first: {id, state, error}."""
    out = []
    for name in ("hosted_job.json", "hosted_batches.json"):
        data = _json_file(folder / name, {})
        if not isinstance(data, dict):
            data = {"job_id": f"? ({name} unreadable)"}
        if name == "hosted_batches.json":
            out += [{"id": b.get("batch_id", "?"), "kind": "batch", "state": b.get("status", "created"), "error": None}
                    for b in data.values() if isinstance(b, dict)]
            continue
        previous = data.get("previous_jobs") if isinstance(data.get("previous_jobs"), list) else []
        for j in [j for j in previous if isinstance(j, dict)] + ([data] if data.get("job_id") else []):
            out.append({"id": j.get("job_id", "?"), "kind": "job", "state": j.get("status", "?"), "error": j.get("error")})
    return out


COMPUTE_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate")


@cache
def _installed() -> dict[str, str]:
    return package_versions()


def version_change(recorded) -> str | None:
    """'built with torch 2.12.0 (now 2.13.0)' for the compute packages a stage was built with in another version
    than the one installed (keys leave versions out, so such a stage is still reused)."""
    if not isinstance(recorded, dict):
        return None
    now = _installed()
    moved = [f"{p} {recorded[p]} (now {now[p]})" for p in COMPUTE_PACKAGES
             if isinstance(recorded.get(p), str) and p in now and recorded[p] != now[p]]
    return "built with " + ", ".join(moved) if moved else None


def _json_file(path: Path, default):
    """A JSON file subl wrote, or None where it is damaged (not JSON, not UTF-8); `default` where absent."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def _line_count(path: Path) -> int | str:
    """Complete rows of a JSONL file a stage is writing (a torn last line is not one); '?' where unreadable."""
    try:
        return len(read_jsonl(path))
    except (UnicodeDecodeError, ValueError):
        return "?"


def inspect(store: Store, key: str, total: int | None = None) -> dict:
    """State (done, partial, failed, missing), size and a one-line detail of one stage; read again where a
    running build moved it while it was read (a partial folder renamed into place as it finished)."""
    for _ in range(3):
        try:
            return _inspect(store, key, total)
        except FileNotFoundError:
            continue
    return {"state": "partial", "label": None, "size": 0, "detail": "changing while read"}


def _inspect(store: Store, key: str, total: int | None) -> dict:
    from runner.stages import KEY_SCHEME

    done, part = store.path(key), store.partial(key)
    if (done / "manifest.json").is_file():
        m = _json_file(done / "manifest.json", None)
        if not isinstance(m, dict) or not isinstance(m.get("seconds", 0), (int, float)):
            return {"state": "damaged", "label": None, "size": size_of(done), "detail": "manifest.json unreadable"}
        rows = ", ".join(f"{k} {v}" for k, v in m["rows"].items()) if isinstance(m.get("rows"), dict) else ""
        jobs = [f"{j['kind']} {j['id']}: {j['state']}" for j in hosted_jobs(done)]
        node = f", node {m['node']}" if m.get("node") else ""  # a Ray node's address
        where = f"on {m['host']} ({m.get('executor', 'local')}{node})" if m.get("host") else ""
        old = ["made by an older subl (key scheme 1): not reused; its spec reruns this stage under a new key"
               ] if m.get("key_scheme", 1) != KEY_SCHEME else []
        versions = [v] if (v := version_change(m.get("packages"))) else []
        detail = "; ".join([f"{m.get('seconds', 0):.1f} s"] + ([where] if where else []) + ([rows] if rows else [])
                           + jobs + versions + old)
        return {"state": "done" if not old else "stale", "label": m.get("label"), "size": size_of(done),
                "detail": detail}
    if not part.is_dir():
        return {"state": "missing", "label": None, "size": 0, "detail": "not started"}
    found = {"label": None, "size": size_of(part), **_partial(part, total)}
    if not part.is_dir():
        raise FileNotFoundError(part)  # it finished (or was removed) while read: look again
    return found


def _partial(folder: Path, total: int | None) -> dict:
    bits, state = [], "partial"
    if (folder / "rows.jsonl").is_file():
        bits.append(f"rows {_line_count(folder / 'rows.jsonl')}" + (f"/{total}" if total else ""))
    checkpoints = sorted(folder.rglob("checkpoint-*"), key=lambda p: int("0" + re.sub(r"\D", "", p.name)))
    if checkpoints:
        bits.append(f"at {checkpoints[-1].name}")
    if (folder / "hosted_requests.jsonl").is_file():
        bits.append(f"{_line_count(folder / 'hosted_requests.jsonl')} hosted requests answered")
    jobs = hosted_jobs(folder)
    bits += [f"{j['kind']} {j['id']}: {j['state']}" for j in jobs]
    last = [j for j in jobs if j["kind"] == "job"][-1:]
    if last and str(last[0]["state"]).lower() in FAILED_JOB_STATES:  # a rerun would start a new job
        state = "failed"
        bits.append(f"error: {last[0]['error'] or 'no reason recorded'}")
    for name in ("error.txt", "error.json"):  # written by a stage that failed, if it says why
        if (folder / name).is_file():
            state = "failed"
            why = (folder / name).read_text(errors="replace").strip().splitlines() or ["no message"]
            bits.append(f"error: {why[-1]}")
    files = [f for f in folder.rglob("*") if f.is_file()]
    if files:
        bits.append(f"last write {_ago(time.time() - max(f.stat().st_mtime for f in files))} ago")
    return {"state": state, "detail": "; ".join(b for b in bits if b) or "started, nothing written yet"}


# ---- the whole store -------------------------------------------------------------------


def _table(rows: list[tuple]) -> list[str]:
    """Rows of (state, label, key, size, detail) as aligned lines."""
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["    " + "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                                r[3].rjust(widths[3]), r[4]]).rstrip() for r in rows]


def _stage_keys(store: Store) -> list[str]:
    if not store.stages.is_dir():
        return []
    keys = [p.name[1:-len(".partial")] if p.name.endswith(".partial") else p.name for p in store.stages.iterdir()
            if p.is_dir()]  # stages and partial folders; not locks or stray files
    return sorted(set(k for k in keys if not k.startswith(".")))


def _latest(*paths: Path) -> Path | None:
    """The most recently written of the files that exist (the first where written in the same instant)."""
    found = []
    for p in paths:
        try:
            found.append((-p.stat().st_mtime_ns, len(found), p))
        except OSError:
            pass
    return min(found)[2] if found else None


def _runs(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "stages"):
        path = _latest(folder / "results.json", folder / "run.json")  # run.json newer: a run in progress or cut off
        if path is not None:
            info = _json_file(path, None)
            out.append((path, info if isinstance(info, dict) else {"spec": None, "unreadable": True}))
    return out


def _run_state(path: Path, info: dict) -> str:
    """run.json newer than results.json (or alone): the run that wrote it has not written its results."""
    if info.get("unreadable"):
        return "unreadable"
    return "finished" if path.name == "results.json" else "not finished (running, stopped or failed)"


def _refuse_inner_folder(root: Path) -> None:
    """A run's folder or the stages folder passed for the outputs folder: one line, not 'no stages'."""
    if (root / "results.json").is_file() or (root / "run.json").is_file():
        what = "a run's folder"
    elif any((p / "manifest.json").is_file() or p.name.endswith(".partial") for p in root.iterdir() if p.is_dir()):
        what = "the stages folder"
    else:
        return
    raise UserError(f"{root}: {what}; subl status takes the outputs folder that holds it ({root.resolve().parent})")


def status_lines(root: Path) -> list[str]:
    root = Path(root)
    if root.is_file():
        raise UserError(f"{root}: subl status takes the outputs folder (default outputs/), not a file")
    if not root.is_dir():
        raise UserError(f"{root}: no such outputs folder")
    _refuse_inner_folder(root)
    store, lines, listed, counts = Store(root), [], set(), {}

    def rows(stages: list[dict], moved: set[str] = frozenset()) -> list[tuple]:
        out = []
        for s in stages:
            st = inspect(store, s["key"], s.get("total"))
            if s["key"] in moved and st["state"] == "done":
                st = {**st, "state": "superseded", "detail": st["detail"] + "; not in the spec's plan now"}
            if s["key"] not in listed:  # a stage shared by runs counts once
                counts[st["state"]] = counts.get(st["state"], 0) + 1
                listed.add(s["key"])
            label = s.get("label") or st["label"] or s["key"].split("-")[0]
            out.append((st["state"], cell_prefix(s) + str(label), s["key"], human(st["size"]), st["detail"]))
        return out

    for path, info in _runs(root):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        lines.append(f"run {path.parent.name}: {_run_state(path, info)}: {path} ({when}; spec {info.get('spec')}; "
                     f"git {info.get('git_revision')})")
        stages, note = run_stages(info, root)
        moved, moved_note = moved_keys(info, stages, root) if stages and not note else (set(), None)
        lines += [f"    ({n})" for n in (note, moved_note) if n]
        lines += _table(rows(stages, moved)) if stages else []
    others = [{"key": k} for k in _stage_keys(store) if k not in listed]
    if others:
        lines.append(f"stages in {store.stages} that no run lists ({len(others)}):")
        lines += _table(rows(others))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{summary or 'no stages'}; {human(size_of(root))} on disk under {root}")
    return lines
