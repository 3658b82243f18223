"""The development OIDC issuer: lab only, not Keycloak.

Keycloak cannot run on the development machine (no Java, no download of its
distribution), yet the gateway and the end-to-end test need real tokens. This
small issuer serves one *lab* realm the way Keycloak would, from the very realm
import the appliance generates (``appliance.keycloak.realm``, rendered with the
site's client secrets): the clients, their secrets, the roles of each service
account and the token lifetime all come from that file, nothing from test data.

Endpoints, under ``/realms/<realm>`` as Keycloak names them:
``/.well-known/openid-configuration``, ``/protocol/openid-connect/certs``
(JWKS) and ``/protocol/openid-connect/token`` (``grant_type=client_credentials``
with ``client_secret_basic`` or ``client_secret_post``, RFC 6749 errors). Access
tokens are RS256 JWTs shaped like Keycloak's: ``iss`` = BASE/realms/R, ``aud``
the API client (from each caller's ``oidc-audience-mapper``), ``azp``, ``sub``
(the service account), ``resource_access.<api>.roles``, ``exp``/``iat``/``nbf``,
``jti``, ``typ: Bearer``; the header carries ``kid`` (the RFC 7638 thumbprint).

Refusals, by design: it binds only to loopback or to the lab's address range
(``appliance.lab.network.lab_range``, 10.231.0.0/16 unless
``APPLIANCE_LAB_NETWORK`` says otherwise); it serves only a realm marked
``appliance.environment: lab``; the realm file (it holds secrets) must be
0600. It is no part of any profile, bundle or playbook, and says what it is in
its banner, its discovery document and a response header. Secrets are never
logged or echoed: a refused client gets ``invalid_client`` and the log names
the client id only.

Keys: an RSA 2048 key generated at first start in ``--state`` (0700), kept 0600
as ``signing-key.pem`` and reused; ``--new-key`` retires it (kept, no longer
published) and makes a new one, so tokens signed by the old key stop verifying.

Run: ``python -m appliance.lab.dev_issuer --realm FILE --listen ADDR:PORT
--state DIR [--hostname URL] [--tls-cert FILE --tls-key FILE] [--new-key]``.
Starlette and uvicorn are imported only when it serves (uvicorn loads click).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from appliance.errors import ApplianceError
from appliance.input_files import parse_json
from appliance.keycloak.errors import RealmError, SiteSecretsError
from appliance.keycloak.schema import CallerClient, Realm, validate_realm
from appliance.keycloak.site_secrets import ensure_private_dir, read_private, write_private
from appliance.lab.errors import LabInputError

if TYPE_CHECKING:
    import argparse
    import socket

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from starlette.applications import Starlette

BANNER = "development issuer — lab only, not Keycloak"
HEADER_NAME = "X-Appliance-Issuer"
HEADER_VALUE = "development issuer - lab only, not Keycloak"  # HTTP headers are latin-1
KEY_FILE = "signing-key.pem"
MAX_BODY = 16 * 1024
RSA_BITS = 2048
INVALID_CLIENT = "Invalid client or Invalid client credentials"  # Keycloak's wording

log = logging.getLogger("appliance.dev_issuer")


class DevIssuerError(LabInputError):
    """The development issuer refuses to start: not a lab address, not a lab realm, bad files."""


# --- refusals before anything starts ---------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6]:PORT`` with a literal IP address (a name could resolve anywhere)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise DevIssuerError(f"--listen expects ADDR:PORT (e.g. 127.0.0.1:8443), found {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DevIssuerError(
            f"--listen needs an IP address, not a name ({host!r}): a name could resolve outside the lab"
        ) from None
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise DevIssuerError(f"--listen port must be 0-65535, found {port}")
    return host, port


def check_lab_address(host: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse any address but loopback or one inside the lab's range."""
    from appliance.lab.network import lab_range

    address = ipaddress.ip_address(host)
    if address.is_loopback:
        return
    lab = lab_range(environ)
    if isinstance(address, ipaddress.IPv4Address) and address in lab:
        return
    raise DevIssuerError(
        f"the {BANNER} binds only to loopback or to the lab's range {lab}; refusing {host}",
        hint="It stands in for Keycloak in the lab and tests; a site runs Keycloak itself.",
    )


