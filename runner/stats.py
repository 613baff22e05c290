"""Statistics for tables: confidence intervals and paired tests, stated by name."""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as sps

CI_METHOD = "95% t-interval across questions"
TEST_METHOD = "paired sign-flip permutation test over questions (exact for n <= 16, else 100k Monte Carlo)"


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t-interval across units (questions or seeds)."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, m, m
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def sign_flip_p(diffs: list[float], n_perm: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the mean paired difference under random sign flips:
    exact enumeration for n <= 16, otherwise Monte Carlo with the (hits+1)/(n_perm+1) rule."""
    d = np.asarray(diffs, dtype=float)
    observed = abs(d.sum()) - 1e-12 * max(1.0, abs(d).sum())
    if len(d) <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) >= observed))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, n_perm, 10_000):
        signs = rng.choice((1.0, -1.0), size=(min(10_000, n_perm - start), len(d)))
        hits += int(np.sum(np.abs(signs @ d) >= observed))
    return (hits + 1) / (n_perm + 1)
