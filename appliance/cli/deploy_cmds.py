"""``appliance deploy``: verify the bundle, plan per host, show the diff, converge."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.exitcodes import ExitCode


def cmd_deploy(args: argparse.Namespace) -> int:
    from appliance.bundle.site.verify import VerifyOptions, verify_bundle
    from appliance.cli.bundle_cmds import refuse_without_state, run_with_progress
    from appliance.deploy.engines import DEFAULT as DEFAULT_ENGINE
    from appliance.deploy.run import deploy
    from appliance.deploy.site import load_site
    from appliance.errors import InputError
    from appliance.plan.inventory import load_inventory
    from appliance.plan.profiles import load_profiles
    from appliance.plan.selection import resolve_profile

    _refuse_ignored_flags(args)
    refuse_without_state(args, "--allow-downgrade")
    _check_outputs(args)
    inventory = load_inventory(args.inventory)
    profiles = load_profiles(args.profiles_dir)
    # Resolved once, before the bundle is hashed: an unknown profile is refused here.
    requested = resolve_profile(profiles, args.profile)
    site = load_site(args.site) if args.site is not None else None
    policy = _policy(args)
    if site is not None and site.secrets_dir is not None and args.emit_ansible is None:
        from appliance.output_paths import writable_directory

        # Keycloak's client secrets are made here before any host is contacted.
        writable_directory(site.secrets_dir, "sso.install.secrets_dir")
    # The state is only read here: the acceptance is recorded once a host serves the release.
    verified = run_with_progress(
        verify_bundle(
            args.bundle,
            args.trust,
            args.state,
            VerifyOptions(allow_downgrade=args.allow_downgrade),
            record=False,
        ),
        quiet=args.json,
    )
    if args.emit_ansible is not None:
        from appliance.deploy.adapter_gate import compliance_gate

        run_with_progress(compliance_gate(verified, policy, "emit-ansible"), quiet=args.json)
        return _emit_ansible(args, verified, inventory, profiles, requested, site)
    engine: str = args.engine or DEFAULT_ENGINE
    if not args.dry_run and not args.yes:
        # Show what would change first; then a person confirms, a script says --yes.
        preview = run_with_progress(
            deploy(
                verified,
                inventory,
                profiles,
                profile=requested,
                engine=engine,
                dry_run=True,
                force=args.force,
                site=site,
                policy=policy,
            ),
            quiet=args.json,
        )
        _print_changes(preview)
        if not sys.stdin.isatty():
            raise InputError("deploy changes hosts: confirm with --yes (or preview with --dry-run)")
        if input("Deploy these changes? [y/N] ").strip().lower() not in ("y", "yes"):
            print("appliance: nothing changed", file=sys.stderr)
            return ExitCode.OK
    results = _deploy_and_record(
        args, verified, inventory, profiles, requested, site, engine, policy
    )
    data = [
        {"host": r.host, "status": r.status, "message": r.message, "audit": r.audit_hash,
         "gateway_port": r.gateway_port, "firewall": r.firewall, "keycloak": r.keycloak,
         "changes": [{"kind": c.kind, "target": c.target, "detail": c.detail} for c in r.changes]}
        for r in results
    ]  # fmt: skip
    if args.json:
        sys.stdout.write(
            json.dumps({"dry_run": args.dry_run, "hosts": data}, indent=2, sort_keys=True) + "\n"
        )
    elif args.dry_run:
        _print_changes(results)
    else:
        for result in results:
            print(f"{result.host:20s} {result.status.upper():12s} {result.message}")
            if result.keycloak is not None:
                from appliance.deploy.keycloak_layer import secrets_lines

                print("\n".join(f"  {line}" for line in secrets_lines(result.keycloak)))
    failed = [r for r in results if r.status in ("failed", "rolled-back")]
    return ExitCode.DEPLOYMENT_FAILED if failed else ExitCode.OK


def _policy(args: argparse.Namespace) -> Any:
    """The site's compliance policy (--policy FILE), or None for the default one."""
    if getattr(args, "policy", None) is None:
        return None
    from appliance.compliance.policy import load_policy

    return load_policy(args.policy)


