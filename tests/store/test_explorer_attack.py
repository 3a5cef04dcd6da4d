"""The explorer under attack, without a browser (Starlette's test client on the real app over a
real lake): bad query parameters on every route, SQL that would write or read the machine's
files, requests made by other sites' pages, and a lake damaged while the server runs. Each
answers a clean 4xx page (503 for a lake that cannot be read), never a traceback or a 500.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode

import pytest
from starlette.testclient import TestClient

from spo_store.explorer import create_app
from spo_store.lake import Lake
from tests.helpers_explorer import build_lake


def _guard(query: str) -> None:
    from spo_cli.lake_cmds import _check_read_only

    _check_read_only(query)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("explorer-attack") / "lake"
    ids = build_lake(root)
    ids["root"] = root
    return ids


def _client(root, **kw) -> TestClient:
    app = create_app(Lake.open(root, create=False), _guard, **kw)
    # the test client's Host is "testserver": allowed here as loopback names are by serve()
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(built):
    return _client(built["root"])


def _q(**kw) -> str:
    return "?" + urlencode(kw)


BAD = 10**24  # past any 64-bit integer


def test_bad_parameters_on_every_route_answer_4xx(client, built):
    run = quote(built["train_run"], safe="")
    pid = built["problems"]["A+B"]
    cases = {
        # route: expected status
        "/problems" + _q(page="abc"): 400,
        "/problems" + _q(page=str(BAD)): 400,
        "/problems" + _q(min_pass="nan"): 400,
        "/problems" + _q(min_pass="1e309"): 400,
        "/problems" + _q(human="maybe"): 400,
        "/problems" + _q(split="x' OR 1=1 --"): 200,  # a value, quoted: no problem matches
        "/problems" + _q(name="\x00\u202e😀"): 200,
        "/problems/..%2F..%2Fetc%2Fpasswd": 404,
        "/problems/%00": 404,
        "/trajectories" + _q(policy_version=str(BAD)): 400,
        "/trajectories" + _q(policy_version="1.5"): 400,
        "/trajectories" + _q(page=str(-BAD)): 400,
        "/trajectories" + _q(source="' OR 1=1"): 200,
        "/trajectories/" + quote("../../etc/passwd", safe=""): 404,
        f"/runs/{run}/steps/{BAD}": 404,
        f"/runs/{run}/steps/-1": 404,
        "/runs/" + quote("' OR '1'='1", safe=""): 404,
        "/compare": 400,
        "/compare" + _q(problem_id=pid, left="nope"): 404,
        "/sql.json" + _q(q="SELECT 1"): 404,
        "/sql.csv": 400,
        "/sql.parquet" + _q(q="SELECT INTERVAL 1 DAY AS i"): 400,  # no Parquet type for it
        "/static/..%2fapp.py": 404,
    }
    for url, status in cases.items():
        response = client.get(url)
        assert response.status_code == status, (url, response.status_code, response.text[-400:])
        assert "Traceback" not in response.text and "internal error" not in response.text, url
        if status == 400:
            assert 'id="error"' in response.text, url
    assert "column i has a type Parquet lacks" in (
        client.get("/sql.parquet" + _q(q="SELECT INTERVAL 1 DAY AS i")).text
    )
    # rows with ids a path would normalise away are still found by their exact id
    assert client.get("/problems" + _q(page=str(10**6))).status_code == 200  # the last page


def test_sql_page_cannot_write_and_sees_spo_sqls_views(client, built, tmp_path):
    target = tmp_path / "out.csv"
    for query in (
        f"COPY problems TO '{target}'",
        f"SELECT 1; COPY (SELECT 1) TO '{target}'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'",
        f"ATTACH '{tmp_path / 'x.db'}' AS x",
        f"EXPORT DATABASE '{tmp_path / 'exp'}'",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "CREATE TABLE x AS SELECT 1",
    ):
        for url in ("/sql", "/sql.csv", "/sql.parquet"):
            response = client.get(url + _q(q=query))
            assert response.status_code == 400, (url, query)
            assert "refused" in response.text, (url, query)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # the views `spo sql` offers (README: `spo sql "... FROM attempts ..."`)
    response = client.get("/sql.csv" + _q(q="SELECT count(*) AS n FROM attempts"))
    assert response.status_code == 200, response.text[-300:]
    expected = Lake.open(built["root"], create=False).sql_arrow(
        "SELECT count(*) AS n FROM attempts", analyst=True
    )
    assert response.text.splitlines()[1] == str(expected.column("n")[0].as_py())


def test_local_files_are_read_only_on_loopback(built, tmp_path):
    """`spo sql`'s rule (local files readable) on 127.0.0.1; a server other machines reach
    (`local_files=False`, what serve() passes for another --host) reads the lake only."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t\n")
    query = _q(q=f"SELECT content FROM read_text('{secret}')")
    local = _client(built["root"])
    assert "s3cr3t" in local.get("/sql" + query).text
    exposed = _client(built["root"], allowed_hosts=["*"], local_files=False)
    for url in ("/sql", "/sql.csv"):
        response = exposed.get(url + query)
        assert response.status_code == 400 and "s3cr3t" not in response.text, url
        assert "disabled by configuration" in response.text, url
    # the lake's own tables and views still answer
    response = exposed.get("/sql.csv" + _q(q="SELECT count(*) FROM attempts"))
    assert response.status_code == 200 and response.text.splitlines()[1] == "14"


