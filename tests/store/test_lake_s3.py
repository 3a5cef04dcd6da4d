"""A lake on object storage: `--lake s3://bucket/path`, against a local S3-compatible server.

moto's server mode runs in this process on 127.0.0.1 (a free port); settings reach Lance and
boto3 through the standard AWS variables, as a user's would (docs/lake.md, 'Object storage').
Child processes (spawn, CLI subprocesses) inherit them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from spo_schemas import SCHEMA_VERSION

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.objstore import S3Lease, s3_client
from tests.helpers_lake import batch_rows, row_is_whole

SPAWN = mp.get_context("spawn")
FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_lake(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the local server and the URI of a lake in it (env set for Lance,
    boto3 and child processes)."""
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("SPO_LAKE", raising=False)
    bucket = f"spo-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lakes/main"


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


def _keys(uri: str) -> list[str]:
    bucket, prefix = uri[len("s3://") :].split("/", 1)
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_a_lake_on_s3_does_what_a_local_one_does(s3_lake: str, tmp_path: Path) -> None:
    from spo_store.maintenance import cleanup, compact, export_parquet, list_versions, tag_lake
    from spo_store.mixture import fetch_by_ids
    from tests.store.test_mixture import MixtureSampler, seed_lake

    with pytest.raises(SpoError, match="no lake at s3://"):
        Lake.open(s3_lake, create=False)
    lake = Lake.open(s3_lake)
    assert any("/trajectories.lance/_versions/" in k for k in _keys(s3_lake))
    seed_lake(lake)
    with lake.run("test", {"where": "s3"}) as run_id:
        pass
    assert (
        lake.sql(f"SELECT status FROM runs WHERE run_id = '{run_id}'")["status"][0] == "completed"
    )

    # keyed writes: a re-insert adds nothing, and the lease object is gone afterwards
    rows = [{"problem_id": "k1", "name": "a"}, {"problem_id": "k2", "name": "b"}]
    assert lake.insert_new("problems", rows)[1] == 2
    assert lake.insert_new("problems", rows)[1] == 0
    lake.update_rows("problems", "problem_id", [{"problem_id": "k1", "split": "valid"}])
    assert not [k for k in _keys(s3_lake) if k.endswith(".lock")]
    got = lake.sql("SELECT problem_id, split FROM problems WHERE problem_id LIKE 'k%' ORDER BY 1")
    assert got.to_dicts() == [
        {"problem_id": "k1", "split": "valid"},
        {"problem_id": "k2", "split": None},
    ]

    # mixture sampling, and the logged (version, ids) reproduces the batch after compaction
    sampler = MixtureSampler(lake, "online:0.25,offline:0.75", run_id="train-1", staleness=2)
    batch = sampler.sample(8, step=1, policy_version=4)
    assert len(batch.traj_ids) == 8 and "response_ids" in batch.table.column_names
    again = MixtureSampler(lake, "online:0.25,offline:0.75", run_id="train-1", staleness=2)
    assert again.sample(8, step=1, policy_version=4).traj_ids == batch.traj_ids
    lake.append("trajectories", batch_rows("more", 5))
    before, after = compact(lake, ["trajectories"])["trajectories"]
    assert after == 1 < before
    assert fetch_by_ids(lake, batch.version, batch.traj_ids).column("traj_id").to_pylist() == (
        batch.traj_ids
    )
    assert tag_lake(lake, "snap", ["problems"]) == {"problems": lake.dataset("problems").version}
    assert any(v["tags"] == "snap" for v in list_versions(lake, ["problems"]))
    import datetime as dt

    cleanup(lake, ["trajectories"], older_than=dt.timedelta(0))
    counts = export_parquet(lake, tmp_path / "export", ["trajectories"])
    assert counts == {"trajectories": lake.dataset("trajectories").count_rows()}
    reopened = Lake.open(s3_lake + "/", create=False)
    whole = reopened.sql_arrow("SELECT * FROM trajectories WHERE traj_id LIKE 'more-%'")
    assert whole.num_rows == 5 and all(row_is_whole(r) for r in whole.to_pylist())


def _writer(uri: str, worker: int, barrier) -> None:
    lake = Lake.open(uri)
    for rnd in range(4):
        barrier.wait(60)
        lake.append("trajectories", batch_rows(f"w{worker}-r{rnd}", 10))
        shared = [{"problem_id": f"p-{rnd}-{j}", "name": f"from {worker}"} for j in range(8)]
        lake.insert_new("problems", shared)


