"""Warm sandboxes (issue 23 item 4): one sandbox serves program after program, and nothing of
one program reaches the next, nor its tests the program driver.

Each program's driver is a fresh fork of the sandbox's PID 1, which never reads a program or an
input; each test a fresh fork of that driver (docs/judge.md, "Warm sandboxes").
"""

from __future__ import annotations

import threading
import uuid

import pytest

from spo_train.judge import JudgeJob, judge, judge_batch, verdict_reward
from spo_train.judge import sandbox as _sb
from tests.conftest import needs_sandbox

pytestmark = [
    needs_sandbox,
    pytest.mark.skipif(not _sb.warm_sandboxes_enabled(), reason="warm sandboxes are off here"),
]


def _idle_programs() -> list[int]:
    """How many programs each idle warm sandbox has served."""
    with _sb._warm_lock:
        return sorted(b.programs for idle in _sb._warm_idle.values() for b in idle)


@pytest.fixture
def one_warm_sandbox():
    """Start from no idle sandbox, so that consecutive `judge` calls share one."""
    _sb.close_warm_sandboxes()
    yield
    _sb.close_warm_sandboxes()


def test_programs_share_one_sandbox_and_the_way_back(one_warm_sandbox, monkeypatch):
    for i in range(3):
        assert judge(f"print({i})", [("", str(i))]).passed
    assert _idle_programs() == [3]  # one sandbox served all three
    monkeypatch.setenv("SPO_JUDGE_WARM", "0")  # the way back: a sandbox per program
    assert judge("print(7)", [("", "7")]).passed
    assert _idle_programs() == [3]


# Searches the test's own memory for a word of an earlier program's source or input. The word
# is given swapped in case, so that the only copies of it in memory are the program's own (the
# snapshot is taken before anything is swapped back).
SCAN = r"""
import ctypes, re, sys
want = sys.stdin.readline().strip().encode()
regions = []
for line in open('/proc/self/maps'):
    m = re.match(r'([0-9a-f]+)-([0-9a-f]+) r\S* \S+ \S+ \S+\s*(\S*)$', line)
    if m and m[3] in ('', '[heap]', '[stack]'):  # where a process keeps its data
        regions.append((int(m[1], 16), int(m[2], 16)))
snapshot = []
for lo, hi in regions:
    try:
        snapshot.append(ctypes.string_at(lo, hi - lo))
    except Exception:
        pass
swap = bytes.maketrans(
    b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ',
    b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz',
)
found = sum(chunk.translate(swap).count(want) for chunk in snapshot)
print('found', found, 'in', sum(map(len, snapshot)) >> 20, 'MiB')
"""


def test_an_earlier_program_and_its_inputs_are_not_in_memory(one_warm_sandbox):
    secret = "zq" + uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))
    # The first program holds the secret in its source and reads it as its input.
    first = f"# {secret}\nword = input()\nprint(word == {secret!r})\n"
    assert judge(first, [(secret, "True"), (secret, "True")]).passed
    swapped = secret.swapcase()
    v = judge(SCAN, [(swapped, "found 0")], stop_on_first_failure=False)
    assert _idle_programs() == [2]  # the same sandbox
    assert v.tests[0].stdout.startswith("found 0 in"), v.tests[0].stdout + v.tests[0].stderr
    # The scan does find what its own process holds: the same program with its input in it.
    own = SCAN.replace("want = sys.stdin", f"# {secret}\nwant = sys.stdin")
    v = judge(own, [(swapped, "x")], stop_on_first_failure=False)
    assert not v.tests[0].stdout.startswith("found 0 "), v.tests[0].stdout


LEAVE = """
import os, subprocess, sys, math, ctypes, time
open('/tmp/left.txt', 'w').write('x')
open('left-in-work.txt', 'w').write('x')
math.leaked = 1
os.environ['LEAKED'] = '1'
if os.fork() == 0:  # a daemon that outlives the test, if it could
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# System V memory (allowed with cgroups: it is counted) and a POSIX message queue, a keyring key
shm = libc.shmget(0x5EC0, 4096, 0o1666)
mq = libc.syscall(240, b'/spo-left', 0o102, 0o600, None)  # mq_open(O_RDWR|O_CREAT)
key = libc.syscall(248, b'user', b'spo-left', b'x', 1, -3)  # add_key into the user keyring
print('mq', mq, 'key', key)
"""

LOOK = """
import os, math, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
print(sorted(os.listdir('/tmp')), sorted(os.listdir('.')))
print(hasattr(math, 'leaked'), 'LEAKED' in os.environ)
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
      == sorted({1, os.getppid(), os.getpid()}))
print(libc.shmget(0x5EC0, 4096, 0o666) == -1)
print(libc.syscall(240, b'/spo-left', 2, 0, None) == -1)  # mq_open(O_RDWR) of the old one
"""