def _deploy_and_record(
    args: argparse.Namespace,
    verified: Any,
    inventory: Any,
    profiles: Any,
    requested: Any,
    site: Any,
    engine: str,
    policy: Any,
) -> list[Any]:
    """Deploy; with --state, record the acceptance if and only if a host serves the release.

    The record is prepared (written beside the state, nothing replaced) before any host
    is changed, so a state that cannot be written stops the deploy before it starts; it
    is committed after the hosts, or dropped when none serves the release."""
    from appliance.cli.bundle_cmds import run_with_progress
    from appliance.deploy.acceptance import deploy_and_accept
    from appliance.deploy.run import deploy

    deploying = deploy(verified, inventory, profiles, profile=requested, engine=engine,
                       dry_run=args.dry_run, force=args.force, operator=getpass.getuser(),
                       site=site, policy=policy)  # fmt: skip
    if not args.dry_run:
        deploying = deploy_and_accept(verified, deploying)
    results: list[Any] = run_with_progress(deploying, quiet=args.json)
    return results


def _refuse_ignored_flags(args: argparse.Namespace) -> None:
    """Flags that would do nothing in this combination are refused, not ignored."""
    from appliance.errors import InputError

    if args.emit_ansible is not None:
        ignored = [
            flag
            for flag, given in (
                ("--engine", args.engine is not None),
                ("--dry-run", args.dry_run),
                ("--yes", args.yes),
            )
            if given
        ]
        if ignored:
            raise InputError(
                f"{', '.join(ignored)} cannot be combined with --emit-ansible: it writes files for "
                "ansible-playbook and changes no host",
                hint=f"Drop {', '.join(ignored)}.",
            )
    if args.dry_run and args.yes:
        raise InputError(
            "--yes confirms changes, and --dry-run makes none",
            hint="Drop --yes to preview, or --dry-run to deploy.",
        )


def _check_outputs(args: argparse.Namespace) -> None:
    """Every place deploy writes on this machine, checked before anything is hashed or
    any host contacted."""
    from appliance.output_paths import new_directory, writable_directory

    if args.emit_ansible is not None:
        new_directory(args.emit_ansible, "--emit-ansible")
    if args.state is not None and not args.dry_run:
        writable_directory(args.state, "--state")


def _emit_ansible(
    args: argparse.Namespace,
    verified: Any,
    inventory: Any,
    profiles: Any,
    requested: Any,
    site: Any,
) -> int:
    from appliance.deploy.engines.ansible import PLAYBOOK, emit_ansible
    from appliance.deploy.run import plan_hosts
    from appliance.errors import InputError

    # The same site plan as a deploy (facts read over SSH); nothing changes on any host.
    hosts = inventory.with_role("model-server")
    if not hosts:
        raise InputError("the inventory has no host with the model-server role")
    planned = plan_hosts(verified, hosts, profiles, requested, force=args.force, site=site,
                         inventory=inventory)  # fmt: skip
    config = emit_ansible([planned[host.name][1] for host in hosts], args.emit_ansible)
    hosts_ini = config.parent / "inventory" / "hosts.ini"
    command = f"ANSIBLE_CONFIG={config} ansible-playbook -i {hosts_ini} {PLAYBOOK}"
    if args.json:
        sys.stdout.write(
            json.dumps({"directory": str(config.parent), "command": command}, indent=2) + "\n"
        )
    else:
        print(
            f"Wrote {config.parent} (inventory, host_vars, ansible.cfg). Nothing was changed on any host."
        )
        print(
            "Lay the release down with plain Ansible (the bundle directory must stay where it is):"
        )
        print(f"  {command}")
        print(
            "then activate, health-check and switch with `appliance deploy` (it finds the files in place)."
        )
    return ExitCode.OK


def _print_changes(results: list[Any]) -> None:
    for result in results:
        if not result.changes:
            print(f"{result.host}: up to date, nothing to change")
            continue
        print(f"{result.host}: {len(result.changes)} change(s)")
        shown = result.changes[:25]
        for change in shown:
            print(f"  {change.kind:15s} {change.target}  ({change.detail})")
        if len(result.changes) > len(shown):
            print(f"  ... and {len(result.changes) - len(shown)} more")


def _hosts(args: argparse.Namespace) -> list[Any]:
    from appliance.plan.inventory import load_inventory

    return load_inventory(args.inventory).with_role("model-server")


def _confirm(args: argparse.Namespace, what: str) -> bool:
    from appliance.errors import InputError

    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise InputError(f"{what} changes hosts: confirm with --yes")
    return input(f"{what}? [y/N] ").strip().lower() in ("y", "yes")


