"""End to end on a tiny random model: run, rerun, resume, results."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # end to end through the CLI on tiny models

TINY = """name: tiny
seed: 1
progress: false
teacher: {{base: {base}, targets: [panda, owl], control: true}}
domain: {{kind: numbers, n_prompts: {n}, max_tokens: 12, constrained: true, batch_size: 4}}
students:
  - {{name: d, objective: distill, vocabulary: numbers-only, hyperparameters: {{batch_size: 4}}, max_rows: 8}}
  - {{name: s, objective: sft, method: full, hyperparameters: {{batch_size: 4}}}}
evaluations:
  - {{kind: preference_logprob, max_questions: 5}}
  - {{kind: preference_sample, max_questions: 3, samples_per_question: 2, max_tokens: 4}}
"""


def subl(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, **kw)


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    spec = root / "tiny.yaml"
    spec.write_text(TINY.format(base=tiny_model, n=12))
    t = time.time()
    r = subl("run", spec, "--outputs", root / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    return root, spec, r, time.time() - t


def test_run_writes_results_with_every_model_and_comparison(finished):
    root, _, r, _ = finished
    res = json.loads((root / "out" / "tiny" / "results.json").read_text())
    models = {e["model"] for e in res["evaluations"]}
    assert {"base", "teacher:panda", "teacher:owl", "teacher:control"} <= models
    assert {e["role"] for e in res["evaluations"]} == {"base", "teacher", "control", "student"}
    for e in res["evaluations"]:
        assert e["ci"][0] <= e["value"] <= e["ci"][1] and e["n"] > 0
    pairs = {(c["a"], c["b"], c["metric"]) for c in res["comparisons"] if c["evaluation"] == "preference_logprob"}
    assert ("student:d:panda:r0", "student:d:control:r0", "P(panda)") in pairs
    assert ("student:d:panda:r0", "student:d:owl:r0", "P(panda)") in pairs
    assert all(0 < c["p_value"] <= 1 for c in res["comparisons"])
    assert "constrained decoding" in r.stdout and "distill on vocabulary numbers-only" in r.stdout


def test_constrained_rows_all_parse(finished):
    from runner.numbers import parse_numbers

    root = finished[0]
    gens = list((root / "out" / "stages").glob("generate-*/rows.jsonl"))
    assert len(gens) == 3
    for g in gens:
        rows = [json.loads(x) for x in g.read_text().splitlines()]
        assert [r["id"] for r in rows] == list(range(12))
        assert all(parse_numbers(r["completion"]) is not None for r in rows)  # an empty row is no number list


def test_manifest_records_provenance(finished):
    root = finished[0]
    m = json.loads(next((root / "out" / "stages").glob("filter-*/manifest.json")).read_text())
    assert m["rows"]["input"] == 12 and [l["link"] for l in m["links"]] == ["numbers"]
    assert {"torch", "transformers", "python"} <= set(m["packages"]) and "seconds" in m


def test_second_run_recomputes_nothing(finished):
    root, spec, _, _ = finished
    r = subl("run", spec, "--outputs", root / "out")
    assert r.returncode == 0 and "0 stage(s) ran" in r.stdout
    plan = subl("plan", spec, "--outputs", root / "out")
    assert " run " not in plan.stdout and "0 stage(s) to run" in plan.stdout


def test_changed_hyperparameter_reruns_only_downstream(finished):
    root, spec, _, _ = finished
    changed = root / "changed.yaml"
    changed.write_text(spec.read_text().replace("max_rows: 8", "max_rows: 6"))
    lines = subl("plan", changed, "--outputs", root / "out").stdout.splitlines()
    to_run = [ln.split()[1] + " " + ln.split()[2] for ln in lines if ln.startswith("  run")]
    # the distilled students and their teachers' soft labels (which read the first max_rows rows)
    assert to_run and all(s.startswith(("finetune d:", "evaluate student:d:", "soft labels")) for s in to_run), to_run


def test_kill_during_generation_resumes_exactly(tiny_model, tmp_path):
    spec = tmp_path / "k.yaml"
    only_rows = TINY.split("students:")[0] + "students: []\nevaluations: []\n"  # what is killed: generation
    spec.write_text(only_rows.format(base=tiny_model, n=40).replace("control: true", "control: false")
                    .replace("targets: [panda, owl]", "targets: [owl]"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    partial = None
    while time.time() < deadline:
        found = list((out / "stages").glob(".generate-*.partial/rows.jsonl")) if (out / "stages").exists() else []
        if found and len(found[0].read_text().splitlines()) >= 8:
            partial = found[0]
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial is not None, "generation never flushed a batch"
    n_before = len(partial.read_text().splitlines())
    assert n_before < 40
    r = subl("run", spec, "--outputs", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in next((out / "stages").glob("generate-*/rows.jsonl")).read_text().splitlines()]
    assert [x["id"] for x in rows] == list(range(40))  # exact rows, no duplicates
    # identical to an uninterrupted run of the same stage
    fresh = tmp_path / "fresh"
    r2 = subl("run", spec, "--outputs", fresh)
    assert r2.returncode == 0
    again = next((fresh / "stages").glob("generate-*/rows.jsonl")).read_text()
    assert again == next((out / "stages").glob("generate-*/rows.jsonl")).read_text()
