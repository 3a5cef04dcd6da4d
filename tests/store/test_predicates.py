"""Issue 19 item 9: `--where` and mixture sources are one boolean expression each, checked
with DuckDB's own parser before any query is built around them (spo_store.predicates)."""

from __future__ import annotations

import subprocess

import pytest

from spo_store.errors import SpoError
from spo_store.mixture import load_sources
from spo_store.predicates import check_predicate, fill_placeholders
from tests.store.test_mixture import MixtureSampler, seed_lake

HOSTILE = [
    ("1=1; COPY (SELECT 1) TO '{out}'", "not several statements"),
    ("t.reward = 0) OR (1=1", "not one SQL boolean expression"),
    ("t.reward = 0 --", "self-contained"),
    ("t.reward = 0 /*", "not one SQL boolean expression"),
    ("1=1 UNION SELECT 2", "boolean expression"),
    ("1=1 ORDER BY 1", "boolean expression"),
    ("t.traj_id IN (SELECT y FROM read_csv('/etc/passwd'))", "table function read_csv"),
    ("t.traj_id IN (SELECT * FROM '/etc/passwd')", "not a lake table"),
    ("EXISTS (SELECT 1 FROM 'http://127.0.0.1:9/x.csv')", "not a lake table"),
    ("t.traj_id IN (SELECT content FROM read_text('/etc/passwd'))", "read_text"),
    ("", "empty"),
]


@pytest.mark.parametrize(("pred", "message"), HOSTILE)
def test_hostile_predicates_are_refused(pred, message, tmp_path):
    with pytest.raises(SpoError, match=message):
        check_predicate(pred.format(out=tmp_path / "x.csv"), "--where")


@pytest.mark.parametrize(
    "pred",
    [
        "p.split = 'train'",
        "p.name ~ 'a{2,}' AND p.num_tests > 3",
        "t.traj_id IN (SELECT a.traj_id FROM annotations a WHERE a.method = 'pts')",
        "t.traj_id IN (WITH c AS (SELECT 'x' AS y) SELECT y FROM c)",
        "p.name = 'it''s ); DROP'",
        "p.split = 'train' -- a comment\n",
    ],
)
def test_plain_predicates_pass(pred):
    assert check_predicate(pred, "--where") == pred


def test_placeholders_leave_other_braces_alone():
    text = "t.run_id = {run_id} AND p.name ~ 'a{2,}' AND p.name <> '{run_id}'"
    got = fill_placeholders(text, {"run_id": "'r1'"})
    assert got == "t.run_id = 'r1' AND p.name ~ 'a{2,}' AND p.name <> '{run_id}'"
    with pytest.raises(SpoError, match="unknown placeholder {rnu_id}"):
        fill_placeholders("t.run_id = {rnu_id}", {"run_id": "'r1'"})


def test_a_source_with_a_regex_quantifier_samples(lake, tmp_path):
    seed_lake(lake)
    cfg = tmp_path / "s.toml"
    cfg.write_text("[sources]\nrep = \"t.reward = 0 AND regexp_matches(t.traj_id, '^z{1,}1')\"\n")
    batch = MixtureSampler(lake, "rep:1", sources=load_sources(cfg)).sample(8)
    assert batch.traj_ids and all(t.startswith("z1") for t in batch.traj_ids)


def test_a_source_cannot_close_its_parenthesis(lake, tmp_path):
    """The escape of the issue: `... ) OR (1=1` dropped the split, reliability and q0 filters."""
    seed_lake(lake)
    cfg = tmp_path / "s.toml"
    cfg.write_text('[sources]\nesc = "t.reward = 0) OR (1=1"\n')
    with pytest.raises(SpoError, match="source 'esc': not one SQL boolean expression"):
        load_sources(cfg)


def run_spo(*args, cwd):
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_refuses_injected_statements_before_any_work(tmp_path):
    """Through the CLI: --where of eval/estimate-q0/rollout/pts and --sources-file of train;
    nothing is written (no file from COPY, no lake)."""
    out = tmp_path / "pwn.csv"
    lake = tmp_path / "lake"
    inject = f"1=1; COPY (SELECT 1) TO '{out}'"
    for cmd in (["eval"], ["estimate-q0"], ["rollout"], ["pts"]):
        r = run_spo(*cmd, "--where", inject, "--lake", str(lake), cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "not several statements" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    src = tmp_path / "s.toml"
    src.write_text(f'[sources]\nmine = "{inject}"\n')
    r = run_spo(
        "train",
        "--sources-file",
        str(src),
        "--mix",
        "mine:1",
        "--lake",
        str(lake),
        "--output",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "source 'mine'" in r.stderr, r.stderr
    assert not out.exists() and not lake.exists()
