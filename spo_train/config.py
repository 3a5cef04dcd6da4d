"""One definition of every setting: dataclass fields -> CLI options, TOML files, validation.

`TrainConfig` (and the configs of `spo estimate-q0` and `spo eval`) are plain dataclasses. Each
field carries, in one place:
- its type and default (the dataclass field),
- its help: the attribute docstring under the field (read from this module's source),
- its CLI flag (`--field-name`, or `flag=`), aliases kept for old names, a short flag,
- its check (`check=`), run by `validate_fields` before any heavy work starts.

`spo_cli.options.typer_parameters(cls)` turns the fields into typer options (the typer binding
lives with the CLI: this library imports no typer), `read_toml` / `dump_toml` read and write the
same fields as a flat TOML file (the run's `config.toml`), so the CLI, the config
file and the saved config can never drift. Names follow TRL / verl where one exists
(`learning_rate`, `warmup_steps`, `max_grad_norm`, `weight_decay`; verl's `rollout.n`,
`rollout.temperature`, `rollout.top_p` as `rollout_n`, `rollout_temperature`,
`rollout_top_p`); docs/settings.md has the table. No torch here: the CLI validates before it
imports the trainer.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_train.algorithm_rules import RULES, algorithms_help, rules_of

DEFAULT_BETA = 1 / math.log(100000)
"""beta = 1/log(1e5): a failure is 1e5 times less likely under pi* than under pi_0 (the paper)."""
BETA_SHOWN = "1/log(100000) ≈ 0.0869"
WANDB_MODES = ("auto", "offline", "online", "off")
LOSS_VARIANTS = ("terminal_ce", "terminal_sq", "reverse_q_ce", "reverse_q_sq", "advantage_bce")
ALGORITHMS = tuple(RULES)
"""`--algo` choices; each algorithm's own rules (defaults, checks) are in
`spo_train.algorithm_rules`."""

Check = Callable[[Any], str | None]  # value -> what is wrong with it (None: fine)


# ----------------------------------------------------------------------------- checks
def at_least(low: int | float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}"


SEED_MAX = 2**63 - 1
"""The largest seed: the lake stores seeds as 64-bit integers (`batches.seed`, run configs)."""


def seed_check(v: int) -> str | None:
    return None if 0 <= v <= SEED_MAX else f"must be between 0 and {SEED_MAX} (a 64-bit seed)"


def positive_finite(v: float) -> str | None:
    return None if v > 0 and math.isfinite(v) else "must be a positive finite number"


def nonnegative_finite(v: float) -> str | None:
    return None if v >= 0 and math.isfinite(v) else "must be a finite number >= 0"


def temperature_check(v: float) -> str | None:
    # 0 would divide the logits by zero; above 10 the sampler is uniform noise.
    return None if 0 < v <= 10 and math.isfinite(v) else "must be in (0, 10]"


def top_p_check(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def temperature_range_check(v: tuple[float, float]) -> str | None:
    if len(v) != 2 or any(temperature_check(t) for t in v) or v[0] > v[1]:
        return "must be LOW,HIGH with 0 < LOW <= HIGH <= 10"
    return None


def _decoding_check(v: str) -> str | None:
    from spo_train.rollouts.worker_spec import decoding_problem

    return decoding_problem(v)


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"choose one of {', '.join(choices)}"


def ks_check(v: tuple[int, ...]) -> str | None:
    return None if v and all(k >= 1 for k in v) else "expected k values >= 1 such as 1,10"


# ----------------------------------------------------------------------------- parsers
def parse_ints(text: str | list | tuple) -> tuple[int, ...]:
    """`"1,10"` (or [1, 10]) -> (1, 10); ValueError on anything else."""
    items = text if isinstance(text, list | tuple) else [x for x in str(text).split(",")]
    out = []
    for x in items:
        if isinstance(x, bool) or (isinstance(x, float) and not x.is_integer()):
            raise ValueError(x)
        if isinstance(x, str) and not x.strip():
            continue
        out.append(int(x))
    return tuple(out)


def parse_floats(text: str | list | tuple) -> tuple[float, ...]:
    """`"0.1,0.8"` (or [0.1, 0.8]; one value means LOW = HIGH) -> (0.1, 0.8)."""
    items = text if isinstance(text, list | tuple) else str(text).split(",")
    vals = tuple(float(x) for x in items if not (isinstance(x, str) and not x.strip()))
    return vals * 2 if len(vals) == 1 else vals


def setting(
    default: Any,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    short: str | None = None,
    check: Check | None = None,
    parse: Callable[[Any], Any] | None = None,
    metavar: str | None = None,
    show_default: str | bool | None = None,
    cli: bool = True,
    saved: bool = True,
    resumable_change: bool = False,
    trl: str | None = None,
    verl: str | None = None,
    help: str | None = None,
) -> Any:
    """A dataclass field with its CLI and check metadata.

    `flag`: the CLI name (default `--<field-name>`); `aliases`: old names still accepted;
    `parse`: text (CLI) or TOML value -> field value (tuples); `cli=False`: Python API only;
    `saved=False`: not written to config.toml (an action, such as `resume`);
    `resumable_change`: may differ from the stored config on `--resume` (operational);
    `trl`, `verl`: the name of the same setting there (TRL's GRPOConfig / TrainingArguments,
    verl's ppo_trainer.yaml), for docs/settings.md; `help`: the help when it is built from
    elsewhere (a registry) rather than written under the field.
    """
    meta = {
        "flag": flag,
        "aliases": aliases,
        "short": short,
        "check": check,
        "parse": parse,
        "metavar": metavar,
        "show_default": show_default,
        "cli": cli,
        "saved": saved,
        "resumable_change": resumable_change,
        "trl": trl,
        "verl": verl,
        "help": help,
    }
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of `cls` (the string literal under each field), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (frozen app): help falls back to the name
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def help_of(cls: type, name: str) -> str:
    """The CLI help of a field: its `help=` (built from a registry), else the first paragraph
    of its docstring, on one line."""
    f = field_map(cls).get(name)
    built = f.metadata.get("help") if f is not None else None
    doc = built or field_docs(cls).get(name, name.replace("_", " "))
    return " ".join(doc.split("\n\n")[0].split())


# ----------------------------------------------------------------------------- values
def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


@functools.cache
def _types(cls: type) -> dict[str, tuple[Any, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """A CLI or TOML value as the field's type; SpoError naming `where` when it is not one."""
    f = field_map(cls)[name]
    base, optional = _types(cls)[name]
    if value is None:
        if optional:
            return None
        raise SpoError(f"{where}: a value is required")
    try:
        if f.metadata.get("parse"):
            return f.metadata["parse"](value)
        if base is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    kind = {
        parse_ints: "comma-separated integers such as 1,10",
        parse_floats: "numbers such as 0.1,0.8",
    }.get(f.metadata.get("parse"), getattr(base, "__name__", str(base)))
    raise SpoError(f"{where}: expected {kind}, got {value!r}")


def validate_fields(obj: Any) -> None:
    """Run every field's check; the first failure is one SpoError naming the flag and value."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is None or value is None:
            continue
        problem = check(value)
        if problem:
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            names = "/".join([flag_of(f), *f.metadata.get("aliases", ())])
            raise SpoError(f"{names} {shown}: {problem}")


def as_saved(obj: Any) -> dict[str, Any]:
    """The settings written to config.toml (tuples as lists, None left out)."""
    out = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("saved", True):
            continue
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def dump_toml(obj: Any, header: str = "") -> str:
    """`obj`'s settings as flat TOML (`name = value`; unset optional settings as comments)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, value in as_saved(obj).items():
        if value is None:
            lines.append(f"# {name}: not set (see --help)")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def read_toml(cls: type, path: str | Path) -> dict[str, Any]:
    """Settings of `cls` from a flat TOML file, coerced to the field types.

    Raises SpoError (one line naming the file) for a missing or unreadable file, a key that
    is not a setting (with the closest name), or a value of the wrong type.
    """
    p = Path(path)
    if not p.is_file():
        raise SpoError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpoError(f"--config {path}: not valid TOML ({exc})") from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("saved", True)}
    out = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpoError(f"--config {path}: {key!r} is not a setting{hint}")
        out[key] = coerce(cls, key, value, f"--config {path}: {key}")
    return out


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """`cls(**values)` after a validation of every field (the one-line SpoError of the first)."""
    obj = cls(**values)
    obj.validate()
    return obj


