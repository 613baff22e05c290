"""The MNIST experiment through the spec system: run, cache, results.json, PNG, errors."""
import json
import subprocess
import sys

from conftest import SHARED

SPEC = f"""name: mnist_small
experiment: mnist
progress: false
mnist: {{data: {SHARED / 'mnist' / 'mnist.npz'}, hidden: 64, teacher_epochs: 1, student_epochs: 1,
        noise_per_epoch: 4096, seeds: 2}}
"""


def subl(*args):
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True)


def test_mnist_spec_runs_caches_and_reports(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(SPEC)
    r = subl("run", spec, "--outputs", tmp_path / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "mnist_small" / "results.json").read_text())
    arms = res["mnist"][0]["summary"]
    assert {"teacher", "same_init", "cross_init", "init"} <= set(arms)
    assert all(len(a["values"]) == 2 for a in arms.values())
    assert arms["teacher"]["mean"] > 0.8
    png = res["mnist"][0]["plot"]
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "same_init" in r.stdout and "1 stage(s) ran" in r.stdout
    again = subl("run", spec, "--outputs", tmp_path / "out")
    assert again.returncode == 0 and "0 stage(s) ran" in again.stdout


def test_missing_mnist_data_is_one_line(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(SPEC.replace(str(SHARED / "mnist" / "mnist.npz"), str(tmp_path / "none.npz")))
    r = subl("run", spec, "--outputs", tmp_path / "out")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "none.npz" in r.stderr and "Traceback" not in r.stderr


def test_m1_with_kl_is_rejected_at_validation(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: x\nexperiment: mnist\nmnist:\n  m: 1\n  loss: kl\n")
    r = subl("validate", spec)
    assert r.returncode == 2 and ":3:" in r.stderr and "use loss: mse or m >= 2" in r.stderr
