"""A verdict no program can bend (issue 19 items 1-5), through the real sandbox and `spo judge`.

1. Whatever a program does to its files, directories or limits is its own verdict, never
   "not judged": every test starts in a fresh working directory the previous one never saw.
2. Limits count everything a test uses (all processes, threads, shared memory, tmpfs).
3. A verdict does not depend on how busy the machine is.
4. What the platform's runtime gives a program (LeetCode's imports, no int/str digit limit).
5. What a correct program may use (threads at the default memory limit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spo_train.judge import judge, verdict_reward
from spo_train.judge import sandbox as _sb
from spo_train.judge.sandbox import run_program
from tests.conftest import needs_sandbox

pytestmark = needs_sandbox
SPO = str(Path(sys.executable).with_name("spo"))
needs_cgroups = pytest.mark.skipif(
    _sb._cgroup_dirs() is None, reason="no per-test cgroups here (not root, or no cgroup v1)"
)

# A correct answer for input-file tests ("a b" -> a + b) that also checks it starts clean.
ANSWER_CLEAN = """
import os
assert os.getcwd() == '/tmp/work', os.getcwd()
assert sorted(os.listdir('.')) == ['input.txt'], os.listdir('.')
assert sorted(os.listdir('/tmp')) == ['work'], os.listdir('/tmp')
assert os.listxattr('/tmp') == [] and os.listxattr('.') == [], os.listxattr('/tmp')
assert os.stat('/tmp').st_mtime < 3e9 and os.stat('/tmp').st_atime < 3e9, os.stat('/tmp')
a, b = map(int, open('input.txt').read().split())
print(a + b)
"""
FILE_TESTS = [("1 2", "3"), ("3 4", "7"), ("10 20", "30")]

# Each leaves something behind after answering (the kinds a policy could find).
LEFTOVERS = {
    "undeletable dir where the next input goes": """
os.remove('input.txt')
os.makedirs('input.txt/a/b')
open('input.txt/a/b/f', 'w').write('x')
for d in ('input.txt/a/b', 'input.txt/a', 'input.txt'):
    os.chmod(d, 0)
""",
    "its working directory made unreadable": "os.chmod('.', 0)\n",
    "/tmp made read-only and unreadable": (
        "open('/tmp/junk', 'w').write('x')\nos.chmod('/tmp', 0o100)\n"
    ),
    "a deep tree of mode-0 directories filling /tmp": """
os.chdir('/tmp')
for i in range(3000):
    os.mkdir('d')
    os.chdir('d')
os.chdir('/tmp')
p = 'd'
for i in range(50):
    os.chmod(p, 0o300)
    p += '/d'
""",
    "the working directory swapped for a symlink": """
os.chdir('/tmp')
os.rename('work', 'old')
os.symlink('/dev/null', 'work')
os.mkfifo('/tmp/fifo')
""",
    "/tmp filled to the brim": """
try:
    for k in range(100):
        with open(f'/tmp/big{k}', 'wb') as f:
            for i in range(16):
                f.write(b'x' * (1 << 20))
except OSError:  # no space left
    pass
""",
    "extended attributes, a default ACL and future times on /tmp": """
import struct
acl = struct.pack('<I', 2) + b''.join(  # user rwx, group and others nothing
    struct.pack('<HHI', tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 7), (4, 0), (0x20, 0))
)
os.setxattr('/tmp', 'system.posix_acl_default', acl)  # the next /tmp/work would inherit it
os.setxattr('/tmp', 'user.note', b'from an earlier test')
os.utime('/tmp', (4e9, 4e9))
""",
    "a System V shared memory segment": """
import ctypes
libc = ctypes.CDLL(None)
libc.shmget(0x5370, 1 << 20, 0o1600)  # refused (-1) without cgroups: nothing to leave
""",
}


def _leaves(leftover: str) -> str:
    """Answers correctly, checking it starts clean, then leaves `leftover` behind."""
    check_ipc = "assert len(open('/proc/sysvipc/shm').readlines()) == 1, 'shm left over'\n"
    return ANSWER_CLEAN + check_ipc + "import sys\nsys.stdout.flush()\n" + leftover


@pytest.mark.parametrize("kind", list(LEFTOVERS))
def test_leftovers_never_reach_the_next_test(kind):
    v = judge(_leaves(LEFTOVERS[kind]), FILE_TESTS, input_file="input.txt", time_limit_s=2)
    assert v.passed and v.judged, (v.status, v.detail, [t.stderr for t in v.tests])
    assert verdict_reward(v) == 0.0


# A correct program that also leaves its answer in the sandbox's network namespace (a TIME_WAIT
# connection per byte, from an address named by the input), and a wrong one that reads it back
# from /proc/net/tcp: with one network namespace per warm sandbox the reader passed (10 of 10).
_NET_CHANNEL = r"""
import socket, zlib
def addr(key):
    h = zlib.crc32(key.encode()) & 0xffffff
    return '127.%d.%d.%d' % (h >> 16, (h >> 8) & 255, max(2, h & 255))
