"""A host's state after a deploy, read over SSH: release, services, health, audit, integrity.

Read-only on the host: nothing here changes a release, a unit or a log there
(the one write is on this machine: the audit anchors move forward when the
host's logs pass their check, ``appliance.deploy.audit_anchor``). Every call is
bounded; an unreachable host is a row that says so, never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from appliance.audit import verify_chain
from appliance.deploy import audit_anchor, transport
from appliance.deploy.activation import current_version, health_check, release_check
from appliance.deploy.host_check import INTENT, release_problems
from appliance.deploy.host_layout import (
    GATEWAY_UNIT,
    GROUP_STATE_FILE,
    GROUP_WATCH_UNIT,
    KEYCLOAK_UNIT,
    NFT_TABLE,
    RELEASES,
    UNIT_NAME,
    active_unit_path,
)
from appliance.deploy.lifecycle import releases_on
from appliance.errors import ApplianceError, DeploymentError, HostStateError
from appliance.input_files import parse_json
from appliance.plan.inventory import HostEntry
from appliance.report.audit import read_log
from appliance.report.serving import serving


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
    engine: str = ""  # the active release's engine (vllm, llamacpp), from its unit
    models: tuple[str, ...] = ()  # what its /v1/models lists
    context_length: int | None = None
    kv_cache_usage: float | None = None  # 0..1 of vLLM's KV cache in use (/metrics)
    requests_running: int | None = None
    requests_waiting: int | None = None
    # A serving group member's view, as its group watch reports it (group_watch.STATE_FILE):
    # group, role, rank, state (starting, serving, degraded, down), reason, joined, missing.
    group: dict[str, object] | None = None


def _group_state(host: HostEntry) -> dict[str, object] | None:
    """The member's group watch state, when its watch unit is active (``None`` otherwise)."""
    text = transport.run(
        host,
        f"systemctl is-active --quiet {GROUP_WATCH_UNIT} && head -c 65536 {GROUP_STATE_FILE}; true",
        timeout=30,
    )
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    keep = ("group", "role", "rank", "state", "reason", "joined", "missing", "at")
    return {k: data[k] for k in keep if k in data}


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
        audit = verify_chain(read_log(host))
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
    healthy, check = None, None
    group = _group_state(host)
    if group is not None and group.get("role") == "worker":
        # A worker serves no API of its own: it is healthy when its watch sees it joined.
        healthy = active == "active" and group.get("state") == "serving"
    elif current is not None and active == "active":
        check = release_check(host, current)
        healthy = health_check(host, check, timeout=10) if check else None
        if healthy and group is not None:
            healthy = group.get("state") == "serving"
    row = HostStatus(host.name, True, current, releases, enabled, active, healthy, audit.records, audit_ok,
                     "; ".join(audit_message), gateway=gateway, firewall=firewall, keycloak=keycloak,
                     audit_anchor="; ".join(anchor_lines), group=group)  # fmt: skip
    if check is not None:
        row = replace(row, engine=check.engine or "", context_length=check.context)
    if healthy and check is not None:
        try:
            live = serving(host, check)
        except DeploymentError:
            pass  # the serving fields stay empty: status prints "serving nothing listed"
        else:
            row = replace(row, models=live.models, context_length=live.context_length,
                          kv_cache_usage=live.kv_cache_usage, requests_running=live.requests_running,
                          requests_waiting=live.requests_waiting)  # fmt: skip
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