# ----------------------------------------------------------------------------- configs
@dataclass
class TrainConfig:
    """Every hyper-parameter of `spo train`, with its meaning (the CLI and config.toml are
    generated from these fields: see `spo_train.config`)."""

    model: str | None = setting(
        None, metavar="DIR", trl="model_name_or_path", verl="actor_rollout_ref.model.path"
    )
    """pi_0: a Hugging Face model directory (default: the embedded tiny model); also the init"""
    lake: str | None = setting(None, metavar="URI")
    """lake URI (default: $SPO_LAKE, else ./spo-lake)"""
    output: str = setting(
        "runs/spo",
        metavar="DIR",
        resumable_change=True,  # it names the run to resume; a moved directory is the same run
        trl="output_dir",
        verl="trainer.default_local_dir",
    )
    """directory for checkpoints, TensorBoard events, config.toml and run.json"""
    algo: str = setting("spo", check=one_of(*ALGORITHMS), help=algorithms_help())
    """training algorithm (help: `algorithm_rules.algorithms_help`, from the registry RULES)"""
    mix: str | None = setting(None)
    """training mixture: sources and weights, e.g. online:0.5,offline:0.5 (spo_store.mixture).
    Not set: online:0.5,offline:0.5 for spo and topr (the paper's half-online), online:1 for
    ppo and grpo (the only mixture they take), offline:1 for sft (the correct solutions spo's
    offline half draws; no rollouts)"""
    sources_file: str | None = setting(None, metavar="FILE")
    """TOML file adding user mixture sources"""
    loss: str = setting("terminal_ce", check=one_of(*LOSS_VARIANTS))
    """SPO variant: terminal_ce (the paper's main), terminal_sq, reverse_q_ce, reverse_q_sq,
    advantage_bce (docs/losses.md)"""
    beta: float = setting(
        DEFAULT_BETA,
        check=positive_finite,
        show_default=BETA_SHOWN,
        trl="beta",
        verl="algorithm.kl_ctrl.kl_coef",
    )
    """KL strength beta; the default 1/log(100000) makes a failure 1e5 times less likely under
    pi* than under pi_0"""
    ce_clip_eps: float | None = setting(None, check=positive_finite)
    """cross-entropy variants clip the predicted Q/beta to <= -eps (straight-through); bounds a
    failure's gradient to about 1/eps. Not set: 0.1 for terminal_ce, the paper's 1e-6 for
    reverse_q_ce (docs/losses.md)

    Where the clip is harmless: a CE term with target probability x has its optimum at
    log x when log x < -eps; for x > exp(-eps) the clipped straight-through gradient has no zero
    below 0 and its fixed point moves to Q/beta = 0 (probability 1). terminal_ce's targets are
    1 (success: any Q_T >= 0 is optimal, the clip never acts on it) and exp(-1/beta) (failure:
    optimum -1/beta, far below -eps while eps < 1/beta, which `validate` checks), so there the
    clip only bounds a failure's push-back near 0 (about 1/eps: with 1e-6, one failure on a
    problem with q0 near 0 gave a 5e6 gradient norm that owned the whole clipped step). The
    per-token reverse-Q targets of reverse_q_ce (and Monte-Carlo targets) take any value, and
    targets above exp(-eps) (0.905 for eps 0.1) are common near the end of successes: there a
    large eps moves the optimum, so reverse_q_ce keeps 1e-6 unless told otherwise, and the
    trainer says so when a larger eps is given. docs/losses.md has the derivation."""
    mc_weight: float = setting(0.0, check=nonnegative_finite)
    """spo: weight of the Monte-Carlo loss beside the main one: cross-entropy of Q_t toward the
    S_t estimates that `spo pts` stored for a batch row (target probability
    S_t + (1 - S_t) exp(-1/beta), clip 1e-6), at its annotated positions (0: off; docs/pts.md)"""
    steps: int = setting(
        100,
        aliases=("--max-steps",),
        check=at_least(1),
        resumable_change=True,
        trl="max_steps",
        verl="trainer.total_training_steps",
    )
    """optimizer steps (TRL: max_steps); a resumed run may raise it to train longer"""
    batch_size: int = setting(
        32,
        check=at_least(1),
        trl="per_device_train_batch_size x gradient_accumulation_steps",
        verl="actor_rollout_ref.actor.ppo_mini_batch_size",
    )
    """trajectories per optimizer step"""
    micro_batch_size: int | None = setting(
        None,
        check=at_least(1),
        trl="per_device_train_batch_size",
        verl="actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    )
    """rows per forward/backward chunk, bounds activation memory (not set: the whole batch)"""
    precision: str = setting(
        "auto", check=one_of("auto", "bf16", "fp32"), resumable_change=True, trl="bf16"
    )
    """compute precision of the training forwards and backwards: auto (bf16 on a CUDA device
    that has it, else fp32), bf16 (autocast; weights, gradients and AdamW state stay fp32), or
    fp32 (docs/gpu.md)"""
    logprob_chunk_size: int = setting(256, check=at_least(0), resumable_change=True)
    """response tokens per chunk of the vocabulary projection and log-softmax, each chunk
    recomputed in the backward, so no float32 [tokens, vocab] tensor exists at once (0: one
    chunk, through the model's own forward; docs/gpu.md)"""
    activation_checkpointing: bool = setting(
        False,
        resumable_change=True,
        trl="gradient_checkpointing",
        verl="actor_rollout_ref.model.enable_gradient_checkpointing",
    )
    """recompute each decoder layer's activations in the backward instead of keeping them
    (less memory, about one more forward of compute; docs/gpu.md)"""
    compile: bool = setting(False, resumable_change=True, trl="torch_compile")
    """torch.compile the policy (and PPO's value model) with dynamic shapes (docs/gpu.md)"""
    learning_rate: float = setting(
        1e-4,
        aliases=("--lr",),
        check=positive_finite,
        trl="learning_rate",
        verl="actor_rollout_ref.actor.optim.lr",
    )
    """AdamW learning rate"""
    weight_decay: float = setting(
        0.0,
        check=nonnegative_finite,
        trl="weight_decay",
        verl="actor_rollout_ref.actor.optim.weight_decay",
    )
    """AdamW weight decay"""
    max_grad_norm: float = setting(
        1.0, check=positive_finite, trl="max_grad_norm", verl="actor_rollout_ref.actor.grad_clip"
    )
    """gradient clipping: the global gradient norm is clipped to this"""
    warmup_steps: int = setting(
        5,
        check=at_least(0),
        trl="warmup_steps",
        verl="actor_rollout_ref.actor.optim.lr_warmup_steps",
    )
    """linear learning-rate warm-up steps (constant afterwards)"""
    model_update_interval: int | None = setting(None, check=at_least(1))
    """steps between rollout-policy weight updates. Not set: 10 for spo, 1 for ppo and grpo
    (the paper's settings)"""
    staleness: int = setting(10, check=at_least(0))
    """online data: this run's rollouts whose policy version is at most this many versions
    older than the rollout policy's version (not the trainer step)

    online = this run's rollouts whose policy version v satisfies R - staleness <= v <= R,
    where R is the *rollout policy's* version (the step at which it last took the trainer's
    weights), not the current trainer step. With model_update_interval M, a step s has
    R = M * floor(s / M), so an online row can be up to staleness + M - 1 trainer steps older
    than the weights being trained (the paper's workers are stale the same way)"""
    rollout_workers: int = setting(0, check=at_least(0), resumable_change=True)
    """rollout workers as Ray actors that sample, judge and append to the lake while the
    trainer trains (0: the trainer samples in its own loop, one batch per step; docs/rollouts.md)

    Each worker has its own decoding config (rollout_worker_decoding) and commits whole batches;
    the trainer reads their rows only through the lake (SPO: the mixture's `online` source,
    within staleness; PPO/GRPO: whole groups not trained on yet, within staleness) and waits
    when too few are there"""
    rollout_worker_decoding: str | None = setting(
        None, check=lambda v: _decoding_check(v), metavar="SPEC;SPEC"
    )
    """per-worker decoding, ';'-separated, cycled over the workers: POLICY[:LOW-HIGH[:TOP_P]]
    with POLICY current (the trainer's weights) or reference (pi_0, rows written as source
    pi0), e.g. "current;reference:1:1". Not set: every worker samples the current policy at
    rollout_temperature and rollout_top_p"""
    ray_address: str | None = setting(None, metavar="ADDR", resumable_change=True)
    """Ray cluster to run rollout workers on (e.g. ray://head:10001 or auto); not set: a local
    Ray started and shut down by the command"""
    weight_sync: str = setting(
        "object_store", check=one_of("object_store", "checkpoint"), resumable_change=True
    )
    """how rollout workers get new weights: object_store (ray.put of the state dict) or
    checkpoint (a file under output/weights that every worker reads: models too large for the
    object store; the path must be visible to the workers)"""
    rollout_n: int = setting(
        4, check=at_least(1), trl="num_generations", verl="actor_rollout_ref.rollout.n"
    )
    """online samples per problem (verl: rollout.n; TRL: num_generations)"""
    rollout_temperature: tuple[float, float] | None = setting(
        None,
        parse=parse_floats,
        check=temperature_range_check,
        metavar="LOW,HIGH",
        trl="temperature",
        verl="actor_rollout_ref.rollout.temperature",
    )
    """per-sample temperature of online rollouts, drawn from U(LOW, HIGH) (one value: fixed).
    Not set: 0.1,0.8 for spo (the paper's), 1 for ppo and grpo (on-policy sampling)"""
    rollout_top_p: float | None = setting(
        None, check=top_p_check, trl="top_p", verl="actor_rollout_ref.rollout.top_p"
    )
    """nucleus sampling of online rollouts. Not set: 0.95 for spo (the paper's), 1 for ppo and
    grpo"""
    clip_eps: float = setting(
        0.2, check=positive_finite, trl="epsilon", verl="actor_rollout_ref.actor.clip_ratio"
    )
    """ppo, grpo: the policy ratio pi_theta / pi_old is clipped to [1 - clip_eps, 1 + clip_eps]"""
    update_epochs: int = setting(
        1, check=at_least(1), trl="num_iterations", verl="actor_rollout_ref.actor.ppo_epochs"
    )
    """ppo, grpo: passes over each batch of rollouts"""
    minibatches: int = setting(2, check=at_least(1))
    """ppo, grpo: each pass splits the batch into this many minibatches, one optimizer step each
    (the second and later ones see a ratio away from 1, where the clip acts)"""
    importance_weight_cap: float = setting(
        2.0, check=lambda v: None if math.isfinite(v) and v >= 1 else "must be a number >= 1"
    )
    """ppo, grpo: per-token importance weight pi_old / mu of rollouts not drawn from pi_old
    itself (temperature or top-p other than 1), truncated at this value (>= 1: at the
    default sampler every weight is 1)"""
    gae_lambda: float = setting(
        0.95, check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]", verl="algorithm.lam"
    )
    """ppo: GAE lambda (gamma is 1: one reward at the end of an episode)"""
    value_clip_eps: float = setting(
        0.2, check=positive_finite, verl="actor_rollout_ref.critic.cliprange_value"
    )
    """ppo: the value model's prediction moves at most this far from its old value per update
    (clipped value loss)"""
    value_learning_rate: float | None = setting(None, check=positive_finite, verl="critic.optim.lr")
    """ppo: AdamW learning rate of the value model (not set: learning_rate)"""
    grpo_scale_rewards: bool = setting(True, trl="scale_rewards")
    """grpo: divide each group's centred rewards by its standard deviation (GRPO); off: centre
    only (Dr. GRPO)"""
    grpo_length_norm: str = setting("sequence", check=one_of("sequence", "token"))
    """grpo: sequence = mean over each response's tokens, then over responses (GRPO paper);
    token = mean over all tokens of the batch (DAPO)"""
    kl_coef: float | None = setting(
        None, check=nonnegative_finite, verl="actor_rollout_ref.actor.kl_loss_coef"
    )
    """grpo: weight of the KL(pi_theta || pi_0) loss term (k3 estimator). Not set: beta, the KL
    strength spo and ppo use"""
    grpo_reference_per_group: int = setting(0, check=at_least(0))
    """grpo: add this many of the lake's correct offline solutions of the group's problem (the
    `offline` mixture source) to each group of rollouts, so a group the policy never solves still
    has a success (mixed-policy GRPO, as LUFFY); 0: off. Their term has ratio 1, no clip
    (docs/algorithms.md)"""
    topr_baseline: float = setting(
        -0.5, check=lambda v: None if -1 <= v <= 0 else "must be in [-1, 0] (rewards are 0 and -1)"
    )
    """topr: constant baseline b subtracted from the reward: a success weighs -b, a failure
    -(1 + b). -0.5: the paper's TOPR with rewards +-1 and no baseline (c = 2b + 1 = 0); -1:
    successes only (SFT on them); 0: failures only (docs/algorithms.md)"""
    max_new_tokens: int = setting(
        256, check=at_least(1), trl="max_completion_length", verl="data.max_response_length"
    )
    """response length bound (rollouts and evaluation)"""
    q0_temperature: float = setting(1.0, check=temperature_check)
    """sampler of the q0 estimates to train against: temperature (estimate-q0's default; q0 is
    defined under pi_0 itself)"""
    q0_top_p: float = setting(1.0, check=top_p_check)
    """sampler of the q0 estimates to train against: top-p"""
    q0_max_new_tokens: int | None = setting(None, check=at_least(1))
    """sampler of the q0 estimates to train against: length bound (not set: max_new_tokens)"""
    include_unreliable: bool = setting(False)
    """keep problems with a judge_issue in the mixture, the rollouts and evaluation"""
    train_split: str = setting("train")
    """split the mixture and the rollouts draw problems from"""
    train_where: str | None = setting(None, metavar="SQL")
    """SQL predicate over the problems table (alias p) that keeps training to the problems it
    matches, e.g. "p.problem_id IN ('a', 'b')" (not set: the whole split). ANDed with
    train_split; train_problems then takes the first N of what it matches. Checked before the
    run starts, as --where is (one self-contained boolean expression over lake tables: no `;`,
    no `)` closing the parenthesis around it, no comment past its end): invalid SQL, an empty
    text or no match is one line naming --train-where"""
    train_problems: int = setting(0, check=at_least(0))
    """train on the first N problems of the split by problem_id (0: all); spo further keeps
    those with a q0 estimate. `spo estimate-q0 --limit N` estimates the same first N, so spo,
    ppo and grpo runs with one N see the same problems"""
    eval_split: str = setting("valid")
    """split evaluated at the start, the end and every eval_every steps"""
    eval_every: int = setting(0, check=at_least(0), trl="eval_steps", verl="trainer.test_freq")
    """steps between extra evaluations (0: none); the start (step 0) and the end are always
    evaluated"""
    eval_n: int = setting(20, check=at_least(1), verl="actor_rollout_ref.rollout.val_kwargs.n")
    """samples per problem for evaluation (paper: 20)"""
    eval_k: tuple[int, ...] = setting((1, 10), parse=parse_ints, check=ks_check, metavar="K,K")
    """pass@k reported (each k <= --eval-n)"""
    eval_problems: int = setting(100, check=at_least(0))
    """evaluate on at most this many problems of the split (0: no evaluation)"""
    eval_train_problems: int = setting(0, check=at_least(0))
    """also evaluate on this many problems of the run's own training set (the first by
    problem_id), as metrics eval/<train_split>/pass@k: what the run learned on problems it
    trains on, beside held-out transfer (0: not evaluated)"""
    eval_temperature: float = setting(
        0.4, check=temperature_check, verl="actor_rollout_ref.rollout.val_kwargs.temperature"
    )
    """evaluation temperature (paper: 0.4)"""
    eval_top_p: float = setting(
        0.95, check=top_p_check, verl="actor_rollout_ref.rollout.val_kwargs.top_p"
    )
    """evaluation top-p (paper: 0.95)"""
    checkpoint_every: int = setting(
        25, aliases=("--save-steps",), check=at_least(1), trl="save_steps", verl="trainer.save_freq"
    )
    """steps between checkpoints (and one at the end)"""
    keep_checkpoints: int | None = setting(
        None,
        aliases=("--save-total-limit",),
        check=at_least(1),
        trl="save_total_limit",
        verl="trainer.max_actor_ckpt_to_keep",
    )
    """keep only the newest N checkpoints, deleting older ones (not set: keep all)"""
    seed: int = setting(0, check=seed_check, trl="seed")
    """seeds data order, rollouts and init"""
    workers: int | None = setting(
        None,
        flag="--judge-workers",
        aliases=("--workers",),
        check=at_least(1),
        resumable_change=True,
    )
    """judge processes: of the trainer's own rollouts and evaluation (default: all cores) and of
    each rollout worker (default: 1 per worker); --workers is its old name, kept as an alias
    (renamed beside --rollout-workers)"""
    device: str = setting("cpu", resumable_change=True)
    """torch device (cpu, cuda, cuda:1, ...)"""
    nproc: int = setting(
        1,
        check=at_least(1),
        resumable_change=True,
        trl="accelerate launch --num_processes",
        verl="trainer.n_gpus_per_node",
    )
    """data-parallel training processes on this machine (gloo on CPU, NCCL on CUDA: process r
    trains on cuda:r); the global batch stays --batch-size, split by rows (docs/distributed.md)"""
    resume: bool = setting(
        False, saved=False, trl="resume_from_checkpoint", verl="trainer.resume_mode"
    )
    """continue the run in --output from its last checkpoint, with its stored settings"""
    tensorboard: bool = setting(True, resumable_change=True)
    """write TensorBoard event files under output/tb"""
    wandb: str = setting(
        "auto",
        check=one_of(*WANDB_MODES),
        resumable_change=True,
        trl="report_to",
        verl="trainer.logger",
    )
    """Weights & Biases: auto (offline files under output/wandb when wandb is installed),
    offline, online, or off"""
    unsafe_no_sandbox: bool = setting(False, resumable_change=True)
    """run judged programs without bubblewrap (trusted code only)"""

    def validate(self) -> None:
        """Check every setting (one SpoError line naming the flag) before any heavy work."""
        validate_fields(self)
        if self.ce_clip_eps is not None and not (0 < self.ce_clip_eps < 1 / self.beta):
            # at eps >= 1/beta the clip moves even terminal_ce's failure optimum (-1/beta)
            raise SpoError(
                f"--ce-clip-eps must be in (0, 1/beta = {1 / self.beta:.4g}), got {self.ce_clip_eps}"
            )
        bad = [k for k in self.eval_k if not 1 <= k <= self.eval_n]
        if bad and self.eval_problems != 0:
            raise SpoError(
                f"--eval-k {','.join(map(str, self.eval_k))}: pass@k needs 1 <= k <= --eval-n "
                f"({self.eval_n}); raise --eval-n or lower k"
            )
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise SpoError(
                f"--micro-batch-size {self.micro_batch_size} is larger than --batch-size "
                f"{self.batch_size}: a micro-batch is a chunk of the batch; lower it"
            )
        if self.nproc > self.batch_size:
            raise SpoError(
                f"--nproc {self.nproc} is more than --batch-size {self.batch_size}: every "
                "process needs at least one row of the batch; lower --nproc or raise --batch-size"
            )
        if self.train_where is not None:
            if not self.train_where.strip():
                raise SpoError(
                    "--train-where is empty: give an SQL predicate over p, or leave it out"
                )
            from spo_store.predicates import check_predicate

            # one self-contained expression: `FALSE) OR (p.split = 'test'` would otherwise
            # close the parenthesis around it and drop the split and reliability filters
            check_predicate(self.train_where, "--train-where")
        rules_of(self.algo).check(self)  # mc term, online-only mixtures, whole groups
        if self.eval_train_problems and self.eval_problems and self.eval_split == self.train_split:
            raise SpoError(
                f"--eval-train-problems with --eval-split {self.eval_split} = --train-split: "
                "both would log eval/" + self.eval_split + "/pass@k; set --eval-train-problems 0"
            )
        check_output_path(self.output)

    def resolved(self) -> TrainConfig:
        """A copy with every setting left unset for the algorithm to choose filled in
        (`spo_train.algorithm_rules`): what the run actually uses, and what its config.toml
        saves."""
        fill = rules_of(self.algo).resolve(self)
        return dataclasses.replace(self, **fill) if fill else self


