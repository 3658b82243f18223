"""After a deploy: status, rollback and uninstall of the appliance on inventory hosts.

All over plain SSH (engine-independent), bounded, under the same deploy lock,
each with an audit record. Rollback activates the previous release still on
the host (releases are immutable, so it is exactly what served before), checks
its health, then switches ``current``. Uninstall removes what appliance laid
down and nothing else; the audit log stays unless ``purge``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from appliance.audit import verify_chain
from appliance.deploy import audit_anchor, transport
from appliance.deploy.activation import (
    SERVICES,
    activate,
    current_version,
    health_check,
    release_port,
    switch_recorded,
)
from appliance.deploy.audit_log import AUDIT_LOG
from appliance.deploy.desired import (
    CURRENT,
    ETC,
    GATEWAY_UNIT,
    KEYCLOAK_UNIT,
    NFT_BOOT_UNIT,
    NFT_TABLE,
    RELEASES,
    ROOT,
    STATE,
    UNIT_NAME,
    active_unit_path,
)
from appliance.deploy.firewall import apply_firewall
from appliance.deploy.host_check import INTENT, host_state, reconcile, release_problems
from appliance.deploy.journal import append_audit
from appliance.deploy.lock import acquire_lock, release_lock
from appliance.errors import ApplianceError, DeploymentError, HostStateError
from appliance.input_files import parse_json
from appliance.keycloak.service import KEYCLOAK_USER
from appliance.plan.inventory import HostEntry


@dataclass(frozen=True, slots=True)
class HostStatus:
    host: str
    reachable: bool
    current: int | None
    releases: tuple[int, ...]
    enabled: str
    active: str
    healthy: bool | None
    audit_records: int
    audit_ok: bool
    message: str = ""
    # Per release on the host, how it differs from what was installed (empty: intact);
    # size, mtime and small files' digests, every digest with ``verify`` (deploy/integrity.py).
    integrity: dict[int, tuple[str, ...]] = field(default_factory=dict)
    pending_switch: str = ""  # a switch of `current` recorded as intended, never as done
    gateway: str = "absent"  # the gateway unit's state: active, failed, ... or absent
    firewall: bool = False  # the appliance's nftables table is loaded
    keycloak: str = "absent"  # the Keycloak unit's state, or absent
    audit_anchor: str = ""  # the logs checked against this machine's anchors (audit_anchor.py)


def releases_on(host: HostEntry) -> tuple[int, ...]:
    names = transport.run(host, f"ls -1 {RELEASES} 2>/dev/null; true", timeout=30).split()
    return tuple(sorted(int(n) for n in names if n.isdigit()))


def status(host: HostEntry, *, verify: bool = False) -> HostStatus:
    """Release, services, health, audit chain, and each release checked against what was
    installed (``verify``: every file's digest, the model's included; slow for big models)."""
    try:
        current = current_version(host)
        releases = releases_on(host)
        optional = " ".join(
            f"if [ -f {active_unit_path(unit)} ]; then systemctl is-active {unit}; else echo absent; fi;"
            for unit in (GATEWAY_UNIT, KEYCLOAK_UNIT)
        )
        states = transport.run(
            host,
            f"systemctl is-enabled {UNIT_NAME} 2>/dev/null; systemctl is-active {UNIT_NAME} 2>/dev/null; "
            f"{optional} nft list table {NFT_TABLE} >/dev/null 2>&1 && echo loaded; true",
            timeout=30,
        ).split()
        audit = verify_chain(transport.run(host, f"cat {AUDIT_LOG} 2>/dev/null; true", timeout=30))
    except DeploymentError as exc:
        return HostStatus(
            host.name, False, None, (), "unknown", "unknown", None, 0, False, exc.message
        )
    audit_ok, audit_message, anchor_lines = audit.ok, list(audit.problems), []
    try:
        for checked in audit_anchor.check_host(host, by="status"):
            anchor_lines.append(checked.describe())
            if checked.problem is not None:
                audit_ok = False
                audit_message.append(checked.describe())
    except ApplianceError as exc:  # the anchor file is unusable, or SSH failed meanwhile
        audit_ok = False
        audit_message.append(f"audit anchors: {exc.message}")
    enabled, active, gateway, keycloak = [*states, *["unknown"] * 4][:4]
    firewall = "loaded" in states[4:]
    healthy = None
    if current is not None and active == "active":
        port = release_port(host, current)
        healthy = health_check(host, port, timeout=10) if port else None
    row = HostStatus(host.name, True, current, releases, enabled, active, healthy, audit.records, audit_ok,
                     "; ".join(audit_message), gateway=gateway, firewall=firewall, keycloak=keycloak,
                     audit_anchor="; ".join(anchor_lines))  # fmt: skip
    try:
        found = release_problems(host, [f"{RELEASES}/{v}" for v in releases], full=verify)
        intent = transport.run(host, f"cat {INTENT} 2>/dev/null; true", timeout=30).strip()
    except DeploymentError as exc:
        return replace(row, message="; ".join([*audit_message, exc.message]))
    pending = ""
    if intent:
        try:
            target = parse_json(intent, INTENT, error=HostStateError)["to"]
            pending = f"a switch of current to {target} was never recorded as done"
        except (HostStateError, TypeError, KeyError):
            pending = f"{INTENT} is damaged"
    return replace(
        row,
        integrity={int(r.rsplit("/", 1)[-1]): problems for r, problems in found.items()},
        pending_switch=pending,
    )


def rollback(host: HostEntry, *, to: int | None = None, operator: str = "unknown") -> str:
    """Activate an older release; everything it depends on is checked before anything changes
    (the audit log's tail, ``current``, a pending switch, the target release against its
    install record), and the switch is recorded before and after (``switch_recorded``)."""
    acquire_lock(host)
    try:
        reconcile(host, host_state(host))
        current = current_version(host)
        available = releases_on(host)
        if to is None:
            older = [v for v in available if current is None or v < current]
            if not older:
                raise DeploymentError(
                    f"{host.name}: no release older than {current} on the host to roll back to"
                )
            to = older[-1]
        if to not in available:
            raise DeploymentError(
                f"{host.name}: release {to} is not on the host (has {list(available)})"
            )
        target = f"{RELEASES}/{to}"
        damaged = release_problems(host, [target])[target]
        if damaged:
            raise HostStateError(
                f"{host.name}: release {to} differs from what was installed: "
                f"{'; '.join(damaged[:5])}; refusing to roll back to it (nothing was changed)",
                hint=f"Deploy release {to}'s bundle again (`appliance deploy --bundle BUNDLE-{to} "
                "...`: it sets the damaged copy aside and lays the release down again), or "
                "roll back `--to` another release.",
            )
        activate(host, to)
        port = release_port(host, to)
        if port is None or not health_check(host, port, timeout=120):
            if current is not None:
                activate(host, current)
            append_audit(
                host,
                {
                    "event": "rollback",
                    "operator": operator,
                    "from": current,
                    "to": to,
                    "result": "failed",
                },
            )
            raise DeploymentError(
                f"{host.name}: release {to} did not become healthy; release {current} re-activated"
            )
        apply_firewall(host, to)  # that release's ruleset, if it has one
        switch_recorded(
            host,
            target,
            {"event": "rollback", "operator": operator, "from": current, "to": to, "result": "ok"},
        )
        return f"rolled back from {current} to {to}"
    finally:
        release_lock(host)


def uninstall(host: HostEntry, *, purge: bool = False, operator: str = "unknown") -> str:
    acquire_lock(host)
    try:
        # A damaged audit tail is refused here, before anything is removed.
        entry = append_audit(host, {"event": "uninstall", "operator": operator, "purge": purge})
    except BaseException:
        release_lock(host)
        raise
    # Read-only releases must be made writable before they can be removed.
    units = (*SERVICES, NFT_BOOT_UNIT)
    unit_files = " ".join(active_unit_path(u) for u in units)
    # The gateway's state (its TLS key and certificate) goes; its audit log stays unless purge.
    gateway_dirs = "/var/lib/appliance-gateway /var/lib/private/appliance-gateway"
    logs = "/var/log/appliance /var/log/appliance-gateway /var/log/private/appliance-gateway"
    transport.run(host, f"""set -e
