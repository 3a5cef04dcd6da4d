"""`spo lake serve` in a real browser: Debian's Chromium driven by Playwright.

One lake, one server (the real CLI in a subprocess, ephemeral port) and one browser for the
module. Each page loads with no console error and no request leaving the server; a filter
narrows the problem list; the S_t heat strip renders with its pivotal token; lake text holding
`<script>` renders as text; unknown ids give a 404 page and bad SQL a message.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from tests.helpers_explorer import HOSTILE, HOSTILE_RESPONSE, build_lake

CHROMIUM = os.environ.get("SPO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def lake_ids(tmp_path_factory):
    root = tmp_path_factory.mktemp("explorer") / "lake"
    ids = build_lake(root)
    ids["root"] = root
    return ids


@pytest.fixture(scope="module")
def server(lake_ids):
    """`spo lake serve --port 0` in a subprocess; yields its base URL (no trailing slash)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", "lake", "serve", "--lake", str(lake_ids["root"])]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    line = proc.stdout.readline()  # printed once the socket listens
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        proc.kill()
        pytest.fail(f"spo lake serve printed no URL: {line!r} {proc.stdout.read()!r}")
    yield match.group(0)
    proc.terminate()  # SIGTERM: the server stops cleanly, exit 0, no "rerun to resume"
    try:
        rc = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    rest = proc.stdout.read()
    assert rc == 0 and "stopped" in rest and "resume" not in rest, (rc, rest)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page that records console errors, page errors and requests to other hosts."""
    context = browser.new_context()
    pg = context.new_page()
    pg.problems = []  # type: ignore[attr-defined]

    def on_console(msg):
        if msg.type in ("error", "warning"):
            pg.problems.append(f"console {msg.type}: {msg.text}")

    def on_request(req):
        if not req.url.startswith(server) and not req.url.startswith("data:"):
            pg.problems.append(f"request left the server: {req.url}")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: pg.problems.append(f"page error: {exc}"))
    pg.on("request", on_request)
    pg.on("requestfailed", lambda req: pg.problems.append(f"request failed: {req.url}"))
    yield pg
    context.close()


def visit(page, url: str, status: int = 200):
    response = page.goto(url)
    assert response is not None and response.status == status, (url, response and response.status)
    page.wait_for_load_state("load")
    return response


def test_every_page_loads_without_console_errors(page, server, lake_ids):
    pid = lake_ids["problems"]["A+B"]
    run = lake_ids["train_run"]
    urls = [
        "/",
        "/problems",
        "/problems?" + urlencode({"split": "train", "judge_issue": "none", "min_pass": "0.1"}),
        f"/problems/{pid}",
        "/trajectories",
        f"/trajectories?run_id={quote(run)}&policy_version=0",
        f"/trajectories/{lake_ids['annotated']}",
        "/runs",
        f"/runs/{quote(run)}",
        f"/runs/{quote(run)}/steps/1",
        f"/compare?problem_id={pid}",
        "/sql",
        "/sql?" + urlencode({"q": "SELECT source, count(*) AS n FROM trajectories GROUP BY 1"}),
    ]
    for url in urls:
        response = visit(page, server + url)
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert page.locator("h1").count() == 1, url
    assert page.problems == []  # type: ignore[attr-defined]
    # the overview counts every table's rows: 5 human solutions ingested, 9 online rows
    visit(page, server + "/")
    row = page.locator("#tables tbody tr", has_text="trajectories").first
    assert row.locator("td").nth(1).inner_text() == "14"


def test_filter_narrows_the_problem_list(page, server, lake_ids):
    visit(page, server + "/problems")
    assert page.locator("#problems tbody tr").count() == 4
    # which problems did humans solve that no model solved
    page.select_option("select[name=human]", "yes")
    page.select_option("select[name=model]", "no")
    page.click("#problem-filters button[type=submit]")
    page.wait_for_load_state("load")
    assert "human=yes" in page.url and "model=no" in page.url
    rows = page.locator("#problems tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").first.inner_text() == "Hard sum"
    assert page.locator("select[name=human]").input_value() == "yes"  # the form keeps it
    page.fill("input[name=name]", "zzz-no-such")
    page.click("#problem-filters button[type=submit]")
    assert page.locator("#problems tbody tr").inner_text() == "no problem matches"
    assert page.problems == []  # type: ignore[attr-defined]


def test_policy_at_step_0_and_at_the_end(page, server, lake_ids):
    """From a run's page to what the policy wrote for A+B at policy version 0 and 2."""
    visit(page, f"{server}/runs/{quote(lake_ids['train_run'])}")
    assert page.locator("#metrics svg polyline").count() >= 2  # train/loss, train/reward
    assert page.locator("#batches tbody tr").count() == 3
    page.click("#by-version tbody tr:first-child a")  # online, policy version 0
    page.wait_for_load_state("load")
    assert "policy_version=0" in page.url
    assert page.locator("#trajectories tbody tr").count() == 3
    visit(page, f"{server}/problems/{lake_ids['problems']['A+B']}")
    sols = page.locator("#solutions tbody tr")
    texts = [sols.nth(i).inner_text() for i in range(sols.count())]
    online = [t for t in texts if "\tonline\t" in t]
    assert len(online) == 3 and "fail" in online[0] and "pass" in online[-1]
    # a batch's rows are one click away
    visit(page, f"{server}/runs/{quote(lake_ids['train_run'])}")
    page.click("#batches a >> text=step 2")
    page.wait_for_load_state("load")
    assert page.locator("#batch tbody tr").count() == 3
    assert page.problems == []  # type: ignore[attr-defined]


