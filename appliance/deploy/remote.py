"""What the deploy does on a host outside the engines, over plain SSH.

Engine-independent on purpose: the lock, the journal, activating a release's
unit, the health check, the atomic ``current`` switch, rollback and the audit
log behave the same whichever engine laid the files down, and the parity test
reads hosts with the same probe. Every remote call is bounded in time; scripts
go through standard input (never a secret on a command line).

Lock: ``/var/lib/appliance/deploy.lock`` (``mkdir`` is atomic). Its owner is
``host:pid``; a lock whose owner is this machine and whose process is gone
(a deployer killed with ``kill -9``) is taken over, anything else is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.audit import GENESIS, chain_record
from appliance.deploy.desired import (
    CURRENT,
    GATEWAY_UNIT,
    KEYCLOAK_UNIT,
    NFT_BOOT_UNIT,
    RELEASE_ETC,
    ROOT,
    RULESET_PATH,
    STATE,
    UNIT_NAME,
    active_unit_path,
)
from appliance.engine_args import argv_port
from appliance.errors import DeploymentError
from appliance.inventory import HostEntry

LOCK_DIR = f"{STATE}/deploy.lock"
JOURNAL_DIR = f"{STATE}/journal"
AUDIT_LOG = "/var/log/appliance/audit.jsonl"
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


# --- lock ---------------------------------------------------------------------------------


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lock(host: HostEntry) -> None:
    script = f"""mkdir -p {STATE}
if mkdir {LOCK_DIR} 2>/dev/null; then echo '{_owner()}' > {LOCK_DIR}/owner; echo acquired
else echo "held $(cat {LOCK_DIR}/owner 2>/dev/null) $(stat -c %Y {LOCK_DIR})"; fi
"""
    answer = run(host, script, timeout=30).strip()
    if answer == "acquired":
        return
    parts = answer.split()
    owner = parts[1] if len(parts) > 1 else "unknown"
    machine, _, pid = owner.partition(":")
    if machine == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        # Our own deployer died (kill -9) holding the lock: take it over and converge.
        run(host, f"rm -rf {LOCK_DIR}", timeout=30)
        return acquire_lock(host)
    raise DeploymentError(
        f"{host.name}: another deploy holds the lock ({owner}); refusing to run two deploys at once",
        hint=f"Wait for it to finish. If it is certainly dead, remove {LOCK_DIR} on the host.",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_lock(host: HostEntry) -> None:
    run(
        host,
        f"[ \"$(cat {LOCK_DIR}/owner 2>/dev/null)\" = '{_owner()}' ] && rm -rf {LOCK_DIR}; true",
        timeout=30,
    )


# --- journal and audit ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Journal:
    host: HostEntry
    deploy_id: str

    def record(self, step: str, status: str, **extra: Any) -> None:
        line = json.dumps(
            {"at": _now(), "deploy": self.deploy_id, "step": step, "status": status, **extra},
            sort_keys=True,
        )
        run(
            self.host,
            f"mkdir -p {JOURNAL_DIR} && printf '%s\\n' {shlex.quote(line)} >> {JOURNAL_DIR}/{self.deploy_id}.jsonl",
            timeout=30,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_audit(host: HostEntry, record: dict[str, Any]) -> dict[str, Any]:
    """Append a hash-chained record: each carries the previous record's hash and its own."""
    last = run(
        host, f"mkdir -p /var/log/appliance && tail -n 1 {AUDIT_LOG} 2>/dev/null; true", timeout=30
    ).strip()
    previous = json.loads(last)["hash"] if last else GENESIS
    entry = chain_record({"at": _now(), "host": host.name, **record}, previous)
    line = json.dumps(entry, sort_keys=True)
    run(
        host,
        f"printf '%s\\n' {shlex.quote(line)} >> {AUDIT_LOG} && chmod 0640 {AUDIT_LOG}",
        timeout=30,
    )
    # Anchor both logs on this machine now, so cutting them later shows (audit_anchor.py).
    from appliance.deploy import audit_anchor  # it imports this module

    audit_anchor.after_append(host, by=str(record.get("event", "operation")))
    return entry


