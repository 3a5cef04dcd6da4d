"""Sandbox for untrusted Python 3 programs: the isolation under `spo_train.judge`.

This module runs programs (`run_program`, and the sessions `spo_train.judge` builds on); what
counts as correct (token comparison, tolerance, checkers, call-based tests) is decided in
`spo_train.judge` (docs/judge.md).

Warm bubblewrap sandboxes, reused from program to program (`SPO_JUDGE_WARM=0`: one new
sandbox per program); inside each a small stdlib-only driver (`spo_train/judge/sandbox_driver.py`,
run by the system `/usr/bin/python3 -I -S`; its bytecode is written to the driver's stdin and
read by a few-line `-c` bootstrap, never a file). Its PID 1 never reads a program or an input: per program it forks a fresh program
driver, which forks once per test, applies rlimits in the child and reports each result as a
binary frame (docs/judge.md, "Warm sandboxes"). Expected outputs stay on the host; the sandbox only
ever sees the program and the test inputs (a checker runs in a session of its own).

Isolation (see `_bwrap_argv`):
- When we are root, bwrap is started through `setpriv` as host uid/gid 65534 (nobody): the
  program is an unprivileged user on the host too, cannot read root-only files even through a
  bind mount, and RLIMIT_NPROC applies to it (it is ignored for uid 0). In the sandbox it is
  uid 65534 with every capability dropped, no-new-privs, and no nested user namespaces.
- `--unshare-all`: own user, mount, PID, network (an unconfigured loopback only), IPC, UTS and
  cgroup namespaces; `--die-with-parent`, `--new-session`, `--clearenv`.
- `--as-pid-1`: the driver is the namespace's init, so the program cannot kill it (signals from
  inside the namespace to init are dropped), and `kill(-1, SIGKILL)` from the driver reaches
  exactly the test's leftovers (double-forked `setsid` daemons included). In a warm sandbox the
  program driver is PID 1's child (a child subreaper), shielded from its tests' signals by the
  seccomp filter instead (below). The driver makes
  itself non-dumpable (no ptrace, no /proc/1/{mem,fd}), and its protocol pipes are host-created
  (root-owned, not re-openable by uid 65534), so a program cannot forge results.
- Filesystem: a read-only root holding read-only binds of only what `/usr/bin/python3` needs
  (the interpreter, its stdlib, the shared-library directory, the loader), /dev/{null,zero,
  random,urandom}, a fresh /proc, and a private tmpfs /tmp capped at 65 MiB (bwrap 0.8 supports
  `--size` before `--tmpfs`), emptied between tests whatever the program did to it; each test
  runs in a fresh /tmp/work. No /etc, /root, /home, /work, no project
  or lake files, no shell or other binaries. If that layout cannot start Python on some system,
  all of /usr is bound read-only instead (checked once per process, with a warning).
- A seccomp filter over each test's process (x86-64) refuses what same-uid processes may do to
  each other besides signals and ptrace: changing PID 1's (the driver's) resource limits,
  affinity, scheduling or priority (docs/judge.md, "What a program cannot do"). In a warm
  sandbox the program driver installs most of it on itself once (its tests inherit it) and
  each test adds the rest (kill(-1); without cgroups the uncounted-memory refusals).
- Per session (root on a cgroup v1 host): a cgroup in each of memory, cpuacct and pids
  (`_TestCgroups`); each test's child moves itself in through descriptors the host opened,
  so the memory limit, the CPU time and the process count cover every process, thread and
  shared page of the test (docs/judge.md, "How each limit is enforced"). Without cgroups,
  the driver (PID 1) sums the CPU time and memory of every process of the sandbox and its
  tmpfs from /proc every 20 ms, and the seccomp filter refuses memfd_create and shmget (memory
  no process maps); weaker than a cgroup: see there.
- Per test (in the child): RLIMIT_AS = memory limit on top of what the forked interpreter
  already maps (only without cgroups), RLIMIT_STACK = memory limit (deep recursion works as on Codeforces, see
  docs/judge.md), RLIMIT_CPU (backstop; the driver polls CPU time every 20 ms), RLIMIT_FSIZE
  64 MiB, RLIMIT_NPROC 32 (processes and threads; the count is per user namespace on Linux >=
  5.14, so each sandbox has its own), RLIMIT_NOFILE 256, no core files; stdout and stderr are
  capped by the driver (`output_limit`); a wall-clock limit of 1.5 x time limit + 1 s in the
  driver that stops while the test waits for a CPU (the machine's load; at 3x the bound in
  real time the test is not judged), and a host-side watchdog 5 s after that cap that kills
  the driver (PID 1: the whole namespace dies with it; not judged).

Speed (see BENCHMARKS.md, "Judge"): a sandbox costs ~20-30 ms to start (once per warm
sandbox, or per program with SPO_JUDGE_WARM=0), a program ~2-3 ms of CPU more, and a trivial
test ~2 ms of CPU (BENCHMARKS.md, "Per-test cost": where it goes).
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import marshal
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError

PYTHON = "/usr/bin/python3"
SANDBOX_UID = 65534  # nobody/nogroup
OUTPUT_LIMIT_BYTES = 16 << 20  # captured stdout per test; more is `output_limit`
STDERR_KEEP_BYTES = 64 << 10  # stderr kept for display (more is read and dropped)
FILE_LIMIT_BYTES = 64 << 20  # RLIMIT_FSIZE, and the size of the sandbox's /tmp
NPROC_LIMIT = 32  # processes + threads per sandbox (driver included)
NPROC_LIMIT_UNSAFE = 512  # shared by every process of uid 65534 when there is no user namespace
NOFILE_LIMIT = 256
WALL_FACTOR, WALL_SLACK_S = 1.5, 1.0  # wall-clock limit per test = 1.5 x CPU limit + 1 s
HOST_SLACK_S = 5.0  # the host's watchdog fires this long after the driver's own wall limit
START_TIMEOUT_S = 20.0  # sandbox start + compile (+ import preloading)
# The wall-clock bound stops while a test waits for a CPU (a busy machine); in real time a
# test may take this many times the bound before it is given up as not judged.
WALL_CAP_FACTOR = 3
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_CONTROLLERS = ("memory", "cpuacct", "pids")
# What a test may use beyond memory_limit_mb under cgroup accounting: the pages the forked
# interpreter itself dirties (copy-on-write of the driver's heap, ~2-4 MiB) and its stacks.
INTERPRETER_ALLOWANCE_BYTES = 16 << 20

RUN_STATUSES = (
    "ok",
    "runtime_error",
    "time_limit",
    "memory_limit",
    "output_limit",
    "sandbox_error",
)

_DRIVER_SOURCE = (Path(__file__).with_name("sandbox_driver.py")).read_text(encoding="utf-8")


@dataclass(frozen=True)
class RunResult:
    """One run of a program on one input."""

    status: str  # one of RUN_STATUSES
    stdout: str
    stderr: str
    exit_code: int | None  # None when killed by a signal (see `signal`) or never run
    wall_s: float
    cpu_s: float = 0.0
    signal: int | None = None
    max_rss_kb: int = 0


# ---------------------------------------------------------------------------------------------
# Sandbox layout (found once per process)

_layout_lock = threading.RLock()  # re-entered: the layout self-test builds argv
_layout_cache: dict[str, list[str]] = {}


def _bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SpoError(
            "bubblewrap (`bwrap`) is not installed, so untrusted programs cannot be sandboxed: "
            "install the Debian package `bubblewrap` (apt-get install bubblewrap), or pass "
            "--unsafe-no-sandbox to run them without isolation (trusted code only)"
        )
    return path


def _python_path() -> str:
    if not os.access(PYTHON, os.X_OK):
        raise SpoError(
            f"{PYTHON} not found: the sandbox runs programs with the system Python 3 "
            "(Debian package `python3`)"
        )
    return PYTHON


def _root_entries(binds: list[str]) -> None:
    """/lib, /lib64, /bin, /sbin as on the host: symlinks into /usr on merged-/usr systems."""
    for name in ("lib", "lib64", "lib32", "bin", "sbin"):
        host = f"/{name}"
        if os.path.islink(host):
            binds += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host) and name.startswith("lib"):
            binds += ["--ro-bind", host, host]


def _minimal_binds() -> list[str]:
    """Only what the system python needs: interpreter, stdlib, shared libraries, loader."""
    probe = subprocess.run(
        [
            PYTHON,
            "-I",
            "-c",
            "import json, os, sys, sysconfig; print(json.dumps({"
            "'exe': os.path.realpath(sys.executable),"
            "'stdlib': sysconfig.get_paths()['stdlib'],"
            "'libdir': sysconfig.get_config_var('LIBDIR') or '/usr/lib',"
            "'multiarch': sysconfig.get_config_var('MULTIARCH') or ''}))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    )
    info = json.loads(probe.stdout)
    binds = ["--ro-bind", info["exe"], info["exe"]]
    if os.path.realpath(PYTHON) != PYTHON:
        binds += ["--symlink", os.path.basename(info["exe"]), PYTHON]
    binds += ["--ro-bind", info["stdlib"], info["stdlib"]]
    # Shared libraries: LIBDIR (Debian: /usr/lib/<multiarch>), the multiarch dirs, lib64
    # (the loader lives there or links from there).
    libdirs = [info["libdir"], "/usr/lib64"]
    if info["multiarch"]:
        libdirs += [f"/usr/lib/{info['multiarch']}", f"/lib/{info['multiarch']}"]
    seen: set[str] = set()
    for d in libdirs:
        real = os.path.realpath(d)
        if os.path.isdir(real) and real not in seen:
            seen.add(real)
            binds += ["--ro-bind", real, real]
    _root_entries(binds)
    return binds


def _full_usr_binds() -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    _root_entries(binds)
    return binds


def _layout(bwrap: str) -> list[str]:
    """The bind arguments that start Python here, checked once by running a tiny program."""
    with _layout_lock:
        if bwrap in _layout_cache:
            return _layout_cache[bwrap]
        errors = []
        for make in (_minimal_binds, _full_usr_binds):
            try:
                binds = make()
            except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                errors.append(f"{make.__name__}: {exc}")
                continue
            res = _run_session(
                "print(6 * 7)",
                [""],
                time_limit_s=5.0,
                memory_limit_mb=128,
                sandbox=(bwrap, binds),
            )
            if res.results and res.results[0].stdout.strip() == "42":
                if errors:  # weaker isolation than designed: say so once per process
                    warnings.warn(
                        "sandbox: the minimal filesystem layout failed, binding all of /usr "
                        f"read-only instead ({errors[0]})",
                        stacklevel=3,
                    )
                _layout_cache[bwrap] = binds
                return binds
            errors.append(f"{make.__name__}: {res.failure or res.results}")
        raise SpoError(
            "bubblewrap could not start the system Python in a sandbox ("
            + "; ".join(e.replace("\n", " ") for e in errors)
            + "); unprivileged user namespaces may be disabled here. "
            "Use --unsafe-no-sandbox only for trusted code"
        )


_driver_cache: dict[str, str] = {}


def _driver_boot(python: str) -> tuple[str, bytes]:
    """(the `-c` argument that starts the driver under `python`, the bytes to write first).

    The `-c` argument is a few lines that read the driver's code from stdin (the first N
    bytes, then the protocol's frames follow): the driver compiled once per process by that
    same interpreter and marshalled, which saves its compile time (~2.5 ms) in every sandbox,
    else its source. Passing the driver itself as the argument (~100 KB) left ~3 MB of the
    interpreter's copies and parser memory resident in every driver, which each test's fork
    then copied page table entries for.
    """
    with _layout_lock:
        if python not in _driver_cache:
            code, load = (
                _DRIVER_SOURCE.encode(),
                "lambda b: compile(b, '<spo-judge-driver>', 'exec')",
            )
            try:
                res = subprocess.run(
                    [
                        python,
                        "-I",
                        "-S",
                        "-c",
                        "import sys, marshal; sys.stdout.buffer.write(marshal.dumps("
                        "compile(sys.stdin.read(), '<spo-judge-driver>', 'exec')))",
                    ],
                    input=_DRIVER_SOURCE.encode(),
                    capture_output=True,
                    timeout=30,
                    env={},
                    check=True,
                )
                if res.stdout:
                    code, load = res.stdout, "marshal.loads"
            except (OSError, subprocess.SubprocessError):
                pass
            boot = (
                "import marshal, os\n"
                "def _boot(n):\n"
                "    b = b''\n"
                "    while len(b) < n:\n"
                "        c = os.read(0, n - len(b))\n"
                "        if not c:\n"
                "            raise SystemExit(1)\n"
                "        b += c\n"
                f"    return ({load})(b)\n"
                f"exec(_boot({len(code)}))\n"
            )
            _driver_cache[python] = (boot, code)
        return _driver_cache[python]


def _driver_arg(python: str) -> str:
    """The `-c` argument of a driver under `python` (write `_driver_boot(python)[1]` first)."""
    return _driver_boot(python)[0]


_DEV_ARGS = [
    *(
        a
        for d in ("null", "zero", "random", "urandom")
        for a in ("--dev-bind", f"/dev/{d}", f"/dev/{d}")
    ),
    *("--symlink", "/proc/self/fd", "/dev/fd"),
    *(
        a
        for i, n in enumerate(("stdin", "stdout", "stderr"))
        for a in ("--symlink", f"/proc/self/fd/{i}", f"/dev/{n}")
    ),
]


def _bwrap_argv(bwrap: str, binds: list[str], tmp_bytes: int) -> list[str]:
    uid = str(SANDBOX_UID)
    return [
        bwrap,
        "--unshare-all",  # user, ipc, pid, net, uts, cgroup(-try) namespaces
        "--unshare-user",
        "--disable-userns",  # no nested user namespaces: no capabilities to regain inside
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--uid",
        uid,
        "--gid",
        uid,
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--hostname",
        "sandbox",
        *binds,
        # A minimal /dev inside the root (bwrap's `--dev` costs ~2 ms more: its own tmpfs,
        # devpts, tty, and one more remount): the four harmless character devices and the
        # fd links.
        *_DEV_ARGS,
        "--proc",
        "/proc",
        "--size",
        str(tmp_bytes),
        "--tmpfs",
        "/tmp",
        # bwrap builds / as a tmpfs without a size cap: read-only, so that /tmp (size-capped)
        # is the only writable place.
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        "--",
        PYTHON,
        "-I",  # isolated: no PYTHON* variables, no user site, no cwd on sys.path
        "-S",  # no site: ~4 ms less per sandbox; the driver defines exit()/quit() itself
        "-c",
        _driver_arg(PYTHON),
    ]


# ---------------------------------------------------------------------------------------------
# Per-session cgroups (cgroup v1 memory + cpuacct + pids): limits that count every process,
# thread, shared-memory page and tmpfs page of a test.

_cg_lock = threading.Lock()
_cg_parents: dict[str, str] | None = None
_cg_checked = False
_cg_names = itertools.count()


def _cgroup_dirs() -> dict[str, str] | None:
    """controller -> the directory under which sessions get their cgroups, or None.

    Found once per process: we must be root (the sandboxed program is not, and the cgroups'
    control files stay root-owned) on a cgroup v1 host with the memory, cpuacct and pids
    controllers mounted writable; the sessions' cgroups go under our own cgroup of each, so
    the limits of whoever runs us still apply. `SPO_JUDGE_CGROUPS=0` turns them off.
    """
    global _cg_parents, _cg_checked
    with _cg_lock:
        if _cg_checked:
            return _cg_parents
        _cg_checked = True
        if os.geteuid() != 0 or os.environ.get("SPO_JUDGE_CGROUPS", "1") == "0":
            return None
        try:
            mine: dict[str, str] = {}
            with open("/proc/self/cgroup") as fh:
                for line in fh:
                    _, names, path = line.rstrip("\n").split(":", 2)
                    for name in names.split(","):
                        mine[name] = path
            mounts: dict[str, tuple[str, str]] = {}
            with open("/proc/self/mountinfo") as fh:
                for line in fh:
                    left, _, right = line.partition(" - ")
                    fstype, _, opts = right.split()[:3]
                    if fstype != "cgroup":
                        continue
                    fields = left.split()
                    for name in opts.split(","):
                        mounts[name] = (fields[3], fields[4])  # (root in the fs, mount point)
            parents = {}
            for name in CGROUP_CONTROLLERS:
                root, point = mounts[name]
                path = mine[name]
                if not (path + "/").startswith(root.rstrip("/") + "/"):
                    return None
                own = os.path.join(point, path[len(root.rstrip("/")) :].lstrip("/"))
                parent = os.path.join(own, "spo-judge")
                os.makedirs(parent, exist_ok=True)
                _remove_stale_cgroups(parent)
                parents[name] = parent
            probe = _TestCgroups(parents, 64 << 20, 4)
            probe.close()
        except (OSError, KeyError, ValueError):
            return None
        _cg_parents = parents
        return parents


def _remove_stale_cgroups(parent: str) -> None:
    """Cgroups left by judge processes that died (named `<pid>-<n>`)."""
    for name in os.listdir(parent):
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class _TestCgroups:
    """One session's cgroups, and the descriptors its driver uses on them.

    Limits live in root-owned files the sandbox cannot see; the driver gets descriptors
    opened here (as root): the three `cgroup.procs` (its test child writes `0` to each to move
    itself in, before it closes every descriptor and runs the program), `cpuacct.usage`,
    `memory.oom_control` and `memory.max_usage_in_bytes` (read, and reset per test).
    """

    def __init__(self, parents: Mapping[str, str], mem_bytes: int, nproc: int) -> None:
        name = f"{os.getpid()}-{next(_cg_names)}"
        self.dirs: list[str] = []
        self.fds: list[int] = []
        try:
            for ctl in CGROUP_CONTROLLERS:
                path = os.path.join(parents[ctl], name)
                os.mkdir(path)
                self.dirs.append(path)
            mem, cpu, pids = self.dirs
            _write(f"{mem}/memory.limit_in_bytes", mem_bytes)
            if os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):  # no swapping around it
                _write(f"{mem}/memory.memsw.limit_in_bytes", mem_bytes)
            _write(f"{pids}/pids.max", nproc)
            self.procs = [self._open(f"{d}/cgroup.procs", os.O_WRONLY) for d in self.dirs]
            self.cpu = self._open(f"{cpu}/cpuacct.usage", os.O_RDONLY)
            self.oom = self._open(f"{mem}/memory.oom_control", os.O_RDONLY)
            self.peak = self._open(f"{mem}/memory.max_usage_in_bytes", os.O_RDWR)
        except BaseException:
            self.close()
            raise

    def set_memory(self, mem_bytes: int, raising: bool) -> None:
        """A new memory limit (a warm sandbox's next program); OSError if refused."""
        mem = self.dirs[0]
        files = ["memory.limit_in_bytes"]
        if os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):  # memsw >= limit at all times
            files.append("memory.memsw.limit_in_bytes")
        for name in reversed(files) if raising else files:
            _write(f"{mem}/{name}", mem_bytes)

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def config(self) -> dict[str, Any]:
        return {"procs": self.procs, "cpu": self.cpu, "oom": self.oom, "peak": self.peak}

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        for path in reversed(self.dirs):
            for _ in range(50):  # the last tasks of a killed namespace may take a moment to go
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        self.dirs = []


