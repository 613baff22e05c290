"""The `subl` command line."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from runner.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative subliminal-learning experiments.")
out = Console(highlight=False, emoji=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)

OUTPUTS = typer.Option(Path("outputs"), "--outputs", help="Root folder of the content-addressed store.")


def main() -> None:
    """Entry point: user errors become one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished stages are kept; rerun to resume", markup=False)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if os.environ.get("SUBL_DEBUG"):
            raise
        err.print(f"internal error: {type(e).__name__}: {e} (set SUBL_DEBUG=1 for a traceback)", markup=False)
        sys.exit(1)


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
            err.print(str(e), markup=False, soft_wrap=True)
            bad += 1
    if bad:
        raise typer.Exit(2)


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editors)."""
    from runner.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))


@app.command()
def plan(spec: Path, outputs: Path = OUTPUTS) -> None:
    """Show each stage as run or reuse, without running anything."""
    from runner.runs import plan_lines

    for line in plan_lines(spec, outputs):
        out.print(line, markup=False)


@app.command()
def run(spec: Path, outputs: Path = OUTPUTS) -> None:
    """Run a spec's stages (reusing finished ones) and write outputs/<name>/results.json."""
    from runner.runs import run_spec

    run_spec(spec, outputs, out)


@app.command("filter")
def filter_cmd(spec: Path, src: Path, dst: Path) -> None:
    """Apply a spec's filter chain to a JSONL file of {prompt, completion} or {messages} rows."""
    from runner.filters import apply_chain
    from runner.loader import load

    chain = list(load(spec)[0].spec.filters)
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    rows = []
    for n, line in enumerate(src.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{src}:{n}:{e.colno}: invalid JSON: {e.msg}") from None
    try:
        kept, counts = apply_chain(rows, chain)
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r) + "\n" for r in kept))
    for c in counts:
        out.print(f"{c.link:16s} kept {c.kept:7d}  dropped {c.dropped:7d}  pass {c.pass_rate:6.1%}", markup=False)
    out.print(f"{'total':16s} kept {len(kept):7d} of {len(rows)} -> {dst}", markup=False)


if __name__ == "__main__":
    main()
