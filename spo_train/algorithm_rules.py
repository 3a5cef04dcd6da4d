"""What each training algorithm decides about a run, in one place per algorithm; no torch.

An algorithm is two things: its update (`spo_train.algorithms.<name>`, torch: the loss, extra
models, optimizer steps) and its rules here, which the settings, the trainer, the CLI and the
experiment planner read without importing torch:
- `defaults`: what a setting left unset means for it (`TrainConfig.resolved` fills them, and
  `resolve` adds the ones derived from other settings);
- `check(config)`: its refusals of settings (one SpoError line naming the flag);
- `needs_q0`: it trains against q0 estimates (the run's problems, and the rows its mixture
  draws, are those of problems with one);
- `online_only`: its batch is whole groups of this run's fresh rollouts
  (`spo_train.train.batch_sources.GroupBatches`), not a mixture draw (`MixtureBatches`);
- `progress(metrics)`: the few numbers `spo train`'s progress bar shows per step;
- `label_settings`: the settings a report's label names besides the algorithm.

Adding an algorithm: its module under `spo_train/algorithms/`, one `AlgorithmRules` subclass
here naming it (`name`, `summary`: `spo train --help` lists it from here; `implementation`), and
its line in `RULES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spo_store.errors import SpoError


class AlgorithmRules:
    """The rules of one algorithm (see the module docstring); the base refuses nothing."""

    name = ""
    summary = ""
    """What the algorithm is, in a few words (`spo train --help` lists it under --algo)."""
    implementation = ""
    """`module:Class` of its `spo_train.algorithms.Algorithm` (imported on first use)."""
    needs_q0 = False
    online_only = False
    has_mc_term = False
    """Its loss can add the Monte-Carlo term of `spo pts` annotations (`--mc-weight`)."""
    defaults: Mapping[str, Any] = {}
    label_settings: tuple[str, ...] = ()

    def resolve(self, config: Any) -> dict[str, Any]:
        """The settings left unset (None) that this algorithm fills in: `defaults`, plus those
        derived from other settings. `{name: value}`, applied by `TrainConfig.resolved`."""
        return {k: v for k, v in self.defaults.items() if getattr(config, k) is None}

    def check(self, config: Any) -> None:
        """Refuse settings this algorithm cannot run with (SpoError, one line)."""
        if config.mc_weight and not self.has_mc_term:
            raise SpoError(
                f"--mc-weight {config.mc_weight:g} is an spo loss term; --algo {self.name} has "
                "none (drop --mc-weight)"
            )
        if config.grpo_reference_per_group and self.name != "grpo":
            raise SpoError(
                f"--grpo-reference-per-group {config.grpo_reference_per_group} adds reference "
                f"solutions to grpo's groups; --algo {self.name} has none (drop it, or use "
                "--algo grpo)"
            )
        if config.rollout_workers and config.rollout_worker_decoding:
            _refuse_online_without_a_current_worker(config)

    def progress(self, metrics: Mapping[str, float]) -> str:
        """The progress bar's text for one step's metrics."""
        return ""


def _refuse_online_without_a_current_worker(config: Any) -> None:
    """With rollout workers none of which samples the current policy, the mixture's `online`
    source never gets a row: the trainer would wait `SPO_ROLLOUT_MAX_WAIT_S` (30 min), then fail."""
    from spo_train.rollouts.worker_spec import worker_decodings

    mix = config.resolved().mix
    parts = (part.partition(":") for part in mix.split(","))
    if not any(n.strip() == "online" and w.strip() not in ("0", "0.0") for n, _, w in parts):
        return
    decodings = worker_decodings(config.rollout_worker_decoding, config.rollout_workers, (1, 1), 1)
    if not any(d.policy == "current" for d in decodings):
        raise SpoError(
            f"--rollout-worker-decoding {config.rollout_worker_decoding}: none of the "
            f"{config.rollout_workers} rollout worker(s) samples the current policy, so --mix "
            f"{mix}'s online source would never get a row: add a `current` spec or drop online"
        )


class SPORules(AlgorithmRules):
    name = "spo"
    summary = "Soft Policy Optimization, the paper's"
    implementation = "spo_train.algorithms.spo:SPO"
    needs_q0 = True
    has_mc_term = True
    defaults = {
        "mix": "online:0.5,offline:0.5",
        "model_update_interval": 10,
        "rollout_temperature": (0.1, 0.8),
        "rollout_top_p": 0.95,
    }
    label_settings = ("loss",)

    def progress(self, metrics: Mapping[str, float]) -> str:
        return (
            f"loss {metrics.get('train/loss', float('nan')):.4f} "
            f"|Q_T-r| {metrics.get('train/terminal_abs_error', float('nan')):.3f}"
        )


class OnlineGroupRules(AlgorithmRules):
    """Algorithms that train on whole groups of this run's fresh rollouts (PPO, GRPO)."""

    online_only = True
    defaults = {
        "mix": "online:1",
        "model_update_interval": 1,
        "rollout_temperature": (1.0, 1.0),
        "rollout_top_p": 1.0,
    }

    def check(self, config: Any) -> None:
        super().check(config)
        offline = [
            name.strip()
            for name, _, weight in (
                part.partition(":") for part in config.resolved().mix.split(",")
            )
            if name.strip() != "online" and weight.strip() not in ("0", "0.0")
        ]
        if offline:
            raise SpoError(
                f"--algo {self.name} trains on this run's online rollouts only, but --mix "
                f"{config.mix} asks for {', '.join(offline)}: drop --mix (online:1) or use "
                "--algo spo for offline data",
                exit_code=1,
            )
        if config.rollout_workers and config.rollout_worker_decoding:
            from spo_train.rollouts.worker_spec import parse_decoding

            specs = parse_decoding(config.rollout_worker_decoding, (1.0, 1.0), 1.0)
            if any(d.policy == "reference" for d in specs):
                raise SpoError(
                    f"--rollout-worker-decoding {config.rollout_worker_decoding}: --algo "
                    f"{self.name} trains on rollouts of the current policy only; a "
                    "reference worker's rows would never be used (use --algo spo, whose "
                    "pi0 source draws them)"
                )
        if config.batch_size % config.rollout_n:
            raise SpoError(
                f"--batch-size {config.batch_size} is not a multiple of --rollout-n "
                f"{config.rollout_n}: --algo {self.name} trains on whole groups of rollouts "
                "of a problem"
            )
        if config.minibatches > config.batch_size // config.rollout_n:
            raise SpoError(
                f"--minibatches {config.minibatches} is more than the "
                f"{config.batch_size // config.rollout_n} problems of a batch (--batch-size / "
                "--rollout-n): a minibatch holds whole groups"
            )

    def progress(self, metrics: Mapping[str, float]) -> str:
        return (
            f"reward {metrics.get('rollout/reward_mean', float('nan')):.3f} "
            f"clip {metrics.get('train/clip_frac', float('nan')):.3f}"
        )


