"""Lake reliability: concurrent appenders, kill -9 mid-write, snapshot reads, bad ingest input.

Child processes use the `spawn` context (Lance is not fork-safe); the CLI runs as a real
subprocess (`python -m spo_cli.main`, what the `spo` console script calls).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from spo_schemas import TABLES, VERSION_KEY, table_schema

from spo_store.adapters import problem_id
from spo_store.errors import SpoError
from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from spo_store.mixture import MixtureSampler, fetch_by_ids
from spo_store.q0_estimates import estimate_row, write_estimates
from tests import helpers_lake as h
from tests.conftest import CC_SAMPLE

SPAWN = mp.get_context("spawn")


def spo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spo_popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def manifests(table_dir: Path) -> int:
    """Committed versions of a Lance dataset, counted on disk (cheap enough to poll)."""
    try:
        return sum(1 for n in os.listdir(table_dir / "_versions") if n.endswith(".manifest"))
    except FileNotFoundError:
        return 0


def lake_state(uri: Path) -> dict[str, object]:
    """Version and row count of every table, plus the whole `runs` table."""
    lake = Lake.open(uri, create=False)
    state: dict[str, object] = {
        name: (lake.dataset(name).version, lake.dataset(name).count_rows()) for name in TABLES
    }
    state["runs_rows"] = lake.dataset("runs").to_table().to_pylist()
    return state


def join_all(procs: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} child process(es) hung"


# --------------------------------------------------------------------------- (a) concurrency
def test_concurrent_appenders_lose_and_duplicate_nothing(tmp_path):
    workers, appends = 4, 20
    uri = str(tmp_path / "lake")  # fresh: the workers create it concurrently
    start = SPAWN.Event()
    procs = [
        SPAWN.Process(target=h.concurrent_appender, args=(uri, w, appends, start))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    join_all(procs, 120)
    assert [p.exitcode for p in procs] == [0] * workers, "an appender failed (see its stderr)"

    lake = Lake.open(uri, create=False)
    expected = workers * appends * h.TRAJ_BATCH
    got = lake.sql(
        "SELECT count(*) AS n, count(DISTINCT traj_id) AS ids FROM trajectories"
    ).to_dicts()[0]
    assert got == {"n": expected, "ids": expected}
    ids = set(lake.dataset("trajectories").to_table(columns=["traj_id"]).column(0).to_pylist())
    assert ids == {
        f"w{w}-{i:03d}-{j:04d}"
        for w in range(workers)
        for i in range(appends)
        for j in range(h.TRAJ_BATCH)
    }
    # One commit per append: the table has exactly created + 80 versions, no lost commit.
    assert lake.dataset("trajectories").version == 1 + workers * appends


def test_racing_opens_of_a_new_lake_create_each_table_once(tmp_path):
    """Lance's create is check-then-commit: a racing loser commits an overwriting version 2.

    Eight threads (Lance releases the GIL) open one new lake at once and each append a batch;
    every table must have exactly one creating version and every batch must survive.
    """
    workers, rounds = 8, 10
    for r in range(rounds):
        uri = str(tmp_path / f"lake{r}")
        barrier = threading.Barrier(workers)
        errors: list[BaseException] = []

        def open_and_append(
            w: int, uri: str = uri, barrier: threading.Barrier = barrier, errors: list = errors
        ) -> None:
            try:
                barrier.wait()
                Lake.open(uri).append("trajectories", h.batch_rows(f"o{w}"))
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_append, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        versions = Lake.open(uri, create=False).versions()
        assert versions.pop("trajectories") == 1 + workers, f"round {r}"
        assert set(versions.values()) == {1}, (r, versions)
        lake = Lake.open(uri, create=False)
        assert lake.dataset("trajectories").count_rows() == workers * h.TRAJ_BATCH


# --------------------------------------------------------------------------- (b) kill -9
def _expected_ingest(files: int, per_file: int, solutions: int):
    """problem_id -> (file index, name), and the responses each problem may carry."""
    by_pid, responses = {}, {}
    for i in range(files):
        for j in range(per_file):
            name = f"f{i:03d}-p{j:03d}"
            pid = problem_id("jsonl", name)
            by_pid[pid] = (i, name)
            responses[pid] = {f"print(input())  # {name} v{k}": 0.0 for k in range(solutions)}
            responses[pid][f"print(0)  # {name}"] = -1.0
    return by_pid, responses


def test_kill_9_during_ingest_leaves_whole_rows_and_rerun_completes(tmp_path):
    n_files, per_file, solutions = 60, 20, 3
    per_file_traj = per_file * (solutions + 1)
    h.write_ingest_files(tmp_path / "in", n_files, per_file, solutions)
    uri = tmp_path / "lake"
    Lake.open(uri)
    traj_dir = uri / "trajectories.lance"
    created = manifests(traj_dir)

    proc = spo_popen("ingest", "human-solutions", str(tmp_path / "in"), "--lake", str(uri))
    deadline = time.monotonic() + 90
    while manifests(traj_dir) < created + 4 and proc.poll() is None:
        assert time.monotonic() < deadline, "ingest wrote nothing in 90 s"
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))  # land anywhere within a file's two commits
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, (
        f"ingest ended (rc {proc.returncode}) before the kill; make the input bigger"
    )

    by_pid, responses = _expected_ingest(n_files, per_file, solutions)
    lake = Lake.open(uri, create=False)
    traj = lake.dataset("trajectories").to_table().to_pylist()  # every column of every row
    probs = lake.dataset("problems").to_table().to_pylist()
    assert 0 < len(traj) < n_files * per_file_traj, "the kill did not land mid-ingest"
    problem_ids = {p["problem_id"] for p in probs}
    assert len(problem_ids) == len(probs)
    for p in probs:  # whole problem rows
        i, name = by_pid[p["problem_id"]]
        assert p["name"] == name and p["statement"].startswith(f"Statement of {name}: ")
        assert p["private_tests"]["input"] == ["0\n", "1\n", "2\n"] and p["num_tests"] == 3
    for t in traj:  # whole trajectory rows, each with its problem
        assert t["problem_id"] in problem_ids
        assert responses[t["problem_id"]][t["response"]] == t["reward"]
        digest = hashlib.sha256(f"{t['problem_id']}\0{t['response']}".encode()).hexdigest()
        assert t["content_hash"] == digest and t["traj_id"] == f"h-{digest[:24]}"
        assert t["response_chars"] == len(t["response"]) and t["source"] == "human"
    # Each file landed whole or not at all, in order: problems first, then its trajectories.
    traj_files = sorted({by_pid[t["problem_id"]][0] for t in traj})
    prob_files = sorted({by_pid[p["problem_id"]][0] for p in probs})
    assert traj_files == list(range(len(traj_files)))
    assert prob_files in (traj_files, list(range(len(traj_files) + 1)))
    assert len(traj) == len(traj_files) * per_file_traj
    assert len(probs) == len(prob_files) * per_file
    assert lake.sql("SELECT count(*) AS n FROM runs WHERE status = 'running'")["n"][0] == 1

    rerun = spo("ingest", "human-solutions", str(tmp_path / "in"), "--lake", str(uri))
    assert rerun.returncode == 0, rerun.stderr
    clean = Lake.open(tmp_path / "clean")
    ingest_human_solutions(clean, [tmp_path / "in"])
    counts_sql = (
        "SELECT (SELECT count(*) FROM problems) AS problems,"
        " (SELECT count(DISTINCT problem_id) FROM problems) AS problem_ids,"
        " (SELECT count(*) FROM trajectories) AS trajectories,"
        " (SELECT count(DISTINCT content_hash) FROM trajectories) AS hashes"
    )
    total = {
        "problems": n_files * per_file,
        "problem_ids": n_files * per_file,
        "trajectories": n_files * per_file_traj,
        "hashes": n_files * per_file_traj,
    }
    lake = Lake.open(uri, create=False)
    assert lake.sql(counts_sql).to_dicts()[0] == total
    assert clean.sql(counts_sql).to_dicts()[0] == total
    ids_sql = "SELECT traj_id, problem_id, content_hash, reward FROM trajectories ORDER BY 1"
    assert lake.sql(ids_sql).equals(clean.sql(ids_sql))


def test_kill_9_during_append_loop_keeps_lake_readable(tmp_path):
    uri = str(tmp_path / "lake")
    Lake.open(uri)
    progress = tmp_path / "progress"
    batch = 400
    proc = SPAWN.Process(target=h.append_forever, args=(uri, batch, str(progress)))
    proc.start()
    deadline = time.monotonic() + 60
    while not (progress.exists() and progress.read_text() not in ("", "1", "2")):
        assert proc.is_alive() and time.monotonic() < deadline, "appender died or stalled"
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.1))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    reported = int(progress.read_text() or 0)

    lake = Lake.open(uri, create=False)
    rows = lake.dataset("trajectories").to_table().to_pylist()
    assert len(rows) % batch == 0, "a torn batch is visible"
    assert reported <= len(rows) // batch <= reported + 1
    assert len({r["traj_id"] for r in rows}) == len(rows)
    assert all(h.row_is_whole(r) for r in rows)
    # Still writable after the kill, and the new batch reads back whole.
    before = lake.dataset("trajectories").version
    assert lake.append("trajectories", h.batch_rows("after", 10)) == before + 1
    got = lake.sql("SELECT count(*) AS n FROM trajectories WHERE traj_id LIKE 'after-%'")
    assert got["n"][0] == 10


# --------------------------------------------------------------------------- (c) snapshots
def test_reader_sees_consistent_snapshots_while_writer_appends(tmp_path):
    uri = str(tmp_path / "lake")
    lake = Lake.open(uri)
    batch, batches = 100, 30
    start = SPAWN.Event()
    writer = SPAWN.Process(target=h.snapshot_writer, args=(uri, batches, batch, 0.02, start))
    writer.start()
    start.set()
    seen_counts: list[int] = []
    pinned_checked = 0
    deadline = time.monotonic() + 90
    while True:
        writer_done = not writer.is_alive()
        # The latest version at each look: counts only grow, by whole batches.
        latest = lake.sql("SELECT count(*) AS n, count(DISTINCT traj_id) AS d FROM trajectories")
        n = latest["n"][0]
        assert latest["d"][0] == n and n % batch == 0, f"torn batch: {n} rows"
        assert not seen_counts or n >= seen_counts[-1]
        seen_counts.append(n)
        fresh = Lake.open(uri, create=False).dataset("trajectories").count_rows()
        assert fresh % batch == 0 and fresh >= n
        # Pin that version and scan it several ways while the writer keeps appending.
        version = lake.dataset("trajectories").version
        pinned = lake.dataset("trajectories", version=version)
        first = sorted(pinned.to_table(columns=["traj_id"]).column(0).to_pylist())
        assert len(first) % batch == 0
        for _ in range(2):
            again = lance.dataset(f"{uri}/trajectories.lance", version=version)
            assert sorted(again.to_table(columns=["traj_id"]).column(0).to_pylist()) == first
            con = duckdb.connect()
            con.register("pinned", pinned)
            ids = con.sql("SELECT traj_id FROM pinned ORDER BY traj_id").to_arrow_table()
            con.close()
            assert ids.column(0).to_pylist() == first
        pinned_checked += 1
        if writer_done:
            break
        assert time.monotonic() < deadline, "writer did not finish"
    writer.join(10)
    assert writer.exitcode == 0
    assert seen_counts[-1] == batch * batches
    assert len(set(seen_counts)) >= 3, f"reader never overlapped the writer: {seen_counts}"
    assert pinned_checked >= 3


def test_sampled_batches_equal_the_pinned_rows_while_the_lake_grows(tmp_path):
    """A batch (light columns from the in-memory index, heavy ones from Lance) is row for row
    what its logged `(version, ids)` reads back, through incremental index refreshes."""
    lake = Lake.open(tmp_path / "lake")
    lake.append("problems", [{"problem_id": "p-bench", "name": "bench", "split": "train"}])
    est = estimate_row(
        "p-bench",
        "model-a",
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=64,
        samples=4,
        successes=1,
        beta=0.1,
        run_id="r",
    )
    write_estimates(lake, [est])
    sampler = MixtureSampler(
        lake,
        "all:1",
        sources={"all": "TRUE"},
        seed=3,
        ref_model_id="model-a",
        q0_sampler_key=est["sampler_key"],
    )
    for i in range(4):
        lake.append("trajectories", h.batch_rows(f"g{i}", 40))
        for step in range(3):
            for columns in (None, ["response_ids", "reward", "ref_logprobs"]):
                batch = sampler.sample(32, step=10 * i + step, columns=columns)
                assert batch.version == lake.dataset("trajectories").version
                want = fetch_by_ids(
                    lake, batch.version, batch.traj_ids, batch.table.column_names[:-1]
                )
                assert batch.table.drop_columns(["mixture_source"]).to_pylist() == want.to_pylist()
        full = sampler.sample(32, step=99 + i).table.to_pylist()
        assert all(h.row_is_whole(r) for r in full)


# --------------------------------------------------------------------------- (d) bad input
@pytest.fixture(scope="module")
def seeded_lake(tmp_path_factory) -> Path:
    """A lake holding a few rows already, so 'unchanged' means something."""
    root = tmp_path_factory.mktemp("bad-input")
    files = h.write_ingest_files(root / "seed", 1, 3, 1)
    uri = root / "lake"
    ingest_human_solutions(Lake.open(uri), files)
    return uri


def _bad_input(kind: str, d: Path) -> tuple[list[Path], str]:
    """Input paths for `kind` and the text the error line must contain."""
    good = "\n".join(
        f'{{"name": "bad-{kind}-{i}", "statement": "s", "solutions": ["print({i})"]}}'
        for i in range(3)
    )
    if kind == "missing":
        return [d / "nope.jsonl"], f"{d / 'nope.jsonl'}: no such file"
    if kind == "empty":
        (d / "empty.jsonl").write_bytes(b"")
        return [d / "empty.jsonl"], f"{d / 'empty.jsonl'}: empty file"
    if kind == "truncated_parquet":
        if not CC_SAMPLE.exists():
            pytest.skip(f"shared data not found at {CC_SAMPLE}")
        raw = CC_SAMPLE.read_bytes()
        (d / "cut.parquet").write_bytes(raw[: len(raw) // 2])
        return [d / "cut.parquet"], f"{d / 'cut.parquet'}: unreadable Parquet"
    if kind == "wrong_schema_parquet":
        pq.write_table(pa.table({"title": ["a"], "body": ["b"]}), d / "other.parquet")
        return [d / "other.parquet"], f"{d / 'other.parquet'}: wrong schema"
    if kind == "invalid_utf8":
        (d / "latin1.jsonl").write_bytes(
            good.encode() + b'\n{"name": "caf\xe9", "statement": "s"}\n'
        )
        return [d / "latin1.jsonl"], f"{d / 'latin1.jsonl'}:4: invalid UTF-8"
    if kind == "broken_line":
        (d / "broken.jsonl").write_text(good + '\n{"name": "x", "statement": \n')
        return [d / "broken.jsonl"], f"{d / 'broken.jsonl'}:4: broken JSON line"
    if kind == "second_file_bad":
        (d / "a.jsonl").write_text(good + "\n")
        (d / "b.jsonl").write_text('{"name": "y", "statement": "s"}\n{oops}\n')
        return [d / "a.jsonl", d / "b.jsonl"], f"{d / 'b.jsonl'}:2: broken JSON line"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty",
        "truncated_parquet",
        "wrong_schema_parquet",
        "invalid_utf8",
        "broken_line",
        "second_file_bad",
    ],
)
def test_bad_ingest_input_is_one_line_and_changes_nothing(seeded_lake, tmp_path, kind):
    paths, message = _bad_input(kind, tmp_path)
    before = lake_state(seeded_lake)
    res = spo("ingest", "human-solutions", *map(str, paths), "--lake", str(seeded_lake))
    assert res.returncode != 0
    lines = res.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, f"expected one stderr line, got:\n{res.stderr}"
    assert message in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert lake_state(seeded_lake) == before


# --------------------------------------------------------------------------- schema versions
@pytest.mark.parametrize(("found", "words"), [(0, "uses schema version 0"), (99, "version 99")])
def test_other_schema_version_is_refused(tmp_path, found, words):
    uri = tmp_path / "lake"
    Lake.open(uri)
    table_dir = uri / "metrics.lance"
    shutil.rmtree(table_dir)
    schema = table_schema("metrics")
    schema = schema.with_metadata({**schema.metadata, VERSION_KEY: str(found).encode()})
    lance.write_dataset(schema.empty_table(), str(table_dir), mode="create")
    assert lance.dataset(str(table_dir)).schema.metadata[VERSION_KEY] == str(found).encode()

    with pytest.raises(SpoError, match=words) as err:
        Lake.open(uri)
    assert "\n" not in str(err.value)
    res = spo("sql", "SELECT count(*) FROM problems", "--lake", str(uri))
    assert res.returncode != 0
    lines = res.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and words in lines[0], res.stderr
    assert "Traceback" not in res.stderr
