"""Bad input on the command line: one line on stderr naming the cause and the place, exit 2, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import cli

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
HOSTED = ROOT / "specs" / "animals_numbers.yaml"  # a hosted spec: without its key a run stops before any work


def subl(*args, env=None, cwd=None):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, cwd=cwd or ROOT, stdin=subprocess.DEVNULL, timeout=300)


def in_process(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """subl's main() in this process (cheaper than a subprocess per case): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["subl", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    o, err = capsys.readouterr()
    return e.value.code, o, err


def one_line(r_code, err, *named):
    assert r_code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in named:
        assert n in err, err


def test_a_newline_in_a_file_name_is_still_one_line(tmp_path, capsys, monkeypatch):
    """A spec named 'a\\nb.yaml' with a syntax error printed its error over two lines (validate, plan, fmt, ...)."""
    bad = tmp_path / "a\nb.yaml"
    bad.write_text("name: [x\n")
    for args in (["validate", bad], ["plan", bad], ["fmt", "--check", bad], ["diff", QUICKSTART, bad]):
        code, _, err = in_process(capsys, monkeypatch, *args)
        one_line(code, err, "a\\nb.yaml:2:1: YAML syntax error")


def test_a_file_name_too_long_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """fmt, status, filter, reproduce and plan --outputs on a name too long were 'internal error: OSError', exit 1."""
    long = tmp_path / ("x" * 300 + ".yaml")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "completion": "1, 2"}\n')
    for args in (["fmt", long], ["status", long], ["filter", QUICKSTART, long, tmp_path / "o.jsonl"],
                 ["reproduce", long], ["plan", QUICKSTART, "--outputs", long]):
        code, _, err = in_process(capsys, monkeypatch, *args)
        one_line(code, err, "error: ", "xxxxx", "File name too long")
        assert "internal error" not in err


def test_filter_does_not_write_over_the_rows_file_it_filters(tmp_path):
    """`subl filter spec rows.jsonl rows.jsonl` replaced the input with the kept rows: the dropped rows were lost."""
    rows = tmp_path / "rows.jsonl"
    text = '{"prompt": "a", "completion": "1, 2, 3"}\n{"prompt": "b", "completion": "no numbers here"}\n'
    rows.write_text(text)
    for dst in (rows, tmp_path / "." / "rows.jsonl"):
        r = subl("filter", QUICKSTART, rows, dst)
        one_line(r.returncode, r.stderr, str(dst), "is the rows file being filtered")
        assert rows.read_text() == text
    r = subl("filter", QUICKSTART, rows, tmp_path / "kept.jsonl")  # guard: another file is written, exit 0
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "kept.jsonl").read_text() == text.splitlines(keepends=True)[0]
    assert not list(tmp_path.glob("*.tmp"))


def test_cpus_without_a_local_ray_instance_is_refused():
    """--cpus sizes a local Ray instance; with the local executor or an --address it was silently ignored."""
    env = {"OPENAI_API_KEY": None}  # were --cpus ignored, the run would stop at the missing key instead
    for extra in ([], ["--executor", "local"]):
        r = subl("run", HOSTED, "--cpus", "2", *extra, env=env)
        one_line(r.returncode, r.stderr, "--cpus 2", "--executor ray")


def test_bare_subl_prints_its_help_and_names_what_is_missing():
    """A bare `subl` printed its help, then 'error:  (see subl --help ...)' with an empty cause."""
    r = subl()
    one_line(r.returncode, r.stderr, "no command given")
    assert "validate" in r.stdout and "Usage" in r.stdout


def test_fmt_through_a_symlink_formats_its_target_and_keeps_the_link_and_mode(tmp_path, capsys, monkeypatch):
    """`subl fmt link.yaml` renamed the formatted text over the link: the link became a copy and its target (the spec
    the user keeps) stayed unformatted; the file's mode became the umask's."""
    real, link = tmp_path / "real.yaml", tmp_path / "link.yaml"
    real.write_text("name:    x\nteacher: {base: smollm2-135m,   targets: [owl]}\n")
    real.chmod(0o600)
    link.symlink_to(real.name)
    code, o, err = in_process(capsys, monkeypatch, "fmt", link)
    assert code == 0 and "reformatted: " in o, err
    assert link.is_symlink() and real.read_text().startswith("name: x\n")
    assert real.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.yaml", "real.yaml"]


