"""The embedded default: shipped problems load themselves into an empty lake on first use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_PROBLEMS = ASSETS / "problems"


def default_problem_files() -> list[Path]:
    return sorted(DEFAULT_PROBLEMS.glob("*.parquet"))


def ensure_problems(lake: Lake, say: Callable[[str], None] | None = None) -> bool:
    """Load the embedded problem set when the lake has no problems; True when it did.

    Recorded as an ordinary ingest run (kind `ingest-default`), with the shipped human
    solutions as `source='human'` trajectories.
    """
    if lake.dataset("problems").count_rows() > 0:
        return False
    files = default_problem_files()
    if not files:
        return False
    report = ingest_human_solutions(
        lake, files, source_dataset="embedded", run_kind="ingest-default"
    )
    if say:
        flagged = sum(report.flagged.values())
        say(
            f"loaded the embedded default problem set into {lake.uri}: "
            f"{report.problems_added} problems, {report.solutions_added} solutions"
            + (f" ({flagged} flagged with a judge_issue: spo lake audit)" if flagged else "")
        )
    return True
