"""``appliance`` command line: parse, call the core, render, exit with an ``ExitCode``.

stdlib argparse on purpose: ``appliance detect --json`` runs on every host
and its start-up time is budgeted (bench/detect); typer or click would add
30-70 ms to every invocation. Rich is imported only when rendering for a
person. Diagnostics go to stderr; ``--json`` output goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.cli.argtypes import positive_int
from appliance.errors import ApplianceError
from appliance.exitcodes import ExitCode

if TYPE_CHECKING:
    from appliance.detect.facts import HostFacts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Install a sovereign, on-premise LLM service onto disconnected hosts.",
        epilog="Exit codes: 0 ok, 2 usage or bad input, 3 does not fit, 4 verification failed, "
        "5 deployment failed, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    detect = sub.add_parser("detect", help="report this host's GPUs, CPU, memory and disks")
    detect.add_argument(
        "--json", action="store_true", help="print the facts as JSON (docs/facts.md)"
    )

    profiles = sub.add_parser("profiles", help="list the hardware profiles")
    profiles.add_argument("--json", action="store_true", help="print the profiles as JSON")
    profiles.add_argument(
        "--profiles-dir", type=Path, help="use the profiles in DIR instead of the built-in ones"
    )

    plan = sub.add_parser("plan", help="choose a profile, explain why, check the model fits")
    plan.add_argument("--profile", default="auto", help="auto (default) or a profile name")
    plan.add_argument(
        "--facts", type=Path, help="saved facts (appliance detect --json) instead of this host"
    )
    plan.add_argument("--model", type=Path, help="Hugging Face model directory or GGUF file")
    plan.add_argument(
        "--context", type=positive_int, help="context length instead of the profile's"
    )
    plan.add_argument(
        "--force", action="store_true", help="accept a plan that does not fit (exit 0)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--profiles-dir", type=Path, help="use the profiles in DIR instead of the built-in ones"
    )
    tui = sub.add_parser(
        "tui", help="the interactive installer (also: `appliance` alone, on a terminal)"
    )
    tui.add_argument("--inventory", type=Path, help="hosts (docs/inventory.md)")
    tui.add_argument("--bundle", type=Path, help="the bundle directory to verify")
    tui.add_argument("--trust", type=Path, help="the site's trusted root (root.json)")
    tui.add_argument("--model", type=Path, help="model for the fit report (HF directory or GGUF)")
    tui.add_argument(
        "--facts", type=Path, help="saved facts (appliance detect --json) instead of this host"
    )
    tui.add_argument("--state", type=Path, help="trust state directory (rollback protection)")
    tui.add_argument("--profiles-dir", type=Path, help="use the profiles in DIR")
    tui.add_argument(
        "--site",
        type=Path,
        metavar="FILE",
        help="site file: also lay down the gateway and each host's firewall (docs/gateway.md)",
    )
    from appliance.cli import bundle_cmds, deploy_cmds, lab_cmds

    COMMANDS.update(bundle_cmds.register(sub))
    COMMANDS.update(deploy_cmds.register(sub))
    COMMANDS.update(lab_cmds.register(sub))
    COMMANDS.update(__import__("appliance.cli.render_cmds", fromlist=["register"]).register(sub))
    return parser


def _hosts(facts_path: Path | None) -> tuple[tuple[HostFacts, ...], str]:
    if facts_path is not None:
        from appliance.detect.facts_file import load_facts

        return load_facts(facts_path), str(facts_path)
    from appliance.detect.host import detect_host

    host = detect_host()
    return (host,), f"detected on {host.hostname}"


def cmd_detect(args: argparse.Namespace) -> int:
    from appliance.detect.facts import dump_facts_json
    from appliance.detect.host import detect_host

    facts = detect_host()
    if args.json:
        sys.stdout.write(dump_facts_json(facts))
    else:
        from appliance.cli.render import render_detect

        render_detect(facts)
    return ExitCode.OK


def cmd_profiles(args: argparse.Namespace) -> int:
    from appliance.plan.profiles import load_profiles

    profiles = load_profiles(args.profiles_dir)
    if args.json:
        data = [p.model_dump(mode="json") for p in profiles.values()]
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        from appliance.cli.render import render_profiles

        render_profiles(profiles)
    return ExitCode.OK


def cmd_plan(args: argparse.Namespace) -> int:
    from appliance.model.info import load_model_info
    from appliance.plan.preflight import failures, plan_preflights, preflights_to_json
    from appliance.plan.profiles import load_profiles
    from appliance.plan.report import build_plan, plan_to_json
    from appliance.plan.selection import resolve_profile

    profiles = load_profiles(args.profiles_dir)
    requested = resolve_profile(profiles, args.profile)  # unknown name: fail before detection
    model = load_model_info(args.model) if args.model is not None else None
    hosts, source = _hosts(args.facts)
    plan = build_plan(
        profiles,
        hosts,
        facts_source=source,
        requested=requested,
        model=model,
        context=args.context,
    )
    rows = plan_preflights(plan)  # no bundle here: the driver/CUDA row is checked at deploy
    if args.json:
        data = plan_to_json(plan, forced=args.force) | {"preflights": preflights_to_json(rows)}
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if plan.selection.gpu_notice:
            print(f"appliance: {plan.selection.gpu_notice}", file=sys.stderr)
    else:
        from appliance.cli.render import render_plan

        render_plan(plan, forced=args.force, preflights=rows)
    # A failed preflight other than the fit (reported below as before) refuses like a misfit.
    failed = [r for r in failures(rows, force=args.force) if r.name != "fit"]
    if failed:
        names = ", ".join(f"{r.host} {r.name}" for r in failed)
        print(f"appliance: preflight check(s) failed: {names} (see what to do above); a deploy "
              "would refuse before changing any host", file=sys.stderr)  # fmt: skip
        return ExitCode.DOES_NOT_FIT
    if plan.fits:
        return ExitCode.OK
    if args.force:
        print(
            "appliance: the model does not fit; continuing because --force was given",
            file=sys.stderr,
        )
        return ExitCode.OK
    print(
        "appliance: the model does not fit this profile on this hardware (see the fit report); "
        "use a suggested alternative, or --force to accept the risk of running out of memory",
        file=sys.stderr,
    )
    return ExitCode.DOES_NOT_FIT


def cmd_tui(args: argparse.Namespace) -> int:
    # Imported here only: every other command (and the core) runs without Textual.
    from tui.app import run
    from tui.session import AppOptions

    options = AppOptions(
        facts=getattr(args, "facts", None),
        model=getattr(args, "model", None),
        bundle=getattr(args, "bundle", None),
        trust=getattr(args, "trust", None),
        inventory=getattr(args, "inventory", None),
        site=getattr(args, "site", None),
    )
    # A bad site file raises SiteFileError before the app starts: main() prints it, exit 2.
    return run(
        options,
        state=getattr(args, "state", None),
        profiles_dir=getattr(args, "profiles_dir", None),
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "detect": cmd_detect,
    "profiles": cmd_profiles,
    "plan": cmd_plan,
    "tui": cmd_tui,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            args.command = "tui"  # a person at a terminal: the installer
        else:
            # Scripts and CI: no terminal to draw on.
            parser.print_help()
            print("\n`appliance tui` opens the interactive installer (on a terminal).")
            return ExitCode.OK
    command = (
        args.command
        if getattr(args, "subcommand", None) is None
        else f"{args.command}.{args.subcommand}"
    )
    try:
        return int(COMMANDS[command](args))
    except ApplianceError as exc:
        print(f"appliance: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"appliance: {exc.hint}", file=sys.stderr)
        if getattr(args, "json", False):
            # Scripts reading --json get the failure on stdout too, with its kind.
            error = {
                "ok": False,
                "error": type(exc).__name__,
                "message": exc.message,
                "exit_code": int(exc.exit_code),
            }
            sys.stdout.write(json.dumps(error, indent=2, sort_keys=True) + "\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("appliance: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # e.g. `appliance detect --json | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return ExitCode.OK
