"""Running untrusted programs (model-written code) in a sandbox, bounded in time, memory, processes and output.

Threat model
------------
A program here is text that a policy wrote while it is trained to earn reward, so assume it tries everything a
Python program can do: reach the network, read or write the trainer's files, read its environment (tokens, keys),
fork without end, leave processes behind, exhaust memory, loop for ever, flood its output, kill its parent. The
sandbox must contain all of it, on a machine shared with training, without root and without a container runtime.

Guarantees
----------
With isolation (``bwrap`` or ``unshare``, chosen by :func:`detect_backend`):

- **Network**: the program runs in a new network namespace with nothing but its own loopback: every connection
  fails, to ``127.0.0.1`` too (the trainer's loopback is another namespace), and no name resolves.
- **Files**: the program sees a new root file system of its own: read-only binds of ``/usr`` (with the ``/bin``,
  ``/lib*`` links or binds beside it), of the Python installation it runs on (its ``site-packages`` hidden under
  an empty mount: programs get the standard library only) and of ``/etc/ld.so.cache``; minimal device nodes; a
  writable, size-bounded in-memory ``/scratch`` (its working directory, ``HOME`` and ``TMPDIR``) that disappears
  with the sandbox. Nothing else: not the trainer's home, the repository, ``/work``, ``/tmp`` or ``/proc``. The
  root itself is read-only, so nothing can be written outside ``/scratch`` and nothing remains afterwards.
- **Environment**: the program gets ``PATH``, ``LANG``, ``HOME``, ``TMPDIR`` and ``PYTHONHASHSEED`` and nothing
  of the trainer's environment.
- **Processes**: the program runs in a new PID namespace whose init is the supervisor below; init cannot be killed
  from inside, and every process of a run is killed when the run ends (``kill(-1)`` from init), and all of them when
  the sandbox ends (the kernel ends a PID namespace with its init; the sandbox ends when the trainer closes its stop
  pipe, or dies). No process outlives a check.
- **Privileges**: no capabilities, ``no_new_privs``, an unprivileged user (a trainer running as root gives each
  concurrent sandbox its own unused user id: ``RLIMIT_NPROC`` counts per user and never applies to root), and a
  seccomp filter that refuses nested user namespaces (in one the program would hold every capability over its own
  mounts, a tmpfs no memory limit covers) and system calls of another ABI. The program cannot trace or read the
  memory of the supervisor or of its judge (neither is dumpable).
- **Limits** (:class:`Limits`), per run: wall time (the supervisor kills the run), CPU time (``RLIMIT_CPU``),
  address space (``RLIMIT_AS``, per process), processes and threads (``RLIMIT_NPROC``, counted in the sandbox's own
  user), bytes of stdout + stderr read (the run is killed on overflow), file size (``RLIMIT_FSIZE``) and the
  scratch file system's size.

Without isolation (``allow_unsandboxed=True``, only where neither backend works) the same resource limits apply,
except the process bound for root (and for others it counts the user's every process), the environment is still
minimal and every process left at the end of a run is killed (the supervisor is a child subreaper); but the program
can read and write the machine's files, reach the network and signal the user's processes (the trainer included),
and its processes outlive a check that is killed mid-run: use it only with trusted programs.

How
---
The trainer starts ``python -I -S -c <supervisor>`` inside the sandbox (``bwrap --as-pid-1 ...`` or
``unshare --fork --pid ...`` followed by a mount set-up of our own in Python) and writes it one request on stdin: a
JSON header (the program, its stdin inputs, the limits) and, optionally, the source of a *judge*. The supervisor
runs no untrusted code itself: for each input it forks the program (limits and the seccomp filter set in the child,
stdin from an in-memory file, stdout and stderr on pipes it reads with a bound) and, when there is a judge, forks
the judge beside it, connected to the program by a pair of pipes (fds 3 and 4 in both) and to the supervisor by a
verdict pipe (fd 5) that only the judge holds. The judge reads its own source from the supervisor's stdin, which
the supervisor leaves unread after the header: the program's process, a fork of the supervisor, never had the
judge (the tests) in its memory. The run ends when the program (or the judge, when there is one) exits, or at the
wall time or output bound; then everything else in the sandbox is killed and the supervisor writes one JSON line per
run to the trainer, which may stop it after any line by closing the stop pipe (the supervisor then kills its run
and exits, to be reaped by the backend; a sandbox killed from outside would leave its init to the machine's init,
which some containers never reap). :mod:`resrl_trl.code_check` builds the code reward's programs and judges on
this.

Backends, in order: bubblewrap (``bwrap`` >= 0.8, for ``--size``), else ``unshare`` (util-linux) with unprivileged
user namespaces, or plain namespaces as root. :func:`detect_backend` probes each once, by running a tiny program
through it, and caches the answer.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "BACKENDS",
    "Limits",
    "RunResult",
    "Sandbox",
    "SandboxUnavailable",
    "detect_backend",
    "probe",
    "unavailable_message",
]

BACKENDS = ("bwrap", "unshare")
"""The isolating backends, in the order :func:`detect_backend` tries them; ``"none"`` is the unsandboxed runner."""

FIX = (
    "install bubblewrap (apt-get install bubblewrap) or enable unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1), or pass allow_unsandboxed=True to run programs with resource limits "
    "only, without isolation"
)
SCRATCH = "/scratch"
STARTUP_ALLOWANCE_S = 10.0  # beyond the runs' own wall times, for starting the sandbox on a loaded machine
STOP_GRACE_S = 5.0  # for a stopped sandbox to kill its run and exit by itself
JUDGE_LOG_BYTES = 1 << 16
VERDICT_BYTES = 1 << 20
UID_BASE = 1_600_000_000  # unused user ids for sandboxes started by root: one range of 1000 per trainer process


class SandboxUnavailable(RuntimeError):
    """No isolation for untrusted programs on this machine (and ``allow_unsandboxed`` was not given)."""


@dataclass(frozen=True)
class Limits:
    """Bounds of one run (one stdin input, or one judged test script); every one is enforced by the kernel or by
    the supervisor, never by the program."""

    wall_s: float = 5.0  # the whole run, program and judge together
    cpu_s: float = 5.0  # per process, in whole seconds (at least 1)
    memory_mb: int = 1024  # address space, per process
    processes: int = 32  # processes and threads the program may have at once (besides the supervisor and judge)
    output_bytes: int = 1 << 20  # stdout + stderr read per run; beyond it the run is killed
    scratch_mb: int = 64  # the writable /scratch, and the largest file the program may write

    def __post_init__(self) -> None:
        if self.wall_s <= 0 or self.cpu_s <= 0 or self.memory_mb < 64 or self.processes < 1:
            raise ValueError(f"Limits need positive times, memory_mb >= 64 and processes >= 1, got {self}")
        if self.output_bytes < 1 or self.scratch_mb < 1:
            raise ValueError(f"Limits need output_bytes >= 1 and scratch_mb >= 1, got {self}")


@dataclass
class RunResult:
    """What the supervisor saw of one run.

    ``status`` is ``"ok"`` (the run ended by itself), ``"timeout"`` (wall time), ``"output_limit"`` or ``"harness"``
    (the sandbox failed or answered nothing usable). ``exit_code`` and ``signal`` are the program's, both None when it
    was still running as the run ended (after its judge finished, say).
    """

    status: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    verdict: bytes = b""  # what the judge wrote on fd 5
    judge_log: bytes = b""
    judge_exit: int | None = None
    wall_s: float = 0.0

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> RunResult:
        raw = {key: report.get(key, "").encode("latin-1") for key in ("stdout", "stderr", "verdict", "judge_log")}
        return cls(
            status=report["status"],
            exit_code=report.get("exit_code"),
            signal=report.get("signal"),
            judge_exit=report.get("judge_exit"),
            wall_s=report.get("wall_s", 0.0),
            **raw,
        )


# --- Code that runs inside the sandbox. -----------------------------------------------------------------------------
# These functions are shipped as source (``python -I -S -c``): self-contained, standard library only, no module names.


def _enter_namespaces(config: dict) -> None:
    """(unshare backend, inside the new namespaces, as their root) Build the sandbox's root and move into it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rdonly, nosuid, nodev, remount, bind, rec, private = 1, 2, 4, 32, 4096, 16384, 1 << 18

    def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        encoded = [None if s is None else s.encode() for s in (source, target, fstype, data)]
        if libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3]) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")

    def kept_flags(path: str) -> int:
        # A bind made inside a user namespace keeps its source's locked flags: a read-only remount must repeat them.
        found, flags = os.statvfs(path).f_flag, 0
        for st_flag, ms_flag in ((8, 8), (1024, 1024), (2048, 2048), (4096, 1 << 21)):
            flags |= ms_flag if found & st_flag else 0
        return flags if found & (1024 | 4096) else flags | (1 << 24)  # neither noatime nor relatime: strictatime

    mount(None, "/", None, rec | private)
    root = config["root"]
    mount("tmpfs", root, "tmpfs", nosuid | nodev, "size=1m,mode=0755")
    for path in config["dirs"] + ["/dev", "/scratch"]:
        os.makedirs(root + path, mode=0o755, exist_ok=True)
    for target, link in config["symlinks"]:
        os.symlink(target, root + link)
    for source in config["binds"]:
        dest = root + source
        if os.path.isdir(source):
            os.makedirs(dest, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            open(dest, "a").close()
        mount(source, dest, None, bind | rec)
        mount(None, dest, None, bind | remount | rdonly | nosuid | nodev | kept_flags(dest))
    for device in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{device}", "a").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, bind)
    for path in config["hide"]:
        mount("tmpfs", root + path, "tmpfs", rdonly | nosuid | nodev, "size=4k,mode=0755")
    mount("tmpfs", root + "/scratch", "tmpfs", nosuid | nodev, f"size={config['scratch_mb']}m,mode=1777")
    os.chdir(root)
    number = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine)
    if number is not None and libc.syscall(number, b".", b".") == 0:
        libc.umount2(b".", 2)  # detach the old root, stacked on the new one by pivot_root(".", ".")
    else:  # an architecture without a known pivot_root number: move the new root over the old one
        mount(root, "/", None, 8192)
        os.chroot(".")
    os.chdir("/")
    mount(None, "/", None, remount | rdonly | nosuid | nodev)
    os.chdir("/scratch")
    if config["drop_caps"]:  # root of a user namespace: give up its capabilities for good
        cap = 0
        while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP, until EINVAL past the last capability
            cap += 1
        libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        if cap < 30 or libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
            raise OSError(ctypes.get_errno(), "could not drop the namespace's capabilities")