TRAIN_HELP_PANELS: dict[str, tuple[str, ...]] = {
    "Model, lake and run": (
        "model", "lake", "output", "resume", "seed", "device", "nproc", "workers",
        "unsafe_no_sandbox",
    ),
    "Algorithm, loss and data": (
        "algo", "loss", "beta", "ce_clip_eps", "mc_weight", "mix", "sources_file",
        "include_unreliable", "train_split", "train_where", "train_problems",
    ),
    "Optimisation": (
        "steps", "batch_size", "micro_batch_size", "learning_rate", "weight_decay",
        "max_grad_norm", "warmup_steps", "precision", "logprob_chunk_size",
        "activation_checkpointing", "compile",
    ),
    "Online rollouts": (
        "rollout_n", "rollout_temperature", "rollout_top_p", "max_new_tokens",
        "model_update_interval", "staleness", "rollout_workers", "rollout_worker_decoding",
        "ray_address", "weight_sync",
    ),
    "PPO and GRPO": (
        "clip_eps", "update_epochs", "minibatches", "importance_weight_cap", "gae_lambda",
        "value_clip_eps", "value_learning_rate", "grpo_scale_rewards", "grpo_length_norm",
        "kl_coef", "grpo_reference_per_group",
    ),
    "TOPR": ("topr_baseline",),
    "Q0 estimates (SPO)": ("q0_temperature", "q0_top_p", "q0_max_new_tokens"),
    "Evaluation": (
        "eval_split", "eval_every", "eval_n", "eval_k", "eval_problems", "eval_train_problems",
        "eval_temperature", "eval_top_p",
    ),
    "Checkpoints and logging": ("checkpoint_every", "keep_checkpoints", "tensorboard", "wandb"),
}  # fmt: skip
"""`spo train --help` in panels (as TRL and verl group their arguments): each TrainConfig
field's panel, in this order; tests check that every option has one."""

