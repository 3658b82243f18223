"""``python -m appliance.gateway``: run the gateway, check its config, or make a site certificate.

    python -m appliance.gateway --config FILE            serve (TLS, until SIGTERM)
    python -m appliance.gateway --config FILE --check    validate config, TLS files, signing keys
    python -m appliance.gateway generate-cert --config FILE --name HOST [--name HOST ...] [--days N]
    python -m appliance.gateway --help                   this usage

The arguments are parsed by hand: the core does not import a CLI framework
(tests/unit/test_core_imports.py), and three options do not need one.
Exit codes are ``appliance.exitcodes.ExitCode``: 0 ok, 2 usage or bad config.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from appliance.errors import ApplianceError, InputError
from appliance.exitcodes import ExitCode

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


class UsageError(InputError):
    """Bad arguments to ``python -m appliance.gateway``."""


def parse(argv: list[str]) -> tuple[str, dict[str, list[str]], set[str]]:
    """(command, options with values, flags) from ``argv``."""
    command = "serve"
    if argv and not argv[0].startswith("-"):
        command = argv.pop(0)
    if command not in ("serve", "generate-cert"):
        raise UsageError(f"unknown command {command!r}")
    takes_value = {"--config", "--name", "--days"}
    flags_known = {"--check"} if command == "serve" else set()
    options: dict[str, list[str]] = {}
    flags: set[str] = set()
    while argv:
        arg = argv.pop(0)
        name, eq, value = arg.partition("=")
        if name in takes_value:
            if not eq:
                if not argv:
                    raise UsageError(f"{name} needs a value")
                value = argv.pop(0)
            options.setdefault(name, []).append(value)
        elif arg in flags_known:
            flags.add(arg)
        else:
            raise UsageError(f"unknown argument {arg!r}")
    if "--config" not in options or len(options["--config"]) != 1:
        raise UsageError("give --config FILE once")
    if command == "serve" and ("--name" in options or "--days" in options):
        raise UsageError("--name and --days belong to generate-cert")
    return command, options, flags


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
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(USAGE)
        return int(ExitCode.OK)
    try:
        command, options, flags = parse(args)
        config_path = Path(options["--config"][0])
        if command == "generate-cert":
            from appliance.gateway.certs import DEFAULT_DAYS, generate_self_signed
            from appliance.gateway.config import load_config

            config = load_config(config_path)
            days = options.get("--days", [str(DEFAULT_DAYS)])[-1]
            if not days.isdigit():
                raise UsageError(f"--days expects a number of days, found {days!r}")
            made = generate_self_signed(
                config.tls.cert_file, config.tls.key_file, options.get("--name", []), days=int(days)
            )
            state = "written" if made else "already present, left as it is"
            print(f"{config.tls.cert_file}, {config.tls.key_file}: {state}")
        elif "--check" in flags:
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
