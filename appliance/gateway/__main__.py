"""``python -m appliance.gateway``: run the gateway, check its config, or make a site certificate.

    python -m appliance.gateway --config FILE            serve (TLS, until SIGTERM)
    python -m appliance.gateway --config FILE --check    validate config, TLS files, signing keys
    python -m appliance.gateway generate-cert --config FILE --name HOST [--name HOST ...] [--days N]
    python -m appliance.gateway --help                   this usage

This module is a front end, like ``appliance.cli``: it alone in the gateway imports
argparse (the import contracts in pyproject.toml allow it here only). A usage error is
printed as ``appliance.gateway: <what is wrong>`` followed by the usage above, worded as
before argparse, and ``--help`` prints the usage above.
Exit codes are ``appliance.exitcodes.ExitCode``: 0 ok, 2 usage or bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import NoReturn

from appliance.errors import ApplianceError, InputError
from appliance.exitcodes import ExitCode

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


class UsageError(InputError):
    """Bad arguments to ``python -m appliance.gateway``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The gateway's options; usage errors raise ``UsageError`` instead of exiting."""
    parser = _Parser(
        prog="python -m appliance.gateway",
        add_help=False,  # --help prints USAGE (main), as before argparse
        allow_abbrev=False,
        exit_on_error=False,
    )
    parser.add_argument("command", nargs="?")
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--name", action="append", default=[])
    parser.add_argument("--days", action="append", default=[])
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed ``argv``; ``UsageError`` worded as the gateway always worded it."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except argparse.ArgumentError as exc:
        if exc.message == "expected one argument":
            raise UsageError(f"{exc.argument_name} needs a value") from None
        raise UsageError(str(exc)) from None
    if args.help:
        return args
    if args.command is not None and argv[0] != args.command:
        raise UsageError(f"unknown argument {args.command!r}")  # the command comes first
    args.command = args.command or "serve"
    if args.command not in ("serve", "generate-cert"):
        raise UsageError(f"unknown command {args.command!r}")
    if unknown:
        raise UsageError(f"unknown argument {unknown[0]!r}")
    if args.command == "generate-cert" and args.check:
        raise UsageError("unknown argument '--check'")
    if len(args.config) != 1:
        raise UsageError("give --config FILE once")
    if args.command == "serve" and (args.name or args.days):
        raise UsageError("--name and --days belong to generate-cert")
    return args


def check(config_path: Path) -> str:
    from appliance.gateway.calls import jwks_source
    from appliance.gateway.clock import SystemClock
    from appliance.gateway.config import load_config
    from appliance.gateway.jwks import KeyStore
    from appliance.gateway.server import check_tls_files
    from appliance.gateway.upstream import read_api_key

    config = load_config(config_path)
    check_tls_files(config)
    read_api_key(config.upstream.api_key_file)
    t = config.tokens
    store = KeyStore(
        jwks_source(config), t.algorithms, SystemClock(),
        refresh_interval_s=t.jwks_refresh_interval_s, max_age_s=t.jwks_max_age_s,
    )  # fmt: skip
    asyncio.run(store.refresh())
    if not store.loaded:
        raise UsageError(f"signing keys: {store.last_error}")
    return (
        f"{config_path}: ok ({len(store.key_ids)} signing key(s) from {store.source.description})"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # One line per upstream request would duplicate the audit log in the journal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        if args.help:
            print(USAGE)
            return int(ExitCode.OK)
        config_path = Path(args.config[0])
        if args.command == "generate-cert":
            from appliance.gateway.certs import DEFAULT_DAYS, generate_self_signed
            from appliance.gateway.config import load_config

            config = load_config(config_path)
            days = args.days[-1] if args.days else str(DEFAULT_DAYS)
            if not days.isdigit():
                raise UsageError(f"--days expects a number of days, found {days!r}")
            made = generate_self_signed(
                config.tls.cert_file, config.tls.key_file, args.name, days=int(days)
            )
            state = "written" if made else "already present, left as it is"
            print(f"{config.tls.cert_file}, {config.tls.key_file}: {state}")
        elif args.check:
            print(check(config_path))
        else:
            from appliance.gateway.config import load_config
            from appliance.gateway.server import serve

            serve(load_config(config_path))
    except ApplianceError as exc:
        print(f"appliance.gateway: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError):
            print(USAGE, file=sys.stderr)
        return int(exc.exit_code)
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