def _execute(code: str) -> None:
    """(Inside, in a forked child) Run ``code`` as ``__main__`` on fds 0-2, then exit with its status."""
    import atexit
    import builtins

    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.argv = ["main.py"]
    status = 0
    try:
        exec(compile(code, "<program>", "exec", dont_inherit=True), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as error:
        if error.code is None or isinstance(error.code, int):
            status = (error.code or 0) & 0xFF
        else:
            print(error.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001  (what Python itself would print, then exit 1)
        import traceback

        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()  # a program may print from atexit (a common fast-output idiom)
    except BaseException:  # noqa: BLE001, S110
        pass
    for stream in (sys.stdout, sys.__stdout__, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110
            pass
    os._exit(status)


def _supervisor(argv: list[str]) -> None:
    """(Inside, as PID 1 when isolated) Read one request on stdin, run it, write one JSON line per run on stdout."""
    import fcntl
    import json
    import resource
    import select
    import signal
    import time

    # The request is a length line and a JSON header; a judge's source follows, left unread for the judge alone:
    # the program's process is forked from this one and must never have had the tests in its memory.
    size = b""
    while not size.endswith(b"\n"):
        size += os.read(0, 1) or b"\n"
    header = bytearray()
    while len(header) < int(size or 0):
        header += os.read(0, int(size) - len(header)) or b"\n" * int(size)
    request = json.loads(header.decode("utf-8"))
    del header
    if request.get("mount"):
        _enter_namespaces(request["mount"])
    if request.get("uid") is not None:  # root outside: become the sandbox's own unprivileged user
        os.setgroups([])
        os.setgid(request["uid"])
        os.setuid(request["uid"])
    try:
        import ctypes

        libc: Any = ctypes.CDLL(None, use_errno=True)
        libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)())  # no capability left, at all
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no set-user-id gain, in any process of the sandbox
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the program can neither ptrace nor read its judge or us
        if os.getpid() != 1:  # PR_SET_CHILD_SUBREAPER: without a namespace, orphans come to us to be killed
            libc.prctl(36, 1, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        libc = None
    no_userns = _no_user_namespaces() if libc is not None else None
    limits = request["limits"]
    stop = request["stop_fd"]  # readable (closed) when the trainer wants us gone: we end and get reaped
    init = os.getpid() == 1  # isolated: kill(-1) reaches exactly the sandbox's processes
    nproc: int | None = limits["processes"] + 3  # supervisor, judge and program count too
    if not init:  # no namespace: RLIMIT_NPROC counts all of the user's tasks (and never applies to root)
        uid = os.getuid()
        nproc = None if uid == 0 else _user_tasks(uid) + limits["processes"]
    mb = 1 << 20
    cpu = max(1, round(limits["cpu_s"]))
    common = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    program_limits = common + [(resource.RLIMIT_FSIZE, limits["scratch_mb"] * mb, limits["scratch_mb"] * mb)]
    if nproc is not None:
        program_limits.append((resource.RLIMIT_NPROC, nproc, nproc))

    def spawn(fds: dict[int, int], code: str, rlimits: list[tuple[int, int, int]], untrusted: bool) -> int:
        pid = os.fork()
        if pid:
            return pid
        try:
            if libc is not None:
                libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the supervisor
            moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD, 100) for target, source in fds.items()}
            for target, source in moved.items():
                os.dup2(source, target)
            os.closerange(max(fds) + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            if not init:
                os.setpgid(0, 0)
            for which, soft, hard in rlimits:
                current = resource.getrlimit(which)[1]
                if current != resource.RLIM_INFINITY:
                    soft, hard = min(soft, current), min(hard, current)
                resource.setrlimit(which, (soft, hard))
            if untrusted and no_userns is not None:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER (after no_new_privs)
                libc.prctl(22, 2, no_userns, 0, 0)
            _execute(code)
        finally:
            os._exit(111)

    def run(data: bytes) -> dict:
        stdin = os.memfd_create("stdin")
        view = memoryview(data)
        while view:
            view = view[os.write(stdin, view) :]
        os.lseek(stdin, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        readers = {out_r: "stdout", err_r: "stderr"}
        program_fds = {0: stdin, 1: out_w, 2: err_w}
        ends = [stdin, out_w, err_w]
        judge_fds: dict[int, int] = {}
        if request.get("judge"):
            to_judge_r, to_judge_w = os.pipe()
            to_program_r, to_program_w = os.pipe()
            verdict_r, verdict_w = os.pipe()
            log_r, log_w = os.pipe()
            program_fds.update({3: to_program_r, 4: to_judge_w})
            judge_fds = {0: 0, 1: log_w, 2: log_w, 3: to_judge_r, 4: to_program_w, 5: verdict_w}
            readers.update({verdict_r: "verdict", log_r: "judge_log"})
            ends += [to_judge_r, to_judge_w, to_program_r, to_program_w, verdict_w, log_w]
        caps = {"verdict": request["verdict_bytes"], "judge_log": request["log_bytes"]}
        chunks = {name: bytearray() for name in readers.values()}
        start = time.monotonic()
        deadline = start + limits["wall_s"]
        program = spawn(program_fds, request["program"], program_limits, True)
        boot = "import sys\nexec(compile(sys.stdin.read(), '<judge>', 'exec', dont_inherit=True), globals())\n"
        judge = spawn(judge_fds, boot, common, False) if judge_fds else None  # it reads its source from our stdin
        for fd in ends:
            os.close(fd)
        last = judge or program  # the run ends when this process exits
        watcher = os.pidfd_open(last) if hasattr(os, "pidfd_open") else None
        status, output = "ok", 0

        def take(fd: int) -> bool:
            """Read what ``fd`` has; False at its end or when the output bound is crossed."""
            nonlocal status, output
            data = os.read(fd, 1 << 16)
            name = readers[fd]
            if not data:
                del readers[fd]
                os.close(fd)
                return True
            if name in ("stdout", "stderr"):
                output += len(data)
                if output > limits["output_bytes"]:
                    status = "output_limit" if status == "ok" else status
                    return False
                chunks[name] += data
            else:
                chunks[name] += data[: max(0, caps[name] - len(chunks[name]))]
            return True

        running, statuses = True, {}
        while running and status == "ok":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            watched = list(readers) + [stop] + ([watcher] if watcher is not None else [])
            ready = select.select(watched, [], [], min(remaining, 0.005) if watcher is None else remaining)[0]
            for fd in ready:
                if fd == watcher:
                    running = False
                elif fd == stop:  # the trainer is done with us (or gone): end the run now
                    status = "stopped"
                    break
                elif not take(fd):
                    break
            if watcher is None and (done := os.waitpid(last, os.WNOHANG))[0]:
                statuses[last], running = done[1], False
        for pid in (program, judge):  # what had ended by itself before the kill below
            if pid is not None and pid not in statuses and (done := os.waitpid(pid, os.WNOHANG))[0]:
                statuses[pid] = done[1]
        try:
            if init:
                os.kill(-1, signal.SIGKILL)  # every other process of the sandbox: the program's children included
            else:
                for pid in (program, judge):
                    if pid is not None and pid not in statuses:
                        os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        drain_until = time.monotonic() + 1.0  # the writers are dead: what is left in the pipes is read, bounded
        while readers and time.monotonic() < drain_until:
            for fd in select.select(list(readers), [], [], 0.05)[0]:
                if not take(fd):
                    readers.pop(fd, None)
                    os.close(fd)
        for fd in readers:
            os.close(fd)
        if init:  # reap every process of the sandbox (orphans are re-parented to init)
            while True:
                try:
                    pid, code = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                statuses.setdefault(pid, code)
        else:
            for pid in (program, judge):
                if pid is not None and pid not in statuses:
                    statuses[pid] = os.waitpid(pid, 0)[1]
            _kill_adopted()
        if watcher is not None:
            os.close(watcher)
        exit_code = os.waitstatus_to_exitcode(statuses[program]) if program in statuses else None
        return {
            "status": status,
            "exit_code": exit_code if exit_code is None or exit_code >= 0 else None,
            "signal": -exit_code if exit_code is not None and exit_code < 0 else None,
            "judge_exit": os.waitstatus_to_exitcode(statuses[judge]) if judge in statuses else None,
            "wall_s": round(time.monotonic() - start, 4),
            **{name: bytes(chunk).decode("latin-1") for name, chunk in chunks.items()},
        }

    for data in request["inputs"]:
        if select.select([stop], [], [], 0)[0]:
            break
        result = run(data.encode("latin-1"))
        if result["status"] == "stopped":
            break
        line = (json.dumps(result) + "\n").encode()
        while line:
            line = line[os.write(1, line) :]


def _kill_adopted() -> None:
    """(No namespace) Kill the processes re-parented to us (a subreaper), generation by generation, until none."""
    import signal

    me = str(os.getpid())
    for _ in range(1000):
        adopted = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[1] == me:
                        adopted.append(int(pid))
            except (OSError, IndexError):
                pass
        if not adopted:
            return
        for pid in adopted:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _no_user_namespaces() -> Any:
    """A seccomp filter (a ``sock_fprog``) that refuses new user namespaces: in one, a program would hold every
    capability over its own mounts (a tmpfs no RLIMIT_AS bounds, say). ``unshare``/``clone`` with CLONE_NEWUSER fail
    with EPERM, ``clone3`` with ENOSYS (its flags sit in memory a filter cannot read: libc then falls back to
    ``clone``), and a system call of another ABI (``int 0x80``, x32) kills the process. None on other machines."""
    import ctypes

    numbers = {"x86_64": (0xC000003E, 56, 272, 435), "aarch64": (0xC00000B7, 220, 97, 435)}.get(os.uname().machine)
    if numbers is None:
        return None
    arch, clone, unshare, clone3 = numbers
    load, equal, at_least, has_bits, give = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, eperm, enosys = 0x7FFF0000, 0x80000000, 0x50000 | 1, 0x50000 | 38
    program = [  # (code, jump if true, jump if false, k); jumps skip that many instructions
        (load, 0, 0, 4),  # 0: seccomp_data.arch
        (equal, 1, 0, arch),  # 1: this machine's ABI -> 3
        (give, 0, 0, kill),  # 2
        (load, 0, 0, 0),  # 3: seccomp_data.nr
        (at_least, 8, 0, 0x40000000),  # 4: x32 numbering -> 13
        (equal, 6, 0, clone3),  # 5: -> 12
        (equal, 2, 0, unshare),  # 6: -> 9
        (equal, 1, 0, clone),  # 7: -> 9
        (give, 0, 0, allow),  # 8
        (load, 0, 0, 16),  # 9: the low half of args[0], the flags
        (has_bits, 2, 0, 0x10000000),  # 10: CLONE_NEWUSER -> 13
        (give, 0, 0, allow),  # 11
        (give, 0, 0, enosys),  # 12
        (give, 0, 0, eperm),  # 13
    ]

    class Instruction(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Instruction))]

    instructions = (Instruction * len(program))(*[Instruction(*line) for line in program])
    fprog = Program(len(program), instructions)
    fprog.keep = instructions  # alive as long as the program structure
    return ctypes.byref(fprog)


