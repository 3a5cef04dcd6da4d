"""Sequential sampling of S0 (a problem's success rate under pi_0): the stopping rule, its
unbiased estimator and its exact 95% interval. No torch; numpy only.

Q0 = beta log(S0 + (1 - S0) e^{-1/beta}) is about beta log S0 when S0 >> e^{-1/beta}, so its
error is beta times the *relative* error of S0: a fixed n spends far more samples than needed on
easy problems and too few on hard ones. The sequential rule (inverse binomial sampling in rounds)
samples a problem until it has `r` successes or `cap` judged samples, looking only at the
*checks*: judged-sample counts on a geometric schedule (`first`, then x `growth`, ..., `cap`), so
every problem still going at a check draws the same round (one batched generate call).

Estimator. With the checks the rule looked at (`n_1 < ... < n_K`, stopping at the first with
c >= r, or at the cap), the Rao-Blackwell estimator of the first sample's outcome,
`E[X_1 | N, C] = W1(N, C) / W(N, C)` (W: outcome sequences that reach (N, C) without stopping
earlier; W1: those of them starting with a success), is exactly unbiased for S0 whatever the
schedule (Girshick, Mosteller and Savage 1946). It is Haldane's (r-1)/(N-1) when every sample is
a check, and c/n for a fixed n (one check). Samples drawn in a round past the r-th success are
used, not discarded: the decision is taken only at checks, so they belong to the design.

Interval. The 95% interval of S0 is exact (Clopper-Pearson style) for the whole design: the
terminal states are ordered by their estimate and the bounds solve P_p(estimate >= observed) =
0.025 and P_p(estimate <= observed) = 0.025. For a fixed n it is Clopper-Pearson. Q0 is increasing
in S0, so the interval maps to `q0_low`, `q0_high` bound by bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spo_store.errors import SpoError

STOPPING_RULES = ("sequential", "fixed")
DEFAULT_SUCCESSES = 12
DEFAULT_FIRST = 32
DEFAULT_GROWTH = 1.5
ALPHA = 0.05


@dataclass(frozen=True)
class StoppingRule:
    """How many pi_0 samples a problem gets: `fixed` (exactly `cap` judged samples) or
    `sequential` (until `successes` successes or `cap` judged samples, checked at `checks()`)."""

    kind: str = "sequential"
    cap: int = 800
    successes: int = DEFAULT_SUCCESSES
    first: int = DEFAULT_FIRST
    growth: float = DEFAULT_GROWTH

    def __post_init__(self) -> None:
        if self.kind not in STOPPING_RULES:
            raise SpoError(f"--stopping {self.kind!r}: expected one of {', '.join(STOPPING_RULES)}")
        if self.cap < 1:
            raise SpoError(f"--samples {self.cap}: needs at least 1")
        if self.kind == "sequential":
            if self.successes < 2:
                # r = 1 makes the unbiased estimate 0 unless the very first sample succeeds.
                raise SpoError(f"--stop-successes {self.successes}: needs at least 2")
            if self.first < 1 or not self.growth > 1:
                raise SpoError(
                    f"sequential schedule needs first >= 1 and growth > 1, got "
                    f"{self.first}, {self.growth}"
                )

    def schedule(self) -> list[int]:
        """The judged-sample counts at which a sequential rule checks, ending at `cap`
        (`[cap]` for a fixed rule)."""
        if self.kind == "fixed":
            return [self.cap]
        out, b = [], min(self.first, self.cap)
        while b < self.cap:
            out.append(b)
            b = max(b + 1, math.ceil(b * self.growth))
        return [*out, self.cap]

    def next_check(self, n: int) -> int:
        """The next check above `n` judged samples (`cap` at most)."""
        return next((b for b in self.schedule() if b > n), self.cap)

    def stopped(self, n: int, c: int) -> bool:
        """Whether a problem with n judged samples and c successes, just checked, is done."""
        return n >= self.cap or (self.kind == "sequential" and c >= self.successes)

    def text(self, checks: list[int]) -> str:
        """The `q0_estimates.stopping` text of an estimate checked at `checks`: `fixed` or
        `sequential(r=R,checks=N1,N2,...)` (what the estimator needs to be recomputed)."""
        if self.kind == "fixed":
            return "fixed"
        return f"sequential(r={self.successes},checks={','.join(map(str, checks))})"


def parse_stopping(text: str | None) -> tuple[int | None, list[int]]:
    """`(r, checks)` of a stored `stopping` text; `(None, [])` for `fixed` or NULL."""
    if not text or text == "fixed":
        return None, []
    try:
        body = text[len("sequential(") : -1]
        r_part, checks_part = body.split(",checks=")
        return int(r_part.removeprefix("r=")), [int(x) for x in checks_part.split(",") if x]
    except ValueError as exc:
        raise SpoError(f"unreadable q0 stopping rule {text!r}") from exc


def _log_binom(n: int, k: np.ndarray) -> np.ndarray:
    out = np.full(k.shape, -np.inf)
    ok = (k >= 0) & (k <= n)
    kk = k[ok].astype(float)
    out[ok] = math.lgamma(n + 1) - _lgamma(kk + 1) - _lgamma(n - kk + 1)
    return out


_lgamma = np.vectorize(math.lgamma, otypes=[float])


def _terminal_states(
    checks: list[int], r: int | None
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per check: `(n, c, log W, log W1)` of the states that stop there (c >= r, or every c at
    the last check). W counts outcome sequences reaching (n, c) without stopping at an earlier
    check; W1 those of them whose first outcome is a success."""
    out = []
    cont_c = np.array([0])
    cont_w = np.array([0.0])  # log W of the continuing states (c < r) at the previous check
    cont_w1 = np.array([-np.inf])
    prev = 0
    last = len(checks) - 1
    for k, n in enumerate(checks):
        delta = n - prev
        cs = np.arange(0, (int(cont_c.max()) if cont_c.size else 0) + delta + 1)
        lw = np.full(cs.shape, -np.inf)
        lw1 = np.full(cs.shape, -np.inf)
        for c0, w0, w10 in zip(cont_c, cont_w, cont_w1, strict=True):
            lb = _log_binom(delta, cs - c0)
            lw = np.logaddexp(lw, w0 + lb)
            if prev == 0:  # first segment: the first outcome is a success, delta - 1 others
                lw1 = np.logaddexp(lw1, _log_binom(delta - 1, cs - 1))
            else:
                lw1 = np.logaddexp(lw1, w10 + lb)
        reach = np.isfinite(lw)
        stop = reach if (k == last or r is None) else reach & (cs >= r)
        out.append((n, cs[stop], lw[stop], lw1[stop]))
        if k == last or r is None:
            break
        keep = reach & (cs < r)
        cont_c, cont_w, cont_w1 = cs[keep], lw[keep], lw1[keep]
        prev = n
    return out


