"""An --output the system will not create (trial 3: /proc, where even root cannot make a
directory) is one line naming --output, not "internal error: FileNotFoundError", before any
run is recorded (`spo demo` creates its --output through the same make_output_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spo_store.lake import Lake
from tests.train.test_train_cli import _one_line_error, _spo

UNWRITABLE = "/proc/spo-no-such-dir/run"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_that_cannot_be_created_is_one_line(small_lake, tmp_path):
    def runs() -> int:
        return Lake.open(small_lake.uri, create=False).sql("SELECT count(*) AS n FROM runs")["n"][0]

    before = runs()
    train = ("train", "--algo", "sft", "--steps", "1", "--eval-problems", "0")
    r = _spo(*train, "--lake", small_lake.uri, "--output", UNWRITABLE, cwd=tmp_path)
    line = _one_line_error(r)
    assert line.startswith(f"error: --output {UNWRITABLE}: cannot create the directory"), line
    assert runs() == before
