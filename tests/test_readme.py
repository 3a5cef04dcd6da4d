"""Every `spo` command and flag the README and docs name exists (docs describe what exists)."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer import _click  # typer vendors its own click

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@functools.cache
def _command() -> Any:
    from spo_cli import main

    main._register_all()
    return typer.main.get_command(main.app)


def _spo_invocations(text: str) -> list[str]:
    """`spo ...` command lines from code blocks and inline code."""
    found = []
    # every fenced block pairs its own fences (a ```text block must not shift the pairing)
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|\|", line):
                part = part.strip()
                if part.startswith("spo "):
                    found.append(part)
    for inline in re.findall(r"`(spo [^`]+)`", text):
        if not inline.split()[1].startswith("<"):  # `spo <version> (<commit>)` is a format
            found.append(inline)
    return found


def _resolve(root: Any, words: list[str]) -> tuple[Any, list[str], list[str]]:
    """The (sub)command the words name, its path, and the flags among the remaining words."""
    cmd, path = root, []
    rest = list(words)
    if rest[:1] == ["--threads"]:  # the root's own option (`spo --threads N train ...`)
        rest = rest[2:]
    while hasattr(cmd, "get_command") and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(_click.Context(cmd), rest[0])
        if sub is None:
            break
        cmd, path = sub, [*path, rest.pop(0)]
    flags = [w.split("=", 1)[0] for w in rest if w.startswith("--")]
    return cmd, path, flags


CASES = [
    (doc.name, line) for doc in DOCS for line in _spo_invocations(doc.read_text(encoding="utf-8"))
]


@pytest.mark.parametrize(("doc", "line"), CASES, ids=[f"{d}:{line[:40]}" for d, line in CASES])
def test_named_command_and_flags_exist(doc: str, line: str) -> None:
    root = _command()
    try:
        words = shlex.split(line)[1:]
    except ValueError:
        words = line.split()[1:]
    words = [w for w in words if w not in ("...",)]
    if words[:1] == ["--threads"]:
        words = words[2:]
    cmd, path, flags = _resolve(root, words)
    rest = words[len(path) :]
    if hasattr(cmd, "get_command") and rest and not rest[0].startswith("-"):
        pytest.fail(f"{doc}: `spo {' '.join([*path, rest[0]])}` is not a command ({line!r})")
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{doc}: `spo {' '.join(path)}` has no flag(s) {unknown} ({line!r})"


def test_readme_names_commands_at_all() -> None:
    assert len(CASES) >= 10
