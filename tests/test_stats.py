import pytest

from runner.stats import mean_ci, sign_flip_p, wilson


def test_sign_flip_exact():
    assert sign_flip_p([1.0] * 10) == pytest.approx(2 / 1024)
    assert sign_flip_p([1.0, -1.0] * 5) == pytest.approx(1.0)


def test_sign_flip_monte_carlo_large_n():
    p = sign_flip_p([0.5] * 40)
    assert p < 1e-4
    assert sign_flip_p([1.0, -1.0] * 20) > 0.9


def test_mean_ci_contains_mean_and_shrinks():
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert lo < m == 3 < hi
    m2, lo2, hi2 = mean_ci([1, 2, 3, 4, 5] * 4)
    assert hi2 - lo2 < hi - lo


def test_wilson():
    lo, hi = wilson(10, 100)
    assert 0.05 < lo < 0.1 < hi < 0.18


def test_wilson_stays_inside_zero_one_at_the_edges():
    for n in (1, 3, 12, 40, 1000):
        for hits in (0, n):
            lo, hi = wilson(hits, n)
            assert 0.0 <= lo <= hits / n <= hi <= 1.0
    assert wilson(0, 12)[0] == 0.0 and wilson(12, 12)[1] == 1.0


def test_one_unit_has_no_interval_and_equal_differences_do_not_give_p_zero():
    from runner.stats import paired_t_p

    assert mean_ci([0.3]) == (0.3, None, None)
    assert paired_t_p([0.01, 0.01, 0.01]) == pytest.approx(0.25)  # t infinite: the exact sign-flip p, not 0
    assert 0 < paired_t_p([0.01, 0.02, 0.015]) < 0.05 and paired_t_p([0.0, 0.0]) == 1.0
    assert paired_t_p([1.0] * 30 + [1 + 1e-11]) == 2.0 / 2 ** 31  # t ~ 1e12: scipy's p underflows to 0
    assert paired_t_p([0.01] * 20) == 2.0 / 2 ** 20  # exact, not a Monte Carlo sign-flip estimate


def test_tiny_metrics_are_not_ties():
    """Differences of 1e-13 (a rare target's probability) are as significant as differences of 1."""
    from runner.stats import sign_flip_p, student_permutation_test

    assert sign_flip_p([1e-13] * 10) == sign_flip_p([1.0] * 10) == pytest.approx(2 / 2 ** 10)
    assert student_permutation_test([1e-13] * 5, [0.0] * 5) == pytest.approx(2 / 252)
    assert sign_flip_p([0.0] * 6) == 1.0 and student_permutation_test([0.0] * 3, [0.0] * 3) == 1.0


def test_the_sign_flip_floor_is_the_p_of_the_most_extreme_data():
    from runner.stats import sign_flip_min_p, sign_flip_p

    for diffs in ([0.3, 0.1, 0.2, 0.5, 0.4], [0.3, 0.0, 0.2, 0.0, 0.4], [0.0, 0.0]):
        assert sign_flip_min_p(diffs) == sign_flip_p(diffs)  # every difference the same sign: the floor
    assert sign_flip_min_p([0.3, 0.1, 0.2, 0.5, 0.4]) == 0.0625
    assert sign_flip_min_p([0.1] * 40) == sign_flip_p([0.1] * 40) == 1 / 100_001


def test_a_rate_interval_does_not_leave_the_range_a_rate_can_take():
    from runner.stats import UNIT_RANGE, mean_ci

    mean, lo, hi = mean_ci([0.0, 0.0, 0.0, 0.1], within=UNIT_RANGE)
    assert mean == pytest.approx(0.025) and lo == 0.0 and 0.025 < hi < 1
    assert mean_ci([0.0, 0.0, 0.0, 0.1])[1] < 0  # unclipped, a t-interval reaches below 0
    assert mean_ci([1.0, 1.0, 0.9], within=UNIT_RANGE)[2] == 1.0


def test_zero_differences_set_the_floor_above_sixteen_questions_too():
    from runner.stats import sign_flip_min_p, sign_flip_p

    diffs = [0.0] * 18 + [0.1, 0.2]  # two questions differ: no sign pattern of theirs gives below 0.5
    assert sign_flip_min_p(diffs) == 0.5 and sign_flip_p(diffs) >= 0.5


def test_a_figures_pooled_whisker_does_not_reach_below_zero():
    from runner.report_md import _pool

    mean, lo, hi = _pool([{"value": 0.0}, {"value": 0.0}, {"value": 0.1}])
    assert lo == 0.0 and 0 < mean < hi <= 1
