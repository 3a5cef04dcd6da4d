"""Issue 21 item 4: lay `spo_train` (and `tests/`) out by job, from one old -> new map.

    python scripts/dev/move_packages.py          # move and rewrite (idempotent)
    python scripts/dev/move_packages.py --check  # exit 1 when anything is left to move or rewrite

What it does, in order:
1. `git mv` each module in MODULES / TESTS to its new place (skipped when already there; an error
   when both the old and the new file exist), then the content fixups of FIXUPS in the moved file
   (a relative path that changes with the folder). Each new package gets an `__init__.py`.
2. Rewrites every tracked text file (code, tests, scripts, docs, TOML, shell) from the same map:
   `from spo_train import a, b as c` statements, dotted paths (`spo_train.trainer.train`,
   monkeypatch targets, `python -m spo_train.ray_reaper`, Ray's module paths), file paths
   (`spo_train/trainer.py`, `tests/test_x.py`) and `tests.test_x` imports.
3. Lists every package in pyproject.toml's `[tool.setuptools] packages`.
4. Sorts the imports it touched (`ruff check --fix --select I`) and formats (`ruff format`).

Idempotent: run it again after merging a branch written against the old layout and it moves
that branch's new references (and any new file it finds at an old place) the same way. No
re-export shim is left at an old path: monkeypatching a shim would silently patch nothing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

# spo_train modules: old dotted name (under spo_train) -> new one. A module that becomes its
# package's __init__ keeps its import path (judge, experiment) and is listed in PACKAGE_INITS.
MODULES: dict[str, str] = {
    # lm: the model, its prompts, sampling and log-probs; no lake
    "models": "lm.models",
    "prompting": "lm.prompting",
    "generation": "lm.generation",
    "logprobs": "lm.logprobs",
    "fast_step": "lm.fast_step",
    # judge: correctness and isolation; no torch
    "sandbox": "judge.sandbox",
    "sandbox_driver": "judge.sandbox_driver",
    # algorithms: the losses beside the algorithms that use them
    "losses": "algorithms.losses",
    # rollouts: sample -> judge -> lake rows, local and Ray behind one protocol
    "rollout": "rollouts.sampling",
    "rollout_sources": "rollouts.sources",
    "producer": "rollouts.local",
    "async_producer": "rollouts.ray_rollouts",
    "rollout_workers": "rollouts.workers",
    "worker_spec": "rollouts.worker_spec",
    "ray_reaper": "rollouts.ray_reaper",
    "rollout_job": "rollouts.job",
    # train: the learner's loop and what it calls
    "trainer": "train.loop",
    "train_setup": "train.setup",
    "run_plan": "train.plan",
    "batch": "train.batch",
    "batch_sources": "train.batch_sources",
    "learner": "train.learner",
    "metric_sink": "train.metric_sink",
    "policy_eval": "train.policy_eval",
    "follower": "train.follower",
    "distributed": "train.distributed",
    "checkpoint": "train.checkpoint",
    "launch": "train.launch",
    "bench_step": "train.bench_step",
    # experiment: experiments as code, their reports, the demo
    "experiment_config": "experiment.config",
    "experiment_plan": "experiment.plan",
    "report": "experiment.report",
    "report_data": "experiment.report_data",
    "demo": "experiment.demo",
    # embedded: the shipped problems and the default model
    "defaults": "embedded.defaults",
}
PACKAGE_INITS: dict[str, str] = {"judge": "judge", "experiment": "experiment"}
"""A module that becomes the __init__ of a package of its own name (import path unchanged)."""

PACKAGE_DOCS: dict[str, str] = {
    "lm": "The language model: loading, prompts, sampling, log-probs, step options. No lake.",
    "rollouts": "Rollouts: sample, judge and commit to the lake; local and Ray behind one\n"
    "protocol (`sources.RolloutSource`).",
    "train": "Training: the step loop (`loop.train`), its setup, batch sources, the learner,\n"
    "metric sink, checkpoints and data-parallel followers.",
}

# tests: basename -> folder under tests/ (a test not listed stays in tests/).
TEST_FOLDERS: dict[str, tuple[str, ...]] = {
    "store": (
        "test_lake",
        "test_lake_keys",
        "test_lake_reliability",
        "test_lake_s3",
        "test_lake_verify",
        "test_compact_concurrent",
        "test_migration",
        "test_migration_v3",
        "test_migration_v4",
        "test_migration_v5",
        "test_migration_v6",
        "test_ingest",
        "test_ingest_bad_input",
        "test_ingest_concurrency",
        "test_ingest_crash",
        "test_ingest_namesakes",
        "test_ingest_normalise",
        "test_ingest_rules",
        "test_ingest_split",
        "test_ingest_taco",
        "test_ingest_trial",
        "test_ingest_upgrade",
        "test_ingest_verify_cc",
        "test_explorer",
        "test_explorer_attack",
        "test_explorer_data",
        "test_selection",
        "test_predicates",
        "test_mixture",
        "test_mixture_incremental",
        "test_audit",
        "test_reproduce",
        "test_cli_sql",
    ),
    "judge": (
        "test_judge_call_based",
        "test_judge_checker",
        "test_judge_cli",
        "test_judge_floats",
        "test_judge_limits",
        "test_judge_not_judged",
        "test_judge_real_rows",
        "test_judge_trial",
        "test_judge_trust",
        "test_sandbox",
        "test_hostile",
    ),
    "lm": (
        "test_generation",
        "test_generation_quiet",
        "test_logprobs",
        "test_behaviour_logprobs",
        "test_prompting",
        "test_fast_step",
        "test_threads",
    ),
    "algorithms": (
        "test_algorithms",
        "test_losses",
        "test_soft_optimality",
        "test_topr",
        "test_sft",
        "test_grpo_reference",
    ),
    "rollouts": ("test_rollout_workers", "test_rollout_checks", "test_ray_reaper"),
    "train": (
        "test_train_ce_clip",
        "test_train_cli",
        "test_train_cli_messages",
        "test_train_cli_trial2",
        "test_train_demo_run",
        "test_train_dropout",
        "test_train_encode_length",
        "test_train_eval_counts",
        "test_train_failed_runs",
        "test_train_offline_prompt",
        "test_train_q0_and_eval",
        "test_train_staleness",
        "test_loop_seams",
        "test_distributed",
        "test_stopping",
        "test_lifecycle",
        "test_pipeline",
    ),
    "q0_eval": (
        "test_q0_concurrent_writers",
        "test_q0_estimates",
        "test_q0_formula",
        "test_q0_sequential",
        "test_q0_sequential_cli",
        "test_pass_at_k",
        "test_eval_diversity",
        "test_bootstrap_two_level",
    ),
    "pts": ("test_pts_cli", "test_pts_exact", "test_pts_pooling", "test_pts_tokens"),
    "experiment": ("test_experiment", "test_report", "test_bench_algorithms"),
    "embedded": ("test_embedded_assets", "test_generator"),
    "cli": (
        "test_config",
        "test_env_errors",
        "test_second_hour",
        "test_trial2_cli",
        "test_user_models_and_help",
    ),
}
TEST_PREFIXES: tuple[tuple[str, str], ...] = (
    ("test_judge_", "judge"),
    ("test_sandbox", "judge"),
    ("test_ingest", "store"),
    ("test_lake", "store"),
    ("test_migration", "store"),
    ("test_explorer", "store"),
    ("test_mixture", "store"),
    ("test_train_", "train"),
    ("test_rollout", "rollouts"),
    ("test_q0_", "q0_eval"),
    ("test_eval_", "q0_eval"),
    ("test_pts_", "pts"),
    ("test_experiment", "experiment"),
    ("test_report", "experiment"),
    ("test_generation", "lm"),
    ("test_logprobs", "lm"),
    ("test_embedded", "embedded"),
    ("test_zero_signal", "algorithms"),
)
"""A test file at tests/ not named in TEST_FOLDERS (a branch's new test) goes by its name."""


def _tests() -> dict[str, str]:
    out = {t: f"{folder}.{t}" for folder, ts in TEST_FOLDERS.items() for t in ts}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        folder = next((f for pre, f in TEST_PREFIXES if path.stem.startswith(pre)), None)
        if folder and path.stem not in out:
            out[path.stem] = f"{folder}.{path.stem}"
    return out


TESTS: dict[str, str] = _tests()

# Content fixups applied to a file when it is moved (old text -> new text, exact).
FIXUPS: dict[str, list[tuple[str, str]]] = {
    "spo_train/embedded/defaults.py": [
        (
            'Path(__file__).resolve().parent / "embedded" / "assets"',
            'Path(__file__).resolve().parent / "assets"',
        )
    ],
}
TEST_FIXUPS: list[tuple[str, str]] = [
    # one folder deeper: the repo root and tests/fixtures are one level further up
    ("Path(__file__).resolve().parents[1]", "Path(__file__).resolve().parents[2]"),
    ("Path(__file__).parents[1]", "Path(__file__).parents[2]"),
    ("Path(__file__).resolve().parent / ", "Path(__file__).resolve().parents[1] / "),
    ("Path(__file__).parent / ", "Path(__file__).parents[1] / "),
]

TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".ini", ".yml", ".yaml", ""}
SKIP = (SELF, "tests/fixtures/", "spo_train/embedded/assets/")
"""Not rewritten (the fixtures are data written by older releases), but their .md notes are."""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, check=check, capture_output=True, text=True)