def load_lab_realm(path: Path) -> Realm:
    """The rendered realm import at ``path`` (0600: it holds client secrets), if it is a lab realm."""
    try:
        text = read_private(Path(path), "realm import")
    except SiteSecretsError as exc:
        raise DevIssuerError(exc.message, hint=exc.hint) from exc
    problem = None
    try:
        data = parse_json(text, "realm import", error=DevIssuerError)
    except DevIssuerError as exc:
        # The parser's messages name a place or a key, never a value (this file holds secrets).
        detail = exc.message.removeprefix("realm import: ")
        if detail.startswith("not valid JSON"):
            problem = "invalid JSON" + detail.removeprefix("not valid JSON")
        elif detail.startswith("duplicate JSON key"):
            problem = "duplicate keys: " + detail.removeprefix("duplicate JSON key ")
        else:
            problem = detail
    if problem is not None:
        # Raised outside the except block: a JSON error keeps the document, which holds secrets.
        raise DevIssuerError(f"{path}: not a realm import ({problem})")
    try:
        realm = validate_realm(data, secrets="present", where=str(path))
    except RealmError as exc:
        raise DevIssuerError(exc.message, hint=exc.hint) from exc
    environment = realm.attributes.environment
    if environment != "lab":
        raise DevIssuerError(
            f"{path}: realm {realm.realm!r} is a {environment} realm; the {BANNER} serves only "
            "realms generated with `environment: lab`",
            hint="Production realms are served by Keycloak.",
        )
    return realm


