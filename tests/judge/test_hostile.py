"""Hostile programs: each must be contained AND get a verdict within a time bound.

After every run the test checks that no process of the program survives: the program reports
its PID namespace (written to stderr first thing), and anything it spawns with `exec` carries
a unique marker in its command line; /proc on the host must show neither afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from spo_train.judge import JudgeJob, judge, judge_batch
from spo_train.judge import sandbox as _sb
from spo_train.judge.sandbox import run_program
from tests.conftest import needs_sandbox

pytestmark = needs_sandbox

PRELUDE = (
    "import os, sys\n"
    "sys.stderr.write('NS=' + os.readlink('/proc/self/ns/pid') + '\\n')\n"
    "sys.stderr.flush()\n"
)


def _survivors(pidns: str | None, marker: str) -> list[str]:
    """Processes of the program still alive: in its PID namespace, or with `marker` in their
    command line. A warm sandbox's PID 1 and the one idle program driver it forked for the next
    program (docs/judge.md, "Warm sandboxes") are the sandbox's, not the program's."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ns = os.readlink(entry / "ns" / "pid")
            status = (entry / "status").read_text()
        except OSError:
            continue  # exited while we looked
        if (pidns is not None and ns == pidns) or marker in cmdline:
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            ns_pid = int(fields["NSpid"].split()[-1])
            found.append((int(entry.name), int(fields["PPid"]), ns_pid, cmdline[:80]))
    inits = {pid for pid, _, ns_pid, _ in found if ns_pid == 1}
    idle = [pid for pid, ppid, _, _ in found if ppid in inits]
    keep = inits | (set(idle) if len(idle) == 1 else set())
    return [f"{pid}: {cmd}" for pid, _, _, cmd in found if pid not in keep]