def _user_tasks(uid: int) -> int:
    """How many tasks (threads) the user has on the machine now."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            count += len(os.listdir(f"/proc/{pid}/task")) if os.stat(f"/proc/{pid}").st_uid == uid else 0
        except OSError:  # it ended meanwhile
            pass
    return count


# --- The trainer's side. ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def supervisor_source() -> str:
    """The program the sandbox starts: the functions above, shipped as source."""
    shipped = (_enter_namespaces, _execute, _kill_adopted, _no_user_namespaces, _user_tasks, _supervisor)
    parts = [inspect.getsource(f) for f in shipped]
    header = "from __future__ import annotations\nimport os\nimport sys\nfrom typing import Any\n\n"
    return header + "\n\n".join(parts) + "\n_supervisor(sys.argv[1:])\n"


@functools.lru_cache(maxsize=1)
def _layout() -> dict[str, Any]:
    """What the sandbox's root holds: the base interpreter, what it needs read-only, and what to hide."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.join(sys.base_exec_prefix, "bin", version), os.path.realpath(sys.executable)]
    interpreter = os.path.realpath(next(c for c in candidates if os.access(c, os.X_OK)))
    binds, symlinks = ["/usr"], []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            symlinks.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append(path)
    # A venv's python is a link into its base installation: bind that installation, wherever it lives.
    for prefix in {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, interpreter + "/../..")}:
        if not any(prefix == b or prefix.startswith(b + "/") for b in binds):
            binds.append(prefix)
    if os.path.exists("/etc/ld.so.cache"):
        binds.append("/etc/ld.so.cache")
    hide = sorted(
        {
            os.path.realpath(p)
            for p in site.getsitepackages([sys.base_prefix, sys.base_exec_prefix])
            + ["/usr/lib/python3/dist-packages", f"/usr/local/lib/{version}/dist-packages"]
            if os.path.isdir(p)
        }
    )
    dirs = sorted({a for b in binds for a in _ancestors(b)} - set(binds) - {link for _, link in symlinks})
    return {"interpreter": interpreter, "binds": binds, "symlinks": symlinks, "dirs": dirs, "hide": hide}


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _environment(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "PYTHONHASHSEED": "0"}


