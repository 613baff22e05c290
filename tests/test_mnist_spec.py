"""The MNIST experiment through the spec system: run, cache, results.json, PNG, errors."""
import json
import subprocess
import sys

import pytest

from conftest import shared
from runner.results_schema import Results

SPEC = """name: mnist_small
experiment: mnist
progress: false
mnist: {{data: {data}, hidden: 64, teacher_epochs: 1, student_epochs: 1,
        noise_per_epoch: 4096, seeds: 2}}
"""


def subl(*args):
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_mnist_spec_runs_caches_and_reports(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(SPEC.format(data=shared("mnist", "mnist.npz")))
    r = subl("run", spec, "--outputs", tmp_path / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "mnist_small" / "results.json").read_text())
    Results.model_validate(res)  # the same schema as the language-model specs
    rows = [e for e in res["evaluations"] if e["evaluation"] == "mnist"]
    per_seed = [e for e in rows if e["seed"] is not None]
    means = {e["model"]: e for e in rows if e["seed"] is None}
    assert {"teacher", "same_init", "cross_init", "init"} <= set(means)
    assert len(per_seed) == 2 * len(means) and all(e["n"] == 10000 and e["ci"][0] <= e["value"] for e in per_seed)
    assert means["teacher"]["value"] > 0.8 and means["teacher"]["n"] == 2
    (cmp_,) = res["comparisons"]
    assert (cmp_["a"], cmp_["b"], cmp_["unit"], cmp_["n_a"]) == ("same_init", "cross_init", "seed", 2)
    assert 0 <= cmp_["p_value"] <= 1 and "t-test" in cmp_["test"]
    (png,) = res["figures"]
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "same_init" in r.stdout and "1 stage(s) ran" in r.stdout
    # the code that ran, recorded when the run starts (a run in progress shows it; a checkout during a long
    # run must not be credited with it)
    started = json.loads((tmp_path / "out" / "mnist_small" / "run.json").read_text())
    assert started["git_revision"] == res["git_revision"] and started["packages"] == res["packages"] != {}
    again = subl("run", spec, "--outputs", tmp_path / "out")
    assert again.returncode == 0 and "0 stage(s) ran" in again.stdout