for unit in {" ".join(units)}; do systemctl disable --now $unit >/dev/null 2>&1 || true; done
rm -f {unit_files}
systemctl daemon-reload
nft delete table {NFT_TABLE} 2>/dev/null || true
if [ -d {ROOT} ]; then chmod -R u+w {ROOT}; fi
rm -rf {ROOT} {ETC} {STATE} {gateway_dirs}
if getent passwd {KEYCLOAK_USER} >/dev/null; then userdel {KEYCLOAK_USER}; fi
if getent group {KEYCLOAK_USER} >/dev/null; then groupdel {KEYCLOAK_USER}; fi
{f"rm -rf {logs}" if purge else "true"}
""", timeout=120)  # fmt: skip
    left = transport.run(
        host,
        f"ls -d {ROOT} {ETC} {STATE} {CURRENT} {unit_files} {gateway_dirs} 2>/dev/null; "
        f"getent passwd {KEYCLOAK_USER} >/dev/null && echo 'user {KEYCLOAK_USER}'; "
        f"nft list table {NFT_TABLE} >/dev/null 2>&1 && echo 'nftables table {NFT_TABLE}'; true",
        timeout=30,
    ).splitlines()
    if left:
        raise DeploymentError(f"{host.name}: uninstall left {', '.join(left)}")
    if purge:  # the logs are gone on purpose: their anchors would only report that
        audit_anchor.forget(host)
    return (
        "removed (audit log kept)"
        if not purge
        else "removed, audit log purged" + (f" (last record {json.dumps(entry['hash'][:12])})")
    )