def module_file(dotted: str, init: bool = False) -> Path:
    parts = dotted.split(".")
    if init:
        return Path("spo_train", *parts, "__init__.py")
    return Path("spo_train", *parts[:-1], parts[-1] + ".py")


def test_file(dotted: str) -> Path:
    return Path("tests", *dotted.split(".")[:-1], dotted.split(".")[-1] + ".py")


def moves() -> list[tuple[Path, Path, list[tuple[str, str]]]]:
    out = []
    for old, new in MODULES.items():
        dst = module_file(new)
        out.append((module_file(old), dst, FIXUPS.get(dst.as_posix(), [])))
    for old, new in PACKAGE_INITS.items():
        out.append((module_file(old), module_file(new, init=True), []))
    for old, new in TESTS.items():
        out.append((test_file(old), test_file(new), TEST_FIXUPS))
    return out


def ensure_packages(check: bool) -> list[str]:
    todo = []
    for new in MODULES.values():
        pkg = new.rsplit(".", 1)[0]
        init = ROOT / "spo_train" / pkg.replace(".", "/") / "__init__.py"
        if not init.exists():
            todo.append(init.relative_to(ROOT).as_posix())
            if not check:
                init.parent.mkdir(parents=True, exist_ok=True)
                doc = PACKAGE_DOCS.get(pkg, f"spo_train.{pkg}.")
                init.write_text(f'"""{doc}"""\n')
                sh("git", "add", str(init))
    for folder in TEST_FOLDERS:
        init = ROOT / "tests" / folder / "__init__.py"
        if not init.exists():
            todo.append(init.relative_to(ROOT).as_posix())
            if not check:
                init.parent.mkdir(parents=True, exist_ok=True)
                init.write_text("")
                sh("git", "add", str(init))
    return todo


