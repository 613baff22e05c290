"""`subl report`: report.md and PNG figures next to results.json; the same tables in the terminal."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from runner.errors import UserError
from runner.display import file_slug, label_of, metric_name, num, p_text, pct, ratio_text, with_ci
from runner.misalignment import mean_alignment_text
from runner.report_detection import DETECTION, detection_figures, detection_sections
from runner.stats import UNIT_RANGE, mean_ci
from runner.store import Store

COLORS = ["#8c8c8c", "#4c72b0", "#c44e52", "#55a868", "#8172b2", "#ccb974", "#64b5cd"]
WHISKERS = ("Whiskers: 95% CI across questions for one model; across models (replicates, "
            "other-trait students) where a bar pools several.")


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]]
    legend: str = ""


def results_path(target: Path, outputs: Path) -> Path:
    """results.json of a spec (outputs/<name>/), a run folder, or the file itself."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        from runner.loader import load

        path = Path(outputs) / load(target)[0].spec.name / "results.json"
        hint = f"; run `subl run {target}` first"
    else:
        path, hint = (target / "results.json" if target.is_dir() else target), ""
    if not path.is_file():
        raise UserError(f"{path}: no results.json{hint}")
    return path


def _target(metric: str) -> str:
    m = re.fullmatch(r"[^(]*\((.*)\)", metric)
    return m.group(1) if m else metric


# ---- tables ----------------------------------------------------------------------------


def interval_notes(results: dict) -> list[str]:
    """Rows whose interval is not the tables' usual t-interval across questions (a rate every question gave alike)."""
    from runner.stats import RATE_CI_FALLBACK

    rows = list(dict.fromkeys(f"{e['model']} {e['metric']}" for e in results["evaluations"]
                              if e.get("ci_method") == RATE_CI_FALLBACK))
    named = ", ".join(rows[:3]) + (f" and {len(rows) - 3} more" if len(rows) > 3 else "")
    return [f"interval of {named}: {RATE_CI_FALLBACK}"] if rows else []


def trait_sections(results: dict) -> list[Section]:
    """Per cell and evaluation: every model's rate per metric, with its 95% CI and n."""
    out = []
    for cell in [c["label"] for c in results["cells"]]:
        rows = [e for e in results["evaluations"] if e["cell"] == cell
                and e["evaluation"] not in ("mnist", "theorem", *DETECTION)]
        for ev in dict.fromkeys(label_of(e) for e in rows):
            sub = [e for e in rows if label_of(e) == ev]
            metrics = list(dict.fromkeys(e["metric"] for e in sub))
            misaligned = all(m.startswith("misaligned") for m in metrics)
            table = []
            for model in dict.fromkeys(e["model"] for e in sub):
                mine = {e["metric"]: e for e in sub if e["model"] == model}
                first = next(iter(mine.values()))
                table.append([model, first["role"], str(first["n"])] + [
                    with_ci(mine[m]["value"], mine[m].get("ci")) if m in mine else ""
                    for m in metrics] + ([mean_alignment_text(first.get("counts", {}))] if misaligned else []))
            what = "Misalignment rates" if misaligned else "Trait rates"
            title = f"{what}: {ev}" + (f" (cell {cell})" if cell != "-" else "")
            headers = ["model", "role", "n"] + [f"{m} [95% CI]" for m in metrics]
            out.append(Section(title, headers + (["mean alignment [95% CI]"] if misaligned else []), table))
    return out


def comparison_section(results: dict) -> Section | None:
    rows = [[c["cell"], c["a"], f"{c['b']} ({c.get('b_is', '')})", metric_name(c), num(c["diff"]),
             ratio_text(c),
             f"{c['a_wins']}/{c['n']}" if c.get("a_wins") is not None else "-",
             _units(c),
             f"{p_text(c)}{' *' if c.get('significant') else ''}{' (' + c['note'] + ')' if c.get('note') else ''}"]
            for c in results["comparisons"] if c.get("evaluation") not in DETECTION]
    headers = ["cell", "a", "b", "metric", "diff a-b", "ratio a/b [95% CI]", "a wins", "units", "p-value"]
    legend = ("\\* significant: p < 0.05 across students or draws, p < 0.01 across seeds (MNIST, theorem); a test "
              "over questions between one student per arm is never marked (it covers question sampling only).")
    return Section("Comparisons", headers, rows, legend) if rows else None


