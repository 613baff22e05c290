"""Tests for runner/mnist.py: synthetic data only, a few seconds each."""
import gzip
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runner import mnist as M  # noqa: E402

torch.set_num_threads(1)

# Small but genuine: same-init student beats cross-init by ~0.55 here (means over 4 seeds).
SMALL = dict(hidden=64, teacher_epochs=2, student_epochs=4, batch_size=128, noise_per_epoch=4096,
             seeds=4, lr=1e-3)


def synth(n_train=3000, n_test=1000, seed=0) -> M.MnistData:
    """Ten Gaussian clusters in 784-d, as uint8 28x28 'digits'."""
    r = np.random.default_rng(seed)
    mu = r.normal(0, 1, (10, 784))

    def draw(n):
        y = r.integers(0, 10, n)
        x = mu[y] + r.normal(0, 1, (n, 784))
        return np.clip(127.5 + 40 * x, 0, 255).astype(np.uint8).reshape(n, 28, 28), y.astype(np.uint8)
    return M.MnistData(*draw(n_train), *draw(n_test))


@pytest.fixture(scope="module")
def data():
    return synth()


def mean(xs):
    return sum(xs) / len(xs)


def test_same_init_beats_cross_init(data):
    r = M.run_mnist(M.MnistSpec(**SMALL), seed=0, data=data)
    a = r["arms"]
    assert set(a) == {"teacher", "same_init", "cross_init", "init"}
    assert all(len(v) == 4 and all(0 <= x <= 1 for x in v) for v in a.values())
    assert r["n_test"] == 1000 and r["seconds"] > 0
    assert mean(a["teacher"]) > 0.9
    assert mean(a["same_init"]) > 0.4
    assert mean(a["cross_init"]) < 0.2
    assert mean(a["same_init"]) - mean(a["cross_init"]) > 0.25


def test_permuted_cross_init_matches_same_init(data):
    """Training is equivariant under hidden-unit permutations (Adam is elementwise), so a deranged
    copy of the reference init ends at the same function: 'permuted' is not a negative control."""
    spec = M.MnistSpec(**{**SMALL, "seeds": 2, "student_epochs": 2, "cross_init": "permuted"})
    a = M.run_mnist(spec, seed=0, data=data)["arms"]
    assert a["same_init"] == pytest.approx(a["cross_init"], abs=0.01)


def test_all_logit_student_and_progress(data):
    calls = []
    spec = M.MnistSpec(**{**SMALL, "seeds": 2, "all_logit_student": True})
    a = M.run_mnist(spec, 0, lambda *c: calls.append(c), data=data)["arms"]
    assert mean(a["all_logit"]) > 0.9
    assert calls[-1] == ("students", 4, 4) and ("teacher", 2, 2) in calls


def test_batched_equals_loop(data):
    spec = M.MnistSpec(hidden=32, teacher_epochs=1, student_epochs=1, batch_size=256,
                       noise_per_epoch=1000, seeds=3, all_logit_student=True)
    t = M.to_tensors(data)
    b, lp = M.train_batched(spec, t, 7), M.train_loop(spec, t, 7)
    assert set(b) == set(lp)
    for arm in b:
        for pb, pl in zip(b[arm], lp[arm]):
            torch.testing.assert_close(pb, pl, atol=1e-4, rtol=1e-4)
    # seeds differ from each other (own init, data order and noise)
    w = b["same_init"][0]
    assert not torch.allclose(w[0], w[1])


