"""`spo train`: Soft Policy Optimization, half online / half offline, around the lake.

Reads top to bottom (CleanRL style). Each step:
1. every `model_update_interval` steps the rollout policy takes the current weights
   (policy version = that step);
2. online rollouts are sampled from the rollout policy at a random temperature U(0.1, 0.8),
   top-p 0.95, judged in the sandbox and appended to the lake with their policy version;
3. a batch is drawn from the lake by the SQL mixture (`online` = this run's rollouts within the
   staleness bound) and logged as `(lake version, trajectory ids)`;
4. token ids and pi_0 log-probs come from the rows or the lake's cache (see `batch.py`);
5. the SPO loss of the chosen variant is minimised on the policy's log-probs;
6. metrics go to the lake, the console and TensorBoard; checkpoints are Hugging Face
   directories plus optimizer, RNG, step and lake version, so `--resume` continues after a
   `kill -9` with the same data order; the metrics and batches the killed process logged
   after its last checkpoint are deleted first, and TensorBoard purges them, so each
   (run, step, name) holds one value. Settings: `spo_train.config.TrainConfig` (CLI options,
   the run's `config.toml` and their checks come from its fields).
This issue runs rollouts synchronously in the trainer process; async workers append the same
rows to the same table.

q0 is the estimate of *this* `--model` (its `model_identity`) under the q0 sampler settings
(`q0_temperature`, `q0_top_p`, `q0_max_new_tokens`; see `spo_store.q0_estimates`), recomputed
at the training beta from its `(samples, successes)`; a run without such estimates refuses with
the `spo estimate-q0` command to run. The policy is evaluated before the first step (step 0)
and after the last (always; `eval_every` adds evaluations in between), with the paper's
settings by default (n=20, T=0.4, top-p 0.95, pass@1 and pass@10).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote, utc_now
from spo_store.maintenance import maybe_compact
from spo_store.mixture import MixtureSampler, MixtureSpec, load_sources
from spo_store.q0_estimates import sampler_key
from spo_train.batch import ReferenceCache, pad_right
from spo_train.config import (  # noqa: F401 - LOSS_VARIANTS, WANDB_MODES: re-exported
    LOSS_VARIANTS,
    WANDB_MODES,
    TrainConfig,
    as_saved,
    check_output_dir,
    dump_toml,
    stored_train_config,
)
from spo_train.evaluate import eval_notes, evaluate
from spo_train.generation import TransformersGenerator
from spo_train.logprobs import response_logprobs
from spo_train.losses import spo_loss
from spo_train.models import (
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)
from spo_train.q0 import q0_value
from spo_train.rollout import (
    RELIABLE,
    SamplerSettings,
    count_problems,
    judge_issue_counts,
    left_out_line,
    load_problems,
    sample_and_judge,
    split_predicate,
)

# The settings live in spo_train.config (one definition: CLI options, config.toml, checks).
# CE clip margin per variant when --ce-clip-eps is not given (see TrainConfig.ce_clip_eps).
DEFAULT_CE_CLIP_EPS = {"terminal_ce": 0.1, "reverse_q_ce": 1e-6}


@dataclass
class TrainResult:
    run_id: str
    steps_done: int
    output: Path
    metrics: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def effective_ce_clip_eps(config: TrainConfig) -> float:
    """The CE clip margin the loss gets: `config.ce_clip_eps`, else the variant's default
    (`DEFAULT_CE_CLIP_EPS`; see `TrainConfig.ce_clip_eps` for where a clip moves the optimum)."""
    if config.ce_clip_eps is not None:
        return config.ce_clip_eps
    return DEFAULT_CE_CLIP_EPS.get(config.loss, 0.1)


def q0_sampler_key(config: TrainConfig) -> str:
    """The `q0_estimates.sampler_key` of the estimates this run trains against."""
    return sampler_key(
        config.q0_temperature, config.q0_top_p, config.q0_max_new_tokens or config.max_new_tokens
    )


def estimate_q0_command(config: TrainConfig, lake_uri: str) -> str:
    """The exact `spo estimate-q0 ...` that gives this run the q0 estimates it needs."""
    parts = ["spo estimate-q0"]
    if config.model:
        parts.append(f"--model {config.model}")
    parts += [f"--lake {lake_uri}", f"--split {config.train_split}"]
    if config.q0_temperature != 1.0:
        parts.append(f"--temperature {config.q0_temperature:g}")
    if config.q0_top_p != 1.0:
        parts.append(f"--top-p {config.q0_top_p:g}")
    parts.append(f"--max-new-tokens {config.q0_max_new_tokens or config.max_new_tokens}")
    if config.include_unreliable:
        parts.append("--include-unreliable")
    # A small first step: the default --n (800, the paper's) takes about a day on the
    # embedded model; rerunning with a larger --n tops the estimates up.
    parts += ["--n 4", "--limit 512"]
    return " ".join(parts)


def policy_logprobs(
    policy: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_token_id: int,
    micro_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the taken response tokens under `policy`, with gradients, dropout off.

    The loss compares log pi_theta with log pi_0 token by token, so both must come from the
    deterministic network: the forward runs in eval mode (dropout off) while autograd records
    (as TRL does for its policy forward). Returns `([B, T] log-probs, [B, T] bool mask)`.
    """
    policy.eval()
    return response_logprobs(
        policy,
        prompt_ids,
        response_ids,
        pad_token_id=pad_token_id,
        micro_batch_size=micro_batch_size,
    )