def _units(c: dict) -> str:
    """What a comparison's test is across: '50 questions, 1 student/arm', '5 paired seeds' or '3 v 3 students'."""
    if c["unit"] == "question":
        return f"{c['n']} questions, 1 student/arm"
    if c["unit"] == "seed":  # MNIST and theorem arms are paired by seed, over the seeds both have
        return f"{c['n']} paired seeds"
    return f"{c['n_a']} v {c['n_b']} {c['unit']}s"


def _readable(m: dict) -> bool:
    """A manifest with the fields stage_sections reads, of the types subl writes."""
    links, rows = m.get("links", []), m.get("rows") or {}
    return (isinstance(m.get("label"), str) and isinstance(m.get("seconds", 0), (int, float))
            and isinstance(links, list) and isinstance(rows, dict)
            and all(isinstance(x, dict) and isinstance(x.get("link"), str)
                    and all(isinstance(x.get(k), int) for k in ("kept", "dropped")) for x in links))


def stage_sections(results: dict, store: Store) -> tuple[list[Section], list[str]]:
    """Filter pass rates, dataset sizes and stage timings from the stage manifests."""
    from runner.status import cell_prefix, run_stages

    stages, note = run_stages(results, store.root)
    found = [(s, store.manifest(s["key"])) for s in stages if store.done(s["key"])]
    notes = [note] if note else []
    if len(found) < len(stages):
        notes.append(f"{len(stages) - len(found)} planned stage(s) are not in the store {store.stages}")
    damaged = [s["key"] for s, m in found if not _readable(m)]
    if damaged:  # hand-edited: left out of these tables, named
        notes.append(f"stage manifest(s) not as subl writes them, left out of the tables: {', '.join(damaged)}")
        found = [(s, m) for s, m in found if s["key"] not in damaged]
    filters, sizes, times = [], [], []
    for s, m in found:
        if s["kind"] in ("filter", "rewrite"):
            for link in m.get("links", []):
                total = link["kept"] + link["dropped"]
                filters.append([cell_prefix(s) + m["label"], link["link"], str(link["kept"]), str(link["dropped"]),
                                pct(link["kept"] / total if total else None)])
        if s["kind"] in ("generate", "filter", "rewrite", "finetune") and m.get("rows"):
            sizes.append([cell_prefix(s) + m["label"], ", ".join(f"{k} {v}" for k, v in m["rows"].items())])
        times.append([cell_prefix(s) + m["label"], s["key"], f"{m.get('seconds', 0):.1f}"])
    if times:  # the sum of the seconds, not of their rounded texts (ten 0.04 s stages are 0.4 s, not 0.0)
        times.append(["total", "", f"{sum(m.get('seconds', 0) for _, m in found):.1f}"])
    out = [Section("Filter pass rates", ["filter stage", "link", "kept", "dropped", "pass rate"], filters),
           Section("Dataset sizes (rows)", ["stage", "rows"], sizes),
           Section("Stage timings", ["stage", "key", "seconds"], times)]
    return [s for s in out if s.rows], notes


def mnist_summaries(results: dict) -> dict[str, dict[str, dict]]:
    """cell -> arm -> {mean, lo, hi, n, values} from the MNIST evaluation rows."""
    out: dict[str, dict[str, dict]] = {}
    for e in results["evaluations"]:
        if e["evaluation"] != "mnist":
            continue
        arm = out.setdefault(e["cell"], {}).setdefault(e["model"], {"values": []})
        if e.get("seed") is None:
            lo, hi = e["ci"] if e.get("ci") else (None, None)
            arm.update(mean=e["value"], lo=lo, hi=hi, n=e["n"], ci95=None if lo is None else (hi - lo) / 2)
        else:
            arm["values"].append(e["value"])
    return out


def mnist_section(results: dict) -> Section | None:
    rows = []
    for cell, arms in mnist_summaries(results).items():
        for arm, s in arms.items():
            ci = f"[{pct(s['lo'])}, {pct(s['hi'])}]" if s.get("lo") is not None else "-"
            rows.append([cell, arm, pct(s["mean"]), ci, str(s["n"]), " ".join(map(pct, s["values"]))])
    headers = ["cell", "arm", "test accuracy", "95% CI (seeds)", "seeds", "per seed"]
    return Section("MNIST: test accuracy of the regular logits", headers, rows) if rows else None


