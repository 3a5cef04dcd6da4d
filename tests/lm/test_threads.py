"""Thread counts (issue 10, item 3): every generating command loads its model through
`load_model_and_tokenizer`, which sets torch's threads in one place: `spo --threads N`, else
`$OMP_NUM_THREADS`, else 1 for a model under 100M parameters (the embedded pi_0), else every
available core (BENCHMARKS.md, "Threads")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spo_store.errors import SpoError
from spo_train.lm.models import SMALL_MODEL_PARAMS, available_cores, choose_threads

PROBE = (
    "import torch; from spo_train.lm.models import load_model_and_tokenizer; "
    "torch.set_num_threads(2); load_model_and_tokenizer(None); print(torch.get_num_threads())"
)


def threads_after_load(**env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SPO_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_choice_and_precedence(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SPO_THREADS", raising=False)
    assert choose_threads(1_400_000)[0] == 1
    assert choose_threads(SMALL_MODEL_PARAMS) == (available_cores(), "available cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(1_400_000) == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("SPO_THREADS", "2")
    assert choose_threads(10**10) == (2, "SPO_THREADS")
    monkeypatch.setenv("SPO_THREADS", "0")
    with pytest.raises(SpoError, match=r"\$SPO_THREADS='0': expected a positive number"):
        choose_threads(1)


def test_loading_the_embedded_model_sets_one_thread_unless_told():
    assert threads_after_load() == 1  # 1.4M parameters
    assert threads_after_load(OMP_NUM_THREADS="2") == 2
    assert threads_after_load(SPO_THREADS="3", OMP_NUM_THREADS="2") == 3


def test_threads_option_is_checked_and_reaches_the_command():
    bad = subprocess.run(["spo", "--threads", "0", "version"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads 0: must be at least 1" in bad.stderr
    # `spo --threads N` sets $SPO_THREADS for the command, which model loading reads.
    code = (
        "import os, sys; from spo_cli.main import app, main; "
        "app.command('probe')(lambda: print('SPO_THREADS=' + os.environ['SPO_THREADS'])); "
        "main(['--threads', '2', 'probe'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "SPO_THREADS=2" in out.stdout
