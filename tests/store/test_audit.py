"""`spo lake audit`: problems by reliability, counts by reason, --json, --update."""

from __future__ import annotations

import json
import subprocess

from spo_store.audit import audit, update_problems
from spo_store.ingest import ingest_human_solutions
from tests.conftest import write_jsonl


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=120)


def test_audit_cli_on_the_real_sample(tmp_path, cc_sample):
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(cc_sample), "--lake", str(lake), "--verify")
    assert r.returncode == 0, r.stderr
    # The "Done when": the ingest says what it flagged and why.
    assert "flagged 6 problem(s) with a judge_issue: 1 interactive, 5 multiple_answers" in r.stdout
    assert '1256_C. Platforms Jumping: multiple_answers: statement says "print YES' in r.stdout
    r = spo("lake", "audit", "--lake", str(lake), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert (result["problems"], result["reliable"], result["flagged"]) == (20, 14, 6)
    assert result["by_reason"] == {"interactive": 1, "multiple_answers": 5}
    assert result["float_tolerance_sources"] == {"default": 19, "statement": 1}
    assert result["groups"] == [
        {
            "source_dataset": "code_contests",
            "split": "unspecified",
            "problems": 20,
            "reliable": 14,
            "by_reason": {"interactive": 1, "multiple_answers": 5},
        }
    ]
    assert result["flagged_problems"][0]["name"] == "1179_E. Alesya and Discrete Math"
    table = spo("lake", "audit", "--lake", str(lake))
    assert table.returncode == 0
    assert "20 problems: 14 judged reliably, 6 flagged (1 interactive, 5 multiple_answers)" in (
        table.stdout
    )
    r = spo("lake", "audit", "--lake", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no lake" in r.stderr


def test_update_rederives_and_keeps_verify_flags(lake, tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"name": "a", "statement": "Print n.", "tests": [{"input": "", "output": "1"}]},
            {
                "name": "b",
                "statement": "Print any of them.",
                "tests": [{"input": "", "output": "1"}],
            },
            {"name": "c", "statement": "Print n.", "tests": [{"input": "", "output": "1"}]},
        ],
    )
    ingest_human_solutions(lake, [path])
    # Stale rows, as an older release or the migration could leave them.
    lake.update_rows(
        "problems",
        "problem_id",
        [
            {
                "problem_id": lake.get_problem("a")["problem_id"],
                "judge_issue": "multiple_answers: x",
                "float_tolerance": None,
                "float_tolerance_source": None,
                "platform": None,
            },
            {"problem_id": lake.get_problem("b")["problem_id"], "judge_issue": None},
            {
                "problem_id": lake.get_problem("c")["problem_id"],
                "judge_issue": "labels_disagree: 2 of 3 labelled-correct solutions fail",
            },
        ],
    )
    assert audit(lake)["by_reason"] == {"labels_disagree": 1, "multiple_answers": 1}
    changed = update_problems(lake)
    assert changed["checked"] == 3 and changed["updated"] == 2
    assert changed["changes"] == {
        "judge_issue": 2,
        "float_tolerance": 1,
        "float_tolerance_source": 1,
    }
    a, b, c = (lake.get_problem(n) for n in "abc")
    assert a["judge_issue"] is None and a["float_tolerance_source"] == "default"
    assert b["judge_issue"].startswith("multiple_answers")
    assert c["judge_issue"].startswith("labels_disagree")  # evidence from --verify is kept
    assert update_problems(lake)["updated"] == 0
    r = spo("lake", "audit", "--lake", lake.uri, "--update")
    assert r.returncode == 0 and "updated 0 of 3 problems" in r.stdout