@functools.lru_cache(maxsize=1)
def _bwrap_features() -> str:
    try:
        return subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _bwrap_command(layout: dict[str, Any], limits: Limits, as_root: bool) -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--new-session", "--as-pid-1", "--unshare-pid", "--unshare-net"]
    argv += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:  # privileged bwrap, no user namespace: the supervisor drops to its own user id
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    for path in layout["dirs"]:
        argv += ["--perms", "0755", "--dir", path]  # bwrap would make missing parents 0700
    for target, link in layout["symlinks"]:
        argv += ["--symlink", target, link]
    for path in layout["binds"]:
        argv += ["--ro-bind", path, path]
    for path in layout["hide"]:
        argv += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
    argv += ["--dev", "/dev", "--remount-ro", "/dev"]
    argv += ["--perms", "1777", "--size", str(limits.scratch_mb << 20), "--tmpfs", SCRATCH]
    argv += ["--remount-ro", "/", "--chdir", SCRATCH, "--clearenv"]
    for key, value in _environment(SCRATCH).items():
        argv += ["--setenv", key, value]
    return argv + ["--"]


def _unshare_command(as_root: bool) -> list[str]:
    argv = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    argv += ["unshare"] + ([] if as_root else ["--user", "--map-root-user"])
    return argv + ["--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--"]


