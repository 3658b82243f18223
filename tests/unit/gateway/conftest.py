"""Gateway test fixtures: real keys, a real JWKS file, real tokens, the real app, a fake upstream.

Nothing of the gateway is mocked. Keys are generated here (cryptography), the
realm's key set is a JWKS file the gateway reads, tokens are signed with PyJWT
(or by hand, for the attacks PyJWT refuses to produce), the upstream is
``FakeUpstream`` reached through ``httpx.ASGITransport``, and the gateway is
called through httpx against its ASGI app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from appliance.gateway.app import create_app
from appliance.gateway.config import GatewayConfig, parse_config
from tests.unit.gateway.fake_upstream import FakeUpstream

ISSUER = "https://sso.site.test/realms/appliance"
AUDIENCE = "appliance-api"
CLIENT = "team-a"
SUBJECT = "service-account-team-a"
ROLES = {
    "model:gemma": ["gemma"],
    "model:mistral": ["mistral"],
    "adapter:legal-lora": ["legal-lora"],
}
SERVED = {"models": ["gemma", "mistral"], "adapters": {"legal-lora": "gemma"}}
T0 = 1_760_000_000.0  # the fake wall clock's start


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Wall and monotonic time that move only when a test says so."""

    def __init__(self, wall: float = T0) -> None:
        self.wall = wall
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Any
    alg: str

    def jwk(self) -> dict[str, Any]:
        tool = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        entry: dict[str, Any] = tool.to_jwk(self.private.public_key(), as_dict=True)
        return {**entry, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="session")
def realm_key() -> SigningKey:
    return SigningKey("realm-key-1", rsa.generate_private_key(65537, 2048), "RS256")


@pytest.fixture(scope="session")
def next_key() -> SigningKey:
    return SigningKey("realm-key-2", rsa.generate_private_key(65537, 2048), "RS256")


@pytest.fixture(scope="session")
def stranger_key() -> SigningKey:
    """A key the realm never published."""
    return SigningKey("stranger", rsa.generate_private_key(65537, 2048), "RS256")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey("realm-ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A JWS built byte by byte (for the tokens PyJWT refuses to make)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def hmac_sha256(secret: bytes) -> Any:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


@dataclass
class Site:
    """One site's files: the realm's JWKS, the gateway config, the audit log; and token making."""

    root: Path
    clock: FakeClock
    keys: list[SigningKey]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def jwks_file(self) -> Path:
        return self.root / "jwks.json"

    @property
    def audit_file(self) -> Path:
        return self.root / "audit.jsonl"

    def publish(self, *keys: SigningKey, extra: list[dict[str, Any]] | None = None) -> None:
        """Write the realm's key set (replacing it: rotated-out keys disappear)."""
        entries = [k.jwk() for k in keys] + (extra or [])
        self.jwks_file.write_text(json.dumps({"keys": entries}))

    def config_dict(self, **sections: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": 1,
            "listen": {"host": "127.0.0.1", "port": 8443},
            "tls": {
                "cert_file": str(self.root / "tls.crt"),
                "key_file": str(self.root / "tls.key"),
            },
            "upstream": {"url": "http://upstream.test"},
            "tokens": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(self.jwks_file),
                "algorithms": ["RS256"],
            },
            "served": SERVED,
            "access": {"roles": ROLES},
            "rate_limits": {"default": {"requests_per_s": 100, "burst": 100}},
            "audit": {"path": str(self.audit_file)},
        }
        for name, value in {**self.overrides, **sections}.items():
            data[name] = {**data.get(name, {}), **value} if isinstance(value, dict) else value
        return data

    def config(self, **sections: Any) -> GatewayConfig:
        return parse_config(self.config_dict(**sections))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": [AUDIENCE, "account"],
            "sub": SUBJECT,
            "azp": CLIENT,
            "typ": "Bearer",
            "iat": now,
            "exp": now + 300,
            "resource_access": {AUDIENCE: {"roles": ["model:gemma", "adapter:legal-lora"]}},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, *, kid: str | None = None, **claims: Any) -> str:
        key = key or self.keys[0]
        return jwt.encode(
            self.claims(**claims), key.private, algorithm=key.alg, headers={"kid": kid or key.kid}
        )

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def site(tmp_path: Path, clock: FakeClock, realm_key: SigningKey) -> Site:
    s = Site(tmp_path, clock, [realm_key])
    s.publish(realm_key)
    return s


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


class Gateway:
    """The gateway app under test, its state, and an httpx client that calls it."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.state = app.state.gateway
        self.client = client

    async def chat(self, token: str | None, model: str = "gemma", **body: Any) -> httpx.Response:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        payload = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
        return await self.client.post("/v1/chat/completions", json=payload, headers=headers)


async def open_gateway(
    config: GatewayConfig,
    upstream: FakeUpstream,
    clock: FakeClock,
    *,
    sso_transport: Any = None,
    base_url: str = "https://gateway.test",
) -> Gateway:
    app = create_app(config, upstream_transport=httpx.ASGITransport(app=upstream.app), clock=clock,
                     sso_transport=sso_transport)  # fmt: skip
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.0.0.7", 50000)), base_url=base_url
    )
    return Gateway(app, client)


@pytest.fixture
async def gateway(site: Site, upstream: FakeUpstream, clock: FakeClock) -> AsyncIterator[Gateway]:
    gw = await open_gateway(site.config(), upstream, clock)
    try:
        yield gw
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


# --- real servers on loopback ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: Any, **settings: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", **settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