def do_moves(check: bool) -> list[str]:
    todo = []
    for src, dst, fixups in moves():
        s, d = ROOT / src, ROOT / dst
        if not s.exists():
            continue
        if d.exists():
            sys.exit(f"both {src} and {dst} exist: merge them by hand, then run this again")
        todo.append(f"{src} -> {dst}")
        if check:
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        sh("git", "mv", str(src), str(dst))
        text = d.read_text()
        for a, b in fixups:
            text = text.replace(a, b)
        d.write_text(text)
    return todo


# ----------------------------------------------------------------------------- rewriting
def _dotted_map() -> dict[str, str]:
    m = {f"spo_train.{o}": f"spo_train.{n}" for o, n in MODULES.items()}
    m |= {f"tests.{o}": f"tests.{n}" for o, n in TESTS.items()}
    return m


def _path_map() -> dict[str, str]:
    m = {module_file(o).as_posix(): module_file(n).as_posix() for o, n in MODULES.items()}
    m |= {
        module_file(o).as_posix(): module_file(n, init=True).as_posix()
        for o, n in PACKAGE_INITS.items()
    }
    m |= {test_file(o).as_posix(): test_file(n).as_posix() for o, n in TESTS.items()}
    return m


DOTTED = _dotted_map()
PATHS = _path_map()
_DOTTED_RE = re.compile(
    r"(?<![\w.])("
    + "|".join(re.escape(k) for k in sorted(DOTTED, key=len, reverse=True))
    + r")(?!\w)"
)
_PATH_RE = re.compile(
    r"(?<![\w./])(" + "|".join(re.escape(k) for k in sorted(PATHS, key=len, reverse=True)) + r")"
)
# `from spo_train import a, b as c` / `from tests import x` (one line or parenthesised)
_FROM_RE = re.compile(
    r"^(?P<indent>[ \t]*)from (?P<pkg>spo_train|tests) import "
    r"(?P<names>\([^)]*\)|[^\n#]*?)(?P<comment>[ \t]*#[^\n]*)?$",
    re.M,
)


