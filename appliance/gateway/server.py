"""Serving the gateway app with uvicorn: TLS always, no access log (the audit log replaces it).

``uvicorn_config`` is the one place the server's settings are chosen; the
entry point (``python -m appliance.gateway``) and the TLS tests both use it.
uvicorn's own bounds are used where it has them (header bytes, idle keep-alive);
what it lacks (header and body deadlines, a TLS handshake deadline, connection
caps per address that keep ``/healthz`` answerable) is ``protocol`` and
``connections``.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from typing import TYPE_CHECKING, Any

from appliance.gateway.config import GatewayConfig, GatewayConfigError
from appliance.gateway.connections import ConnectionGuard
from appliance.input_files import read_input

if TYPE_CHECKING:
    import uvicorn

# h11's default header limit is 16 KiB; a token up to the configured size must reach
# the gateway (to be refused with an audit record), not be cut off by the server.
HEADER_ALLOWANCE = 16 * 1024
KEEP_ALIVE_S = 75


def check_tls_files(config: GatewayConfig) -> None:
    """The certificate and key exist, the key is not world-readable, and they match."""
    import ssl

    key = config.tls.key_file
    for path in (config.tls.cert_file, key):
        if not path.exists() and not path.is_symlink():
            raise GatewayConfigError(
                f"TLS file missing: {path}: No such file or directory",
                hint="Provide the site's certificate and key, or make them once with "
                "`python -m appliance.gateway generate-cert --config FILE --name HOST`.",
            )
        # Regular and bounded before OpenSSL opens them (it would block on a FIFO).
        read_input(path, "TLS file", limit="key", error=GatewayConfigError)
    mode = key.stat().st_mode
    if mode & stat.S_IROTH:
        raise GatewayConfigError(
            f"{key}: the TLS key is readable by everyone (mode {stat.S_IMODE(mode):04o})",
            hint=f"chmod 0600 {key} (or 0640 with the gateway's group)",
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(config.tls.cert_file), str(key)
        )
    except (ssl.SSLError, OSError) as exc:
        raise GatewayConfigError(
            f"{config.tls.cert_file} and {key} do not load as a certificate and its key: {exc}"
        ) from exc


def uvicorn_config(config: GatewayConfig, app: Any) -> uvicorn.Config:
    """The server's settings; ``app`` is ``create_app(config)`` (its connection report is used)."""
    import uvicorn  # lazily: uvicorn loads click

    from appliance.gateway.protocol import bound_protocol

    guard = ConnectionGuard(config.limits, app.state.gateway.connection_report)

    return uvicorn.Config(
        app,
        host=config.listen.host,
        port=config.listen.port,
        ssl_certfile=str(config.tls.cert_file),
        ssl_keyfile=str(config.tls.key_file),
        access_log=False,
        log_config=None,  # the process's logging (journald) as configured by the entry point
        server_header=False,
        proxy_headers=False,  # the gateway is the edge: X-Forwarded-For is not trusted
        lifespan="on",
        http=bound_protocol(guard),  # uvicorn's h11 protocol, with caps and deadlines
        loop="none",  # serve() runs the server on protocol.HandshakeBoundedLoop
        h11_max_incomplete_event_size=config.tokens.max_token_bytes + HEADER_ALLOWANCE,
        timeout_graceful_shutdown=30,
        # Longer than clients keep idle connections (httpx: 5 s), so a client drops an idle
        # connection before the gateway closes it under a request it is sending (nginx: 75 s).
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def serve(config: GatewayConfig) -> None:
    """Run until SIGTERM/SIGINT (uvicorn's handlers): streams get 30 s to finish."""
    import uvicorn

    from appliance.gateway.app import create_app

    check_tls_files(config)
    if not config.upstream.is_loopback:
        logging.getLogger("appliance.gateway").warning(
            "the model server %s is not on loopback: make sure only the gateway can reach it",
            config.upstream.url,
        )
    from appliance.gateway.protocol import loop_factory

    server = uvicorn.Server(uvicorn_config(config, create_app(config)))
    with asyncio.Runner(loop_factory=loop_factory(config.limits.header_timeout_s)) as runner:
        runner.run(server.serve())