def publish(msg, key, base=20000):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(('127.0.0.1', 0)); srv.listen(64); port = srv.getsockname()[1]
    for i, ch in enumerate(msg.encode()):
        c = socket.socket(); c.bind((addr(key), base + i * 256 + ch))
        c.connect(('127.0.0.1', port)); a, _ = srv.accept(); c.close(); a.close()
def read(key, base=20000):
    hexa = ''.join('%02X' % int(x) for x in reversed(addr(key).split('.')))
    ports = []
    for line in open('/proc/net/tcp').read().splitlines()[1:]:
        f = line.split(); ip, p = f[1].split(':'); lp = int(p, 16)
        if ip == hexa and f[3] == '06' and base <= lp < base + 256 * 64:
            ports.append(lp - base)
    return bytes(p % 256 for p in sorted(ports)).decode(errors='replace')
a, b = map(int, input().split())
"""


def test_no_network_state_passes_from_program_to_program_or_test_to_test():
    from spo_train.judge import JudgeJob, judge_batch

    tests = [("12345 67890\n", "80235\n")]
    writer = _NET_CHANNEL + "print(a + b)\npublish(str(a + b), '%d %d' % (a, b))\n"
    reader = _NET_CHANNEL + "print(read('%d %d' % (a, b)) or 0)\n"
    for _ in range(2):  # one warm sandbox (one worker): the reader right after the writer
        jobs = [JudgeJob(source=writer, tests=tests), JudgeJob(source=reader, tests=tests)]
        w, r = judge_batch(jobs, workers=1)
        assert "PermissionError" in w.tests[0].stderr, w.tests[0].stderr  # no inet socket
        assert r.status == "wrong_answer", (r.status, r.tests[0].stdout)
    # AF_UNIX stays: socketpair, and asyncio (whose event loop makes one)
    src = "import socket, asyncio\na, b = socket.socketpair()\na.send(b'7')\n"
    src += "print(b.recv(1).decode(), asyncio.run(asyncio.sleep(0, 'ok')))\n"
    assert judge(src, [("", "7 ok\n")]).status == "ok"
    for family in ("AF_INET6, socket.SOCK_DGRAM", "AF_NETLINK, socket.SOCK_RAW"):
        v = judge(f"import socket\nsocket.socket(socket.{family})\n", [("", "")])
        assert v.status == "runtime_error" and "PermissionError" in v.tests[0].stderr


def test_leftovers_through_the_cli(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(_leaves(LEFTOVERS["undeletable dir where the next input goes"]))
    tests = tmp_path / "t.json"
    tests.write_text(json.dumps([{"input": i, "output": o} for i, o in FILE_TESTS]))
    res = subprocess.run(
        [SPO, "judge", str(prog), "--tests", str(tests), "--input-file", "input.txt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "PASSED 3/3" in res.stdout, res.stdout + res.stderr


def test_a_wrong_program_that_leaves_junk_is_still_judged_wrong():
    src = _leaves(LEFTOVERS["undeletable dir where the next input goes"]).replace(
        "print(a + b)", "print(a + b + (a == 3))"
    )
    v = judge(src, FILE_TESTS, input_file="input.txt")
    assert v.judged and v.status == "wrong_answer" and v.passed_tests == 1


# A checker that parses the output carelessly (testlib's readers would say WA/PE) must not let
# garbage output turn a failure into "not judged" (checker_error, reward NULL).
SLOPPY_CHECKER = """
import sys
a, b = map(int, open(sys.argv[1]).read().split())
got = int(open(sys.argv[2]).read())  # raises on garbage, hangs on nothing
i = 0
while i < got:
    i += 1
