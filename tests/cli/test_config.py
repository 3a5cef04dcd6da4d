"""One definition of every setting (issue 10, items 12 and 14): the CLI options of `spo train`,
`spo estimate-q0` and `spo eval`, the TOML config format and the checks all come from the
dataclass fields of spo_train/config.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import pytest
import typer

from spo_store.errors import SpoError
from spo_train.config import (
    EstimateQ0Config,
    EvalConfig,
    TrainConfig,
    dump_toml,
    field_docs,
    flag_of,
    read_toml,
)


def _flags(command: str) -> set[str]:
    from spo_cli import main

    main._register_all()
    group = typer.main.get_command(main.app)
    cmd = group.get_command(typer._click.Context(group), command)
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _help(command: str) -> str:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    r = subprocess.run(
        ["spo", command, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_train_setting_is_a_flag_with_help() -> None:
    flags = _flags("train")
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert flag_of(f) in flags, f"TrainConfig.{f.name} has no CLI flag"
        assert docs.get(f.name), f"TrainConfig.{f.name} has no docstring (its help)"
    # The settings the issue names as missing from the CLI.
    for flag in (
        "--warmup-steps",
        "--max-grad-norm",
        "--weight-decay",
        "--micro-batch-size",
        "--rollout-temperature",
        "--rollout-top-p",
        "--eval-k",
        "--eval-temperature",
        "--eval-split",
        "--keep-checkpoints",
        "--train-split",
        "--config",
        "--learning-rate",
    ):
        assert flag in flags, flag
    # Old names stay as aliases.
    assert {"--lr", "--rollout-n", "--eval-n", "--checkpoint-every"} <= flags


def test_algo_help_is_built_from_the_algorithm_registry() -> None:
    """`--algo`'s help lists every algorithm of `algorithm_rules.RULES` with its summary and
    says which train online only and which need no q0, from the rules: a new algorithm shows
    up without editing the help (here one added to a copy of the registry)."""
    from spo_train.algorithm_rules import RULES, AlgorithmRules, algorithms_help

    shown = " ".join(_help("train").replace("│", " ").split())  # the panel's wrapped rows
    for name, rules in RULES.items():
        assert rules.summary and f"{name} ({rules.summary})" in shown, name

    class DPORules(AlgorithmRules):
        name = "dpo"
        summary = "direct preference optimisation"
        online_only = True
        needs_q0 = True

    text = algorithms_help({**RULES, "dpo": DPORules()})
    assert "sft (token-level NLL on the mixture's successes) or dpo (direct preference" in text
    assert "; ppo, grpo and dpo train on this run's online rollouts only;" in text
    assert "; ppo, grpo, topr and sft need no q0 (docs/algorithms.md)" in text
    assert algorithms_help({"spo": RULES["spo"]}) == (
        "training algorithm: spo (Soft Policy Optimization, the paper's) (docs/algorithms.md)"
    )


def test_the_same_idea_has_the_same_flag_in_every_command() -> None:
    shared = {"--n", "-n", "--samples", "--temperature", "--top-p", "--max-new-tokens", "--seed"}
    shared |= {"--model", "--lake", "--workers", "--split", "--where", "--limit"}
    for command in ("estimate-q0", "eval"):
        assert shared <= _flags(command), (command, shared - _flags(command))
    for command in ("estimate-q0", "eval", "train"):
        assert {"--model", "--lake", "--workers", "--seed", "--max-new-tokens"} <= _flags(command)


def test_help_has_no_bool_metavar_and_a_readable_beta() -> None:
    for command in ("train", "estimate-q0", "eval", "demo"):
        text = _help(command)
        assert "<bool>" not in text, command
        assert "0.08685889638065036" not in text, command
    assert "1/log(100000) ≈ 0.0869" in _help("train")
    assert "1/log(100000) ≈ 0.0869" in _help("estimate-q0")


def test_toml_round_trip_reloads_as_is(tmp_path) -> None:
    cfg = TrainConfig(
        output=str(tmp_path / "o"),
        learning_rate=3e-5,
        rollout_temperature=(0.2, 0.6),
        eval_k=(1, 5),
        eval_n=5,
        ce_clip_eps=1e-6,
        micro_batch_size=8,
        keep_checkpoints=2,
        tensorboard=False,
        mix='online:1,"quoted"',
    )
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg, "header\nline two"))
    loaded = TrainConfig(**read_toml(TrainConfig, path))
    assert loaded == cfg
    assert "resume" not in path.read_text()  # an action, not a setting


def test_config_file_errors_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rat = 1e-4\n")
    with pytest.raises(SpoError, match="'learning_rat' is not a setting .*'learning_rate'"):
        read_toml(TrainConfig, bad)
    bad.write_text('steps = "ten"\n')
    with pytest.raises(SpoError, match="steps: expected int, got 'ten'"):
        read_toml(TrainConfig, bad)
    bad.write_text("steps = [\n")
    with pytest.raises(SpoError, match="not valid TOML"):
        read_toml(TrainConfig, bad)
    with pytest.raises(SpoError, match="no such file"):
        read_toml(TrainConfig, tmp_path / "nope.toml")


def test_config_file_then_flags_override(tmp_path) -> None:
    from spo_cli.train_cmds import resolve_train_config

    path = tmp_path / "run.toml"
    path.write_text("learning_rate = 2e-4\nsteps = 7\neval_k = [1, 2]\neval_n = 4\n")
    cfg = resolve_train_config({"steps": 9}, str(path))
    assert (cfg.learning_rate, cfg.steps, cfg.eval_k, cfg.eval_n) == (2e-4, 9, (1, 2), 4)


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (TrainConfig, {"checkpoint_every": 0}, "--checkpoint-every/--save-steps 0: must be at"),
        (TrainConfig, {"workers": -1}, "--workers -1: must be at least 1"),
        (TrainConfig, {"staleness": -1}, "--staleness -1: must be at least 0"),
        (TrainConfig, {"micro_batch_size": 0}, "--micro-batch-size 0"),
        (TrainConfig, {"rollout_temperature": (0.0, 0.5)}, "--rollout-temperature 0.0,0.5"),
        (TrainConfig, {"rollout_top_p": 0.0}, "--rollout-top-p 0.0: must be in"),
        (TrainConfig, {"eval_temperature": -1.0}, "--eval-temperature -1.0"),
        (TrainConfig, {"keep_checkpoints": 0}, "--keep-checkpoints/--save-total-limit 0"),
        (TrainConfig, {"warmup_steps": -1}, "--warmup-steps -1"),
        (TrainConfig, {"max_grad_norm": 0.0}, "--max-grad-norm 0.0"),
        (TrainConfig, {"weight_decay": float("nan")}, "--weight-decay nan"),
        (TrainConfig, {"eval_n": 2}, r"--eval-k 1,10: pass@k needs 1 <= k <= --eval-n \(2\)"),
        (EstimateQ0Config, {"beta": -1.0}, "--beta -1.0: must be a positive finite number"),
        (EstimateQ0Config, {"beta": float("inf")}, "--beta inf"),
        (EstimateQ0Config, {"chunk_problems": 0}, "--chunk-problems 0"),
        (EvalConfig, {"n": 2}, r"--k 1,10: pass@k needs 1 <= k <= --n \(2\)"),
        (EvalConfig, {"top_p": 1.5}, "--top-p 1.5: must be in"),
        (EvalConfig, {"where": "  "}, "--where is empty"),
    ],
)
def test_each_setting_is_checked(cls, values, message) -> None:
    with pytest.raises(SpoError, match=message):
        cls(**values).validate()


def test_settings_doc_is_the_definition() -> None:
    """docs/settings.md's tables are generated from the fields: regenerate them on a change."""
    from pathlib import Path

    from spo_train.config import settings_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    for cls in (TrainConfig, EstimateQ0Config, EvalConfig):
        assert settings_table(cls) in doc, f"docs/settings.md: regenerate the {cls.__name__} table"


