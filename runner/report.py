"""Print results.json as terminal tables."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from runner.display import label_of, metric_name, num, p_text, pct, ratio_text, score_text, with_ci
from runner.misalignment import mean_alignment_text
from runner.report_detection import DETECTION, detection_sections


def add_text_row(table: Table, *cells: str) -> None:
    """A row of plain text: labels and specs' words may hold [brackets] and :colons:, never markup."""
    table.add_row(*(Text(str(c)) for c in cells))


def evaluation_table(results: dict, cell: str) -> Table | None:
    """Trait metrics per model; misalignment has its own table (misalignment_table)."""
    rows = [e for e in results["evaluations"] if e["cell"] == cell
            and e["evaluation"] not in ("misalignment", "mnist", "theorem", *DETECTION)]
    if not rows:
        return None
    metrics = list(dict.fromkeys((label_of(e), e["metric"]) for e in rows))
    table = Table(title=f"cell {cell}" if cell != "-" else None)
    table.add_column("model")
    table.add_column("role")
    shared_n = {}  # the n of a column whose models all have one n is named once, in its header
    for ev, metric in metrics:
        kind = next(e["evaluation"] for e in rows if label_of(e) == ev)
        ns = {e.get("n") for e in rows if label_of(e) == ev and e["metric"] == metric}
        shared_n[(ev, metric)] = ns.pop() if len(ns) == 1 else None
        n = f", n={shared_n[(ev, metric)]}" if shared_n[(ev, metric)] is not None else ""
        table.add_column(f"{metric} [95% CI{n}]" + (" (sampled)" if kind == "preference_sample" else "")
                         + (f" ({ev})" if ev != kind else ""), justify="right")
    models = list(dict.fromkeys((e["model"], e["role"]) for e in rows))
    for model, role in models:
        cells = []
        for ev, metric in metrics:
            e = next((x for x in rows if x["model"] == model and label_of(x) == ev and x["metric"] == metric), None)
            n = f" n={e.get('n')}" if e and shared_n[(ev, metric)] is None else ""
            cells.append(with_ci(e["value"], e.get("ci")) + n if e else "")  # 3 figures: 0.00135 vs 0.00144
        add_text_row(table, model, role, *cells)
    return table


def comparison_table(results: dict, cell: str) -> Table | None:
    rows = [c for c in results["comparisons"] if c["cell"] == cell and c.get("evaluation") not in DETECTION]
    if not rows:
        return None
    table = Table(title="comparisons (a vs b; unit of the test in the last column)")
    for col in ("a", "b", "metric", "ratio a/b [95% CI]", "diff a-b", "a wins", "p-value", "unit"):
        table.add_column(col, justify="right" if col not in ("a", "b", "unit") else "left")
    for c in rows:
        mark = (" *" if c["diff"] > 0 else " (a lower)") if c.get("significant") else ""
        wins = f"{c['a_wins']}/{c['n']}" if c.get("a_wins") is not None else "-"
        add_text_row(table, c["a"], c["b"], metric_name(c), ratio_text(c), num(c["diff"]), wins, p_text(c) + mark,
                     f"{c['unit']} (n_a={c['n_a']}, n_b={c['n_b']})")
    return table


def filter_table(results: dict, cell: str) -> Table | None:
    rows = [f for f in results.get("filters", []) if f["cell"] == cell]
    if not rows:
        return None
    table = Table(title="filters (in chain order)")
    for col in ("rows of", "link", "kept", "dropped", "pass rate", "detail"):
        table.add_column(col, justify="right" if col in ("kept", "dropped", "pass rate") else "left")
    for f in rows:
        add_text_row(table, f["rows"], f["link"], str(f["kept"]), str(f["dropped"]), pct(f["pass_rate"]),
                     link_detail(f.get("detail")))
    return table


def link_detail(d: dict | None) -> str:
    """A link's detail in one cell: a judge's score summary, else its counts (drop reasons, shuffled rows)."""
    if not d:
        return ""
    if d.get("mean") is not None:
        return f"mean {score_text(d['mean'])}, code {d['code']}, refusal {d['refusal']}, unparseable {d['unparseable']}"
    return ", ".join(f"{k} {v}" for k, v in d.items() if not isinstance(v, (dict, list)) and v is not None)


