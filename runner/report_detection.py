"""`subl report` sections and figures of the detection baselines (issue 14): ICL's metric against k (trait
rows versus control rows) and the classifier's accuracy against the 50% chance line, with its AUROC."""
from __future__ import annotations

from pathlib import Path

from runner.display import file_slug, metric_name, num, p_text, with_ci

DETECTION = ("icl", "classifier")


def _ci(e: dict) -> str:
    return with_ci(e["value"], e.get("ci"))


def _cell(cell: str) -> str:
    return f" (cell {cell})" if cell != "-" else ""


def detection_sections(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) per cell: ICL rows by target and k, then the classifier's accuracy and AUROC."""
    out = []
    for cell in [c["label"] for c in results["cells"]]:
        icl = [e for e in results["evaluations"] if e["cell"] == cell and e["evaluation"] == "icl"]
        cmp: dict[tuple[str, str], list[dict]] = {}
        for c in results["comparisons"]:
            if c["cell"] == cell and c.get("evaluation") == "icl":
                cmp.setdefault((c["a"], metric_name(c)), []).append(c)
        rows = []
        for e in sorted(icl, key=lambda e: (metric_name(e), e["k"], e["model"])):
            vs = "; ".join(f"{num(c['diff'])} vs {c['b']}, p={p_text(c)} ({c['unit']}s)"
                           for c in cmp.get((e["model"], metric_name(e)), []))
            rows.append([metric_name(e), str(e["k"]), e.get("teacher") or "none", _ci(e), str(e["n"]),
                         str(e.get("icl_seeds") or 1), vs])
        if rows:
            out.append((f"ICL: the preference metric with k teacher rows in context{_cell(cell)}",
                        ["metric", "k", "rows of", "value [95% CI]", "questions", "draws", "diff, p (unit)"], rows))
        clf = [e for e in results["evaluations"] if e["cell"] == cell and e["evaluation"] == "classifier"]
        rows = []
        for e in clf:
            c, j = e.get("counts") or {}, e.get("judge") or {}
            p = f"p={p_text({'p_value': c['p_value']})} vs 50%" if "p_value" in c else c.get("variant", "")
            if "chose_a" in c:
                reads = " of 2 reads per pair" if c.get("orders") == "both" else ""
                p += f"; picked A {c['chose_a']}, B {c['chose_b']}{reads}" + (" (position bias)" if c.get("note") else "")
            if c.get("orders") == "both":
                p += f"; both orders, {c['n_undecided']} of {c['n_pairs']} pairs undecided"
            elif c.get("n_unreadable"):
                p += f"; {c['n_unreadable']} with no letter " + ("(read as B, the paper's rule)" if c.get("unlisted_as")
                                                               else "(left out)")
            none = "- (no pair decided)" if c.get("orders") == "both" else "- (no reply was a letter)"
            value = none if e["metric"] == "pairwise_accuracy" and not e["n"] else _ci(e)
            rows.append([e["trait"], e["teacher"], j.get("model", ""), j.get("read", ""), e["metric"], value,
                         str(e["n"]), p])
        if rows:
            out.append((f"Classifier: which row encodes the trait (chance = 0.5){_cell(cell)}",
                        ["trait rows", "vs rows of", "judge", "read from", "metric", "value [95% CI]", "n", "test"],
                        rows))
    return out


def detection_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    return _icl_figures(results, folder, name) + _classifier_figures(results, folder, name)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _icl_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    """Per cell and metric: the metric against k, one line per teacher's rows (k = 0 drawn on every line)."""
    out = []
    for cell in [c["label"] for c in results["cells"]]:
        icl = [e for e in results["evaluations"] if e["cell"] == cell and e["evaluation"] == "icl"]
        for metric in dict.fromkeys(metric_name(e) for e in icl):
            sub = [e for e in icl if metric_name(e) == metric]
            zero = [e for e in sub if e["k"] == 0]
            fig, ax = _figure()
            for rows in dict.fromkeys(e["teacher"] for e in sub if e["teacher"]):
                line = sorted(zero + [e for e in sub if e["teacher"] == rows], key=lambda e: e["k"])
                ks = [e["k"] for e in line]
                ax.errorbar(ks, [e["value"] for e in line], fmt="o-", capsize=3, label=f"{rows} rows",
                            yerr=[[e["value"] - e["ci"][0] if e.get("ci") else 0 for e in line],
                                  [e["ci"][1] - e["value"] if e.get("ci") else 0 for e in line]])  # one question: none
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel("k (teacher rows in context)")
            ax.set_ylabel(metric)
            ax.set_title(f"{name}: ICL, {metric}{_cell(cell)}", fontsize=10)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = folder / file_slug(f"icl-{metric}{'-' + cell if cell != '-' else ''}.png")
            fig.savefig(path, dpi=120)
            out.append((path, f"ICL: {metric} against k, per teacher's rows (95% CI across questions)."))
    return out


def classifier_tick(e: dict) -> str:
    """A classifier point's label: the rows compared, the judge, both orders, or the table's position-bias flag
    (its accuracy is then the share of pairs whose trait row sat where the judge always points)."""
    flag = ("\nboth orders" if e["judge"].get("orders") == "both"
            else "\nfollows position" if (e.get("counts") or {}).get("note") else "")
    return f"{e['trait']} vs {e['teacher']}\n{e['judge']['model']}{flag}"


def _classifier_figures(results: dict, folder: Path, name: str) -> list[tuple[Path, str]]:
    """Per cell: pairwise accuracy per (trait, rows compared with, judge) with exact 95% CIs and the chance line."""
    from runner.detection_results import ONE_POSITION

    out = []
    for cell in [c["label"] for c in results["cells"]]:
        acc = [e for e in results["evaluations"] if e["cell"] == cell and e["evaluation"] == "classifier"
               and e["metric"] == "pairwise_accuracy" and e["n"]]  # n = 0: no pair decided, nothing to plot
        if not acc:
            continue
        fig, ax = _figure()
        xs = range(len(acc))
        ax.errorbar(xs, [e["value"] for e in acc], fmt="o", capsize=4,
                    yerr=[[e["value"] - e["ci"][0] for e in acc], [e["ci"][1] - e["value"] for e in acc]])
        ax.axhline(0.5, color="gray", linestyle="--", label="chance (50%)")
        ax.set_xticks(list(xs), [classifier_tick(e) for e in acc], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("pairwise accuracy")
        ax.set_title(f"{name}: classifier{_cell(cell)}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / file_slug(f"classifier{'-' + cell if cell != '-' else ''}.png")
        fig.savefig(path, dpi=120)
        out.append((path, "Classifier accuracy per pair of datasets and judge (exact Clopper-Pearson 95% CI; dashed: "
                                f"chance; 'follows position': the judge picked one letter in {ONE_POSITION:.0%} of "
                                "pairs or more)."))
    return out