def cmd_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from appliance.plan.inventory import load_inventory
    from appliance.report.status import status

    rows = [status(h, verify=args.verify) for h in _hosts(args)]
    if args.json:
        sys.stdout.write(json.dumps([asdict(r) for r in rows], indent=2, sort_keys=True) + "\n")
    for r in rows if not args.json else []:
        if not r.reachable:
            print(f"{r.host:20s} UNREACHABLE  {r.message}")
            continue
        health = {True: "healthy", False: "NOT HEALTHY", None: "no health check"}[r.healthy]
        audit = f"audit {r.audit_records} records " + (
            "chain OK" if r.audit_ok else f"CHAIN BROKEN: {r.message}"
        )
        print(
            f"{r.host:20s} release {r.current} (on host: {list(r.releases)}), unit {r.enabled}/{r.active}, {health}; "
            f"gateway {r.gateway}, firewall {'loaded' if r.firewall else 'not loaded'}"
            + ("" if r.keycloak == "absent" else f", keycloak {r.keycloak}")
            + f"; {audit}"
        )
        if r.engine:
            served = ", ".join(r.models) or "nothing listed"
            line = f"  engine {r.engine}: serving {served}"
            if r.context_length is not None:
                line += f", context {r.context_length}"
            if r.kv_cache_usage is not None:
                line += f", KV cache {100 * r.kv_cache_usage:.1f}% used"
            if r.requests_running is not None:
                line += f", {r.requests_running} running / {r.requests_waiting or 0} waiting"
            print(line)
        for version, problems in sorted(r.integrity.items()):
            if problems:
                print(f"  release {version} DIFFERS FROM WHAT WAS INSTALLED:")
                print("\n".join(f"    {p}" for p in problems))
        if r.pending_switch:
            print(f"  PENDING: {r.pending_switch} (the next deploy or rollback records it)")
        if r.group is not None:
            print("  " + group_line(r.group))
    split = split_groups(load_inventory(args.inventory), {r.host: r.current for r in rows})
    for line in split if not args.json else []:
        print(line)
    bad = [r for r in rows if not r.reachable or r.healthy is False or not r.audit_ok
           or r.gateway not in ("absent", "active") or r.keycloak not in ("absent", "active")
           or any(r.integrity.values()) or r.pending_switch]  # fmt: skip
    return ExitCode.DEPLOYMENT_FAILED if bad or split else ExitCode.OK


def split_groups(inventory: Any, current: dict[str, int | None]) -> list[str]:
    """A line per serving group whose members do not all run the same release (a deploy or a
    rollback of the group puts every member on one release again)."""
    lines = []
    for group in inventory.groups:
        found = {name: current.get(name) for name in group.hosts}
        if len(set(found.values())) > 1:
            on = ", ".join(f"{name} on {version}" for name, version in found.items())
            lines.append(f"group {group.name}: SPLIT, its members run different releases ({on}): "
                         "deploy the group's release again or roll the group back")  # fmt: skip
    return lines


def group_line(group: dict[str, object]) -> str:
    """A serving group member's line in ``status``: its group, role and rank, the group's
    state with the watch's reason, and (on the head) which workers joined."""
    line = (
        f"group {group.get('group')}: {group.get('role')} rank {group.get('rank')}, "
        f"{str(group.get('state', 'unknown')).upper()}: {group.get('reason', '')}"
    )

    def names(key: str) -> list[str]:
        value = group.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    joined, missing = names("joined"), names("missing")
    if group.get("role") == "head" and (joined or missing):
        line += f" (joined: {', '.join(joined) or 'none'}"
        line += f"; not joined: {', '.join(missing)})" if missing else ")"
    return line


def cmd_models(args: argparse.Namespace) -> int:
    """Per model-server host, the base and adapters the release in place serves."""
    from appliance.compliance.inventory import inventory_json, inventory_lines
    from appliance.compliance.policy import DEFAULT_POLICY
    from appliance.report.served_models import MANIFEST, NOT_REVERIFIED, served_models

    policy = _policy(args) or DEFAULT_POLICY
    policy_name = str(args.policy) if args.policy else "the default policy (no --policy given)"
    rows = [served_models(h, policy) for h in _hosts(args)]
    refused = any(r.refused for host in rows for r in host.rows)
    if args.json:
        data = {
            "policy": policy_name,
            "source": f"{MANIFEST}: {NOT_REVERIFIED}",
            "hosts": [
                {"host": h.host, "reachable": h.reachable, "release": h.release,
                 "bundle": h.bundle or None, "bundle_version": h.bundle_version,
                 "message": h.message, "models": inventory_json(h.rows),
                 "reuses": None if h.reuse is None else dataclasses.asdict(h.reuse)}
                for h in rows
            ],
        }  # fmt: skip
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for h in rows if not args.json else []:
        if not h.reachable:
            print(f"{h.host:20s} UNREACHABLE  {h.message}")
            continue
        if h.release is None or h.message:
            print(f"{h.host:20s} release {h.release or 'none'}: {h.message}")
            continue
        print(f"{h.host:20s} release {h.release}: bundle {h.bundle} version {h.bundle_version}")
        for line in h.reuse.lines() if h.reuse is not None else []:
            print(f"  {line}")
        print("\n".join(inventory_lines(h.rows, indent="  ")))
    if not args.json:
        print(f"Findings under the site policy: {policy_name}.")
        print(f"What each host serves is {NOT_REVERIFIED}.")
    if any(h.failed for h in rows):
        return ExitCode.DEPLOYMENT_FAILED
    return ExitCode.DOES_NOT_FIT if refused else ExitCode.OK