def test_other_sites_pages_cannot_make_it_run_queries(client):
    """Fetch Metadata: an <img> or fetch() on another site's page is refused; a link followed
    from elsewhere opens the page, but a query in it is shown, not run, and downloads refused."""
    elsewhere = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    for url in ("/", "/problems", "/sql" + _q(q="SELECT 42"), "/sql.csv" + _q(q="SELECT 42")):
        response = client.get(url, headers=elsewhere)
        assert response.status_code == 403, url
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert client.get("/problems", headers=link).status_code == 200
    page = client.get("/sql" + _q(q="SELECT 42 AS answer"), headers=link)
    assert page.status_code == 200 and 'id="sql-notice"' in page.text
    assert 'id="sql-result"' not in page.text
    assert client.get("/sql.csv" + _q(q="SELECT 42"), headers=link).status_code == 403
    # the explorer's own pages (same-origin) and typed URLs (none) run it
    for site in ("same-origin", "none"):
        own = client.get("/sql" + _q(q="SELECT 42 AS answer"), headers={"Sec-Fetch-Site": site})
        assert own.status_code == 200 and 'id="sql-result"' in own.text
        assert "42" in own.text


def test_a_table_removed_while_serving_answers_503_then_recovers(built, tmp_path, capsys):
    root = tmp_path / "lake"
    shutil.copytree(built["root"], root)
    # raise_server_exceptions (the default): an exception reaching the server fails the test
    client = TestClient(create_app(Lake.open(root, create=False), _guard), "http://127.0.0.1")
    assert client.get("/problems").status_code == 200
    aside = tmp_path / "aside"
    shutil.move(root / "trajectories.lance", aside)
    for url in ("/", "/problems", "/trajectories/online-s0-p0", "/runs"):
        response = client.get(url)
        assert response.status_code == 503, (url, response.status_code)
        assert "cannot read the lake" in response.text and "spo lake verify" in response.text
        assert ".rs:" not in response.text and "Traceback" not in response.text
    err = capsys.readouterr().err  # the server's terminal: one line a page, no traceback
    assert "Traceback" not in err and err.count("spo lake explorer: GET /runs: 503 ") == 1
    shutil.move(aside, root / "trajectories.lance")
    assert client.get("/problems").status_code == 200
    assert client.get("/trajectories/online-s0-p0").status_code == 200
    # a data file damaged under it: the pages that read it say so (those the in-memory
    # index answers still show what it holds), the SQL page as `spo sql` would
    for data in (root / "trajectories.lance" / "data").iterdir():
        data.write_bytes(data.read_bytes()[:100])
    response = client.get("/trajectories/online-s0-p0")
    assert response.status_code == 503 and "may be damaged" in response.text
    response = client.get("/sql" + _q(q="SELECT max(response) FROM trajectories"))
    assert response.status_code == 400 and "may be damaged" in response.text
    assert ".rs:" not in response.text


