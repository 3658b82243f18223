"""The validator alone: leeway boundaries, other algorithms and claim layouts, typed reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.gateway.jwks import FileJwksSource, KeyStore
from appliance.gateway.reasons import Reason, RefusedError
from appliance.gateway.tokens import Caller, TokenValidator
from tests.unit.gateway.conftest import AUDIENCE, CLIENT, SUBJECT, FakeClock, SigningKey, Site

pytestmark = pytest.mark.anyio


def validator(site: Site, **tokens: object) -> TokenValidator:
    config = site.config(tokens=tokens) if tokens else site.config()
    t = config.tokens
    keys = KeyStore(
        FileJwksSource(Path(str(t.jwks_file))), t.algorithms, site.clock,
        refresh_interval_s=t.jwks_refresh_interval_s, max_age_s=t.jwks_max_age_s,
    )  # fmt: skip
    return TokenValidator(t, keys, site.clock)


async def reason(v: TokenValidator, token: str) -> Reason:
    with pytest.raises(RefusedError) as caught:
        await v.caller(f"Bearer {token}")
    return caught.value.reason


async def test_a_keycloak_token_gives_the_caller(site: Site) -> None:
    caller = await validator(site).caller(f"Bearer {site.token()}")
    assert caller == Caller(SUBJECT, CLIENT, frozenset({"model:gemma", "adapter:legal-lora"}))
    assert await validator(site).caller(f"bearer {site.token()}") == caller  # scheme: any case


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-29, True), (-31, False)],  # exp relative to now, leeway 30 s
)
async def test_expiry_leeway(site: Site, clock: FakeClock, offset: int, accepted: bool) -> None:
    now = int(clock.time())
    token = site.token(iat=now - 300, exp=now + offset)
    v = validator(site)
    if accepted:
        await v.caller(f"Bearer {token}")
    else:
        assert await reason(v, token) is Reason.EXPIRED


@pytest.mark.parametrize(("offset", "accepted"), [(29, True), (31, False)])
async def test_not_before_leeway(site: Site, clock: FakeClock, offset: int, accepted: bool) -> None:
    now = int(clock.time())
    token = site.token(nbf=now + offset, iat=now, exp=now + 300)
    v = validator(site)
    if accepted:
        await v.caller(f"Bearer {token}")
    else:
        assert await reason(v, token) is Reason.NOT_YET_VALID


async def test_zero_leeway(site: Site, clock: FakeClock) -> None:
    now = int(clock.time())
    token = site.token(iat=now - 300, exp=now - 1)
    assert await reason(validator(site, leeway_s=0), token) is Reason.EXPIRED


async def test_es256_when_pinned(site: Site, ec_key: SigningKey, realm_key: SigningKey) -> None:
    site.publish(realm_key, ec_key)
    v = validator(site, algorithms=["RS256", "ES256"])
    assert (await v.caller(f"Bearer {site.token(ec_key)}")).client_id == CLIENT
    # ...and refused when only RS256 is pinned, although the key is published
    assert await reason(validator(site), site.token(ec_key)) is Reason.ALGORITHM_NOT_ALLOWED


async def test_realm_roles_when_configured(site: Site) -> None:
    v = validator(site, roles_claim=["realm_access", "roles"])
    token = site.token(realm_access={"roles": ["model:mistral", 7]})
    assert (await v.caller(f"Bearer {token}")).roles == {"model:mistral"}


async def test_odd_claim_shapes(site: Site) -> None:
    v = validator(site)
    assert await reason(v, site.token(aud=[])) is Reason.WRONG_AUDIENCE
    assert await reason(v, site.token(aud={"x": AUDIENCE})) is Reason.WRONG_AUDIENCE
    assert await reason(v, site.token(exp="tomorrow")) is Reason.MALFORMED_TOKEN
    assert await reason(v, site.token(exp=True)) is Reason.MALFORMED_TOKEN
    # roles of the wrong type grant nothing, and do not fail the token
    caller = await v.caller(
        f"Bearer {site.token(resource_access={AUDIENCE: {'roles': 'model:gemma'}})}"
    )
    assert caller.roles == frozenset()


async def test_no_keys_at_all(site: Site) -> None:
    site.jwks_file.unlink()
    with pytest.raises(RefusedError) as caught:
        await validator(site).caller(f"Bearer {site.token()}")
    assert caught.value.reason is Reason.KEYS_UNAVAILABLE
    assert caught.value.reason.status == 503


def test_every_reason_has_a_status_and_type() -> None:
    for r in Reason:
        assert r.status in (200, 400, 401, 403, 404, 405, 408, 413, 429, 499, 500, 502, 503, 504)
        assert r.error_type


async def test_a_remembered_token_is_still_judged_on_every_call(
    site: Site, clock: FakeClock
) -> None:
    """The signature is verified once; expiry is checked on every call."""
    v = validator(site)
    token = site.token()
    await v.caller(f"Bearer {token}")
    fetches = v.keys.fetches
    await v.caller(f"Bearer {token}")
    assert v.keys.fetches == fetches
    clock.advance(300 + 30)
    assert await reason(v, token) is Reason.EXPIRED


async def test_remembered_tokens_are_verified_again_after_a_key_refresh(
    site: Site, clock: FakeClock, realm_key: SigningKey
) -> None:
    v = validator(site)
    token = site.token(exp=int(clock.time()) + 3600)
    await v.caller(f"Bearer {token}")
    site.jwks_file.write_text('{"keys": []}')  # unusable: the refresh fails, the keys stay
    clock.advance(301)
    await v.caller(f"Bearer {token}")
    # The realm publishes another key under the same key id: the token no longer verifies.
    site.publish(SigningKey(realm_key.kid, rsa.generate_private_key(65537, 2048), "RS256"))
    clock.advance(301)
    assert await reason(v, token) is Reason.BAD_SIGNATURE
