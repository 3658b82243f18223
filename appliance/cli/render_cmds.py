"""``appliance render``: the network policy for review or GitOps (nftables or NetworkPolicies).

Nothing is changed on any host or cluster: the command writes files into a
new directory. Diagnostics go to stderr; ``--json`` prints what was written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.exitcodes import ExitCode


def cmd_render(args: argparse.Namespace) -> int:
    from appliance.netpolicy.model import (
        NetworkPolicyError,
        build_policy,
        build_site,
        inventory_groups,
    )
    from appliance.netpolicy.render import render_files, write_directory
    from appliance.output_paths import new_or_empty_directory
    from appliance.plan.inventory import load_inventory
    from appliance.plan.profiles import get_profile, load_profiles

    new_or_empty_directory(args.out, "--out")
    profile = get_profile(load_profiles(args.profiles_dir), args.profile)
    if args.target == "k8s" and args.admin_cidr:
        raise NetworkPolicyError(
            "--admin-cidr applies to --target host (hosts and SSH), found it with --target k8s",
            hint="Drop --admin-cidr, or render --target host.",
        )
    inventory = load_inventory(args.inventory) if args.inventory is not None else None
    # Serving groups from the inventory alone: each member's inventory address stands for its
    # address on the group's interface (policy.txt says so); the deploy passes the plan's.
    groups = inventory_groups(inventory) if inventory is not None else ()
    if args.target == "k8s":
        if inventory is not None and not groups:
            raise NetworkPolicyError(
                f"--inventory {args.inventory} with --target k8s: expected serving groups (the "
                "only part of an inventory the Kubernetes rendering uses: hosts are pods there), "
                "found none",
                hint="Drop --inventory, or render --target host (one ruleset per host).",
            )
        site = build_site(args.site_cidr or [])
    else:
        site = build_site(args.site_cidr or [], args.admin_cidr or [], inventory, groups,
                          group_addresses="inventory")  # fmt: skip
    model = build_policy(profile, groups)
    files = render_files(model, site, args.target)
    written = write_directory(files, args.out)
    if args.json:
        result = {
            "directory": str(args.out),
            "profile": model.profile,
            "target": args.target,
            "files": [{"path": w.path, "sha256": w.sha256, "bytes": w.size} for w in written],
        }
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        print(f"Wrote {args.out} ({len(written)} files); nothing was changed on any host.")
        for w in written:
            print(f"  {w.path}")
        print(f"Review {args.out / 'policy.txt'} first: the model, the addresses and how to check.")
    return ExitCode.OK


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    render = sub.add_parser(
        "render",
        help="write the network policy as nftables rulesets or Kubernetes NetworkPolicies",
        description="Render the one network policy model (who may talk to whom on which port; "
        "nothing leaves the site) for review or GitOps. Changes nothing anywhere.",
    )
    render.add_argument(
        "--profile", required=True, help="hardware profile (see `appliance profiles`)"
    )
    render.add_argument("--target", required=True, choices=["host", "k8s"],
                        help="host: nftables rulesets; k8s: NetworkPolicies")  # fmt: skip
    render.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="new (or empty) directory to write into")  # fmt: skip
    render.add_argument("--inventory", type=Path, metavar="FILE",
                        help="hosts, roles and serving groups (docs/inventory.md): one ruleset "
                        "per host; with --target k8s, its serving groups only")  # fmt: skip
    render.add_argument("--site-cidr", action="append", metavar="CIDR",
                        help="a site network (repeat for each); clients are here, nothing beyond "
                        "it is reachable")  # fmt: skip
    render.add_argument("--admin-cidr", action="append", metavar="CIDR",
                        help="the operator's network, allowed SSH (host target; repeat for each)")  # fmt: skip
    render.add_argument("--profiles-dir", type=Path, help="use the profiles in DIR")
    render.add_argument("--json", action="store_true", help="print what was written as JSON")
    return {"render": cmd_render}