BIDI_NAME = "Bidi \u202e cilbup"  # shows as "Bidi public" if the override acts
BIDI_TEXT = "abc \u202e evil \u2066 x \x00 nul \x1b[31m red \ufeff"


@pytest.fixture(scope="module")
def hostile(built, tmp_path_factory):
    """A copy of the lake with problems holding bidi overrides, controls, NUL and 1 MB of
    text, ingested through the real JSONL ingest."""
    import json

    from spo_store.ingest import ingest_human_solutions

    root = tmp_path_factory.mktemp("explorer-hostile") / "lake"
    shutil.copytree(built["root"], root)
    src = root.parent / "hostile.jsonl"
    rows = [
        {
            "name": BIDI_NAME,
            "statement": BIDI_TEXT,
            "tests": [{"input": BIDI_TEXT, "output": "1\n"}],
            "solutions": [f"print(1)  # {BIDI_TEXT}\n"],
        },
        {
            "name": "Huge",
            "statement": ("x" * 5000 + "\n") * 200,
            "tests": [{"input": "1\n", "output": "1\n"}],
            "solutions": ["print(input())  # " + "y" * 300_000 + "\n"],
        },
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lake = Lake.open(root)
    ingest_human_solutions(lake, [src], fmt="jsonl")
    ids = {r["name"]: r["problem_id"] for r in lake.sql("SELECT * FROM problems").to_dicts()}
    return root, ids


def test_hidden_characters_are_shown_not_obeyed(hostile):
    """A bidi override in a name, statement, test or response would reorder what the page
    shows ("Trojan Source"); controls and NUL would vanish. Each shows as its code point."""
    root, ids = hostile
    client = _client(root)
    pid = ids[BIDI_NAME]
    page = client.get(f"/problems/{pid}")
    assert page.status_code == 200
    for ch in "\u202e\u2066\x00\x1b\ufeff":
        assert ch not in page.text, repr(ch)
    assert '<span class="hidden-char" title="U+202E RIGHT-TO-LEFT OVERRIDE">U+202E</span>' in (
        page.text
    )
    assert "<title>Bidi &lt;U+202E&gt; cilbup" in page.text  # no markup inside <title>
    assert page.text.count(">U+0000<") >= 2  # the statement and the test input
    listing = client.get("/problems")
    assert "\u202e" not in listing.text and "U+202E" in listing.text
    traj = next(s["traj_id"] for s in _reader(client).problem(pid)["solutions"])
    response = client.get(f"/trajectories/{traj}")
    assert response.status_code == 200 and "\u202e" not in response.text
    assert "U+202E" in response.text and "U+001B" in response.text
    # the SQL box keeps the query as typed, the result shows the code point
    q = f"SELECT name FROM problems WHERE name = '{BIDI_NAME}'"
    result = client.get("/sql" + _q(q=q))
    textarea = result.text.split("<textarea", 1)[1].split("</textarea>", 1)[0]
    assert BIDI_NAME in textarea and 'class="hidden-char"' in result.text.split("</textarea>")[1]
    # 1 MB of statement and a 300,000-character line render whole
    huge = client.get(f"/problems/{ids['Huge']}")
    assert huge.status_code == 200 and huge.text.count("x" * 5000) == 200


def _reader(client):
    return client.app.state.reader


def test_serve_on_every_address_names_a_url_that_works_and_reads_the_lake_only(built, tmp_path):
    """`--host 0.0.0.0`: one warning line; the printed URL is one a browser opens (not
    http://0.0.0.0), and the SQL page there reads no file of this machine."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", "lake", "serve", "--lake", str(built["root"])]
        + ["--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url and "0.0.0.0" not in line and "other machines: http://" in line, line
        query = urlencode({"q": f"SELECT content FROM read_text('{secret}')"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url.group(0) + "sql?" + query, timeout=30)
        body = info.value.read().decode()
        assert info.value.code == 400 and "s3cr3t" not in body and "disabled" in body
    finally:
        proc.terminate()
        proc.wait(20)
    err = proc.stderr.read()
    assert err.count("\n") == 1 and "reads the lake's tables only" in err, err


def test_solutions_read_in_the_order_written_and_checkpoints_keep_their_step(built, tmp_path):
    """ "What did the policy write at step 0 and at the end": on a problem, an evaluation of the
    trained checkpoint (source eval, model RUN@STEP, no policy version) comes after the run's
    rollouts, as it happened, and its model cell keeps `@STEP` however long the run id."""
    import datetime as dt

    from spo_store.explorer.app import _model_cell

    root = tmp_path / "lake"
    shutil.copytree(built["root"], root)
    lake = Lake.open(root)
    base = lake.sql("SELECT * FROM trajectories WHERE traj_id = 'online-s0-p0'").to_dicts()[0]
    checkpoint = f"{built['train_run']}@3"
    rows = []
    for k, delta in enumerate((-3600, 3600)):  # an evaluation before and one after training
        row = dict(base, traj_id=f"eval-{k}", content_hash=f"eval-{k}", source="eval")
        row.update(policy_version=None, run_id="demo-run", model_id=["pi0", checkpoint][k])
        row["created_at"] = base["created_at"] + dt.timedelta(seconds=delta)
        rows.append(row)
    lake.append("trajectories", rows)
    client = _client(root)
    page = client.get(f"/problems/{base['problem_id']}").text
    order = re.findall(r'href="/trajectories/([^"]+)"', page)
    assert order.index("eval-0") < order.index("online-s0-p0") < order.index("online-s2-p0")
    assert order.index("online-s2-p0") < order.index("eval-1")
    assert _model_cell(checkpoint).endswith("…@3") and len(_model_cell(checkpoint)) == 24
    assert f'title="{checkpoint}">{_model_cell(checkpoint)}<' in page
    assert _model_cell("short@3") == "short@3" and _model_cell("x" * 30).endswith("…")
    # a run's rows by source, model and policy version: its two evaluations stay apart
    versions = [v for v in _reader(client)._run_versions().to_pylist() if v["run_id"] == "demo-run"]
    assert [(v["model_id"], v["n"]) for v in versions] == [("pi0", 1), (checkpoint, 1)]
    listing = client.get("/trajectories" + _q(run_id="demo-run", model_id=checkpoint)).text
    assert re.findall(r'href="/trajectories/([^"]+)"', listing) == ["eval-1"]
    # and the training run's page leads to them: its checkpoint's samples in other runs
    run_page = client.get(f"/runs/{quote(built['train_run'], safe='')}").text
    rows = run_page.split('id="checkpoint-rows"', 1)[1].split("</table>", 1)[0]
    assert "demo-run" in rows and quote(checkpoint, safe="") in rows and "pi0" not in rows


def test_csv_download_is_what_spo_sql_prints(client, built):
    """Every digit of a float, a timestamp's microseconds, NULL as `spo sql --format csv`
    writes it: the download was rounding to 6 digits and cutting seconds' fractions."""
    q = (
        "SELECT 0.1234567891234::DOUBLE AS x, NULL::INT AS n, "
        "TIMESTAMP '2026-01-02 03:04:05.123456' AS t, 'a,\"b' AS s"
    )
    expected = 'x,n,t,s\n0.1234567891234,NULL,2026-01-02T03:04:05.123456,"a,""b"\n'
    assert client.get("/sql.csv" + _q(q=q)).text == expected
    cli = subprocess.run(
        ["spo", "sql", q, "--format", "csv", "--lake", str(built["root"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and cli.stdout == expected, cli.stderr


def test_q0_shows_its_stopping_rule_and_intervals(client, built):
    """A q0 from 8 samples is not a number to read alone: the page shows the stopping rule,
    S0 and q0 with their 95% intervals, as stored."""
    pid = built["problems"]["A+B"]
    row = (
        Lake.open(built["root"], create=False)
        .sql(f"SELECT * FROM q0_estimates WHERE problem_id = '{pid}'")
        .to_dicts()[0]
    )
    page = client.get(f"/problems/{pid}").text
    table = page.split('id="q0"', 1)[1].split("</table>", 1)[0]
    assert f"{row['s0']:.3f} [{row['s0_low']:.3f}, {row['s0_high']:.3f}]" in table
    assert f"{row['q0']:.4f} [{row['q0_low']:.4f}, {row['q0_high']:.4f}]" in table
    assert f"<td>{row['stopping']}</td>" in table


def test_sigterm_stops_the_server_during_a_long_query(built):
    """Ctrl-C / SIGTERM interrupts running queries: the server does not wait for an hour-long
    `SELECT` to finish (it did: 40 s and still running)."""
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", "lake", "serve", "--lake", str(built["root"])]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        q = _q(q="SELECT sum(range) FROM range(40000000000)")  # minutes on any machine
        statuses = []

        def ask(path: str) -> None:
            try:
                urllib.request.urlopen(url + path + q, timeout=120)
                statuses.append(200)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError:
                statuses.append("closed")

        threads = [threading.Thread(target=ask, args=(p,)) for p in ("sql", "sql.csv")]
        for t in threads:
            t.start()
        time.sleep(1.5)  # both queries running
        start = time.monotonic()
        proc.terminate()
        rc = proc.wait(30)
        took = time.monotonic() - start
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0 and took < 15, (rc, took)
    assert "stopped" in proc.stdout.read()
    assert 200 not in statuses, statuses  # interrupted, not finished


def test_downloads_stream_every_batch(client):
    """Downloads are read from DuckDB a batch at a time (a result larger than memory streams):
    every row of a result of several batches arrives, Parquet one row group per batch."""
    import io

    import pyarrow.parquet as pq

    q = _q(q="SELECT range AS i, 'x' || range AS s FROM range(25000)")
    lines = client.get("/sql.csv" + q).text.splitlines()
    assert lines[0] == "i,s" and len(lines) == 25001 and lines[-1] == "24999,x24999"
    body = client.get("/sql.parquet" + q).content
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == 25000 and table.column("i").to_pylist() == list(range(25000))
    assert pq.ParquetFile(io.BytesIO(body)).metadata.num_row_groups >= 2
    empty = client.get("/sql.csv" + _q(q="SELECT 1 AS a WHERE false"))
    assert empty.status_code == 200 and empty.text == "a\n"
    failing = client.get("/sql.csv" + _q(q="SELECT * FROM read_csv('/no/such/file.csv')"))
    assert failing.status_code == 400 and "SQL error" in failing.text
    # an error DuckDB raises while the rows stream (Arrow hands it over as an OSError): a
    # query's error, not "cannot read the lake"
    # (the page reads only its first 1,000 rows: whether DuckDB reaches row 25,000 before
    # handing them over depends on its threads, so the page's query fails within its head)
    late = "SELECT range, CASE WHEN range = {} THEN error('boom') END FROM range(30000)"
    for url, row in (("/sql", 500), ("/sql.csv", 25000), ("/sql.parquet", 25000)):
        response = client.get(url + _q(q=late.format(row)))
        assert response.status_code == 400, (url, response.status_code)
        assert "SQL error: Invalid Input Error: boom" in response.text, url
