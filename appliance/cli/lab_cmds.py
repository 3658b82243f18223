"""``appliance lab up|down|list``: parse, call ``appliance.lab``, render its events and results.

Diagnostics and progress go to stderr; the result (and ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from appliance.cli.argtypes import positive_int
from appliance.events import Event, Finished, Progress, Warned, drain
from appliance.exitcodes import ExitCode

T = TypeVar("T")


def run_lab_operation(gen: Generator[Event, None, T], *, quiet: bool) -> T:
    """Drain a lab operation: step messages on stderr, a live status line on a terminal."""
    if quiet or not sys.stderr.isatty():

        def plain(event: Event) -> None:
            if not quiet and isinstance(event, Warned | Finished):
                print(f"appliance: {event.message}", file=sys.stderr)

        return drain(gen, plain)
    from rich.console import Console

    console = Console(stderr=True, highlight=False, markup=False)
    with console.status("lab: starting") as status:

        def show(event: Event) -> None:
            if isinstance(event, Progress):
                count = f"{event.done_items}" + (
                    f"/{event.total_items}" if event.total_items else ""
                )
                status.update(f"{event.operation}: {count} {event.item or ''}")
            elif isinstance(event, Warned | Finished):
                console.print(f"appliance: {event.message}")
            else:
                status.update(f"{event.operation} ...")

        return drain(gen, show)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def cmd_lab_up(args: argparse.Namespace) -> int:
    from appliance.lab import lab_up
    from appliance.lab.inventory_files import roles_for

    _check_lab_roots(args.name)
    lab = run_lab_operation(lab_up(args.name, args.hosts, network=args.network), quiet=args.json)
    down = f"appliance lab down --name {shlex.quote(lab.name)}"
    hosts = [
        {"name": h.name, "address": h.address, "roles": list(roles_for(i, len(lab.hosts)))}
        for i, h in enumerate(lab.hosts, start=1)
    ]
    if args.json:
        _emit_json(
            {
                "name": lab.name,
                "status": lab.status,
                "subnet": lab.subnet,
                "machine_address": lab.gateway,
                "hosts": hosts,
                "inventory": str(lab.inventory),
                "ansible_inventory": str(lab.ansible_inventory),
                "ssh_key": str(lab.key),
                "known_hosts": str(lab.known_hosts),
                "teardown": down,
            }
        )
        return ExitCode.OK
    print(
        f"lab {lab.name} is up: {len(hosts)} host(s) on {lab.subnet}, no route out "
        f"(this machine is {lab.gateway} on {lab.bridge})"
    )
    width = max(len(h["name"]) for h in hosts)
    for h in hosts:
        print(f"  {h['name']:<{width}}  {h['address']:<15}  {', '.join(h['roles'])}")
    first = lab.hosts[0]
    ssh = shlex.join(
        ["ssh", "-i", str(lab.key), "-o", f"UserKnownHostsFile={lab.known_hosts}", f"root@{first.address}"]
    )  # fmt: skip
    print(f"inventory          {lab.inventory}")
    print(f"ansible inventory  {lab.ansible_inventory}")
    print(f"log in             {ssh}")
    print(f"tear down          {down}")
    return ExitCode.OK


def _check_lab_roots(name: str) -> None:
    """The lab writes its state and disks under fixed roots: checked before anything boots."""
    from appliance.lab.network import check_name
    from appliance.lab.proc import require_root
    from appliance.lab.state import LabPaths
    from appliance.output_paths import writable_directory

    check_name(name)  # the lab's own checks first, in its order
    require_root()  # the lab's own message first: a non-root user cannot write there anyway
    paths = LabPaths()
    writable_directory(paths.state_root, "lab state directory")
    writable_directory(paths.disk_root, "lab disk directory")


def cmd_lab_down(args: argparse.Namespace) -> int:
    from appliance.lab import lab_down

    run_lab_operation(lab_down(args.name), quiet=False)
    return ExitCode.OK


def cmd_lab_list(args: argparse.Namespace) -> int:
    from appliance.lab import lab_list

    labs = lab_list()
    if args.json:
        _emit_json(
            [
                {
                    "name": lab.name,
                    "status": lab.status,
                    "subnet": lab.subnet,
                    "hosts": [
                        {"name": h.name, "address": h.address, "running": h.running}
                        for h in lab.hosts
                    ],
                    "state_dir": str(lab.state_dir),
                    "inventory": str(lab.inventory) if lab.inventory else None,
                }
                for lab in labs
            ]
        )
        return ExitCode.OK
    if not labs:
        print("no labs on this machine (start one with `appliance lab up`)")
        return ExitCode.OK
    for lab in labs:
        print(f"{lab.name}  {lab.status}  {lab.subnet or '-'}  inventory {lab.inventory or '-'}")
        for h in lab.hosts:
            print(f"  {h.name}  {h.address}  {'running' if h.running else 'stopped'}")
        if lab.status in ("broken", "degraded", "stopped", "creating"):
            print(f"  (remove it with `appliance lab down --name {lab.name}`)")
    return ExitCode.OK


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``lab`` parsers; return {dotted command: handler}."""
    lab = sub.add_parser(
        "lab", help="local disconnected rehearsal hosts (systemd-nspawn; needs root)"
    )
    lsub = lab.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    up = lsub.add_parser(
        "up", help="boot Debian hosts with no route out, reachable over SSH from this machine"
    )
    up.add_argument("--hosts", type=positive_int, default=1, help="number of hosts (default 1)")
    up.add_argument("--name", default="lab", help="lab name; hosts are NAME-1, NAME-2, ...")
    up.add_argument(
        "--network",
        help="private IPv4 range labs take a /24 from (default $APPLIANCE_LAB_NETWORK or 10.231.0.0/16)",
    )
    up.add_argument("--json", action="store_true", help="print the lab (hosts, inventory) as JSON")
    down = lsub.add_parser("down", help="power the hosts off and remove everything the lab made")
    down.add_argument("--name", default="lab", help="lab name (default lab)")
    show = lsub.add_parser("list", help="the labs on this machine and their hosts")
    show.add_argument("--json", action="store_true")
    return {"lab.up": cmd_lab_up, "lab.down": cmd_lab_down, "lab.list": cmd_lab_list}