def _write(path: str, value: int) -> None:
    with open(path, "w") as fh:
        fh.write(str(value))


# ---------------------------------------------------------------------------------------------
# One sandbox session: start, stream tests, collect results


@dataclass
class _SessionOutcome:
    compile_error: str | None = None
    results: list[RunResult] = field(default_factory=list)
    failure: str | None = None  # set when the sandbox itself failed
    started: bool = False  # the driver answered READY (a failure before that: start failure)


class _Pipe:
    """Deadline-bounded framed I/O with the driver (select, no extra threads)."""

    MAX_HEADER = 4096

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdin and proc.stdout and proc.stderr
        self.proc = proc
        self.win = proc.stdin.fileno()
        self.rout = proc.stdout.fileno()
        self.rerr = proc.stderr.fileno()
        for fd in (self.win, self.rout, self.rerr):
            os.set_blocking(fd, False)
        self.buf = bytearray()
        self.err = bytearray()
        self.err_open = True

    def _pump_err(self) -> None:
        """bwrap's and the driver's own stderr (never the program's): kept for diagnostics."""
        while self.err_open:
            try:
                chunk = os.read(self.rerr, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.err_open = False
                return
            if len(self.err) < STDERR_KEEP_BYTES:
                self.err += chunk[: STDERR_KEEP_BYTES - len(self.err)]

    def write(self, data: bytes, deadline: float) -> bool:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.win, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError:  # the driver is gone
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            rlist = [self.rerr] if self.err_open else []
            readable, _, _ = select.select(rlist, [self.win], [], left)
            if readable:
                self._pump_err()
        return True

    def _fill(self, deadline: float, need: int = 0) -> bool:
        """Read more from the driver (`need`: bytes still due); False on EOF or timeout."""
        while True:
            try:
                # 64 KiB unless more is due: a 1 MiB read buffer is an mmap and munmap each
                chunk = os.read(self.rout, max(1 << 16, need))
            except BlockingIOError:
                chunk = None
            if chunk is not None:
                if not chunk:
                    return False
                self.buf += chunk
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            rlist = [self.rout] + ([self.rerr] if self.err_open else [])
            readable, _, _ = select.select(rlist, [], [], left)
            if self.rerr in readable:
                self._pump_err()

    def readline(self, deadline: float) -> bytes | None:
        """A header line from the driver; None on EOF, timeout or an over-long line."""
        while (nl := self.buf.find(b"\n")) < 0:
            if len(self.buf) > self.MAX_HEADER or not self._fill(deadline):
                return None
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 1]
        return line

    def read_exact(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill(deadline, n - len(self.buf)):
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def stderr_text(self) -> str:
        self._pump_err()
        return bytes(self.err).decode("utf-8", "replace").strip()


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Block until `proc` exits or `timeout` passes (a pidfd; Popen.wait(timeout) polls)."""
    if proc.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return proc.poll() is not None


def _end_session(proc: subprocess.Popen) -> None:
    """Stop the sandbox so that bwrap itself reaps the driver.

    Closing stdin makes the driver exit; bwrap then reaps it and exits, and the kernel tears
    down the PID namespace. If the driver does not go (stuck mid-test after a host-side
    timeout), SIGKILL it (the sandbox's PID 1: everything in the namespace dies with it), then
    bwrap's process group. Killing bwrap first would leave the driver to be reaped by the
    host's init, which can take seconds.
    """
    try:
        proc.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass
    if _wait_exit(proc, 1.0):
        return
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            inner = [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        inner = []
    for pid in inner:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if _wait_exit(proc, 2.0):
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()  # blocking waitpid; SIGKILL cannot be ignored


def _drop_privileges() -> tuple[list[str], dict[str, Any]]:
    """(argv prefix, Popen kwargs) that start the sandbox as nobody when we are root.

    `setpriv` (util-linux) is preferred over Popen's `user=`: with `user=` CPython cannot use
    vfork and forks the whole caller, which costs ~80 ms per sandbox in a process holding a
    few GiB (a trainer); the extra exec of setpriv costs ~2 ms.
    """
    if os.geteuid() != 0:
        return [], {}
    setpriv = shutil.which("setpriv")
    uid = str(SANDBOX_UID)
    if setpriv:
        return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"], {}
    return [], {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}


_RESULT_FIELDS = 9  # RESULT status exit signal wall cpu rss n_out n_err


def _parse_result(head: bytes, out_cap: int) -> tuple[RunResult, int, int] | None:
    """Parse a RESULT header strictly; None if malformed."""
    parts = head.split()
    if len(parts) != _RESULT_FIELDS or parts[0] != b"RESULT":
        return None
    try:
        status = parts[1].decode()
        exit_code = None if parts[2] == b"-" else int(parts[2])
        sig = None if parts[3] == b"-" else int(parts[3])
        wall, cpu = float(parts[4]), float(parts[5])
        rss, n_out, n_err = int(parts[6]), int(parts[7]), int(parts[8])
    except (ValueError, UnicodeDecodeError):
        return None
    if status not in RUN_STATUSES or not (0 <= n_out <= out_cap and 0 <= n_err <= 1 << 24):
        return None
    return RunResult(status, "", "", exit_code, wall, cpu, sig, rss), n_out, n_err


def _converse(
    pipe: _Pipe,
    proc: subprocess.Popen,
    config: bytes,
    inputs: Sequence[str | bytes],
    wall: float,
    output_limit_bytes: int,
    keep_going: Callable[[int, RunResult], bool] | None,
    outcome: _SessionOutcome,
    preamble: bytes = b"",
) -> bool:
    """Send one program's configuration and its tests to a driver; True if it is still sound
    (it answered READY and every test in time: a warm sandbox may take another program).
    `preamble`: what a newly started driver reads first (`_driver_boot`)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    if not pipe.write(preamble + b"%d\n" % len(config) + config, deadline):
        outcome.failure = "sandbox exited before reading its configuration: " + (
            pipe.stderr_text() or f"exit {proc.poll()}"
        )
        return False
    head = pipe.readline(deadline)
    parts = head.split() if head else []
    if len(parts) != 2 or parts[0] != b"READY" or not parts[1].isdigit():
        outcome.failure = "sandbox did not start: " + (
            pipe.stderr_text() or "no answer from the driver"
        )
        return False
    if int(parts[1]):
        text = pipe.read_exact(int(parts[1]), deadline)
        outcome.compile_error = (text or b"").decode("utf-8", "replace")
        return text is not None
    outcome.started = True
    for i, text in enumerate(inputs):
        data = text if isinstance(text, bytes) else _encode_input(text)
        started = time.monotonic()
        deadline = started + wall * WALL_CAP_FACTOR + HOST_SLACK_S + len(data) / 50e6
        parsed = None
        if pipe.write(b"%d\n" % len(data) + data, deadline):
            head = pipe.readline(deadline)
            parsed = _parse_result(head, output_limit_bytes) if head else None
        body = pipe.read_exact(parsed[1] + parsed[2], deadline) if parsed else None
        if parsed is None or body is None:
            timed_out = time.monotonic() >= deadline
            why = pipe.stderr_text()
            if timed_out:  # the driver did not answer: the judge failed, not the program
                why = "the sandbox did not answer in time" + (f": {why}" if why else "")
                outcome.results.append(
                    RunResult("sandbox_error", "", why, None, time.monotonic() - started)
                )
            else:
                outcome.failure = "sandbox died during a test" + (f": {why}" if why else "")
            return False
        result, n_out, _ = parsed
        result = dataclasses.replace(
            result,
            stdout=body[:n_out].decode("utf-8", "replace"),
            stderr=body[n_out:].decode("utf-8", "replace"),
        )
        outcome.results.append(result)
        if keep_going is not None and not keep_going(i, result):
            break
    return True


def _close_streams(proc: subprocess.Popen) -> None:
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()  # type: ignore[union-attr]
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Warm sandboxes: one bubblewrap sandbox serves many programs, one after another. Its PID 1
# (the driver's `_zygote`) never reads a program or an input; per program it forks a fresh
# program driver, which does what a one-program sandbox's driver does and exits at END.


def warm_sandboxes_enabled() -> bool:
    """Whether sandboxed sessions reuse warm sandboxes (`SPO_JUDGE_WARM=0` turns them off).

    Only on x86-64: the seccomp filter that shields a program driver (not PID 1) from its
    tests' signals is written for it."""
    return os.environ.get("SPO_JUDGE_WARM", "1") != "0" and os.uname().machine == "x86_64"


class _WarmSandbox:
    """A started warm sandbox: its process, pipe and cgroups (see docs/judge.md)."""

    def __init__(self, key: tuple, mem_bytes: int) -> None:
        self.key = key
        self.proc: subprocess.Popen | None = None
        self.cgroups: _TestCgroups | None = None
        self.mem_bytes = mem_bytes
        self.programs = 0

    def start(self, sandbox: tuple[str, list[str]], placement: tuple) -> str | None:
        """Start it; None, or why it failed."""
        parents = _cgroup_dirs()
        if parents is not None:
            try:
                self.cgroups = _TestCgroups(parents, self.mem_bytes, NPROC_LIMIT)
            except OSError as exc:
                return f"could not make the sandbox's cgroups: {exc}"
        prefix, popen_kw = _drop_privileges()
        bwrap, binds = sandbox
        argv = prefix + _bwrap_argv(bwrap, binds, FILE_LIMIT_BYTES + (1 << 20))
        try:
            self.proc = _launch(
                argv,
                placement,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd="/",
                env={},
                start_new_session=True,
                close_fds=True,
                pass_fds=self.cgroups.fds if self.cgroups else (),
                **popen_kw,
            )
        except OSError as exc:
            self.close()
            return f"could not start the sandbox: {exc}"
        self.pipe = _Pipe(self.proc)
        config = marshal.dumps(
            {"zygote": True, "sandboxed": True, "cgroups": self.cgroups is not None}
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        boot = _driver_boot(PYTHON)[1]
        if not self.pipe.write(boot + b"%d\n" % len(config) + config, deadline) or (
            self.pipe.readline(deadline) != b"ZYGOTE"
        ):
            why = self.pipe.stderr_text() or "no answer from the driver"
            self.close()
            return f"sandbox did not start: {why}"
        return None

    def set_memory(self, mem_bytes: int) -> bool:
        """Give the sandbox's memory cgroup this limit (a program's); False if that failed."""
        if self.cgroups is None or mem_bytes == self.mem_bytes:
            return True
        try:
            self.cgroups.set_memory(mem_bytes, raising=mem_bytes > self.mem_bytes)
        except OSError:
            return False
        self.mem_bytes = mem_bytes
        return True

    def finish(self) -> bool:
        """End the current program (END, then PID 1's IDLE); False if the sandbox is not clean
        or did not answer (it is then closed by the caller)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        return self.pipe.write(b"E\n", deadline) and self.pipe.readline(deadline) == b"IDLE"

    def close(self) -> None:
        if self.proc is not None:
            _end_session(self.proc)
            _close_streams(self.proc)
            self.proc = None
        if self.cgroups is not None:
            self.cgroups.close()
            self.cgroups = None


# bwrap's --die-with-parent is tied to the THREAD that started it (PR_SET_PDEATHSIG): a warm
# sandbox outlives the judge_batch worker thread that needed it first, so every warm sandbox
# is started by one long-lived thread of ours (and still dies with this process).
_launcher: dict[str, Any] = {}


def _placement() -> tuple[tuple[int, ...], int]:
    """The calling thread's CPUs and nice value, which a sandbox it starts would inherit."""
    return tuple(sorted(os.sched_getaffinity(0))), os.getpriority(os.PRIO_PROCESS, 0)


def _launch(argv: list[str], placement: tuple, **popen_kw: Any) -> subprocess.Popen:
    """`subprocess.Popen(argv, **popen_kw)` run by the launcher thread, given the caller's
    `placement()` first (CPUs and nice value are per thread); raises what Popen raises."""
    with _warm_lock:
        if not _launcher:
            requests: queue.SimpleQueue = queue.SimpleQueue()

            def serve() -> None:
                while True:
                    fn, fut = requests.get()
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(exc)

            threading.Thread(target=serve, name="spo-sandbox-launcher", daemon=True).start()
            _launcher["requests"] = requests
        requests = _launcher["requests"]

    def start() -> subprocess.Popen:
        cpus, nice = placement
        try:
            os.sched_setaffinity(0, cpus)
            os.setpriority(os.PRIO_PROCESS, 0, nice)  # 0: this thread, on Linux
        except OSError:  # (a lower nice value than ours needs privileges)
            pass
        return subprocess.Popen(argv, **popen_kw)

    fut: Future = Future()
    requests.put((start, fut))
    return fut.result()


_warm_lock = threading.Lock()
_warm_idle: dict[tuple, list[_WarmSandbox]] = {}
# Idle warm sandboxes kept per sandbox layout; more are closed as they come back.
WARM_IDLE_MAX = max(4, 2 * (os.cpu_count() or 1))


def _take_warm(key: tuple) -> _WarmSandbox | None:
    with _warm_lock:
        idle = _warm_idle.get(key)
        return idle.pop() if idle else None


def _give_back(box: _WarmSandbox) -> None:
    with _warm_lock:
        idle = _warm_idle.setdefault(box.key, [])
        if len(idle) < WARM_IDLE_MAX:
            idle.append(box)
            return
    box.close()


def close_warm_sandboxes() -> None:
    """Close every idle warm sandbox (also run at exit)."""
    with _warm_lock:
        boxes = [b for idle in _warm_idle.values() for b in idle]
        _warm_idle.clear()
    for box in boxes:
        box.close()


def _forget_warm_sandboxes() -> None:
    """In a forked child of the host: the sandboxes are the parent's (never close them)."""
    global _warm_lock
    _warm_lock = threading.Lock()
    _warm_idle.clear()
    _launcher.clear()  # the launcher thread does not exist in a forked child


atexit.register(close_warm_sandboxes)
os.register_at_fork(after_in_child=_forget_warm_sandboxes)


def _run_warm(
    source: str,
    inputs: Sequence[str | bytes],
    sandbox: tuple[str, list[str]],
    config: dict[str, Any],
    wall: float,
    output_limit_bytes: int,
    keep_going: Callable[[int, RunResult], bool] | None,
) -> _SessionOutcome:
    """`_run_session` in a warm sandbox: an idle one if there is one, else a new one."""
    # A sandbox's processes keep the CPUs and priority of the thread that started it, and its
    # cgroups: only a caller with the same ones may reuse it.
    placement = _placement()
    key = (sandbox[0], tuple(sandbox[1]), _cgroup_dirs() is not None, placement)
    mem = config["mem_bytes"] + INTERPRETER_ALLOWANCE_BYTES
    for _ in range(2):  # an idle sandbox that fails before READY: once more in a new one
        outcome = _SessionOutcome()
        box = _take_warm(key)
        reused = box is not None
        if box is None:
            box = _WarmSandbox(key, mem)
            why = box.start(sandbox, placement)
            if why is not None:
                outcome.failure = why
                return outcome
        assert box.proc is not None
        if not box.set_memory(mem):
            box.close()
            continue
        frame = marshal.dumps(
            {
                **config,
                "source": source,
                "cgroup": box.cgroups.config() if box.cgroups else None,
                # PID 1 above the program driver is one more process of the sandbox's uid
                "nproc": config["nproc"] + 1,
            }
        )
        box.pipe.err.clear()  # the drivers' own messages of earlier programs are not this one's
        sound = False
        try:
            sound = _converse(
                box.pipe, box.proc, frame, inputs, wall, output_limit_bytes, keep_going, outcome
            )
            sound = sound and box.finish()
        finally:
            if sound:
                box.programs += 1
                _give_back(box)
            else:
                box.close()
        if reused and outcome.failure is not None and not outcome.started:
            continue
        return outcome
    return outcome


def _run_session(
    source: str,
    inputs: Sequence[str | bytes],
    *,
    time_limit_s: float,
    memory_limit_mb: int,
    sandbox: tuple[str, list[str]] | None,
    output_limit_bytes: int = OUTPUT_LIMIT_BYTES,
    wall_limit_s: float | None = None,
    keep_going: Callable[[int, RunResult], bool] | None = None,
    config_extra: Mapping[str, Any] | None = None,
) -> _SessionOutcome:
    """Run `source` on each input in one sandbox (`sandbox=None`: without bwrap).

    With bwrap and `warm_sandboxes_enabled()` the sandbox is a warm one, reused across
    programs (a fresh program driver forked from its pristine PID 1 for each program).
    `keep_going(i, result)` decides after each test whether to send the next one.
    `config_extra`: further driver options (see `sandbox_driver`: input_file, output_file,
    argv, exc_status, fn_name, file_frames); with `file_frames` each input is a ready
    `bytes` frame. A `str` input is the test's stdin (UTF-8).
    """
    if not (time_limit_s > 0 and memory_limit_mb > 0):
        raise SpoError(
            f"time and memory limits must be positive (got {time_limit_s} s, {memory_limit_mb} MB)"
        )
    wall = wall_limit_s if wall_limit_s is not None else time_limit_s * WALL_FACTOR + WALL_SLACK_S
    config: dict[str, Any] = {
        "cpu_s": float(time_limit_s),
        "wall_s": float(wall),
        "mem_bytes": int(memory_limit_mb) << 20,
        "out_bytes": int(output_limit_bytes),
        "err_keep": STDERR_KEEP_BYTES,
        "fsize_bytes": FILE_LIMIT_BYTES,
        "nofile": NOFILE_LIMIT,
        "sandboxed": sandbox is not None,
        "wall_cap_s": wall * WALL_CAP_FACTOR,
        **(config_extra or {}),
    }
    if sandbox is not None and warm_sandboxes_enabled():
        config.update(nproc=NPROC_LIMIT, workdir="/tmp")
        return _run_warm(source, inputs, sandbox, config, wall, output_limit_bytes, keep_going)
    outcome = _SessionOutcome()
    workdir_host: str | None = None
    cgroups: _TestCgroups | None = None
    prefix, popen_kw = _drop_privileges()
    if sandbox is not None:
        bwrap, binds = sandbox
        argv = prefix + _bwrap_argv(bwrap, binds, FILE_LIMIT_BYTES + (1 << 20))
        workdir, cwd, env = "/tmp", "/", {}
        nproc = NPROC_LIMIT
        python = PYTHON
    else:
        python = PYTHON if os.access(PYTHON, os.X_OK) else None
        if python is None:  # unsafe mode may fall back to our own interpreter (not as nobody)
            python, prefix, popen_kw = sys.executable, [], {}
        workdir_host = tempfile.mkdtemp(prefix="spo-judge-")
        dropped = bool(prefix or popen_kw)
        if dropped:
            os.chown(workdir_host, SANDBOX_UID, SANDBOX_UID)
        argv = prefix + [python, "-I", "-S", "-c", _driver_arg(python)]
        workdir, cwd = workdir_host, workdir_host
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir_host}
        nproc = NPROC_LIMIT_UNSAFE if dropped else 0  # uid 0 ignores it; others share it
    parents = _cgroup_dirs()
    if parents is not None:
        try:
            cgroups = _TestCgroups(
                parents, (int(memory_limit_mb) << 20) + INTERPRETER_ALLOWANCE_BYTES, NPROC_LIMIT
            )
        except OSError as exc:
            outcome.failure = f"could not make the sandbox's cgroups: {exc}"
            return outcome
    config.update(
        source=source,
        nproc=nproc,
        workdir=workdir,
        cgroup=cgroups.config() if cgroups else None,
    )
    proc: subprocess.Popen | None = None
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group: the watchdog kills all of it
                close_fds=True,
                pass_fds=cgroups.fds if cgroups else (),
                **popen_kw,
            )
        except OSError as exc:
            outcome.failure = f"could not start the sandbox: {exc}"
            return outcome
        _converse(
            _Pipe(proc),
            proc,
            marshal.dumps(config),
            inputs,
            wall,
            output_limit_bytes,
            keep_going,
            outcome,
            preamble=_driver_boot(python)[1],
        )
        return outcome
    finally:
        if proc is not None:
            _end_session(proc)
            _close_streams(proc)
        if cgroups is not None:
            cgroups.close()
        if workdir_host is not None:
            shutil.rmtree(workdir_host, ignore_errors=True)


def ensure_sandbox() -> None:
    """Raise SpoError unless bubblewrap can run the system Python here (checked once)."""
    _sandbox_for(False)


def _encode_input(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # round-trips undecodable input bytes
    except UnicodeEncodeError:  # other lone surrogates: no byte form exists
        return text.encode("utf-8", "replace")


def _sandbox_for(unsafe_no_sandbox: bool) -> tuple[str, list[str]] | None:
    """bwrap path and binds, or None for unsafe mode; SpoError when bwrap is missing."""
    if unsafe_no_sandbox:
        return None
    bwrap = _bwrap_path()
    _python_path()
    return bwrap, _layout(bwrap)


# ---------------------------------------------------------------------------------------------
# Public API


def run_program(
    source: str,
    stdin: str,
    *,
    time_limit_s: float = 2.0,
    memory_limit_mb: int = 256,
    unsafe_no_sandbox: bool = False,
    output_limit_bytes: int = OUTPUT_LIMIT_BYTES,
) -> RunResult:
    """Run an untrusted Python 3 program once on `stdin`, sandboxed with bubblewrap.

    `time_limit_s` bounds CPU time; the wall clock is bounded at 1.5x that plus 1 s.
    A syntax error is reported as `runtime_error` with the error text in `stderr`, as
    `python3 solution.py` would. Raises SpoError if bwrap is missing (unless
    `unsafe_no_sandbox`, which runs the same driver without isolation: trusted code only).
    """
    sandbox = _sandbox_for(unsafe_no_sandbox)
    started = time.monotonic()
    out = _run_session(
        source,
        [stdin],
        time_limit_s=time_limit_s,
        memory_limit_mb=memory_limit_mb,
        sandbox=sandbox,
        output_limit_bytes=output_limit_bytes,
    )
    if out.compile_error is not None:
        return RunResult("runtime_error", "", out.compile_error, 1, time.monotonic() - started)
    if out.results:
        return out.results[0]
    return RunResult(
        "sandbox_error", "", out.failure or "no result", None, time.monotonic() - started
    )