class _UidSlots:
    """Distinct unused user ids for the sandboxes running at once when the trainer is root: RLIMIT_NPROC counts per
    user (and never applies to root), so each sandbox needs a user of its own for its process bound to hold."""

    def __init__(self) -> None:
        self.base = UID_BASE + (os.getpid() % 100_000) * 1000
        self._busy: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> int:
        """The next free id, round robin: one is reused as late as possible (a killed sandbox ends asynchronously)."""
        with self._lock:
            for _ in range(1000):
                uid, self._next = self.base + self._next, (self._next + 1) % 1000
                if uid not in self._busy:
                    self._busy.add(uid)
                    return uid
            raise RuntimeError("more than 1000 sandboxes at once")

    def release(self, uid: int) -> None:
        with self._lock:
            self._busy.discard(uid)


_UIDS = _UidSlots()
_DETECTED: dict[str, Any] = {}
_DETECT_LOCK = threading.Lock()


def detect_backend(refresh: bool = False) -> str | None:
    """The first backend of :data:`BACKENDS` that runs a probe program correctly here, or None; probed once."""
    with _DETECT_LOCK:
        if refresh or "backend" not in _DETECTED:
            reasons = {}
            for backend in BACKENDS:
                reasons[backend] = probe(backend)
                if reasons[backend] is None:
                    break
            _DETECTED["reasons"] = reasons
            _DETECTED["backend"] = next((b for b, r in reasons.items() if r is None), None)
        return _DETECTED["backend"]


