"""After a deploy: rollback and uninstall of the appliance on inventory hosts.

All over plain SSH (engine-independent), bounded, under the same deploy lock,
each with an audit record. Rollback activates the previous release still on
the host (releases are immutable, so it is exactly what served before), checks
its health, then switches ``current``. A host's state is read by
``appliance.report.status``. Uninstall removes what appliance laid
down and nothing else; the audit log stays unless ``purge``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from appliance.deploy import audit_anchor, transport
from appliance.deploy.activation import (
    SERVICES,
    activate,
    current_version,
    health_check,
    release_check,
    switch_recorded,
)
from appliance.deploy.firewall import apply_firewall
from appliance.deploy.host_check import host_state, reconcile, release_problems
from appliance.deploy.host_layout import (
    CURRENT,
    ETC,
    NFT_BOOT_UNIT,
    NFT_TABLE,
    RELEASES,
    ROOT,
    STATE,
    SYSCTL_PATH,
    active_unit_path,
)
from appliance.deploy.journal import append_audit
from appliance.deploy.keycloak_files import KEYCLOAK_USER
from appliance.deploy.lock import acquire_lock, release_lock
from appliance.errors import DeploymentError, HostStateError
from appliance.plan.inventory import HostEntry

# A serving group member's port range goes back to the kernel's default when uninstalled.
DEFAULT_PORT_RANGE = 'net.ipv4.ip_local_port_range="32768 60999"'


def releases_on(host: HostEntry) -> tuple[int, ...]:
    names = transport.run(host, f"ls -1 {RELEASES} 2>/dev/null; true", timeout=30).split()
    return tuple(sorted(int(n) for n in names if n.isdigit()))


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
        check = release_check(host, to)
        if check is None or not health_check(host, check):
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


def rollback_group(
    members: Sequence[HostEntry], *, to: int | None = None, operator: str = "unknown"
) -> str:
    """Roll a serving group back as one (``members``: head first): every member must hold the
    target release intact before anything changes; then every member is stopped, started on
    it (``group_activation``) and checked as a group; only then is ``current`` switched on
    each (the head last), recorded. A group that does not serve the target is started again
    on the release it served, and nothing is switched."""
    from appliance.deploy.group_activation import group_problem, start_group, stop_group

    names = [m.name for m in members]
    head = members[0]
    locked: list[HostEntry] = []
    try:
        for member in members:
            acquire_lock(member)
            locked.append(member)
            reconcile(member, host_state(member))
        currents = {m.name: current_version(m) for m in members}
        available = {m.name: set(releases_on(m)) for m in members}
        common = set.intersection(*available.values())
        served = currents[head.name]
        if to is None:
            older = sorted(v for v in common if served is None or v < served)
            if not older:
                raise DeploymentError(
                    f"group {', '.join(names)}: no release older than {served} is on every "
                    f"member to roll back to (on the members: "
                    + "; ".join(f"{n} {sorted(v)}" for n, v in available.items())
                    + ")"
                )
            to = older[-1]
        missing = [n for n, v in available.items() if to not in v]
        if missing:
            raise DeploymentError(
                f"group {', '.join(names)}: release {to} is not on {', '.join(missing)}; a group "
                "rolls back only to a release every member has (nothing was changed)"
            )
        target = f"{RELEASES}/{to}"
        for member in members:
            damaged = release_problems(member, [target])[target]
            if damaged:
                raise HostStateError(
                    f"{member.name}: release {to} differs from what was installed: "
                    f"{'; '.join(damaged[:5])}; refusing to roll the group back to it (nothing "
                    "was changed)",
                    hint=f"Deploy release {to}'s bundle again to the group, or roll back `--to` "
                    "another release.",
                )
        stop_group(members)
        start_group(members, to)
        check = release_check(head, to)
        problem = (
            "its head's model server did not become healthy"
            if check is None or not health_check(head, check)
            else group_problem(members)
        )
        if problem is not None:
            if len({currents[n] for n in names}) == 1 and served is not None:
                stop_group(members)
                start_group(members, served)
            for member in members:
                append_audit(member, {"event": "rollback", "operator": operator, "from": currents[member.name],
                                      "to": to, "result": "failed", "group": names, "error": problem[:500]})  # fmt: skip
            raise DeploymentError(
                f"group {', '.join(names)}: release {to} did not serve ({problem}); "
                f"release {served} started again on every member"
            )
        for member in members:
            apply_firewall(member, to)
        for member in reversed(members):  # the head last: a deployer killed here re-runs
            switch_recorded(member, target, {"event": "rollback", "operator": operator,
                                              "from": currents[member.name], "to": to,
                                              "result": "ok", "group": names})  # fmt: skip
        return f"group rolled back from {served} to {to} on {', '.join(names)}"
    finally:
        for member in locked:
            release_lock(member)


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
if [ -f {SYSCTL_PATH} ]; then rm -f {SYSCTL_PATH}; sysctl -q -w {DEFAULT_PORT_RANGE} || true; fi
if [ -d {ROOT} ]; then chmod -R u+w {ROOT}; fi
rm -rf {ROOT} {ETC} {STATE} {gateway_dirs}
if getent passwd {KEYCLOAK_USER} >/dev/null; then userdel {KEYCLOAK_USER}; fi
if getent group {KEYCLOAK_USER} >/dev/null; then groupdel {KEYCLOAK_USER}; fi
{f"rm -rf {logs}" if purge else "true"}
""", timeout=120)  # fmt: skip
    left = transport.run(
        host,
        f"ls -d {ROOT} {ETC} {STATE} {CURRENT} {unit_files} {gateway_dirs} {SYSCTL_PATH} 2>/dev/null; "
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
