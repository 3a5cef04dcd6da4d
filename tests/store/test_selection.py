"""The real-data path (issue 10, items 4 and 5): the real CodeContests sample ingests with split
`unspecified` and says so; commands that select nothing say why and list the splits present
(a mistyped `--split tran` included) instead of "0 problems" and exit 0; after moving the
problems to `train`, estimate-q0 and train see them; a mixture whose `offline` source is empty
(no correct trajectory: the sample has no solutions) says what to do, not raw SQL."""

from __future__ import annotations

import subprocess

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.mixture import MixtureSampler
from spo_store.q0_estimates import estimate_row, sampler_key, write_estimates
from spo_store.selection import check_split, explain_empty, split_of_predicate, splits_present
from tests.conftest import needs_sandbox

PRESENT = "splits present: unspecified (20)"


def spo(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `spo`; stdout and stderr with rich's line wrapping undone (one space per break)."""
    out = subprocess.run(["spo", *args], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    out.stdout, out.stderr = " ".join(out.stdout.split()), " ".join(out.stderr.split())
    return out


def test_check_split_and_explain_empty(lake, cc_sample):
    from spo_store.ingest import ingest_human_solutions

    with pytest.raises(SpoError, match=r"splits present: none \(the lake has no problems"):
        check_split(lake, "train")
    ingest_human_solutions(lake, [cc_sample])
    assert splits_present(lake) == {"unspecified": 20}
    check_split(lake, "unspecified")
    with pytest.raises(SpoError) as typo:
        check_split(lake, "tran")
    assert str(typo.value) == (
        "--split 'tran' is not a split (one of train, valid, test, unspecified); " + PRESENT
    )
    with pytest.raises(SpoError) as empty:
        check_split(lake, "valid", "--eval-split")
    assert str(empty.value).startswith(
        f"--eval-split valid: no problem in split 'valid'; {PRESENT}; move problems with "
        "`spo lake set-split valid --from-split unspecified`"
    )
    assert split_of_predicate("p.split = 'train'") == "train"
    assert split_of_predicate("p.split = 'train' AND p.name = 'x'") is None
    assert explain_empty(lake, "p.split = 'train'").startswith(
        f"no problem in split 'train'; {PRESENT}"
    )
    assert explain_empty(lake, "p.difficulty > 99") == (
        f"""no problem matches --where 'p.difficulty > 99' (20 problems in the lake; {PRESENT})"""
    )


def test_empty_offline_source_says_what_to_do(lake, cc_sample):
    """No correct trajectory in the lake (the sample has no solutions): the default mixture's
    offline source says to use `--mix online:1` or ingest solutions; no SQL unless SPO_DEBUG."""
    from spo_store.ingest import ingest_human_solutions

    ingest_human_solutions(lake, [cc_sample], split="train")
    ids = lake.sql_arrow("SELECT problem_id FROM problems WHERE judge_issue IS NULL").column(0)
    ref, key = "model-A", sampler_key(1.0, 1.0, 16)
    write_estimates(
        lake,
        [
            estimate_row(
                str(p),
                ref,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=16,
                samples=2,
                successes=0,
                beta=0.1,
                run_id="r",
            )  # fmt: skip
            for p in ids.to_pylist()[:3]
        ],
    )
    sampler = MixtureSampler(
        lake, "online:0.5,offline:0.5", run_id="train-x", ref_model_id=ref, q0_sampler_key=key
    )
    with pytest.raises(SpoError) as exc:
        sampler.sample(4)
    msg = str(exc.value)
    assert "mixture source 'offline' is empty" in msg or "mixture source 'online' is empty" in msg
    with pytest.raises(SpoError, match="mixture source 'offline' is empty.*--mix online:1"):
        sampler.check_sources()  # before any run: `online` is not checked, `offline` is
    MixtureSampler(lake, "online:1", ref_model_id=ref, q0_sampler_key=key).check_sources()
    offline = sampler.why_empty("offline")
    assert (
        "no correct (reward 0) Python 3 trajectories for the problems of split 'train'" in offline
    )
    assert "--mix online:1" in offline and "spo ingest human-solutions" in offline
    assert "t.reward" not in offline and "SELECT" not in offline
    # Narrowed down: a split with no problem, no q0 for another model.
    other = MixtureSampler(lake, "offline:1", split="valid", ref_model_id=ref, q0_sampler_key=key)
    assert "no problem of split 'valid' (splits present: train (20)" in other.why_empty("offline")
    no_q0 = MixtureSampler(lake, "offline:1", ref_model_id="model-B", q0_sampler_key=key)
    assert "run `spo estimate-q0`" in no_q0.why_empty("offline")


@needs_sandbox
def test_real_sample_reaches_training(tmp_path, cc_sample):
    lake = str(tmp_path / "lake")
    out = spo("ingest", "human-solutions", str(cc_sample), "--lake", lake)
    assert out.returncode == 0, out.stderr
    assert "splits: 20 unspecified from the rows and file names" in out.stdout
    assert "spo lake set-split" in out.stdout and "--split on a re-ingest" in out.stdout

    tiny = ["--samples", "2", "--max-new-tokens", "16"]
    # Nothing in the default split: one line saying why, non-zero exit, no run recorded.
    out = spo("estimate-q0", "--lake", lake, *tiny)
    assert out.returncode == 2
    assert f"no problem in split 'train'; {PRESENT}" in out.stderr
    assert "spo lake set-split train --from-split unspecified" in out.stderr
    out = spo("estimate-q0", "--lake", lake, "--split", "tran", *tiny)
    assert out.returncode == 2 and "'tran' is not a split" in out.stderr and PRESENT in out.stderr
    out = spo("eval", "--lake", lake, "--n", "1", "--k", "1")
    assert out.returncode == 2 and f"no problem in split 'test'; {PRESENT}" in out.stderr
    kinds = Lake.open(lake).sql_arrow("SELECT kind, status FROM runs").to_pylist()
    assert [r["kind"] for r in kinds] == ["ingest"]

    # Re-ingest with --split train moves them and says so.
    out = spo("ingest", "human-solutions", str(cc_sample), "--lake", lake, "--split", "train")
    assert out.returncode == 0, out.stderr
    assert "splits: 20 train from --split" in out.stdout
    assert "moved 20 problem(s) already in the lake to the split given" in out.stdout

    out = spo("estimate-q0", "--lake", lake, *tiny, "--limit", "3")
    assert out.returncode == 0, out.stderr
    assert "estimated for 3 problems" in out.stderr
    assert "left out 6 problems the judge cannot handle reliably" in out.stderr
    n_est = Lake.open(lake).sql_arrow("SELECT count(*) FROM q0_estimates").column(0)[0].as_py()
    assert n_est == 3

    # Training sees them; the default mixture needs correct trajectories the sample lacks.
    train = [
        "train", "--lake", lake, "--output", str(tmp_path / "run"), "--train-split", "train",
        "--steps", "1", "--batch-size", "2", "--rollout-n", "1", "--max-new-tokens", "16",
        "--eval-problems", "0", "--wandb", "off",
    ]  # fmt: skip
    out = spo(*train)
    assert out.returncode == 2, out.stderr
    assert "mixture source 'offline' is empty" in out.stderr and "--mix online:1" in out.stderr
    assert "t.reward" not in out.stderr
    out = spo(*train[:4], str(tmp_path / "run2"), *train[5:], "--mix", "online:1")
    assert out.returncode == 0, out.stderr
    assert "trained 1 steps" in out.stderr


@needs_sandbox
def test_rerun_of_estimate_q0_reports_what_was_done_before(tmp_path):
    """A rerun that selects problems already estimated works on 0 of them and says how many
    were done before (`Q0Report.already_done`), rather than a bare "0 problems"."""
    from spo_train.embedded.defaults import ensure_problems
    from spo_train.lm.generation import TransformersGenerator
    from spo_train.lm.models import load_model_and_tokenizer, model_identity, tokenizer_identity
    from spo_train.q0 import estimate_q0
    from spo_train.rollouts.sampling import SamplerSettings, load_problems

    lake = Lake.open(tmp_path / "lake")
    ensure_problems(lake)
    first = load_problems(lake, "p.split = 'train' AND p.judge_issue IS NULL")[0]["problem_id"]
    model, tok = load_model_and_tokenizer(None)
    kw = dict(
        where=f"p.problem_id = '{first}'",
        settings=SamplerSettings(n=1, temperature=1.0, top_p=1.0, max_new_tokens=8),
        model_id=model_identity(None),
        tokenizer_id=tokenizer_identity(tok),
    )
    gen = TransformersGenerator(model, tok)
    done = estimate_q0(lake, gen, tok, **kw)
    assert (done.problems, done.already_done) == (1, 0)
    again = estimate_q0(lake, gen, tok, **kw)
    assert (again.problems, again.already_done) == (0, 1)
