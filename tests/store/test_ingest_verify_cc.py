"""--verify on real CodeContests rows: a valid answer other than the reference flags the problem.

1256_C (Platforms Jumping) accepts any valid placement. Two correct programs: the forward
greedy (the reference's placement) and its mirror image (platforms pushed from the right
bank), which is just as valid but prints other arrays. Token comparison fails the mirror with
wrong_answer, so --verify flags the problem labels_disagree and says why.
"""

from __future__ import annotations

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq

from spo_store.lake import Lake
from tests.conftest import needs_sandbox

FORWARD = """
n, m, d = map(int, input().split())
c = list(map(int, input().split()))
rest, pos, a = sum(c), 0, [0] * n
for i, ci in enumerate(c):
    start = min(pos + d, n + 1 - rest)
    for j in range(start, start + ci):
        a[j - 1] = i + 1
    pos, rest = start + ci - 1, rest - ci
print("YES\\n" + " ".join(map(str, a)) if pos + d >= n + 1 else "NO")
"""
MIRROR = """
n, m, d = map(int, input().split())
c = list(map(int, input().split()))
before, pos, a = sum(c), n + 1, [0] * n
for i in range(m - 1, -1, -1):
    end = max(pos - d, before)
    for j in range(end - c[i] + 1, end + 1):
        a[j - 1] = i + 1
    pos, before = end - c[i] + 1, before - c[i]
print("YES\\n" + " ".join(map(str, a)) if pos - d <= 0 else "NO")
"""


@needs_sandbox
def test_verify_flags_1256_c_whose_valid_answers_disagree(tmp_path, cc_sample):
    table = pq.read_table(cc_sample)
    rows = [r for r in table.to_pylist() if r["name"].startswith(("1256_C", "1000_A"))]
    for r in rows:
        if r["name"].startswith("1256_C"):
            r["solutions"] = {"language": [3, 3], "solution": [FORWARD, MIRROR]}
    path = tmp_path / "cc_train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    lake = tmp_path / "lake"
    r = subprocess.run(
        ["spo", "ingest", "human-solutions", str(path), "--lake", str(lake), "--verify"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "judged: 1 ok, 1 wrong_answer" in r.stdout
    assert (
        "1256_C. Platforms Jumping: labels_disagree: 1 of 2 labelled-correct solutions fail "
        "(wrong_answer), 1 pass; statement suggests several answers" in r.stdout
    )
    lk = Lake.open(lake)
    issue = lk.get_problem("1256_C. Platforms Jumping")["judge_issue"]
    assert issue.startswith("labels_disagree: 1 of 2")
    assert lk.get_problem("1000_A. Codehorses T-shirts")["judge_issue"] is None
    rewards = lk.sql("SELECT response, reward FROM trajectories").to_dicts()
    assert {(x["response"] == MIRROR, x["reward"]) for x in rewards} == {(False, 0.0), (True, -1.0)}
