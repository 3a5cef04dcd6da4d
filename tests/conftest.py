from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

_ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the checkout (CI) or inside it (a device machine's copy).
SHARED_DATA = next(
    (d / "shared" / "data" for d in (_ROOT, _ROOT.parent) if (d / "shared" / "data").is_dir()),
    _ROOT.parent / "shared" / "data",
)
CC_SAMPLE = SHARED_DATA / "code_contests_sample.parquet"


def _sandbox_unavailable() -> str | None:
    """Why the sandbox cannot run here (no bwrap, no user namespaces...), or None."""
    from spo_store.errors import SpoError
    from spo_train.sandbox import ensure_sandbox

    try:
        ensure_sandbox()
    except SpoError as exc:
        return str(exc)
    return None


SANDBOX_UNAVAILABLE = _sandbox_unavailable()
needs_sandbox = pytest.mark.skipif(
    SANDBOX_UNAVAILABLE is not None, reason=f"sandbox unavailable: {SANDBOX_UNAVAILABLE}"
)


@pytest.fixture
def cc_sample() -> Path:
    if not CC_SAMPLE.exists():
        pytest.skip(
            f"shared data not found at {CC_SAMPLE} (CI clones the repo with shared/ beside it)"
        )
    return CC_SAMPLE


@pytest.fixture
def lake(tmp_path):
    from spo_store.lake import Lake

    return Lake.open(tmp_path / "lake")


def write_cc_parquet(path: Path, problems: list[dict]) -> Path:
    """A CodeContests-schema Parquet file (schema copied from the real sample when present)."""
    rows = []
    for p in problems:
        rows.append(
            {
                "name": p["name"],
                "description": p.get("description", f"Statement of {p['name']}"),
                "public_tests": {
                    "input": p.get("public_in", ["1\n"]),
                    "output": p.get("public_out", ["1\n"]),
                },
                "private_tests": {
                    "input": p.get("private_in", ["2\n"]),
                    "output": p.get("private_out", ["2\n"]),
                },
                "generated_tests": {
                    "input": p.get("gen_in", ["3\n"]),
                    "output": p.get("gen_out", ["3\n"]),
                },
                "source": 2,
                "difficulty": 7,
                "solutions": {
                    "language": [lang for lang, _ in p.get("solutions", [])],
                    "solution": [s for _, s in p.get("solutions", [])],
                },
                "incorrect_solutions": {
                    "language": [lang for lang, _ in p.get("incorrect", [])],
                    "solution": [s for _, s in p.get("incorrect", [])],
                },
                "time_limit": {"seconds": 1, "nanos": 500_000_000},
                "memory_limit_bytes": 64 * 1024 * 1024,
            }
        )
    if CC_SAMPLE.exists():
        schema = pq.read_schema(CC_SAMPLE)
        table = pa.Table.from_pylist(rows, schema=pa.schema([schema.field(n) for n in rows[0]]))
    else:
        table = pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