class PPORules(OnlineGroupRules):
    name = "ppo"
    summary = "KL-regularised reward, value model, GAE"
    implementation = "spo_train.algorithms.ppo:PPO"

    def resolve(self, config: Any) -> dict[str, Any]:
        fill = super().resolve(config)
        if config.value_learning_rate is None:
            fill["value_learning_rate"] = config.learning_rate
        return fill


class GRPORules(OnlineGroupRules):
    name = "grpo"
    summary = "group-normalised advantages"
    implementation = "spo_train.algorithms.grpo:GRPO"

    def resolve(self, config: Any) -> dict[str, Any]:
        fill = super().resolve(config)
        if config.kl_coef is None:
            fill["kl_coef"] = config.beta
        return fill


class TOPRRules(AlgorithmRules):
    """TOPR trains on the same lake mixture as SPO (off-policy by design, no q0): its defaults
    are SPO's, so an arm against SPO differs in its loss only."""

    name = "topr"
    summary = "Tapered Off-Policy REINFORCE"
    implementation = "spo_train.algorithms.topr:TOPR"
    defaults = SPORules.defaults
    # No label setting: runs that differ in --topr-baseline are told apart by the report's
    # `topr_baseline=...` (report_data.group_plain_runs), which names the setting.

    def progress(self, metrics: Mapping[str, float]) -> str:
        return (
            f"loss {metrics.get('train/loss', float('nan')):.4f} "
            f"taper {metrics.get('train/negative_taper_mean', float('nan')):.3f}"
        )