def unavailable_message() -> str:
    """The one line that says why no backend works here and how to fix it."""
    reasons = _DETECTED.get("reasons", {})
    tried = "; ".join(f"{backend}: {reason}" for backend, reason in reasons.items() if reason)
    return f"no sandbox for untrusted programs on this machine ({tried or 'not probed'}): {FIX}"


def probe(backend: str) -> str | None:
    """None when ``backend`` runs a tiny program correctly and isolated, else why not (one short phrase)."""
    if backend == "bwrap":
        if not shutil.which("bwrap"):
            return "not installed"
        if "--size" not in _bwrap_features() or "--disable-userns" not in _bwrap_features():
            return "too old (needs bubblewrap >= 0.8)"
    elif backend == "unshare" and not shutil.which("unshare"):
        return "util-linux unshare not found"
    program = "import ctypes, os\nnested = ctypes.CDLL(None, use_errno=True).unshare(0x10000000)  # CLONE_NEWUSER\n"
    program += "print(6 * 7, os.getpid() != 1, os.path.exists('/proc/self'), sorted(os.environ)[0], nested)"
    try:
        result = Sandbox(Limits(wall_s=20.0, cpu_s=10.0), backend=backend).run(program)[0]
    except (OSError, subprocess.SubprocessError) as error:
        return f"failed to start ({error})"
    if result.stdout == b"42 True False HOME -1\n" and result.exit_code == 0:
        return None
    lines = (result.stderr or result.stdout).decode("utf-8", "replace").strip().splitlines()
    return f"probe failed ({lines[-1][:160] if lines else result.status})"