def test_no_help_of_any_command_shows_bool() -> None:
    """Item 14 across every command: switches take no value, so help shows no `<bool>`."""
    from spo_cli import main
    from typer.testing import CliRunner

    main._register_all()
    root = typer.main.get_command(main.app)

    def walk(cmd, path):
        yield path
        if hasattr(cmd, "list_commands"):
            ctx = typer._click.Context(cmd)
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), [*path, name])

    paths = list(walk(root, []))
    assert len(paths) > 15
    for path in paths:
        r = CliRunner().invoke(main.app, [*path, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (path, r.output)
        assert "<bool>" not in r.output, path


def test_resume_reads_an_unset_stored_setting_as_the_algorithm_resolves_it() -> None:
    """A run saved before a setting was resolved (None in its config.toml) still resumes with
    the resolved value; a real difference is still refused."""
    from spo_train.config import as_saved, differing_settings

    stored = as_saved(TrainConfig(algo="ppo", learning_rate=3e-4))
    stored["value_learning_rate"] = None  # what a config.toml saved before resolving holds
    given = as_saved(TrainConfig(algo="ppo", learning_rate=3e-4).resolved())
    assert given["value_learning_rate"] == 3e-4 and given["mix"] == "online:1"
    assert differing_settings(stored, given) == []
    other = as_saved(
        TrainConfig(algo="ppo", learning_rate=3e-4, value_learning_rate=1e-5).resolved()
    )
    assert [d[0] for d in differing_settings(stored, other)] == ["value_learning_rate"]