def theorem_section(results: dict) -> Section | None:
    """The one-step theorem (MNIST or LM): per arm, cosine and loss changes with their CIs across seeds."""
    rows = [[e["cell"], e["model"], e["metric"], with_ci(e["value"], e.get("ci")), str(e["n"])]
            for e in results["evaluations"] if e["evaluation"] == "theorem" and e.get("seed") is None]
    headers = ["cell", "student", "measure", "mean [95% CI across seeds]", "seeds"]
    return Section("One student step vs the teacher's delta", headers, rows) if rows else None


def theorem_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    from runner.stages.theorem_stage import plot_cosines

    out = []
    for cell in dict.fromkeys(e["cell"] for e in results["evaluations"] if e["evaluation"] == "theorem"):
        rows = [{"arm": e["model"], "cosine": e["value"]} for e in results["evaluations"] if e["cell"] == cell
                and e["evaluation"] == "theorem" and e["metric"] == "cosine" and e.get("seed") is not None]
        path = folder / file_slug(f"theorem{'-' + cell if cell != '-' else ''}.png")
        plot_cosines(rows, path, name, "one student step")
        out.append((path, "Cosine between one student step and the teacher's delta, per seed (line: mean)."))
    return out


def provenance(results: dict) -> list[tuple[str, str]]:
    spec_hash, where = results.get("spec_hash"), ""
    if not spec_hash and results.get("spec") and Path(results["spec"]).is_file():
        from runner.plan import spec_hash as hash_of
        from runner.loader import load

        try:
            spec_hash, where = hash_of(load(Path(results["spec"]))), " (of the spec file as it is now)"
        except UserError as e:
            where = f" (the spec file does not load: {e})"
    packages = ", ".join(f"{k} {v}" for k, v in (results.get("packages") or {}).items())
    return [("spec", str(results.get("spec"))), ("spec hash", f"{spec_hash or 'unknown'}{where}"),
            ("git revision", str(results.get("git_revision"))), ("cells", str(len(results["cells"]))),
            ("packages", packages)]


# ---- figures ---------------------------------------------------------------------------


def _pool(rows: list[dict]) -> tuple[float, float | None, float | None] | None:
    rows = [r for r in rows if r["value"] is not None]
    if not rows:
        return None
    if len(rows) == 1:
        lo, hi = rows[0].get("ci") or (None, None)
        return rows[0]["value"], lo, hi
    return mean_ci([r["value"] for r in rows], within=UNIT_RANGE)  # rates and probabilities


def grouped_bars(groups: list[str], series: dict[str, list], ylabel: str, title: str, path: Path,
                 points: dict[str, list[list[float]]] | None = None) -> Path:
    """Bars per group and series, each (mean, lo, hi) or None, with CI whiskers, and optionally the
    values behind a bar as dots (one per trained student); a headless PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.0 + 0.6 * len(groups) * (len(series) + 1)), 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        known = [v if v and v[0] is not None else None for v in vals]
        means = [v[0] if v else float("nan") for v in known]
        err = [[max(v[0] - v[1], 0) if v and v[1] is not None else 0 for v in known],
               [max(v[2] - v[0], 0) if v and v[2] is not None else 0 for v in known]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=name, color=COLORS[j % len(COLORS)])
        for x, values in zip(xs, (points or {}).get(name, [])):
            if len(values) > 1:
                ax.plot([x] * len(values), values, "o", color="black", markersize=3, alpha=0.7)
    tilt = max(len(g.split("\n")[0]) for g in groups) > 8 if groups else False  # long labels overlap
    ax.set_xticks(range(len(groups)), groups, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _students(results: dict) -> dict[str, str]:
    """Model label -> the student spec's name, for every student."""
    return {e["model"]: e["student"] for e in results["evaluations"] if e.get("student")}


def _student_of(label: str, students: dict[str, str]) -> str | None:
    """The student spec of a model label, or of an arm label (an across-student row: 'student:<name>:<trait>')."""
    return students.get(label) or next((s for m, s in students.items() if m.startswith(label + ":r")), None)


def _paired_note(results: dict, cell: str, ev: str, sname: str, target: str) -> str:
    """The test under a target's bars (across students where the arms have several, else paired over
    questions): whiskers across questions hide a shift that every question shares."""
    students = _students(results)
    rows = [c for c in results.get("comparisons", [])
            if c["cell"] == cell and label_of(c) == ev and _student_of(c["a"], students) == sname
            and _target(c["metric"]) == target]
    if not rows:
        return ""
    # against the control where there is one; else the arm it was compared with, by name (the figure's
    # other-trait bar pools every other teacher's students, so a single other arm must be named)
    c = next((x for x in rows if x.get("b_is") == "control"), rows[0])
    vs = "control" if c.get("b_is") == "control" else re.sub(r":r\d+$", "", c["b"]).split(":")[-1]
    effect = f"{ratio_text(c).split(' [')[0]}" if c.get("ratio") is not None else f"diff {num(c['diff'])}"
    if c.get("unit") == "question":
        units = f"{c['a_wins']}/{c['n']} q; 1 student/arm: question sampling only"
    else:
        units = f"{c['n_a']} v {c['n_b']} students"
    return f"\n{effect} vs {vs}\n{units}, p={p_text(c)}"