def rebase_q0(problems: list[dict[str, Any]], beta: float) -> int:
    """Make every problem's `q0` the value at `beta`; returns how many were recomputed.

    q0 depends on beta (`beta * log(S0 + (1 - S0) exp(-1/beta))`), and the lake keeps the counts
    `(n, c)` behind it, so training at another beta recomputes q0 instead of silently using a
    value estimated for a different objective.
    """
    changed = 0
    for p in problems:
        if p.get("q0_beta") is not None and math.isclose(p["q0_beta"], beta, rel_tol=1e-9):
            continue
        if not p.get("q0_samples") or p.get("q0_successes") is None:
            raise SpoError(
                f"problem {p['problem_id']}: q0 was set for beta {p.get('q0_beta')} without the "
                f"(n, c) counts needed to recompute it for beta {beta}; rerun `spo estimate-q0`"
            )
        p["q0"] = q0_value(p["q0_successes"], p["q0_samples"], beta)
        changed += 1
    return changed


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _latest_checkpoint(output: Path) -> Path | None:
    marker = output / "latest"
    if not marker.exists():
        return None
    path = output / marker.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def _save_checkpoint(
    output: Path,
    step: int,
    policy: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Write checkpoint-<step> atomically (temp dir, rename, then the `latest` marker)."""
    name = f"checkpoint-{step:06d}"
    final, tmp = output / name, output / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            **state,
        },
        tmp / "trainer_state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    marker_tmp = output / ".latest.tmp"
    marker_tmp.write_text(name)
    marker_tmp.replace(output / "latest")
    return final


def _prune_checkpoints(output: Path, keep: int | None) -> list[str]:
    """Delete all but the newest `keep` checkpoint directories (never the latest one)."""
    if keep is None:
        return []
    latest = (output / "latest").read_text().strip() if (output / "latest").exists() else None
    ckpts = sorted(p for p in output.glob("checkpoint-*") if p.is_dir())
    removed = []
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old.name)
    return removed


def _check_split(lake: Lake, split: str, option: str) -> None:
    """A split with no problem (a typo included) is one error naming the splits present."""
    try:
        from spo_store.selection import check_split
    except ImportError:  # pragma: no cover - selection.py is new in this issue
        return
    check_split(lake, split, option)


def _splits_present_suffix(lake: Lake) -> str:
    try:
        from spo_store.selection import describe_splits, splits_present
    except ImportError:  # pragma: no cover
        return ""
    return f" (splits present: {describe_splits(splits_present(lake))})"


def _write_config(
    output: Path,
    config: TrainConfig,
    run_id: str,
    say: Callable[[str], None],
    *,
    resumed: bool = False,
) -> None:
    """Write output/config.toml (reloadable: `spo train --config output/config.toml`) and
    run.json. On resume the stored settings equal these except operational ones (workers,
    wandb, ...) and `steps`, which a resume may raise: that change is said, never silent."""
    stored = stored_train_config(output)
    if resumed and stored is not None and stored[0].get("steps", config.steps) != config.steps:
        say(
            f"--steps {config.steps}: the run continues to step {config.steps} "
            f"(started with {stored[0]['steps']}); config.toml updated"
        )
    header = (
        f"spo train settings of run {run_id}; `spo train --config {output / 'config.toml'}` "
        "reproduces them\n(add --resume to continue this run, or give another --output)"
    )
    tmp = output / ".config.toml.tmp"
    tmp.write_text(dump_toml(config, header), encoding="utf-8")
    tmp.replace(output / "config.toml")
    (output / "run.json").write_text(
        json.dumps({"run_id": run_id, "config": as_saved(config)}, indent=2, default=str)
    )


def _drop_after(lake: Lake, run_id: str, step: int) -> int:
    """Delete this run's metrics and batches logged for steps the resume runs again.

    Training metrics and batches of step >= `step`, evaluations of step > `step` (the
    evaluation at `step` ran before its checkpoint was written and is kept). Returns the
    number of rows deleted.
    """
    rid = sql_quote(run_id)
    where_metrics = (
        f"run_id = {rid} AND ((step >= {step} AND name NOT LIKE 'eval/%') OR step > {step})"
    )
    n = 0
    for table, where in (
        ("metrics", where_metrics),
        ("batches", f"run_id = {rid} AND step >= {step}"),
    ):
        found = int(lake.sql_arrow(f"SELECT count(*) FROM {table} WHERE {where}")[0][0].as_py())
        if found:
            lake.delete_rows(table, where)
            n += found
    return n


def _relog_evals(lake: Lake, writer: Any, run_id: str, step: int) -> None:
    """purge_step also hides the kept evaluation at the resume step: write it again."""
    rows = lake.sql_arrow(
        f"SELECT name, value FROM metrics WHERE run_id = {sql_quote(run_id)} AND step = {step} "
        "AND name LIKE 'eval/%pass@%'"
    ).to_pylist()
    for r in rows:
        writer.add_scalar(r["name"], r["value"], step)


def _start_wandb(config: TrainConfig, run_id: str, output: Path) -> Any:
    """A W&B run (offline by default: files under output/wandb, `wandb sync` uploads them)."""
    if config.wandb == "off":
        return None
    try:
        import wandb
    except ImportError:
        if config.wandb == "auto":
            return None
        raise SpoError(
            f"--wandb {config.wandb} needs the wandb package: pip install 'spo[wandb]'"
        ) from None
    return wandb.init(
        project="spo",
        name=run_id,
        id=run_id,
        resume="allow",  # --resume continues the same W&B run
        dir=str(output),
        mode="online" if config.wandb == "online" else "offline",
        config=dataclasses.asdict(config),
        # console="off": W&B must not wrap stdout (`--json` prints the last line there)
        settings=wandb.Settings(silent=True, console="off"),
    )


def check_device(device: str) -> None:
    """Refuse (one SpoError line) a --device torch cannot parse or this machine lacks (CUDA
    not built in or no such GPU, MPS absent), before any model loads."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SpoError(
            f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpoError(
                f"--device {device}: CUDA is not available to this torch ({torch.__version__}); "
                "use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpoError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SpoError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise SpoError(f"--device {device}: spo trains on cpu, cuda or mps")


def lock_output(output: Path) -> Any:
    """Hold `output/.lock` exclusively (fcntl.flock, non-blocking) for the life of a run, so
    two `spo train` never write one directory; the second gets one SpoError line with the
    holder's pid. Returns the open lock file (closing it releases the lock)."""
    import fcntl

    fh = open(output / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise SpoError(f"--output {output} is in use by another spo train (pid {pid})") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def preflight(config: TrainConfig) -> tuple[Path, dict[str, str]]:
    """Every check that needs no lake and no model load: the settings, --output, --device,
    the --model directory, --sources-file and --mix. Returns (pi_0 path, mixture sources);
    raises one SpoError line."""
    config.validate()
    check_output_dir(config)
    check_device(config.device)
    pi0_path = resolve_model_path(config.model)
    sources = load_sources(config.sources_file)
    try:
        MixtureSpec.parse(config.mix, list(sources))
    except SpoError as exc:
        raise SpoError(f"--mix: {exc}") from None
    return pi0_path, sources


def train(
    config: TrainConfig,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run SPO training as configured; see the module docstring for the loop.

    Holds `output/.lock` for the whole run (a second `spo train` on the same --output is
    refused); an --output this call created is removed again when the run is refused before
    it wrote anything."""
    # another run's output, a resume that changes settings, a bad model/mixture: one line
    pi0_path, sources = preflight(config)
    output = Path(config.output)
    created = not output.exists()
    top = output  # the outermost directory this call creates (removed again on a refusal)
    while not top.parent.exists():
        top = top.parent
    output.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_output(output)
    except SpoError:
        if created:
            shutil.rmtree(top, ignore_errors=True)
        raise
    try:
        # Checked again under the lock: the holder may have written its checkpoint since.
        check_output_dir(config)
        return _train_locked(config, pi0_path, sources, on_step=on_step, on_event=on_event)
    except BaseException:
        if created and {p.name for p in output.iterdir()} <= {".lock"}:
            shutil.rmtree(top, ignore_errors=True)  # a refusal leaves no empty --output
        raise
    finally:
        lock.close()


def _train_locked(
    config: TrainConfig,
    pi0_path: Path,
    sources: dict[str, str],
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> TrainResult:
    say = on_event or (lambda _msg: None)
    # Notes found while checking are said only once every check passed: a refusal is the
    # command's only output.
    pending: list[str] = []
    note = pending.append
    output = Path(config.output)
    lake = Lake.open(config.lake)
    _check_split(lake, config.train_split, "--train-split")

    # --- problems with q0 of this pi_0 and q0 sampler on the training split (SPO needs q0)
    ref_model_id = model_identity(pi0_path)
    q0_key = q0_sampler_key(config)
    q0_of = (ref_model_id, q0_key)
    in_split = split_predicate(config.train_split)
    reliable = "TRUE" if config.include_unreliable else RELIABLE
    train_problems = load_problems(
        lake, f"{in_split} AND {reliable} AND p.q0 IS NOT NULL", q0_of=q0_of
    )
    if not train_problems:
        others = lake.sql_arrow(
            "SELECT count(DISTINCT (ref_model_id, sampler_key)) AS n FROM q0_estimates q "
            f"JOIN problems p USING (problem_id) WHERE {in_split}"
        ).to_pylist()[0]["n"]
        raise SpoError(
            f"no {config.train_split!r} problem in lake {lake.uri} has a q0 estimate of this "
            f"model ({ref_model_id[:19]}) with sampler {q0_key}"
            + (
                f" ({others} other model/sampler estimates exist and are not used)"
                if others
                else ""
            )
            + f": run `{estimate_q0_command(config, lake.uri)}` (a small first estimate; "
            "rerun it with a larger --n, e.g. 64, to top the estimates up)"
        )
    without = count_problems(lake, f"{in_split} AND {reliable} AND p.q0 IS NULL", q0_of=q0_of)
    if without:
        note(
            f"{without} {config.train_split} problems have no q0 estimate of this model and "
            f"sampler and are left out (run `{estimate_q0_command(config, lake.uri)}`)"
        )
    if not config.include_unreliable:
        line = left_out_line(judge_issue_counts(lake, in_split), f"train ({config.train_split})")
        if line:
            note(line)
    rebased = rebase_q0(train_problems, config.beta)
    if rebased:
        note(f"q0 of {rebased} problems recomputed from their (n, c) for beta {config.beta:.4g}")
    problems_by_id = {p["problem_id"]: p for p in train_problems}

    # --- evaluation problems (checked before anything is started or written)
    eval_problems: list[dict[str, Any]] = []
    if config.eval_problems != 0:
        eval_where = split_predicate(config.eval_split)
        eval_problems = load_problems(lake, f"{eval_where} AND {reliable}")[
            : config.eval_problems or None
        ]
        if not config.include_unreliable:
            line = left_out_line(
                judge_issue_counts(lake, eval_where), f"eval ({config.eval_split})"
            )
            if line:
                note(line)
        if not eval_problems:
            raise SpoError(
                f"no {config.eval_split!r} problems to evaluate on in lake {lake.uri}: choose "
                "another --eval-split, or --eval-problems 0 to train without evaluation"
                + _splits_present_suffix(lake)
            )
    else:
        note("--eval-problems 0: the trainer does not evaluate this run")

    # --- the mixture: a source that has nothing to draw is a refusal, before the run exists
    sampler = MixtureSampler(
        lake,
        config.mix,
        sources=sources,
        run_id=None,  # set once the run is recorded (only `online` reads it)
        staleness=config.staleness,
        split=config.train_split,
        seed=config.seed,
        ref_model_id=ref_model_id,
        q0_sampler_key=q0_key,
        beta=config.beta,
        include_unreliable=config.include_unreliable,
    )
    try:
        sampler.check_sources()
    except SpoError as exc:
        raise SpoError(f"--mix {config.mix}: {exc}") from None
    for line in pending:
        say(line)

    # --- models: policy (trained), reference pi_0 (frozen), rollout policy (stale copy)
    _set_seed(config.seed)
    ref_model, tokenizer = load_model_and_tokenizer(pi0_path, device=config.device)
    ref_model.eval().requires_grad_(False)
    tokenizer_id = tokenizer_identity(tokenizer)
    output.mkdir(parents=True, exist_ok=True)
    ckpt = _latest_checkpoint(output) if config.resume else None
    if config.resume and ckpt is None:
        say(f"no checkpoint in {output}: starting fresh")
    policy, _ = load_model_and_tokenizer(ckpt or pi0_path, device=config.device)
    # Dropout stays off: the loss forward is deterministic (see `policy_logprobs`).
    policy.eval()
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    start_step = 0
    if ckpt is not None:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        start_step, run_id = state["step"], state["run_id"]
        say(f"resumed run {run_id} from {ckpt.name} (step {start_step})")
        lake.resume_run(run_id)  # the same run is running again, in this process
    else:
        run_id = lake.start_run(
            "train", dataclasses.asdict(config), model_id=ref_model_id, tokenizer_id=tokenizer_id
        )
    # From here the run is recorded: whatever stops it ends it (run_status), never `running`.
    writer = wandb_run = None
    ckpt_step = start_step  # the step of the newest checkpoint this run can resume from
    mid_update = False  # inside a step's optimizer update (a checkpoint then is inconsistent)
    result = TrainResult(run_id=run_id, steps_done=start_step, output=output)
    try:
        if ckpt is not None:
            # Steps after the checkpoint ran before the crash and run again now: drop what
            # they logged, so each (run, step, name) holds one value.
            dropped = _drop_after(lake, run_id, start_step)
            if dropped:
                say(
                    f"dropped {dropped} metric and batch rows of steps >= {start_step} logged before"
                )
        # Saved resolved: the lake $SPO_LAKE named, the output as an absolute path.
        saved = dataclasses.replace(config, lake=lake.uri, output=str(output.resolve()))
        _write_config(output, saved, run_id, say, resumed=ckpt is not None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
        )
        if ckpt is not None:
            scheduler.load_state_dict(state["scheduler"])

        rollout_model = copy.deepcopy(policy).eval().requires_grad_(False)
        rollout_gen = TransformersGenerator(rollout_model, tokenizer, device=config.device)
        rollout_version = (
            start_step  # the rollout policy starts with the weights it was loaded with
        )
        ref_cache = ReferenceCache(
            lake, tokenizer, tokenizer_id, ref_model, ref_model_id, run_id, config.micro_batch_size
        )
        sampler.run_id = run_id
        eps = effective_ce_clip_eps(config)
        if config.loss == "reverse_q_ce" and eps > DEFAULT_CE_CLIP_EPS["reverse_q_ce"]:
            say(
                f"--ce-clip-eps {eps:g} with reverse_q_ce moves every per-token target above "
                f"exp(-{eps:g}) = {math.exp(-eps):.3g} to probability 1 (docs/losses.md)"
            )
        online_weight = sampler.spec.weights.get("online", 0.0)
        online_per_step = sampler.spec.counts(config.batch_size).get("online", 0)
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides events of steps >= the resume step from earlier
            # files (the killed run's steps after its checkpoint), as the lake rows are dropped.
            tb_dir = output / "tb"
            purge = start_step if (ckpt is not None or tb_dir.exists()) else None
            writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
            if ckpt is not None:
                _relog_evals(lake, writer, run_id, start_step)
        wandb_run = _start_wandb(config, run_id, output)
        # Steps already evaluated by this run (a resumed run never repeats step 0 or the end).
        evaluated: set[int] = set()
        if ckpt is not None:
            evaluated = set(
                lake.sql_arrow(
                    f"SELECT DISTINCT step FROM metrics WHERE run_id = {sql_quote(run_id)} "
                    f"AND name = {sql_quote(f'eval/{config.eval_split}/unjudged')}"
                )
                .column(0)
                .to_pylist()
            )

        def run_eval(step: int) -> dict[str, Any]:
            gen = TransformersGenerator(policy.eval(), tokenizer, device=config.device)
            settings = SamplerSettings(
                config.eval_n,
                config.eval_temperature,
                config.eval_top_p,
                config.max_new_tokens,
                seed=config.seed + 7,
            )
            res = evaluate(
                lake,
                gen,
                tokenizer,
                eval_problems,
                settings=settings,
                ks=config.eval_k,
                run_id=run_id,
                model_id=f"{run_id}@{step}",
                tokenizer_id=tokenizer_id,
                step=step,
                policy_version=step,
                split=config.eval_split,
                workers=config.workers,
                unsafe_no_sandbox=config.unsafe_no_sandbox,
            )
            evals = {
                f"eval/{config.eval_split}/pass@{k}": res[f"pass@{k}"]
                for k in config.eval_k
                if res[f"pass@{k}"] is not None
            }
            if writer:
                for k, v in evals.items():
                    writer.add_scalar(k, v, step)
            if wandb_run:
                wandb_run.log(evals, step=step)
            shown = ", ".join(
                f"pass@{k} {res[f'pass@{k}']:.3f}"
                if res[f"pass@{k}"] is not None
                else f"pass@{k} n/a"
                for k in config.eval_k
            )
            say(
                f"eval step {step} ({config.eval_split}, {len(eval_problems)} problems, "
                f"n={config.eval_n}, T={config.eval_temperature:g}, top-p {config.eval_top_p:g}): {shown}"
            )
            for note in eval_notes(res):
                say(note)
            evaluated.add(step)
            return res

        def maybe_eval(step: int) -> None:
            if eval_problems and step not in evaluated:
                result.evals.append({"step": step, **run_eval(step)})

        if start_step == 0:
            maybe_eval(0)  # the policy it starts from
        for step in range(start_step, config.steps):
            t0 = time.perf_counter()
            # 1. the rollout policy takes new weights every model_update_interval steps
            if step % config.model_update_interval == 0 and step != rollout_version:
                rollout_model.load_state_dict(policy.state_dict())
                rollout_version = step
            # 2. online rollouts from the (slightly stale) rollout policy, judged, into the lake
            online_rows: list[dict[str, Any]] = []
            if online_weight > 0:
                rng = np.random.default_rng([config.seed, step, 1])
                n_problems = max(1, math.ceil(online_per_step / config.rollout_n))
                picks = rng.choice(
                    len(train_problems), size=n_problems, replace=len(train_problems) < n_problems
                )
                settings = SamplerSettings(
                    config.rollout_n,
                    tuple(config.rollout_temperature),
                    config.rollout_top_p,
                    config.max_new_tokens,
                    seed=config.seed * 100003 + step,
                )
                online_rows = sample_and_judge(
                    rollout_gen,
                    tokenizer,
                    [train_problems[i] for i in picks],
                    settings,
                    source="online",
                    run_id=run_id,
                    model_id=f"{run_id}@{rollout_version}",
                    tokenizer_id=tokenizer_id,
                    policy_version=rollout_version,
                    ref_model_id=ref_model_id if rollout_version == 0 else None,
                    workers=config.workers,
                    unsafe_no_sandbox=config.unsafe_no_sandbox,
                )
                lake.append("trajectories", online_rows)
            t_rollout = time.perf_counter() - t0
            # 3. the batch, by SQL mixture, logged as (lake version, ids)
            batch = sampler.sample(config.batch_size, step=step, policy_version=rollout_version)
            lake.append(
                "batches",
                [
                    {
                        "run_id": run_id,
                        "step": step,
                        "trajectories_version": batch.version,
                        "traj_ids": batch.traj_ids,
                        "sources": batch.sources,
                        "seed": config.seed,
                        "created_at": utc_now(),
                    }
                ],
            )
            # 4. token ids and reference log-probs (rows, cache, or one reference forward)
            prepared = ref_cache.prepare(batch.table, problems_by_id)
            # 5. the SPO loss on the policy's log-probs
            policy_lp, mask = policy_logprobs(
                policy,
                prepared.prompt_ids,
                prepared.response_ids,
                pad_token_id=tokenizer.pad_token_id,
                micro_batch_size=config.micro_batch_size,
            )
            ref_lp = pad_right(prepared.ref_logprobs, policy_lp.shape[1]).to(policy_lp.device)
            loss, diag = spo_loss(
                policy_lp,
                ref_lp,
                prepared.q0.to(policy_lp.device),
                prepared.reward.to(policy_lp.device),
                mask,
                config.beta,
                config.loss,
                eps=eps,
                return_diagnostics=True,
            )
            mid_update = True  # until the step is counted done below
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            # 6. metrics, checkpoints, evaluation
            dt = time.perf_counter() - t0
            tokens = int(mask.sum())
            metrics = {f"train/{k}": v for k, v in diag.to_dict().items()}
            # Per-sequence log-ratio sum(log pi_theta - log pi_0): successes should rise and
            # failures fall; the batch mean alone (kl_estimate) hides which one moves.
            log_ratio = (policy_lp.detach() - ref_lp).mul(mask).sum(1).cpu()
            success = prepared.reward == 0
            if success.any():
                metrics["train/success_log_ratio"] = float(log_ratio[success].mean())
            if (~success).any():
                metrics["train/failure_log_ratio"] = float(log_ratio[~success].mean())
            is_online = torch.tensor([s == "online" for s in batch.sources])
            if is_online.any():
                err = log_ratio * config.beta + prepared.q0 - prepared.reward
                metrics["train/online_terminal_abs_error"] = float(err[is_online].abs().mean())
            metrics.update(
                {
                    "train/grad_norm": float(grad_norm),
                    "train/lr": scheduler.get_last_lr()[0],
                    "rollout/reward_mean": float(
                        np.mean([r["reward"] for r in online_rows if r["reward"] is not None])
                    )
                    if any(r["reward"] is not None for r in online_rows)
                    else float("nan"),
                    "rollout/unjudged": float(sum(r["reward"] is None for r in online_rows)),
                    "rollout/samples_per_s": len(online_rows) / t_rollout
                    if online_rows and t_rollout > 0
                    else 0.0,
                    "train/tokens_per_s": tokens / max(dt - t_rollout, 1e-9),
                    "train/step_s": dt,
                    "train/ref_forward_rows": float(prepared.ref_forwards),
                }
            )
            metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
            lake.log_metrics(run_id, step, metrics)
            if writer:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, step)
            if wandb_run:
                wandb_run.log(metrics, step=step)
            result.metrics.append({"step": step, **metrics})
            result.steps_done = step + 1
            mid_update = False
            if on_step:
                on_step(step, metrics)
            if config.eval_every and (step + 1) % config.eval_every == 0:
                maybe_eval(step + 1)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                _save_checkpoint(
                    output,
                    step + 1,
                    policy,
                    tokenizer,
                    optimizer,
                    scheduler,
                    {
                        "step": step + 1,
                        "run_id": run_id,
                        "lake_versions": lake.versions(),
                        "config": dataclasses.asdict(config),
                    },
                )
                ckpt_step = step + 1
                _prune_checkpoints(output, config.keep_checkpoints)
                maybe_compact(lake)
        # The policy it ends with, always (after its checkpoint, so a kill here loses no
        # training; a resumed run evaluates it if this did not finish).
        maybe_eval(config.steps)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not mid_update and result.steps_done > ckpt_step:
            # Ctrl-C / SIGTERM: keep the steps done since the last checkpoint (--resume
            # continues from here; a small model saves in seconds).
            _save_checkpoint(
                output,
                result.steps_done,
                policy,
                tokenizer,
                optimizer,
                scheduler,
                {
                    "step": result.steps_done,
                    "run_id": run_id,
                    "lake_versions": lake.versions(),
                    "config": dataclasses.asdict(config),
                },
            )
            say(f"interrupted: checkpoint-{result.steps_done:06d} saved; --resume continues")
        lake.end_run(run_id, run_status(exc))
        raise
    finally:
        if writer:
            writer.close()
        if wandb_run:
            wandb_run.finish()
    lake.end_run(run_id, "completed")
    return result