HELP_PANELS: dict[type, dict[str, str]] = {
    TrainConfig: {name: panel for panel, names in TRAIN_HELP_PANELS.items() for name in names}
}
"""Per config class, the help panel of each field (a class not here: typer's one panel)."""


@dataclass
class SamplingConfig:
    """Settings shared by `spo estimate-q0` and `spo eval`: what to sample and how (the same
    idea has the same flag in every command; `spo train` prefixes them by role: rollout_,
    eval_, q0_)."""

    n: int = setting(20, short="-n", aliases=("--samples",), check=at_least(1))
    """samples per problem"""
    temperature: float = setting(1.0, check=temperature_check)
    """sampling temperature"""
    top_p: float = setting(1.0, check=top_p_check)
    """nucleus sampling top-p"""
    max_new_tokens: int = setting(256, check=at_least(1))
    """response length bound"""
    seed: int = setting(0, check=seed_check)
    """sampling seed"""
    split: str | None = setting(None)
    """problem split (used when --where is not given)"""
    where: str | None = setting(None, metavar="SQL")
    """SQL predicate over problems (alias p) instead of --split"""
    limit: int | None = setting(None, check=at_least(1))
    """the first N selected problems by problem_id, done or not: the same N on every run (a
    rerun skips the done ones)"""
    model: str | None = setting(None, metavar="DIR")
    """Hugging Face model directory (default: the embedded pi_0)"""
    lake: str | None = setting(None, metavar="URI")
    """lake URI (default: $SPO_LAKE, else ./spo-lake)"""
    backend: str = setting("transformers", check=one_of("transformers", "vllm"))
    """generation backend: transformers or vllm (vllm only where it is installed)"""
    workers: int | None = setting(
        None, flag="--judge-workers", aliases=("--workers",), check=at_least(1)
    )
    """judge processes (default: all cores; --workers: the old name)"""
    include_unreliable: bool = setting(False)
    """keep problems with a judge_issue (left out by default: their rewards are not
    trustworthy)"""
    unsafe_no_sandbox: bool = setting(False)
    """run programs without bubblewrap (trusted code only)"""

    def validate(self) -> None:
        validate_fields(self)
        if self.where is not None and not self.where.strip():
            raise SpoError("--where is empty: give an SQL predicate over p, or leave it out")
        if self.where is not None:
            from spo_store.predicates import check_predicate

            check_predicate(self.where, "--where")


