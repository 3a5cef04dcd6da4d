"""Evaluation metrics: the unbiased pass@k estimator (Chen et al. 2021, "Codex" paper)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from spo_store.errors import SpoError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n samples of
    which c are correct, is correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod(1 - k / arange(n-c+1, n+1))`` so large n does not overflow.
    Raises SpoError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise SpoError(f"pass@k needs integer n, c, k; got {name}={value!r}")
    if n < 0 or c < 0 or k < 0:
        raise SpoError(f"pass@k needs non-negative n, c, k; got n={n}, c={c}, k={k}")
    if c > n:
        raise SpoError(f"pass@k: c={c} correct samples cannot exceed n={n} samples")
    if k < 1 or k > n:
        raise SpoError(f"pass@k: k={k} must be between 1 and n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean of `pass_at_k(n, c, k)` over problems given as `(n, c)` pairs.

    Raises SpoError on an empty input (a mean over no problems is undefined).
    """
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise SpoError("mean pass@k over no problems is undefined")
    return float(np.mean(values))


def paired_pass_at_k_difference(
    before: Iterable[tuple[int, int]],
    after: Iterable[tuple[int, int]],
    k: int,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean pass@k(after) - pass@k(before) over the same problems, with a 95% bootstrap interval.

    `before[i]` and `after[i]` are `(n, c)` for the same problem `i`; problems are resampled in
    pairs, so the interval reflects which problems were drawn, not only the sampling noise of
    each estimate. Returns `(difference, low, high)`.
    """
    b = np.array([pass_at_k(n, c, k) for n, c in before])
    a = np.array([pass_at_k(n, c, k) for n, c in after])
    if len(a) != len(b) or not len(a):
        raise SpoError(
            f"paired pass@k needs the same problems before and after ({len(b)} vs {len(a)})"
        )
    return bootstrap_mean(a - b, resamples=resamples, seed=seed)


def bootstrap_mean(
    values: Iterable[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-problem `values` (e.g. paired differences) with the 95% percentile interval
    of `resamples` bootstrap means (problems drawn with replacement; `seed` fixes the draw).
    Returns `(mean, low, high)`; raises SpoError on no values."""
    diff = np.asarray(list(values), dtype=np.float64)
    if not len(diff):
        raise SpoError("a bootstrap interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)
