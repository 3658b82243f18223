"""The key cache: what it loads from a JWKS, where from, and how often it refreshes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.gateway.jwks import (
    FileJwksSource,
    FirstAnswering,
    JwksError,
    KeyStore,
    UrlJwksSource,
    parse_jwks,
)
from tests.unit.gateway.conftest import FakeClock, SigningKey

pytestmark = pytest.mark.anyio

CERTS = "https://sso.site.test/realms/appliance/protocol/openid-connect/certs"


def keycloak_jwks(realm_key: SigningKey, enc_key: Any) -> dict[str, Any]:
    """The shape of Keycloak's certs endpoint: an RS256 signing key and an RSA-OAEP encryption key."""
    enc = RSAAlgorithm.to_jwk(enc_key.public_key(), as_dict=True)
    return {
        "keys": [
            realm_key.jwk(),
            {**enc, "kid": "enc-key", "alg": "RSA-OAEP", "use": "enc"},
        ]
    }


@pytest.fixture(scope="module")
def enc_key() -> Any:
    return rsa.generate_private_key(65537, 2048)


def test_keycloak_shape(realm_key: SigningKey, enc_key: Any) -> None:
    keys = parse_jwks(json.dumps(keycloak_jwks(realm_key, enc_key)).encode(), ["RS256"])
    assert set(keys) == {(realm_key.kid, "RS256")}


def test_unusable_keys_are_dropped(realm_key: SigningKey, ec_key: SigningKey) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    entries = [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},  # never a verifier
        {**RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak", "alg": "RS256"},
        {**realm_key.jwk(), "kid": "sig-for-rs512", "alg": "RS512"},  # algorithm not pinned
        {**realm_key.jwk(), "kid": ""},  # no kid
        {**realm_key.jwk(), "kid": "broken", "n": "!!"},
        "not an object",
        ec_key.jwk(),  # ES256 not pinned
        realm_key.jwk(),
    ]
    keys = parse_jwks(json.dumps({"keys": entries}).encode(), ["RS256"])
    assert set(keys) == {(realm_key.kid, "RS256")}