@dataclass
class EstimateQ0Config(SamplingConfig):
    """`spo estimate-q0`: Q0 of --model per problem, by sampling it and judging."""

    n: int = setting(800, short="-n", aliases=("--samples",), check=at_least(1))
    """pi_0 samples per problem: the cap of a sequential rule, the count of a fixed one (paper: 800 fixed)"""
    stopping: str = setting("sequential", check=one_of("sequential", "fixed"))
    """sequential: sample each problem in rounds until --stop-successes successes or the cap --samples (unbiased S0, docs/method.md "Sequential Q0"); fixed: exactly --samples"""
    stop_successes: int = setting(12, check=at_least(2))
    """successes that end a problem's sequential sampling (r; relative error of S0 about 1/sqrt(r))"""
    temperature: float = setting(1.0, check=temperature_check)
    """sampling temperature; 1.0 samples pi_0 itself, which Q0 is defined under"""
    top_p: float = setting(1.0, check=top_p_check)
    """nucleus sampling; 1.0 samples pi_0 itself"""
    split: str | None = setting("train")
    """split to estimate when --where is not given"""
    beta: float = setting(DEFAULT_BETA, check=positive_finite, show_default=BETA_SHOWN)
    """KL strength beta the stored q0 is computed at (training recomputes it at its own beta)"""
    chunk_problems: int = setting(16, check=at_least(1))
    """problems per commit (resume granularity)"""