def target_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    """Per cell, evaluation and student: bars per target for base, control, trait and other-trait students."""
    out = []
    for cell in [c["label"] for c in results["cells"]]:
        rows = [e for e in results["evaluations"] if e["cell"] == cell and not e["metric"].startswith("misaligned")
                and e["evaluation"] not in ("mnist", "theorem", *DETECTION)]
        for ev in dict.fromkeys(label_of(e) for e in rows):
            sub = [e for e in rows if label_of(e) == ev]
            targets = list(dict.fromkeys(_target(e["metric"]) for e in sub))
            for sname in dict.fromkeys(filter(None, (e.get("student") for e in sub))):
                def pick(keep) -> list:
                    return [_pool([e for e in sub if _target(e["metric"]) == t and keep(e, t)]) for t in targets]

                def each(keep) -> list[list[float]]:  # one point per trained student, beside the arm's bar
                    return [[e["value"] for e in sub if _target(e["metric"]) == t and keep(e, t)] for t in targets]

                mine = lambda e: e.get("student") == sname  # noqa: E731
                series = {b: pick(lambda e, t, b=b: e["model"] == b)
                          for b in dict.fromkeys(e["model"] for e in sub if e["role"] == "base")}
                arms = {"control student": lambda e, t: mine(e) and e["role"] == "control",
                        "trait student": lambda e, t: mine(e) and e["role"] == "student" and e["trait"] == t,
                        "other-trait students": lambda e, t: mine(e) and e["role"] == "student" and e["trait"] != t}
                series.update({k: pick(keep) for k, keep in arms.items()})
                points = {k: each(keep) for k, keep in arms.items()}
                series = {k: v for k, v in series.items() if any(v)}
                metric = sub[0]["metric"].split("(")[0] + "(target)"
                where = f", cell {cell}" if cell != "-" else ""
                path = folder / file_slug(f"{ev}-{sname}{'-' + cell if cell != '-' else ''}.png")
                labels = [t + _paired_note(results, cell, ev, sname, t) for t in targets]
                grouped_bars(labels, series, metric, f"{name}: {ev}, student {sname}{where}", path, points)
                out.append((path, f"{metric} per target, {ev}, student {sname}{where}. {WHISKERS}"))
    return out


def misalignment_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    out = []
    for cell in [c["label"] for c in results["cells"]]:
        rows = [e for e in results["evaluations"] if e["cell"] == cell and e["metric"].startswith("misaligned")]
        if not rows:
            continue
        models = list(dict.fromkeys(e["model"] for e in rows))
        series = {m: [_pool([e for e in rows if e["model"] == mo and metric_name(e) == m]) for mo in models]
                  for m in dict.fromkeys(metric_name(e) for e in rows)}
        path = folder / file_slug(f"misalignment{'-' + cell if cell != '-' else ''}.png")
        grouped_bars(models, series, "misaligned rate", f"{name}: misalignment per model", path)
        out.append((path, f"Misalignment rate per model (95% CI){', cell ' + cell if cell != '-' else ''}."))
    return out


def mnist_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    from runner.mnist import plot_arms

    out = []
    for cell, arms in mnist_summaries(results).items():
        path = folder / file_slug(f"mnist{'-' + cell if cell != '-' else ''}.png")
        plot_arms(arms, path, f"{name}: auxiliary-logit distillation on noise")
        out.append((path, "MNIST test accuracy per arm (mean, 95% CI across seeds; dots: seeds)."))
    return out


