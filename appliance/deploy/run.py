"""Deploy a verified bundle to the inventory's model-server hosts.

Per host: facts read over SSH (the same pure parsers as local detection) ->
plan with the requested profile and the bundle's own model (a misfit stops
here, exit 3, unless forced) -> desired state -> dry run (the diff, nothing
changed) or: lock, journal, engine converge, activate the release's unit,
health check, then and only then switch ``current``; a failed health check
re-activates the previous release, which keeps serving. Every step is
journaled on the host; every outcome gets a hash-chained audit record.
Re-running after any interruption converges: each step checks before it acts.

``deploy`` reads as its steps: check and plan every host, refuse a host short
of space, leave converged hosts alone, then lock, converge (``converge``: the
engine in a worker thread, cancel and signals), activate each host and accept
the release or roll back to the previous one.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from appliance.bundle.format import FILES_DIR
from appliance.bundle.site.verify import VerifiedBundle
from appliance.compliance.policy import SitePolicy
from appliance.deploy import transport
from appliance.deploy.activation import (
    KEYCLOAK_START_TIMEOUT,
    ReleaseCheck,
    activate,
    current_version,
    failure_lines,
    gateway_healthy,
    health_check,
    keycloak_healthy,
    release_check,
    switch_recorded,
)
from appliance.deploy.adapter_gate import adapter_files, compliance_gate, model_identity
from appliance.deploy.converge import (
    converge_hosts,
    journal_cancelled,
    sigterm_as_interrupt,
    stop_if_cancelled,
)
from appliance.deploy.firewall import apply_firewall
from appliance.deploy.group_activation import group_problem, start_group, stop_group
from appliance.deploy.host_check import HostState, host_state, reconcile, set_aside
from appliance.deploy.host_desired import HostDesired
from appliance.deploy.host_layout import RELEASES
from appliance.deploy.journal import Journal, append_audit
from appliance.deploy.lock import acquire_lock, release_lock
from appliance.deploy.preflight_gate import host_preflights, refuse_preflights, warnings
from appliance.deploy.probe import (
    Change,
    DiskShortfall,
    diff,
    disk_shortfall,
    parse_probe,
    probe_script,
    release_damage,
)
from appliance.deploy.render import desired_state
from appliance.deploy.site import Site
from appliance.detect.facts import HostFacts
from appliance.detect.remote import facts_script, parse_facts_output
from appliance.errors import (
    ApplianceError,
    Cancelled,
    DeploymentError,
    DiskSpaceError,
    HostStateError,
    InputError,
)
from appliance.events import Event, Finished, Progress, Started, Warned
from appliance.model.info import load_model_info
from appliance.plan.engine_args import NodeCommand, argv_port, argv_served_model
from appliance.plan.inventory import HostEntry, Inventory
from appliance.plan.preflight import Preflight
from appliance.plan.profiles import Profile
from appliance.plan.report import Plan
from appliance.plan.selection import Requested, requested_name
from appliance.plan.site import plan_site


def remote_facts(host: HostEntry) -> HostFacts:
    """The host's facts, read over SSH by the facts script (``appliance.detect.remote``); its
    clock is measured against this machine's over the call (a serving group's members must
    agree on the time within a bound)."""
    before = time.time()
    text = transport.run(host, facts_script(RELEASES), timeout=60)
    return parse_facts_output(text, host.name, clock_window=(before, time.time()))


@dataclass
class HostResult:
    host: str
    status: Literal["planned", "converged", "unchanged", "failed", "rolled-back"] = "planned"
    changes: list[Change] = field(default_factory=list)
    message: str = ""
    audit_hash: str | None = None
    port: int | None = None  # the model server's port on the host's loopback
    gateway_port: int | None = None  # the gateway's TLS port on the host's address, if laid down
    firewall: bool = False  # whether the release's nftables ruleset is loaded
    keycloak: dict[str, str] | None = None  # its issuer and where its secrets are (paths only)
    # What the plan review shows before a deploy is confirmed (set once the host is planned):
    command: NodeCommand | None = None  # the engine command planned for this host
    preflights: tuple[Preflight, ...] = ()  # its preflight rows, in CHECKS order


def plan_hosts(
    verified: VerifiedBundle,
    hosts: Sequence[HostEntry],
    profiles: dict[str, Profile],
    profile: Requested,
    *,
    force: bool,
    site: Site | None = None,
    inventory: Inventory | None = None,
) -> dict[str, tuple[Plan, HostDesired]]:
    """Each host's plan and desired state, from one site plan over all the hosts' facts; with
    ``site``, the gateway and firewall too (and Keycloak, when the site says ``sso.install``)."""
    model = verified.payload.model
    if model is None:
        raise InputError("the bundle carries no model; nothing to serve")
    info = load_model_info(verified.directory / FILES_DIR / model.path)
    inventory = inventory or Inventory(schema_version=1, hosts=list(hosts))
    keycloak = (
        site is not None and site.config.sso is not None and site.config.sso.install is not None
    )
    site_plan = plan_site(profiles, profile, {h.name: remote_facts(h) for h in hosts}, inventory,
                          info, force=force, gateway=site is not None, keycloak=keycloak,
                          adapters=adapter_files(verified), identity=model_identity(verified))  # fmt: skip
    implicit = [p.host for p in site_plan.parts if p.grouping == "implicit"]
    if implicit:
        raise DeploymentError(
            f"profile {requested_name(profile)} plans one model served by several hosts "
            f"({', '.join(implicit)}), but the inventory names no serving group for them: a group "
            "is deployed only when the inventory says which hosts form it and on which interface",
            hint="Add `groups: [{name: ..., hosts: [HEAD, WORKER, ...], interface: IFACE}]` to the "
            "inventory (docs/inventory.md), or deploy with a single-node profile.",
        )
    planned: dict[str, tuple[Plan, HostDesired]] = {}
    for host in hosts:
        part = site_plan.part(host.name)
        desired = desired_state(
            verified, part.command, host, engine=part.plan.selection.profile.engine.kind
        )
        if site is not None and part.gateway:
            from appliance.deploy.gateway_layer import secure

            desired = secure(desired, part.plan, verified, site, inventory, part.group)
            if part.keycloak:
                from appliance.deploy.keycloak_layer import install_keycloak

                desired = install_keycloak(desired, part.plan, verified, site, inventory)
        elif site is not None and part.group is not None:
            from appliance.deploy.gateway_layer import firewall_only

            desired = firewall_only(desired, part.plan, verified, site, inventory, part.group)
        if part.group is not None:
            from appliance.deploy.group_layer import add_group_member

            served = argv_served_model(part.plan.commands[0].argv) or "none"
            desired = add_group_member(desired, part.group, model_port=_port(part.plan),
                                       served_model=served)  # fmt: skip
        planned[host.name] = (part.plan, desired)
    return planned


def _port(plan: Plan) -> int:
    port = argv_port(plan.commands[0].argv)
    if port is None:
        raise DeploymentError("the engine command has no --port")
    return port


@dataclass
class _Site:
    """What the deploy read and planned of each host before changing any of them."""

    hosts: list[HostEntry]  # the hosts not refused by their state check
    results: dict[str, HostResult]
    planned: dict[str, tuple[Plan, HostDesired]] = field(default_factory=dict)
    states: dict[str, HostState] = field(default_factory=dict)
    # host -> why its copy of the release differs from what was installed
    damaged: dict[str, str] = field(default_factory=dict)
    short: dict[str, DiskShortfall] = field(default_factory=dict)
    preflights: list[Preflight] = field(default_factory=list)  # every host's, in host order


def deploy(
    verified: VerifiedBundle,
    inventory: Inventory,
    profiles: dict[str, Profile],
    *,
    profile: Requested,
    engine: str = "pyinfra",
    dry_run: bool = False,
    force: bool = False,
    operator: str = "unknown",
    cancel: threading.Event | None = None,
    site: Site | None = None,
    policy: SitePolicy | None = None,
) -> Generator[Event, None, list[HostResult]]:
    """Plan, diff and (unless ``dry_run``) converge every model-server host.

    ``policy``: the site's compliance policy for the bundle's adapters (their transparency
    records); the default one when None. A refusal stops the deploy before any host is read.

    ``cancel`` (set from another thread, e.g. the TUI's Cancel) stops the deploy
    at the next safe point: before the locks are taken, between two engine
    operations, or before activation. Locks are released, the journal says
    where it stopped, and ``Cancelled`` is raised; running the deploy again
    resumes.

    ``site`` (``appliance.deploy.site``) adds the gateway and each host's
    firewall; without it the model server is laid down alone, on loopback.
    """
    cancel = cancel or threading.Event()
    hosts = inventory.with_role("model-server")
    if not hosts:
        raise InputError("the inventory has no host with the model-server role")
    yield Started("deploy", total_items=len(hosts))
    yield from compliance_gate(verified, policy)
    seen = yield from _check_and_plan(verified, inventory, hosts, profiles, profile, force=force,
                                      site=site, dry_run=dry_run, operator=operator)  # fmt: skip
    if not seen.hosts:
        yield Finished("deploy", "no host can be deployed to: each was refused before any change")
        return list(seen.results.values())
    if dry_run:
        for message in warnings(seen.preflights, force=force):
            yield Warned("deploy", message)
        for name, shortfall in seen.short.items():
            yield Warned("deploy", f"a deploy would be refused: {space_message(name, shortfall)}")
        yield Finished("deploy", "dry run: nothing was changed")
        return list(seen.results.values())
    refuse_preflights(seen.preflights, force=force)  # exit 3; --force never passes driver/MIG
    _refuse_short_of_space(seen.short)
    units = _units(seen.hosts, inventory)
    changing = changing_hosts(units, {n for n, r in seen.results.items() if r.changes})
    _keep_converged(seen, verified.version, [u for u in units if u[0].name not in changing])
    hosts = [h for h in seen.hosts if h.name in changing]
    if not hosts:
        yield Finished("deploy", f"nothing to change: release {verified.version} already in place")
        return list(seen.results.values())
    stop_if_cancelled(cancel, "before any host was changed")
    unreleased = yield from _change(hosts, [u for u in units if u[0].name in changing], seen,
                                    verified, engine, operator, cancel)  # fmt: skip
    for message in unreleased:
        yield Warned("deploy", message)
    failed = [r for r in seen.results.values() if r.status in ("failed", "rolled-back")]
    yield Finished(
        "deploy",
        f"{len(hosts) - len(failed)} of {len(hosts)} host(s) serving release {verified.version}",
    )
    return list(seen.results.values())


def _check_and_plan(
    verified: VerifiedBundle,
    inventory: Inventory,
    hosts: list[HostEntry],
    profiles: dict[str, Profile],
    profile: Requested,
    *,
    force: bool,
    site: Site | None,
    dry_run: bool,
    operator: str,
) -> Generator[Event, None, _Site]:
    """Each host's state checked, its plan and desired state, and the diff from what it has."""
    seen = _Site(list(hosts), {h.name: HostResult(h.name) for h in hosts})
    results = seen.results
    for host in hosts:
        # What the deploy depends on is read and checked first: a host whose audit log, journal
        # or `current` is damaged is refused here (failed, with how to repair) before anything
        # is changed on it; the other hosts go on.
        try:
            seen.states[host.name] = host_state(host)
        except HostStateError as exc:
            seen.hosts.remove(host)
            results[host.name].status = "failed"
            results[host.name].message = exc.message + (f" {exc.hint}" if exc.hint else "")
            if not dry_run:
                _audit_refusal(host, exc, verified.version, operator)
            yield Warned("deploy", exc.message)
    # One site plan over every host left (each host's part and command), then each is probed.
    if seen.hosts:
        seen.planned = plan_hosts(
            verified, seen.hosts, profiles, profile, force=force, site=site, inventory=inventory
        )
    for done, host in enumerate(seen.hosts, 1):
        desired = seen.planned[host.name][1]
        results[host.name].port = _port(seen.planned[host.name][0])
        results[host.name].gateway_port = desired.gateway_port
        results[host.name].firewall = desired.firewall is not None
        results[host.name].keycloak = desired.keycloak
        actual = parse_probe(transport.run(host, probe_script(desired), timeout=600))
        results[host.name].changes = diff(desired, actual)
        if (why := release_damage(desired, actual)) is not None:
            seen.damaged[host.name] = why
        if (shortfall := disk_shortfall(desired, actual)) is not None:
            seen.short[host.name] = shortfall
        rows = host_preflights(verified, seen.planned[host.name][0], host.name, shortfall,
                               serving=seen.states[host.name].current is not None)  # fmt: skip
        results[host.name].preflights = rows
        commands = seen.planned[host.name][0].commands
        results[host.name].command = next((c for c in commands if c.host == host.name), commands[0])
        seen.preflights += rows
        yield Progress("plan", 0, None, done, len(seen.hosts), host.name)
    return seen


def _refuse_short_of_space(short: dict[str, DiskShortfall]) -> None:
    """A host without room for the release stops the deploy before any upload (``DiskSpaceError``)."""
    if short:
        raise DiskSpaceError(
            "; ".join(space_message(name, s) for name, s in short.items())
            + "; refused before any upload, nothing was changed",
            hint="Free space on that filesystem (old releases: `appliance status` lists them; "
            f"set-aside damaged copies are {RELEASES}/.damaged-*) or make it larger, then deploy again.",
        )


def _keep_converged(seen: _Site, version: int, units: list[list[HostEntry]]) -> None:
    """A host (or a group: every member) with nothing to change is not touched (no upload, no
    restart): a switch left recorded as intended only is closed on it, then only its health is
    checked (a group's: its head's, then every member's watch)."""
    results = seen.results
    for host in [h for unit in units for h in unit if seen.states[h.name].intent]:
        acquire_lock(host)
        try:
            reconcile(host, host_state(host))
        finally:
            release_lock(host)
    for unit in units:
        problem = _unhealthy(unit[0], seen.planned[unit[0].name], timeout=30)
        if problem is None and len(unit) > 1:
            problem = group_problem(unit)
        for host in unit:
            results[host.name].status = "unchanged" if problem is None else "failed"
            results[host.name].message = (
                f"already serving release {version}"
                if problem is None
                else f"converged but not healthy: {problem}"
            )


def changing_hosts(units: list[list[HostEntry]], changed: set[str]) -> set[str]:
    """The hosts the deploy changes: each host with changes, and every member of a serving
    group one of whose members has changes (a group is activated as one: a deployer killed
    between two members' switches leaves the head unswitched, so the re-run takes the whole
    group again)."""
    return {h.name for unit in units if any(m.name in changed for m in unit) for h in unit}


def _units(hosts: list[HostEntry], inventory: Inventory) -> list[list[HostEntry]]:
    """The deploy's units of activation, in host order: a serving group's members (head
    first, as the inventory names them), or one host."""
    by_name = {h.name: h for h in hosts}
    units: list[list[HostEntry]] = []
    seen: set[str] = set()
    for host in hosts:
        if host.name in seen:
            continue
        group = inventory.group_of(host.name)
        members = [by_name[n] for n in group.hosts if n in by_name] if group else [host]
        seen.update(m.name for m in members)
        units.append(members)
    return units


def _change(
    hosts: list[HostEntry],
    units: list[list[HostEntry]],
    seen: _Site,
    verified: VerifiedBundle,
    engine: str,
    operator: str,
    cancel: threading.Event,
) -> Generator[Event, None, list[str]]:
    """Lock every host, converge them, activate each: accepted, or rolled back.

    Returns why a lock could not be released, per host (the locks are always released).
    """
    deploy_id = uuid.uuid4().hex[:12]
    locked: list[HostEntry] = []
    # SIGTERM while hosts are locked stops like Ctrl-C: engine stopped, locks released, exit 130.
    stage = "lock"
    with sigterm_as_interrupt() as signals:
        try:
            _lock(hosts, locked, seen, verified.version, deploy_id, engine, operator)
            stage = "converge"
            try:
                plans = [seen.planned[h.name][1] for h in hosts]
                outcomes = yield from converge_hosts(engine, plans, cancel)
                stop_if_cancelled(cancel, "after the files were laid down, before activation")
            except (Cancelled, KeyboardInterrupt) as exc:
                journal_cancelled(locked, deploy_id, stage, exc, signals)
                raise
            stage = "activate"

            def finish(unit: list[HostEntry]) -> list[HostResult]:
                if len(unit) == 1:
                    host = unit[0]
                    return [_finish(host, seen.planned[host.name], outcomes[host.name], verified,
                                    deploy_id, engine, operator)]  # fmt: skip
                return _finish_group(unit, seen, outcomes, verified, deploy_id, engine, operator)

            with ThreadPoolExecutor(max_workers=min(8, len(units))) as pool:
                for unit, results in zip(units, pool.map(finish, units), strict=True):
                    for host, result in zip(unit, results, strict=True):
                        seen.results[host.name] = result
                        yield Progress(
                            "deploy", 0, None, 0, len(hosts), f"{host.name}: {result.status}"
                        )
        except (Cancelled, KeyboardInterrupt) as exc:
            if stage != "converge":  # the converge stage journals its own cancellation
                journal_cancelled(locked, deploy_id, stage, exc, signals)
            raise
        finally:
            # No yield in here: a generator being closed must not yield.
            unreleased = _release(locked)
    return unreleased


def _lock(
    hosts: list[HostEntry],
    locked: list[HostEntry],
    seen: _Site,
    version: int,
    deploy_id: str,
    engine: str,
    operator: str,
) -> None:
    """Take each host's lock (added to ``locked`` as taken), close a pending switch under it,
    journal the converge's start and set a damaged copy of the release aside."""
    for host in hosts:
        acquire_lock(host)
        locked.append(host)
        # Under the lock: the state read again (it may have changed since the plan) and
        # a switch left recorded as intended only is closed before anything else.
        reconcile(host, host_state(host))
        journal = Journal(host, deploy_id)
        journal.record("converge", "start", version=version, engine=engine)
        if host.name in seen.damaged:
            _set_aside(host, seen.planned[host.name][1], seen.damaged[host.name], journal, operator)


def _release(locked: list[HostEntry]) -> list[str]:
    """Release every lock taken; why one could not be, per host (never raises)."""
    unreleased = []
    for host in locked:
        try:
            release_lock(host)
        except ApplianceError as exc:
            unreleased.append(f"{host.name}: could not release the lock: {exc.message}")
    return unreleased


def _audit_refusal(host: HostEntry, exc: HostStateError, version: int, operator: str) -> None:
    """The refusal on record in the host's own audit log, where that log can take it (a damaged
    log is never written to: the refusal is in the deploy's result and on stderr)."""
    with contextlib.suppress(ApplianceError):
        append_audit(host, {"event": "deploy", "result": "failed", "version": version,
                                   "operator": operator, "error": exc.message[:500],
                                   "stage": "host-state"})  # fmt: skip


def space_message(host: str, shortfall: DiskShortfall) -> str:
    return (
        f"{host}: not enough free space for the release on {shortfall.mount} "
        f"({shortfall.filesystem}): {shortfall.needed} bytes needed "
        f"({shortfall.needed / 2**30:.2f} GiB), {shortfall.free} bytes free "
        f"({shortfall.free / 2**30:.2f} GiB)"
    )


def _set_aside(
    host: HostEntry, desired: HostDesired, why: str, journal: Journal, operator: str
) -> None:
    """A damaged copy of the release is moved aside (evidence) so the engine lays it down again
    from the verified bundle; journaled and audited before the engine runs."""
    evidence = set_aside(host, desired.release_dir, journal.deploy_id)
    journal.record("repair", "set-aside", release=desired.release_dir, evidence=evidence, why=why)
    append_audit(host, {"event": "release-set-aside", "operator": operator,
                               "deploy": journal.deploy_id, "version": desired.version,
                               "evidence": evidence, "why": why})  # fmt: skip


def _unhealthy(
    host: HostEntry, planned: tuple[Plan, HostDesired], *, timeout: int, starting: bool = False
) -> str | None:
    """Why the host's active release does not serve (``None``: it does, through its gateway)."""
    from appliance.deploy.gateway_layer import GATEWAY_CERT

    plan, desired = planned
    variables = desired.template_vars
    check = ReleaseCheck(
        port=_port(plan),
        paths=tuple(str(variables.get("health_paths", "/v1/models")).split()),
        model=variables.get("served_model"),
        start_timeout=int(variables.get("start_timeout", 180)),
    )
    if not health_check(host, check, timeout=None if starting else timeout):
        last = failure_lines(host)
        return (
            "the model server does not answer"
            + (f" (its log: {last})" if last else "")
            + ": see journalctl -u appliance-model"
        )
    if desired.keycloak_health is not None and not keycloak_healthy(
        host,
        desired.keycloak_health,
        timeout=KEYCLOAK_START_TIMEOUT if starting else timeout,
    ):
        return f"Keycloak is not ready ({desired.keycloak_health}): see journalctl -u appliance-keycloak"
    if desired.gateway_port is not None and not gateway_healthy(
        host, desired.gateway_port, GATEWAY_CERT, timeout=timeout
    ):
        return "the gateway does not answer /healthz: see journalctl -u appliance-gateway"
    return None


def _activate(host: HostEntry, planned: tuple[Plan, HostDesired], version: int) -> str | None:
    """Activate release ``version`` (units, then its firewall); why it does not serve, if so."""
    activate(host, version)
    problem = _unhealthy(host, planned, timeout=60, starting=True)
    if problem is None and planned[1].firewall is not None:
        try:
            apply_firewall(host, version)
        except DeploymentError as exc:
            return exc.message
    return problem


def _finish(
    host: HostEntry,
    planned: tuple[Plan, HostDesired],
    outcome: tuple[bool, str],
    verified: VerifiedBundle,
    deploy_id: str,
    engine: str,
    operator: str,
) -> HostResult:
    """One converged host activated, then accepted (``current`` switched) or rolled back;
    every outcome audited."""
    plan, desired = planned
    journal = Journal(host, deploy_id)
    result = _result(host, planned)
    record = _record(verified, desired, engine, operator, deploy_id)
    try:
        ok, message = outcome
        if not ok:
            raise DeploymentError(f"{host.name}: {engine} could not converge the host: {message}")
        journal.record("converge", "done")
        previous = current_version(host)
        journal.record("activate", "start", previous=previous)
        problem = _activate(host, planned, verified.version)
        if problem is not None:
            result.status, result.message = _roll_back(
                host, plan, previous, verified.version, problem
            )
            journal.record("activate", "failed")
            entry = {**record, "result": result.status, "error": result.message}
            result.audit_hash = append_audit(host, entry)["hash"]
            return result
        _accept(result, host, planned, journal, {**record, "result": "ok"}, previous,
                verified.version)  # fmt: skip
    except ApplianceError as exc:
        result.status, result.message = "failed", exc.message
        with contextlib.suppress(ApplianceError):  # an unreachable host: the summary says why
            result.audit_hash = append_audit(
                host, {**record, "result": "failed", "error": exc.message}
            )["hash"]
    return result


def _result(host: HostEntry, planned: tuple[Plan, HostDesired]) -> HostResult:
    plan, desired = planned
    return HostResult(host.name, port=_port(plan), gateway_port=desired.gateway_port,
                      firewall=desired.firewall is not None, keycloak=desired.keycloak)  # fmt: skip


def _record(
    verified: VerifiedBundle, desired: HostDesired, engine: str, operator: str, deploy_id: str
) -> dict[str, object]:
    """The deploy's audit record for one host (its result is added by the caller)."""
    record = {"event": "deploy", "operator": operator, "engine": engine, "bundle": verified.name,
              "version": verified.version, "content_digest": verified.content_digest, "deploy": deploy_id,
              "gateway_port": desired.gateway_port,
              "firewall": None if desired.firewall is None else desired.firewall.sha256,
              "keycloak": None if desired.keycloak is None else desired.keycloak["issuer"],
              "model": None if verified.payload.model is None else verified.payload.model.name,
              "adapters": [a.name for a in verified.payload.adapters]}  # fmt: skip
    reuses = verified.payload.reuses
    if reuses is not None:
        # An adapter-only release: what it took over from the release in place, by digest.
        record["reuses"] = {"bundle": reuses.bundle, "version": reuses.version,
                            "model_digest": reuses.model_digest, "files": len(reuses.files),
                            "bytes": sum(f.length for f in reuses.files)}  # fmt: skip
    return record


def _finish_group(
    members: list[HostEntry],
    seen: _Site,
    outcomes: dict[str, tuple[bool, str]],
    verified: VerifiedBundle,
    deploy_id: str,
    engine: str,
    operator: str,
) -> list[HostResult]:
    """A converged serving group activated as one (``group_activation``): every member
    accepted (``current`` switched on each, the head last), or every member back on the
    release it served; every outcome audited on every member."""
    head = members[0]
    names = [m.name for m in members]
    results = [_result(m, seen.planned[m.name]) for m in members]
    journals = [Journal(m, deploy_id) for m in members]
    records = [
        _record(verified, seen.planned[m.name][1], engine, operator, deploy_id)
        | {"group": {"members": names, "rank": rank}}
        for rank, m in enumerate(members)
    ]
    label = f"group {', '.join(names)}"
    try:
        failed = [f"{m.name}: {outcomes[m.name][1]}" for m in members if not outcomes[m.name][0]]
        if failed:
            raise DeploymentError(f"{label}: {engine} could not converge every member "
                                  f"({'; '.join(failed)}); no member was activated")  # fmt: skip
        previous = {m.name: current_version(m) for m in members}
        for m, journal in zip(members, journals, strict=True):
            journal.record("converge", "done")
            journal.record("activate", "start", previous=previous[m.name], group=names)
        problem = _activate_group(members, seen, verified.version)
        if problem is not None:
            status, message = _roll_back_group(members, seen, previous, verified.version, problem)
            for m, result, journal, record in zip(members, results, journals, records, strict=True):
                result.status, result.message = status, message
                journal.record("activate", "failed")
                entry = {**record, "result": status, "error": message}
                result.audit_hash = append_audit(m, entry)["hash"]
            return results
        # Workers first, the head last: a deployer killed in between leaves the head's
        # `current` unswitched, so the next deploy activates the whole group again.
        for m, result, journal, record in reversed(list(zip(members, results, journals, records, strict=True))):  # fmt: skip
            _accept(result, m, seen.planned[m.name], journal, {**record, "result": "ok"},
                    previous[m.name], verified.version)  # fmt: skip
            if m is not head:
                result.message = (
                    f"serving release {verified.version} as a worker of {head.name}'s group"
                )
    except ApplianceError as exc:
        for m, result, record in zip(members, results, records, strict=True):
            if result.status == "converged":
                continue
            result.status, result.message = "failed", exc.message
            with contextlib.suppress(ApplianceError):
                result.audit_hash = append_audit(
                    m, {**record, "result": "failed", "error": exc.message}
                )["hash"]
    return results


def _activate_group(members: list[HostEntry], seen: _Site, version: int) -> str | None:
    """Release ``version`` on every member (``group_activation``); why the group does not
    serve, if so. The firewalls are loaded once the group serves."""
    head = members[0]
    stop_group(members)
    start_group(members, version)
    problem = _unhealthy(head, seen.planned[head.name], timeout=60, starting=True)
    if problem is None:
        problem = group_problem(members)
    if problem is None:
        for m in members:
            if seen.planned[m.name][1].firewall is not None:
                try:
                    apply_firewall(m, version)
                except DeploymentError as exc:
                    return exc.message
    return problem


def _roll_back_group(
    members: list[HostEntry],
    seen: _Site,
    previous: dict[str, int | None],
    version: int,
    problem: str,
) -> tuple[Literal["failed", "rolled-back"], str]:
    """Release ``version`` does not serve on the group: every member back on the release it
    served (members that served none are stopped); the members' status and message."""
    back = {previous[m.name] for m in members}
    if back == {None} or version in back:
        stop_group(members)
        return "failed", f"release {version} could not be activated on the group: {problem}"
    stop_group(members)
    serving = [m for m in members if previous[m.name] is not None]
    head, workers = serving[0], serving[1:]
    for w in workers:
        activate(w, previous[w.name] or 0, wait=False)  # not None: filtered above
    activate(head, previous[head.name] or 0)
    check = release_check(head, previous[head.name] or 0)
    healthy = check is not None and health_check(head, check)
    healthy = healthy and (len(serving) < 2 or group_problem(serving) is None)
    for m in serving:
        apply_firewall(m, previous[m.name] or 0)
    versions = sorted({v for v in back if v is not None})
    again = " and ".join(str(v) for v in versions)
    return "rolled-back", (
        f"release {version} could not be activated on the group ({problem}); "
        f"release {again} is active again on every member that served it"
        + ("" if healthy else ", but the group is not healthy either")
    )


def _roll_back(
    host: HostEntry, plan: Plan, previous: int | None, version: int, problem: str
) -> tuple[Literal["failed", "rolled-back"], str]:
    """Release ``version`` does not serve: the previous release (if there is one) activated
    again, with its firewall; the host's status and message."""
    if previous is None or previous == version:
        return "failed", f"release {version} could not be activated: {problem}"
    activate(host, previous)
    apply_firewall(host, previous)
    healthy = health_check(host, release_check(host, previous) or ReleaseCheck(_port(plan)))
    return "rolled-back", (
        f"release {version} could not be activated ({problem}); "
        f"release {previous} is active again" + ("" if healthy else " but is not healthy either")
    )


def _accept(
    result: HostResult,
    host: HostEntry,
    planned: tuple[Plan, HostDesired],
    journal: Journal,
    record: dict[str, object],
    previous: int | None,
    version: int,
) -> None:
    """Release ``version`` serves: ``current`` switched to it, recorded (``switch_recorded``)."""
    plan, desired = planned
    journal.record("switch", "start", to=desired.release_dir)
    result.audit_hash = switch_recorded(host, desired.release_dir, record)["hash"]
    journal.record("activate", "done", current=desired.release_dir)
    # Changes were applied (a host with none is not converged at all): "converged", also when
    # the release was already current (its configuration changed, or a run was resumed).
    result.status = "converged"
    serving = "serving" if previous != version else "reconfigured, serving"
    result.message = (
        f"{serving} release {version} on 127.0.0.1:{_port(plan)}"
        if desired.gateway_port is None
        else f"{serving} release {version} through the gateway on "
        f"https://{host.address}:{desired.gateway_port}"
    )


__all__ = ["HostResult", "deploy", "plan_hosts", "remote_facts"]
