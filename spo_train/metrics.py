"""Evaluation metrics: the unbiased pass@k estimator (Chen et al. 2021, "Codex" paper) and the
bootstrap intervals of means over problems (`bootstrap_mean`) and over seeds and problems
(`bootstrap_seeds_problems`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


SEEDS_X_PROBLEMS = "seeds x problems"
"""`BootstrapInterval.levels` when some arm has several seeds: both levels resampled."""
PROBLEMS_ONLY = "problems"
"""`BootstrapInterval.levels` when every arm has one seed: the problem bootstrap alone."""


@dataclass(frozen=True)
class BootstrapInterval:
    """A mean (or difference of two arms' means) with its percentile 95% interval.

    `diff` is the estimate, `low`/`high` the 2.5% and 97.5% quantiles of the replicates,
    `problems` how many problems it averages over, `seeds` how many seeds each arm has
    (`(arm,)` or `(arm, minus)`) and `levels` what was resampled (`SEEDS_X_PROBLEMS` or
    `PROBLEMS_ONLY`)."""

    diff: float
    low: float
    high: float
    problems: int
    seeds: tuple[int, ...]
    levels: str


def _seed_problem_matrix(
    arm: Mapping[Any, Mapping[str, float]], problems: Sequence[str], what: str
) -> np.ndarray:
    """`(seeds, problems)` float64 array of one arm, NaN where a seed lacks a problem; seeds
    sorted by key (as text, so mixed key types still order), seeds with none of `problems`
    left out (they carry nothing to average)."""
    rows = []
    for key in sorted(arm, key=str):
        row = [arm[key].get(p, np.nan) for p in problems]
        if not all(np.isnan(v) for v in row):
            rows.append(row)
    x = np.array(rows, dtype=np.float64).reshape(len(rows), len(problems))
    if np.isinf(x).any():
        raise SpoError(f"a bootstrap interval needs finite values; {what} has an infinite one")
    return x


def _problems_of(arm: Mapping[Any, Mapping[str, float]], what: str) -> set[str]:
    problems: set[str] = set()
    for key, values in arm.items():
        for pid, v in values.items():
            if not np.isfinite(v):
                raise SpoError(
                    f"a bootstrap interval needs finite values; {what} seed {key!r} "
                    f"has {v!r} for problem {pid!r}"
                )
            problems.add(pid)
    return problems


def bootstrap_seeds_problems(
    arm: Mapping[Any, Mapping[str, float]],
    minus: Mapping[Any, Mapping[str, float]] | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> BootstrapInterval:
    """Two-level (seeds x problems) bootstrap of a mean over seeds and problems, or of the
    difference of two arms' means, with its percentile 95% interval.

    `arm` (and `minus`) map a seed's key (any sortable-as-text id, e.g. a run id) to that
    seed's value per problem id (e.g. its pass@k, or its own change in pass@k between two
    steps: pairing across steps is kept by giving each seed its per-problem change). The
    statistic is the mean over problems of, per problem, the mean over the seeds that have
    that problem (an unweighted two-level mean); with `minus` it is `arm`'s statistic minus
    `minus`'s over the problems both arms have (some seed each).

    Each of the `resamples` replicates draws the problems with replacement (one draw, shared
    by both arms, so the problem pairing is kept) and, independently per arm, that arm's
    seeds with replacement (the seeds of two arms are different training runs, not pairs),
    and recomputes the statistic on the drawn seeds and problems (a problem none of the drawn
    seeds of an arm has drops out of that replicate; a replicate left with no problem is
    dropped). Seeds and problems are crossed (every seed is evaluated on the same problems),
    so this is the "pigeonhole" bootstrap of a two-way crossed random-effects layout, rows
    and columns resampled independently (Owen 2007, Ann. Appl. Stat. 1(2):386-411; see also
    Davison & Hinkley 1997, "Bootstrap Methods and their Application", Sec. 3.8, on
    resampling data with several levels of variation). McCullagh (2000, Bernoulli 6:285-301)
    showed that no resampling scheme is exact for such arrays; Owen shows this one is mildly
    conservative when both levels have many units.

    Known limitation: the seed level has few units. Resampling S seeds with replacement gives
    the seed-to-seed variance of the mean times (S - 1) / S (2/3 with 3 seeds), and the
    percentile interval of so few distinct seed draws is coarse, so with few seeds the
    interval understates the training noise: read it as a lower bound on the uncertainty
    below about 5 seeds, and never trust one from fewer than 3. With one seed per arm the
    seed draw is always that seed and the result equals `bootstrap_mean` of the per-problem
    values (difference) exactly: the problem bootstrap alone (`levels` = `PROBLEMS_ONLY`).

    The draw is fixed by `seed` and by sorted seed keys and problem ids, so the same inputs
    give the same interval whatever their order. Vectorised: 2000 replicates of 200 problems
    x 5 seeds x 2 arms take milliseconds. Raises SpoError when there is no problem to
    average over or a value is not finite.
    """
    arms = [("arm", arm)] if minus is None else [("arm", arm), ("minus", minus)]
    sets = [_problems_of(values, what) for what, values in arms]
    problems = sorted(set.intersection(*sets))
    if not problems:
        raise SpoError(
            "a bootstrap interval needs at least one value"
            if minus is None
            else "a bootstrap interval of a difference needs problems both arms have"
        )
    if resamples < 1:
        raise SpoError(f"a bootstrap interval needs at least 1 resample; got {resamples}")
    mats = [_seed_problem_matrix(values, problems, what) for what, values in arms]
    n_problems = len(problems)
    rng = np.random.default_rng(seed)
    # The problem draw first, as `bootstrap_mean` makes it: one seed per arm reproduces it.
    picks = rng.integers(0, n_problems, size=(resamples, n_problems))
    point = np.zeros(n_problems)
    levels = []  # per arm: sign, values (NaN -> 0), which are present (None: all), weights
    for sign, x in zip((1.0, -1.0), mats, strict=False):
        n_seeds = x.shape[0]
        has = ~np.isnan(x)
        values = np.where(has, x, 0.0)
        # Point estimate: every seed once.
        point += sign * (values.sum(axis=0) / has.sum(axis=0))
        # Seed draw as counts per seed (a resample's weight on each seed): one matrix product
        # per arm rather than a loop over replicates.
        draw = rng.integers(0, n_seeds, size=(resamples, n_seeds))
        offsets = np.arange(resamples)[:, None] * n_seeds
        weights = np.bincount((draw + offsets).ravel(), minlength=resamples * n_seeds)
        weights = weights.reshape(resamples, n_seeds).astype(np.float64)
        levels.append((sign, values, None if has.all() else has.astype(np.float64), weights))
    means = np.empty(resamples)
    # Blocks of replicates keep the (replicates, problems) arrays near 16 MiB each however
    # many problems there are; each replicate's numbers do not depend on the block.
    block = max(1, (1 << 21) // n_problems)
    for start in range(0, resamples, block):
        rows = slice(start, min(resamples, start + block))
        per_problem = np.zeros((rows.stop - rows.start, n_problems))
        present: np.ndarray | None = None
        for sign, values, has, weights in levels:
            total = weights[rows] @ values
            if has is None:  # the usual case: each drawn seed has every problem
                per_problem += sign * (total / values.shape[0])
                continue
            count = weights[rows] @ has
            seen = count > 0
            per_problem += sign * np.divide(total, count, out=np.zeros_like(total), where=seen)
            present = seen if present is None else present & seen
        drawn = np.take_along_axis(per_problem, picks[rows], axis=1)
        if present is None:
            means[rows] = drawn.sum(axis=1) / n_problems
            continue
        kept = np.take_along_axis(present, picks[rows], axis=1)
        n_kept = kept.sum(axis=1)
        sums = np.where(kept, drawn, 0.0).sum(axis=1)
        means[rows] = np.divide(sums, n_kept, out=np.full(len(sums), np.nan), where=n_kept > 0)
    low, high = np.nanquantile(means, [0.025, 0.975])
    seeds = tuple(int(x.shape[0]) for x in mats)
    return BootstrapInterval(
        diff=float(point.mean()),
        low=float(low),
        high=float(high),
        problems=n_problems,
        seeds=seeds,
        levels=SEEDS_X_PROBLEMS if max(seeds) > 1 else PROBLEMS_ONLY,
    )
