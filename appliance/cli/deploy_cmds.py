"""``appliance deploy``: verify the bundle, plan per host, show the diff, converge."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.exitcodes import ExitCode


def cmd_deploy(args: argparse.Namespace) -> int:
    from appliance.bundle.verify import VerifyOptions, verify_bundle
    from appliance.cli.bundle_cmds import run_with_progress
    from appliance.deploy.run import deploy
    from appliance.errors import InputError
    from appliance.inventory import load_inventory
    from appliance.profiles import load_profiles

    inventory = load_inventory(args.inventory)
    profiles = load_profiles(args.profiles_dir)
    verified = run_with_progress(
        verify_bundle(
            args.bundle, args.trust, args.state, VerifyOptions(allow_downgrade=args.allow_downgrade)
        ),
        quiet=args.json,
    )
    if not args.dry_run and not args.yes:
        # Show what would change first; then a person confirms, a script says --yes.
        preview = run_with_progress(
            deploy(
                verified,
                inventory,
                profiles,
                profile=args.profile,
                engine=args.engine,
                dry_run=True,
                force=args.force,
            ),
            quiet=args.json,
        )
        _print_changes(preview)
        if not sys.stdin.isatty():
            raise InputError("deploy changes hosts: confirm with --yes (or preview with --dry-run)")
        if input("Deploy these changes? [y/N] ").strip().lower() not in ("y", "yes"):
            print("appliance: nothing changed", file=sys.stderr)
            return ExitCode.OK
    results = run_with_progress(
        deploy(verified, inventory, profiles, profile=args.profile, engine=args.engine, dry_run=args.dry_run,
               force=args.force, operator=getpass.getuser()),
        quiet=args.json,
    )  # fmt: skip
    data = [
        {"host": r.host, "status": r.status, "message": r.message, "audit": r.audit_hash,
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
    failed = [r for r in results if r.status in ("failed", "rolled-back")]
    return ExitCode.DEPLOYMENT_FAILED if failed else ExitCode.OK


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


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    deploy = sub.add_parser("deploy", help="deploy a verified bundle to the inventory's hosts")
    deploy.add_argument("--profile", required=True, help="hardware profile (see `appliance plan`)")
    deploy.add_argument("--bundle", type=Path, required=True)
    deploy.add_argument("--trust", type=Path, required=True, help="the site's trusted root")
    deploy.add_argument("--inventory", type=Path, required=True, help="hosts (docs/inventory.md)")
    deploy.add_argument("--engine", choices=["pyinfra", "ansible"], default="pyinfra")
    deploy.add_argument("--state", type=Path, help="trust state directory (rollback protection)")
    deploy.add_argument("--allow-downgrade", action="store_true")
    deploy.add_argument(
        "--dry-run", action="store_true", help="print what would change per host; change nothing"
    )
    deploy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    deploy.add_argument(
        "--force", action="store_true", help="deploy even if the model does not fit"
    )
    deploy.add_argument("--profiles-dir", type=Path)
    deploy.add_argument("--json", action="store_true")
    return {"deploy": cmd_deploy}