def test_nothing_an_earlier_program_left_is_there(one_warm_sandbox):
    v = judge(LEAVE, [("", "mq -1 key -1")])
    assert v.passed, v.tests[0].stdout + v.tests[0].stderr  # queues and keys are refused
    v = judge(LOOK, [("", "['work'] []\nFalse False\nTrue\nTrue\nTrue")])
    assert _idle_programs() == [2]
    assert v.passed, v.tests[0].stdout + v.tests[0].stderr


ATTACKS = {
    "SIGKILL to the parent": "os.kill(os.getppid(), signal.SIGKILL)",
    "SIGSTOP to the parent": "os.kill(os.getppid(), signal.SIGSTOP)",
    "SIGKILL to every process": "os.kill(-1, signal.SIGKILL)",
    "SIGKILL to the parent's group": "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "pidfd of the parent": "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 9)",
    "/proc dir as a pidfd": (
        "signal.pidfd_send_signal(os.open(f'/proc/{os.getppid()}', os.O_RDONLY), 9)"
    ),
    "tgkill": "libc.syscall(234, os.getppid(), os.getppid(), 9) == 0 or oops()",
    "tkill": "libc.syscall(200, os.getppid(), 9) == 0 or oops()",
    "rt_sigqueueinfo": "libc.syscall(129, os.getppid(), 9, bytes(128)) == 0 or oops()",
    "ptrace attach": "libc.ptrace(16, os.getppid(), 0, 0) == 0 or oops()",
    "its memory": "open(f'/proc/{os.getppid()}/mem', 'rb').read(1)",
    "its rlimits": "resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))",
    "its CPUs": "os.sched_setaffinity(os.getppid(), {0})",
    "its priority": "os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
    "a fork bomb": (
        "pids = []\nwhile True:\n    p = os.fork()\n    if p == 0:\n        time.sleep(60)\n"
        "    pids.append(p)"
    ),
}
ATTACK = """
import ctypes, os, resource, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def oops():
    raise OSError(ctypes.get_errno(), 'refused')
{attack}
"""


@pytest.mark.parametrize("name", ATTACKS)
def test_a_test_cannot_touch_its_program_driver(one_warm_sandbox, name):
    src = ATTACK.format(attack=ATTACKS[name])
    v = judge(src, [("", "x"), ("", "x")], stop_on_first_failure=False, time_limit_s=1.0)
    # Refused or survived: the program's own verdict, for both tests (the driver lived on).
    assert v.judged and len(v.tests) == 2, (v.status, v.detail)
    assert verdict_reward(v) == -1.0
    # and the sandbox serves the next program
    assert judge("print(5)", [("", "5")]).passed
    assert _idle_programs() == [2]


@pytest.mark.parametrize(
    "name", ["SIGKILL to the parent", "its rlimits", "SIGKILL to every process"]
)
def test_every_program_driver_of_a_sandbox_is_shielded(one_warm_sandbox, name):
    """PID 1 builds the filter once and each program driver writes its own pid into its copy:
    the second and third program drivers of a sandbox (other pids) are shielded too."""
    assert judge("print(1)", [("", "1")]).passed
    src = ATTACK.format(attack=ATTACKS[name])
    for _ in range(2):
        v = judge(src, [("", "x"), ("", "x")], stop_on_first_failure=False, time_limit_s=1.0)
        assert v.judged and len(v.tests) == 2, (v.status, v.detail)
        assert verdict_reward(v) == -1.0
    assert judge("print(5)", [("", "5")]).passed
    assert _idle_programs() == [4]


# What a test finds of its interpreter's state, then spoils: its stdio objects (built once
# before the forks and shared copy-on-write), the collector, a preloaded module.
STATE = """
import collections, gc, sys
print(sys.stdin.encoding, sys.stdin.errors, sys.stdout.encoding, sys.stdout.errors,
      sys.stderr.errors, sys.stdin.line_buffering, sys.stdout.line_buffering,
      sys.stderr.line_buffering, sys.stdin.seekable(), sys.stdout.seekable(),
      sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__, sys.stdin.tell(),
      sys.stdin.buffer.peek(1)[:1], gc.isenabled(), gc.get_freeze_count() > 0,
      hasattr(collections, 'spoiled'))
sys.stdout.flush()
sys.stdin.read()
sys.stdin.reconfigure(encoding='latin-1', errors='strict')
sys.stdout.reconfigure(encoding='ascii', errors='strict', line_buffering=True)
sys.stderr.reconfigure(errors='strict')
sys.stdout.write('unflushed')  # flushed at exit: this test's output, not the next one's
gc.disable()
gc.unfreeze()
collections.spoiled = True
"""


