"""The token attack suite (issue 6): each attack is refused with the right status and audited.

Every case goes through the real app with a real token: the response status,
the OpenAI-style error code, the RFC 6750 challenge on 401, nothing forwarded
to the model server, and one audit record naming the reason.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.unit.gateway.conftest import (
    AUDIENCE,
    CLIENT,
    SUBJECT,
    FakeClock,
    FakeUpstream,
    Gateway,
    SigningKey,
    Site,
    hand_made_token,
    hmac_sha256,
    open_gateway,
)

pytestmark = pytest.mark.anyio


async def assert_refused(
    gateway: Gateway,
    site: Site,
    upstream: FakeUpstream,
    response: Any,
    *,
    status: int,
    reason: str,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == reason
    assert error["message"]
    if status == 401:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="appliance"')
        if reason != "missing_token":
            assert 'error="invalid_token"' in challenge and "error_description=" in challenge
    assert upstream.received == [], "a refused call reached the model server"
    record = site.audit_records()[-1]
    assert record["status"] == status
    assert record["reason"] == reason
    assert record["detail"]
    assert record["route"] == "/v1/chat/completions"
    assert record["request_id"] == response.headers["x-request-id"]
    return record


async def test_alg_none(
    gateway: Gateway, site: Site, upstream: FakeUpstream, realm_key: SigningKey
) -> None:
    for alg in ("none", "None", "NONE"):
        token = hand_made_token({"alg": alg, "typ": "JWT", "kid": realm_key.kid}, site.claims())
        response = await gateway.chat(token)
        await assert_refused(
            gateway, site, upstream, response, status=401, reason="algorithm_not_allowed"
        )


async def test_alg_none_with_a_signature_attached(
    gateway: Gateway, site: Site, upstream: FakeUpstream, realm_key: SigningKey
) -> None:
    token = hand_made_token(
        {"alg": "none", "kid": realm_key.kid}, site.claims(), lambda _: b"x" * 32
    )
    response = await gateway.chat(token)
    await assert_refused(
        gateway, site, upstream, response, status=401, reason="algorithm_not_allowed"
    )


async def test_hs256_signed_with_the_public_key(
    gateway: Gateway, site: Site, upstream: FakeUpstream, realm_key: SigningKey
) -> None:
    """The classic confusion: the realm's public key (PEM, and the JWK's JSON) as an HMAC secret."""
    secrets = [realm_key.public_pem(), json.dumps(realm_key.jwk()).encode()]
    for secret in secrets:
        token = hand_made_token(
            {"alg": "HS256", "typ": "JWT", "kid": realm_key.kid}, site.claims(), hmac_sha256(secret)
        )
        response = await gateway.chat(token)
        await assert_refused(
            gateway, site, upstream, response, status=401, reason="algorithm_not_allowed"
        )


async def test_expired(
    gateway: Gateway, site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    now = int(clock.time())
    response = await gateway.chat(site.token(iat=now - 3900, exp=now - 3600))
    record = await assert_refused(gateway, site, upstream, response, status=401, reason="expired")
    assert "expired 3600 s ago" in record["detail"]


async def test_not_yet_valid(
    gateway: Gateway, site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    now = int(clock.time())
    response = await gateway.chat(site.token(nbf=now + 600, exp=now + 900))
    await assert_refused(gateway, site, upstream, response, status=401, reason="not_yet_valid")


async def test_issued_in_the_future(
    gateway: Gateway, site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    now = int(clock.time())
    response = await gateway.chat(site.token(iat=now + 600, exp=now + 900))
    await assert_refused(gateway, site, upstream, response, status=401, reason="issued_in_future")


async def test_wrong_issuer(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    response = await gateway.chat(site.token(iss="https://evil.test/realms/appliance"))
    record = await assert_refused(
        gateway, site, upstream, response, status=401, reason="wrong_issuer"
    )
    assert "evil.test" in record["detail"]


async def test_wrong_audience(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    # Without Keycloak's audience mapper the token is for "account" only.
    response = await gateway.chat(site.token(aud="account"))
    await assert_refused(gateway, site, upstream, response, status=401, reason="wrong_audience")


async def test_unknown_key_id_after_one_refresh(
    gateway: Gateway, site: Site, upstream: FakeUpstream, clock: FakeClock, stranger_key: SigningKey
) -> None:
    await gateway.chat(site.token())  # keys loaded
    upstream.received.clear()
    clock.advance(gateway.state.config.tokens.jwks_refresh_interval_s)
    before = gateway.state.keys.fetches
    response = await gateway.chat(site.token(stranger_key))
    await assert_refused(gateway, site, upstream, response, status=401, reason="unknown_key")
    assert gateway.state.keys.fetches == before + 1, "an unknown kid must cause exactly one refresh"
    # A flood of invented key ids within the refresh interval fetches nothing more.
    for i in range(20):
        response = await gateway.chat(site.token(stranger_key, kid=f"invented-{i}"))
        assert response.status_code == 401
    assert gateway.state.keys.fetches == before + 1


async def test_unknown_key_id_that_the_refresh_finds_is_accepted(
    gateway: Gateway, site: Site, clock: FakeClock, realm_key: SigningKey, next_key: SigningKey
) -> None:
    """The realm publishes a new key: the first token signed with it triggers the refresh."""
    assert (await gateway.chat(site.token())).status_code == 200
    site.publish(realm_key, next_key)
    clock.advance(gateway.state.config.tokens.jwks_refresh_interval_s)
    assert (await gateway.chat(site.token(next_key))).status_code == 200


async def test_tampered_payload(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    header, _, signature = site.token().split(".")
    elevated = site.claims(resource_access={AUDIENCE: {"roles": ["model:mistral"]}})
    payload = base64.urlsafe_b64encode(json.dumps(elevated).encode()).rstrip(b"=").decode()
    response = await gateway.chat(f"{header}.{payload}.{signature}", model="mistral")
    await assert_refused(gateway, site, upstream, response, status=401, reason="bad_signature")


async def test_tampered_signature(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    header, payload, signature = site.token().split(".")
    flipped = ("A" if signature[10] != "A" else "B").join([signature[:10], signature[11:]])
    response = await gateway.chat(f"{header}.{payload}.{flipped}")
    await assert_refused(gateway, site, upstream, response, status=401, reason="bad_signature")


async def test_role_missing_for_the_model(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    response = await gateway.chat(site.token(), model="mistral")  # the token grants gemma only
    assert response.headers["www-authenticate"].endswith('error="insufficient_scope"')
    record = await assert_refused(
        gateway, site, upstream, response, status=403, reason="model_not_allowed"
    )
    assert (record["subject"], record["client_id"], record["model"]) == (SUBJECT, CLIENT, "mistral")


async def test_model_no_role_grants(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    """A model the upstream serves but the config grants to nobody: refused like any other."""
    response = await gateway.chat(site.token(), model="secret-model")
    await assert_refused(gateway, site, upstream, response, status=403, reason="model_not_allowed")


async def test_roles_from_the_wrong_client_do_not_count(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    """Keycloak client roles of another client (or realm roles) with the same name grant nothing."""
    token = site.token(
        resource_access={"other-client": {"roles": ["model:gemma"]}},
        realm_access={"roles": ["model:gemma"]},
    )
    response = await gateway.chat(token)
    await assert_refused(gateway, site, upstream, response, status=403, reason="model_not_allowed")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic dXNlcjpwYXNz", "malformed_header"),
        ("Bearer", "malformed_header"),
        ("Bearer ", "malformed_header"),
        ("Bearer two parts", "malformed_header"),
        ("Token abc.def.ghi", "malformed_header"),
        ("Bearer not-a-jwt", "malformed_token"),
        ("Bearer a.b", "malformed_token"),
        ("Bearer a.b.c.d", "malformed_token"),
        ("Bearer e30.e30.e30", "malformed_token"),  # {} header: no alg
        ("Bearer !!!.@@@.###", "malformed_token"),
        ("Bearer bm90IGpzb24.e30.c2ln", "malformed_token"),  # header is not JSON
    ],
)
async def test_malformed_authorization(
    gateway: Gateway, site: Site, upstream: FakeUpstream, header: str | None, reason: str
) -> None:
    headers = {} if header is None else {"authorization": header}
    response = await gateway.client.post(
        "/v1/chat/completions", json={"model": "gemma", "messages": []}, headers=headers
    )
    if reason == "malformed_token" and header == "Bearer e30.e30.e30":
        reason = "algorithm_not_allowed"  # parses, but names no algorithm
    await assert_refused(gateway, site, upstream, response, status=401, reason=reason)


async def test_two_authorization_headers(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    token = site.token()
    response = await gateway.client.post(
        "/v1/chat/completions",
        json={"model": "gemma", "messages": []},
        headers=[("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")],
    )
    await assert_refused(gateway, site, upstream, response, status=401, reason="malformed_header")


async def test_oversized_token(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    """A validly signed token over the size limit is refused before it is parsed."""
    padding = [f"padding-role-{i:05d}" for i in range(600)]
    token = site.token(resource_access={AUDIENCE: {"roles": ["model:gemma", *padding]}})
    assert len(token) > gateway.state.config.tokens.max_token_bytes
    response = await gateway.chat(token)
    await assert_refused(gateway, site, upstream, response, status=401, reason="token_too_large")


async def test_token_signed_by_a_rotated_out_key(
    site: Site,
    upstream: FakeUpstream,
    clock: FakeClock,
    realm_key: SigningKey,
    next_key: SigningKey,
) -> None:
    """Accepted while the realm publishes the key; refused once the realm has rotated it out."""
    site.publish(realm_key, next_key)
    gateway = await open_gateway(site.config(), upstream, clock)
    try:
        old = site.token(realm_key)
        assert (await gateway.chat(old)).status_code == 200
        upstream.received.clear()
        site.publish(next_key)  # the realm drops the old key
        clock.advance(gateway.state.config.tokens.jwks_max_age_s + 1)
        old = site.token(realm_key)  # still within its own validity
        response = await gateway.chat(old)
        await assert_refused(gateway, site, upstream, response, status=401, reason="unknown_key")
        assert (await gateway.chat(site.token(next_key))).status_code == 200
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()


async def test_key_of_another_type_for_the_same_kid(
    gateway: Gateway, site: Site, upstream: FakeUpstream, ec_key: SigningKey, realm_key: SigningKey
) -> None:
    """An ES256 token claiming the realm's RSA key id: ES256 is not pinned, refused by name."""
    token = site.token(SigningKey(realm_key.kid, ec_key.private, "ES256"))
    response = await gateway.chat(token)
    await assert_refused(
        gateway, site, upstream, response, status=401, reason="algorithm_not_allowed"
    )


async def test_missing_subject_and_client(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    for claims in ({"sub": None}, {"azp": None}, {"iat": None}, {"exp": None}):
        response = await gateway.chat(site.token(**claims))
        await assert_refused(gateway, site, upstream, response, status=401, reason="missing_claim")


async def test_lifetime_too_long(
    gateway: Gateway, site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    now = int(clock.time())
    response = await gateway.chat(site.token(exp=now + 400 * 86_400))
    await assert_refused(gateway, site, upstream, response, status=401, reason="lifetime_too_long")


async def test_every_attack_left_a_verifiable_audit_chain(
    gateway: Gateway, site: Site, realm_key: SigningKey
) -> None:
    from appliance.audit import verify_chain

    await gateway.chat(hand_made_token({"alg": "none", "kid": realm_key.kid}, site.claims()))
    await gateway.chat(site.token(aud="account"))
    await gateway.chat(site.token())
    report = verify_chain(site.audit_file.read_text())
    assert report.ok and report.records == 3