def test_two_workers_append_and_insert_concurrently_without_loss_or_duplicates(
    s3_lake: str,
) -> None:
    Lake.open(s3_lake)
    barrier = SPAWN.Barrier(2)
    procs = [SPAWN.Process(target=_writer, args=(s3_lake, i, barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    lake = Lake.open(s3_lake, create=False)
    traj = lake.sql("SELECT count(*) AS n, count(DISTINCT traj_id) AS k FROM trajectories")
    assert traj.to_dicts() == [{"n": 2 * 4 * 10, "k": 2 * 4 * 10}]
    probs = lake.sql("SELECT count(*) AS n, count(DISTINCT problem_id) AS k FROM problems")
    assert probs.to_dicts() == [{"n": 4 * 8, "k": 4 * 8}]


def test_the_cli_takes_an_s3_lake(s3_lake: str, tmp_path: Path) -> None:
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(
                {"name": f"s3-{i}", "statement": "echo", "tests": [], "solutions": ["print(1)"]}
            )
            for i in range(3)
        )
        + "\n"
    )
    out = spo("ingest", "human-solutions", str(jsonl), "--lake", s3_lake)
    assert out.returncode == 0, out.stderr
    out = spo("sql", "--lake", s3_lake, "--format", "json", "SELECT count(*) AS n FROM problems")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["n"] == 3
    # a missing bucket is one line and exit 2, not a Lance traceback
    out = spo("sql", "--lake", "s3://no-such-bucket-spo/x", "SELECT 1")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no-such-bucket-spo" in out.stderr


def test_spo_lake_migrate_upgrades_an_old_lake_on_s3(s3_lake: str) -> None:
    bucket, prefix = s3_lake[len("s3://") :].split("/", 1)
    client = s3_client()
    root = FIXTURES / "lake_v3"
    for path in root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root)}")
    with pytest.raises(SpoError, match="spo lake migrate"):
        Lake.open(s3_lake)
    out = spo("lake", "migrate", "--lake", s3_lake, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["from_version"], summary["to_version"]) == (3, SCHEMA_VERSION)
    lake = Lake.open(s3_lake, create=False)
    assert lake.sql("SELECT count(*) AS n FROM annotations")["n"][0] == 2


def test_a_dead_holders_lease_expires_and_a_live_one_excludes(s3_lake: str) -> None:
    Lake.open(s3_lake)
    uri = f"{s3_lake}/.problems.lock"
    bucket, key = uri[len("s3://") :].split("/", 1)
    # a holder that died: its lease object stays, unrenewed, with a 1 s lease
    s3_client().put_object(
        Bucket=bucket, Key=key, Body=json.dumps({"host": "gone", "pid": 1, "lease_s": 1})
    )
    t0 = time.monotonic()
    with S3Lease(uri, lease_s=2) as lease:
        assert lease.took_over is not None and lease.took_over["host"] == "gone"
        assert time.monotonic() - t0 >= 1.0
        # a live holder excludes: the second waits until the first releases
        order: list[str] = []

        def second() -> None:
            with S3Lease(uri, lease_s=2):
                order.append("second")

        th = threading.Thread(target=second)
        th.start()
        time.sleep(2.5)  # longer than the lease: renewals keep it
        order.append("first released")
    th.join(30)
    assert order == ["first released", "second"]
    assert not [k for k in _keys(s3_lake) if k.endswith(".lock")]


def test_a_lost_lease_refuses_to_commit(s3_lake: str) -> None:
    uri = f"{s3_lake}/.problems.lock"
    lease = S3Lease(uri, lease_s=1)
    lease.acquire()
    lease._stop.set()  # this process "stalls": no renewal while another writer waits
    lease._thread.join()
    with S3Lease(uri, lease_s=1) as other:
        assert other.took_over is not None
        with pytest.raises(SpoError, match="was lost"):
            lease.check()
    lease.release()


def test_unsupported_or_misconfigured_stores_are_refused_in_one_line(
    s3_lake: str, monkeypatch
) -> None:
    with pytest.raises(SpoError, match=r"gs:// is not supported"):
        Lake.open("gs://bucket/lake")
    with pytest.raises(SpoError, match="cannot reach bucket 'no-such-bucket-spo'"):
        Lake.open("s3://no-such-bucket-spo/lake")
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(SpoError, match="AWS_ALLOW_HTTP=true"):
        Lake.open(s3_lake)
