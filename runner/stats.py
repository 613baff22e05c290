"""Statistics for tables: confidence intervals and paired tests, stated by name."""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as sps

CI_METHOD = "95% t-interval across questions, clipped to [0, 1]"
RATE_CI_FALLBACK = "95% Wilson interval over every sampled answer (each question gave the same rate, so the " \
                   "t-interval across questions had zero width)"
TEST_METHOD = "paired sign-flip permutation test over questions (exact for n <= 16, else 100k Monte Carlo)"

UNIT_RANGE = (0.0, 1.0)  # rates, probabilities, accuracies
COSINE_RANGE = (-1.0, 1.0)


def mean_ci(values: list[float], level: float = 0.95, within: tuple[float, float] = (-math.inf, math.inf)
            ) -> tuple[float | None, float | None, float | None]:
    """Mean and a t-interval across units (questions or seeds), clipped to the range the metric can take (a rate's
    interval does not reach below 0); no interval (None, None) from one unit."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:  # no unit: no mean (NaN is not JSON)
        return None, None, None
    m = float(x.mean())
    if len(x) < 2:
        return m, None, None
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, max(within[0], m - half), min(within[1], m + half)


def question_ci(metric: str, per_question: list[float], samples: int
                ) -> tuple[float | None, float | None, float | None, str]:
    """Mean, interval and its method of a metric over questions: the t-interval across them, except for a sampled
    rate (each value: hits / samples of one question) that every question gave alike; that interval has zero width
    (0 of 5,000 answers read as certainly 0), so the Wilson interval over the pooled answers stands in."""
    mean, lo, hi = mean_ci(per_question, within=UNIT_RANGE)
    if not metric.startswith("rate(") or lo is None or lo != hi:
        return mean, lo, hi, CI_METHOD
    n = len(per_question) * samples
    return (mean, *wilson(round(mean * n), n), RATE_CI_FALLBACK)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for hits/n, clamped to [0, 1] (at 0 or n hits rounding leaves it ~1e-17 outside)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for hits/n: it excludes 50% exactly when the two-sided exact binomial
    test does (Wilson's can exclude it at p = 0.077: 12 of 16). [0, 1] for n = 0."""
    if n == 0:
        return 0.0, 1.0
    ci = sps.binomtest(hits, n).proportion_ci(level, "exact")
    return float(ci.low), float(ci.high)