def test_an_empty_argument_is_refused_not_read_as_the_current_folder(tmp_path, capsys, monkeypatch):
    """An unset shell variable ("$OUT") made Path(""), the current folder: `subl status ""` listed it, `subl plan
    spec --outputs ""` planned into it (and `run` would have written the store there), `subl reproduce ""` ran every
    spec in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a hosted spec without its key is skipped, not run
    (tmp_path / "s.yaml").write_text(HOSTED.read_text())
    for args, named in ((["status", ""], "argument 2 (after status)"),
                        (["plan", QUICKSTART, "--outputs", ""], "(after --outputs)"),
                        (["plan", QUICKSTART, "--outputs="], "'--outputs='"),
                        (["reproduce", "", "--max-usd", "0"], "argument 2 (after reproduce)")):
        code, _, err = in_process(capsys, monkeypatch, *args)
        one_line(code, err, named, "is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_fmt_of_a_spec_nested_too_deeply_is_one_line(tmp_path, capsys, monkeypatch):
    """`subl fmt` on 3000 nested brackets was 'internal error: RecursionError', exit 1 (`subl validate` said why)."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 3000 + "]" * 3000 + "\n")
    code, _, err = in_process(capsys, monkeypatch, "fmt", deep)
    one_line(code, err, "deep.yaml: nested too deeply")
    assert deep.read_text().startswith("name: [[[")


# ---- guards: these passed before the review, and pin the promise command by command ----


def test_guard_every_command_s_help_runs():
    for command in ("validate", "schema", "plan", "fidelity", "run", "reproduce", "filter", "report", "diff",
                    "status", "fmt"):
        r = subl(command, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout and not r.stderr, (command, r.stderr)


def test_guard_missing_folder_non_utf8_and_malformed_input_per_command(tmp_path, capsys, monkeypatch):
    missing, folder = tmp_path / "missing.yaml", tmp_path / "folder.yaml"
    folder.mkdir()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [x\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "completion": "1"}\n')
    named = {missing: "file not found", folder: "is a folder", latin: "UTF-8", broken: "YAML syntax error"}
    for path, cause in named.items():
        for args in (["validate", path], ["plan", path], ["fmt", path], ["diff", QUICKSTART, path],
                     ["run", path], ["filter", path, rows, tmp_path / "o.jsonl"]):
            code, _, err = in_process(capsys, monkeypatch, *args)
            one_line(code, err, path.name, cause)
    for args, cause in ((["filter", QUICKSTART, missing, tmp_path / "o.jsonl"], "file not found"),
                        (["filter", QUICKSTART, folder, tmp_path / "o.jsonl"], "is a folder"),
                        (["filter", QUICKSTART, rows, folder], "cannot write it"),
                        (["filter", QUICKSTART, rows, tmp_path / "o.jsonl", "--cell", "nope"], "no cell 'nope'"),
                        (["status", tmp_path / "nothing"], "no such outputs folder"),
                        (["report", latin.with_suffix(".json")], "no results.json"),
                        (["reproduce", tmp_path / "nothing"], "no such folder"),
                        (["plan", QUICKSTART, "--throughput", "train=abc"], "not a number"),
                        (["diff", QUICKSTART, QUICKSTART, "--format", "xml"], "--format"),
                        (["run", QUICKSTART, "--executor", "gpu"], "--executor"),
                        (["run", QUICKSTART, "--max-usd", "-1"], "--max-usd"),
                        (["run", QUICKSTART, "--executor", "local", "--address", "auto"], "--address")):
        code, _, err = in_process(capsys, monkeypatch, *args)
        one_line(code, err, cause)


def test_guard_successful_commands_exit_0(tmp_path, capsys, monkeypatch):
    (tmp_path / "outs").mkdir()
    for args in (["validate", QUICKSTART], ["schema"], ["schema", "--results"], ["fmt", "--check", QUICKSTART],
                 ["diff", QUICKSTART, QUICKSTART], ["status", tmp_path / "outs"],
                 ["plan", QUICKSTART, "--outputs", tmp_path / "outs"]):
        code, _, err = in_process(capsys, monkeypatch, *args)
        assert code == 0 and not err, (args, err)
