"""A seed is a 64-bit integer (trial 3): `spo train --seed 2**63` recorded a run, then failed
with "internal error: OverflowError" writing `batches.seed`; a seed past 2**64 failed in
torch.manual_seed. Both are now one line before any run is recorded."""

from __future__ import annotations

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.config import SEED_MAX, EvalConfig, TrainConfig
from tests.train.test_train_cli import _one_line_error, _spo


@pytest.mark.parametrize("cls", [TrainConfig, EvalConfig])
def test_a_seed_past_64_bits_is_refused(cls, tmp_path):
    extra = {"output": str(tmp_path / "run")} if cls is TrainConfig else {}
    cls(seed=SEED_MAX, **extra).validate()
    for seed in (SEED_MAX + 1, 10**23):
        with pytest.raises(SpoError) as err:
            cls(seed=seed, **extra).validate()
        assert str(err.value).startswith(f"--seed {seed}: must be between 0 and {SEED_MAX}")


def test_spo_train_and_demo_refuse_a_huge_seed_before_any_run(small_lake, tmp_path):
    def runs() -> int:
        return Lake.open(small_lake.uri, create=False).sql("SELECT count(*) AS n FROM runs")["n"][0]

    before = runs()
    r = _spo(
        *("train", "--lake", small_lake.uri, "--algo", "sft", "--steps", "1"),
        *("--eval-problems", "0", "--output", str(tmp_path / "out"), "--seed", str(2**63)),
        cwd=tmp_path,
    )
    assert "must be between 0 and" in _one_line_error(r)
    r = _spo("demo", "--lake", small_lake.uri, "--seed", str(SEED_MAX), cwd=tmp_path)
    assert "--seed" in _one_line_error(r)
    assert runs() == before and not (tmp_path / "out").exists()
