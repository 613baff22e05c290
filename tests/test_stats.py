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


def test_one_unit_has_no_interval_and_a_steadier_effect_never_gets_a_larger_p():
    """Every seed's difference the same gave the exact sign-flip p 2/2^n (0.0625 for 5 seeds, never marked at
    0.01) while a nearly equal set got the t-test's 1e-13: one test throughout now, t infinite giving p = 0."""
    from runner.stats import paired_t_p

    assert mean_ci([0.3]) == (0.3, None, None) and mean_ci([]) == (None, None, None)  # no NaN in results.json
    steady, nearly = [0.05] * 5, [0.05] * 4 + [0.0501]
    assert paired_t_p(steady) <= paired_t_p(nearly) < 1e-6
    assert 0 < paired_t_p([0.01, 0.02, 0.015]) < 0.05 and paired_t_p([0.0, 0.0]) == 1.0
    assert paired_t_p([0.01, 0.01, 0.01]) == 0.0 and paired_t_p([0.01, -0.01]) == 1.0


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


def test_a_ratio_whose_denominator_may_be_zero_has_no_interval():
    """Fieller's set is unbounded when the denominator arm's own interval holds 0; the df taken at the point ratio
    (infinite when arm a is all zeros) printed 0.000x [0.000, 0.000], or an interval excluding 1."""
    from runner.stats import fieller_ratio_ci

    assert fieller_ratio_ci([0.0, 0.0], [0.01, 0.03]) is None
    assert fieller_ratio_ci([0.0, 0.0, 0.0], [0.01, 0.02, 0.03]) is None
    assert fieller_ratio_ci([0.45, 0.55] * 5, [0.10, 0.14]) is None  # b's own 95% t-interval [-0.134, 0.374]
    lo, hi = fieller_ratio_ci([1.0, 1.2, 1.1], [0.5, 0.52, 0.48])  # b far from 0: a finite interval
    assert lo < 1.1 / 0.5 < hi


def test_the_exact_interval_agrees_with_the_binomial_test():
    """Wilson's interval excluded 50% at 12 of 16 while the exact binomial p was 0.077: one row said both."""
    from scipy.stats import binomtest

    from runner.stats import clopper_pearson

    lo, hi = clopper_pearson(12, 16)
    assert lo < 0.5 < hi and clopper_pearson(0, 0) == (0.0, 1.0)
    for n in range(1, 41):
        for hits in range(n + 1):
            lo, hi = clopper_pearson(hits, n)
            assert 0.0 <= lo <= hits / n <= hi <= 1.0
            assert (not lo <= 0.5 <= hi) == (binomtest(hits, n, 0.5).pvalue < 0.05), (hits, n)


def test_a_monte_carlo_sign_flip_p_is_never_below_the_exact_floor():
    from runner.stats import sign_flip_min_p, sign_flip_p

    d = [1.0] * 17  # exact p 2/2^17 = 1.5e-5; 100k draws see no other pattern as extreme
    assert sign_flip_p(d, seed=4) == pytest.approx(sign_flip_min_p(d)) == pytest.approx(2 / 2 ** 17)


def test_a_cosines_interval_stays_within_minus_one_and_one():
    from runner.theorem import summarize_alignment

    rows = [{"arm": "same_init", "seed": s, "cosine": c} for s, c in enumerate([0.85, 0.95])]
    ci = summarize_alignment(rows)["same_init"]["cosine"]
    assert ci["hi"] == 1.0 and -1.0 <= ci["lo"] < 0.9


def test_a_rate_every_question_gave_alike_has_a_wilson_interval_not_a_zero_width_one():
    """0 owls in 3 questions x 2 answers read '0 [0, 0]': certainly zero. The t-interval across questions has zero
    width whenever every question gave the same rate; the pooled answers' Wilson interval stands in, named."""
    from runner.report_md import interval_notes
    from runner.stats import CI_METHOD, RATE_CI_FALLBACK, mean_ci, question_ci, wilson

    assert question_ci("rate(owl)", [0.0, 0.0, 0.0], 2) == (0.0, *wilson(0, 6), RATE_CI_FALLBACK)
    assert question_ci("rate(owl)", [1.0] * 50, 100) == (1.0, *wilson(5000, 5000), RATE_CI_FALLBACK)
    assert wilson(5000, 5000)[0] < 1
    assert question_ci("P(owl)", [0.2, 0.2], 1) == (0.2, 0.2, 0.2, CI_METHOD)  # a probe: no hits to pool
    assert question_ci("rate(owl)", [0.0, 0.5, 0.5], 2) == (*mean_ci([0.0, 0.5, 0.5], within=(0.0, 1.0)), CI_METHOD)
    assert question_ci("rate(owl)", [0.5], 2)[1:] == (None, None, CI_METHOD)  # one question: no interval, as before
    rows = [{"model": "base", "metric": "rate(owl)", "ci_method": RATE_CI_FALLBACK},
            {"model": "base", "metric": "P(owl)", "ci_method": CI_METHOD}]
    assert interval_notes({"evaluations": rows}) == [f"interval of base rate(owl): {RATE_CI_FALLBACK}"]
    many = [{"model": f"m{i}", "metric": "rate(owl)", "ci_method": RATE_CI_FALLBACK} for i in range(5)]
    assert interval_notes({"evaluations": many})[0].startswith("interval of m0 rate(owl), m1 rate(owl), m2 rate(owl) "
                                                               "and 2 more: 95% Wilson")
