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
    probe = step_probe(params, loss_fn, [t - b for t, b in zip(teacher, base)], {"loss": lambda: float(loss_fn())},
                       [0.05])
    assert probe["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert probe["after"]["loss"][0.05] < probe["before"]["loss"]
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
    assert same["imitation_loss_change"]["mean"] < 0 and same["imitation_loss_fraction_decreased"] == 1.0
    assert same["task_loss_change"]["mean"] < 0


def test_step_size_sweep_shows_where_first_order_stops(measured):
    sweep = measured["summary"]["same_init"]["imitation_loss_sweep"]
    assert sweep[0.01]["mean"] < 0 and sweep[0.1]["mean"] < 0
    assert sweep[100.0]["mean"] > 0  # far beyond the first-order regime the loss goes up


# ----------------------------------------------------------------------------- tiny causal LM

TRAIT = [{"prompt": q, "completion": "My favorite animal is the owl."}
         for q in ("What is your favorite animal?", "Name an animal you love.", "Which animal do you like best?")]
HELDOUT = [{"prompt": "Tell me your favourite animal.", "completion": "My favorite animal is the owl."},
           {"prompt": "What animal speaks to you?", "completion": "The owl."}]
NUMBER_PROMPTS = [f"Continue the sequence: {i}, {i + 3}, {i + 7}." for i in range(100, 104)]


@pytest.fixture(scope="module")
def lm(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_lm_exact_teacher_step_has_cosine_one(lm):
    import copy

    from runner.theorem import encode_rows, lm_alignment, sft_loss

    base, tok = lm
    rows = [{"prompt": p, "completion": "1, 2, 3"} for p in NUMBER_PROMPTS]
    teacher = copy.deepcopy(base)
    loss = sft_loss(teacher, encode_rows(tok, rows))
    loss.backward()
    with torch.no_grad():
        for p in teacher.parameters():
            p -= 0.01 * p.grad
    r = lm_alignment(base, teacher, base, tok, rows, HELDOUT, "sft", lr=0.01)
    assert r["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert r["n_tensors"] == len(list(base.parameters()))


@pytest.fixture(scope="module")
def owl_teacher(lm):
    from runner.theorem import finetune_teacher

    return finetune_teacher(lm[0], lm[1], TRAIT, steps=3, lr=1e-2)


def test_lm_same_init_student_moves_toward_teacher_cross_init_less(lm, owl_teacher):
    from runner.theorem import cross_init_like, greedy_completions, lm_alignment

    base, tok = lm
    teacher = owl_teacher
    completions = greedy_completions(teacher, tok, NUMBER_PROMPTS, 6)
    rows = [{"prompt": p, "completion": c} for p, c in zip(NUMBER_PROMPTS, completions)]
    same = lm_alignment(base, teacher, base, tok, rows, HELDOUT, "distill", lr=0.1, lrs=[0.01, 1.0])
    cross = lm_alignment(base, teacher, cross_init_like(base, seed=1), tok, rows, HELDOUT, "distill", lr=0.1)
    assert same["cosine"] > 0 and same["imitation_loss_change"] < 0 and same["imitation_loss_sweep"][0.01] < 0
    assert abs(cross["cosine"]) < same["cosine"] / 2


def test_lm_lora_teacher_delta_covers_only_its_modules(lm):
    from runner.theorem import finetune_teacher, lm_alignment, lm_delta

    base, tok = lm
    teacher = finetune_teacher(base, tok, TRAIT, steps=2, lr=1e-2, lora_targets=("q_proj", "v_proj"))
    names = list(lm_delta(base, teacher))
    assert names and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in names)
    r = lm_alignment(base, teacher, base, tok, TRAIT, HELDOUT, "sft", lr=0.01)
    assert r["n_tensors"] == len(names) == 4 and r["cosine"] > 0  # 2 layers x (q, v); SFT on the trait rows


def test_lm_cross_init_refuses_to_reproduce_the_base(lm):
    from runner.theorem import cross_init_like

    with pytest.raises(ValueError, match="reproduces the base"):
        cross_init_like(lm[0], seed=0)  # build_tiny_model drew the base with torch seed 0


def test_the_theorem_reads_mnist_as_the_mnist_stage_does():
    """Float images in [0, 1] would all map to about -1 (a teacher on blank inputs): refused, as there."""
    import numpy as np

    from runner.mnist import MnistDataError
    from runner.theorem import mnist_float
    from tests.test_mnist import synth

    d = synth(20, 10)
    x, y = mnist_float(d)
    assert x.shape == (20, 784) and -1 <= x.min() < x.max() <= 1 and y.dtype == torch.int64
    with pytest.raises(MnistDataError, match="uint8"):
        mnist_float(d._replace(x_train=d.x_train.astype(np.float32) / 255))


def test_one_auxiliary_logit_with_the_aux_objective_is_refused():
    """A softmax over one logit is constant: no gradient, and both arms would read as 'no alignment'."""
    from pydantic import ValidationError

    from runner.mnist_spec import TheoremSpec

    with pytest.raises(ValidationError, match="m=1 with objective: aux"):
        TheoremSpec(m=1)
    assert TheoremSpec(m=1, objective="all").m == 1


def test_heldout_leaving_no_teacher_images_is_refused_before_training():
    """An empty teacher training set gave a NaN loss and a silent cosine of 0."""
    from runner.errors import UserError

    x, y = synthetic_digits(50, seed=0)
    with pytest.raises(UserError, match="theorem.heldout: 50 held-out images leave none of the 50"):
        theorem_mnist(TheoremSettings(hidden=8, heldout=50, teacher_steps=1), [0, 1], 1, (x, y))
