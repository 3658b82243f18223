"""Run a command on a lab host over SSH, the way the deploy tools will reach it.

Invariants: the host key is checked strictly against the lab's own
``known_hosts`` (written from keys the lab generated, so there is no
trust-on-first-use); the user's ``~/.ssh/config``, agent and other keys are
ignored (``-F /dev/null``, ``IdentitiesOnly``), so the machine's SSH setup
cannot redirect lab traffic elsewhere; every call has a timeout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from appliance.lab.proc import run
from appliance.lab.state import Lab, LabHost


def ssh_argv(key: Path, known_hosts: Path, address: str, *, connect_timeout: int = 2) -> list[str]:
    return [
        "ssh", "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "LogLevel=ERROR",
        "-i", str(key),
        "-l", "root",
        address,
    ]  # fmt: skip


def run_on(
    lab: Lab,
    host: str | LabHost,
    command: str,
    *,
    timeout: float = 60.0,
    check: bool = True,
    connect_timeout: int = 2,
) -> subprocess.CompletedProcess[str]:
    """Run a shell command as root on a lab host; ``LabError`` if it fails and ``check``."""
    target = lab.host(host) if isinstance(host, str) else host
    argv = ssh_argv(lab.key, lab.known_hosts, target.address, connect_timeout=connect_timeout)
    return run([*argv, command], timeout=timeout, check=check)
