"""Issue 11: the trained student is the unit of a between-arm comparison."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from runner.stats import (ONE_STUDENT_LABEL, arm_comparison, fieller_ratio_ci, min_attainable_p, sign_flip_p,
                          student_permutation_test)


def simulate(rng: np.random.Generator, effect: float = 0.0, students: int = 5, questions: int = 50,
             question_sd: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per arm a [students, questions] score table: each student shifts every question by its own
    N(0, 1) offset (training randomness); arm a adds `effect`; questions add small noise."""
    def arm(shift):
        offsets = rng.normal(0, 1, (students, 1))
        return shift + offsets + rng.normal(0, question_sd, (students, questions))
    return arm(effect), arm(0.0)


def test_question_level_test_rejects_without_effect_but_student_level_does_not():
    rng = np.random.default_rng(11)
    question_rejects = student_rejects = 0
    for _ in range(20):
        a, b = simulate(rng)
        question_rejects += sign_flip_p(list(a[0] - b[0]), n_perm=10_000) < 0.01
        student_rejects += student_permutation_test(list(a.mean(1)), list(b.mean(1))) < 0.05
    print("question-level rejects", question_rejects, "student-level rejects", student_rejects)
    assert question_rejects >= 17, question_rejects  # one student per arm: offsets look like an effect
    assert student_rejects <= 3, student_rejects  # nominal 5% of 20 is 1


def test_true_effect_detected_with_five_students_per_arm():
    rng = np.random.default_rng(3)
    outs = [arm_comparison(list(a.mean(1)), list(b.mean(1))) for a, b in (simulate(rng, 3.0) for _ in range(10))]
    assert sum(o["p_value"] < 0.05 for o in outs) >= 8  # effect of 3 student-offset sd
    assert all(o["unit"] == "student" and (o["n_a"], o["n_b"]) == (5, 5) for o in outs)
    assert sum(o["diff_ci"][0] > 0 for o in outs) >= 8


def test_min_attainable_p_stated():
    assert min_attainable_p(3, 3) == pytest.approx(0.1)
    assert min_attainable_p(5, 5) == pytest.approx(2 / 252)
    assert min_attainable_p(3, 3) > 0.05  # 3 vs 3 can never reach 0.05
    assert student_permutation_test([10, 11, 12], [1, 2, 3]) == pytest.approx(0.1)
    assert student_permutation_test([10, 11, 12, 13], [1, 2, 3]) == pytest.approx(min_attainable_p(4, 3))
    # 11 vs 11 is past exact enumeration: the Monte Carlo floor 1/(n_perm + 1), not 2/C(22, 11)
    assert student_permutation_test(list(range(11, 22)), list(range(11))) == pytest.approx(min_attainable_p(11, 11))


def brute_force_p(a, b) -> float:
    """Count label vectors (every way to call na of the pooled students 'a') by a plain loop."""
    pooled, na = list(a) + list(b), len(a)
    observed, hits, total = abs(np.mean(a) - np.mean(b)), 0, 0
    for labels in itertools.product((0, 1), repeat=len(pooled)):
        if sum(labels) != na:
            continue
        xa = [v for v, l in zip(pooled, labels) if l]
        xb = [v for v, l in zip(pooled, labels) if not l]
        total += 1
        hits += abs(np.mean(xa) - np.mean(xb)) >= observed - 1e-12
    assert total == math.comb(len(pooled), na)
    return hits / total


@pytest.mark.parametrize("na,nb,seed", [(3, 3, 0), (4, 3, 1), (5, 5, 2), (2, 6, 3), (6, 5, 4)])
def test_enumeration_matches_brute_force(na, nb, seed):
    rng = np.random.default_rng(seed)
    a, b = list(rng.normal(0.5, 1, na)), list(rng.normal(0, 1, nb))
    assert student_permutation_test(a, b) == pytest.approx(brute_force_p(a, b))


def test_monte_carlo_agrees_with_exact():
    rng = np.random.default_rng(5)
    a, b = list(rng.normal(0.8, 1, 8)), list(rng.normal(0, 1, 8))
    exact = student_permutation_test(a, b)
    mc = student_permutation_test(a, b, max_exact=100, n_perm=40_000)
    assert abs(mc - exact) < 0.01 and mc != exact


def test_one_student_per_arm_is_labelled():
    out = arm_comparison([0.3], [0.1])
    assert out["note"] == ONE_STUDENT_LABEL and out["p_value"] == 1.0 and out["ratio_ci"] is None
    assert arm_comparison([0.3, 0.4], [0.1, 0.2])["note"] is None


def test_fieller_interval_contains_ratio_and_unbounded_near_zero():
    a, b = [4.0, 5.0, 6.0, 5.5], [1.9, 2.0, 2.1, 2.05]
    lo, hi = fieller_ratio_ci(a, b)
    assert lo < np.mean(a) / np.mean(b) < hi
    assert fieller_ratio_ci(a, [-1.0, 1.0, -0.5, 0.6]) is None


def test_fieller_interval_of_arms_without_spread_is_the_ratio_itself():
    # every student of each arm alike: the interval shrinks to the point, never "unbounded" from rounding
    for ma, mb in [(0.123, 0.456), (0.3, 0.1), (0.00101, 0.00099)]:
        lo, hi = fieller_ratio_ci([ma] * 3, [mb] * 3)
        assert lo == pytest.approx(ma / mb) and hi == pytest.approx(ma / mb)