def sign_flip_p(diffs: list[float], n_perm: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the mean paired difference under random sign flips:
    exact enumeration for n <= 16, otherwise Monte Carlo with the (hits+1)/(n_perm+1) rule."""
    d = np.asarray(diffs, dtype=float)
    observed = abs(d.sum()) - 1e-12 * abs(d).sum()  # float ties count (relative: tiny metrics are not ties)
    if len(d) <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) >= observed))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, n_perm, 10_000):
        signs = rng.choice((1.0, -1.0), size=(min(10_000, n_perm - start), len(d)))
        hits += int(np.sum(np.abs(signs @ d) >= observed))
    return max((hits + 1) / (n_perm + 1), sign_flip_min_p(diffs, n_perm))  # never below the exact floor


def sign_flip_min_p(diffs: list[float], n_perm: int = 100_000) -> float:
    """The smallest p sign_flip_p can give for these pairs: exact, 2 of 2^(n - zeros) sign patterns (a zero
    difference flips to itself); Monte Carlo, that or 1/(n_perm+1), whichever is larger. With 5 questions no result
    is below 0.0625."""
    d = np.asarray(diffs, dtype=float)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return 1.0
    exact = 2.0 ** (1 - nonzero)
    return exact if len(d) <= 16 else max(exact, 1 / (n_perm + 1))


# ----------------------------------------------------------------------------- the student as the unit (issue 11)

ONE_STUDENT_LABEL = "1 student per arm: covers question sampling only, not training randomness"
STUDENT_TEST_METHOD = ("two-sided permutation test of arm labels across students on the difference of arm "
                       "means (exact enumeration up to 200k relabelings, else Monte Carlo, (hits+1)/(n+1))")
RATIO_CI_METHOD = ("Fieller 95% interval for the ratio of independent arm means across students, t quantile at "
                   "the Welch-Satterthwaite df of mean_a - ratio*mean_b (approximation); None when unbounded "
                   "(mean_b not distinguishable from 0)")
DIFF_CI_METHOD = "Welch 95% t-interval across students for mean_a - mean_b"


def min_attainable_p(na: int, nb: int, max_exact: int = 200_000, n_perm: int = 100_000) -> float:
    """Smallest two-sided p `student_permutation_test` can return (with its default max_exact and n_perm).

    Exact test: at least the observed split reaches its |difference| (and, when na == nb, its
    mirror, the same split with the labels swapped), so the floor is 2/C(na+nb, na) for equal
    arms and at least 1/C(na+nb, na) otherwise (a mirror may tie for some values: a bound).
    3 vs 3: 2/20 = 0.1, so nothing is significant at 0.05; 5 vs 5: 2/252 ~ 0.00794.
    Monte Carlo (more than max_exact relabelings): 1/(n_perm + 1).
    """
    count = math.comb(na + nb, na)
    return (2 if na == nb else 1) / count if count <= max_exact else 1 / (n_perm + 1)


def _split_sums(pooled: np.ndarray, na: int, rng: np.random.Generator | None, n_perm: int) -> np.ndarray:
    """Sum of the values labelled 'a', for every relabeling (rng None) or n_perm random ones."""
    n = len(pooled)
    if rng is None:
        count = math.comb(n, na)
        idx = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), na)),
                          dtype=np.int64, count=count * na).reshape(count, na)
        return pooled[idx].sum(1)
    chunks = [rng.random((min(10_000, n_perm - i), n)).argsort(1)[:, :na] for i in range(0, n_perm, 10_000)]
    return np.concatenate([pooled[idx].sum(1) for idx in chunks])


def student_permutation_test(a: list[float], b: list[float], *, max_exact: int = 200_000,
                             n_perm: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of |mean(a) - mean(b)| under random relabeling of students between arms.

    Exact (every C(na+nb, na) relabeling, observed one included) when that count is at most
    max_exact; otherwise n_perm random relabelings with the (hits+1)/(n_perm+1) rule.
    """
    x, y = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(x), len(y)
    if na == 0 or nb == 0:
        raise ValueError("student_permutation_test needs at least one student per arm")
    pooled, total = np.concatenate([x, y]), float(x.sum() + y.sum())
    exact = math.comb(na + nb, na) <= max_exact
    sums = _split_sums(pooled, na, None if exact else np.random.default_rng(seed), n_perm)
    diffs = np.abs(sums / na - (total - sums) / nb)
    observed = abs(x.mean() - y.mean()) - 1e-12 * float(np.abs(pooled).sum())  # float ties count (relative)
    hits = int(np.sum(diffs >= observed))
    return hits / len(sums) if exact else (hits + 1) / (n_perm + 1)


def welch_diff_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean_a - mean_b, lo, hi, Welch-Satterthwaite df); needs >= 2 students per arm."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    sa2, sb2 = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff, se2 = float(x.mean() - y.mean()), sa2 + sb2
    if se2 == 0:
        return diff, diff, diff, float("inf")
    df = se2 ** 2 / (sa2 ** 2 / (len(x) - 1) + sb2 ** 2 / (len(y) - 1))
    half = float(sps.t.ppf(0.5 + level / 2, df) * math.sqrt(se2))
    return diff, diff - half, diff + half, float(df)


def fieller_ratio_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Fieller interval for mean(a)/mean(b), independent arms (see RATIO_CI_METHOD); None if unbounded."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    ma, mb = x.mean(), y.mean()
    sa2, sb2 = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    r = ma / mb if mb != 0 else 0.0
    den = sa2 ** 2 / (len(x) - 1) + r ** 4 * sb2 ** 2 / (len(y) - 1)
    df = (sa2 + r * r * sb2) ** 2 / den if den > 0 else float("inf")
    q = float(sps.t.ppf(0.5 + level / 2, df)) ** 2
    # (ma - R mb)^2 = q (sa2 + R^2 sb2)  <=>  A R^2 + B R + C = 0
    A, B, C = mb * mb - q * sb2, -2 * ma * mb, ma * ma - q * sa2
    # far from the point ratio the df tends to b's own (n_b - 1): where b's own interval holds 0 the set is
    # unbounded whatever the df at the point says (a = [0, 0]: df was infinite, the interval [0, 0])
    qb = float(sps.t.ppf(0.5 + level / 2, len(y) - 1)) ** 2 if len(y) > 1 else q
    if A <= 0 or mb * mb <= qb * sb2:
        return None
    root = math.sqrt(max(B * B - 4 * A * C, 0.0))  # = 4q(ma^2 sb2 + sa2 A) >= 0 when A > 0; below 0 only by rounding
    return float((-B - root) / (2 * A)), float((-B + root) / (2 * A))


