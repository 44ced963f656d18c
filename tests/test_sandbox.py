"""The sandbox contains each hostile program (network, files, environment, processes, resources, its supervisor) on
every isolating backend this machine has, and a correct program run right after still works. No test here asserts
on elapsed time: the bounds are checked by what the supervisor reports."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resrl_trl import sandbox
from resrl_trl.sandbox import BACKENDS, FIX, Limits, Sandbox, SandboxUnavailable

REPO = Path(__file__).resolve().parents[1]
AVAILABLE = [backend for backend in BACKENDS if sandbox.probe(backend) is None]
NO_ISOLATION = "no isolation on this machine (install bubblewrap, or allow unprivileged user namespaces)"
LIMITS = Limits(wall_s=4.0, cpu_s=2.0, memory_mb=512, processes=8, output_bytes=64 << 10, scratch_mb=8)
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.fixture(params=AVAILABLE or [None])
def box(request: pytest.FixtureRequest) -> Sandbox:
    """A sandbox on each isolating backend this machine has (the tests that use it skip where there is none)."""
    if request.param is None:
        pytest.skip(NO_ISOLATION)
    return Sandbox(LIMITS, backend=request.param)


def run(box: Sandbox, program: str, data: bytes = b"") -> sandbox.RunResult:
    return box.run(program, [data])[0]


def assert_still_works(box: Sandbox) -> None:
    result = run(box, ADD, b"2 40\n")
    assert (result.status, result.exit_code, result.stdout) == ("ok", 0, b"42\n")


def processes_with(marker: str) -> list[int]:
    """The machine's processes whose command line holds ``marker`` (read from /proc: no psutil needed)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_network_is_unreachable(box: Sandbox) -> None:
    with socket.socket() as listener:  # a server on the trainer's loopback: the program must not reach it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = f"""
import socket
for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection(address, timeout=2).close()
        print("connected", address)
    except OSError as error:
        print("refused", error.errno)
try:
    socket.getaddrinfo("example.com", 80)
    print("resolved")
except OSError:
    print("no dns")
"""
        result = run(box, program)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.exit_code == 0 and result.stdout.count(b"refused") == 3, result
    assert b"connected" not in result.stdout and b"no dns" in result.stdout
    assert_still_works(box)


def test_nothing_is_written_outside_scratch(box: Sandbox) -> None:
    name = f"resrl-sandbox-test-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", str(REPO / name), str(Path.home() / name), f"/{name}", f"/usr/{name}", f"/dev/{name}"]
    program = f"""
import os
for path in {targets!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        print("WROTE", path)
    except OSError as error:
        print("blocked", error.errno)
with open("/scratch/{name}", "w") as f:
    f.write("kept in scratch")
print(open("{name}").read(), os.getcwd(), os.environ["HOME"])
"""
    result = run(box, program)
    assert b"WROTE" not in result.stdout and result.stdout.count(b"blocked") == len(targets), result
    assert b"kept in scratch /scratch /scratch" in result.stdout
    assert not any(os.path.exists(path) for path in targets)
    # Each sandbox has a scratch of its own, gone afterwards.
    assert run(box, f"import os\nprint(os.path.exists('/scratch/{name}'))").stdout == b"False\n"
    assert_still_works(box)


@pytest.fixture
def home_secret() -> Iterator[Path]:
    """A file in the trainer's home (the sandbox may show the home's path when the interpreter lives under it)."""
    path = Path.home() / f".resrl-sandbox-test-{uuid.uuid4().hex}"
    path.write_text("hunter2")
    yield path
    path.unlink()


def test_trainer_environment_and_files_are_invisible(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch, home_secret: Path
) -> None:
    monkeypatch.setenv("RESRL_TEST_SECRET", "hunter2-token")
    paths = [str(REPO / "setup.cfg"), __file__, str(home_secret), "/work", "/tmp", "/proc/1/environ", "/etc/passwd"]
    program = f"""
import os
print(sorted(os.environ))
print(any("hunter2" in value for value in os.environ.values()))
for path in {paths!r}:
    print(path, os.path.exists(path))
