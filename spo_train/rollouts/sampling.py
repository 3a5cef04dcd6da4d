"""Sample responses to lake problems, judge them in the sandbox, and build trajectory rows.

One path serves Q0 estimation (`source='pi0'`), evaluation (`source='eval'`) and online
rollouts (`source='online'`): rows carry the token ids, two log-probs per token (see
`spo_train.lm.generation`: `behaviour_logprobs`, log mu of the tempered top-p distribution that
drew each token; `model_logprobs`, the sampling model's own temperature-1 log pi) and, when the
sampling model is the reference model, the reference log-probs too (= `model_logprobs`), so
later training batches skip both tokenisation and the reference forward. Every sampled row records
its sampler (temperature, top-p, max_new_tokens): q0 reuses samples only under the same one.

Rewards come from `spo_train.judge.verdict_reward`: 0 passed, -1 judged and failed, NULL when
the program was not really judged (sandbox trouble, checker failure, no tests), so a sandbox
that failed to start never counts as a wrong answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spo_store.adapters import raw_content_hash
from spo_store.errors import SpoError
from spo_store.lake import Lake, utc_now
from spo_store.selection import select_problems
from spo_train.judge import JUDGE_PROBLEM_COLUMNS, job_for_problem, judge_batch, verdict_reward
from spo_train.lm.prompting import extract_code, problem_prompt

PROBLEM_COLUMNS = list(
    dict.fromkeys(
        [
            "problem_id",
            "name",
            "split",
            "statement",
            "extra",  # starter_code of call-based problems (prompting.problem_prompt)
            "judge_issue",
            "source_dataset",  # the embedded generator's problems have solution styles
            *JUDGE_PROBLEM_COLUMNS,
        ]
    )
)


@dataclass
class SamplerSettings:
    """How responses are drawn. `temperature` is fixed, or a `(low, high)` range drawn per sample."""

    n: int = 20
    temperature: float | tuple[float, float] = 0.4
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0


def load_problems(
    lake: Lake,
    where: str,
    *,
    q0_of: tuple[str, str] | None = None,
    beta: float | None = None,
) -> list[dict[str, Any]]:
    """The problems of `where` (SQL over `p`) with the columns prompting and the judge need
    (`PROBLEM_COLUMNS`), ordered by id: `spo_store.selection.select_problems`, which has the
    q0 columns and `q0_of` / `beta`."""
    return select_problems(lake, where, PROBLEM_COLUMNS, q0_of=q0_of, beta=beta)


def check_context(
    tokenizer: Any,
    context: int | None,
    problems: Sequence[Mapping[str, Any]],
    max_new_tokens: int,
    *,
    option: str = "--max-new-tokens",
) -> None:
    """Refuse, before any sampling, a `max_new_tokens` that the longest prompt of `problems`
    leaves no room for in the model's context (`context` positions; None: unbounded):
    responses would be cut short while the lake stored `max_new_tokens` as their bound. The
    SpoError names the option, the longest prompt (tokens, problem) and the largest value that
    fits."""
    if context is None or not problems:
        return
    prompts = [problem_prompt(p, tokenizer) for p in problems]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    i = int(np.argmax(lengths))
    longest = lengths[i]
    if longest + max_new_tokens <= context:
        return
    name = problems[i].get("name") or problems[i].get("problem_id")
    room = context - longest
    fix = (
        f"give {option} {room} or less, or select problems with shorter statements"
        if room >= 1
        else "that prompt alone fills the context: select problems with shorter statements"
    )
    raise SpoError(
        f"{option} {max_new_tokens}: the longest prompt ({longest} tokens, problem {name}) "
        f"plus {max_new_tokens} new tokens exceed the model's context of {context} tokens "
        f"(config.json max_position_embeddings), so responses would be cut short; {fix}"
    )


def judge_responses(
    problems: Sequence[Mapping[str, Any]],
    codes: Sequence[str],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
) -> list[Any]:
    """Judge `codes[i]` against all tests of `problems[i]` (in parallel, sandboxed); the job
    of each comes from `spo_train.judge.job_for_problem` (limits, tolerance, checker, ...)."""
    jobs = [job_for_problem(p, code) for p, code in zip(problems, codes, strict=True)]
    return judge_batch(
        jobs, workers=workers, progress=progress, unsafe_no_sandbox=unsafe_no_sandbox
    )


def sample_and_judge(
    generator: Any,
    tokenizer: Any,
    problems: Sequence[Mapping[str, Any]],
    settings: SamplerSettings,
    *,
    source: str,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    policy_version: int | None = None,
    ref_model_id: str | None = None,
    workers: int | None = None,
    on_generated: Callable[[int], None] | None = None,
    on_judged: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
    id_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """`settings.n` responses per problem, judged; returns `trajectories` rows (not yet written).

    Row ids: with `id_prefix`, the grouped ids `<id_prefix>-p<j>-<k>` (`grouped_traj_ids`: the
    samples of problem slot j form one group); without, `<source[:3]>-<random hex>`.

    Each row stores `behaviour_logprobs` (log mu, the sampling distribution's) and
    `model_logprobs` (log pi at temperature 1, the sampling model's). When `ref_model_id` is
    given the sampling model *is* that reference model, so `model_logprobs` are stored as its
    `ref_logprobs` too.
    """
    prompts = [problem_prompt(p, tokenizer) for p in problems]
    rng = np.random.default_rng(settings.seed)
    if isinstance(settings.temperature, tuple):
        low, high = settings.temperature
        temps: float | list[float] = rng.uniform(low, high, size=len(prompts) * settings.n).tolist()
    else:
        temps = float(settings.temperature)
    samples = generator.generate(
        prompts,
        n=settings.n,
        temperature=temps,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    if on_generated:
        on_generated(len(prompts) * settings.n)
    flat_problems, flat_samples = [], []
    for prob, group in zip(problems, samples, strict=True):
        for sample in group:
            flat_problems.append(prob)
            flat_samples.append(sample)
    codes = [extract_code(s.text) for s in flat_samples]
    verdicts = judge_responses(
        flat_problems,
        codes,
        workers=workers,
        progress=on_judged,
        unsafe_no_sandbox=unsafe_no_sandbox,
    )
    now = utc_now()
    ids = (
        grouped_traj_ids(id_prefix, len(problems), settings.n)
        if id_prefix is not None
        else [f"{source[:3]}-{uuid.uuid4().hex[:20]}" for _ in flat_samples]
    )
    rows = []
    for traj_id, prob, sample, verdict in zip(
        ids, flat_problems, flat_samples, verdicts, strict=True
    ):
        model_logprobs = [float(x) for x in sample.logprobs]
        behaviour_logprobs = [float(x) for x in sample.behaviour_logprobs]
        if len(behaviour_logprobs) != len(sample.response_ids) or len(model_logprobs) != len(
            sample.response_ids
        ):
            raise ValueError(  # a generator bug: never store log-probs of other tokens
                f"sample has {len(sample.response_ids)} tokens but {len(model_logprobs)} model "
                f"and {len(behaviour_logprobs)} behaviour log-probs"
            )
        rows.append(
            trajectory_row(
                traj_id=traj_id,
                problem_id=prob["problem_id"],
                run_id=run_id,
                source=source,
                model_id=model_id,
                temperature=sample.temperature,
                top_p=sample.top_p,
                max_new_tokens=settings.max_new_tokens,
                response=sample.text,
                reward=verdict_reward(verdict),
                judge_status=verdict.status,
                passed_tests=verdict.passed_tests,
                total_tests=verdict.total_tests,
                finish_reason=sample.finish_reason,
                tokenizer_id=tokenizer_id,
                prompt_ids=sample.prompt_ids,
                response_ids=sample.response_ids,
                policy_version=policy_version,
                behaviour_logprobs=behaviour_logprobs,
                model_logprobs=model_logprobs,
                ref_model_id=ref_model_id,
                ref_logprobs=model_logprobs if ref_model_id else None,
                created_at=now,
            )
        )
    return rows


def trajectory_row(
    *,
    traj_id: str,
    problem_id: str,
    run_id: str,
    source: str,
    model_id: str | None,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    response: str,
    reward: float | None,
    judge_status: str | None,
    passed_tests: int | None,
    total_tests: int | None,
    finish_reason: str | None,
    tokenizer_id: str,
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    created_at: Any,
    policy_version: int | None = None,
    behaviour_logprobs: list[float] | None = None,
    model_logprobs: list[float] | None = None,
    ref_model_id: str | None = None,
    ref_logprobs: list[float] | None = None,
) -> dict[str, Any]:
    """One sampled, judged `trajectories` row (rollouts, evaluation, q0 and `spo pts`): the
    one place its columns are filled. `content_hash` is the dedup key of model samples
    (`spo_store.adapters.raw_content_hash` of problem id and response); the judged reward
    comes from the judge (`reward_source` 'judge'); log-probs `[num_response_tokens]` each."""
    response_ids = [int(x) for x in response_ids]
    return {
        "traj_id": traj_id,
        "problem_id": problem_id,
        "run_id": run_id,
        "source": source,
        "policy_version": policy_version,
        "model_id": model_id,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "language": "python3",
        "response": response,
        "response_chars": len(response),
        "reward": reward,
        "reward_source": "judge",
        "judge_status": judge_status,
        "passed_tests": passed_tests,
        "total_tests": total_tests,
        "finish_reason": finish_reason,
        "content_hash": raw_content_hash(problem_id, response),
        "tokenizer_id": tokenizer_id,
        "prompt_ids": list(prompt_ids),
        "response_ids": response_ids,
        "num_response_tokens": len(response_ids),
        "behaviour_logprobs": behaviour_logprobs,
        "model_logprobs": model_logprobs,
        "ref_model_id": ref_model_id,
        "ref_logprobs": ref_logprobs,
        "created_at": created_at,
    }


# ---------------------------------------------------------------- group identity
# A group is the `n` samples of one problem drawn together (one sampler call, one problem
# slot): GRPO's group, PPO's per-problem rollouts. Its identity lives in the trajectory id,
# written and read only by this pair: `<group id>-<k>` with k the sample's 3-digit index, and
# the group id `<batch prefix>-p<j>` with j the problem slot of the batch.


def grouped_traj_ids(batch_prefix: str, n_problems: int, n: int) -> list[str]:
    """The ids of a batch's rows in `sample_and_judge`'s order (problem slot j, sample k):
    `<batch_prefix>-p<jjj>-<kkk>`; `batch_prefix` must be unique to the batch (it is the
    key a keyed write checks)."""
    return [f"{batch_prefix}-p{j:03d}-{k:03d}" for j in range(n_problems) for k in range(n)]


def group_id_sql(column: str = "traj_id") -> str:
    """DuckDB expression of the group id of a trajectory id written by `grouped_traj_ids`
    (the id without its last `-<k>` part)."""
    return f"left({column}, length({column}) - strpos(reverse({column}), '-'))"


def grouped_id_sql(column: str = "traj_id") -> str:
    """DuckDB predicate: `column` is a trajectory id that carries a group (`grouped_traj_ids`);
    online rows written before rollouts were written in groups (`onl-<hex>`) do not."""
    return f"{column} LIKE '%-p%-%'"