class Sandbox:
    """Runs programs through one backend under :class:`Limits` (see the module docstring for what it guarantees).

    ``backend`` None picks :func:`detect_backend`'s; when there is none this raises :class:`SandboxUnavailable`
    with one line naming the fix, unless ``allow_unsandboxed`` (then ``"none"``: limits without isolation).
    """

    def __init__(self, limits: Limits | None = None, backend: str | None = None, allow_unsandboxed: bool = False):
        if backend not in (None, "none", *BACKENDS):
            raise ValueError(f"backend must be one of {BACKENDS + ('none',)} or None, got {backend!r}")
        self.limits = limits or Limits()
        self.allow_unsandboxed = allow_unsandboxed
        self._backend = backend

    @property
    def backend(self) -> str:
        if self._backend is None:
            found = detect_backend()
            if found is None and not self.allow_unsandboxed:
                raise SandboxUnavailable(unavailable_message())
            self._backend = found or "none"
        return self._backend

    def run(
        self,
        program: str,
        inputs: Sequence[bytes] = (b"",),
        judge: str | None = None,
        keep_going: Callable[[int, RunResult], bool] | None = None,
    ) -> list[RunResult]:
        """Run ``program`` once per stdin input (with ``judge`` beside it when given: one input only), in one sandbox.

        After each run ``keep_going(index, result)`` may return False to stop there (the sandbox ends). The
        list is as long as ``inputs`` unless stopped; a sandbox that fails ends it with a ``"harness"`` result.
        """
        if judge is not None and len(inputs) != 1:
            raise ValueError("a judged program runs once: give one input")
        backend, as_root = self.backend, os.geteuid() == 0
        layout = _layout()
        uid = _UIDS.acquire() if as_root and backend != "none" else None
        scratch = tempfile.mkdtemp(prefix="resrl-sandbox-") if backend == "none" else None
        request: dict[str, Any] = {
            "program": program,
            "judge": judge is not None,
            "inputs": [bytes(data).decode("latin-1") for data in inputs],
            "limits": asdict(self.limits),
            "uid": uid,
            "verdict_bytes": VERDICT_BYTES,
            "log_bytes": JUDGE_LOG_BYTES,
        }
        if backend == "bwrap":
            prefix = _bwrap_command(layout, self.limits, as_root)
        elif backend == "unshare":
            prefix = _unshare_command(as_root)
            root = next(d for d in ("/mnt", "/tmp", "/opt", "/srv", "/media") if os.path.isdir(d))
            request["mount"] = {
                **{key: layout[key] for key in ("binds", "symlinks", "dirs", "hide")},
                "root": root,
                "scratch_mb": self.limits.scratch_mb,
                "drop_caps": not as_root,
            }
        else:
            prefix = []
        argv = prefix + [layout["interpreter"], "-I", "-S", "-c", supervisor_source()]
        deadline = time.monotonic() + STARTUP_ALLOWANCE_S + len(inputs) * (self.limits.wall_s + 2.0)
        stop_r, stop_w = os.pipe()
        request["stop_fd"] = stop_r
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_environment(scratch or SCRATCH),
                cwd=scratch or "/",
                pass_fds=(stop_r,),
                start_new_session=True,  # so that one killpg ends the backend and everything it started
            )
            os.close(stop_r)
            try:
                header = json.dumps(request).encode()
                message = b"%d\n" % len(header) + header + (judge or "").encode()
                return _exchange(process, message, len(inputs), deadline, keep_going)
            finally:
                _end(process, stop_w)
        finally:
            if uid is not None:
                _UIDS.release(uid)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def _end(process: subprocess.Popen, stop: int) -> None:
    """End a sandbox: close its stop pipe so that its init kills its run and exits (then the backend reaps it and
    exits too); kill the whole group only when that does not happen soon. Killing first would orphan the sandbox's
    init, and an orphan is reaped only when the machine's init gets to it (some containers' never does)."""
    os.close(stop)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()


