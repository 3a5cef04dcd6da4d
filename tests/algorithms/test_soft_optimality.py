"""Exact checks of the cumulative Q-parameterization and of SPO's soft optimality.

A tabular autoregressive policy over all sequences of length T=4 from a vocabulary of 3 (81
sequences, 40 prefixes with a logits row each) lets us enumerate everything exactly: pi*, the
true soft values Q_t under pi_0, and KL(pi* || pi_theta). Method doc "Checks that prove an
implementation"; paper Theorems 2.1-2.4.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from spo_train.algorithms.losses import (
    advantages,
    cumulative_q,
    pad_mc_targets,
    q0_from_success_rate,
    spo_loss,
)

V, T = 3, 4
PAPER_BETA = 1.0 / math.log(100000.0)
DT = torch.float64


class Tabular:
    """All V**T sequences, the prefix index of every position, and exact quantities."""

    def __init__(self, seed: int, p_fail: float = 0.6) -> None:
        self.seqs = torch.tensor(list(itertools.product(range(V), repeat=T)))  # [N, T]
        self.n = self.seqs.shape[0]
        # prefix id of the prefix a_<t (the state from which token t is drawn), per position.
        self.pid = torch.zeros(self.seqs.shape, dtype=torch.long)
        offset = 0
        for t in range(T):
            code = torch.zeros(self.n, dtype=torch.long)
            for j in range(t):
                code = code * V + self.seqs[:, j]
            self.pid[:, t] = offset + code
            offset += V**t
        self.n_prefix = offset
        g = torch.Generator().manual_seed(seed)
        self.logits0 = torch.randn(self.n_prefix, V, generator=g, dtype=DT)
        self.reward = -(torch.rand(self.n, generator=g) < p_fail).to(DT)
        if bool((self.reward == 0).all()) or bool((self.reward == -1).all()):
            self.reward[0] = -1.0 - self.reward[0]
        self.mask = torch.ones(self.n, T, dtype=torch.bool)

    def token_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """`[N, T]` log pi(a_t | a_<t) for every sequence under a tabular logits table."""
        return torch.log_softmax(logits, dim=-1)[self.pid, self.seqs]

    @property
    def lp0(self) -> torch.Tensor:
        return self.token_logprobs(self.logits0)

    def q0_exact(self, beta: float) -> float:
        # Q_0 = beta log E_{pi_0}[exp(r/beta)]
        return float(beta * torch.logsumexp(self.lp0.sum(-1) + self.reward / beta, 0))

    def log_pstar(self, beta: float) -> torch.Tensor:
        lp = self.lp0.sum(-1) + self.reward / beta
        return lp - torch.logsumexp(lp, 0)

    def kl_star(self, logits: torch.Tensor, beta: float) -> float:
        """KL(pi* || pi_theta) over whole sequences, exact."""
        ls = self.log_pstar(beta)
        lt = self.token_logprobs(logits).sum(-1)
        return float((ls.exp() * (ls - lt)).sum())

    def success_prob(self, t: int) -> torch.Tensor:
        """`[N]` exact S_t = P_{pi_0}(r = 0 | a_<=t) for the prefix of length t of each sequence."""
        p = self.lp0.sum(-1).exp()
        succ = (self.reward == 0).to(DT)
        key = torch.zeros(self.n, dtype=torch.long)
        for j in range(t):
            key = key * V + self.seqs[:, j]
        num = torch.zeros(V**t, dtype=DT).index_add_(0, key, p * succ)
        den = torch.zeros(V**t, dtype=DT).index_add_(0, key, p)
        return (num / den)[key]


# --------------------------------------------------------------------------------------------
# Parameterization checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, PAPER_BETA])
def test_zero_advantage_at_initialisation(beta: float) -> None:
    tab = Tabular(seed=0)
    lp0 = tab.lp0
    q0 = torch.full((tab.n,), tab.q0_exact(beta), dtype=DT)
    a = advantages(lp0.clone(), lp0, tab.mask, beta)
    assert torch.equal(a, torch.zeros_like(a))
    q = cumulative_q(lp0.clone(), lp0, q0, tab.mask, beta)
    assert torch.equal(q, q0.unsqueeze(-1).expand_as(q))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.5, PAPER_BETA, 2.0])
def test_theorem_2_2_bellman_consistency_exhaustive(seed: int, beta: float) -> None:
    """Q_t = beta log sum_{a'} pi_0(a'|a_<=t) exp(Q_{t+1}(a_<=t a') / beta) for every prefix,
    for an arbitrary theta and an arbitrary Q_hat_0 (Theorem 2.2), by enumeration."""
    tab = Tabular(seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    theta = 3.0 * torch.randn(tab.n_prefix, V, generator=g, dtype=DT)  # arbitrary pi_theta
    q0_val = -0.37
    q = cumulative_q(
        tab.token_logprobs(theta), tab.lp0, torch.full((tab.n,), q0_val, dtype=DT), tab.mask, beta
    )
    q_ext = torch.cat([torch.full((tab.n, 1), q0_val, dtype=DT), q], dim=1)  # column t = Q_t
    logp0_table = torch.log_softmax(tab.logits0, -1)
    checked = 0
    for t in range(T):  # prefix length t; next token is position t
        # group sequences by prefix a_<=t, and within it by next token a_{t+1}
        prefix_key = torch.zeros(tab.n, dtype=torch.long)
        for j in range(t):
            prefix_key = prefix_key * V + tab.seqs[:, j]
        for key in prefix_key.unique():
            rows = (prefix_key == key).nonzero().squeeze(-1)
            q_t = q_ext[rows, t]
            assert torch.allclose(q_t, q_t[0].expand_as(q_t), atol=1e-12)  # a function of prefix
            pid = int(tab.pid[rows[0], t])
            children = torch.empty(V, dtype=DT)
            for a in range(V):
                r_a = rows[tab.seqs[rows, t] == a]
                vals = q_ext[r_a, t + 1]
                assert torch.allclose(vals, vals[0].expand_as(vals), atol=1e-12)
                children[a] = vals[0]
            backed_up = beta * torch.logsumexp(logp0_table[pid] + children / beta, 0)
            assert float(backed_up) == pytest.approx(float(q_t[0]), abs=1e-10)
            checked += 1
    assert checked == sum(V**t for t in range(T))


@pytest.mark.parametrize("seed", range(5))
def test_theorem_2_3_path_consistency_random_intervals(seed: int) -> None:
    """sum_{t=t1..tk} A_t = Q_tk - Q_{t1-1} for random intervals (Theorem 2.3), with padding."""
    g = torch.Generator().manual_seed(seed)
    batch, t_len, beta = 6, 50, 0.3
    lengths = torch.randint(1, t_len + 1, (batch,), generator=g)
    mask = torch.arange(t_len).unsqueeze(0) < lengths.unsqueeze(1)
    lp = -5 * torch.rand(batch, t_len, generator=g, dtype=DT)
    lp0 = -5 * torch.rand(batch, t_len, generator=g, dtype=DT)
    q0 = -torch.rand(batch, generator=g, dtype=DT)
    a = advantages(lp, lp0, mask, beta)
    q = cumulative_q(lp, lp0, q0, mask, beta)
    q_ext = torch.cat([q0.unsqueeze(-1), q], dim=1)  # column t = Q_t (t = prefix length)
    for i in range(batch):
        n = int(lengths[i])
        for _ in range(20):
            t1 = int(torch.randint(1, n + 1, (1,), generator=g))
            tk = int(torch.randint(t1, n + 1, (1,), generator=g))
            lhs = a[i, t1 - 1 : tk].sum()
            rhs = q_ext[i, tk] - q_ext[i, t1 - 1]
            assert float(lhs) == pytest.approx(float(rhs), abs=1e-10)


@pytest.mark.parametrize("beta", [0.5, PAPER_BETA])
def test_theorems_2_1_and_2_4_optimal_policy_has_terminal_q_equal_reward(beta: float) -> None:
    """pi_theta = pi* with Q_hat_0 = Q_0 gives Q_T = r on every sequence; and Q_t = true Q_t."""
    tab = Tabular(seed=3)
    q0 = tab.q0_exact(beta)
    # token-level pi*: pi*(a_t|a_<t) = pi*(a_<=t) / pi*(a_<t), from the sequence-level pi*.
    log_pstar = tab.log_pstar(beta)
    lp_star = torch.empty(tab.n, T, dtype=DT)
    prev = torch.zeros(tab.n, dtype=DT)
    for t in range(T):
        key = torch.zeros(tab.n, dtype=torch.long)
        for j in range(t + 1):
            key = key * V + tab.seqs[:, j]
        # log pi*(a_<=t+1): log-sum-exp of log pi*(a) over sequences sharing that prefix
        marg = torch.logsumexp(
            torch.where(
                key.unsqueeze(0) == torch.arange(V ** (t + 1)).unsqueeze(1),
                log_pstar.unsqueeze(0),
                torch.tensor(-math.inf, dtype=DT),
            ),
            dim=1,
        )
        cur = marg[key]
        lp_star[:, t] = cur - prev
        prev = cur
    q = cumulative_q(lp_star, tab.lp0, torch.full((tab.n,), q0, dtype=DT), tab.mask, beta)
    assert torch.allclose(q[:, -1], tab.reward, atol=1e-9)
    for t in range(1, T + 1):
        true_q = q0_from_success_rate(tab.success_prob(t), beta)
        assert torch.allclose(q[:, t - 1], true_q, atol=1e-9)
    # and q0_from_success_rate(S_0) is the exact Q_0
    s0 = float((tab.lp0.sum(-1).exp() * (tab.reward == 0)).sum())
    assert q0_from_success_rate(s0, beta) == pytest.approx(q0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Soft optimality: training on off-policy data reaches pi*
# --------------------------------------------------------------------------------------------


def train(
    tab: Tabular,
    variant: str,
    beta: float,
    *,
    lr: float = 0.05,
    steps: int = 2000,
    q0: float | None = None,
    mc: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Full-batch Adam on every sequence once (uniform, off-policy), learning rate decayed
    linearly to 0. Returns (initial KL, final KL)."""
    q0_val = tab.q0_exact(beta) if q0 is None else q0
    q0_t = torch.full((tab.n,), q0_val, dtype=DT)
    theta = tab.logits0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    lp0 = tab.lp0
    kw = {} if mc is None else {"mc_positions": mc[0], "mc_targets": mc[1]}
    kl_init = tab.kl_star(theta.detach(), beta)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead
    try:
        for _ in range(steps):
            loss = spo_loss(
                tab.token_logprobs(theta), lp0, q0_t, tab.reward, tab.mask, beta, variant, **kw
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return kl_init, tab.kl_star(theta.detach(), beta)


# (variant, beta, lr, steps): the learning rate decays linearly to 0 over `steps`. Measured
# KL(pi* || pi_theta) with these settings (seed 0) is listed in docs/losses.md.
CONVERGING = [
    ("terminal_ce", 0.5, 0.05, 1000),
    ("terminal_sq", 0.5, 0.1, 400),
    ("reverse_q_sq", 0.5, 0.1, 400),
    ("reverse_q_ce", 0.5, 0.05, 1500),
    ("advantage_bce", 0.5, 0.1, 400),
    ("terminal_ce", PAPER_BETA, 0.05, 1000),
    ("terminal_sq", PAPER_BETA, 0.1, 800),
    ("reverse_q_sq", PAPER_BETA, 0.1, 800),
    ("advantage_bce", PAPER_BETA, 0.1, 400),
]


@pytest.mark.parametrize(("variant", "beta", "lr", "steps"), CONVERGING)
def test_soft_optimality_each_loss(variant: str, beta: float, lr: float, steps: int) -> None:
    tab = Tabular(seed=0)
    kl_init, kl_final = train(tab, variant, beta, lr=lr, steps=steps)
    assert kl_init > 0.1
    assert kl_final < 1e-2, f"{variant} beta={beta}: KL(pi*||pi_theta) {kl_init} -> {kl_final}"


@pytest.mark.xfail(
    strict=False,
    reason="reverse-Q targets with cross-entropy converge slowly and erratically at the paper's "
    "beta (KL 0.93 -> ~0.1 in 1000-2000 steps, ~2e-3 only after ~12000 steps at lr 0.01); "
    "consistent with the paper's ablation (reverse-Q + CE hurt)",
)
def test_soft_optimality_reverse_q_ce_at_paper_beta() -> None:
    tab = Tabular(seed=0)
    kl_init, kl_final = train(tab, "reverse_q_ce", PAPER_BETA, lr=0.05, steps=1000)
    assert kl_final < kl_init / 5  # it does make progress ...
    assert kl_final < 1e-2  # ... but does not reach pi* within the budget


def _all_position_mc(tab: Tabular, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    per_seq = []
    s = {t: tab.success_prob(t) for t in positions}
    for i in range(tab.n):
        per_seq.append((positions, [float(s[t][i]) for t in positions]))
    pos, tgt = pad_mc_targets(per_seq)
    return pos, tgt.to(DT)


def test_soft_optimality_monte_carlo_targets_alone() -> None:
    """Exact S_t at every prefix length t=1..T (S_T is the success indicator) pins pi*."""
    tab = Tabular(seed=0)
    mc = _all_position_mc(tab, [1, 2, 3, 4])
    # Slower than the terminal losses (many L1-like CE terms at S_t = 1): 3000 steps.
    kl_init, kl_final = train(tab, "mc_ce", PAPER_BETA, mc=mc, lr=0.05, steps=3000)
    assert kl_final < 1e-2, (kl_init, kl_final)


@pytest.mark.parametrize(
    ("variant", "beta", "lr", "steps"),
    [("terminal_ce", 0.5, 0.05, 1000), ("terminal_sq", PAPER_BETA, 0.05, 1000)],
)
def test_soft_optimality_terminal_plus_sparse_monte_carlo(
    variant: str, beta: float, lr: float, steps: int
) -> None:
    tab = Tabular(seed=0)
    mc = _all_position_mc(tab, [2])  # one exact S_t per sequence, at t = 2
    kl_init, kl_final = train(tab, variant, beta, mc=mc, lr=lr, steps=steps)
    assert kl_final < 1e-2, (kl_init, kl_final)


def test_wrong_q0_does_not_reach_pi_star() -> None:
    """Q_hat_0 must be the true Q_0: with a biased one, Q_T = r is unreachable and so is pi*."""
    tab = Tabular(seed=0)
    beta = 0.5
    _, kl_exact = train(tab, "terminal_sq", beta, lr=0.1, steps=400)
    _, kl_biased = train(tab, "terminal_sq", beta, lr=0.1, steps=400, q0=tab.q0_exact(beta) + 0.2)
    assert kl_exact < 1e-4
    assert kl_biased > 1e-2