def _assert_nothing_survives(stderr: str, marker: str, sandboxed: bool = True) -> None:
    pidns = None
    for line in stderr.splitlines():
        if line.startswith("NS="):
            pidns = line[3:]
    if not sandboxed:
        pidns = None  # no PID namespace of its own: only the marker tells its processes apart
    elif pidns == os.readlink("/proc/self/ns/pid"):
        raise AssertionError("program shared our PID namespace")
    deadline = time.monotonic() + 3  # the namespace's teardown after bwrap exits is asynchronous
    while (left := _survivors(pidns, marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes of the program survived: {left}"


def run_hostile(body: str, *, bound_s: float, stdin: str = "", **limits):
    """Run PRELUDE + body (with {marker} substituted); assert the bound and no survivors."""
    marker = f"spo-hostile-{uuid.uuid4().hex}"
    src = PRELUDE + body.replace("{marker}", marker)
    t0 = time.monotonic()
    result = run_program(src, stdin, **limits)
    elapsed = time.monotonic() - t0
    assert elapsed < bound_s, f"verdict took {elapsed:.1f} s (bound {bound_s} s): {result}"
    _assert_nothing_survives(result.stderr, marker, not limits.get("unsafe_no_sandbox"))
    return result


def machine_is_fine() -> None:
    r = run_program("print(sum(range(10)))", "")
    assert (r.status, r.stdout) == ("ok", "45\n")


# ------------------------------------------------------------------ network


def test_no_network_loopback_or_public():
    # No network namespace of its own reaches out, and no inet socket can be made at all
    # (the seccomp filter: only AF_UNIX; docs/judge.md, "What a program cannot do").
    body = """
import socket
for host, port in [("127.0.0.1", 22), ("127.0.0.1", 80), ("8.8.8.8", 53), ("1.1.1.1", 443)]:
    try:
        s = socket.socket()
        s.settimeout(1)
        s.connect((host, port))
        print("CONNECTED", host, port)
    except OSError as e:
        print("blocked", host, type(e).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    print("RESOLVED")
except OSError:
    print("no dns")
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("8.8.8.8", 53))
    print("SENT")
except OSError:
    print("no udp")
try:
    print(sorted(name for _, name in socket.if_nameindex()))
except OSError:
    print("no interfaces")
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout and "SENT" not in r.stdout
    assert r.stdout.count("blocked") == 4
    # only loopback exists (off x86-64, where the filter is absent, a socket can list it)
    assert r.stdout.strip().endswith(("no interfaces", "['lo']"))


# ------------------------------------------------------------------ filesystem


def test_secrets_and_project_files_are_invisible(tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    monkeypatch.chdir(tmp_path)
    paths = [
        "/etc/shadow",
        "/etc/passwd",
        "/root",
        "/root/.pyenv",
        "/work",
        "/home",
        str(secret),
        str(tmp_path),
        os.getcwd(),
        str(Path(__file__).resolve()),
        str(Path(__file__).resolve().parents[2] / "pyproject.toml"),
        "/proc/1/root/work",
        "/var",
        "/opt",
        "/usr/local/bin",
        "/bin/sh",
        "/usr/bin/bash",
    ]
    body = f"""
import os
for p in {paths!r}:
    try:
        print(p, "VISIBLE" if os.path.exists(p) else "absent")
        if os.path.isfile(p):
            print(open(p).read()[:20])
    except OSError as e:
        print(p, "error", e.errno)
print(sorted(os.listdir("/")))
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    assert "VISIBLE" not in r.stdout and "TOPSECRET" not in r.stdout
    assert r.stdout.strip().splitlines()[-1] == (
        "['bin', 'dev', 'lib', 'lib64', 'proc', 'sbin', 'tmp', 'usr']"
    )


def test_writes_outside_tmp_fail_and_leave_nothing_on_host():
    name = f"spo-pwned-{uuid.uuid4().hex}"
    targets = [f"/{name}", f"/usr/{name}", f"/usr/lib/{name}", f"/dev/{name}", f"/proc/{name}"]
    body = f"""
for p in {targets!r}:
    try:
        with open(p, "w") as f:
            f.write("pwned")
        print("WROTE", p)
    except OSError as e:
        print("denied", p)
import os
try:
    os.symlink("/usr/bin/python3", "/usr/bin/{name}")
    print("WROTE symlink")
except OSError:
    print("denied symlink")
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    assert "WROTE" not in r.stdout
    for p in [*targets, f"/usr/bin/{name}", f"/tmp/{name}"]:
        assert not os.path.exists(p)


def test_remounting_usr_read_write_fails():
    body = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096
rc = libc.mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None)
print("remount", rc, ctypes.get_errno())
rc = libc.mount(b"none", b"/usr", b"tmpfs", 0, None)
print("mount", rc)
print("userns", libc.unshare(0x10000000))  # CLONE_NEWUSER: would give caps in a nested ns
try:
    open("/usr/lib/spo-remount-test", "w").write("x")
    print("WROTE")
except OSError:
    print("read-only")
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].startswith("remount -1") and lines[1] == "mount -1"
    assert lines[2] == "userns -1" and lines[3] == "read-only"
    assert not os.path.exists("/usr/lib/spo-remount-test")


def test_huge_file_in_tmp_is_limited():
    body = """
import os
chunk = b"x" * (1 << 20)
written = 0
try:
    with open("big.bin", "wb") as f:
        for _ in range(4096):  # 4 GiB
            f.write(chunk)
            written += 1
except OSError as e:
    print("stopped", written, type(e).__name__)
"""
    r = run_hostile(body, bound_s=15)
    # RLIMIT_FSIZE delivers SIGXFSZ (runtime_error); a full tmpfs gives an OSError instead.
    assert r.status in ("runtime_error", "ok")
    if r.status == "ok":
        assert int(r.stdout.split()[1]) <= 80
    machine_is_fine()


def test_many_files_fill_only_the_private_tmp():
    body = """
chunk = b"y" * (1 << 20)
n = 0
try:
    for i in range(200):
        with open(f"f{i}", "wb") as f:
            for _ in range(8):
                f.write(chunk)
        n += 8
except OSError as e:
    print("full after", n, "MiB", e.errno)
"""
    r = run_hostile(body, bound_s=15)
    assert r.status == "ok", r.stderr
    assert "full after" in r.stdout and int(r.stdout.split()[2]) < 100


# ------------------------------------------------------------------ processes


def test_shell_spawning_is_contained():
    name = f"/work/spo-shell-{uuid.uuid4().hex}"
    body = f"""
import os, subprocess
print("system", os.system("touch {name}"))
for argv in (["/bin/sh", "-c", "touch {name}"], ["bash", "-c", "id"]):
    try:
        subprocess.run(argv)
        print("RAN", argv[0])
    except OSError as e:
        print("no", argv[0], type(e).__name__)
out = subprocess.run(
    ["/usr/bin/python3", "-c", "import os; open({name!r}, 'w'); print('WROTE')", "{{marker}}"],
    capture_output=True, text=True,
)
print("py", out.returncode, out.stdout.strip())
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    assert "RAN" not in r.stdout and "WROTE" not in r.stdout
    assert "py 1" in r.stdout
    assert not os.path.exists(name)


def test_fork_bomb():
    body = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    r = run_hostile(body, bound_s=12, time_limit_s=1)
    assert r.status in ("time_limit", "runtime_error")
    machine_is_fine()


def test_fork_bomb_of_exec_processes_with_marker():
    body = """
import subprocess
procs = []
for i in range(500):
    try:
        procs.append(subprocess.Popen(
            ["/usr/bin/python3", "-c", "import time; time.sleep(600)", "{marker}"]))
    except OSError:
        break
print(len(procs))
"""
    r = run_hostile(body, bound_s=15, time_limit_s=2)
    assert r.status == "ok", r.stderr
    assert int(r.stdout) < 32  # RLIMIT_NPROC per sandbox
    machine_is_fine()


def test_thousands_of_threads():
    body = """
import threading, time
started = 0
try:
    for _ in range(5000):
        t = threading.Thread(target=time.sleep, args=(600,), daemon=True)
        t.start()
        started += 1
except RuntimeError:
    pass
print(started)
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    assert int(r.stdout) < 32


def test_memory_bomb():
    body = """
blocks = []
while True:
    blocks.append(bytearray(16 * 1024 * 1024))
"""
    r = run_hostile(body, bound_s=10, memory_limit_mb=128)
    assert r.status == "memory_limit"


def test_memory_bomb_caught_and_retried_still_stops():
    body = """
blocks = []
while True:
    try:
        blocks.append(bytearray(8 * 1024 * 1024))
    except MemoryError:
        pass
"""
    r = run_hostile(body, bound_s=10, memory_limit_mb=64, time_limit_s=0.5)
    # With cgroups the kernel stops it at the limit (no MemoryError to catch); with rlimits
    # only, it spins on MemoryError until its CPU time is up.
    assert r.status == ("memory_limit" if _sb._cgroup_dirs() else "time_limit")


def test_busy_loop():
    r = run_hostile("while True:\n    pass\n", bound_s=6, time_limit_s=0.5)
    assert r.status == "time_limit"


def test_sleep():
    r = run_hostile("import time\ntime.sleep(3600)\n", bound_s=6, time_limit_s=0.5)
    assert r.status == "time_limit"


def test_ignoring_sigterm_and_sigxcpu():
    body = """
import signal
for s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
while True:
    pass
"""
    r = run_hostile(body, bound_s=6, time_limit_s=0.5)
    assert r.status == "time_limit"


def test_double_fork_setsid_grandchild_holding_stdout():
    body = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/python3", ["python3", "-c",
                 "import time, sys; time.sleep(3600); print('late')", "{marker}"])
    os._exit(0)
print("parent done")
"""
    r = run_hostile(body, bound_s=5, time_limit_s=2)
    assert r.status == "ok", r.stderr
    assert r.stdout == "parent done\n"


def test_closed_stdout_and_hang():
    body = "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(3600)\n"
    r = run_hostile(body, bound_s=6, time_limit_s=0.5)
    assert r.status == "time_limit"


def test_gigabytes_of_output_is_fast():
    body = """
import os
block = b"7" * (1 << 20)
for _ in range(4096):  # 4 GiB
    os.write(1, block)
"""
    r = run_hostile(body, bound_s=8, time_limit_s=10)
    assert r.status == "output_limit"


def test_gigabytes_of_stderr_is_bounded_too():
    body = """
import os
block = b"e" * (1 << 20)
for _ in range(4096):
    os.write(2, block)
"""
    r = run_hostile(body, bound_s=8, time_limit_s=10)
    assert r.status == "output_limit"
    assert len(r.stderr) <= 64 * 1024


def test_killing_its_parent_and_everything():
    body = """
import os, signal
for target in (os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent", target)
    except OSError as e:
        print("failed", target, e.errno)
print("still judged")
"""
    marker = f"spo-hostile-{uuid.uuid4().hex}"
    src = PRELUDE + body
    t0 = time.monotonic()
    # Two tests: the driver must survive the first to run the second.
    v = judge(src, [("", "x"), ("", "y")], stop_on_first_failure=False)
    assert time.monotonic() - t0 < 6
    assert v.status == "wrong_answer" and len(v.tests) == 2
    assert all("still judged" in t.stdout for t in v.tests)
    _assert_nothing_survives(v.tests[0].stderr, marker)


def test_ptrace_and_proc_snooping():
    body = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("pids", pids == sorted({1, os.getppid(), os.getpid()}))
print("init", open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode())
for pid in sorted({1, os.getppid()}):  # PID 1, and a warm sandbox's program driver
    print("ptrace", libc.ptrace(16, pid, 0, 0))  # PTRACE_ATTACH to the driver
    for p in ("mem", "fd/0", "fd/1", "environ"):
        try:
            open(f"/proc/{pid}/{p}", "rb").read(1)
            print("OPENED", pid, p)
        except OSError as e:
            print("denied", pid, p)
    try:
        print("fds", os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        print("fds denied")
status = open("/proc/self/status").read()
print([l for l in status.splitlines() if l.startswith(("CapEff", "NoNewPrivs"))])
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    lines = r.stdout.splitlines()
    # PID 1, the program driver (itself in a one-program sandbox) and the program: no host
    # process visible
    assert lines[0] == "pids True"
    assert lines[1] == "init /usr/bin/python3"
    assert "ptrace -1" in lines and "ptrace 0" not in r.stdout
    assert "OPENED" not in r.stdout and "fds denied" in r.stdout and "fds [" not in r.stdout
    assert "CapEff:\\t0000000000000000" in r.stdout and "NoNewPrivs:\\t1" in r.stdout


def test_cannot_become_root():
    body = """
import os
for name, call in (("setuid", lambda: os.setuid(0)), ("setgid", lambda: os.setgid(0)),
                   ("seteuid", lambda: os.seteuid(0)), ("setgroups", lambda: os.setgroups([0]))):
    try:
        call()
        print("BECAME", name)
    except OSError as e:
        print("denied", name)
print(os.getuid(), os.geteuid(), os.getgid())
"""
    r = run_hostile(body, bound_s=10)
    assert r.status == "ok", r.stderr
    assert "BECAME" not in r.stdout
    assert r.stdout.splitlines()[-1] == "65534 65534 65534"


def test_callers_environment_is_invisible(monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("SPO_TEST_SECRET", secret)
    body = """
import os
print(dict(os.environ))
for p in ("/proc/self/environ", "/proc/1/environ"):
    try:
        print(open(p, "rb").read())
    except OSError:
        pass
"""
    for unsafe in (False, True):
        r = run_hostile(body, bound_s=10, unsafe_no_sandbox=unsafe)
        assert r.status == "ok", r.stderr
        assert secret not in r.stdout and "SPO_TEST_SECRET" not in r.stdout


def test_cannot_forge_a_pass_or_find_expected_output():
    answer = f"answer-{uuid.uuid4().hex}"
    body = r"""
import ctypes, json, os, re
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # dumpable again (inherited 0), so /proc/self/mem opens
# Search ALL of our memory (a fork of the driver) for anything shaped like the expected output.
pattern = re.compile(rb"answer-[0-9a-f]{32}")
found = seen_input = False
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        addr, perms = line.split()[:2]
        if "r" not in perms or "vvar" in line or "vsyscall" in line:
            continue
        lo, hi = (int(x, 16) for x in addr.split("-"))
        for off in range(lo, hi, 1 << 22):
            try:
                mem.seek(off)
                chunk = mem.read(min(1 << 22, hi - off) + 40)
            except (OSError, OverflowError, ValueError):
                break
            if pattern.search(chunk):
                found = True
            if re.search(rb"input-[0-9a-f]{32}", chunk):
                seen_input = True
print("FOUND" if found else "not found", "input seen" if seen_input else "SCAN BROKEN")
fake = json.dumps({"status": "ok", "exit_code": 0, "signal": None, "stdout": "forged",
                   "stderr": "", "wall_s": 0, "cpu_s": 0, "max_rss_kb": 0})
for fd in range(3, 64):
    try:
        os.write(fd, (fake + "\n").encode())
        print("WROTE fd", fd)
    except OSError:
        pass
for p in ("/proc/1/fd/3", "/proc/1/fd/4", "/proc/1/fd/1", "/proc/1/fd/0"):
    try:
        with open(p, "w") as f:
            f.write(fake + "\n")
        print("WROTE", p)
    except OSError:
        pass
"""
    # Expected outputs never enter the sandbox, and no forged result line may reach the host.
    stdin = f"input-{uuid.uuid4().hex}"  # the scan must find this: proof that it works
    v = judge(PRELUDE + body, [(stdin, answer)], memory_limit_mb=512, time_limit_s=5)
    assert not v.passed and v.status == "wrong_answer", v
    assert v.tests[0].stdout.startswith("not found input seen"), v.tests[0]
    assert "WROTE" not in v.tests[0].stdout


def test_leftover_daemon_cannot_touch_the_next_test():
    body = """
import os, time
print(sorted(os.listdir(".")))
if os.fork() == 0:
    os.setsid()
    while True:
        with open("evil", "a") as f:
            f.write("x")
        time.sleep(0.01)
time.sleep(0.1)
"""
    v = judge(PRELUDE + body, [("", "[]")] * 3, time_limit_s=2)
    assert v.passed, [t.stdout for t in v.tests]


def test_hostile_batch_runs_beside_honest_jobs():
    honest = JudgeJob("print(int(input()) * 3)", [("2", "6"), ("5", "15")])
    bombs = [
        JudgeJob(
            "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
            [("", "")],
            time_limit_s=0.5,
        ),
        JudgeJob(
            "x = []\nwhile True: x.append(bytearray(1 << 24))", [("", "")], memory_limit_mb=64
        ),
        JudgeJob("import time\ntime.sleep(100)", [("", "")], time_limit_s=0.3),
    ]
    t0 = time.monotonic()
    verdicts = judge_batch([honest, *bombs, honest], workers=2)
    assert time.monotonic() - t0 < 20
    assert [v.status for v in verdicts][0] == "ok" and verdicts[-1].status == "ok"
    assert verdicts[1].status in ("time_limit", "runtime_error")
    assert verdicts[2].status == "memory_limit"
    assert verdicts[3].status == "time_limit"


# ------------------------------------------------------------------ issue 19: bending verdicts
# (the kinds in full, with every variant, are in tests/judge/test_judge_trust.py)


def test_memory_hidden_in_memfds_is_counted():
    body = """
fds = []
for k in range(64):
    fds.append(os.memfd_create('x'))
    os.write(fds[-1], b'x' * (32 << 20))
"""
    r = run_hostile(body, bound_s=15, memory_limit_mb=64)
    if _sb._cgroup_dirs():
        assert r.status == "memory_limit", r.stderr[-300:]
    elif os.uname().machine == "x86_64":  # no cgroup to count it: memfd_create is refused
        assert r.status == "runtime_error" and "PermissionError" in r.stderr, r.stderr[-300:]


def test_cpu_burnt_by_detached_exec_spinners_is_counted():
    body = """
import subprocess
for i in range(6):
    subprocess.Popen([sys.executable, '-c', 'while True: pass', '{marker}'],
                     start_new_session=True)
import time
time.sleep(60)
"""
    r = run_hostile(body, bound_s=15, time_limit_s=0.3)
    assert r.status == "time_limit" and r.cpu_s >= 0.3  # with cgroups or without


def test_undeletable_leftovers_do_not_stop_judging():
    body = """
a, b = map(int, open('input.txt').read().split())
print(a + b)
sys.stdout.flush()
os.remove('input.txt')
os.makedirs('input.txt/x/y')
for d in ('input.txt/x/y', 'input.txt/x', 'input.txt', '.', '/tmp'):
    os.chmod(d, 0o100)
"""
    v = judge(PRELUDE + body, [("1 2", "3"), ("2 2", "4"), ("5 5", "10")], input_file="input.txt")
    assert v.passed and v.judged, (v.status, [t.stderr for t in v.tests])
    machine_is_fine()
