"""`spo pts`: pivotal token search, Monte-Carlo success probabilities `S_t` of response prefixes.

Method doc, "Pivotal Token Search" (Phi-4 report, as used by the SPO paper, Sec. 3.1.3 and
5.1): for a successful trajectory `a_1..a_T`, `S` after a prefix is estimated by `K` rollouts
of the reference model pi_0 (temperature 1, top-p 1: pi_0 itself) continuing the prefix, each
judged in the sandbox. Bisection: `S` is known at both ends of an interval of prefix lengths;
if the two differ by more than `threshold`, `S` is estimated at the midpoint and both halves
are searched, down to single tokens. Each pivotal token costs O(log T) estimates, not T.

Conventions (see `spo_store.annotations`): internally a prefix is named by its length
`L = 0..T` (`spo_loss`'s `t`); stored positions are token indices `L - 1` (`-1`: the prompt
alone), so position `t` holds `S` after emitting tokens `0..t`, and `S` after the whole
response is 1 (the trajectory passed; not estimated, not stored). Token ids are those the
trainer uses (`spo_train.train.batch.ReferenceCache`): the row's own ids when its tokenizer is the
one in use, else `encode_prompt` / `encode_response` of the text.

Everything is batched: each round estimates every prefix that the search of every trajectory of
a chunk needs next, with one `generate_ids` call per distinct number of missing rollouts and one
judge batch. Rollouts are `trajectories` rows (`source='pts'`, deterministic ids
`pts-<rollout_key>@<position>#<k>`), inserted by key after each round: a run killed at any
point is resumed by running it again (stored rollouts are reused, never sampled twice or
stored twice). An annotation is written (by key) when its trajectory's search is done.
"""

# One module per job: search (the bisection and the estimator), annotate (the command's run over
# selected trajectories), targets (Monte-Carlo targets for training; analysis and plots).
from spo_train.pts.annotate import (
    PTSReport,
    annotate,
    load_targets,
    pivots_of,
    select_trajectories,
    selection_sql,
)
from spo_train.pts.search import (
    DEFAULT_SAMPLES,
    DEFAULT_THRESHOLD,
    Judge,
    PTSConfig,
    RolloutEstimator,
    Sampler,
    Target,
    next_prefixes,
    pivotal_token_search,
    sandbox_judge,
)
from spo_train.pts.targets import attach_mc_targets, largest_jump_annotation, plot_annotation

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_THRESHOLD",
    "Judge",
    "PTSConfig",
    "PTSReport",
    "RolloutEstimator",
    "Sampler",
    "Target",
    "annotate",
    "attach_mc_targets",
    "largest_jump_annotation",
    "load_targets",
    "next_prefixes",
    "pivotal_token_search",
    "pivots_of",
    "plot_annotation",
    "sandbox_judge",
    "select_trajectories",
    "selection_sql",
]
