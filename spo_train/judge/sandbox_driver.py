"""Judge driver: runs INSIDE the sandbox under the system `/usr/bin/python3`, stdlib only.

The host (`spo_train.judge.sandbox`) starts `python3 -I -S -c <bootstrap>` in a sandbox and
writes this file's compiled code to its stdin first (the bootstrap reads exactly that many
bytes and runs it); nothing of the project is visible in the sandbox. It imports only
builtin or tiny modules, because its start-up time is paid once per judged program.

Protocol (binary frames, so outputs need no escaping):

- host -> driver (stdin): ``b"<n>\\n"`` then n bytes. The first frame is the config, a
  `marshal`-ed dict (``source, cpu_s, wall_s, mem_bytes, out_bytes, err_keep, fsize_bytes,
  nproc, nofile, workdir, sandboxed``, optional ``argv, exc_status, input_file, output_file,
  fn_name, call_prelude, file_frames``); every later frame is one test's raw stdin, or with
  `file_frames` a marshalled ``(stdin, {file name: bytes})`` written into the working directory
  first (a checker's input/output/answer files). EOF ends.
- ``input_file``: the test input is written to that file in the working directory (stdin is
  empty, as on a contest judge); ``output_file``: the program's answer is that file's content
  (empty if it made none), not its stdout.
- ``fn_name`` (call-based): after the program ran (its prints discarded, as TACO's evaluator
  captures them), the child calls ``fn_name`` (a top-level function, else a method of class
  ``Solution``) with the JSON argument list read from stdin and writes the JSON of the return
  value to stdout.
- driver -> host (stdout): ``b"READY <n>\\n"`` + n bytes of compile error text (n = 0: none);
  then per test ``b"RESULT <status> <exit|-> <signal|-> <wall_s> <cpu_s> <max_rss_kb> <n_out>
  <n_err>\\n"`` + n_out bytes of stdout + n_err bytes of stderr.

Expected outputs never enter the sandbox: comparison happens on the host, so a program cannot
find the answer in memory it inherits from this driver.

Per test the driver forks once; the child applies rlimits, swaps in its copy of stdio objects
built before any test and never used (`_build_stdio`) and a fresh `__main__`, and executes the
code object compiled once up front. Under bubblewrap the driver
is PID 1 of the sandbox's PID namespace (`--as-pid-1`), so the program can neither kill it
(the kernel drops signals from inside the namespace to its init) nor ptrace it or open its
/proc files (it makes itself non-dumpable); after each test ``kill(-1, SIGKILL)`` removes every
process the test left behind, including double-forked `setsid` daemons.
"""

import _signal
import atexit  # here, not in each test: importing it there cost ~50 page copies
import builtins
import gc
import io
import marshal
import os
import resource
import select
import sys
import time

# Exit status the child uses to report an uncaught MemoryError (RLIMIT_AS hit).
MEMORY_EXIT = 201
# Exit status of a child whose setup failed before the program ran (the judge's failure).
SETUP_EXIT = 202
# Imported once here (cheap) so that each forked test gets them for free: most contest
# programs use some of them.
_PRELOAD = ("collections", "heapq", "bisect", "math", "itertools")

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.02  # how often a running test's CPU time is checked
_SIGKILL = _signal.SIGKILL


_libc_cache: dict = {}


def _libc(name: str):
    """A libc function taking and returning C ints, through `_ctypes` alone (the `ctypes`
    package costs ~1 ms more to import); made once per process (two classes each time cost
    a program driver ~0.1 ms), or in a warm sandbox's PID 1 for all of them."""
    if name not in _libc_cache:
        _libc_cache[name] = _make_libc(name)
    return _libc_cache[name]