sys.exit(0 if got == a + b else 1)
"""


@pytest.mark.parametrize(
    "output",
    ["print('I refuse')", "print('7 7')", "import os; os.close(1)", "print(10 ** 9)"],
    ids=["a word", "two numbers", "nothing", "a number that makes the checker loop"],
)
def test_output_that_breaks_the_checker_is_a_wrong_answer(monkeypatch, output):
    from spo_train import judge as judge_mod

    monkeypatch.setattr(judge_mod, "CHECKER_TIME_LIMIT_S", 0.5)  # the looping case
    v = judge(output, [("1 2", "3"), ("3 4", "7")], checker=SLOPPY_CHECKER)
    assert (v.status, v.judged, verdict_reward(v)) == ("wrong_answer", True, -1.0), (
        v.status,
        v.detail,
    )
    assert "accepts the reference answer" in v.tests[0].checker_message
    # The same checker still judges a right answer right.
    v = judge(
        "a, b = map(int, input().split())\nprint(a + b)", [("1 2", "3")], checker=SLOPPY_CHECKER
    )
    assert v.passed


def test_a_checker_broken_on_the_reference_answer_stays_not_judged(tmp_path):
    checker = tmp_path / "chk.py"
    checker.write_text("import sys\nsys.exit(0 if open(sys.argv[3]).read() == 'x' else 3)\n")
    prog = tmp_path / "prog.py"
    prog.write_text("print('I refuse')\n")
    tests = tmp_path / "t.json"
    tests.write_text(json.dumps([{"input": "1 2", "output": "3"}]))
    argv = [SPO, "judge", str(prog), "--tests", str(tests), "--checker", str(checker)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "NOT JUDGED (checker_error)" in res.stdout, res.stdout
    checker.write_text(SLOPPY_CHECKER)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "FAILED (wrong_answer)" in res.stdout, res.stdout


# The driver (PID 1) shares the program's uid: what same-uid processes may do to each other
# (resource limits, scheduling, priority) must not make the driver fail.
AGAINST_THE_DRIVER = {
    "prlimit NPROC": "import resource\nresource.prlimit(1, resource.RLIMIT_NPROC, (1, 1))",
    "prlimit FSIZE": "import resource\nresource.prlimit(1, resource.RLIMIT_FSIZE, (1, 1))",
    "prlimit NOFILE": "import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (4, 4))",
    "prlimit CPU": "import resource\nresource.prlimit(1, resource.RLIMIT_CPU, (1, 1))",
    "prlimit AS": "import resource\nresource.prlimit(1, resource.RLIMIT_AS, (1 << 20, 1 << 20))",
    "affinity": "import os\nos.sched_setaffinity(1, {0})",
    "SCHED_IDLE": "import os\nos.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))",
    "nice of the whole user": "import os\nos.setpriority(os.PRIO_USER, 0, 19)",
    "nice of the driver's group": "import os\nos.setpriority(os.PRIO_PGRP, 1, 19)",
}


@pytest.mark.parametrize("attack", list(AGAINST_THE_DRIVER))
def test_the_driver_cannot_be_changed_by_the_program(attack):
    # Refused (EPERM): the program's own runtime error, judged; caught, the program goes on
    # and passes every test.
    src = AGAINST_THE_DRIVER[attack] + "\nprint(1)\n"
    v = judge(src, [("", "1")] * 3)
    assert v.judged and v.status == "runtime_error", (v.status, v.detail)
    assert "PermissionError" in v.tests[0].stderr
    body = "\n".join("    " + line for line in AGAINST_THE_DRIVER[attack].splitlines())
    caught = f"try:\n{body}\nexcept OSError:\n    pass\nprint(1)\n"
    v = judge(caught, [("", "1")] * 3)
    assert v.passed and v.judged, (v.status, v.detail)


# Both ways a test is counted: per-session cgroups (root on cgroup v1), and without them
# (not root, cgroup v2, SPO_JUDGE_CGROUPS=0) the driver summing every process of the sandbox
# and its tmpfs, with memfd_create and shmget refused.
ACCOUNTING_MODES = [pytest.param("cgroups", marks=needs_cgroups), "no cgroups"]


@pytest.fixture
def accounting(request, monkeypatch):
    if request.param == "no cgroups":
        monkeypatch.setattr(_sb, "_cgroup_dirs", lambda: None)
    return request.param


SIGNALS_TO_THE_DRIVER = ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGALRM", "SIGCHLD"]


@pytest.mark.parametrize("accounting", ACCOUNTING_MODES, indirect=True)
def test_signals_to_the_driver_do_not_reach_it(accounting):
    # The kernel lets a namespace's processes signal its init only for signals init handles:
    # the interpreter's SIGINT handler made `os.kill(1, SIGINT)` a KeyboardInterrupt in the
    # driver, so a wrong program got "not judged" (sandbox_error, reward NULL).
    sends = "".join(f"os.kill(1, signal.{name})\n" for name in SIGNALS_TO_THE_DRIVER)
    src = "import os, signal\n" + sends + "print(int(input()) + 1)\n"
    v = judge(src, [("1", "1"), ("2", "2")], stop_on_first_failure=False)
    assert (v.status, v.judged, verdict_reward(v)) == ("wrong_answer", True, -1.0), v.detail
    assert [t.status for t in v.tests] == ["wrong_answer"] * 2
    # ... and the program keeps CPython's own SIGINT behaviour (KeyboardInterrupt).
    src = "import os, signal\ntry:\n    os.kill(os.getpid(), signal.SIGINT)\n"
    src += "except KeyboardInterrupt:\n    print(1)\n"
    assert judge(src, [("", "1")]).passed


# ------------------------------------------------------------------ 2. limits count everything

MEMORY_WAYS = {
    "memfd": """