@dataclass
class EvalConfig(SamplingConfig):
    """`spo eval`: pass@k of a model on a split (or an SQL selection) of the lake's problems."""

    n: int = setting(20, short="-n", aliases=("--samples",), check=at_least(1))
    """samples per problem (paper: 20)"""
    k: tuple[int, ...] = setting((1, 10), parse=parse_ints, check=ks_check, metavar="K,K")
    """pass@k values, each <= --n"""
    temperature: float = setting(0.4, check=temperature_check)
    """sampling temperature (paper: 0.4)"""
    top_p: float = setting(0.95, check=top_p_check)
    """nucleus sampling top-p (paper: 0.95)"""
    split: str | None = setting("test")
    """problem split (used when --where is not given)"""

    def validate(self) -> None:
        super().validate()
        bad = [x for x in self.k if not 1 <= x <= self.n]
        if bad:
            raise SpoError(
                f"--k {','.join(map(str, self.k))}: pass@k needs 1 <= k <= --n ({self.n})"
            )


# ----------------------------------------------------------------------------- resume
def check_output_path(output: str) -> None:
    """Refuse, in one line, an --output that is empty or cannot be a directory: a file, or a
    path under a file (checked before any model loads)."""
    if not output.strip():
        raise SpoError("--output is empty: give a directory for the run")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise SpoError(f"--output {output} is a file; give a directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SpoError(f"--output {output}: {parent} is a file, not a directory")
            break


def check_output_owner(
    output: str, marker: str, owner: str, legacy: tuple[str, frozenset[str]] | None = None
) -> None:
    """Refuse, in one line, an existing non-empty directory `output` that `owner` (a command,
    e.g. `spo demo`) did not write: one without `output`/`marker`, the file `owner` writes
    when it creates or first uses a directory (`mark_output_dir`). An empty directory and a
    missing one are accepted. `legacy` = (a file, the names allowed beside it): a directory
    written before the marker existed, holding that file and nothing but those names, is
    accepted too (the caller marks it). Raises SpoError."""
    out = Path(output)
    if not out.is_dir() or (out / marker).is_file():
        return
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise SpoError(
            f"--output {output}: cannot list the directory ({exc.strerror or exc}); choose "
            "a directory you can read and write"
        ) from None
    if not names:
        return
    if legacy is not None and (out / legacy[0]).is_file() and set(names) <= legacy[1]:
        return
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise SpoError(
        f"--output {output} holds other files ({shown}) and no {marker}: {owner} writes only "
        f"into a new or empty directory or one an earlier {owner} wrote; choose another --output"
    )


def mark_output_dir(output: str, marker: str, owner: str, flag: str = "--output") -> None:
    """Create `output` (`make_output_dir`) and write its `marker` file (JSON: `written_by`
    `owner`) unless there is one: the directory is `owner`'s from then on
    (`check_output_owner`)."""
    make_output_dir(output, flag)
    path = Path(output) / marker
    if not path.is_file():
        try:
            path.write_text(json.dumps({"written_by": owner}) + "\n")
        except OSError as exc:
            raise SpoError(
                f"{flag} {output}: cannot write {marker} there ({exc.strerror or exc}); "
                "choose a directory you can write"
            ) from None


def make_output_dir(output: str, flag: str = "--output") -> None:
    """Create the directory `output` (and its parents); SpoError, one line naming `flag`, when
    the system refuses (no permission, a read-only or virtual file system such as /proc)."""
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoError(
            f"{flag} {output}: cannot create the directory ({exc.strerror or exc}); "
            "choose a directory you can write"
        ) from None


def check_output_dir(config: TrainConfig) -> None:
    """Refuse, in one line, an --output that cannot hold this run.

    A file is refused; so is --resume of a folder that holds no run (none there, or no
    checkpoint, config.toml or run.json: a mistyped path). A directory without a checkpoint is
    accepted (its run, if any, ended before one and left nothing to continue). Without --resume, a directory holding another
    run's checkpoints is refused: two runs' checkpoints and TensorBoard events would
    mix. With --resume, settings that differ from the stored run's are refused (naming them):
    resuming must not silently change the experiment or overwrite its config.
    """
    check_output_path(config.output)
    out = Path(config.output)
    if config.resume and not (
        out.is_dir() and (has_checkpoint(out) or stored_train_config(out) is not None)
    ):
        # --resume of a folder that never held a run is a typo, not a fresh start.
        why = "does not exist" if not out.exists() else "holds no run of spo train"
        raise SpoError(
            f"--resume: --output {config.output} {why}, so there is nothing to continue: check "
            "the path, or leave --resume out to start a new run there"
        )
    if not out.is_dir():
        return
    if not has_checkpoint(out):
        # A run that stopped before its first checkpoint (a refusal, a crash, Ctrl-C) left
        # nothing to continue: a fresh start (or --resume, which starts fresh) may reuse the
        # directory with other settings; its config.toml and run.json are rewritten.
        return
    if not config.resume:
        ckpts = sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
        marks = [n for n in ("run.json", "config.toml", "latest") if (out / n).exists()]
        if ckpts or marks:
            run_id = ""
            if (out / "run.json").is_file():
                try:
                    run_id = " " + json.loads((out / "run.json").read_text())["run_id"]
                except (ValueError, KeyError):
                    pass
            last = f", last checkpoint {ckpts[-1]}" if ckpts else ""
            raise SpoError(
                f"--output {config.output} already holds run{run_id}{last}: add --resume to "
                "continue it, or choose another --output (runs never share a directory)"
            )
        return
    step = checkpoint_step(out)
    if step is not None and config.steps < step:
        raise SpoError(
            f"--steps {config.steps} is below the step of the run in {config.output} "
            f"(checkpoint-{step:06d}): a resume trains on to --steps; give --steps >= {step}"
        )
    stored = stored_train_config(out)
    if stored is not None:
        values, source = stored
        diffs = differing_settings(values, as_saved(config.resolved()))
        if diffs:
            refuse_differing(config.output, source, diffs)


def checkpoint_step(output: str | Path) -> int | None:
    """The step of the checkpoint `latest` names in `output` (None: none, or unreadable)."""
    marker = Path(output) / "latest"
    try:
        return int(marker.read_text().strip().removeprefix("checkpoint-"))
    except (OSError, ValueError):
        return None


def has_checkpoint(output: str | Path) -> bool:
    """Whether `output` holds a checkpoint (or its `latest` marker) that --resume continues."""
    out = Path(output)
    return (out / "latest").exists() or any(p.is_dir() for p in out.glob("checkpoint-*"))


def stored_train_config(output: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The settings a run in `output` was started with: config.toml, else run.json's config
    (runs written before config.toml existed). None when `output` holds no run."""
    out = Path(output)
    toml_path = out / "config.toml"
    if toml_path.is_file():
        values = read_toml(TrainConfig, toml_path)
        return values, toml_path
    run_json = out / "run.json"
    if run_json.is_file():
        stored = json.loads(run_json.read_text()).get("config", {})
        renamed = {"lr": "learning_rate", "top_p": "rollout_top_p"}  # pre-config.toml names
        fields = field_map(TrainConfig)
        values = {}
        for k, v in stored.items():
            k = renamed.get(k, k)
            if k in fields and fields[k].metadata.get("saved", True):
                values[k] = coerce(TrainConfig, k, v, f"{run_json}: {k}")
        return values, run_json
    return None


PATH_SETTINGS = ("model", "lake", "sources_file")


def absolute_path(v: Any) -> Any:
    """A local path as an absolute one (`runs/x` and `./runs/x` are the same run input)."""
    if isinstance(v, str) and "://" not in v:
        return str(Path(v).expanduser().resolve())
    return v


def _same(a: Any, b: Any) -> bool:
    a = tuple(a) if isinstance(a, list) else a
    b = tuple(b) if isinstance(b, list) else b
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def differing_settings(
    stored: Mapping[str, Any], given: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(name, stored value, given value) of every experiment setting in `given` that differs
    from the stored run's (settings marked `resumable_change` may differ)."""
    fields = field_map(TrainConfig)
    # A setting the algorithm resolves (`TrainConfig.resolved`) that the stored run left unset
    # (saved before it was resolved) means what resolving the stored settings gives.
    known = {k: v for k, v in stored.items() if k in fields}
    try:
        filled = as_saved(TrainConfig(**known).resolved())
    except (TypeError, KeyError):
        filled = {}
    stored = {**stored, **{k: v for k, v in filled.items() if stored.get(k) is None}}
    out = []
    for name, value in given.items():
        f = fields.get(name)
        if f is None or not f.metadata.get("saved", True) or f.metadata.get("resumable_change"):
            continue
        old = stored.get(name, f.default)
        if name in PATH_SETTINGS:
            old, value = absolute_path(old), absolute_path(value)
        if not _same(old, value):
            out.append((name, old, value))
    return out


def show_value(v: Any) -> str:
    if isinstance(v, tuple | list):
        return ",".join(map(str, v))
    return "(not set)" if v is None else str(v)


def refuse_differing(output: str | Path, source: Path, diffs: list[tuple[str, Any, Any]]) -> None:
    """One SpoError line naming the settings that differ from the stored run's."""
    fields = field_map(TrainConfig)
    shown = "; ".join(
        f"{flag_of(fields[n])} {show_value(new)} (run: {show_value(old)})" for n, old, new in diffs
    )
    raise SpoError(
        f"--resume: these settings differ from the run in {output} ({source.name}): {shown}. "
        f"Drop them to resume as started (`spo train --config {Path(output) / 'config.toml'} "
        "--resume`), or train a new run with another --output"
    )


def settings_table(cls: type = TrainConfig) -> str:
    """The Markdown table of `cls`'s settings (docs/settings.md embeds it; a test keeps the two
    equal): config.toml key, CLI flag and aliases, default, TRL and verl names, meaning."""
    rows = [
        "| config.toml key | flag (aliases) | default | TRL | verl | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(cls):
        flags = ", ".join(f"`{x}`" for x in (flag_of(f), *f.metadata.get("aliases", ())))
        if _types(cls)[f.name][0] is bool and f.default is True:
            flags = f"`{flag_of(f)}` / `--no-{flag_of(f)[2:]}`"
        shown = f.metadata.get("show_default")
        default = shown if isinstance(shown, str) else show_value(f.default)
        key = f"`{f.name}`" if f.metadata.get("saved", True) else "(not saved)"
        trl, verl = f.metadata.get("trl"), f.metadata.get("verl")
        meaning = help_of(cls, f.name).replace("|", "\\|")
        rows.append(
            f"| {key} | {flags} | {default} | {f'`{trl}`' if trl else ''} | "
            f"{f'`{verl}`' if verl else ''} | {meaning} |"
        )
    return "\n".join(rows) + "\n"