@pytest.mark.parametrize("n", [2, 3, 5, 17, 256])
def test_derangement(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(200):
        p = M.derangement(n, g)
        assert sorted(p.tolist()) == list(range(n))
        assert not (p == torch.arange(n)).any()


def test_derangement_too_small():
    with pytest.raises(ValueError):
        M.derangement(1, torch.Generator())


@pytest.mark.parametrize("init", ["paper", "pytorch"])
def test_permuted_init_same_function_other_params(init):
    g = torch.Generator().manual_seed(0)
    ref = M.draw_init([784, 64, 64, 13], init, g)
    per = M.permute_hidden(ref, g)
    x = torch.rand(50, 784) * 2 - 1
    torch.testing.assert_close(M.forward(per, x), M.forward(ref, x), atol=1e-5, rtol=1e-5)
    for i in (0, 2, 4):  # every weight matrix moved
        assert not torch.equal(per[i], ref[i])


def test_paper_init_stats():
    w1, b1, *_ = M.draw_init([784, 256, 256, 13], "paper", torch.Generator().manual_seed(0))
    assert w1.shape == (784, 256) and b1.abs().sum() == 0
    assert abs(w1.std().item() * 28 - 1) < 0.02  # std 1/sqrt(784)


# ----------------------------------------------------------------------------- data loading

def fake_arrays(n=5):
    r = np.random.default_rng(0)
    x = {k: r.integers(0, 256, (n, 28, 28), dtype=np.uint8) for k in ("x_train", "x_test")}
    y = {k: r.integers(0, 10, n).astype(np.uint8) for k in ("y_train", "y_test")}
    return {**x, **y}


def write_idx(path: Path, a: np.ndarray, gz: bool):
    head = (2051 if a.ndim == 3 else 2049).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in a.shape)
    raw = head + a.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def check(d: M.MnistData, arrays):
    for k in M.MnistData._fields:
        np.testing.assert_array_equal(getattr(d, k), arrays[k])