import os
m = os.memfd_create('x')
for i in range(2048):
    os.write(m, b'x' * (1 << 20))
""",
    "many memfds under the file size limit": """
import os
fds = []
for k in range(40):
    fds.append(os.memfd_create('x'))
    for i in range(60):
        os.write(fds[-1], b'x' * (1 << 20))
""",
    "anonymous MAP_SHARED": """
import mmap
m = mmap.mmap(-1, 2 << 30, flags=mmap.MAP_SHARED)
for i in range(0, 2 << 30, 4096):
    m[i] = 1
""",
    "System V shared memory": """
import ctypes
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
seg = libc.shmget(0, 1 << 30, 0o1600)
ctypes.memset(libc.shmat(seg, None, 0), 1, 1 << 30)
""",
    "files in the tmpfs /tmp": """
for k in range(60):
    open(f'/tmp/f{k}', 'wb').write(b'x' * (1 << 20))
""",
    "fork: children holding memory": """
import os
for k in range(8):
    if os.fork() == 0:
        b = bytearray(30 << 20)
        import time
        time.sleep(5)
        os._exit(0)
os.wait()
""",
    "fork+exec: a fresh interpreter holding memory": """
import subprocess, sys
subprocess.run([sys.executable, '-c', 'b = bytearray(200 << 20)'], check=True)
""",
    "fork: children sharing a MAP_SHARED mapping each": """
import mmap, os
for k in range(8):
    if os.fork() == 0:
        m = mmap.mmap(-1, 24 << 20, flags=mmap.MAP_SHARED)
        m.write(b'x' * (24 << 20))
        import time
        time.sleep(5)
        os._exit(0)
os.wait()
""",
    "threads holding memory": """