class SFTRules(AlgorithmRules):
    """SFT trains on the successes of a lake mixture (default `offline:1`: the correct
    solutions SPO's offline half draws), no q0. Its rollout defaults are SPO's, used only when
    the mixture has an `online` part (rejection-sampling fine-tuning on this run's own
    successes); without one the run samples nothing (`spo_train.rollouts.sources`)."""

    name = "sft"
    summary = "token-level NLL on the mixture's successes"
    implementation = "spo_train.algorithms.sft:SFT"
    defaults = {**SPORules.defaults, "mix": "offline:1"}

    def check(self, config: Any) -> None:
        super().check(config)
        mix = config.resolved().mix
        online = any(
            name.strip() == "online" and _positive(weight)
            for name, _, weight in (part.partition(":") for part in mix.split(","))
        )  # a malformed --mix is the mixture's own refusal (spo_store.mixture), later
        if config.rollout_workers and not online:
            raise SpoError(
                f"--rollout-workers {config.rollout_workers}: --algo sft with --mix {mix} "
                "samples no rollouts (no online part); drop "
                "--rollout-workers or add online to --mix"
            )

    def progress(self, metrics: Mapping[str, float]) -> str:
        return (
            f"nll {metrics.get('train/nll_mean', float('nan')):.4f} "
            f"ppl {metrics.get('train/perplexity', float('nan')):.2f}"
        )


def _positive(weight: str) -> bool:
    """A mixture weight's text names a positive number (else: 0 or not a number)."""
    try:
        return float(weight) > 0
    except ValueError:
        return False


RULES: dict[str, AlgorithmRules] = {
    r.name: r for r in (SPORules(), PPORules(), GRPORules(), TOPRRules(), SFTRules())
}
"""Every algorithm `--algo` accepts, by name (the first is the default)."""


def algorithms_help(rules: Mapping[str, AlgorithmRules] | None = None) -> str:
    """`--algo`'s help, from `rules` (default `RULES`): each algorithm with its `summary`, then
    which train on this run's online rollouts only (`online_only`) and which need no q0
    (`needs_q0` False). A new entry in `RULES` appears without editing the help."""
    rules = RULES if rules is None else rules

    def words(names: list[str]) -> str:
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

    def every(names: list[str]) -> str:
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    text = "training algorithm: " + words(
        [f"{r.name} ({r.summary})" if r.summary else r.name for r in rules.values()]
    )
    online = [r.name for r in rules.values() if r.online_only]
    if online:
        verb = "trains" if len(online) == 1 else "train"
        text += f"; {every(online)} {verb} on this run's online rollouts only"
    no_q0 = [r.name for r in rules.values() if not r.needs_q0]
    if no_q0:
        text += f"; {every(no_q0)} {'needs' if len(no_q0) == 1 else 'need'} no q0"
    return text + " (docs/algorithms.md)"


def rules_of(algo: str | None) -> AlgorithmRules:
    """The rules of `algo` (None: spo, the default); ValueError for an unknown name (settings
    are checked against `RULES` before any caller gets here)."""
    try:
        return RULES[algo or "spo"]
    except KeyError:
        raise ValueError(f"unknown algorithm {algo!r}") from None
