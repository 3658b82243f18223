"""No token, key or secret ever reaches the audit log, the logs, or an error message.

Every kind of call (accepted, streamed, refused for each reason, with the
model server's key configured) is made with logging at DEBUG for every
logger; then the audit file, the captured log and every response body are
searched for the secrets and for each part of each token.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.unit.gateway.conftest import (
    AUDIENCE,
    FakeClock,
    FakeUpstream,
    SigningKey,
    Site,
    hand_made_token,
    hmac_sha256,
    open_gateway,
)

pytestmark = pytest.mark.anyio

UPSTREAM_KEY = "sk-upstream-9d1e7c0b5a"


async def test_no_secret_anywhere(
    site: Site,
    upstream: FakeUpstream,
    clock: FakeClock,
    realm_key: SigningKey,
    stranger_key: SigningKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "upstream.key").write_text(UPSTREAM_KEY)
    config = site.config(
        upstream={"url": "http://upstream.test", "api_key_file": str(tmp_path / "upstream.key")},
        rate_limits={"default": {"requests_per_s": 1, "burst": 6}},
    )
    gateway = await open_gateway(config, upstream, clock)
    now = int(clock.time())
    tokens = [
        site.token(),  # accepted
        site.token(exp=now - 3600, iat=now - 4000),
        site.token(aud="account"),
        site.token(iss="https://other/realms/x"),
        site.token(stranger_key),
        hand_made_token(
            {"alg": "HS256", "kid": realm_key.kid},
            site.claims(),
            hmac_sha256(realm_key.public_pem()),
        ),
        site.token(resource_access={AUDIENCE: {"roles": ["padding"] * 900}}),  # too large
    ]
    header, payload, signature = tokens[0].split(".")
    tokens.append(f"{header}.{payload[:-4]}AAAA.{signature}")  # tampered
    bodies: list[str] = []
    try:
        for token in tokens:
            r = await gateway.chat(token)
            bodies.append(r.text + str(r.headers))
        r = await gateway.chat(tokens[0], model="mistral")  # 403
        bodies.append(r.text + str(r.headers))
        r = await gateway.chat(tokens[0], stream=True)  # streamed
        bodies.append(r.text + str(r.headers))
        for _ in range(8):  # into the rate limit
            r = await gateway.chat(tokens[0])
        assert r.status_code == 429
        bodies.append(r.text + str(r.headers))
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()

    audit = site.audit_file.read_text()
    log = caplog.text
    reasons = {rec["reason"] for rec in site.audit_records()}
    assert {"expired", "wrong_audience", "wrong_issuer", "unknown_key", "algorithm_not_allowed",
            "token_too_large", "bad_signature", "model_not_allowed", "rate_limited"} <= reasons  # fmt: skip
    assert upstream.received[0]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    secrets = [UPSTREAM_KEY, "PRIVATE KEY"]
    for token in tokens:
        secrets += [token, *token.split(".")[1:]]  # header parts are public, the rest is not
    for secret in secrets:
        assert secret not in audit, f"in the audit log: {secret[:16]}..."
        assert secret not in log, f"in the log: {secret[:16]}..."
        for body in bodies:
            assert secret not in body, f"in a response: {secret[:16]}..."