import threading
held = []
ts = [threading.Thread(target=lambda: held.append(bytearray(30 << 20))) for _ in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
""",
    "kernel memory: 300k empty files": """
import os
os.chdir('/tmp')
for i in range(300000):
    os.close(os.open(f'{i:0>200}', os.O_CREAT | os.O_WRONLY))
""",
}


@pytest.mark.parametrize("accounting", ACCOUNTING_MODES, indirect=True)
@pytest.mark.parametrize("way", list(MEMORY_WAYS))
def test_memory_is_counted_every_way(way, accounting):
    r = run_program(MEMORY_WAYS[way] + "print('held')\n", "", memory_limit_mb=32, time_limit_s=5)
    if accounting == "cgroups":
        assert r.status in ("memory_limit", "runtime_error"), (r.status, r.stderr[-300:])
        assert r.status == "memory_limit" or way == "files in the tmpfs /tmp", r.stderr[-300:]
        return
    # Without cgroups the memory is counted (memory_limit), or never given: memfd_create and
    # shmget are refused, RLIMIT_AS refuses one process's allocation (a MemoryError a thread
    # may swallow: then 'held' is printed, but nothing was held).
    refused = ("PermissionError", "MemoryError", "OSError", "CalledProcessError")
    segv = way == "System V shared memory" and r.signal == 11  # shmat of shmget's -1
    assert r.status == "memory_limit" or segv or any(e in r.stderr for e in refused), (
        r.status,
        r.stderr[-300:],
    )


@pytest.mark.parametrize("accounting", ACCOUNTING_MODES, indirect=True)
def test_tmpfs_files_written_between_two_polls_are_counted(accounting):
    # Files in /tmp written and left in a few ms: without cgroups the driver sums usage every
    # 20 ms and read nothing before the exit (CI: 'ok' at a 32 MiB limit with 60 MiB held);
    # the files still there at the exit count. (Cgroups allow 16 MiB of interpreter on top.)
    mib = 6 if accounting == "no cgroups" else 24
    src = "b = b'x' * (1 << 20)\nwith open('/tmp/f', 'wb') as f:\n"
    src += f"    for i in range({mib}):\n        f.write(b)\nprint('held')\n"
    for _ in range(3):
        r = run_program(src, "", memory_limit_mb=4, time_limit_s=5)
        assert r.status in ("memory_limit", "runtime_error"), (r.status, r.stderr[-300:])
        assert r.status == "memory_limit" or accounting == "cgroups", r.stderr[-300:]


def test_without_cgroups_uncounted_shared_memory_is_refused(monkeypatch):
    monkeypatch.setattr(_sb, "_cgroup_dirs", lambda: None)
    src = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.shmget(0, 4096, 0o1600), ctypes.get_errno())\n"
        "try:\n    os.memfd_create('x')\nexcept PermissionError:\n    print('refused')\n"
        "import signal\n"
        "try:\n    signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "except PermissionError:\n    print('refused')\n"
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"  # other signals stay the program's
        "print(signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL)\n"
    )
    r = run_program(src, "")
    if os.uname().machine == "x86_64":  # the seccomp filter is x86-64's
        assert r.status == "ok", r
        assert r.stdout.split() == ["-1", "1", "refused", "refused", "True"], r


CPU_WAYS = {
    "20 forked spinning children": """
import os
for i in range(20):
    if os.fork() == 0:
        while True:
            pass
while True:
    pass
""",
    "children that spin and exit before the parent looks": """
import os, time
for i in range(6):
    if os.fork() == 0:
        t = time.process_time()
        while time.process_time() - t < 0.4:
            pass
        os._exit(0)
for i in range(6):
    os.wait()
""",
    "fork+exec interpreters spinning, detached": """
import subprocess, sys
for i in range(4):
    subprocess.Popen([sys.executable, '-c', 'while True: pass'], start_new_session=True)
import time
time.sleep(30)
""",
    "short children reaped by the kernel (SIGCHLD ignored)": """
import os, signal, time
try:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # refused without cgroups (see docs)
except OSError:
    pass
while True:
    try:
        if os.fork() == 0:
            t = time.process_time()
            while time.process_time() - t < 0.015:
                pass
            os._exit(0)
    except BlockingIOError:  # too many zombies: reap them
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    time.sleep(0.005)
""",
    "threads of a forked child": """
import os, threading
if os.fork() == 0:
    def spin():
        while True:
            pass
    threading.Thread(target=spin).start()
    spin()
os.wait()
""",
}


@pytest.mark.parametrize("accounting", ACCOUNTING_MODES, indirect=True)
@pytest.mark.parametrize("way", list(CPU_WAYS))
def test_cpu_of_every_process_is_counted(way, accounting):
    # A short limit: on a loaded machine the sandbox's processes share one scheduling group,
    # and a limit they cannot reach within the wall bound would make the test "not judged".
    r = run_program(CPU_WAYS[way], "", time_limit_s=0.3)
    assert r.status == "time_limit", (r.status, r.cpu_s, r.stderr[-300:])
    assert r.cpu_s >= 0.3


@needs_cgroups
def test_memory_limit_through_the_cli(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(MEMORY_WAYS["memfd"] + "print(3)\n")
    tests = tmp_path / "t.json"
    tests.write_text(json.dumps([{"input": "", "output": "3"}]))
    res = subprocess.run(
        [SPO, "judge", str(prog), "--tests", str(tests), "--memory-limit", "32"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "FAILED (memory_limit)" in res.stdout, res.stdout


# ------------------------------------------------------------------ 3. a busy machine

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}:\n    pass\n"


STARVED_JUDGE = """
import os, sys
from spo_train.judge.sandbox import ensure_sandbox
ensure_sandbox()
os.sched_setaffinity(0, {0})
from spo_cli.main import main
main(sys.argv[1:])
"""


def _judge_on_a_starved_cpu(tmp_path, program: str, time_limit: float, hogs: int = 12):
    """`spo judge` on CPU 0 beside `hogs` busy processes there, each in a scheduling group of
    its own (a session: the kernel's autogroups share a CPU between sessions), so the
    program's group gets about 1/(hogs + 1) of the CPU."""
    prog = tmp_path / "prog.py"
    prog.write_text(program + "print(1)\n")
    tests = tmp_path / "t.json"
    tests.write_text(json.dumps([{"input": "", "output": "1"}]))
    hog = "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"
    procs = [
        subprocess.Popen([sys.executable, "-c", hog], start_new_session=True) for _ in range(hogs)
    ]
    try:
        argv = ["judge", str(prog), "--tests", str(tests), "--time-limit", str(time_limit)]
        return subprocess.run(
            [sys.executable, "-c", STARVED_JUDGE, *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for h in procs:
            h.kill()
            h.wait()


def test_a_correct_program_on_a_busy_machine_passes(tmp_path):
    # 0.2 s of CPU under a 0.5 s limit with 1/13 of a CPU: about 2.6 s in real time, past the
    # 1.75 s wall bound, which stops while the program waits for a CPU.
    res = _judge_on_a_starved_cpu(tmp_path, SPIN.format(s=0.2), 0.5)
    assert res.returncode == 0 and "PASSED" in res.stdout, res.stdout


def test_a_program_starved_past_the_cap_is_not_judged(tmp_path):
    # 0.48 s of CPU with 1/17 of a CPU: about 8 s, past the cap of 3 x 1.75 s in real time.
    # Not judged: no reward, never -1.
    res = _judge_on_a_starved_cpu(tmp_path, SPIN.format(s=0.48), 0.5, hogs=16)
    assert res.returncode == 1 and "NOT JUDGED (sandbox_error)" in res.stdout, res.stdout


def test_an_idle_program_is_a_time_limit_even_on_a_busy_machine(tmp_path):
    # Sleeping is the program's doing ("idleness limit exceeded"): judged, reward -1.
    res = _judge_on_a_starved_cpu(tmp_path, "import time\ntime.sleep(30)\n", 0.5)
    assert res.returncode == 1 and "FAILED (time_limit)" in res.stdout, res.stdout


@pytest.mark.parametrize(
    "demote",
    [
        "os.nice(19)",
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))",
    ],
)
def test_a_program_that_lowers_its_own_priority_is_a_time_limit(tmp_path, demote):
    # Waiting for a CPU it gave away is the program's choice, not the machine's load.
    res = _judge_on_a_starved_cpu(tmp_path, f"import os\n{demote}\n" + SPIN.format(s=0.2), 0.5)
    assert res.returncode == 1 and "FAILED (time_limit)" in res.stdout, res.stdout


def test_sleeping_and_blocking_are_time_limits():
    for src in ("import time\ntime.sleep(30)", "import os\nr, w = os.pipe()\nos.read(r, 1)"):
        v = judge(src, [("", "1")], time_limit_s=0.3)
        assert v.judged and v.status == "time_limit" and verdict_reward(v) == -1.0


# ------------------------------------------------------------------ 4. the platform's runtime

LEETCODE_STYLE = """
class Solution:
    def f(self, nums: List[int], root: Optional[TreeNode] = None) -> int:
        q = deque(nums)
        best = max(accumulate(q)) + comb(5, 2) + len(ascii_lowercase) + floor(inf if 0 else 1)
        return best + reduce(add, nums) + len(SortedKeyList) if False else best
"""


def test_leetcode_programs_get_leetcodes_imports():
    tests = [(json.dumps([[1, 2, 3]]), json.dumps(6 + 10 + 26 + 1))]
    v = judge(LEETCODE_STYLE, tests, fn_name="f", platform="leetcode")
    assert v.passed, (v.status, v.tests[0].stderr)
    # TACO's prelude has no `comb` or `ascii_lowercase`: a NameError there.
    v = judge(LEETCODE_STYLE, tests, fn_name="f", platform="codewars")
    assert v.status == "runtime_error" and "NameError" in v.tests[0].stderr


def test_leetcode_platform_through_the_cli(tmp_path):
    prog = tmp_path / "sol.py"
    prog.write_text(LEETCODE_STYLE)
    tests = tmp_path / "t.json"
    tests.write_text(json.dumps([{"input": [[1, 2, 3]], "output": 43}]))
    argv = [SPO, "judge", str(prog), "--tests", str(tests), "--fn-name", "f"]
    res = subprocess.run(argv + ["--platform", "leetcode"], capture_output=True, text=True)
    assert res.returncode == 0 and "PASSED" in res.stdout, res.stdout + res.stderr


def test_big_integers_print_without_a_digit_limit():
    # CPython >= 3.11 refuses str() of ints over 4300 digits; contest judges' Pythons did not.
    v = judge("n = int(input())\nprint(len(str(7 ** n)))", [("20000", "16902")])
    assert v.passed, v.tests[0].stderr


BIG = "9" * 5000  # 10**5000 - 1: beyond CPython's 4300-digit int <-> str limit


def test_a_call_based_big_integer_is_judged_by_its_digits(tmp_path):
    # The program may return an int of any length (the limit is lifted in the sandbox); the
    # host compares it by its digits: a correct answer passes, a wrong one fails, nothing
    # raises (before: "internal error" loading the tests, wrong_answer for a right answer).
    prog = tmp_path / "sol.py"
    prog.write_text("def f(n):\n    return 10 ** n - 1\n")
    tests = tmp_path / "t.json"
    tests.write_text('[{"input": [5000], "output": ' + BIG + "}]")
    argv = [SPO, "judge", str(prog), "--tests", str(tests), "--fn-name", "f"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "PASSED 1/1" in res.stdout, res.stdout + res.stderr
    prog.write_text("def f(n):\n    return 10 ** n - 3\n")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "wrong_answer" in res.stdout, res.stdout + res.stderr
    # A program printing raw, absurdly nested JSON on its stdout is a wrong answer.
    prog.write_text("import os\ndef f(n):\n    os.write(1, b'[' * 99999)\n    os._exit(0)\n")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "wrong_answer" in res.stdout, res.stdout + res.stderr


def test_taco_big_integer_outputs_ingest_and_verify(tmp_path):
    row = {
        "name": "nines",
        "question": "Return 10**n - 1.",
        "solutions": json.dumps(["def f(n):\n    return 10 ** n - 1\n"]),
        "input_output": '{"fn_name": "f", "inputs": [[5000]], "outputs": [' + BIG + "]}",
    }
    path = tmp_path / "taco.jsonl"
    path.write_text(json.dumps(row) + "\n")
    lake = tmp_path / "lake"
    argv = [SPO, "ingest", "human-solutions", str(path), "--lake", str(lake), "--verify"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    sql = "SELECT reward, reward_source FROM trajectories"
    res = subprocess.run(
        [SPO, "sql", sql, "--lake", str(lake), "--format", "json"], capture_output=True, text=True
    )
    assert json.loads(res.stdout) == [{"reward": 0.0, "reward_source": "judge"}], res.stdout
    res = subprocess.run(
        [
            SPO,
            "sql",
            "SELECT private_tests.output[1] AS o FROM problems",
            "--lake",
            str(lake),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert json.loads(res.stdout)[0]["o"] == BIG, res.stdout[:200]  # stored as the number


# ------------------------------------------------------------------ 5. what a program may use


@pytest.mark.parametrize("stack", [None, pytest.param(1 << 26, marks=needs_cgroups)])
def test_eight_threads_pass_at_the_default_memory_limit(stack):
    # With 64 MiB stacks 8 threads reserve 512 MiB of address space but touch little of it:
    # only the cgroup's count of used memory lets them pass (rlimits count address space).
    src = (
        "import threading, sys\n"
        + (f"threading.stack_size({stack})\n" if stack else "")
        + "out = [0] * 8\n"
        "def work(k):\n"
        "    out[k] = sum(list(range(200000)))\n"
        "ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]\n"
        "[t.start() for t in ts]\n"
        "[t.join() for t in ts]\n"
        "print(sum(out))\n"
    )
    v = judge(src, [("", str(8 * sum(range(200000))))], memory_limit_mb=256)
    assert v.passed, (v.status, v.tests[0].stderr[-300:])