"""
    result = run(box, program)
    lines = result.stdout.decode().splitlines()
    assert lines[0] in (
        "['HOME', 'LANG', 'PATH', 'PYTHONHASHSEED', 'TMPDIR']",
        "['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONHASHSEED', 'TMPDIR']",  # bubblewrap adds PWD (/scratch)
    ), result
    assert lines[1] == "False"
    assert lines[2:] == [f"{path} False" for path in paths], result.stdout
    assert_still_works(box)


def test_no_privilege_and_no_nested_user_namespace(box: Sandbox) -> None:
    """In a user namespace of its own the program would hold every capability over its own mounts (a tmpfs no
    memory bound covers): creating one fails, by ctypes or by the unshare binary, and it holds no capability."""
    program = """
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
print("unshare", libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER: -1, EPERM
tool = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
print("tool", tool.returncode != 0)
capabilities = (ctypes.c_uint32 * 6)()
libc.capget((ctypes.c_uint32 * 2)(0x20080522, 0), capabilities)
print("capabilities", sum(capabilities), "no_new_privs", libc.prctl(39, 0, 0, 0, 0))
for name, attempt in [("chroot", lambda: os.chroot("/scratch")), ("setuid", lambda: os.setuid(12345))]:
    try:
        attempt()
        print(name, "allowed")
    except OSError:
        print(name, "denied")
"""
    result = run(box, program)
    assert result.stdout.decode().split("\n")[:-1] == [
        "unshare -1 1",
        "tool True",
        "capabilities 0 no_new_privs 1",
        "chroot denied",
        "setuid denied",
    ], result
    assert_still_works(box)


def test_only_the_standard_library_is_importable(box: Sandbox) -> None:
    program = """
import json, sqlite3
for name in ("torch", "pytest", "resrl_trl"):
    try:
        __import__(name)
        print(name)
    except ImportError:
        pass
print("done")
"""
    assert run(box, program).stdout == b"done\n"


def test_no_process_outlives_the_run(box: Sandbox) -> None:
    marker = f"resrl-leftover-{uuid.uuid4().hex}"
    program = f"""
import os, subprocess, sys
sleeper = [sys.executable, "-c", "import time; time.sleep(600)", "{marker}"]
subprocess.Popen(sleeper)
if os.fork() == 0:  # a daemon that leaves the session
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, sleeper)
    os._exit(0)
forks = 0
try:
    while forks < 1000:  # a fork bomb, stopped by the process bound
        if os.fork() == 0:
            os.execv(sys.executable, sleeper)
        forks += 1
except OSError:
    pass
print(forks)
"""
    result = run(box, program)
    assert result.exit_code == 0 and int(result.stdout) < LIMITS.processes + 3, result
    assert processes_with(marker) == []
    assert_still_works(box)


def test_resource_limits(box: Sandbox) -> None:
    hog = run(box, "block = bytearray(2 << 30)\nprint('allocated')")
    assert hog.exit_code == 1 and b"MemoryError" in hog.stderr and not hog.stdout
    spin = run(box, "while True:\n    pass")
    assert spin.signal == signal.SIGXCPU or spin.status == "timeout", spin
    sleep = run(box, "import time\ntime.sleep(60)")
    assert sleep.status == "timeout" and sleep.exit_code is None
    flood = run(box, "while True:\n    print('x' * 10000)")
    assert flood.status == "output_limit" and len(flood.stdout) <= LIMITS.output_bytes
    big = run(box, "open('big', 'wb').write(b'x' * (64 << 20))")
    assert big.exit_code == 1 and b"File too large" in big.stderr
    assert_still_works(box)


def test_the_supervisor_survives_its_program(box: Sandbox) -> None:
    program = """
import os, signal
print(os.getppid())
for target in (os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as error:
        print("refused", error.errno)
print("alive")
"""
    first, second = box.run(program + "print(input())", [b"one\n", b"two\n"])  # one sandbox, two runs
    assert first.stdout.endswith(b"alive\none\n") and second.stdout.endswith(b"alive\ntwo\n"), (first, second)
    assert first.stdout.startswith(b"1\n")  # its parent is the sandbox's init: the trainer is not even visible
    assert_still_works(box)


def test_stopping_early_kills_the_sandbox(box: Sandbox) -> None:
    seen = []
    results = box.run(ADD, [b"1 1\n", b"2 2\n", b"3 3\n"], keep_going=lambda i, r: seen.append(i) or i < 1)
    assert [r.stdout for r in results] == [b"2\n", b"4\n"] and seen == [0, 1]


def test_refusal_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "detect_backend", lambda refresh=False: None)
    monkeypatch.setattr(sandbox, "_DETECTED", {"reasons": {"bwrap": "not installed", "unshare": "probe failed"}})
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox().run("print(1)")
    message = str(refused.value)
    assert "\n" not in message and FIX in message and "apt-get install bubblewrap" in message
    assert "allow_unsandboxed=True" in message and "bwrap: not installed" in message
    unsandboxed = Sandbox(LIMITS, allow_unsandboxed=True)
    assert unsandboxed.backend == "none"
    assert run(unsandboxed, ADD, b"20 22\n").stdout == b"42\n"


def test_unsandboxed_runner_has_limits_only() -> None:
    box = Sandbox(LIMITS, backend="none")
    result = run(box, f"print(open({str(REPO / 'setup.cfg')!r}).read()[:10])")
    assert result.stdout == b"[metadata]\n"  # no isolation: the machine's files are readable
    assert b"MemoryError" in run(box, "block = bytearray(2 << 30)").stderr  # but the limits hold
    assert run(box, "while True:\n    print('x' * 10000)").status == "output_limit"
    marker = f"resrl-leftover-{uuid.uuid4().hex}"
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(600)', '{marker}']"
    run(box, f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, {sleeper})")
    assert processes_with(marker) == []  # orphans come back to the supervisor (a subreaper), which kills them
