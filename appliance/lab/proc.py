"""Processes, mounts and directory removal for the lab, every wait bounded.

Invariants: every command runs with a timeout and is killed (with its process
group) when the timeout passes; nothing here prints; a directory is removed
only after every mount under it is gone, and removal never crosses into
another file system (``rm --one-file-system``), so a leftover bind mount can
never take the machine's own files with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from appliance.lab.errors import LabError, LabPrerequisiteError

DEFAULT_TIMEOUT_S = 30.0


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabPrerequisiteError(
            f"appliance lab needs root (network namespaces, bridges, systemd-nspawn); running as uid {os.geteuid()}",
            hint="Run it as root, e.g. `sudo appliance lab up`.",
        )


def require_commands(commands: Iterable[str]) -> dict[str, str]:
    """Absolute paths of the commands; one error naming every missing one."""
    found = {c: shutil.which(c) for c in commands}
    missing = sorted(c for c, path in found.items() if path is None)
    if missing:
        raise LabPrerequisiteError(
            f"appliance lab needs {', '.join(missing)}, not found on PATH",
            hint="Install the lab's Debian packages as root: `scripts/ensure-system-deps lab` "
            "(debootstrap systemd-container openssh-client nftables iproute2).",
        )
    return {c: p for c, p in found.items() if p is not None}


def run(
    argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within ``timeout`` seconds; failures raise ``LabError``."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False, start_new_session=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{_show(argv)}` did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise LabError(f"cannot run `{_show(argv)}`: {exc.strerror or exc}") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(
            f"`{_show(argv)}` failed (exit {result.returncode})" + (f": {detail}" if detail else "")
        )
    return result


def stream_lines(argv: Sequence[str], *, timeout: float) -> Generator[str, None, list[str]]:
    """Yield the command's output lines as they come; return the last lines; raise on failure.

    The command runs in its own process group, killed as a whole on timeout,
    on failure of the reader, or when the caller closes the generator.
    """
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=30)
    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LabError(
                        f"`{_show(argv)}` did not finish within {timeout:g} s; last output:\n"
                        + "\n".join(tail)
                    )
                if not selector.select(min(left, 1.0)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip()
                    tail.append(line)
                    yield line
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
            proc.wait(timeout=10)
        proc.stdout.close()
    if code != 0:
        raise LabError(f"`{_show(argv)}` failed (exit {code}); last output:\n" + "\n".join(tail))
    return list(tail)


def spawn_detached(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a long-lived process in its own session, output appended to ``log``; its pid.

    posix_spawn rather than Popen: the process outlives the ``appliance``
    command that started it, and no Popen object is left to complain about it.
    """
    executable = shutil.which(argv[0])
    if executable is None:
        raise LabPrerequisiteError(f"{argv[0]} not found on PATH")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        pid = os.posix_spawn(
            executable,
            list(argv),
            dict(os.environ) | dict(env or {}),
            file_actions=actions,
            setsid=True,
        )
    except OSError as exc:
        raise LabError(f"cannot start `{_show(argv)}`: {exc.strerror or exc}") from exc
    # The child may not have exec'd yet; until it has, its command line is empty.
    wait_until(lambda: _cmdline(pid) != [b""], 5.0, 0.02)
    return pid


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def process_matches(pid: int, *needles: str) -> bool:
    """True if ``pid`` is a live (not zombie) process whose command line holds every needle.

    Reaps the pid first when it is our own child, so a host that powered off
    is not mistaken for a running one; the command-line check guards against
    a recycled pid.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    cmdline = _cmdline(pid)
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    words = [w.decode(errors="replace") for w in cmdline]
    return all(any(needle in w for w in words) for needle in needles)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``condition()`` until true or ``timeout`` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --- mounts and removal ---------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo (octal)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points(mountinfo: str) -> list[Path]:
    """Mount points listed in a /proc/<pid>/mountinfo text, in mount order."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(Path(_unescape(fields[4])))
    return points


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    base = path.absolute()
    found = [
        p
        for p in mount_points(Path("/proc/self/mountinfo").read_text())
        if p == base or base in p.parents
    ]
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path, *, timeout: float = 10.0) -> None:
    """Unmount everything at or below ``path``: a normal unmount retried, then a lazy one."""
    for point in mounts_under(path):
        deadline = time.monotonic() + timeout
        while run(["umount", str(point)], check=False).returncode != 0:
            if point not in mounts_under(point):
                break
            if time.monotonic() >= deadline:
                run(["umount", "--lazy", str(point)], check=False)
                break
            time.sleep(0.5)
    left = mounts_under(path)
    if left:
        raise LabError(f"cannot unmount {', '.join(map(str, left))}")


def remove_tree(path: Path, *, timeout: float = 120.0) -> None:
    """Remove a directory tree after unmounting what is under it; never leaves its file system."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    run(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=timeout)


def _show(argv: Sequence[str]) -> str:
    return " ".join(str(a) for a in argv)


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting at most ``timeout`` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LabError(
                        f"{what} is busy (another appliance lab command holds {path}) "
                        f"after waiting {timeout:g} s"
                    ) from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # closing releases the lock