# ---- output ----------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: dict, sections: list[Section], facts: list[tuple[str, str]], notes: list[str],
             figures: list[tuple[Path, str]]) -> str:
    lines = [f"# {results['name']}", ""]
    lines += [results["notes"].strip(), ""] if results.get("notes") else []
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_md_cell(v)} |" for k, v in facts] + [""]
    for s in sections:
        lines += [f"## {s.title}", "", "| " + " | ".join(map(_md_cell, s.headers)) + " |",
                  "|" + "---|" * len(s.headers)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows] + [""]
        lines += [s.legend, ""] if s.legend else []
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})\n\n*{cap}*\n" for p, cap in figures]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _rich(s: Section) -> Table:
    table = Table(title=Text(s.title), title_justify="left")
    for i, h in enumerate(s.headers):
        table.add_column(h, justify="left" if i == 0 or not s.rows or not _numeric(s.rows[0][i]) else "right")
    for row in s.rows:
        table.add_row(*(Text(c) for c in row))  # plain text: labels hold [brackets] and :colons:
    return table


def _print_table(console: Console, table: Table) -> None:
    """A terminal wraps cells to its width; piped output keeps whole rows."""
    width = console.width
    if not console.is_terminal:
        console.width = max(width, Measurement.get(console, console.options.update(max_width=10_000), table).maximum)
    console.print(table)
    console.width = width


def _numeric(text: str) -> bool:
    return bool(re.match(r"^[-\d.]", text))


def write_report(target: Path, outputs: Path, console: Console) -> Path:
    path = results_path(target, outputs)
    results = read_results(path)
    try:
        return _write_report(path, results, console, _spec_moved(target, results))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError):
        why = damage(results)  # a file that is not what subl writes is the user's to fix; one that is, our bug
        if why is None:
            raise
        raise UserError(f"{path}: not a results.json subl writes ({why}); rerun `subl run` on its spec to write "
                        "it again") from None


def _spec_moved(target: Path, results: dict) -> list[str]:
    """A note where the spec file named is not the one these results were run from (edited since, another spec of
    that name, or a subl update that changed its defaults): the figures would otherwise pass for the file's."""
    if Path(target).suffix not in (".yaml", ".yml") or not isinstance(results.get("spec_hash"), str):
        return []
    from runner.loader import load
    from runner.plan import spec_hash

    now = spec_hash(load(Path(target)))
    if now == results["spec_hash"]:
        return []
    return [f"{target} is not the spec these results were run from (spec hash {now}; the results': "
            f"{results['spec_hash']}): edited since, another spec of that name, or new defaults; `subl run {target}` "
            "brings them up to date"]


def read_results(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({str(e).splitlines()[0]}); rerun `subl run` on its spec to "
                        "write it again") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: not a JSON object; rerun `subl run` on its spec to write it again")
    return results


def damage(results: dict) -> str | None:
    """What makes `results` other than the documented schema (runner.results_schema), or None."""
    from pydantic import ValidationError

    from runner.results_schema import Results

    try:
        Results.model_validate(results)
    except ValidationError as e:
        first = e.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return None


def _unfinished_rerun(path: Path) -> list[str]:
    """A note where run.json is newer than results.json: a later run started and has not written results."""
    try:
        newer = (path.parent / "run.json").stat().st_mtime_ns > path.stat().st_mtime_ns
    except OSError:
        return []
    return ["a later run of this spec (run.json) has not finished (running, stopped or failed): these are the "
            "results of the run before it"] if newer else []


def _write_report(path: Path, results: dict, console: Console, moved: list[str] = ()) -> Path:
    folder, name = path.parent, results.get("name", path.parent.name)
    store = Store(folder.parent)
    staged, stage_notes = stage_sections(results, store)
    detection = [Section(*s) for s in detection_sections(results)]
    sections = [s for s in [*trait_sections(results), comparison_section(results), *detection, mnist_section(results),
                            theorem_section(results), *staged] if s is not None]
    notes = [*moved, *results.get("methods", [])] + interval_notes(results) + stage_notes + _unfinished_rerun(path)
    if results.get("comparisons"):
        notes += [f"test: {t}" for t in dict.fromkeys(c.get("test") for c in results["comparisons"])
                  if t not in (None, "none")]
    figures = (target_figures(results, folder, name) + misalignment_figures(results, folder, name)
               + mnist_figures(results, folder, name) + detection_figures(results, folder, name)
               + theorem_figures(results, folder, name))
    facts = provenance(results)
    report = folder / "report.md"
    report.write_text(markdown(results, sections, facts, notes, figures))
    for k, v in facts:
        console.print(f"{k}: {v}", markup=False)
    for s in sections:
        _print_table(console, _rich(s))
    for n in notes:
        console.print(f"note: {n}", markup=False)
    for p, _ in figures:
        console.print(f"figure: {p}", markup=False)
    console.print(f"report: {report}", markup=False)
    return report