def test_stdio_and_interpreter_state_start_fresh_in_every_test(one_warm_sandbox):
    # what `python3 prog.py < file | cat` has: stdin a seekable file, stdout and stderr pipes
    fresh = "utf-8 surrogateescape utf-8 surrogateescape backslashreplace False False True"
    fresh += " True False True True 0 b'i' True True False"
    for program in range(2):  # a program's tests, and the next program of the sandbox
        v = judge(
            STATE + f"# {program}\n",
            [("input", fresh + "\nunflushed"), ("input 2", fresh + "\nunflushed")],
            stop_on_first_failure=False,
        )
        assert v.passed, [(t.stdout, t.stderr) for t in v.tests]
    assert _idle_programs() == [2]


MEMORY = "x = bytearray({mb} << 20)\nx[::4096] = b'1' * len(x[::4096])\nprint('ok')\n"


def test_each_program_gets_its_own_memory_limit(one_warm_sandbox):
    big = MEMORY.format(mb=100)
    assert judge(big, [("", "ok")], memory_limit_mb=64).status == "memory_limit"
    assert judge(big, [("", "ok")], memory_limit_mb=256).passed
    assert judge(big, [("", "ok")], memory_limit_mb=64).status == "memory_limit"
    assert _idle_programs() == [3]


def test_a_warm_sandbox_outlives_the_thread_that_started_it(one_warm_sandbox):
    # bwrap --die-with-parent follows the starting THREAD: a batch's worker threads end with
    # the batch, and the next batch must still find their sandboxes alive.
    worker = threading.Thread(target=lambda: judge("print(1)", [("", "1")]))
    worker.start()
    worker.join()
    assert judge("print(2)", [("", "2")]).passed
    assert _idle_programs() == [2]
    jobs = [JudgeJob("print(1)", [("", "1")])] * 4 + [JudgeJob("while 1: pass", [("", "")], 0.2)]
    for _ in range(3):
        assert [v.status for v in judge_batch(jobs, workers=2)] == ["ok"] * 4 + ["time_limit"]
    assert sum(_idle_programs()) == 2 + 15


def test_a_compile_error_or_an_early_stop_leaves_the_sandbox_reusable(one_warm_sandbox):
    assert judge("def (:", [("", "1")]).status == "compile_error"
    v = judge("print(0)", [("", "1"), ("", "0"), ("", "0")])  # stops at the first failure
    assert v.status == "wrong_answer" and len(v.tests) == 1
    assert judge("import sys\nsys.exit(3)", [("", "")]).status == "runtime_error"
    assert judge("print(4)", [("", "4")]).passed
    assert _idle_programs() == [4]


KINDS = [
    "import sys\nfor l in sys.stdin: print(l.strip())\n",
    "print(input()[::-1])\n",
    "x = bytearray(100 << 20)\nx[::4096] = b'1' * len(x[::4096])\nprint(input())\n",
    "while True: pass\n",
    "import sys\nsys.exit(2)\n",
    "raise ValueError('x')\n",
    "def (:\n",
    "import os\nif os.fork() == 0:\n    import time; time.sleep(5)\nprint(input())\n",
    "import threading\nt = threading.Thread(target=lambda: print(input()))\nt.start()\n",
    "import atexit\natexit.register(lambda: print(input()))\n",
    "import sys\nsys.stdout.write(input())\n",
    "open('/tmp/junk', 'w').write('x' * 1000)\nprint(input())\n",
]


def test_verdicts_are_those_of_a_sandbox_per_program(one_warm_sandbox, monkeypatch):
    jobs = [
        JudgeJob(
            f"# {i}\n{KINDS[i % len(KINDS)]}",
            [(f"t{i}x{t}", f"t{i}x{t}") for t in range(1 + i % 3)],
            time_limit_s=0.3,
            memory_limit_mb=(64, 256)[i % 2],
        )
        for i in range(2 * len(KINDS))
    ]

    def verdicts() -> list[tuple]:
        return [(v.status, v.passed_tests, v.judged) for v in judge_batch(jobs, workers=2)]

    warm = verdicts()
    monkeypatch.setenv("SPO_JUDGE_WARM", "0")
    assert verdicts() == warm
    assert {s for s, _, _ in warm} == {
        "ok",
        "wrong_answer",
        "runtime_error",
        "compile_error",
        "time_limit",
        "memory_limit",
    }