def _make_libc(name: str):
    try:
        import _ctypes

        class _Int(_ctypes._SimpleCData):
            _type_ = "i"

        class _Fn(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = _Int

        return _Fn(_ctypes.dlsym(_ctypes.dlopen(None, 0), name))
    except Exception:  # noqa: BLE001 - private API changed: take the documented way
        import ctypes

        return getattr(ctypes.CDLL(None), name)


def _prctl(option: int, arg: int) -> int:
    """prctl(2)."""
    return _libc("prctl")(option, arg, 0, 0, 0)


# How many objects of each System V IPC kind exist in our IPC namespace, without reading
# /proc/sysvipc (an open, a formatted read and a close per kind after every test):
# shmctl(0, SHM_INFO) -> struct shm_info.used_ids, msgctl(0, MSG_INFO) -> struct
# msginfo.msgpool, semctl(0, 0, SEM_INFO) -> struct seminfo.semusz (sysvipc(7)).
_IPC_INFO = {
    "shm": ("shmctl", (0, 14), 0),
    "msg": ("msgctl", (0, 12), 0),
    "sem": ("semctl", (0, 0, 19), 28),
}
_ipc_calls: dict = {}


def _sysv_ipc_in_use(kind: str) -> bool:
    """Whether any object of `kind` ("shm", "msg", "sem") may exist (True when unsure)."""
    try:
        if not _ipc_calls:
            import ctypes

            _ipc_calls["buf"] = ctypes.create_string_buffer(64)
            for name, (fn, _, _) in _IPC_INFO.items():
                _ipc_calls[name] = _libc(fn)
        _, args, offset = _IPC_INFO[kind]
        buf = _ipc_calls["buf"]
        if _ipc_calls[kind](*args, buf) < 0:
            return True
        return int.from_bytes(buf.raw[offset : offset + 4], sys.byteorder) != 0
    except Exception:  # noqa: BLE001 - no ctypes, another libc: read /proc instead
        return True


def _remove_sysv_ipc() -> None:
    """Remove every System V shared memory segment, message queue and semaphore set.

    They outlive the processes that made them (the sandbox's IPC namespace is the session's),
    so a test could otherwise hand memory or state to the next one. All belong to our uid.
    """
    for kind, fn, args in (
        ("shm", "shmctl", (0, 0)),  # shmctl(id, IPC_RMID, NULL)
        ("msg", "msgctl", (0, 0)),  # msgctl(id, IPC_RMID, NULL)
        ("sem", "semctl", (0, 0)),  # semctl(id, 0, IPC_RMID)
    ):
        if not _sysv_ipc_in_use(kind):
            continue
        try:
            fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
            try:
                text = bytearray()
                while chunk := os.read(fd, 1 << 16):
                    text += chunk
            finally:
                os.close(fd)
            ids = [int(line.split()[1]) for line in text.split(b"\n")[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        if ids:
            call = _libc(fn)
            for ident in ids:
                call(ident, *args)


# Syscalls through which a process of the sandbox's uid could change ANOTHER process of that
# uid - the driver - since same-uid processes may: its resource limits (prlimit64), its
# scheduling (sched_setaffinity/setscheduler/setparam/setattr), its priority (setpriority,
# ioprio_set; for a process group or a whole user too). Making the driver fail would turn a
# verdict into "not judged", so a seccomp filter refuses them (EPERM) for the driver's pids,
# for process groups and users; a program may still change itself and its own children.
# x86-64 only (numbers below); elsewhere the driver checks its own limits after each test.
_X86_64 = 0xC000003E  # AUDIT_ARCH_X86_64
_PID_SYSCALLS = (302, 203, 144, 142, 314)  # prlimit64, sched_setaffinity/scheduler/param/attr
_WHICH_WHO_SYSCALLS = (141, 251)  # setpriority(which, who, ...), ioprio_set(which, who, ...)
# A warm sandbox's program driver is not PID 1, whom the kernel shields from signals sent
# inside its namespace: signals to it (kill, tkill, tgkill, rt_(tg)sigqueueinfo with its pid;
# kill of its process group or of -1, "every process") and pidfd_open of it are refused, and
# pidfd_send_signal altogether (a /proc/<pid> directory is a pidfd too).
_SIGNAL_PID_SYSCALLS = (200, 234, 129, 297, 434)  # tkill, tgkill, rt_sigqueueinfo,
# rt_tgsigqueueinfo, pidfd_open: first argument a pid
_KILL, _PIDFD_SEND_SIGNAL = 62, 424
# Kernel keyrings outlive the processes that fill them (per user namespace): a test could hand
# state to the next one through them, so add_key, request_key and keyctl are refused.
_KEYRING_SYSCALLS = (248, 249, 250)
# Without cgroups nothing counts memory that no process maps (a memfd written with write(), a
# System V segment left unattached), so then these are refused outright (EPERM), as contest
# judges refuse what they cannot count: memfd_create, shmget.
_UNCOUNTED_MEMORY_SYSCALLS = (319, 29)
_RT_SIGACTION, _SIGCHLD = 13, 17
# A warm sandbox keeps one network namespace for all its tests and programs, and the kernel
# keeps state there after a socket's process is gone (TIME_WAIT connections listed in
# /proc/net/tcp, bind() refusing their ports, /proc/net/snmp counters): a test could hand its
# answers to a later test or program (a wrong program passed, 10 of 10). No contest program
# needs a network, so socket() and socketpair() are refused (EPERM) for every family but
# AF_UNIX (asyncio's and multiprocessing's socketpairs; unix sockets die with their process).
_SOCKET_SYSCALLS = (41, 53)  # socket(domain, ...), socketpair(domain, ...)
_AF_UNIX = 1


def _seccomp_program(refuse_uncounted_memory: bool = False, protect: int = 0, part: str = "all"):
    """The filter as an installer function (keeps its buffers alive), or None off x86-64.

    `refuse_uncounted_memory` (no cgroups): also refuse `_UNCOUNTED_MEMORY_SYSCALLS` and
    SIGCHLD=ignore. `protect`: the pid of a program driver that is not PID 1 (warm sandbox):
    no signal may reach it, nor the changes above.

    `part`: "all" the whole filter (a test installs it); "driver" what the program driver may
    install on itself, so that its tests inherit it (all but what the driver does itself:
    kill(-1), memfd_create, and so on); "test" the rest, which each test adds (None: none).
    Installed together, "driver" and "test" refuse what "all" refuses."""
    import struct

    if os.uname().machine != "x86_64":
        return None
    import ctypes

    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    guarded = (1, protect) if protect else (1,)
    prog: list = []  # (code, k, jump-if-true label, jump-if-false label); None: next one
    labels: dict = {}

    def ld(offset: int) -> None:  # the 32 bits at `offset` of struct seccomp_data
        prog.append((0x20, offset, None, None))

    def jeq(k: int, jt=None, jf=None) -> None:
        prog.append((0x15, k & 0xFFFFFFFF, jt, jf))

    def ret(value: int) -> None:
        prog.append((0x06, value, None, None))

    def rule(nr: int, body) -> None:  # if the syscall is `nr`: body, then allow
        name = f"after{len(labels)}"
        labels[name] = None
        ld(0)
        jeq(nr, jf=name)
        body()
        ret(allow)
        labels[name] = len(prog)

    def first_arg_in(values) -> None:
        ld(16)  # args[0], low 32 bits (a pid_t)
        for v in values:
            jeq(v, jt="deny")

    base, mine = part in ("all", "driver"), part in ("all", "test")
    if not mine and not base:
        raise ValueError(part)
    if base:
        ld(4)  # arch
        jeq(_X86_64, jf="deny")  # another ABI (i386 int 0x80): nothing of ours uses it
        ld(0)
        prog.append((0x35, 0x40000000, "deny", None))  # jge: the x32 ABI
    else:
        ld(0)
    uncounted = _UNCOUNTED_MEMORY_SYSCALLS if refuse_uncounted_memory and mine else ()
    for nr in (_KEYRING_SYSCALLS if base else ()) + uncounted:
        jeq(nr, jt="deny")
    if refuse_uncounted_memory and mine:
        # rt_sigaction(SIGCHLD, act != NULL): a parent that ignores SIGCHLD (or sets
        # SA_NOCLDWAIT) has its children reaped by the kernel, whose CPU time then counts
        # nowhere the driver can see; reading the disposition (act NULL) stays allowed.
        def sigchld() -> None:
            ld(16)
            jeq(_SIGCHLD, jf="allow")
            ld(24)  # act, low and high 32 bits
            jeq(0, jf="deny")
            ld(28)
            jeq(0, jf="deny")

        rule(_RT_SIGACTION, sigchld)
    for nr in _SOCKET_SYSCALLS if base else ():

        def unix_only() -> None:
            ld(16)  # domain
            jeq(_AF_UNIX, jf="deny")

        rule(nr, unix_only)
    for nr in _PID_SYSCALLS if base else ():
        rule(nr, lambda: first_arg_in(guarded))
    for nr in _WHICH_WHO_SYSCALLS if base else ():

        def which_who() -> None:
            ld(16)  # which: 0 is a process; a process group or a user could reach the driver
            jeq(0, jf="deny")
            ld(24)  # who
            for v in guarded:
                jeq(v, jt="deny")

        rule(nr, which_who)
    if protect:
        # kill(-1) ("every process") is the driver's own way to end a test's processes
        killed = ((protect, -protect) if base else ()) + ((-1,) if mine else ())
        rule(_KILL, lambda: first_arg_in(killed))
        for nr in _SIGNAL_PID_SYSCALLS if base else ():
            rule(nr, lambda: first_arg_in((protect,)))
        if base:
            ld(0)
            jeq(_PIDFD_SEND_SIGNAL, jt="deny")
    if not base and len(prog) == 1:  # nothing for a test to add
        return None
    labels["allow"] = len(prog)
    ret(allow)
    labels["deny"] = len(prog)
    ret(deny)
    code = []
    for i, (op, k, jt, jf) in enumerate(prog):
        jt = 0 if jt is None else labels[jt] - i - 1
        jf = 0 if jf is None else labels[jf] - i - 1
        assert 0 <= jt < 256 and 0 <= jf < 256
        code.append(struct.pack("<HBBI", op, jt, jf, k))
    raw = b"".join(code)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Prog(len(prog), ctypes.addressof(buf))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    # PR_SET_NO_NEW_PRIVS (bwrap sets it already) here, once: the tests inherit it.
    if prctl(38, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    # Each test then makes one call with arguments converted here: ctypes' conversion of
    # declared argument types costs a test ~45 copy-on-write pages and 0.1 ms.
    call = ctypes.CFUNCTYPE(ctypes.c_int, use_errno=True)(ctypes.cast(prctl, ctypes.c_void_p).value)
    args = tuple(ctypes.c_ulong(v) for v in (22, 2, ctypes.addressof(fprog), 0, 0))

    def install() -> None:
        if call(*args) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")

    install.keep = (buf, fprog)  # type: ignore[attr-defined]
    install.buf = buf  # type: ignore[attr-defined]
    return install


# A warm sandbox's PID 1 builds the filter once (building it - ctypes classes, a function
# type, ~90 instructions - cost each program driver ~0.8 ms) with this number where the
# program driver's pid goes (above any pid: pid_max <= 2**22), and each program driver writes
# its pid into its copy of the instructions (`_seccomp_for_pid`).
_PID_PLACEHOLDER = 0x3FFFF000
_seccomp_template: dict = {}


def _build_seccomp_template(refuse_uncounted_memory: bool) -> None:
    """In a warm sandbox's PID 1: the filters of its program drivers (pid to be filled in)
    and of their tests."""
    install = _seccomp_program(refuse_uncounted_memory, _PID_PLACEHOLDER, part="driver")
    if install is None:
        return
    raw = bytes(install.buf)  # type: ignore[attr-defined]
    mask = 0xFFFFFFFF
    spots = {_PID_PLACEHOLDER: [], -_PID_PLACEHOLDER & mask: []}
    for at in range(0, len(raw), 8):  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
        k = int.from_bytes(raw[at + 4 : at + 8], "little")
        if k in spots:
            spots[k].append(at + 4)
    _seccomp_template.update(
        test=_seccomp_program(refuse_uncounted_memory, _PID_PLACEHOLDER, part="test"),
        install=install,
        refuse=refuse_uncounted_memory,
        pid=spots[_PID_PLACEHOLDER],
        neg=spots[-_PID_PLACEHOLDER & mask],
    )


def _seccomp_for_pid(refuse_uncounted_memory: bool, pid: int) -> tuple:
    """(the program driver's filter, its tests' filter) of a warm sandbox's program driver
    `pid` (`_seccomp_program(..., protect=pid, part="driver" / "test")`): PID 1's template
    with `pid` written in where there is one, else built here."""
    t = _seccomp_template
    if not t or t["refuse"] != refuse_uncounted_memory:
        return (
            _seccomp_program(refuse_uncounted_memory, protect=pid, part="driver"),
            _seccomp_program(refuse_uncounted_memory, protect=pid, part="test"),
        )
    view = memoryview(t["install"].buf).cast("B")
    for spots, value in ((t["pid"], pid), (t["neg"], -pid & 0xFFFFFFFF)):
        for at in spots:
            view[at : at + 4] = value.to_bytes(4, "little")
    return t["install"], t["test"]


class _Quitter:
    """`exit()` / `quit()`, which `site` would define (the driver runs with -S for speed)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Use {self.name}() or Ctrl-D (i.e. EOF) to exit"

    def __call__(self, code=None):
        try:
            sys.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        raise SystemExit(code)


# What `_Channel.frame` returns for the host's "end of this program" header ``E`` in a warm
# sandbox (every other frame has a length).
_END = object()


class _Channel:
    """Length-framed reads from the host's pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def _fill(self, need: int = 0) -> bool:
        # 64 KiB unless more of a frame is due: a 1 MiB read buffer is an mmap, mremap and
        # munmap per frame (malloc's threshold is 128 KiB).
        chunk = os.read(self.fd, max(1 << 16, need))
        if not chunk:
            return False
        self.buf += chunk
        return True

    def frame(self):
        """The next frame's bytes, `_END`, or None at EOF."""
        while (nl := self.buf.find(b"\n")) < 0:
            if not self._fill():
                return None
        if self.buf[:nl] == b"E":
            del self.buf[: nl + 1]
            return _END
        n = int(self.buf[:nl])
        del self.buf[: nl + 1]
        while len(self.buf) < n:
            if not self._fill(n - len(self.buf)):
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def _send(fd: int, *parts: bytes) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _exit_status_of(exc: SystemExit) -> int:
    """Mirror CPython's handling of SystemExit: None -> 0, int -> it, anything else -> print, 1."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(str(code) + "\n")
    except Exception:  # noqa: BLE001
        pass
    return 1


def _print_traceback(source: str) -> None:
    """The uncaught exception's traceback, starting in solution.py (not in this driver)."""
    try:
        import linecache
        import traceback

        # Tracebacks show the program's lines although no solution.py exists on disk.
        linecache.cache["solution.py"] = (len(source), None, source.splitlines(True), "solution.py")
        _, exc, tb = sys.exc_info()
        traceback.print_exception(type(exc), exc, tb.tb_next if tb else None)
    except BaseException:  # noqa: BLE001
        pass


def _unjsonable(obj):
    """JSON for a return value JSON cannot encode (a set, an object): never equal to a test's."""
    return {"__unjsonable__": repr(obj)}


def _call_function(glb: dict, fn_name: str, real_stdout) -> None:
    """Call-based tests (TACO): call `fn_name` with the JSON args on stdin, print JSON result."""
    import json

    args = json.loads(sys.stdin.read())
    if not isinstance(args, list):
        args = [args]
    if args and isinstance(args[0], dict):  # TACO turns a dict argument's keys into ints
        try:
            args = [{int(k): v for k, v in args[0].items()}, *args[1:]]
        except ValueError:
            pass
    fn = glb.get(fn_name)
    if not callable(fn):
        cls = glb.get("Solution")
        if cls is None:
            raise NameError(f"no function {fn_name!r} and no class Solution")
        fn = getattr(cls(), fn_name)
    result = fn(*args)
    if isinstance(result, tuple):
        result = list(result)
    real_stdout.write(json.dumps(result, default=_unjsonable))


# The test's stdin, stdout and stderr (fds 0, 1, 2 of every test process), built once before
# any test by `_build_stdio` and never used by the driver: each forked test gets its own copy
# of these never-used objects, which costs a few copy-on-write pages where building three
# TextIOWrappers in the test (codec lookups, buffers) cost ~100 and a fifth of its setup time.
_STDIO: list = []


def _build_stdio() -> None:
    """Build the streams `python3 prog.py` would have on a seekable stdin file and pipes.

    What the objects remember of their descriptors at construction (seekable or not, the
    position) is that of the files the tests get: fds 0, 1, 2 are pointed at a memfd (as each
    test's stdin is) and a pipe (as its stdout and stderr are) while they are built, then
    restored."""
    if _STDIO:
        return
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    memfd = os.memfd_create("stdin", os.MFD_CLOEXEC)
    r, w = os.pipe()
    try:
        os.dup2(memfd, 0)
        os.dup2(w, 1)
        os.dup2(w, 2)
        streams = (
            io.TextIOWrapper(
                io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                encoding="utf-8",
                errors="surrogateescape",
            ),
            io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                encoding="utf-8",
                errors="surrogateescape",
            ),
            io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                encoding="utf-8",
                errors="backslashreplace",
                line_buffering=True,
            ),
        )
    finally:
        for fd, old in zip((0, 1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        for fd in (memfd, r, w):
            os.close(fd)
    # The interpreter's own streams stay referenced here: a test that replaces them then drops
    # a reference, where their last one would run their finalizers (close, flush) in every test.
    _STDIO.append(streams)
    _STDIO.append(
        (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
    )


def _test_limits(cfg: dict, vsz: int) -> list:
    """The resource limits of a test's process: (RLIMIT_*, soft, hard)."""
    # Without cgroups: the program may use `mem_bytes` of address space beyond what the
    # forked interpreter already maps (`vsz`). With them the cgroup counts what is really
    # used (thread stacks and malloc arenas reserve address space they never touch).
    mem = resource.RLIM_INFINITY if cfg.get("cgroup") else cfg["mem_bytes"] + vsz
    cpu_soft = int(cfg["cpu_s"]) + 1  # backstop; the driver polls CPU time precisely
    limits = [
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_STACK, cfg["mem_bytes"], cfg["mem_bytes"]),
        (resource.RLIMIT_FSIZE, cfg["fsize_bytes"], cfg["fsize_bytes"]),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, cfg["nofile"], cfg["nofile"]),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        # POSIX message queues outlive their makers (the IPC namespace is the session's)
        # and cannot be listed to remove: none can be made.
        (resource.RLIMIT_MSGQUEUE, 0, 0),
        (resource.RLIMIT_CPU, cpu_soft, cpu_soft + 1),
    ]
    if cfg["nproc"]:
        limits.append((resource.RLIMIT_NPROC, cfg["nproc"], cfg["nproc"]))
    return limits


def _child(code, source: str, stdin_fd: int, out_w: int, err_w: int, cfg: dict, vsz: int):
    """Runs in the forked child: never returns."""
    status = 1
    exc_status = cfg.get("exc_status", 1)
    fn_name = cfg.get("fn_name")
    prelude = cfg.get("prelude_code")
    try:
        os.setsid()  # own session and process group: unsandboxed mode kills the group
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        cg = cfg.get("cgroup")
        if cg:  # into the test's cgroups (memory, cpuacct, pids), through the host's fds
            for fd in cg["procs"]:
                os.write(fd, b"0")
        os.closerange(3, 1 << 16)  # the host pipes, the pidfd, the cgroup fds, all the driver's
        os.chdir(cfg["rundir"])
        for which, soft, hard in cfg.get("test_limits") or _test_limits(cfg, vsz):
            try:
                resource.setrlimit(which, (soft, hard))
            except (ValueError, OSError):  # above an existing hard limit: clamp to it
                cur_hard = resource.getrlimit(which)[1]
                cap = hard if cur_hard == resource.RLIM_INFINITY else min(hard, cur_hard)
                resource.setrlimit(which, (min(soft, cap), cap))
        _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # as `python3 prog.py`
        if cfg.get("seccomp") is not None:
            cfg["seccomp"]()
        # Fresh stdio: this process's copy of the never-used streams built before the fork.
        sys.stdin, sys.stdout, sys.stderr = _STDIO[0]
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = _STDIO[0]
        sys.argv = list(cfg.get("argv") or ["solution.py"])
        main = type(sys)("__main__")
        main.__dict__["__builtins__"] = builtins
        main.__dict__["__file__"] = "solution.py"
        sys.modules["__main__"] = main
        glb = main.__dict__
        real_stdout = sys.stdout
        if fn_name:  # the program's own prints are not its answer (TACO captures them)
            sys.stdout = sys.__stdout__ = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        gc.enable()
    except BaseException as exc:  # noqa: BLE001 - setup failure: report, never run the program
        try:
            os.write(2, f"sandbox child setup failed: {exc!r}\n".encode())
        finally:
            os._exit(SETUP_EXIT)
    del cfg, stdin_fd, out_w, err_w  # nothing of the driver the program needs
    try:
        if prelude is not None:
            exec(prelude, glb)  # noqa: S102 - our own imports for call-based programs
        exec(code, glb)  # noqa: S102 - this is the judged program, confined by the sandbox
        if fn_name:
            _call_function(glb, fn_name, real_stdout)
        status = 0
    except SystemExit as exc:
        status = _exit_status_of(exc)
    except MemoryError:
        status = MEMORY_EXIT
        try:
            sys.stderr.write("MemoryError\n")
        except BaseException:  # noqa: BLE001
            pass
    except BaseException:  # noqa: BLE001 - any uncaught error is the program's runtime error
        status = exc_status
        _print_traceback(source)
    # What the interpreter does at exit: wait for non-daemon threads, run atexit, flush.
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
    except BaseException:  # noqa: BLE001
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr, real_stdout):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. a closed pipe: like CPython, exit 120
            if status == 0:
                status = 120
    os._exit(status)


def _proc_cpu_s(pid: int) -> float:
    """utime+stime of a live process from /proc (0.0 if it is already gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _children_of_self() -> list:
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return pids


def _owns_sandbox(cfg: dict) -> bool:
    """Inside the sandbox every process but us (and, in a warm sandbox, PID 1 above us) is the
    test's: we are its PID 1, or a warm sandbox's program driver (a child subreaper)."""
    if "owns" not in cfg:  # once per program: getpid is a system call
        cfg["owns"] = bool(cfg["sandboxed"] and (os.getpid() == 1 or cfg.get("warm")))
    return cfg["owns"]


def _others(name: str) -> bool:
    """Whether /proc entry `name` is a process of the test (not PID 1, not this driver)."""
    return name.isdigit() and name != "1" and name != _SELF[0]


_SELF = [str(os.getpid())]  # this driver's pid as a /proc name (set again after a fork)


def _kill_leftovers(owns_sandbox: bool, pgid: int) -> None:
    """Kill and reap every process the test left behind."""
    if owns_sandbox:
        # -1 reaches every process in the sandbox but PID 1 and ourselves: the test's. Orphans
        # re-parent to us (PID 1, or a child subreaper), so no child left means none left.
        while True:
            try:
                os.kill(-1, _SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    # Unsandboxed: the test's process group, then whatever re-parented to us (subreaper).
    try:
        os.killpg(pgid, _SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(1000):
        kids = _children_of_self()
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, _SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _cg_int(fd: int) -> int:
    """The number a cgroup file holds (cpuacct.usage, memory.max_usage_in_bytes)."""
    return int(os.pread(fd, 64, 0))


def _cg_oom_kills(fd: int) -> int:
    """`oom_kill` of memory.oom_control: processes the kernel killed for the memory limit."""
    text = b"\n" + os.pread(fd, 512, 0)
    at = text.find(b"\noom_kill ")
    return int(text[at + 10 :].split(None, 1)[0]) if at >= 0 else 0


def _autogroup_nice(pid) -> int:
    """The nice value of the process's scheduling autogroup (0 where there are none)."""
    try:
        with open(f"/proc/{pid}/autogroup", "rb") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return 0


def _cpu_wait_s(every_process: bool, pid: int) -> float:
    """How long the test waited for a CPU it was ready to use: the machine's load, in s.

    max over the test's live threads of their run-queue wait (/proc/<pid>/task/<tid>/schedstat,
    second field, ns): of every process in the sandbox when their CPU time is counted too (a
    cgroup), else of the test's main process only (detached processes could wait for a CPU
    without their time counting). Only threads that kept the priority and CPUs they started
    with count: a program that lowers its own (nice, SCHED_IDLE/BATCH, its autogroup's nice)
    or narrows its CPU affinity chose to wait.
    """
    if every_process:
        pids = [int(p) for p in os.listdir("/proc") if _others(p)]
    else:
        pids = [pid]
    base_nice = os.getpriority(os.PRIO_PROCESS, 0)
    base_group = _autogroup_nice("self")
    base_cpus = os.sched_getaffinity(0)
    best = 0
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        if _autogroup_nice(p) > base_group:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/stat", "rb") as f:
                    stat = f.read()
                with open(f"/proc/{p}/task/{tid}/schedstat", "rb") as f:
                    wait = int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            nice, policy = int(fields[16]), int(fields[38])  # stat fields 19 and 41
            if nice <= base_nice and policy == 0 and wait > best:  # 0: SCHED_OTHER
                try:
                    if os.sched_getaffinity(int(tid)) >= base_cpus:
                        best = wait
                except OSError:
                    pass
    return best / 1e9


def _counts_every_process(cfg: dict) -> bool:
    """Without cgroups, inside the sandbox (we are its PID 1, so every other process there is
    the test's): the driver sums the CPU time and memory of all of them itself."""
    return bool(not cfg.get("cgroup") and _owns_sandbox(cfg))


def _status_kb(text: bytes, key: bytes) -> int:
    at = text.find(key)
    return int(text[at + len(key) :].split(None, 1)[0]) if at >= 0 else 0


def _rss_anon_shmem(pid) -> int:
    """RssAnon + RssShmem of a process in bytes: the memory it holds that no file backs."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return 0
    try:  # the kernel escapes a process's name there, so no line can be forged
        return (_status_kb(text, b"\nRssAnon:") + _status_kb(text, b"\nRssShmem:")) << 10
    except (ValueError, IndexError):
        return 0


# What an inode of the sandbox's tmpfs costs the kernel (shmem inode + dentry, ~0.9 KiB on
# x86-64), charged per file or directory the test adds when no cgroup counts kernel memory.
_INODE_BYTES = 1 << 10


def _tmpfs_bytes(path: str) -> int:
    """What the files under `path` (the sandbox's tmpfs) hold: their pages and inodes."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize + (st.f_files - st.f_ffree) * _INODE_BYTES


def _every_process_usage(base: int) -> tuple:
    """(CPU s, memory bytes) of every process in the sandbox but the driver (no cgroups).

    CPU: utime + stime + cutime + cstime of each live or zombie process, so a child's time
    counts while it runs, after its parent waited for it (the parent's cutime), and after it
    was orphaned (a zombie of ours until the test ends). Memory: each process's RssAnon +
    RssShmem beyond `base` (what a forked test process shares with the driver from the
    start); a page shared by several processes counts once per process.
    """
    cpu_ticks = mem = 0
    for name in os.listdir("/proc"):
        if not _others(name):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            cpu_ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (ValueError, IndexError):
            continue
        mem += max(0, _rss_anon_shmem(name) - base)
    return cpu_ticks / _CLK_TCK, mem


def _vsz_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 64 << 20


def _run_test(code, source: str, data: bytes, cfg: dict) -> tuple:
    """Run one test; returns (status, exit_code, signal, wall, cpu, rss_kb, out, err)."""
    memfd = os.memfd_create("stdin", os.MFD_CLOEXEC)  # seekable stdin, like a file
    view = memoryview(data)
    while view:
        view = view[os.write(memfd, view) :]
    os.lseek(memfd, 0, os.SEEK_SET)
    del view
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    vsz = 0 if cfg.get("cgroup") else _vsz_bytes()  # RLIMIT_AS only without cgroups
    cg = cfg.get("cgroup")
    every = _counts_every_process(cfg)
    base = _rss_anon_shmem("self") if every else 0
    tmp0 = _tmpfs_bytes(cfg["workdir"]) if every else 0  # the test's input files are not its
    every_cpu = every_mem = 0
    if cg:
        os.pwrite(cg["peak"], b"0", 0)  # memory.max_usage_in_bytes: reset the peak
        cpu0 = _cg_int(cg["cpu"])
        oom0 = _cg_oom_kills(cg["oom"])
    start = time.monotonic()
    next_usage = start + _POLL_S  # when the driver next sums every process's usage (no cgroups)
    # The test starts with empty collector generations: its collections then scan its own
    # objects only, never write the headers of the driver's (copy-on-write pages).
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        _child(code, source, memfd, out_w, err_w, cfg, vsz)
    os.close(memfd)
    os.close(out_w)
    os.close(err_w)
    out = bytearray()
    err = bytearray()
    err_total = 0
    out_cap, err_keep = cfg["out_bytes"], cfg["err_keep"]
    poller = select.poll()
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = -1
    open_fds = {out_r, err_r}
    deadline = start + cfg["wall_s"]
    killed_for = None
    reaped = None
    # The wall-clock bound runs on the program's own clock: elapsed time minus the time it
    # waited for a CPU (the machine's load), up to a hard cap in real time.
    hard_deadline = start + cfg.get("wall_cap_s", 3 * cfg["wall_s"])

    def drain(fd: int) -> bool:
        """Read what is there (one read: a pipe holds 64 KiB, and poll says if more came);
        False at EOF."""
        nonlocal err_total
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if fd == out_r:
            out.extend(chunk)
        else:
            err_total += len(chunk)
            if len(err) < err_keep:
                err.extend(chunk[: err_keep - len(err)])
        return True

    exited = False
    while not exited:
        now = time.monotonic()
        if now >= deadline:
            waited = _cpu_wait_s(_owns_sandbox(cfg) and bool(cg or every), pid)
            if now - start - waited >= cfg["wall_s"]:
                killed_for = "time_limit"  # slept, blocked or ran (idleness, or a CPU limit)
                break
            if now >= hard_deadline:
                killed_for = "starved"  # the machine's load: not the program's verdict
                break
            deadline = min(start + cfg["wall_s"] + waited, hard_deadline)
            continue
        for fd, _ in poller.poll(min(deadline - now, _POLL_S) * 1000):
            if fd == pidfd:
                exited = True
            elif not drain(fd):
                poller.unregister(fd)
                open_fds.discard(fd)
        if len(out) > out_cap or err_total > out_cap:
            killed_for = "output_limit"
            break
        if not exited:
            if every:  # reading /proc costs more than a cgroup file: once per poll period
                used = every_cpu
                if time.monotonic() >= next_usage:
                    next_usage = time.monotonic() + _POLL_S
                    used, held = _every_process_usage(base)
                    held += max(0, _tmpfs_bytes(cfg["workdir"]) - tmp0)
                    every_cpu, every_mem = max(every_cpu, used), max(every_mem, held)
                    if held > cfg["mem_bytes"]:
                        killed_for = "memory_limit"
                        break
            else:
                used = (_cg_int(cg["cpu"]) - cpu0) / 1e9 if cg else _proc_cpu_s(pid)
            if used > cfg["cpu_s"]:
                killed_for = "time_limit"
                break
        if pidfd < 0:  # no pidfd (old kernel): poll for the exit instead
            got = os.wait4(pid, os.WNOHANG)
            if got[0] == pid:
                reaped, exited = got, True
    if killed_for is not None:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, _SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if every and reaped is None:  # before reaping: the exited main process's times count
        every_cpu = max(every_cpu, _every_process_usage(base)[0])
    _, wstatus, usage = reaped if reaped is not None else os.wait4(pid, 0)
    wall = time.monotonic() - start
    _kill_leftovers(_owns_sandbox(cfg), pid)
    if every:
        # Files the test left in the tmpfs are still held: a program that writes them and
        # exits between two polls (one poll period, 20 ms) must not escape the count.
        left = max(0, _tmpfs_bytes(cfg["workdir"]) - tmp0)
        every_mem = max(every_mem, left)
        if killed_for is None and left > cfg["mem_bytes"]:
            killed_for = "memory_limit"
    # Every writer is dead now: read what is left in the pipes (bounded by the caps).
    for fd in open_fds:
        os.set_blocking(fd, True)
        while len(out) <= out_cap and err_total <= out_cap:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            if fd == out_r:
                out.extend(chunk)
            else:
                err_total += len(chunk)
                if len(err) < err_keep:
                    err.extend(chunk[: err_keep - len(err)])
    for fd in (out_r, err_r):
        os.close(fd)
    if pidfd >= 0:
        os.close(pidfd)
    rss_kb = usage.ru_maxrss
    oom_killed = False
    if cg:  # every process of the test, threads and children included
        cpu = (_cg_int(cg["cpu"]) - cpu0) / 1e9
        oom_killed = _cg_oom_kills(cg["oom"]) > oom0
        rss_kb = max(rss_kb, _cg_int(cg["peak"]) >> 10)
    else:
        cpu = usage.ru_utime + usage.ru_stime
        if every:  # every process of the test (ticks of 10 ms; the main one's rusage is exact)
            cpu = max(cpu, every_cpu)
            rss_kb = max(rss_kb, (every_mem + base) >> 10)
    exit_code = os.waitstatus_to_exitcode(wstatus)
    sig = -exit_code if exit_code < 0 else None
    if killed_for is None and (len(out) > out_cap or err_total > out_cap):
        killed_for = "output_limit"
    if killed_for == "starved" and cpu > cfg["cpu_s"]:
        killed_for = "time_limit"
    if killed_for is not None:
        status = killed_for
    elif oom_killed:
        status = "memory_limit"
    elif cpu > cfg["cpu_s"] or sig == _signal.SIGXCPU:
        status = "time_limit"
    elif exit_code == SETUP_EXIT:
        status = "sandbox_error"
    elif exit_code == MEMORY_EXIT:
        status = "memory_limit"
        exit_code = 1  # what the program would have exited with under plain CPython
    elif exit_code != 0:
        status = "runtime_error"
    else:
        status = "ok"
    if cfg.get("output_file") and status == "ok":
        # The answer is the file's content (none: empty answer); stdout is not the answer.
        got = _read_output_file(os.path.join(cfg["rundir"], cfg["output_file"]), out_cap)
        out = bytearray(got or b"")
        if len(out) > out_cap:
            status = "output_limit"
    if len(out) > out_cap:
        del out[out_cap:]
    return (
        status,
        None if sig is not None else exit_code,
        sig,
        wall,
        cpu,
        rss_kb,
        bytes(out),
        bytes(err),
    )


def _read_output_file(path: str, cap: int):
    """The program's output file (at most cap + 1 bytes), or None if it made no regular file.

    O_NOFOLLOW | O_NONBLOCK and the regular-file check: a symlink to /dev/zero or a FIFO left by
    the program must not hang or flood the driver.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            return None
        data = bytearray()
        while len(data) <= cap:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data += chunk
        return bytes(data)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _wipe(top: str, usual: str = "") -> str | None:
    """Empty the directory `top` whatever the test left there; None, or why it failed.

    Every process of the test is dead by now and everything here belongs to our uid, so modes
    are no obstacle (we chmod as we go). No recursion and two descriptors at most: a non-empty
    directory's entries are moved up into `top` (renamed) until it is empty, so trees of any
    depth or shape go in time linear in their size.
    """
    try:
        os.chmod(top, 0o755)
    except OSError as exc:
        return f"cannot open {top}: {exc}"
    if usual:  # the usual case: `usual` is an empty directory, and all there is
        try:
            os.rmdir(os.path.join(top, usual))  # fails unless an empty directory
            if not os.listdir(top):
                return None
        except OSError:
            pass  # files, a symlink, modes...: the ways below
    import stat

    try:
        topfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        return f"cannot open {top}: {exc}"
    moved = 0
    try:
        if usual and os.listdir(topfd) == [usual]:  # the usual case: plain files in `usual`
            try:
                sub = os.open(usual, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=topfd)
                try:
                    for child in os.listdir(sub):
                        os.unlink(child, dir_fd=sub)
                finally:
                    os.close(sub)
                os.rmdir(usual, dir_fd=topfd)
                return None
            except OSError:
                pass  # a directory, modes, a symlink...: the general way below
        for _ in range(1 << 16):  # each round removes at least the entries of one level
            names = os.listdir(topfd)
            if not names:
                return None
            for name in names:
                try:
                    st = os.stat(name, dir_fd=topfd, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(name, dir_fd=topfd)
                        continue
                    os.chmod(name, 0o700, dir_fd=topfd)
                    try:
                        os.rmdir(name, dir_fd=topfd)
                        continue
                    except OSError:
                        pass
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=topfd)
                    try:
                        for child in os.listdir(sub):
                            cst = os.stat(child, dir_fd=sub, follow_symlinks=False)
                            if stat.S_ISDIR(cst.st_mode):  # renaming a dir needs write on it
                                os.chmod(child, 0o700, dir_fd=sub)
                            os.rename(child, f".spo-wipe-{moved}", src_dir_fd=sub, dst_dir_fd=topfd)
                            moved += 1
                    finally:
                        os.close(sub)
                    os.rmdir(name, dir_fd=topfd)
                except FileNotFoundError:
                    continue
        return f"{top} still not empty"
    except OSError as exc:
        return f"cannot empty {top}: {exc}"
    finally:
        os.close(topfd)


def _own_limits() -> dict:
    """The driver's own resource limits (a program of our uid could lower them with prlimit
    where the seccomp filter is missing)."""
    out = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            try:
                out[name] = resource.getrlimit(getattr(resource, name))
            except (ValueError, OSError):
                pass
    return out


def _reset_metadata(top: str) -> str | None:
    """Clear what a test could leave on the scratch directory itself (which outlives tests:
    it is a mount point): its extended attributes (`user.*`, and POSIX ACLs, which would also
    reach the next test's files) and its access and modification times. None, or why not."""
    try:
        names = os.listxattr(top, follow_symlinks=False)
    except OSError:  # no extended attributes on this file system
        names = []
    try:
        for name in names:
            if name.startswith(("user.", "system.posix_acl_")):
                os.removexattr(top, name, follow_symlinks=False)
        os.utime(top, follow_symlinks=False)
    except OSError as exc:
        return f"cannot reset {top}'s attributes: {exc}"
    return None


def _fresh_rundir(cfg: dict) -> str | None:
    """Empty the scratch directory and make the next test's working directory in it.

    None, or why it failed: the previous test left something the driver cannot remove (it is
    that test's doing, so the caller makes it that test's verdict).
    """
    if cfg.get("limits") is not None and _own_limits() != cfg["limits"]:
        return "the judge's own resource limits were changed"
    why = _wipe(cfg["workdir"], os.path.basename(cfg["rundir"]))
    if why is None:
        why = _reset_metadata(cfg["workdir"])
    if why is None:
        try:
            os.mkdir(cfg["rundir"], 0o755)
        except OSError as exc:
            why = f"cannot make the working directory: {exc}"
    if _owns_sandbox(cfg):
        _remove_sysv_ipc()
    return why


def _write_inputs(cfg: dict, data: bytes) -> bytes:
    """Write the test's files into the working directory; returns the test's stdin."""
    if cfg.get("file_frames"):
        data, files = marshal.loads(data)
        for name, content in files.items():
            _write_file(os.path.join(cfg["rundir"], name), content)
    if cfg.get("input_file"):  # as on the contest judge: the file, not stdin
        _write_file(os.path.join(cfg["rundir"], cfg["input_file"]), data)
        data = b""
    return data


def _drop_signal_handlers() -> None:
    """Keep no handler for any signal.

    The kernel delivers a signal sent from inside a PID namespace to its init (the driver)
    only if init handles it: the interpreter's own SIGINT handler (KeyboardInterrupt) would let
    the program kill the driver with `os.kill(1, SIGINT)`, turning its verdict into "not
    judged". With every signal at SIG_DFL or SIG_IGN, none from the sandbox reaches us.
    """
    for sig in range(1, _signal.NSIG):
        try:
            if _signal.getsignal(sig) not in (_signal.SIG_DFL, _signal.SIG_IGN, None):
                _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP, real-time signals out of range
            pass


def main() -> None:
    _drop_signal_handlers()
    # Keep the protocol on private descriptors; 0/1 become /dev/null so nothing stray leaks in.
    cin = os.dup(0)
    cout = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # Non-dumpable: same-uid processes (the program) can no longer ptrace us or open our
    # /proc files, so they cannot tamper with results. Without it, refuse to judge.
    if _prctl(4, 0) != 0 or _prctl(3, 0) != 0:  # PR_SET_DUMPABLE, PR_GET_DUMPABLE
        os.write(2, b"driver: cannot make itself non-dumpable\n")
        return
    chan = _Channel(cin)
    frame = chan.frame()
    if frame is None or frame is _END:
        return
    cfg = marshal.loads(frame)
    del frame
    if cfg.get("zygote"):
        _zygote(chan, cout, cfg)
    else:
        _serve_program(chan, cout, cfg)
        os._exit(0)  # the host is waiting for us to go: skip interpreter teardown


def _trim_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim).

    What the start freed (imports, reading and loading this code) stays resident otherwise:
    every fork copies the page table entries of resident memory and every test's exit unmaps
    them (with the driver passed as a ~100 KB `-c` argument, ~0.5 of 3 MB came back so)."""
    try:
        _libc("malloc_trim")(0)
    except Exception:  # noqa: BLE001 - not glibc: nothing to trim this way
        pass


def _zygote(chan: "_Channel", cout: int, cfg: dict) -> None:
    """A warm sandbox's PID 1: fork one program driver per program, never see a program.

    Each program gets a fresh fork of this pristine process (its imports done, nothing of any
    program or test input ever read into it), which reads the program's configuration, forks
    once per test as a one-program sandbox's driver does, and exits at the host's END frame.
    This process then kills whatever is left, answers ``IDLE`` and forks the next one. A
    program driver that found its scratch directory uncleanable exits with `_DIRTY_EXIT`: the
    sandbox then ends (no ``IDLE``) and the host starts a fresh one.
    """
    import ctypes  # noqa: F401 - each program driver builds its seccomp filter with it

    if "cgroups" in cfg:  # the filter of every program driver, but for its pid
        _build_seccomp_template(refuse_uncounted_memory=not cfg["cgroups"])
    # What every program driver would otherwise set up for itself, on first use, in its own
    # copy: the libc functions it calls, and the compiler's lazily made state (the first
    # compile() of a process builds the AST types: ~1 ms of each program's compile).
    for name in ("prctl", "malloc_trim"):
        _libc(name)
    _sysv_ipc_in_use("shm")
    compile("pass", "<warm-up>", "exec", dont_inherit=True)
    builtins.exit = _Quitter("exit")
    builtins.quit = _Quitter("quit")
    for name in _PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    _build_stdio()
    gc.collect()
    gc.freeze()
    _trim_heap()
    _send(cout, b"ZYGOTE\n")
    while True:
        pid = os.fork()
        if pid == 0:
            _SELF[0] = str(os.getpid())
            status = 1
            try:
                os.setsid()  # its own process group: a test may signal its own, not ours
                _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: a test's orphans re-parent to it
                frame = chan.frame()
                if frame is None or frame is _END:
                    status = _EOF_EXIT
                else:
                    cfg = marshal.loads(frame)
                    del frame
                    cfg["warm"] = True
                    status = _serve_program(chan, cout, cfg)
            except BaseException as exc:  # the judge's own failure: say what it was
                os.write(2, f"driver: {exc!r}\n".encode())
            finally:
                os._exit(status)
        _, wstatus = os.waitpid(pid, 0)
        _kill_leftovers(True, 0)  # none should be left: the program driver killed its tests'
        code = os.waitstatus_to_exitcode(wstatus)
        if code != 0:  # the host went away, or the scratch directory could not be cleaned
            os._exit(0)
        _send(cout, b"IDLE\n")


# Exit statuses of a warm sandbox's program driver (0: done, the sandbox is clean).
_EOF_EXIT = 3
_DIRTY_EXIT = 4


def _serve_program(chan: "_Channel", cout: int, cfg: dict) -> int:
    """Compile the program, answer READY, run its tests until EOF (or END in a warm sandbox).

    Returns the exit status for a warm sandbox's program driver (0, `_EOF_EXIT` or
    `_DIRTY_EXIT`)."""
    warm = bool(cfg.get("warm"))
    if not cfg["sandboxed"]:
        _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a test re-parent to us
    source = cfg.pop("source")
    if cfg.get("call_prelude"):
        cfg["prelude_code"] = compile(cfg["call_prelude"], "<prelude>", "exec")
        for name in cfg.get("preload", ("json", "typing", "functools", "random", "string")):
            try:
                __import__(name)
            except ImportError:
                pass
    if warm:
        # Most of the filter goes on this driver itself (its tests inherit it: one install per
        # program, where the kernel compiles a filter for ~40 us), the rest on each test.
        shield, cfg["seccomp"] = _seccomp_for_pid(_counts_every_process(cfg), os.getpid())
        if shield is None or cfg["seccomp"] is None:  # nothing would shield this driver
            os.write(2, b"driver: a warm sandbox needs the seccomp filter (x86-64)\n")
            return _EOF_EXIT
        shield()
    else:
        cfg["seccomp"] = _seccomp_program(_counts_every_process(cfg))
    # Where the seccomp filter refuses prlimit64 on us, our limits cannot change: no check.
    cfg["limits"] = _own_limits() if cfg["seccomp"] is None else None
    if not warm:  # (the zygote did these)
        builtins.exit = _Quitter("exit")
        builtins.quit = _Quitter("quit")
    try:
        code = compile(source, "solution.py", "exec", dont_inherit=True)
        compile_error = b""
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        import traceback

        code = None
        compile_error = "".join(traceback.format_exception_only(type(exc), exc)).encode()
    for name in _PRELOAD if not warm else ():
        try:
            __import__(name)
        except ImportError:
            pass
    _build_stdio()  # (a warm sandbox's PID 1 built them)
    gc.collect()
    gc.freeze()  # children's collections skip the driver's objects: fewer copy-on-write pages
    if not warm:
        _trim_heap()
    cfg["rundir"] = os.path.join(cfg["workdir"], "work")
    if cfg.get("cgroup"):  # the same for every test (without cgroups: per test, below)
        cfg["test_limits"] = _test_limits(cfg, 0)
    if cfg.get("int_max_str_digits") is not None and hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(cfg["int_max_str_digits"])  # (the tests inherit it)
    dirty = _fresh_rundir(cfg)  # the scratch directory is fresh: this cannot fail but for bugs
    if dirty is not None:
        if warm:  # no READY: the host starts a fresh sandbox for this program
            os.write(2, f"driver: {dirty}\n".encode())
            return _DIRTY_EXIT
        dirty = f"judge: {dirty}"
    _send(cout, b"READY %d\n" % len(compile_error), compile_error)
    if code is None:
        if warm:  # the host ends the program with END
            return 0 if chan.frame() is _END else _EOF_EXIT
        return 0
    while True:
        frame = chan.frame()
        if frame is None:
            return _EOF_EXIT
        if frame is _END:
            return 0 if dirty is None else _DIRTY_EXIT
        if dirty is not None:  # an earlier test left state we could not clear: never run again
            status, exit_code, sig, wall, cpu, rss, out = "runtime_error", 1, None, 0.0, 0.0, 0, b""
            err = dirty.encode()
        for _once in range(1) if dirty is None else ():
            try:
                data = _write_inputs(cfg, frame)
            except OSError as exc:  # e.g. an input larger than the scratch space
                status, exit_code, sig, wall, cpu, rss, out = (
                    "sandbox_error",
                    None,
                    None,
                    0,
                    0,
                    0,
                    b"",
                )
                err = f"judge: cannot write the test's input files: {exc}".encode()
                why = _fresh_rundir(cfg)
                break
            status, exit_code, sig, wall, cpu, rss, out, err = _run_test(code, source, data, cfg)
            del data
            why = _fresh_rundir(cfg)
            if why is not None:
                # The program left what the driver cannot remove: its verdict, never "not
                # judged"; later tests of this session are not run.
                dirty = (
                    "judge: an earlier test left its working directory in a state the judge "
                    f"cannot clean ({why})"
                )
                status, exit_code, sig = "runtime_error", 1, None
                err = (
                    err
                    + f"\njudge: the program left files the judge cannot remove ({why})".encode()
                )
                break
        if status == "starved":  # ran out of time only because the machine was busy
            status = "sandbox_error"
            err = (
                b"judge: the machine was too busy: the test waited for a CPU so long that it"
                b" reached %.1f s of wall-clock time under its CPU limit" % cfg["wall_cap_s"]
            )
        head = b"RESULT %s %s %s %.6f %.6f %d %d %d\n" % (
            status.encode(),
            b"-" if exit_code is None else b"%d" % exit_code,
            b"-" if sig is None else b"%d" % sig,
            wall,
            cpu,
            rss,
            len(out),
            len(err),
        )
        if len(out) + len(err) < 1 << 16:  # one write (and one read on the host)
            _send(cout, head + out + err)
        else:
            _send(cout, head, out, err)
        del out, err


if __name__ == "__main__":
    main()
