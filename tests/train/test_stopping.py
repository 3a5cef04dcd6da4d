"""A stop signal is a stop whatever exception native code turned it into (DuckDB: "Query
interrupted"), so the run is `interrupted`, not `failed`."""

from __future__ import annotations

import signal

import pytest

from spo_store import stopping
from spo_store.lake import Lake, run_status


@pytest.fixture
def stop_signal():
    stopping.STOP_SIGNALS.append(signal.SIGTERM)
    yield
    stopping.STOP_SIGNALS.clear()


def test_without_a_signal_an_error_is_a_failure(tmp_path) -> None:
    assert run_status(RuntimeError("boom")) == "failed"
    lake = Lake.open(tmp_path / "lake")
    run = lake.start_run("eval")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        lake.end_run(run, "failed")
    assert lake.sql(f"SELECT status FROM runs WHERE run_id = '{run}'")["status"][0] == "failed"


def test_after_a_signal_any_error_is_an_interruption(tmp_path, stop_signal) -> None:
    assert run_status(RuntimeError("Query interrupted")) == "interrupted"
    lake = Lake.open(tmp_path / "lake")
    run = lake.start_run("eval")
    try:
        raise RuntimeError("Query interrupted")
    except RuntimeError:
        lake.end_run(run, "failed")
    status = lake.sql(f"SELECT status FROM runs WHERE run_id = '{run}'")["status"][0]
    assert status == "interrupted"