# --- activation, health, current -----------------------------------------------------------


def current_version(host: HostEntry) -> int | None:
    target = run(host, f"readlink {CURRENT} 2>/dev/null; true", timeout=30).strip()
    name = target.rsplit("/", 1)[-1]
    return int(name) if name.isdigit() else None


# The services a release may have, in start order; the model server is always one of them.
SERVICES = (UNIT_NAME, KEYCLOAK_UNIT, GATEWAY_UNIT)
NO_BLOCK = frozenset({KEYCLOAK_UNIT})  # started without waiting: its readiness is polled


def activate(host: HostEntry, version: int) -> None:
    """Make release ``version``'s units the active ones and (re)start them.

    A service the release does not have (an older release without the
    gateway) is stopped and its active unit removed. The firewall is not
    touched here: ``apply_firewall`` loads it with a safety net.
    """
    etc = f"{RELEASE_ETC}/{version}"
    lines = ["set -e", f"test -f {etc}/{UNIT_NAME}"]
    for unit in SERVICES:
        active = active_unit_path(unit)
        lines.append(
            f"if [ -f {etc}/{unit} ]; then cp {etc}/{unit} {active}.tmp && mv -f {active}.tmp {active}; "
            f"else systemctl disable --now {unit} >/dev/null 2>&1 || true; rm -f {active}; fi"
        )
    lines.append("systemctl daemon-reload")
    for unit in SERVICES:
        # `systemctl restart` waits for a unit's ExecStartPre steps; Keycloak's first start builds
        # its server there (minutes), so it is not waited on here: its readiness is polled after.
        restart = "restart --no-block" if unit in NO_BLOCK else "restart"
        lines.append(
            f"if [ -f {active_unit_path(unit)} ]; then systemctl enable {unit} >/dev/null 2>&1; "
            f"systemctl {restart} {unit}; fi"
        )
    run(host, "\n".join(lines) + "\n", timeout=90)


# Seconds after which a loaded ruleset reverts by itself unless a new SSH connection confirms it.
FIREWALL_REVERT_AFTER = 30


def apply_firewall(host: HostEntry, version: int) -> bool:
    """Load release ``version``'s nftables ruleset, if it has one, so that it cannot lock us out.

    The ruleset is checked (``nft -c``), a revert is armed, the ruleset is
    loaded, then a *new* SSH connection confirms it: if the ruleset cut SSH,
    that connection fails, the host reverts by itself within
    ``FIREWALL_REVERT_AFTER`` seconds, and this raises. Once confirmed, the
    boot unit is enabled so the host comes up with it. Returns whether the
    release has a ruleset (a release without one leaves the firewall as it is).
    """
    from appliance.netpolicy.nftables import apply_script, confirm_script

    etc = f"{RELEASE_ETC}/{version}"
    present = run(host, f"[ -f {etc}/nftables.nft ] && echo yes; true", timeout=30).strip()
    if present != "yes":
        return False
    staged = f"{RULESET_PATH}.new"
    run(host, f"set -e\ncp {etc}/nftables.nft {staged}\n" + apply_script(staged, FIREWALL_REVERT_AFTER),
        timeout=60)  # fmt: skip
    try:
        run(host, confirm_script(), timeout=SSH_TIMEOUT + 10)
    except DeploymentError as exc:
        # Give the host the time to put its previous ruleset back, so what follows (a rollback,
        # the audit record) can reach it again.
        time.sleep(FIREWALL_REVERT_AFTER + 5)
        raise DeploymentError(
            f"{host.name}: after loading release {version}'s firewall ruleset, a new SSH connection "
            f"failed ({exc.message.removeprefix(host.name + ': ')}); the host puts its previous "
            f"ruleset back by itself within {FIREWALL_REVERT_AFTER} s (it has by now)",
            hint="Check network.admin_cidrs in the site file: it must hold the address this "
            "deployer connects from.",
        ) from exc
    boot = active_unit_path(NFT_BOOT_UNIT)
    run(host, f"""set -e
mv -f {staged} {RULESET_PATH}
if [ -f {etc}/{NFT_BOOT_UNIT} ]; then cp {etc}/{NFT_BOOT_UNIT} {boot}.tmp && mv -f {boot}.tmp {boot}; fi
systemctl daemon-reload
systemctl enable {NFT_BOOT_UNIT} >/dev/null 2>&1
""", timeout=60)  # fmt: skip
    return True


