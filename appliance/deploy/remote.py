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

from appliance.audit import GENESIS, chain_record, record_hash
from appliance.deploy.host_layout import (
    CURRENT,
    GATEWAY_UNIT,
    KEYCLOAK_UNIT,
    LOG,
    NFT_BOOT_UNIT,
    RELEASE_ETC,
    RELEASES,
    ROOT,
    RULESET_PATH,
    STATE,
    UNIT_NAME,
    active_unit_path,
)
from appliance.deploy.integrity import check_command, parse_integrity
from appliance.errors import DeploymentError, HostStateError
from appliance.input_files import parse_json
from appliance.plan.engine_args import argv_port
from appliance.plan.inventory import HostEntry

LOCK_DIR = f"{STATE}/deploy.lock"
JOURNAL_DIR = f"{STATE}/journal"
AUDIT_LOG = f"{LOG}/audit.jsonl"
# A switch of `current` about to happen (written before it, removed once its audit record is
# written): an operation finding one reconciles it first (``reconcile``).
INTENT = f"{STATE}/switch-intent.json"
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
    """Append a hash-chained record: each carries the previous record's hash and its own.

    The log's tail is checked first (``audit_tail_hash``): a damaged tail is refused
    (``HostStateError``) and nothing is appended, never a traceback.
    """
    previous = audit_tail_hash(
        host.name, run(host, f"mkdir -p {LOG}\n{_AUDIT_TAIL_SCRIPT}", timeout=30)
    )
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


# --- host state: read and checked before anything is changed ------------------------------

# The audit log's last two lines, then whether it ends with a newline (a half-written line
# does not), then its type if it exists but is not a regular file.
_AUDIT_TAIL_SCRIPT = f"""if [ -e {AUDIT_LOG} ] && [ ! -f {AUDIT_LOG} ]; then echo "@@notfile"; else
if [ -s {AUDIT_LOG} ] && [ "$(tail -c 1 {AUDIT_LOG} | wc -l)" = 0 ]; then echo "@@nonewline"; fi
tail -n 2 {AUDIT_LOG} 2>/dev/null; fi; true
"""

_REPAIR_AUDIT = (
    f"Look at the end of {AUDIT_LOG} on the host (`appliance audit verify --inventory FILE` "
    "names the line). Keep the damaged log as evidence and take out the damaged last line: "
    f"`cp -a {AUDIT_LOG} {AUDIT_LOG}.damaged-$(date +%s) && sed -i '$d' {AUDIT_LOG}`, "
    "then run the operation again."
)