def test_a_key_without_alg_serves_each_pinned_algorithm_of_its_type(
    realm_key: SigningKey, ec_key: SigningKey
) -> None:
    bare = {k: v for k, v in realm_key.jwk().items() if k not in ("alg", "use")}
    ec_bare = {k: v for k, v in ec_key.jwk().items() if k != "alg"}
    keys = parse_jwks(json.dumps({"keys": [bare, ec_bare]}).encode(), ["RS256", "PS256", "ES256"])
    assert set(keys) == {
        (realm_key.kid, "RS256"),
        (realm_key.kid, "PS256"),
        (ec_key.kid, "ES256"),
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"keys": [], "keys": []}', "duplicate JSON key"),
        (b'{"keys": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper than 64"),
        (b'{"keys": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "nested deeper than 64"),
        (b'{"keys": [{"kty": NaN}]}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", 'no "keys" array'),
        (b'{"keys": {}}', 'no "keys" array'),
        (b'{"keys": []}', "holds no signature key for RS256"),
        (b'{"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]}', "holds no signature key"),
    ],
)
def test_unusable_key_sets(data: bytes, message: str) -> None:
    with pytest.raises(JwksError, match=message):
        parse_jwks(data, ["RS256"])


def certs_endpoint(document: dict[str, Any], calls: list[str], status: int = 200) -> Any:
    """A fake of the realm's certs endpoint, reached through httpx.ASGITransport."""

    async def certs(request: Request) -> Response:
        calls.append(request.url.path)
        return Response(json.dumps(document), status_code=status, media_type="application/json")

    app = Starlette(routes=[Route("/realms/appliance/protocol/openid-connect/certs", certs)])
    return httpx.ASGITransport(app=app)


async def test_url_source(realm_key: SigningKey, enc_key: Any) -> None:
    calls: list[str] = []
    source = UrlJwksSource(
        CERTS, transport=certs_endpoint(keycloak_jwks(realm_key, enc_key), calls)
    )
    assert set(parse_jwks(await source.fetch(), ["RS256"])) == {(realm_key.kid, "RS256")}
    assert calls == ["/realms/appliance/protocol/openid-connect/certs"]


async def test_url_source_failures(realm_key: SigningKey) -> None:
    down = UrlJwksSource(CERTS, transport=certs_endpoint({}, [], status=503))
    with pytest.raises(JwksError, match="answered HTTP 503"):
        await down.fetch()
    huge = {"keys": [realm_key.jwk()] * 4000}
    with pytest.raises(JwksError, match="more than 1048576 bytes"):
        await UrlJwksSource(CERTS, transport=certs_endpoint(huge, [])).fetch()
    refused = UrlJwksSource("http://127.0.0.1:9/certs")  # nothing listens: a real refusal
    with pytest.raises(JwksError, match=r"cannot fetch http://127\.0\.0\.1:9/certs: ConnectError"):
        await refused.fetch()


async def test_url_first_then_the_saved_file(tmp_path: Path, realm_key: SigningKey) -> None:
    saved = tmp_path / "jwks.json"
    saved.write_text(json.dumps({"keys": [realm_key.jwk()]}))
    source = FirstAnswering(
        [UrlJwksSource(CERTS, transport=certs_endpoint({}, [], status=500)), FileJwksSource(saved)]
    )
    assert set(parse_jwks(await source.fetch(), ["RS256"])) == {(realm_key.kid, "RS256")}
    saved.unlink()
    with pytest.raises(
        JwksError,
        match=r"answered HTTP 500; .*jwks\.json: cannot read JWKS file: it does not exist",
    ):
        await source.fetch()


def store(path: Path, clock: FakeClock, interval: float = 30, max_age: float = 300) -> KeyStore:
    return KeyStore(
        FileJwksSource(path), ["RS256"], clock, refresh_interval_s=interval, max_age_s=max_age
    )


async def test_refresh_is_throttled(
    tmp_path: Path, realm_key: SigningKey, next_key: SigningKey
) -> None:
    path, clock = tmp_path / "jwks.json", FakeClock()
    path.write_text(json.dumps({"keys": [realm_key.jwk()]}))
    keys = store(path, clock)
    assert await keys.key(realm_key.kid, "RS256") is not None
    assert keys.fetches == 1
    for i in range(50):  # a storm of unknown key ids
        assert await keys.key(f"nope-{i}", "RS256") is None
    assert keys.fetches == 1
    path.write_text(json.dumps({"keys": [realm_key.jwk(), next_key.jwk()]}))
    clock.advance(30)
    assert await keys.key(next_key.kid, "RS256") is not None  # one refresh finds it
    assert keys.fetches == 2


async def test_a_failed_refresh_keeps_the_keys(tmp_path: Path, realm_key: SigningKey) -> None:
    path, clock = tmp_path / "jwks.json", FakeClock()
    path.write_text(json.dumps({"keys": [realm_key.jwk()]}))
    keys = store(path, clock)
    assert await keys.refresh()
    path.write_text("garbage")
    clock.advance(301)  # stale: re-read, which fails
    assert await keys.key(realm_key.kid, "RS256") is not None
    assert keys.last_error is not None and "not valid JSON" in keys.last_error


async def test_stale_keys_are_replaced_whole(
    tmp_path: Path, realm_key: SigningKey, next_key: SigningKey
) -> None:
    path, clock = tmp_path / "jwks.json", FakeClock()
    path.write_text(json.dumps({"keys": [realm_key.jwk(), next_key.jwk()]}))
    keys = store(path, clock)
    assert await keys.refresh()
    path.write_text(json.dumps({"keys": [next_key.jwk()]}))
    clock.advance(301)
    assert await keys.key(realm_key.kid, "RS256") is None
    assert keys.key_ids == {next_key.kid}


async def test_missing_file_never_loads(tmp_path: Path) -> None:
    keys = store(tmp_path / "absent.json", FakeClock())
    assert await keys.key("any", "RS256") is None
    assert not keys.loaded and "cannot read JWKS file: it does not exist" in (keys.last_error or "")


async def test_url_source_with_a_missing_ca_file(tmp_path: Path) -> None:
    source = UrlJwksSource(CERTS, ca_file=tmp_path / "absent-ca.pem")
    with pytest.raises(
        JwksError, match=r"absent-ca\.pem: cannot read JWKS CA file: it does not exist"
    ):
        await source.fetch()
