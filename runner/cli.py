"""The `subl` command line."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import typer
from rich.console import Console

from runner.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative subliminal-learning experiments.")
out = Console(highlight=False, emoji=False, soft_wrap=True)
if not out.is_terminal:  # piped or logged: keep table rows whole
    out = Console(highlight=False, emoji=False, soft_wrap=True, width=200)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)

OUTPUTS = typer.Option(Path("outputs"), "--outputs", help="Root folder of the content-addressed store.")
MAX_USD = typer.Option(None, "--max-usd", envvar="SUBL_MAX_USD", min=0.0,
                       help="Spend at most this many US dollars on hosted stages, by `subl plan`'s upper-bound "
                       "estimate, checked before anything is sent (default: no hosted spending).")


def one_line(text: str) -> str:
    """A message as one line: control characters (a newline in a file's name) written as escapes."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


def main() -> None:
    """Entry point: user errors become one line and exit code 2."""
    args = sys.argv[1:]
    empty = [i for i, a in enumerate(args) if a == "" or (a.startswith("--") and a.endswith("="))]
    if empty:  # an unset shell variable ("$OUT"): Path("") is the current folder, which would be used silently
        i = empty[0]
        where = f"{args[i]!r}" if args[i] else f"argument {i + 1}{f' (after {args[i - 1]})' if i else ''}"
        err.print(one_line(f"error: {where} is empty, perhaps an unset shell variable; subl would read it as the "
                           "current folder"), markup=False)
        sys.exit(2)
    try:
        code = app(standalone_mode=False)  # returns a typer.Exit's code instead of raising it
        if code == 130:  # click turns Ctrl-C into Abort, then exit code 130, before the handler below sees it
            err.print("interrupted: finished stages are kept; rerun to resume", markup=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as e:
        err.print(one_line(f"error: {e}"), markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished stages are kept; rerun to resume", markup=False)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except UnicodeDecodeError as e:  # a data file read where no reader names it
        err.print(f"error: text that is not UTF-8 ({e.reason} at byte {e.start}), most likely a data file; data "
                  "files, questions and rows must be UTF-8 (SUBL_DEBUG=1 shows where it was read)", markup=False)
        if os.environ.get("SUBL_DEBUG"):
            raise
        sys.exit(2)
    except Exception as e:  # click usage errors and the like
        if isinstance(e, _usage_errors()):  # a bare `subl` has no message: its help is printed above
            err.print(one_line(f"error: {e.format_message() or 'no command given'} (see subl --help, or subl "
                               "COMMAND --help)"), markup=False, soft_wrap=True)
            sys.exit(2)
        if os.environ.get("SUBL_DEBUG"):
            raise
        if isinstance(e, OSError) and e.filename is not None:  # a name too long, a folder without access
            err.print(one_line(f"error: {e.filename}: {e.strerror or e}"), markup=False, soft_wrap=True)
            sys.exit(2)
        from backends.openai_api import redact  # an exception's text may quote a request or a header

        err.print(one_line(redact(f"internal error: {type(e).__name__}: {e} (set SUBL_DEBUG=1 for a traceback)")),
                  markup=False)
        sys.exit(1)


def _usage_errors() -> tuple[type, ...]:
    """click's usage-error class, from click and from the copy newer typer versions bundle."""
    import click

    classes = [click.exceptions.ClickException]
    try:
        from typer._click.exceptions import ClickException

        classes.append(ClickException)
    except ImportError:
        pass
    return tuple(classes)


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Spec files.")) -> None:
    """Check spec files; print one line per problem as file:line:col."""
    from runner.loader import load

    bad = 0
    for f in files:
        try:
            cells = load(f)
            out.print(f"{f}: ok ({len(cells)} cell{'s' if len(cells) != 1 else ''})", markup=False)
        except UserError as e:
            err.print(one_line(str(e)), markup=False, soft_wrap=True)
            bad += 1
    if bad:
        raise typer.Exit(2)


@app.command()
def schema(results: bool = typer.Option(False, "--results", help="The results.json schema instead.")) -> None:
    """Print the spec's JSON Schema (for editors), or with --results the schema of results.json."""
    if results:
        from runner.results_schema import Results

        print(json.dumps(Results.model_json_schema(), indent=2))
        return
    from runner.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))


@app.command()
def plan(spec: Path, outputs: Path = OUTPUTS,
         check: bool = typer.Option(False, "--check", help="Also ask each hosted backend, before anything is paid "
                                    "for: key, models, fine-tuning rights, rate limits."),
         throughput: str = typer.Option(None, "--throughput", help="Price local stages in GPU-hours at this "
                                        "throughput: a GPU (H100-80GB, H200, A100-80GB) and/or tokens/s, e.g. "
                                        "'H200' or 'train=9000,prefill=30000,generate=2500' (default: a spec "
                                        "with runtime.device cuda uses its runtime.gpu_throughput).")) -> None:
    """Show each stage as run or reuse, without running anything."""
    from runner.runs import plan_lines
    from runner.throughput import parse

    for line in plan_lines(spec, outputs, check, parse(throughput) if throughput else None):
        out.print(line, markup=False)


@app.command()
def fidelity(specs: list[Path] = typer.Argument(..., help="Paper spec files."),
             check: bool = typer.Option(False, "--check", help="Exit 1 if a difference has no recorded reason.")) -> None:
    """Each paper spec against the paper's materials, setting by setting (markdown, as docs/fidelity.md)."""
    from runner.fidelity import document

    text, unrecorded = document(specs)
    out.print(text, markup=False)
    if check and unrecorded:
        err.print(f"{unrecorded} difference(s) from the paper have no recorded reason (runner/fidelity.py REASONS)")
        raise typer.Exit(1)


@app.command()
def run(spec: Path, outputs: Path = OUTPUTS,
        executor: str = typer.Option(None, "--executor", help="local or ray (default: the spec's runtime.executor)."),
        address: str = typer.Option(None, "--address", help="ray: the cluster to use (auto, ray://host:10001); "
                                    "default: start a local Ray instance."),
        cpus: int = typer.Option(None, "--cpus", min=1, help="ray without --address: CPUs of the local instance "
                                 "(default: all)."),
        max_usd: float = MAX_USD) -> None:
    """Run a spec's stages (reusing finished ones) and write outputs/<name>/results.json."""
    from runner.runs import run_spec

    if executor not in (None, "local", "ray"):
        raise UserError(f"--executor: '{executor}' is not local or ray")
    run_spec(spec, outputs, out, executor, address, cpus, max_usd)


@app.command()
def reproduce(folders: list[Path] = typer.Argument(..., help="Folders of specs, e.g. specs specs/local."),
              outputs: Path = OUTPUTS, max_usd: float = MAX_USD) -> None:
    """Run every spec in the folders (hosted ones only when their key is set and their cost fits --max-usd,
    CUDA-only ones only on a machine with CUDA); end with a summary table."""
    from runner.reproduce import reproduce as run_all

    sys.exit(run_all(folders, outputs, out, max_usd))


def _filter_chain(spec: Path, label: str | None) -> list:
    """The filter chain of the spec's cell `label`, or of its every cell where they all have the same one."""
    from runner.loader import load

    cells = load(spec)
    if label is not None:
        chosen = [c for c in cells if c.label == label]
        if not chosen:
            raise UserError(f"{spec}: no cell {label!r}; its cells: {', '.join(repr(c.label) for c in cells)}")
        return list(chosen[0].spec.filters)
    chains = {json.dumps([f.model_dump() for f in c.spec.filters], sort_keys=True) for c in cells}
    if len(chains) > 1:
        raise UserError(f"{spec}: its {len(cells)} cells have {len(chains)} different filter chains; name one with "
                        f"--cell ({', '.join(repr(c.label) for c in cells)})")
    return list(cells[0].spec.filters)


@app.command("filter")
def filter_cmd(spec: Path, src: Path, dst: Path,
               cell: str = typer.Option(None, help="A matrix spec's cell whose chain to apply, by its label "
                                                  "as `subl plan` prints it (needed where the cells' chains differ).")) -> None:
    """Apply a spec's filter chain to a JSONL file of {prompt, completion} or {messages} rows."""
    from runner.display import pct
    from runner.files import write_text_atomic
    from runner.filters import apply_chain

    chain = _filter_chain(spec, cell)
    if src.is_dir():
        raise UserError(f"{src}: is a folder, not a rows file")
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    from runner.rows import is_row
    from runner.store import json_lines

    rows = []
    for n, row in json_lines(src):
        if not is_row(row):
            raise UserError(f"{src}:{n}: a row is a JSON object with prompt and completion texts, or messages "
                            "(a list of {role, content})")
        rows.append(row)
    try:
        kept, counts = apply_chain(rows, chain)
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    if dst.exists() and dst.samefile(src):  # the dropped rows would be gone
        raise UserError(f"{dst}: is the rows file being filtered; write the kept rows to another file")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(dst, "".join(json.dumps(r) + "\n" for r in kept))  # Ctrl-C leaves no cut-short file
    except OSError as e:
        raise UserError(f"{dst}: cannot write it ({e.strerror})") from None
    for c in counts:
        out.print(f"{c.link:16s} kept {c.kept:7d}  dropped {c.dropped:7d}  pass {pct(c.pass_rate):>6s}", markup=False)
    out.print(f"{'total':16s} kept {len(kept):7d} of {len(rows)} -> {dst}", markup=False)


@app.command()
def report(target: Path = typer.Argument(..., help="A spec, a run folder or a results.json."),
           outputs: Path = OUTPUTS) -> None:
    """Write report.md and PNG figures next to results.json; print the same tables."""
    from runner.report_md import write_report

    write_report(target, outputs, out)


@app.command()
def diff(a: Path, b: Path, fmt_: str = typer.Option("text", "--format", help="text or json.")) -> None:
    """Semantic diff of two specs and the stages each change reruns; exit 0 equal, 1 differ."""
    from runner.diff import diff_specs, render

    if fmt_ not in ("text", "json"):
        raise UserError(f"--format: '{fmt_}' is not text or json")
    for path in (a, b):
        if path.suffix == ".json":  # read as a spec, a results file failed on its first non-spec key
            raise UserError(f"{path}: subl diff compares two spec files (YAML), not results; the spec a run used is "
                            "named in its run.json")
    d = diff_specs(a, b)
    for line in [json.dumps(d, indent=2)] if fmt_ == "json" else render(d):
        out.print(line, markup=False)
    sys.exit(0 if d["equal"] else 1)  # SystemExit: main() passes the code on


@app.command()
def status(outputs: Path = typer.Argument(Path("outputs"), help="Root folder of the store.")) -> None:
    """List every run and stage under outputs/: done, partial (how far) or failed; sizes; hosted jobs."""
    from runner.status import status_lines

    for line in status_lines(outputs):
        out.print(line, markup=False)


@app.command()
def fmt(files: list[Path] = typer.Argument(..., help="Spec files."),
        check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if a file would change.")) -> None:
    """Rewrite spec files in the canonical layout, keeping comments."""
    from runner.fmt import format_files

    changed = format_files(files, check)
    for f in changed:
        out.print(f"{'would reformat' if check else 'reformatted'}: {f}", markup=False)
    out.print(f"{len(changed)} of {len(files)} file(s) {'to reformat' if check else 'reformatted'}", markup=False)
    sys.exit(1 if check and changed else 0)


if __name__ == "__main__":
    main()