def _exchange(
    process: subprocess.Popen,
    request: bytes,
    count: int,
    deadline: float,
    keep_going: Callable[[int, RunResult], bool] | None,
) -> list[RunResult]:
    """Write the request, read one report line per run until ``count``, a stop, the end or the deadline."""
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    to_write = memoryview(request)
    out, err, into = process.stdout.fileno(), process.stderr.fileno(), process.stdin.fileno()
    os.set_blocking(into, False)
    readers, lines, errors = {out, err}, bytearray(), bytearray()
    results: list[RunResult] = []
    while len(results) < count and out in readers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, writable, _ = select.select(list(readers), [into] if to_write else [], [], remaining)
        if writable:
            try:
                to_write = to_write[os.write(into, to_write[: 1 << 16]) :]
            except BrokenPipeError:
                to_write = to_write[:0]
            if not to_write:
                process.stdin.close()
        for fd in readable:
            data = os.read(fd, 1 << 16)
            if not data:
                readers.discard(fd)
            elif fd == err:
                errors += data[: max(0, (1 << 16) - len(errors))]
            else:
                lines += data
        while b"\n" in lines and len(results) < count:
            line, _, rest = bytes(lines).partition(b"\n")
            lines = bytearray(rest)
            try:
                results.append(RunResult.from_report(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                return results + [RunResult("harness", stderr=b"unreadable report from the supervisor")]
            if keep_going is not None and not keep_going(len(results) - 1, results[-1]):
                return results
    if len(results) < count:
        status = "timeout" if time.monotonic() >= deadline else "harness"
        results.append(RunResult(status, stderr=bytes(errors)))
    return results
