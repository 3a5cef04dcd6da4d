"""The training run's evaluations of its own policy: pass@k on each evaluation set at a step
(before the first step, every `eval_every` steps, after the last), with the run's evaluation
sampler (`eval_n`, `eval_temperature`, `eval_top_p`). Rows and metrics go to the lake through
`spo_train.evaluate`; the pass@k also to TensorBoard and W&B (`MetricSink`). A step evaluated
once (before a crash included) is never evaluated again by the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from spo_store.lake import Lake, sql_quote
from spo_train.config import TrainConfig
from spo_train.evaluate import diversity_metrics, eval_notes, evaluate
from spo_train.lm.generation import TransformersGenerator
from spo_train.rollouts.sampling import SamplerSettings
from spo_train.train.metric_sink import MetricSink


class PolicyEvaluation:
    """Evaluations of run `run_id` on `eval_sets` (`{set name: problems}`)."""

    def __init__(
        self,
        lake: Lake,
        config: TrainConfig,
        eval_sets: dict[str, list[dict[str, Any]]],
        *,
        run_id: str,
        tokenizer: Any,
        tokenizer_id: str,
        sink: MetricSink,
        resumed: bool,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.lake, self.config, self.eval_sets = lake, config, eval_sets
        self.run_id, self.tokenizer, self.tokenizer_id = run_id, tokenizer, tokenizer_id
        self.sink, self.say = sink, say
        # Steps already evaluated by this run (a resumed run never repeats step 0 or the end).
        self.evaluated: set[int] = set()
        if resumed:
            self.evaluated = set(
                lake.sql_arrow(
                    f"SELECT DISTINCT step FROM metrics WHERE run_id = {sql_quote(run_id)} "
                    f"AND name LIKE 'eval/%/unjudged'"
                )
                .column(0)
                .to_pylist()
            )

    def __call__(self, step: int, policy: torch.nn.Module) -> list[dict[str, Any]]:
        """Evaluate `policy` as the policy of `step` on every set, unless this run did already;
        returns `[{"step", "set", pass@k..., ...}]` (empty when skipped)."""
        if not self.eval_sets or step in self.evaluated:
            return []
        out = []
        for name, problems in self.eval_sets.items():
            res = self._run(step, name, problems, policy)
            out.append({"step": step, "set": name, **res})
        self.evaluated.add(step)
        return out

    def _run(
        self, step: int, name: str, problems: list[dict[str, Any]], policy: torch.nn.Module
    ) -> dict[str, Any]:
        c = self.config
        gen = TransformersGenerator(policy.eval(), self.tokenizer, device=c.device)
        settings = SamplerSettings(
            c.eval_n, c.eval_temperature, c.eval_top_p, c.max_new_tokens, seed=c.seed + 7
        )
        res = evaluate(
            self.lake,
            gen,
            self.tokenizer,
            problems,
            settings=settings,
            ks=c.eval_k,
            run_id=self.run_id,
            model_id=f"{self.run_id}@{step}",
            tokenizer_id=self.tokenizer_id,
            step=step,
            policy_version=step,
            split=name,
            workers=c.workers,
            unsafe_no_sandbox=c.unsafe_no_sandbox,
        )
        self.sink.log(
            step,
            {
                f"eval/{name}/pass@{k}": res[f"pass@{k}"]
                for k in c.eval_k
                if res[f"pass@{k}"] is not None
            }
            | diversity_metrics(res["diversity"], f"eval/{name}"),
            in_lake=False,  # `evaluate` wrote them
        )
        shown = ", ".join(
            f"pass@{k} {res[f'pass@{k}']:.3f}" if res[f"pass@{k}"] is not None else f"pass@{k} n/a"
            for k in c.eval_k
        )
        what = "held out" if name == c.eval_split else "trained on"
        self.say(
            f"eval step {step} ({name}, {what}, {len(problems)} problems, "
            f"n={c.eval_n}, T={c.eval_temperature:g}, top-p {c.eval_top_p:g}): {shown}"
        )
        for line in eval_notes(res):
            self.say(line)
        return res