def test_load_npz(tmp_path):
    arrays = fake_arrays()
    np.savez(tmp_path / "m.npz", **arrays)
    check(M.load_mnist(tmp_path / "m.npz"), arrays)
    check(M.load_mnist(str(tmp_path / "m.npz")), arrays)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx(tmp_path, gz):
    arrays = fake_arrays()
    for key, name in M.IDX_FILES.items():
        write_idx(tmp_path / name, arrays[key], gz)
    d = M.load_mnist(tmp_path)
    check(d, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's non-writable-array warning
        assert M.to_tensors(d)[0].shape == (5, 784)


def test_bad_npz_and_bad_idx(tmp_path):
    np.savez(tmp_path / "m.npz", x_train=np.zeros(3))
    with pytest.raises(ValueError, match="lacks keys"):
        M.load_mnist(tmp_path / "m.npz")
    (tmp_path / "idx").mkdir()
    for name in M.IDX_FILES.values():
        (tmp_path / "idx" / name).write_bytes(b"\0\0\0\x07" + bytes(12))
    with pytest.raises(M.MnistDataError, match="magic"):
        M.load_mnist(tmp_path / "idx")
    (tmp_path / "idx" / M.IDX_FILES["x_train"]).write_bytes((2051).to_bytes(4, "big") + bytes(12) + b"\1")
    (tmp_path / "idx" / M.IDX_FILES["y_train"]).write_bytes((2049).to_bytes(4, "big") + (5).to_bytes(4, "big"))
    with pytest.raises(M.MnistDataError, match="unreadable"):  # truncated
        M.load_mnist(tmp_path / "idx")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(M.MnistDataError) as e:
        M.load_mnist(tmp_path / "junk.npz")
    assert "\n" not in str(e.value)


def test_missing_data_error_is_one_line(tmp_path, monkeypatch):
    where = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        M.load_mnist(where)
    msg = str(e.value)
    assert "\n" not in msg and str(where) in msg and "mnist.data" in msg
    # default locations: all missing, torchvision absent or offline
    monkeypatch.setattr(M, "DEFAULT_DATA", [tmp_path / "a.npz", tmp_path / "b"])
    monkeypatch.setattr(M, "_torchvision", lambda root: (None, "torchvision not installed"))
    with pytest.raises(M.MnistDataNotFound) as e:
        M.load_mnist(None)
    msg = str(e.value)
    assert "\n" not in msg and "a.npz" in msg and "torchvision" in msg


@pytest.mark.parametrize("bad, match", [
    (dict(y_train=np.eye(10, dtype=np.uint8)[[1, 2, 3]]), r"y_train must be 1-D .* \(3\), got shape \(3, 10\)"),
    (dict(y_test=np.zeros(1, np.uint8)), r"y_test must be 1-D .* x_test \(2\), got shape \(1,\)")])
def test_labels_are_one_per_image(bad, match):
    """One-hot labels, or fewer labels than images, failed only after training (a torch RuntimeError)."""
    d = synth(3, 2)
    with pytest.raises(M.MnistDataError, match=match):
        M.to_tensors(d._replace(**bad))


@pytest.mark.parametrize("name", ["x.npy", M.IDX_FILES["y_train"]])
def test_data_that_is_neither_an_npz_nor_a_folder_is_refused(tmp_path, name):
    """An .npy escaped as a TypeError; a single IDX file read as an 'unreadable' pickle."""
    if name.endswith(".npy"):
        np.save(tmp_path / name, fake_arrays()["x_train"])
    else:
        write_idx(tmp_path / name, fake_arrays()["y_train"], False)
    with pytest.raises(M.MnistDataError, match=r"not MNIST data; give an \.npz .* or a folder of IDX files") as e:
        M.load_mnist(tmp_path / name)
    assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_uint8_required():
    d = synth(20, 10)
    with pytest.raises(ValueError, match="uint8"):
        M.to_tensors(d._replace(x_train=d.x_train.astype(np.float32)))


# ----------------------------------------------------------------------------- spec, summary, plot

def test_spec_validation():
    with pytest.raises(ValueError, match="m=1 with loss=kl gives no gradient"):
        M.MnistSpec(m=1)
    assert M.MnistSpec(m=1, loss="mse").m == 1
    for bad in (dict(m=0), dict(unknown=1), dict(init="xavier"), dict(hidden=1, cross_init="permuted")):
        with pytest.raises(ValueError):
            M.MnistSpec(**bad)
    s = M.MnistSpec()
    with pytest.raises(ValueError):
        s.m = 4  # frozen
    assert all(f.description for f in M.MnistSpec.model_fields.values())


def test_m1_mse_student_moves(data):
    spec = M.MnistSpec(**{**SMALL, "m": 1, "loss": "mse", "seeds": 1, "student_epochs": 1})
    t = M.to_tensors(data)
    out = M.train_batched(spec, t, 0)
    assert not torch.equal(out["same_init"][0], out["init"][0])


def test_summarize():
    s = M.summarize({"a": [0.1, 0.2, 0.3], "b": [0.5]})
    assert s["a"]["mean"] == pytest.approx(0.2)
    assert s["a"]["ci95"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
    assert s["a"]["lo"] < 0.2 < s["a"]["hi"] and s["a"]["values"] == [0.1, 0.2, 0.3]
    assert s["b"]["ci95"] is None and s["b"]["n"] == 1


def test_t_table_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails -> table
    assert M._t975(4) == pytest.approx(2.776)


def test_plot(tmp_path):
    s = M.summarize({"teacher": [0.94, 0.95], "same_init": [0.5, 0.4], "cross_init": [0.1, 0.09],
                     "init": [0.1, 0.11], "all_logit": [0.9, 0.92]})
    p = M.plot_arms(s, tmp_path / "sub" / "fig.png", "test")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_whiskers_follow_the_interval_clipped_to_0_1():
    """The report's intervals are clipped to [0, 1]; whiskers drawn as a symmetric half-width of the clipped
    interval ended the upper one short (cross init [0.05, 0.15]: 0.368 above the mean, not 0.635)."""
    arm = M.summarize({"cross_init": [0.05, 0.15]})["cross_init"]
    below, above = M._whisker(arm)
    assert below == pytest.approx(10.0) and above == pytest.approx(100 * (arm["hi"] - 0.1)) and above > 60
    clipped = {**arm, "lo": 0.0, "ci95": (arm["hi"] - 0.0) / 2}  # as report_md.mnist_summaries gives it
    assert M._whisker(clipped) == pytest.approx((below, above))
    assert M._whisker({"mean": 0.5, "lo": None, "hi": None}) == (0.0, 0.0)


# ----------------------------------------------------------------------------- the paper's noise set and arms

def _gens(seed):
    return [M._generators(seed + i)[2] for i in range(2)]


def _epoch(spec, gens, fixed):
    return torch.cat(list(M.noise_epoch(spec, gens, fixed)), 1)  # [S, N, 784]


def _rows_sorted(x):
    return x[torch.argsort(x[:, 0])]


def test_fixed_noise_is_the_same_images_every_epoch_in_a_new_order():
    spec = M.MnistSpec(noise_set="fixed", noise_per_epoch=300, batch_size=64)
    gens = _gens(0)
    fixed = M.fixed_noise(spec, gens)
    e1, e2 = _epoch(spec, gens, fixed), _epoch(spec, gens, fixed)
    assert e1.shape == (2, 300, 784)
    for s in range(2):
        assert torch.equal(_rows_sorted(e1[s]), _rows_sorted(fixed[s]))
        assert torch.equal(_rows_sorted(e1[s]), _rows_sorted(e2[s]))
        assert not torch.equal(e1[s], e2[s])  # reshuffled
    assert not torch.equal(_rows_sorted(fixed[0]), _rows_sorted(fixed[1]))  # each seed its own set
    assert -1 <= fixed[0].min() and fixed[0].max() <= 1


def test_fixed_noise_is_deterministic_by_seed_and_fresh_noise_is_not_reused():
    fixed = M.MnistSpec(noise_set="fixed", noise_per_epoch=200, batch_size=64)
    a, b, c = (M.fixed_noise(fixed, _gens(s)) for s in (3, 3, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    fresh = fixed.model_copy(update={"noise_set": "fresh"})
    gens = _gens(3)
    assert M.fixed_noise(fresh, gens) is None
    e1, e2 = _epoch(fresh, gens, None), _epoch(fresh, gens, None)
    assert not torch.equal(_rows_sorted(e1[0]), _rows_sorted(e2[0]))


def test_four_arms_with_the_fixed_set(data):
    """The paper's four students: aux-only and all-logit, each from the same and from a cross init."""
    spec = M.MnistSpec(**{**SMALL, "seeds": 2, "noise_set": "fixed", "all_logit_student": True,
                          "all_logit_cross_student": True})
    a = M.run_mnist(spec, 0, data=data)["arms"]
    assert list(a) == ["teacher", "same_init", "cross_init", "init", "all_logit", "all_logit_cross_init"]
    assert mean(a["same_init"]) - mean(a["cross_init"]) > 0.2  # aux-only: only the same init learns digits
    assert mean(a["all_logit"]) > 0.9 and mean(a["all_logit_cross_init"]) > 0.5  # all logits: both learn
    assert {M.LABELS[k] for k in a} >= {"aux-only\nsame init", "aux-only\ncross init", "all-logit\nsame init",
                                        "all-logit\ncross init"}


def test_four_arms_batched_equals_loop_with_the_fixed_set(data):
    spec = M.MnistSpec(hidden=32, teacher_epochs=1, student_epochs=2, batch_size=256, noise_per_epoch=1000,
                       seeds=2, noise_set="fixed", all_logit_student=True, all_logit_cross_student=True)
    t = M.to_tensors(data)
    b, lp = M.train_batched(spec, t, 5), M.train_loop(spec, t, 5)
    assert set(b) == set(lp) >= {"all_logit", "all_logit_cross_init"}
    for arm in b:
        for pb, pl in zip(b[arm], lp[arm]):
            torch.testing.assert_close(pb, pl, atol=1e-4, rtol=1e-4)


def test_results_compare_each_same_init_arm_with_its_cross_init_arm(tmp_path):
    import json
    from types import SimpleNamespace

    from runner.results import mnist_rows

    arms = {"teacher": [0.95, 0.96, 0.94], "same_init": [0.6, 0.5, 0.55], "cross_init": [0.1, 0.12, 0.09],
            "init": [0.1, 0.1, 0.1], "all_logit": [0.9, 0.91, 0.92], "all_logit_cross_init": [0.8, 0.85, 0.83]}
    (tmp_path / "result.json").write_text(json.dumps({"arms": arms, "n_test": 10000}))
    plan = SimpleNamespace(mnist="k", cell=SimpleNamespace(label="-"), spec=SimpleNamespace(seed=0))
    rows, cmps = mnist_rows(plan, SimpleNamespace(path=lambda key: tmp_path))
    assert {r["model"] for r in rows} == set(arms)
    assert [(c["a"], c["b"]) for c in cmps] == [("same_init", "cross_init"), ("all_logit", "all_logit_cross_init")]
    assert cmps[1]["diff"] == pytest.approx((0.1 + 0.06 + 0.09) / 3)
    del arms["all_logit_cross_init"]
    (tmp_path / "result.json").write_text(json.dumps({"arms": arms, "n_test": 10000}))
    assert len(mnist_rows(plan, SimpleNamespace(path=lambda key: tmp_path))[1]) == 1