def gateway_healthy(host: HostEntry, port: int, cafile: str, *, timeout: int = 60) -> bool:
    """Poll the gateway's /healthz over TLS on the host's loopback (its certificate checked)."""
    return poll_ok(host, f"https://127.0.0.1:{port}/healthz", timeout, cafile=cafile,
                   unit=GATEWAY_UNIT)  # fmt: skip


# Keycloak's first start builds its optimised server, then imports the realm: minutes, not seconds.
KEYCLOAK_START_TIMEOUT = 300


def keycloak_healthy(host: HostEntry, url: str, *, timeout: int = KEYCLOAK_START_TIMEOUT) -> bool:
    """Poll Keycloak's readiness (its management port, on the host's loopback)."""
    return poll_ok(host, url, timeout, unit=KEYCLOAK_UNIT)


def read_file(host: HostEntry, path: str) -> str:
    """A (public) file's text from the host, e.g. the gateway's certificate."""
    return run(host, f"cat {shlex.quote(path)}", timeout=30)


def release_port(host: HostEntry, version: int) -> int | None:
    """The port release ``version`` serves on, read from its kept unit's ExecStart."""
    text = run(host, f"cat {RELEASE_ETC}/{version}/{UNIT_NAME} 2>/dev/null; true", timeout=30)
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            return argv_port(shlex.split(line.removeprefix("ExecStart=")))
    return None


def health_check(host: HostEntry, port: int, *, timeout: int = 180) -> bool:
    """Poll the model server's /v1/models on the host's loopback until it answers 200.

    False as soon as systemd restarts the model server during the wait (it crashed).
    """
    return poll_ok(host, f"http://127.0.0.1:{port}/v1/models", timeout, unit=UNIT_NAME)


def poll_ok(
    host: HostEntry, url: str, timeout: int, *, cafile: str | None = None, unit: str | None = None
) -> bool:
    """On ``host``: GET ``url`` every second until it answers 200 (True) or ``timeout`` s pass.

    With ``unit``, give up at once when systemd restarts that unit during the
    wait (its ``NRestarts`` grows): a server that crashes on start (a port
    taken, a bad argument) is not waited on for the whole timeout.
    """
    context = "None" if cafile is None else f"ssl.create_default_context(cafile={cafile!r})"
    script = f"""python3 - <<'EOF'
import ssl, subprocess, time, urllib.request
def restarts():
    if {unit!r} is None:
        return 0
    out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", {unit!r}],
                         capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() else 0
before = restarts()
deadline = time.monotonic() + {timeout}
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen({url!r}, timeout=5, context={context}) as r:
            if r.status == 200:
                print("healthy"); break
    except Exception:
        pass
    if restarts() > before:
        print("restarted"); break
    time.sleep(1)
else:
    print("unhealthy")
EOF
"""
    return run(host, script, timeout=timeout + 30).strip() == "healthy"


def switch_current(host: HostEntry, release_dir: str) -> None:
    run(
        host,
        f"ln -sfn {release_dir} {ROOT}/.current.tmp && mv -T {ROOT}/.current.tmp {CURRENT}",
        timeout=30,
    )
