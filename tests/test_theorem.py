"""Issue 14: the one-step theorem, measured on a small MNIST-shaped MLP and a tiny causal LM."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.mnist import N_CLASSES, draw_init, forward
from runner.theorem import TheoremSettings, cosine, flat, step_probe, synthetic_digits, theorem_mnist

SIZES = [784, 32, 32, N_CLASSES + 3]


def test_cosine_basics():
    u = torch.tensor([1.0, 2.0, 0.0])
    assert cosine(u, 3 * u) == pytest.approx(1.0) and cosine(u, -u) == pytest.approx(-1.0)
    assert cosine(u, torch.tensor([0.0, 0.0, 5.0])) == 0.0 and cosine(u, torch.zeros(3)) == 0.0


def test_exact_teacher_step_has_cosine_one():
    """Teacher = base + one gradient step of the objective on a batch; the student's step of the same
    objective on the same batch from the base is Δ itself."""
    x, y = synthetic_digits(64, seed=1)
    base = draw_init(SIZES, "paper", torch.Generator().manual_seed(0))
    params = [p.clone().requires_grad_() for p in base]
    loss_fn = lambda: F.cross_entropy(forward(params, x)[:, :N_CLASSES], y)
    grads = torch.autograd.grad(loss_fn(), params)
    teacher = [p - 0.05 * g for p, g in zip(base, grads)]
    probe = step_probe(params, loss_fn, [t - b for t, b in zip(teacher, base)], lambda: float(loss_fn()), [0.05])
    assert probe["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert probe["after"][0.05] < probe["imitation_loss_before"]
    assert torch.equal(flat(params), flat(base))  # the probe restores the student


@pytest.fixture(scope="module")
def measured():
    s = TheoremSettings(hidden=64, teacher_steps=30, teacher_lr=3e-3, batch_size=256, heldout=200,
                        lrs=(0.01, 0.1, 1.0, 100.0))
    return theorem_mnist(s, seeds=[0, 1, 2, 3], batches=2, data=synthetic_digits(1200, seed=0))


def test_same_init_cosine_positive_cross_init_near_zero(measured):
    same, cross = measured["summary"]["same_init"]["cosine"], measured["summary"]["cross_init"]["cosine"]
    assert same["lo"] > 0 and same["n"] == 4
    assert abs(cross["mean"]) < same["mean"] / 2
    assert len(measured["rows"]) == 4 * 2 * 2


def test_same_init_student_moves_toward_teacher(measured):
    """A small step lowers the held-out imitation loss (digit logits on held-out digits)."""
    same = measured["summary"]["same_init"]
    assert same["imitation_loss_change"]["mean"] < 0 and same["fraction_decreased"] == 1.0


def test_step_size_sweep_shows_where_first_order_stops(measured):
    sweep = measured["summary"]["same_init"]["sweep"]
    assert sweep[0.01]["mean"] < 0 and sweep[0.1]["mean"] < 0
    assert sweep[100.0]["mean"] > 0  # far beyond the first-order regime the loss goes up