# --- signing key ---------------------------------------------------------------------


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    private: RSAPrivateKey
    path: Path

    def public_jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        jwk = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
        return {"kid": self.kid, **jwk, "alg": "RS256", "use": "sig"}

    @property
    def kid(self) -> str:
        numbers = self.private.public_key().public_numbers()
        # RFC 7638: SHA-256 of the required members, lexicographic, no whitespace.
        canonical = json.dumps(
            {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)},
            separators=(",", ":"),
            sort_keys=True,
        )
        digest = hashlib.sha256(canonical.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _pem(key: RSAPrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_or_create_key(state: Path, *, new: bool = False) -> SigningKey:
    """The issuer's key in ``state`` (0700; the key 0600), created on first start or with ``new``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        state = ensure_private_dir(state)
    except (SiteSecretsError, OSError) as exc:
        raise DevIssuerError(f"--state {state}: {exc}") from exc
    path = state / KEY_FILE
    if path.exists() and not new:
        try:
            pem = read_private(path, "signing key")
        except SiteSecretsError as exc:
            raise DevIssuerError(exc.message, hint=exc.hint) from exc
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DevIssuerError(f"{path}: not an RSA private key")
        return SigningKey(key, path)
    if path.exists():
        old = load_or_create_key(state)
        os.replace(path, state / f"retired-{old.kid}.pem")
        log.info("retired signing key %s (no longer published)", old.kid)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    write_private(path, _pem(key))
    return SigningKey(key, path)


# --- the issuer ----------------------------------------------------------------------


class TokenError(ApplianceError):
    """An RFC 6749 section 5.2 error response: answered over HTTP, never raised to a command
    line (it keeps the root's exit code, ``INTERNAL``, which would mean a bug)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class DevIssuer:
    """One lab realm's OIDC issuer: discovery, JWKS, client-credentials tokens."""

    def __init__(
        self,
        realm: Realm,
        key: SigningKey,
        *,
        base_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if realm.attributes.environment != "lab":
            raise DevIssuerError(f"realm {realm.realm!r} is not a lab realm; refusing to serve it")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise DevIssuerError(
                f"the issuer's base URL must be http(s)://HOST[:PORT], found {base_url!r}"
            )
        self.realm = realm
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.api_client = realm.api_client.clientId
        self._callers = {c.clientId: c for c in realm.callers}

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm.realm}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "x_appliance_note": BANNER,
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.public_jwk()]}

    # -- client authentication and tokens --

    def authenticate(self, client_id: str, secret: str) -> CallerClient:
        caller = self._callers.get(client_id)
        if caller is None:
            log.warning("refused: unknown client %r", client_id)
            raise TokenError(401, "invalid_client", INVALID_CLIENT)
        expected = caller.secret.get_secret_value() if caller.secret is not None else ""
        if not hmac.compare_digest(expected.encode(), secret.encode()):
            log.warning("refused: wrong secret for client %r", client_id)
            raise TokenError(401, "invalid_client", INVALID_CLIENT)
        if not caller.enabled:
            log.warning("refused: client %r is disabled", client_id)
            raise TokenError(401, "invalid_client", INVALID_CLIENT)
        return caller

    def claims(self, caller: CallerClient) -> dict[str, Any]:
        now = int(self.clock())
        roles = list(self.realm.roles_of(caller.clientId))
        audiences = {m.config.included_client_audience for m in caller.protocolMappers}
        if roles:
            audiences.add(self.api_client)  # Keycloak's audience resolution does the same
        aud: str | list[str] = sorted(audiences)
        if len(aud) == 1:
            aud = aud[0]  # Keycloak writes a single audience as a string
        username = f"service-account-{caller.clientId}"
        claims: dict[str, Any] = {
            "exp": now + self.realm.accessTokenLifespan,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": aud,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer}/users/{username}")),
            "typ": "Bearer",
            "azp": caller.clientId,
            "acr": "1",
            "realm_access": {"roles": [f"default-roles-{self.realm.realm}"]},
            "scope": "",
        }
        if roles:
            claims["resource_access"] = {self.api_client: {"roles": roles}}
        return claims

    def sign(self, claims: Mapping[str, Any], *, key: SigningKey | None = None) -> str:
        import jwt

        signer = key or self.key
        return jwt.encode(
            dict(claims),
            signer.private,
            algorithm="RS256",
            headers={"kid": signer.kid, "typ": "JWT"},
        )

    def issue(self, caller: CallerClient) -> dict[str, Any]:
        claims = self.claims(caller)
        roles = claims.get("resource_access", {}).get(self.api_client, {}).get("roles", [])
        log.info(
            "issued a token to %r (roles: %s), kid %s, valid %d s",
            caller.clientId, ", ".join(roles) or "none", self.key.kid,
            self.realm.accessTokenLifespan,
        )  # fmt: skip
        return {
            "access_token": self.sign(claims),
            "expires_in": self.realm.accessTokenLifespan,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": claims["scope"],
        }

    def token_request(self, headers: Mapping[str, str], body: bytes, query: str = "") -> Reply:
        """The token endpoint on plain data: headers (lower-case names), form body, query string."""
        try:
            return Reply(200, self._token(headers, body, query), dict(NO_STORE))
        except TokenError as exc:
            extra = dict(NO_STORE)
            if exc.status == 401 and headers.get("authorization", "").lower().startswith("basic "):
                extra["WWW-Authenticate"] = f'Basic realm="{self.realm.realm}"'
            return Reply(exc.status, exc.body(), extra)

    def _token(self, headers: Mapping[str, str], body: bytes, query: str) -> dict[str, Any]:
        if query:
            # RFC 6749 2.3.1: credentials never in the URL (they end up in logs).
            raise TokenError(400, "invalid_request", "parameters in the URL are not accepted")
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise TokenError(400, "invalid_request", "expected application/x-www-form-urlencoded")
        if len(body) > MAX_BODY:
            raise TokenError(400, "invalid_request", "request body too large")
        try:
            pairs = parse_qsl(
                body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body)
            )
        except (UnicodeDecodeError, ValueError):
            raise TokenError(400, "invalid_request", "malformed form body") from None
        names = [k for k, _ in pairs]
        if len(set(names)) != len(names):
            raise TokenError(400, "invalid_request", "a parameter is given more than once")
        form = dict(pairs)
        client_id, secret = self._client_credentials(headers.get("authorization", ""), form)
        grant = form.get("grant_type")
        if not grant:
            raise TokenError(400, "invalid_request", "missing grant_type")
        caller = self.authenticate(client_id, secret)
        if grant != "client_credentials":
            raise TokenError(400, "unsupported_grant_type", f"unsupported grant_type {grant!r}")
        return self.issue(caller)

    @staticmethod
    def _client_credentials(authorization: str, form: dict[str, str]) -> tuple[str, str]:
        in_body = "client_secret" in form
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise TokenError(401, "invalid_client", "client authentication must be Basic")
            if in_body:
                raise TokenError(400, "invalid_request", "use one client authentication method")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise TokenError(401, "invalid_client", INVALID_CLIENT) from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise TokenError(401, "invalid_client", INVALID_CLIENT)
            # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
            client_id, secret = unquote_plus(user), unquote_plus(password)
            if "client_id" in form and form["client_id"] != client_id:
                raise TokenError(
                    400, "invalid_request", "client_id differs from the Basic credentials"
                )
            return client_id, secret
        if in_body and "client_id" in form:
            return form["client_id"], form["client_secret"]
        raise TokenError(401, "invalid_client", "client authentication required")

    # -- HTTP --

    def app(self) -> Starlette:
        """The ASGI application (Starlette, imported here)."""
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        realm_name = self.realm.realm

        def wrong_realm(request: Request) -> Response | None:
            if request.path_params["realm"] != realm_name:
                return JSONResponse({"error": "Realm does not exist"}, status_code=404)
            return None

        async def discovery(request: Request) -> Response:
            return wrong_realm(request) or JSONResponse(self.discovery())

        async def certs(request: Request) -> Response:
            return wrong_realm(request) or JSONResponse(self.jwks())

        async def token(request: Request) -> Response:
            refused = wrong_realm(request)
            if refused is not None:
                return refused
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    break
            headers = {k.lower(): v for k, v in request.headers.items()}
            reply = self.token_request(headers, bytes(body), request.url.query)
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

        async def ready(request: Request) -> Response:
            return JSONResponse({"status": "UP", "issuer": self.issuer, "note": BANNER})

        return Starlette(
            routes=[
                Route("/realms/{realm}/.well-known/openid-configuration", discovery),
                Route("/realms/{realm}/protocol/openid-connect/certs", certs),
                Route("/realms/{realm}/protocol/openid-connect/token", token, methods=["POST"]),
                Route("/health/ready", ready),
            ],
            middleware=[Middleware(_StampHeader)],
        )

    def server(
        self,
        host: str,
        port: int,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> Any:
        """A ``uvicorn.Server`` for this issuer (uvicorn imported here: it loads click)."""
        import uvicorn

        config = uvicorn.Config(
            self.app(),
            host=host,
            port=port,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            log_config=None,  # the caller's logging; uvicorn's access log is off anyway
            access_log=False,
            server_header=False,
            proxy_headers=False,
            lifespan="off",
        )
        return uvicorn.Server(config)


class _StampHeader:
    """ASGI middleware: every response says what answered it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (HEADER_NAME.lower().encode(), HEADER_VALUE.encode()),
                ]
            await send(message)

        await self.app(scope, receive, send_stamped)


@dataclass(frozen=True, slots=True)
class RunningIssuer:
    issuer: DevIssuer
    host: str
    port: int


@contextlib.contextmanager
def serve_in_thread(
    issuer: DevIssuer,
    host: str = "127.0.0.1",
    *,
    sock: socket.socket | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Iterator[RunningIssuer]:
    """Serve ``issuer`` from a background thread until the block ends (tests, lab tooling).

    The caller binds ``sock`` (its port is then known before the issuer's base
    URL is fixed); the lab-address rule holds here too.
    """
    import socket as socket_module

    check_lab_address(host)
    if sock is None:
        sock = socket_module.socket(
            socket_module.AF_INET6 if ":" in host else socket_module.AF_INET
        )
        sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = issuer.server(host, port, tls_cert=tls_cert, tls_key=tls_key)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DevIssuerError(f"the {BANNER} did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield RunningIssuer(issuer, host, port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- command line (argparse, imported only when it runs: dev_site imports this module) ------

USAGE = (
    "usage: python -m appliance.lab.dev_issuer --realm FILE --listen ADDR:PORT --state DIR\n"
    "           [--hostname URL] [--tls-cert FILE --tls-key FILE] [--new-key]\n"
    f"The {BANNER}: serves a lab realm import (0600) generated by appliance.keycloak.\n"
)
_VALUED = ("--realm", "--listen", "--state", "--hostname", "--tls-cert", "--tls-key")


def build_parser() -> argparse.ArgumentParser:
    """The issuer's options; errors are raised (``exit_on_error=False``), never printed."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m appliance.lab.dev_issuer",
        add_help=False,  # --help prints USAGE (main)
        allow_abbrev=False,
        exit_on_error=False,
    )
    parser.add_argument("-h", "--help", action="store_true")
    for name in _VALUED:
        parser.add_argument(name, action="append", default=[])
    parser.add_argument("--new-key", action="store_true")
    return parser


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """Options by name (``--realm``: value, ``--new-key``: bool); ``--help`` alone when asked."""
    import argparse

    try:
        args, unknown = build_parser().parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        if exc.message == "expected one argument":
            raise DevIssuerError(f"{exc.argument_name} needs a value\n{USAGE}") from None
        raise DevIssuerError(f"{exc}\n{USAGE}") from None
    if args.help:
        return {"--help": True}
    if unknown:
        raise DevIssuerError(f"unknown argument {unknown[0]!r}\n{USAGE}")
    options: dict[str, Any] = {"--new-key": args.new_key}
    for name in _VALUED:
        values = getattr(args, name[2:].replace("-", "_"))
        if len(values) > 1:
            raise DevIssuerError(f"{name} given twice")
        if values:
            options[name] = values[0]
    missing = [n for n in ("--realm", "--listen", "--state") if n not in options]
    if missing:
        raise DevIssuerError(f"missing {', '.join(missing)}\n{USAGE}")
    if ("--tls-cert" in options) != ("--tls-key" in options):
        raise DevIssuerError("--tls-cert and --tls-key go together")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    from appliance.exitcodes import ExitCode

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parse_args(args)
        if options.get("--help"):
            sys.stdout.write(USAGE)
            return ExitCode.OK
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s dev-issuer %(levelname)s %(message)s",
        )
        host, port = parse_listen(options["--listen"])
        check_lab_address(host)
        realm = load_lab_realm(Path(options["--realm"]))
        key = load_or_create_key(Path(options["--state"]), new=options["--new-key"])
        tls = "--tls-cert" in options
        shown = f"[{host}]" if ":" in host else host
        base = options.get("--hostname") or f"{'https' if tls else 'http'}://{shown}:{port}"
        issuer = DevIssuer(realm, key, base_url=base)
    except LabInputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    sys.stderr.write(
        f"*** {BANNER} ***\n"
        f"realm {realm.realm} ({len(realm.callers)} caller clients), issuer {issuer.issuer}\n"
        f"listening on {shown}:{port} ({'TLS' if tls else 'plain HTTP'}); "
        f"signing key {key.kid} in {key.path} (0600)\n"
    )
    server = issuer.server(
        host,
        port,
        tls_cert=Path(options["--tls-cert"]) if tls else None,
        tls_key=Path(options["--tls-key"]) if tls else None,
    )
    # uvicorn shuts down on SIGTERM/SIGINT, then re-raises the signal: let SIGTERM end the
    # process with 0 (stopped as asked) instead of being killed by it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(ExitCode.OK))
    try:
        server.run()
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
