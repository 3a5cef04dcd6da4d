"""Every Python package in the source tree is listed in pyproject.toml's `packages`: setuptools
does not find sub-packages itself there, and an editable install hides the omission (the folder
is on the path) while a wheel (`pip install .`) would ship without it (spo_train.algorithms was
missing until caught)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / folder for name, folder in setup["package-dir"].items()}
    found = set()
    for top, folder in dirs.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join([top, *rel.parts]))
    assert found == set(setup["packages"]), sorted(found ^ set(setup["packages"]))


def test_bench_step_loads_without_the_lake_libraries():
    """`scripts/gpu_step_check.sh` runs `spo bench step` on a GPU image that has torch and
    transformers but not Lance, DuckDB or polars: the step's modules must not import them."""
    import subprocess
    import sys

    code = (
        "import sys; import spo_cli.bench_cmds, spo_train.train.bench_step, spo_train.train.learner, "
        "spo_train.algorithms.spo, spo_train.algorithms.ppo, spo_train.algorithms.grpo; "
        "print(sorted(m for m in ('lance', 'duckdb', 'polars') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_and_judge_load_without_typer_or_torch():
    """The settings (`spo_train.config`) are a library: the typer binding lives in
    `spo_cli.options`. The judge runs on machines without torch (`spo judge`, ingest --verify)."""
    import subprocess
    import sys

    code = (
        "import sys; import spo_train.config, spo_train.judge; "
        "print(sorted(m for m in ('typer', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
