#!/usr/bin/env python
"""Screenshots of `spo lake serve` for docs/explorer.md (docs/explorer/*.png).

Builds the explorer tests' small lake (tests/helpers_explorer.py) unless `--lake` names one,
serves it with the real CLI on a free port and photographs each page with Debian's Chromium
(Playwright, headless). Usage: python scripts/explorer_screenshots.py [--lake URI] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pick_ids(uri: str) -> dict:
    """Pages worth showing in another lake: a training run, a problem it trained on with a
    passing human solution, the trajectory with the most estimates of `spo pts` (else one
    of the run's)."""
    from spo_store.lake import Lake

    lake = Lake.open(uri, create=False)

    def one(sql: str):
        rows = lake.sql_arrow(sql).to_pylist()
        return next(iter(rows[0].values())) if rows else None

    run = one("SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at DESC LIMIT 1")
    problem = one(
        "SELECT t.problem_id FROM trajectories t JOIN trajectories h USING (problem_id) "
        f"WHERE t.run_id = '{run}' AND h.source = 'human' AND h.reward = 0 "
        "GROUP BY 1 ORDER BY count(DISTINCT t.policy_version) DESC, 1 LIMIT 1"
    )
    annotated = one("SELECT traj_id FROM annotations ORDER BY len(positions) DESC LIMIT 1") or one(
        f"SELECT traj_id FROM trajectories WHERE run_id = '{run}' LIMIT 1"
    )
    return {"train_run": run, "problems": {"A+B": problem}, "annotated": annotated}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", help="lake to photograph (default: build the tests' small lake)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "explorer"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="spo-explorer-")
    if args.lake:
        lake, ids = args.lake, pick_ids(args.lake)
    else:
        from tests.helpers_explorer import build_lake

        lake = str(Path(tmp) / "lake")
        ids = build_lake(Path(lake))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", "lake", "serve", "--lake", lake, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        base = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        pages = [("overview", "/"), ("problems", "/problems?human=yes&model=failed")]
        if ids:
            run = quote(ids["train_run"])
            pages += [
                ("problem", f"/problems/{ids['problems']['A+B']}"),
                ("trajectory", f"/trajectories/{ids['annotated']}"),
                ("run", f"/runs/{run}"),
                ("compare", f"/compare?problem_id={ids['problems']['A+B']}"),
                (
                    "sql",
                    "/sql?"
                    + urlencode(
                        {
                            "q": "SELECT source, policy_version, count(*) AS n, "
                            "avg(CASE WHEN reward = 0 THEN 1 ELSE 0 END) AS pass_rate\n"
                            "FROM trajectories GROUP BY ALL ORDER BY ALL"
                        }
                    ),
                ),
            ]
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for name, url in pages:
                page.goto(base + url)
                # the trajectory page whole: its heat strip is below the response
                page.screenshot(path=str(out / f"{name}.png"), full_page=name == "trajectory")
                print(f"{name}: {url}")
                if name == "problem":  # the end of its solutions: a run's, by policy version
                    page.locator("#solutions tbody tr").last.scroll_into_view_if_needed()
                    page.screenshot(path=str(out / "solutions.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