def test_heat_strip_renders_with_the_pivotal_token(page, server, lake_ids):
    # from the overview to the trajectories spo pts searched, to the one annotated
    visit(page, f"{server}/")
    page.click("text=Trajectories searched by")
    page.wait_for_load_state("load")
    assert page.locator("#trajectories tbody tr").count() == 1
    page.click(f"#trajectories a >> text={lake_ids['annotated']}")
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/trajectories/{lake_ids['annotated']}")
    strip = page.locator("#heat-1")
    assert strip.is_visible()
    tokens = strip.locator(".tok")
    assert tokens.count() == 12
    pivot = strip.locator(".tok.pivot")
    assert pivot.count() == 1
    assert pivot.inner_text() == lake_ids["pivot_text"]
    assert f"t={lake_ids['pivot']} " in pivot.get_attribute("title")
    # coloured by S: red before the pivot (S 0.2), green after (S 0.9)
    colour = "el => getComputedStyle(el).backgroundColor"
    before, after = tokens.nth(3).evaluate(colour), tokens.nth(6).evaluate(colour)
    assert before != after and "rgba(0, 0, 0, 0)" not in (before, after)
    assert page.locator(".pivots").inner_text().startswith("Pivotal token")
    assert page.locator("#logprobs svg polyline").count() == 3
    assert page.locator("#response .hl").count() == 1  # Pygments-highlighted
    assert page.locator("#response .k, #response .kn, #response .nb").count() > 0
    assert page.problems == []  # type: ignore[attr-defined]


def test_hostile_lake_text_renders_as_text(page, server, lake_ids):
    visit(page, f"{server}/trajectories/{lake_ids['hostile_traj']}")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("script").count() == 0
    assert page.locator("img").count() == 0
    assert HOSTILE in page.locator("#response").inner_text()
    assert HOSTILE_RESPONSE.strip() in page.locator("#response").inner_text()
    # the problem's name and statement, and a run config holding it
    visit(page, f"{server}/problems/{lake_ids['problems'][f'Evil {HOSTILE}']}")
    assert page.locator("h1").inner_text() == f"Evil {HOSTILE}"
    assert HOSTILE in page.locator("#statement").inner_text()
    visit(page, f"{server}/compare?problem_id={lake_ids['problems'][f'Evil {HOSTILE}']}")
    visit(page, f"{server}/runs/{quote(lake_ids['train_run'])}")
    assert HOSTILE.replace('"', '\\"') in page.locator("#config").inner_text()
    visit(page, f"{server}/problems?" + urlencode({"name": HOSTILE}))
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("script").count() == 0 and page.locator("img").count() == 0
    assert page.problems == []  # type: ignore[attr-defined]