def arm_comparison(a_values: list[float], b_values: list[float], unit: str = "student") -> dict:
    """Arm a vs arm b with one value per trained student (e.g. its trait rate over all questions), or per
    independent unit of another kind (`unit`, e.g. an ICL draw of rows).

    Returns mean_a, mean_b, ratio (None if mean_b == 0) with ratio_ci (Fieller) and ci_method,
    diff with diff_ci (Welch) and diff_ci_method, p_value and test (student permutation test),
    min_p, unit, n_a, n_b, and note (ONE_STUDENT_LABEL when an arm has one student;
    intervals need 2 per arm and are None otherwise).
    """
    na, nb = len(a_values), len(b_values)
    ma, mb = float(np.mean(a_values)), float(np.mean(b_values))
    units = (lambda text: text) if unit == "student" else (lambda text: text.replace("students", f"{unit}s"))
    enough = na >= 2 and nb >= 2
    diff, lo, hi, _ = welch_diff_ci(a_values, b_values) if enough else (ma - mb, None, None, None)
    return {
        "mean_a": ma, "mean_b": mb, "ratio": ma / mb if mb != 0 else None,
        "ratio_ci": fieller_ratio_ci(a_values, b_values) if enough else None, "ci_method": units(RATIO_CI_METHOD),
        "diff": diff, "diff_ci": None if lo is None else (lo, hi), "diff_ci_method": units(DIFF_CI_METHOD),
        "p_value": student_permutation_test(a_values, b_values), "test": units(STUDENT_TEST_METHOD),
        "min_p": min_attainable_p(na, nb), "unit": unit, "n_a": na, "n_b": nb,
        "note": ONE_STUDENT_LABEL if min(na, nb) == 1 else None,
    }


def arm_comparison_fields(a_values: list[float], b_values: list[float], unit: str = "student") -> dict:
    """The fields of a results.json comparison row for arm a vs arm b with 2 or more units per arm (students,
    ICL draws): arm_comparison's figures, the per-unit values, and `significant` (p < 0.05; its test's unit
    is the one replicated)."""
    c = arm_comparison(a_values, b_values, unit)
    return {"diff": c["diff"], "ratio": c["ratio"], "p_value": c["p_value"], "test": c["test"], "unit": unit,
            "n": len(a_values) + len(b_values), "n_a": c["n_a"], "n_b": c["n_b"], "mean_a": c["mean_a"],
            "mean_b": c["mean_b"], "ratio_ci": c["ratio_ci"], "diff_ci": c["diff_ci"], "ci_method": c["ci_method"],
            "min_p": c["min_p"], "a_wins": None, "per_student_a": list(a_values), "per_student_b": list(b_values),
            "note": None, "significant": bool(c["p_value"] < 0.05)}


def untested_fields(a_values: list[float], b_values: list[float], left_out: list[str]) -> dict:
    """The fields of a student-level comparison row when an arm has fewer than 2 students with a value (the
    others left out: none of their answers was scored): arm means where there are values, no test."""
    ma, mb = (float(np.mean(v)) if v else None for v in (a_values, b_values))
    return {"diff": None if ma is None or mb is None else ma - mb, "ratio": ma / mb if ma is not None and mb else None,
            "p_value": None, "test": "none", "unit": "student", "n": len(a_values) + len(b_values),
            "n_a": len(a_values), "n_b": len(b_values), "mean_a": ma, "mean_b": mb, "per_student_a": list(a_values),
            "per_student_b": list(b_values), "significant": False,
            "note": f"not tested: fewer than 2 students with a value in an arm; left out, no scored answer: "
                    f"{', '.join(left_out)}"}


def paired_t_p(diffs) -> float:
    """Two-sided p of a one-sample t-test of paired differences against 0; 1.0 with fewer than two pairs or when
    every difference is 0 (identical arms: scipy's p would be NaN, which results.json cannot hold). Where every
    difference is the same non-zero number t is infinite and p is 0, the t-test's limit (and where scipy's p
    underflows, 0 too): one test throughout, so a steadier effect never gets a larger p. (This gave the exact
    sign-flip p 2/2^n there, 0.0625 for 5 seeds, while a nearly equal set got 1e-13.)"""
    d = np.asarray(diffs, float)
    if len(d) < 2 or not np.any(d != 0):
        return 1.0
    return 0.0 if np.ptp(d) <= 1e-12 * np.max(np.abs(d)) else float(sps.ttest_1samp(d, 0.0).pvalue)
