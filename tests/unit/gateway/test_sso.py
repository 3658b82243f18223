"""The relay to Keycloak (``gateway.sso``): the realm's three public endpoints, and nothing else.

Keycloak is ``FakeKeycloak``: an in-process stand-in (named so) that records
what reaches it and answers the way Keycloak does (discovery, certs,
client-credentials tokens with ``invalid_client`` on a wrong secret, a cookie
the gateway must not pass on).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.gateway.app import create_app
from appliance.gateway.sso import client_named
from tests.unit.gateway.conftest import FakeClock, FakeUpstream, Gateway, Site, open_gateway

pytestmark = pytest.mark.anyio
REALM = "/realms/appliance"
TOKEN = f"{REALM}/protocol/openid-connect/token"
SECRET = "s3cr3t-value-never-logged"


class FakeKeycloak:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

        async def answer(request: Request) -> Response:
            body = await request.body()
            self.received.append(
                {"path": request.url.path, "headers": dict(request.headers), "body": body}
            )
            if request.url.path.endswith("/token"):
                user, _, secret = (
                    base64.b64decode(request.headers.get("authorization", "Basic ")[6:])
                    .decode()
                    .partition(":")
                )
                if (user, secret) != ("team-a", SECRET):
                    return JSONResponse(
                        {"error": "invalid_client", "error_description": "Invalid client"}, 401
                    )
                return JSONResponse(
                    {"access_token": "eyJ.token.here", "token_type": "Bearer", "expires_in": 300},
                    headers={"set-cookie": "KC_RESTART=x", "cache-control": "no-store"},
                )
            host = request.headers["x-forwarded-host"]
            return JSONResponse({"issuer": f"https://{host}{REALM}", "path": request.url.path})

        self.app = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])


async def open_with_sso(
    site: Site, upstream: FakeUpstream, clock: FakeClock, keycloak: Any
) -> Gateway:
    config = site.config(sso={"url": "http://127.0.0.1:8180"},
                         rate_limits={"refused_per_address": {"requests_per_s": 1, "burst": 3}})  # fmt: skip
    return await open_gateway(config, upstream, clock, sso_transport=keycloak,
                              base_url="https://gw.site.example:8443")  # fmt: skip


@pytest.fixture
def keycloak() -> FakeKeycloak:
    return FakeKeycloak()


async def test_discovery_and_keys_are_relayed_as_the_gateways_urls(
    site: Site, upstream: FakeUpstream, clock: FakeClock, keycloak: FakeKeycloak
) -> None:
    gw = await open_with_sso(site, upstream, clock, httpx.ASGITransport(app=keycloak.app))
    try:
        found = await gw.client.get(f"{REALM}/.well-known/openid-configuration")
        assert found.status_code == 200
        assert found.json()["issuer"] == "https://gw.site.example:8443/realms/appliance"
        certs = await gw.client.get(f"{REALM}/protocol/openid-connect/certs")
        assert certs.status_code == 200
        sent = keycloak.received[0]["headers"]
        assert (sent["x-forwarded-for"], sent["x-forwarded-proto"], sent["x-forwarded-port"]) == (
            "10.0.0.7", "https", "8443",
        )  # fmt: skip
        records = site.audit_records()
        assert [(r["event"], r["route"], r["status"]) for r in records] == [
            ("gateway.sso", f"{REALM}/.well-known/openid-configuration", 200),
            ("gateway.sso", f"{REALM}/protocol/openid-connect/certs", 200),
        ]
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


async def test_a_token_request_is_relayed_and_its_secret_never_recorded(
    site: Site, upstream: FakeUpstream, clock: FakeClock, keycloak: FakeKeycloak
) -> None:
    gw = await open_with_sso(site, upstream, clock, httpx.ASGITransport(app=keycloak.app))
    try:
        got = await gw.client.post(TOKEN, data={"grant_type": "client_credentials"},
                                   auth=("team-a", SECRET))  # fmt: skip
        assert got.status_code == 200 and got.json()["access_token"] == "eyJ.token.here"
        assert "set-cookie" not in got.headers and got.headers["cache-control"] == "no-store"
        sent = keycloak.received[-1]
        assert sent["headers"]["authorization"].startswith("Basic ")
        assert sent["body"] == b"grant_type=client_credentials"
        # client_secret_post: the id from the form, the secret nowhere but in what Keycloak got
        await gw.client.post(TOKEN, data={"grant_type": "client_credentials", "client_id": "team-b",
                                          "client_secret": SECRET})  # fmt: skip
        records = site.audit_records()
        assert [(r["client_id"], r["status"]) for r in records] == [
            ("team-a", 200),
            ("team-b", 401),
        ]
        assert SECRET not in site.audit_file.read_text()
        assert all("access_token" not in json.dumps(r) for r in records)
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


async def test_guessing_client_secrets_spends_the_address_budget(
    site: Site, upstream: FakeUpstream, clock: FakeClock, keycloak: FakeKeycloak
) -> None:
    gw = await open_with_sso(site, upstream, clock, httpx.ASGITransport(app=keycloak.app))
    try:
        for guess in ("a", "b", "c"):
            refused = await gw.client.post(TOKEN, data={"grant_type": "client_credentials"},
                                           auth=("team-a", guess))  # fmt: skip
            assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        held = await gw.client.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=("team-a", SECRET)
        )
        assert held.status_code == 429 and held.headers["retry-after"] == "1"
        assert len(keycloak.received) == 3  # the fourth never reached Keycloak
        # The same budget guards bearer tokens: this address is held off there too.
        assert (await gw.chat(site.token())).status_code == 429
        clock.advance(1.0)
        assert (await gw.client.post(TOKEN, data={"grant_type": "client_credentials"},
                                     auth=("team-a", SECRET))).status_code == 200  # fmt: skip
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


async def test_only_the_three_endpoints_of_the_one_realm(
    site: Site, upstream: FakeUpstream, clock: FakeClock, keycloak: FakeKeycloak
) -> None:
    gw = await open_with_sso(site, upstream, clock, httpx.ASGITransport(app=keycloak.app))
    try:
        for method, path in (("GET", "/admin/master/console/"), ("GET", f"{REALM}/account"),
                             ("GET", "/realms/master/.well-known/openid-configuration"),
                             ("POST", "/realms/master/protocol/openid-connect/token"),
                             ("GET", f"{REALM}/protocol/openid-connect/auth"),
                             ("GET", TOKEN), ("POST", f"{REALM}/protocol/openid-connect/certs")):  # fmt: skip
            answer = await gw.client.request(method, path)
            assert answer.status_code in (404, 405), (method, path)
        assert keycloak.received == []
        big = await gw.client.post(TOKEN, content=b"x" * 20_000,
                                   headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert big.status_code == 413 and keycloak.received == []
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


async def test_keycloak_down_and_no_relay_without_sso(
    site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    gw = await open_with_sso(site, upstream, clock, httpx.MockTransport(refuse))
    try:
        down = await gw.client.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=("team-a", SECRET)
        )
        assert (down.status_code, down.json()["error"]["code"]) == (502, "upstream_unavailable")
        assert site.audit_records()[-1]["event"] == "gateway.sso"
    finally:
        await gw.client.aclose()
        await gw.state.aclose()
    plain = create_app(
        site.config(), upstream_transport=httpx.ASGITransport(app=upstream.app), clock=clock
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=plain), base_url="https://gw"
    ) as client:
        assert (
            await client.post(TOKEN, data={"grant_type": "client_credentials"})
        ).status_code == 404
    await plain.state.gateway.aclose()


def test_the_client_a_token_request_names() -> None:
    basic = {"authorization": "Basic " + base64.b64encode(b"team-a:pw").decode()}
    assert client_named(basic, b"") == "team-a"
    assert (
        client_named({}, b"grant_type=client_credentials&client_id=team-b&client_secret=x")
        == "team-b"
    )
    assert client_named({"authorization": "Basic !!!"}, b"") is None
    assert client_named({}, b"\xff") is None


def test_an_sso_url_with_credentials_is_refused_without_echoing_them(site: Site) -> None:
    from appliance.gateway.config import GatewayConfigError

    with pytest.raises(GatewayConfigError) as caught:
        site.config(sso={"url": "http://admin:hunter2@127.0.0.1:8180"})
    assert "must not carry credentials" in str(caught.value) and "hunter2" not in str(caught.value)
