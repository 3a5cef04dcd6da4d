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