def _rewrite_from(m: re.Match) -> str:
    pkg, indent = m.group("pkg"), m.group("indent")
    table = MODULES if pkg == "spo_train" else TESTS
    items = [x.strip() for x in m.group("names").strip("()").replace("\n", " ").split(",")]
    items = [x for x in items if x and not x.startswith("#")]
    if not any(i.split(" as ")[0].strip() in table for i in items):
        return m.group(0)
    groups: dict[str, list[str]] = {}
    for item in items:
        name, _, alias = (p.strip() for p in item.partition(" as "))
        new = table.get(name)
        if new is None:
            groups.setdefault(pkg, []).append(item)
            continue
        parent, base = f"{pkg}.{new}".rsplit(".", 1)
        bound = alias or name
        groups.setdefault(parent, []).append(base if base == bound else f"{base} as {bound}")
    comment = m.group("comment") or ""
    lines = [f"{indent}from {p} import {', '.join(ns)}" for p, ns in groups.items()]
    lines[0] += comment
    return "\n".join(lines)


# Fixtures that tests imported from other test modules and that live in tests/conftest.py now
# (pytest finds them there; importing them made a session fixture per importing module).
CONFTEST_FIXTURES = {"tiny_model", "tiny_model_b", "small_lake"}
CONFTEST_NAMES = {"PROBLEMS": "PROBLEMS", "_generator": "make_generator"}
_FIXTURE_IMPORT_RE = re.compile(
    r"^(?P<indent>[ \t]*)from tests\.(?:\w+\.)?(?:test_pipeline|test_q0_estimates) import "
    r"(?P<names>[^\n#(]*?)(?:[ \t]*#[^\n]*)?\n",
    re.M,
)


def _rewrite_fixture_import(m: re.Match) -> str:
    names = [n.strip() for n in m.group("names").split(",") if n.strip()]
    if not names or not set(names) <= CONFTEST_FIXTURES | set(CONFTEST_NAMES):
        return m.group(0)
    kept = sorted(CONFTEST_NAMES[n] for n in names if n in CONFTEST_NAMES)
    return f"{m.group('indent')}from tests.conftest import {', '.join(kept)}\n" if kept else ""


def rewrite_fixtures(text: str) -> str:
    new = _FIXTURE_IMPORT_RE.sub(_rewrite_fixture_import, text)
    if new != text and re.search(
        r"^\s*from tests\.conftest import .*\bmake_generator\b", new, re.M
    ):
        new = re.sub(r"(?<![\w.])_generator\(", "make_generator(", new)
    return new


def rewrite_text(text: str) -> str:
    text = rewrite_fixtures(text)
    text = _FROM_RE.sub(_rewrite_from, text)
    text = _DOTTED_RE.sub(lambda m: DOTTED[m.group(1)], text)
    return _PATH_RE.sub(lambda m: PATHS[m.group(1)], text)


def rewrite_files(check: bool) -> list[str]:
    changed = []
    for rel in sh("git", "ls-files").stdout.splitlines():
        if (
            rel.startswith(SKIP)
            and not rel.endswith(".md")
            or Path(rel).suffix not in TEXT_SUFFIXES
        ):
            continue
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite_text(text)
        if new != text:
            changed.append(rel)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed


def list_packages(check: bool) -> bool:
    """pyproject's `packages`: every folder with an __init__.py under each package-dir."""
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    import tomllib

    setup = tomllib.loads(text)["tool"]["setuptools"]
    found = []
    for top, folder in setup["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            found.append(".".join([top, *rel.parts]))
    order = list(setup["package-dir"])
    found.sort(key=lambda n: (order.index(n.split(".")[0]), n))
    if set(found) == set(setup["packages"]):
        return False
    if not check:
        body = "".join(f'    "{n}",\n' for n in found)
        text = re.sub(r"packages = \[\n(?:    \"[^\"]+\",\n)+\]", f"packages = [\n{body}]", text)
        pyproject.write_text(text)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report what is left; change nothing")
    check = ap.parse_args().check
    todo = do_moves(check) + ensure_packages(check)
    changed = rewrite_files(check)
    packages = list_packages(check)
    for line in todo:
        print("move", line)
    for rel in changed:
        print("rewrite", rel)
    if packages:
        print("list packages in pyproject.toml")
    if check:
        return 1 if (todo or changed or packages) else 0
    py = [c for c in changed if c.endswith(".py")] + [
        d.split(" -> ")[1] for d in todo if d.endswith(".py") and " -> " in d
    ]
    py = sorted({p for p in py if (ROOT / p).exists()})
    if py:
        ruff = [sys.executable, "-m", "ruff"]
        sh(*ruff, "check", "--fix", "--select", "I", "-q", *py, check=False)
        sh(*ruff, "format", "-q", *py, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