@pytest.mark.slow
def test_missing_mnist_data_is_one_line(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(SPEC.format(data=tmp_path / "none.npz"))
    r = subl("run", spec, "--outputs", tmp_path / "out")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "none.npz" in r.stderr and "Traceback" not in r.stderr
    assert f"{spec}:4:" in r.stderr and "mnist.data: file not found" in r.stderr  # at the key, before any work


def test_m1_with_kl_is_rejected_at_validation(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: x\nexperiment: mnist\nmnist:\n  m: 1\n  loss: kl\n")
    r = subl("validate", spec)
    assert r.returncode == 2 and ":3:" in r.stderr and "use loss: mse or m >= 2" in r.stderr


def test_an_idx_folder_is_keyed_by_every_file_it_holds(tmp_path):
    """torchvision's download is a folder of IDX files with no model-file suffix: it plans, and a changed byte
    changes the key (a folder was digested by its model files only: 'no model files in it', or a README's)."""
    import numpy as np

    from runner import mnist as M
    from runner.loader import load
    from runner.plan import build
    from test_mnist import fake_arrays, write_idx

    data = tmp_path / "idx"
    data.mkdir()
    arrays = fake_arrays()
    for key, name in M.IDX_FILES.items():
        write_idx(data / name, arrays[key], False)
    (data / "README.txt").write_text("MNIST, from torchvision")
    spec = tmp_path / "m.yaml"
    spec.write_text(SPEC.format(data=data))

    def key() -> str:
        return next(iter(build(load(spec), tmp_path / "out").stages))  # the one MNIST stage

    before = key()
    arrays["y_test"] = (arrays["y_test"] + 1) % 10
    write_idx(data / M.IDX_FILES["y_test"], np.asarray(arrays["y_test"]), False)
    assert key() != before


def test_temperature_keys_the_stage_only_under_the_kl_loss(tmp_path):
    """loss: mse reads no temperature; a temperature set beside it reran the whole experiment."""
    from runner.loader import load
    from runner.plan import build

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist.npz").write_bytes(b"x")

    def key(extra: str) -> str:
        spec = tmp_path / "specs" / "m.yaml"  # beside the data folder, not in it (its files key the stage)
        spec.parent.mkdir(exist_ok=True)
        spec.write_text(SPEC.format(data=tmp_path / "data").replace("seeds: 2", f"seeds: 2, {extra}"))
        return next(iter(build(load(spec), tmp_path / "out").stages))

    assert key("loss: mse") == key("loss: mse, temperature: 3.0")
    assert key("temperature: 1.0") != key("temperature: 3.0")  # kl, the default loss, reads it


def test_the_default_data_keyed_is_the_one_the_loader_reads(tmp_path, monkeypatch):
    """An empty data/mnist before the real download was keyed (and then 'not found' at run time)."""
    from runner import mnist as M
    from runner.plan import _mnist_data
    from test_mnist import fake_arrays, write_idx

    empty, real = tmp_path / "data" / "mnist", tmp_path / "cache" / "mnist" / "MNIST" / "raw"
    empty.mkdir(parents=True)
    real.mkdir(parents=True)
    for key, name in M.IDX_FILES.items():
        write_idx(real / name, fake_arrays()[key], True)
    monkeypatch.setattr(M, "DEFAULT_DATA", [empty, tmp_path / "cache" / "mnist", tmp_path / "download"])
    assert _mnist_data(None).path == str(tmp_path / "cache" / "mnist")
    assert len(M.load_mnist(None).x_train) == len(fake_arrays()["x_train"])
    monkeypatch.setattr(M, "DEFAULT_DATA", [empty])
    assert _mnist_data(None) is None


def test_the_torchvision_download_does_not_rekey_the_stage(tmp_path, monkeypatch):
    """Keyed without data, the stage downloaded MNIST; the next plan keyed the download's digest: a rerun."""
    from runner import mnist as M
    from runner.loader import load
    from runner.plan import build
    from test_mnist import fake_arrays, write_idx

    def download(root):
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for key, name in M.IDX_FILES.items():
            write_idx(raw / name, fake_arrays()[key], True)
        return M._load_folder(root), ""

    monkeypatch.setattr(M, "DEFAULT_DATA", [tmp_path / "shared" / "mnist.npz", tmp_path / "cache" / "mnist"])
    monkeypatch.setattr(M, "_torchvision", download)
    specs = {"m.yaml": "name: m\nexperiment: mnist\nmnist: {seeds: 2}\n",
             "t.yaml": "name: t\nexperiment: theorem_mnist\ntheorem: {seeds: 2}\n"}
    for name, text in specs.items():
        (tmp_path / name).write_text(text)

    def keys() -> list[str]:
        return [k for name in specs for k in build(load(tmp_path / name), tmp_path / "out").stages]

    before = keys()
    assert len(M.load_mnist(None).x_train) == 5  # the stages' read: downloaded
    assert M.default_data() == tmp_path / "cache" / "mnist"
    assert keys() == before


def test_mnist_data_that_is_neither_an_npz_nor_a_folder_is_refused_at_plan_time(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    spec = tmp_path / "m.yaml"
    spec.write_text(SPEC.format(data=tmp_path / "x.npy"))
    r = subl("plan", spec, "--outputs", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "x.npy: not MNIST data; give an .npz" in r.stderr


def test_a_theorem_step_size_must_be_positive(tmp_path):
    """lrs: [-1] took a step up the gradient and reported it as a step of the theorem's sweep."""
    from runner.errors import SpecError
    from runner.loader import load

    spec = tmp_path / "t.yaml"
    spec.write_text("name: x\nexperiment: theorem_mnist\ntheorem:\n  lrs: [0.1, -1]\n")
    with pytest.raises(SpecError, match=r":4:.*theorem.lrs.1: .*greater than 0"):
        load(spec)