def _each_host(
    args: argparse.Namespace, action: Callable[[Any], str], *, only: list[str] | None = None
) -> int:
    """Run ``action`` on every model-server host (of ``only``, when given); one failing host
    does not stop the others."""
    from appliance.errors import ApplianceError

    failed = False
    for host in _hosts(args):
        if only is not None and host.name not in only:
            continue
        try:
            print(f"{host.name}: {action(host)}")
        except ApplianceError as exc:
            failed = True
            print(f"{host.name}: FAILED: {exc.message}", file=sys.stderr)
            if exc.hint:  # how to repair: as important as what failed
                print(f"{host.name}: {exc.hint}", file=sys.stderr)
    return ExitCode.DEPLOYMENT_FAILED if failed else ExitCode.OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Every host alone, every serving group as one (``rollback_group``)."""
    from appliance.deploy.lifecycle import rollback, rollback_group
    from appliance.errors import ApplianceError
    from appliance.plan.inventory import load_inventory

    if not _confirm(args, "Roll back"):
        return ExitCode.OK
    inventory = load_inventory(args.inventory)
    hosts = {h.name: h for h in inventory.with_role("model-server")}
    failed = _each_host(
        args,
        lambda host: rollback(host, to=args.to, operator=getpass.getuser()),
        only=[n for n in hosts if inventory.group_of(n) is None],
    )
    for group in inventory.groups:
        try:
            members = [hosts[n] for n in group.hosts]
            print(
                f"group {group.name}: {rollback_group(members, to=args.to, operator=getpass.getuser())}"
            )
        except ApplianceError as exc:
            failed = ExitCode.DEPLOYMENT_FAILED
            print(f"group {group.name}: FAILED: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"group {group.name}: {exc.hint}", file=sys.stderr)
    return failed


def cmd_uninstall(args: argparse.Namespace) -> int:
    from appliance.deploy.lifecycle import uninstall

    if not _confirm(
        args, "Uninstall appliance" + (" and purge the audit log" if args.purge else "")
    ):
        return ExitCode.OK
    return _each_host(
        args, lambda host: uninstall(host, purge=args.purge, operator=getpass.getuser())
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from appliance.audit import verify_chain
    from appliance.deploy import audit_anchor
    from appliance.errors import ApplianceError, InputError
    from appliance.input_files import read_text_input
    from appliance.report.audit import read_log

    if (args.file is None) == (args.inventory is None):
        raise InputError("give either an audit log FILE or --inventory FILE")
    if args.reanchor and args.inventory is None:
        raise InputError("--reanchor moves the anchors of inventory hosts: give --inventory FILE")
    broken = False
    if args.file is not None:
        sources = [
            (str(args.file), read_text_input(args.file, "audit log", limit="audit-log"), None)
        ]
    else:
        sources = [(h.name, read_log(h), h) for h in _hosts(args)]
    for name, text, host in sources:
        report = verify_chain(text)
        if report.ok:
            print(f"{name}: {report.records} records, chain intact, last hash {report.last_hash}")
        else:
            broken = True
            print(f"{name}: TAMPERED ({len(report.problems)} problem(s)):", file=sys.stderr)
            for problem in report.problems:
                print(f"  {problem}", file=sys.stderr)
        if host is None:
            print(
                f"{name}: a local copy: no anchor compared (with --inventory each host's logs "
                "are compared with this machine's anchors, so records cut off the end show)"
            )
            continue
        try:
            checks = audit_anchor.check_host(
                host,
                by="audit verify --reanchor" if args.reanchor else "audit verify",
                reanchor=args.reanchor,
            )
        except ApplianceError as exc:
            broken = True
            print(f"{name}: audit anchors: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"  {exc.hint}", file=sys.stderr)
            continue
        for checked in checks:
            if checked.problem is not None and not checked.reanchored:
                broken = True
                print(f"{name}: {checked.describe()}", file=sys.stderr)
            else:
                print(f"{name}: {checked.describe()}")
    if args.inventory is not None:
        print(f"anchors: {audit_anchor.anchors_path()}")
    print(audit_anchor.WHAT_IT_PROVES)
    return ExitCode.VERIFICATION_FAILED if broken else ExitCode.OK


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    from appliance.deploy.engines import DEFAULT as DEFAULT_ENGINE
    from appliance.deploy.engines import ENGINES

    deploy = sub.add_parser("deploy", help="deploy a verified bundle to the inventory's hosts")
    deploy.add_argument("--profile", required=True, help="hardware profile (see `appliance plan`)")
    deploy.add_argument("--bundle", type=Path, required=True)
    deploy.add_argument("--trust", type=Path, required=True, help="the site's trusted root")
    deploy.add_argument("--inventory", type=Path, required=True, help="hosts (docs/inventory.md)")
    deploy.add_argument(
        "--engine", choices=list(ENGINES), help=f"how hosts converge (default {DEFAULT_ENGINE})"
    )
    deploy.add_argument("--state", type=Path, help="trust state directory (rollback protection)")
    deploy.add_argument("--allow-downgrade", action="store_true")
    deploy.add_argument(
        "--dry-run", action="store_true", help="print what would change per host; change nothing"
    )
    deploy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    deploy.add_argument(
        "--site",
        type=Path,
        metavar="FILE",
        help="the site file (networks, token issuer; appliance/deploy/site.py): also lay down the "
        "gateway and each host's nftables firewall. Without it: the model server alone, on loopback",
    )
    deploy.add_argument(
        "--emit-ansible",
        type=Path,
        metavar="DIR",
        help="write the inventory, host_vars and ansible.cfg for plain ansible-playbook "
        "(playbooks/deploy.yml) into DIR (created); change nothing",
    )
    deploy.add_argument(
        "--force", action="store_true", help="deploy even if the model does not fit"
    )
    deploy.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the site's compliance policy for the bundle's adapters (docs/compliance.md); "
        "default: intended use commercial, every finding at its default action",
    )
    deploy.add_argument("--profiles-dir", type=Path)
    deploy.add_argument("--json", action="store_true")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {"deploy": cmd_deploy}
    st = sub.add_parser("status", help="release, service and health per host")
    st.add_argument("--inventory", type=Path, required=True)
    st.add_argument("--json", action="store_true")
    st.add_argument(
        "--verify",
        action="store_true",
        help="hash every file of every release, the model's included (slow for big models); "
        "without it: sizes, mtimes and small files' digests",
    )
    handlers["status"] = cmd_status
    models = sub.add_parser(
        "models",
        help="per host, the base model and adapters the release in place serves: provider, "
        "licences, data sources and compliance findings",
    )
    models.add_argument("--inventory", type=Path, required=True, help="hosts (docs/inventory.md)")
    models.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the site's compliance policy (docs/compliance.md); default: intended use commercial",
    )
    models.add_argument("--json", action="store_true")
    handlers["models"] = cmd_models
    rb = sub.add_parser("rollback", help="activate the previous release on each host")
    rb.add_argument("--inventory", type=Path, required=True)
    rb.add_argument("--to", type=int, help="release version (default: the one before current)")
    rb.add_argument("--yes", action="store_true")
    handlers["rollback"] = cmd_rollback
    un = sub.add_parser("uninstall", help="remove what appliance installed (the audit log stays)")
    un.add_argument("--inventory", type=Path, required=True)
    un.add_argument("--purge", action="store_true", help="also remove the audit log")
    un.add_argument("--yes", action="store_true")
    handlers["uninstall"] = cmd_uninstall
    audit = sub.add_parser("audit", help="the hash-chained audit log").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    av = audit.add_parser(
        "verify",
        help="detect edited, removed, reordered records and, with --inventory, records cut off "
        "the end (compared with this machine's anchors)",
    )
    av.add_argument("file", type=Path, nargs="?", help="a local copy of audit.jsonl")
    av.add_argument(
        "--inventory", type=Path, help="read each host's /var/log/appliance/audit.jsonl"
    )
    av.add_argument(
        "--reanchor",
        action="store_true",
        help="after a rotation or removal you made on purpose: report, then anchor each "
        "host's logs as they are now (a cut found is shown, not failed)",
    )
    handlers["audit.verify"] = cmd_audit_verify
    return handlers