def audit_tail_hash(host_name: str, tail: str) -> str:
    """The hash the next audit record chains from, from ``_AUDIT_TAIL_SCRIPT``'s output (pure).

    The last line must be a whole, unedited audit record chained to the line before it;
    anything else raises ``HostStateError`` (nothing appended: a record chained to garbage
    would hide the damage).
    """
    lines = [line for line in tail.splitlines() if line.strip()]
    if "@@notfile" in lines:
        raise HostStateError(
            f"{host_name}: {AUDIT_LOG} exists but is not a regular file; refusing to change anything",
            hint=f"Move it aside on the host (`mv {AUDIT_LOG} {AUDIT_LOG}.damaged`) and run again.",
        )
    truncated = "@@nonewline" in lines
    lines = [line for line in lines if not line.startswith("@@")]
    if not lines:
        return GENESIS
    where = f"{host_name}: the last line of {AUDIT_LOG}"
    if truncated:
        raise HostStateError(
            f"{where} is incomplete (no newline: a write was cut); refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            record = parse_json(line, "an audit line", error=HostStateError)
        except HostStateError:
            record = None
        records.append(record if isinstance(record, dict) else {})
    last = records[-1]
    if not isinstance(last.get("hash"), str) or not isinstance(last.get("prev"), str):
        raise HostStateError(
            f"{where} is not an audit record (not JSON with hash and prev): "
            f"{lines[-1][:60]!r}; refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    if record_hash(last) != last["hash"]:
        raise HostStateError(
            f"{where} was edited (its content does not match its hash); refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    if len(records) == 2 and records[0].get("hash") != last["prev"]:
        raise HostStateError(
            f"{where} is not chained to the line before it; refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    return str(last["hash"])


@dataclass(frozen=True, slots=True)
class HostState:
    """What an operation depends on, read in one SSH call and checked (``check_host_state``)."""

    audit_hash: str  # the hash the next audit record chains from
    current: str | None  # where `current` points (None: no link)
    intent: dict[str, Any] | None  # a switch recorded as about to happen, not yet as done


_STATE_SCRIPT = f"""echo "@@audit"
{_AUDIT_TAIL_SCRIPT}echo "@@current"
if [ -L {CURRENT} ]; then echo "link $(readlink {CURRENT})"; elif [ -e {CURRENT} ]; then echo other; fi
echo "@@notdir"
for d in {STATE} {JOURNAL_DIR} {LOG} {RELEASES}; do [ -e "$d" ] && [ ! -d "$d" ] && echo "$d"; done
echo "@@intent"
cat {INTENT} 2>/dev/null; true
"""


def check_host_state(host_name: str, output: str) -> HostState:
    """``_STATE_SCRIPT``'s output checked (pure); ``HostStateError`` with how to repair."""
    sections: dict[str, list[str]] = {}
    current_section = ""
    for line in output.splitlines():
        if line in ("@@audit", "@@current", "@@notdir", "@@intent"):
            current_section = line[2:]
            sections[current_section] = []
        elif current_section:
            sections[current_section].append(line)
    if set(sections) != {"audit", "current", "notdir", "intent"}:
        raise HostStateError(f"{host_name}: the host's state could not be read (incomplete answer)")
    for path in filter(None, (line.strip() for line in sections["notdir"])):
        raise HostStateError(
            f"{host_name}: {path} is not a directory; refusing to change anything",
            hint=f"Move it aside on the host (`mv {path} {path}.damaged`) and run again.",
        )
    audit = audit_tail_hash(host_name, "\n".join(sections["audit"]))
    link = " ".join(sections["current"]).strip()
    current: str | None = None
    if link:
        target = link.removeprefix("link ")
        name = target.removeprefix(RELEASES + "/")
        if link == "other" or not name.isdigit() or target != f"{RELEASES}/{name}":
            raise HostStateError(
                f"{host_name}: {CURRENT} is not a link to a release under {RELEASES} "
                f"(found {link!r}); refusing to change anything",
                hint=f"Move it aside on the host (`mv {CURRENT} {CURRENT}.damaged`), then deploy "
                "or roll back to the release that must serve.",
            )
        current = target
    intent_text = "\n".join(sections["intent"]).strip()
    intent: dict[str, Any] | None = None
    if intent_text:
        try:
            intent = parse_json(intent_text, str(INTENT), error=HostStateError)
        except HostStateError:
            intent = None
        if (
            not isinstance(intent, dict)
            or not isinstance(intent.get("to"), str)
            or not isinstance(intent.get("record"), dict)
        ):
            raise HostStateError(
                f"{host_name}: {INTENT} (a switch of {CURRENT} about to happen) is damaged; "
                "refusing to change anything",
                hint=f"Check which release {CURRENT} points at and that it serves, note it, then "
                f"remove the file on the host (`rm {INTENT}`) and run again.",
            )
    return HostState(audit, current, intent)


def host_state(host: HostEntry) -> HostState:
    """Read and check what an operation depends on; read-only. ``HostStateError`` if damaged."""
    return check_host_state(host.name, run(host, _STATE_SCRIPT, timeout=30))


def reconcile_record(intent: dict[str, Any], current: str | None) -> dict[str, Any]:
    """The audit record that closes a switch found recorded as intended only (pure).

    ``current`` at the intended target: the switch happened and its record was never
    written (the deployer died between the two); anything else: it did not happen.
    """
    done = current == intent["to"]
    return {
        **intent["record"],
        "result": "ok" if done else "interrupted",
        "reconciled": True,
        "note": (
            f"found after an interruption: {CURRENT} had been switched to {intent['to']}"
            if done
            else f"found after an interruption: {CURRENT} was not switched to {intent['to']} "
            f"(it points at {current or 'nothing'})"
        ),
    }


def reconcile(host: HostEntry, state: HostState) -> HostState:
    """Close a switch left recorded as intended only (audit record, then the intent removed)."""
    if state.intent is None:
        return state
    entry = append_audit(host, reconcile_record(state.intent, state.current))
    run(host, f"rm -f {INTENT}", timeout=30)
    return HostState(entry["hash"], state.current, None)


def switch_recorded(host: HostEntry, release_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    """Switch ``current`` to ``release_dir`` so that it cannot happen unrecorded.

    The intent (where to, and the audit record to write) goes to ``INTENT`` first, then the
    switch, then the audit record, then the intent is removed. A deployer dying in between
    leaves the intent: the next operation's ``reconcile`` writes the record it finds missing.
    """
    previous = run(host, f"readlink {CURRENT} 2>/dev/null; true", timeout=30).strip()
    intent = json.dumps({"at": _now(), "to": release_dir, "from": previous or None, "record": record},
                        sort_keys=True)  # fmt: skip
    run(host, f"mkdir -p {STATE} && printf '%s\\n' {shlex.quote(intent)} > {INTENT}.tmp && "
              f"mv -f {INTENT}.tmp {INTENT}", timeout=30)  # fmt: skip
    switch_current(host, release_dir)
    entry = append_audit(host, record)
    run(host, f"rm -f {INTENT}", timeout=30)
    return entry


def release_problems(
    host: HostEntry, releases: list[str], *, full: bool = False
) -> dict[str, tuple[str, ...]]:
    """Per release directory, how it differs from what was installed (empty: intact)."""
    if not releases:
        return {}
    found = parse_integrity(run(host, check_command(releases, full=full) + "; true",
                                timeout=3600 if full else 300))  # fmt: skip
    return {r: found.get(r, ("its install record could not be checked",)) for r in releases}


def set_aside(host: HostEntry, release_dir: str, deploy_id: str) -> str:
    """Move a damaged release out of the way (kept as evidence, on the same filesystem: a
    rename, no copy) so it can be laid down again; where it went."""
    version = release_dir.rsplit("/", 1)[-1]
    evidence = f"{RELEASES}/.damaged-{version}-{deploy_id}"
    run(host, f"mv -T {shlex.quote(release_dir)} {shlex.quote(evidence)}", timeout=60)
    return evidence


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
