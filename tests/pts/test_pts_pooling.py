"""Pooling of several `spo pts` annotations of one trajectory into training targets
(`spo_store.annotations.pooled_targets`): annotations with the same sampler share rollouts
(rollout k of a prefix is one row for every K), so their counts must not add up; annotations
of another sampler estimate another S_t and are not mixed in. Also the early checks around
them: `--mc-weight` with nothing annotated, `--plot` file types."""

from __future__ import annotations

from spo_store.annotations import annotation_row, pooled_targets, rollout_key, write_annotations
from spo_store.lake import Lake

REF, TOK = "model-a", "tok-a"


def _row(traj: str, sampler: str, k: int, threshold: float, estimates: dict[int, tuple[int, int]]):
    return annotation_row(
        traj_id=traj,
        run_id="pts-test",
        ref_model_id=REF,
        tokenizer_id=TOK,
        sampler_key=sampler,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=96 if sampler == "s96" else 256,
        rollouts_per_estimate=k,
        threshold=threshold,
        response_tokens=10,
        estimates=estimates,
        rollout_key_=rollout_key(traj, REF, TOK, sampler),
    )


def test_same_sampler_annotations_share_rollouts_not_counted_twice(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    write_annotations(
        lake,
        [
            # K=4 then K=6 of the same prefixes: the K=6 estimate holds the K=4 rollouts.
            _row("t1", "s96", 4, 0.2, {-1: (4, 1), 4: (4, 4)}),
            _row("t1", "s96", 6, 0.2, {-1: (6, 2), 4: (6, 6)}),
            # another threshold visits position 2 besides the shared ones
            _row("t1", "s96", 4, 0.5, {-1: (4, 1), 2: (4, 3)}),
        ],
    )
    length, targets = pooled_targets(lake, ["t1"], ref_model_id=REF, tokenizer_id=TOK)["t1"]
    assert length == 10
    assert targets == {-1: (6, 2), 4: (6, 6), 2: (4, 3)}


def test_other_sampler_is_not_mixed_in(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    write_annotations(
        lake,
        [
            _row("t1", "s96", 4, 0.2, {-1: (4, 0), 3: (4, 4)}),
            _row("t1", "s256", 10, 0.2, {-1: (10, 5), 5: (10, 10)}),
            _row("t2", "s96", 4, 0.2, {-1: (4, 1)}),
        ],
    )
    pooled = pooled_targets(lake, ["t1", "t2"], ref_model_id=REF, tokenizer_id=TOK)
    # t1: the sampler with the most judged rollouts (s256: 20 against 8), alone
    assert pooled["t1"] == (10, {-1: (10, 5), 5: (10, 10)})
    assert pooled["t2"] == (10, {-1: (4, 1)})
    assert pooled_targets(lake, ["t1"], ref_model_id="other", tokenizer_id=TOK) == {}


def test_mc_weight_without_annotations_of_this_pi0_is_noted(tmp_path):
    from spo_train.config import TrainConfig
    from spo_train.train.setup import mc_weight_note

    lake = Lake.open(tmp_path / "lake")
    cfg = TrainConfig(lake=lake.uri, mc_weight=1.0)
    line = mc_weight_note(lake, cfg, REF)
    assert line is not None and "no `spo pts` annotation" in line and "\n" not in line
    write_annotations(lake, [_row("t1", "s96", 4, 0.2, {-1: (4, 1)})])
    assert mc_weight_note(lake, cfg, REF) is None
    assert mc_weight_note(lake, cfg, "another-model") is not None
    assert mc_weight_note(lake, TrainConfig(lake=lake.uri, mc_weight=0.0), "another-model") is None


def test_plot_file_type_and_folder_are_checked_before_any_work(tmp_path):
    import pytest

    from spo_store.errors import SpoError
    from spo_train.pts.search import PTSConfig

    PTSConfig(plot=str(tmp_path / "s.png")).validate()
    PTSConfig(plot=str(tmp_path / "s.svg")).validate()
    with pytest.raises(SpoError, match=r"--plot .*image type"):
        PTSConfig(plot=str(tmp_path / "s.txt")).validate()
    with pytest.raises(SpoError, match="does not exist"):
        PTSConfig(plot=str(tmp_path / "missing" / "s.png")).validate()