def test_unknown_ids_give_404_and_bad_sql_a_message(page, server, lake_ids):
    for url in ("/problems/nope", "/trajectories/nope", "/runs/nope", "/no/such/page"):
        visit(page, server + url, status=404)
        assert "404" in page.locator("h1").inner_text()
    visit(page, server + "/runs/nope/steps/3", status=404)
    visit(page, server + "/compare?problem_id=nope", status=404)
    visit(page, server + "/problems?min_pass=abc", status=400)
    assert "min_pass='abc' is not a number" in page.locator("#error").inner_text()
    visit(page, server + "/sql")
    page.fill("textarea[name=q]", "SELEC nonsense")
    page.click("#sql-form button")
    assert "SQL error" in page.locator("#sql-error").inner_text()
    visit(page, server + "/sql?" + urlencode({"q": "DROP TABLE problems"}), status=400)
    assert "read-only: DROP is refused" in page.locator("#sql-error").inner_text()
    visit(page, server + "/sql?" + urlencode({"q": "COPY problems TO '/tmp/x.csv'"}), status=400)
    assert "COPY is refused" in page.locator("#sql-error").inner_text()
    # error pages log no console error of their own (the 4xx status itself aside)
    assert all("status of 4" in p for p in page.problems)  # type: ignore[attr-defined]


def test_sql_downloads(page, server):
    q = "SELECT name, num_tests FROM problems ORDER BY name"
    visit(page, server + "/sql?" + urlencode({"q": q}))
    assert page.locator("#sql-result tbody tr").count() == 4
    csv_url = page.locator("a", has_text="CSV").get_attribute("href")
    body = page.request.get(server + csv_url)
    assert body.status == 200 and body.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.text())))
    assert rows[0] == ["name", "num_tests"] and len(rows) == 5 and rows[1][0] == "A+B"
    pq_url = page.locator("a", has_text="Parquet").get_attribute("href")
    import pyarrow.parquet as pq

    data = page.request.get(server + pq_url).body()
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 4 and table.column_names == ["name", "num_tests"]
    # a long result: the page shows its head, the download every row
    q = "SELECT range AS i FROM range(2500)"
    visit(page, server + "/sql?" + urlencode({"q": q}))
    assert page.locator("#sql-result tbody tr").count() == 1000
    assert "the first 1000 shown" in page.locator("#sql-count").inner_text()
    body = page.request.get(server + "/sql.csv?" + urlencode({"q": q}))
    assert body.text().splitlines()[-1] == "2499" and len(body.text().splitlines()) == 2501


def test_other_hosts_are_refused_and_the_lake_is_unchanged(server, lake_ids):
    """DNS rebinding: a request naming another host is refused; browsing wrote nothing."""
    from spo_store.lake import Lake

    req = urllib.request.Request(server + "/", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    before = Lake.open(lake_ids["root"], create=False).versions()
    with urllib.request.urlopen(server + "/problems", timeout=10) as resp:
        assert resp.status == 200
    time.sleep(0.1)
    assert Lake.open(lake_ids["root"], create=False).versions() == before


def test_serve_refuses_bad_options_in_one_line(tmp_path, lake_ids, capsys):
    """In-process (`spo_cli.main.main`): each refusal comes before the server would start."""
    import socket

    from spo_cli.main import main

    def spo(*args):
        with pytest.raises(SystemExit) as info:
            main(["lake", "serve", *args])
        return info.value.code, capsys.readouterr().err

    rc, err = spo("--lake", str(tmp_path / "none"), "--port", "0")
    assert rc == 2 and "no lake at" in err and "Traceback" not in err
    rc, err = spo("--lake", str(lake_ids["root"]), "--port", "70000")
    assert rc == 2 and "--port 70000" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc, err = spo("--lake", str(lake_ids["root"]), "--port", str(port))
    assert rc == 2 and f"cannot listen on 127.0.0.1:{port}" in err
    assert len(err.strip().splitlines()) == 1
