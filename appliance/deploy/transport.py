"""The SSH transport: run a script on a host, read a file, check that a host answers.

Everything the deploy does on a host outside the engines goes through here, over
plain SSH (batch mode, the inventory's user, key and pinned host key). Every call
is bounded in time; scripts go through standard input (never a secret on a
command line). What a deploy does with these calls (lock, journal, activation,
firewall) lives in the modules named after it: ``lock``, ``journal``,
``host_check``, ``activation``, ``firewall``.
"""

from __future__ import annotations

import shlex
import subprocess

from appliance.errors import DeploymentError
from appliance.plan.inventory import HostEntry

SSH_TIMEOUT = 10


def ssh_argv(host: HostEntry) -> list[str]:
    """``ssh`` running a shell script read from standard input on ``host``."""
    return [*ssh_options(host), f"{host.ssh.user}@{host.address}", "sh -s"]


def ssh_options(host: HostEntry) -> list[str]:
    """``ssh`` and its options for ``host`` (batch mode, bounded, host key pinned if known)."""
    ssh = host.ssh
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT}", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3", "-p", str(ssh.port)]  # fmt: skip
    if ssh.key is not None:
        argv += ["-i", str(ssh.key), "-o", "IdentitiesOnly=yes"]
    if ssh.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={ssh.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    return argv


def reachable(host: HostEntry) -> tuple[bool, str]:
    """Can we log in to ``host`` over SSH? ``(True, "ssh root@addr: ok (Debian ...)")`` or why not."""
    who = f"ssh {host.ssh.user}@{host.address}:{host.ssh.port}"
    try:
        answer = run(host, ". /etc/os-release 2>/dev/null; echo \"${PRETTY_NAME:-unknown OS}\"",
                     timeout=SSH_TIMEOUT + 5)  # fmt: skip
    except DeploymentError as exc:
        return False, f"{who}: {exc.message.removeprefix(host.name + ': ')}"
    return True, f"{who}: ok ({answer.strip()})"


def run(host: HostEntry, script: str, *, timeout: float = 60, check: bool = True) -> str:
    """Run a POSIX shell script on ``host``; its stdout. Bounded by ``timeout`` seconds."""
    try:
        result = subprocess.run(
            ssh_argv(host),
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"{host.name}: no answer within {timeout:g} s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise DeploymentError(
            f"{host.name}: remote step failed (exit {result.returncode}): {' | '.join(detail)}"
        )
    return result.stdout


def read_file(host: HostEntry, path: str, *, limit: int | None = None) -> str:
    """A (public) file's text from the host, e.g. the gateway's certificate.

    ``limit``: at most this many bytes are read (a file longer than that is refused with
    ``DeploymentError``, never read whole): a host's files are untrusted input."""
    if limit is None:
        return run(host, f"cat {shlex.quote(path)}", timeout=30)
    text = run(host, f"head -c {limit + 1} {shlex.quote(path)}", timeout=30)
    if len(text.encode()) > limit:
        raise DeploymentError(f"{host.name}: {path} is larger than {limit} bytes; refused")
    return text
