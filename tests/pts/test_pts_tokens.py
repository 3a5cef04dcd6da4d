"""Pivotal token search on real parts (issue 12, items 1-3): the embedded model and its
tokenizer, a real lake, the real sandbox. Positions line up with the tokens the trainer's
log-probs use; an MC target at position t moves Q after token t and no later one; the `pts`
and `pts_rollouts` mixture sources; `spo train --mc-weight` on annotated rows."""

from __future__ import annotations

import math

import pytest
import torch

from spo_store.annotations import parse_rollout_traj_id
from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from spo_store.mixture import MixtureSampler
from spo_store.q0_estimates import estimate_row, write_estimates
from tests.conftest import PROBLEMS, needs_sandbox, write_jsonl

pytestmark = needs_sandbox
MAX_NEW = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A lake with the small problem set, human solutions of add1 annotated under the embedded
    pi_0 (K=2), and q0 estimates of every train problem."""
    from spo_train.lm.generation import TransformersGenerator
    from spo_train.lm.models import (
        default_model_path,
        load_model_and_tokenizer,
        model_identity,
        tokenizer_identity,
    )
    from spo_train.pts import Sampler, annotate, sandbox_judge

    root = tmp_path_factory.mktemp("pts")
    lake = Lake.open(root / "lake")
    ingest_human_solutions(lake, [write_jsonl(root / "p.jsonl", PROBLEMS)])
    model, tok = load_model_and_tokenizer(None)
    model_id, tok_id = model_identity(default_model_path()), tokenizer_identity(tok)
    report = annotate(
        lake,
        TransformersGenerator(model, tok),
        tok,
        where="p.name = 'add1'",
        samples=2,
        threshold=0.3,
        sampler=Sampler(max_new_tokens=MAX_NEW),
        model_id=model_id,
        tokenizer_id=tok_id,
        judge=sandbox_judge(workers=1),
    )
    ids = lake.sql("SELECT problem_id FROM problems WHERE split = 'train'")["problem_id"]
    write_estimates(
        lake,
        [
            estimate_row(
                pid,
                model_id,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=MAX_NEW,
                samples=4,
                successes=1,
                beta=0.5,
                run_id="fake-q0",
            )
            for pid in ids
        ],
    )
    return {"lake": lake, "model": model, "tok": tok, "model_id": model_id, "tok_id": tok_id,
            "report": report, "root": root}  # fmt: skip


def _prepared(world, traj_ids):
    """The rows as the trainer prepares them (`ReferenceCache.prepare`)."""
    from spo_train.rollouts.sampling import load_problems
    from spo_train.train.batch import ReferenceCache

    lake = world["lake"]
    quoted = ", ".join(f"'{t}'" for t in traj_ids)
    table = lake.dataset("trajectories").to_table(filter=f"traj_id IN ({quoted})")
    by_id = {r["traj_id"]: r for r in table.to_pylist()}
    rows = [by_id[t] for t in traj_ids]  # in order, repeats kept (a batch may repeat a row)
    import pyarrow as pa

    table = pa.Table.from_pylist(rows, schema=table.schema)
    problems = {p["problem_id"]: p for p in load_problems(lake, "TRUE")}
    cache = ReferenceCache(
        lake, world["tok"], world["tok_id"], world["model"], world["model_id"], "test", None
    )
    return cache.prepare(table, problems), table


def test_annotations_record_their_model_sampler_and_rollouts(world):
    lake, report = world["lake"], world["report"]
    a = lake.sql("SELECT * FROM annotations").to_dicts()
    assert len(a) == report.trajectories == 2  # both human solutions of add1
    for row in a:
        assert row["method"] == "pts" and row["ref_model_id"] == world["model_id"]
        assert row["tokenizer_id"] == world["tok_id"] and row["rollouts_per_estimate"] == 2
        assert row["sampler_key"] == f"temperature=1,top_p=1,max_new_tokens={MAX_NEW}"
        assert row["positions"][0] == -1 and row["positions"] == sorted(set(row["positions"]))
        assert all(0 <= c <= n <= 2 for n, c in zip(row["samples"], row["successes"], strict=True))
    rollouts = lake.sql("SELECT * FROM trajectories WHERE source = 'pts'").to_dicts()
    assert len(rollouts) == report.rollouts == 2 * report.prefixes
    assert {r["model_id"] for r in rollouts} == {world["model_id"]}
    assert all(r["temperature"] == 1.0 and r["top_p"] == 1.0 for r in rollouts)
    assert all(r["max_new_tokens"] == MAX_NEW for r in rollouts)
    assert {r["run_id"] for r in rollouts} == {report.run_id}
    assert lake.sql(f"SELECT status FROM runs WHERE run_id = '{report.run_id}'")["status"][0] == (
        "completed"
    )


def test_positions_are_the_trainers_log_prob_columns(world):
    from spo_train.lm.logprobs import response_logprobs

    lake, model = world["lake"], world["model"]
    for a in lake.sql("SELECT * FROM annotations").to_dicts():
        parent, _ = _prepared(world, [a["traj_id"]])
        prompt, response = parent.prompt_ids[0], parent.response_ids[0]
        assert a["response_tokens"] == len(response)  # human text: encode_response's ids
        assert a["tokens"] == [world["tok"].decode([i]) for i in response]
        rollouts = lake.sql(
            "SELECT traj_id, prompt_ids, response_ids, response FROM trajectories "
            f"WHERE traj_id LIKE 'pts-{a['rollout_key']}@%'"
        ).to_dicts()
        assert {parse_rollout_traj_id(r["traj_id"])[1] for r in rollouts} == set(a["positions"])
        with torch.no_grad():
            lp_parent, _ = response_logprobs(
                model, [prompt], [response], pad_token_id=world["tok"].pad_token_id,
                requires_grad=False,
            )  # fmt: skip
        for r in rollouts:
            t = parse_rollout_traj_id(r["traj_id"])[1]
            # a rollout from position t continues the trainer's tokens 0..t of the parent
            assert r["prompt_ids"] == prompt
            assert r["response_ids"][: t + 1] == response[: t + 1]
            if len(r["response_ids"]) > t + 1:
                with torch.no_grad():
                    lp, _ = response_logprobs(
                        model, [prompt], [r["response_ids"]],
                        pad_token_id=world["tok"].pad_token_id, requires_grad=False,
                    )  # fmt: skip
                # log-prob columns 0..t are the parent's own (same tokens, same context)
                torch.testing.assert_close(lp[0, : t + 1], lp_parent[0, : t + 1])
            # its text is the parent's prefix text followed by what pi_0 wrote
            head = world["tok"].decode(response[: t + 1], skip_special_tokens=True)
            assert r["response"].startswith(head)


def test_an_mc_target_at_position_t_moves_q_after_token_t_and_no_later_one(world):
    from spo_train.algorithms import TrainBatch
    from spo_train.algorithms.losses import spo_loss
    from spo_train.pts import attach_mc_targets

    lake = world["lake"]
    a = lake.sql("SELECT * FROM annotations ORDER BY traj_id LIMIT 1").to_dicts()[0]
    prepared, table = _prepared(world, [a["traj_id"], a["traj_id"]])
    lengths = [len(r) for r in prepared.response_ids]
    width = max(lengths)
    batch = TrainBatch(
        traj_ids=prepared.traj_ids,
        problem_ids=table.column("problem_id").to_pylist(),
        sources=["pts", "pts"],
        prompt_ids=prepared.prompt_ids,
        response_ids=prepared.response_ids,
        ref_logprobs=torch.zeros(2, width),
        mask=torch.arange(width)[None, :] < torch.tensor(lengths)[:, None],
        reward=prepared.reward,
        q0=prepared.q0,
        group=torch.arange(2),
    )
    n = attach_mc_targets(batch, lake, ref_model_id=world["model_id"], tokenizer_id=world["tok_id"])
    kept = [p for p in a["positions"] if p >= 0]  # -1 is Q_0 = q0: no gradient, left out
    assert n == 2 * len(kept)
    pos = batch.mc_positions[0]
    assert pos[pos >= 0].tolist() == [p + 1 for p in kept]  # spo_loss counts prefix lengths
    s = dict(zip(a["positions"], a["s_t"], strict=True))
    assert batch.mc_targets[0, : len(kept)].tolist() == pytest.approx([s[p] for p in kept])
    # The target at token position t depends on the log-probs of tokens 0..t only.
    for slot, t in enumerate(kept):
        lp = torch.zeros(1, width, requires_grad=True)
        one = torch.full((1, 1), -1, dtype=torch.long)
        one[0, 0] = batch.mc_positions[0, slot]
        loss = spo_loss(
            lp, torch.zeros(1, width), torch.tensor([-0.5]), torch.tensor([0.0]),
            batch.mask[:1], 0.5, "mc_ce", mc_positions=one,
            mc_targets=batch.mc_targets[:1, slot : slot + 1], eps=1e-6,
        )  # fmt: skip
        loss.backward()
        moved = (lp.grad[0] != 0).nonzero().flatten().tolist()
        assert moved == list(range(t + 1)), (t, moved)


def test_pts_and_pts_rollouts_sources_draw_what_they_say(world):
    lake = world["lake"]
    sampler = MixtureSampler(
        lake,
        "pts:0.5,pts_rollouts:0.5",
        ref_model_id=world["model_id"],
        q0_sampler_key=f"temperature=1,top_p=1,max_new_tokens={MAX_NEW}",
        beta=0.5,
    )
    sampler.check_sources()
    batch = sampler.sample(8, step=0)
    annotated = set(lake.sql("SELECT traj_id FROM annotations")["traj_id"])
    got = dict(zip(batch.traj_ids, batch.sources, strict=True))
    assert {t for t, s in got.items() if s == "pts"} <= annotated
    assert all(t.startswith("pts-") for t, s in got.items() if s == "pts_rollouts")
    # Another reference model's annotations would not count; an empty source says what to run.
    other = MixtureSampler(lake, "pts:1", ref_model_id="sha256:other", q0_sampler_key="x", beta=0.5)
    other.index.refresh()
    assert len(other.candidates("pts")) == 0 and len(other.candidates("pts_rollouts")) == 0
    line = sampler.why_empty("pts")
    assert "\n" not in line and "run `spo pts` with the same --model" in line


def test_train_with_mc_weight_adds_the_mc_term_and_zero_leaves_it_out(world, tmp_path):
    from spo_train.config import TrainConfig
    from spo_train.train.loop import train

    def run(name: str, weight: float):
        cfg = TrainConfig(
            lake=world["lake"].uri, output=str(tmp_path / name), mix="pts:0.5,pts_rollouts:0.5",
            steps=1, batch_size=4, max_new_tokens=MAX_NEW, eval_problems=0, tensorboard=False,
            wandb="off", beta=0.5, mc_weight=weight,
        )  # fmt: skip
        return train(cfg).metrics[0]

    with_mc = run("mc", 1.0)
    assert with_mc["train/mc_count"] > 0 and with_mc["train/loss_mc"] > 0
    assert with_mc["train/loss"] == pytest.approx(
        with_mc["train/loss_main"] + with_mc["train/loss_mc"]
    )
    control = run("control", 0.0)  # the same rows, the terminal loss only
    assert control["train/loss_mc"] == 0 and control["train/mc_count"] == 0
    assert control["train/loss"] == pytest.approx(with_mc["train/loss_main"])
    assert math.isfinite(with_mc["train/grad_norm"])


def test_plot_draws_the_annotation_with_the_largest_jump(world, tmp_path):
    from spo_train.pts import largest_jump_annotation, plot_annotation

    lake = world["lake"]
    rows = lake.sql("SELECT annotation_id, positions, s_t, response_tokens FROM annotations")
    jumps = {}
    for r in rows.to_dicts():
        s = [*r["s_t"], 1.0]
        jumps[r["annotation_id"]] = max(abs(b - a) for a, b in zip(s, s[1:], strict=False))
    best = largest_jump_annotation(lake, list(jumps))
    assert jumps[best] == max(jumps.values())
    out = plot_annotation(lake, best, tmp_path / "s.png", world["tok"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