def s0_estimate(n: int, c: int, checks: list[int], r: int | None) -> float:
    """The unbiased estimate of S0 from c successes in n judged samples, drawn by a rule that
    checked at `checks` (ending at n) and stops at `r` successes (`r=None`: fixed n, c/n).
    Raises SpoError when (n, c) cannot end that design."""
    if r is None or not checks:
        if n <= 0 or not 0 <= c <= n:
            raise SpoError(f"S0 needs 0 <= successes <= samples and samples > 0, got {c}/{n}")
        return c / n
    if checks[-1] != n:
        raise SpoError(f"sequential estimate: last check {checks[-1]} is not the {n} samples")
    n_k, cs, lw, lw1 = _terminal_states(checks, r)[-1]
    hit = np.nonzero(cs == c)[0]
    if n_k != n or hit.size == 0:
        raise SpoError(f"sequential estimate: {c}/{n} cannot end checks {checks} with r={r}")
    return float(min(1.0, max(0.0, math.exp(lw1[hit[0]] - lw[hit[0]]))))


def s0_interval(
    n: int, c: int, checks: list[int], r: int | None, future: list[int] | None = None
) -> tuple[float, float]:
    """The exact 95% interval `(low, high)` of S0 for the observed (n, c) of the design that
    checked at `checks` and would have gone on checking at `future` (the rest of its schedule;
    unused for a fixed n): terminal states are ordered by their unbiased estimate."""
    if r is None or not checks:
        design, r_ = [n], None
    else:
        design, r_ = [*checks, *(b for b in (future or []) if b > checks[-1])], r
    states = _terminal_states(design, r_)
    est_obs = s0_estimate(n, c, checks if r_ is not None else [n], r_)
    ns = np.concatenate([np.full(cs.shape, nk) for nk, cs, _, _ in states])
    cs = np.concatenate([s[1] for s in states])
    lw = np.concatenate([s[2] for s in states])
    est = np.exp(np.concatenate([s[3] for s in states]) - lw)
    tol = 1e-12
    ge = est >= est_obs - tol
    le = est <= est_obs + tol

    def prob(mask: np.ndarray, p: float) -> float:
        lp = lw[mask] + cs[mask] * math.log(p) + (ns[mask] - cs[mask]) * math.log1p(-p)
        return float(np.exp(lp).sum()) if lp.size else 0.0

    half = ALPHA / 2

    def solve(mask: np.ndarray, increasing: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            f = prob(mask, min(max(mid, 1e-300), 1 - 1e-16))
            if (f < half) == increasing:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if est_obs <= tol else solve(ge, increasing=True)
    high = 1.0 if est_obs >= 1 - tol else solve(le, increasing=False)
    return low, high