def empty_rows_notes(results: dict) -> list[str]:
    """Teachers none of whose rows passed the whole chain: their students are untrained bases."""
    last: dict[tuple[str, str], dict] = {}
    for f in results.get("filters", []):
        last[(f["cell"], f["rows"])] = f
    return [f"no rows of {rows} passed the filters (cell {cell}): its students are their untrained base model"
            for (cell, rows), f in last.items() if f["kept"] == 0]


def misalignment_tables(results: dict, cell: str) -> list[Table]:
    """One table per misalignment evaluation of the spec (each a model's rows once)."""
    labels = dict.fromkeys(label_of(e) for e in results["evaluations"]
                           if e["cell"] == cell and e["evaluation"] == "misalignment")
    return [misalignment_table(results, cell, label) for label in labels]


def misalignment_table(results: dict, cell: str, label: str | None = None) -> Table | None:
    rows = [e for e in results["evaluations"] if e["cell"] == cell and e["evaluation"] == "misalignment"
            and label in (None, label_of(e))]
    if not rows:
        return None
    named = f" ({label})" if label not in (None, "misalignment") else ""
    table = Table(title=Text(f"misalignment{named}: answers and judge outcomes"))
    for col in ("model", "misaligned [95% CI]", "mean alignment [95% CI]", "answers", "scored", "misaligned",
                "incoherent", "code", "refusal", "unparseable (judge align/coh)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for e in rows:
        c = e["counts"]
        rate = "- (none scored)" if e["value"] is None else with_ci(e["value"], e["ci"], ".1%")
        add_text_row(table, e["model"], rate, mean_alignment_text(c),
                      str(c["answers"]),
                      str(c["scored"]), str(c["misaligned"]), str(c["incoherent"]), str(c["code"]), str(c["refusal"]),
                      f"{c['unparseable']} ({c['unparseable_alignment']}/{c['unparseable_coherence']})")
    return table


def theorem_table(results: dict) -> Table | None:
    rows = [e for e in results["evaluations"] if e["evaluation"] == "theorem" and e.get("seed") is None
            and "@lr=" not in e["metric"]]
    if not rows:
        return None
    table = Table(title="one step of the student vs the teacher's delta (mean, 95% CI across seeds)")
    for col in ("cell", "student", "measure", "mean [95% CI]", "seeds"):
        table.add_column(col)
    for e in rows:
        add_text_row(table, e["cell"], e["model"], e["metric"], with_ci(e["value"], e.get("ci"), ".4g"),
                     str(e["n"]))
    return table


def mnist_table(results: dict) -> Table | None:
    from runner.report_md import mnist_summaries

    summaries = mnist_summaries(results)
    if not summaries:
        return None
    table = Table(title="MNIST: test accuracy of the regular logits (mean, 95% CI across seeds)")
    for col in ("cell", "arm", "mean", "95% CI", "per seed"):
        table.add_column(col)
    for cell, arms in summaries.items():
        for arm, s in arms.items():
            ci = f"[{pct(s['lo'])}, {pct(s['hi'])}]" if s.get("lo") is not None else "-"
            add_text_row(table, cell, arm, pct(s["mean"]), ci, " ".join(map(pct, s["values"])))
    return table


def print_results(results: dict, console: Console, folder: Path) -> None:
    for cell in [c["label"] for c in results["cells"]]:
        for t in (filter_table(results, cell), evaluation_table(results, cell), *misalignment_tables(results, cell),
                  comparison_table(results, cell)):
            if t is not None:
                console.print(t)
    for title, headers, rows in detection_sections(results):
        table = Table(title=Text(title))
        for h in headers:
            table.add_column(h)
        for r in rows:
            add_text_row(table, *r)
        console.print(table)
    for t in (mnist_table(results), theorem_table(results)):
        if t is not None:
            console.print(t)
    for path in results.get("figures", []):
        console.print(f"plot: {path}", markup=False)
    from runner.report_md import interval_notes

    for line in results["methods"] + empty_rows_notes(results) + interval_notes(results):
        console.print(f"note: {line}", markup=False)
    for test in dict.fromkeys(c["test"] for c in results["comparisons"] if c["test"] != "none"):
        console.print(f"test: {test}", markup=False)
    for note in dict.fromkeys(c["note"] for c in results["comparisons"] if c.get("note")):
        never = any(c.get("note") == note and c.get("unit") == "question" for c in results["comparisons"])
        console.print(f"note: {note}" + ("; comparisons with this note are never marked significant" if never else ""),
                      markup=False)
    ran = results["stages_run"]
    console.print(f"{len(ran)} stage(s) ran; results: {folder / 'results.json'} ({results['seconds']} s)", markup=False)
