"""Authorised calls: proxied unchanged, streams in order, models filtered, limits, health, audit."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from appliance.gateway.app import create_app
from tests.unit.gateway.conftest import (
    AUDIENCE,
    CLIENT,
    SUBJECT,
    FakeClock,
    FakeUpstream,
    Gateway,
    Site,
    open_gateway,
)
from tests.unit.gateway.fake_upstream import ANSWER, PROMPT_TOKENS

pytestmark = pytest.mark.anyio


async def test_valid_token_is_proxied(gateway: Gateway, site: Site, upstream: FakeUpstream) -> None:
    body = b'{"model": "gemma", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
    response = await gateway.client.post(
        "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {site.token()}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "".join(ANSWER)
    (seen,) = upstream.received
    assert seen["body"] == body, "the body reaches the model server byte for byte"
    assert "authorization" not in seen["headers"], "the caller's token must not be forwarded"
    record = site.audit_records()[-1]
    assert record == {
        **record,
        "event": "gateway.call",
        "method": "POST",
        "route": "/v1/chat/completions",
        "peer": "10.0.0.7",
        "subject": SUBJECT,
        "client_id": CLIENT,
        "model": "gemma",
        "stream": False,
        "status": 200,
        "reason": None,
        "tokens_in": PROMPT_TOKENS,
        "tokens_out": len(ANSWER),
        "usage_source": "upstream",
    }
    assert record["latency_ms"] >= 0 and "prompt" not in record


async def test_completions_route_and_adapter(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    response = await gateway.client.post(
        "/v1/completions",
        json={"model": "legal-lora", "prompt": "Article 1"},
        headers={"authorization": f"Bearer {site.token()}"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "".join(ANSWER)
    assert upstream.received[-1]["path"] == "/v1/completions"


async def test_models_are_filtered_per_role(gateway: Gateway, site: Site) -> None:
    async def listed(roles: list[str]) -> list[str]:
        token = site.token(resource_access={AUDIENCE: {"roles": roles}})
        response = await gateway.client.get(
            "/v1/models", headers={"authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200
        return [m["id"] for m in response.json()["data"]]

    assert await listed(["model:gemma", "adapter:legal-lora"]) == ["gemma", "legal-lora"]
    assert await listed(["model:mistral"]) == ["mistral"]
    assert await listed(["model:unknown", "offline_access"]) == []
    # secret-model is served upstream but granted by no role: nobody sees it
    assert await listed(list(("model:gemma", "model:mistral", "adapter:legal-lora"))) == [
        "gemma", "mistral", "legal-lora",
    ]  # fmt: skip
    assert site.audit_records()[-1]["route"] == "/v1/models"


async def test_models_needs_a_token(gateway: Gateway, site: Site) -> None:
    response = await gateway.client.get("/v1/models")
    assert response.status_code == 401
    assert site.audit_records()[-1]["reason"] == "missing_token"


@pytest.mark.parametrize("usage", [True, False])
async def test_stream_is_passed_through_in_order(gateway: Gateway, site: Site, usage: bool) -> None:
    body = {"stream": True, **({"stream_options": {"include_usage": True}} if usage else {})}
    async with gateway.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gemma", "messages": [{"role": "user", "content": "hi"}], **body},
        headers={"authorization": f"Bearer {site.token()}"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = (await response.aread()).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [
        json.loads(e)["choices"][0]["delta"]["content"]
        for e in events[:-1]
        if json.loads(e)["choices"]
    ]
    assert pieces == list(ANSWER)
    record = site.audit_records()[-1]
    assert record["stream"] is True and record["status"] == 200 and record["reason"] is None
    if usage:
        assert (record["tokens_in"], record["tokens_out"], record["usage_source"]) == (
            PROMPT_TOKENS, len(ANSWER), "upstream",
        )  # fmt: skip
    else:
        assert (record["tokens_in"], record["tokens_out"], record["usage_source"]) == (
            None, len(ANSWER), "chunks",
        )  # fmt: skip
    assert record["first_byte_ms"] >= 0


async def test_rate_limit_per_client(site: Site, upstream: FakeUpstream, clock: FakeClock) -> None:
    config = site.config(
        rate_limits={
            "default": {"requests_per_s": 1, "burst": 2},
            "clients": {"batch": {"requests_per_s": 100, "burst": 100}},
        }
    )
    gateway = await open_gateway(config, upstream, clock)
    try:
        token = site.token()
        assert (await gateway.chat(token)).status_code == 200
        assert (await gateway.chat(token)).status_code == 200
        refused = await gateway.chat(token)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "1"
        record = site.audit_records()[-1]
        assert (record["status"], record["reason"], record["client_id"]) == (
            429,
            "rate_limited",
            CLIENT,
        )
        # another client has its own bucket
        assert (await gateway.chat(site.token(azp="batch"))).status_code == 200
        clock.advance(1.0)
        assert (await gateway.chat(token)).status_code == 200
        assert len(upstream.received) == 4
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()


async def test_body_limits_and_shape(site: Site, upstream: FakeUpstream, clock: FakeClock) -> None:
    gateway = await open_gateway(site.config(limits={"max_body_bytes": 2048}), upstream, clock)
    auth = {"authorization": f"Bearer {site.token()}"}
    try:
        big = {"model": "gemma", "messages": [{"role": "user", "content": "x" * 4096}]}
        response = await gateway.client.post("/v1/chat/completions", json=big, headers=auth)
        assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")

        async def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b"x" * 1024

        response = await gateway.client.post("/v1/chat/completions", content=chunks(), headers=auth)
        assert response.status_code == 413
        for bad in (b"not json", b"[1, 2]", b'{"messages": []}', b'{"model": 3}'):
            response = await gateway.client.post("/v1/chat/completions", content=bad, headers=auth)
            assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_request")
        assert upstream.received == []
        assert [r["status"] for r in site.audit_records()] == [413, 413, 400, 400, 400, 400]
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()


async def test_upstream_errors_pass_through(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    upstream.models = ("mistral",)  # the model server lost gemma
    response = await gateway.chat(site.token())
    assert response.status_code == 404
    record = site.audit_records()[-1]
    assert (record["status"], record["reason"]) == (404, "upstream_error")


async def test_upstream_down(site: Site, clock: FakeClock) -> None:
    # Nothing listens on the discard port: a real connection refusal.
    app = create_app(site.config(upstream={"url": "http://127.0.0.1:9"}), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gw.test"
    ) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gemma", "messages": []},
            headers={"authorization": f"Bearer {site.token()}"},
        )
        assert (response.status_code, response.json()["error"]["code"]) == (
            502,
            "upstream_unavailable",
        )
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {
            "status": "unavailable",
            "upstream": "unreachable (ConnectError)",
            "signing_keys": "loaded",
        }
    await app.state.gateway.aclose()
    assert site.audit_records()[-1]["reason"] == "upstream_unavailable"


async def test_health_needs_no_token_and_is_not_audited(gateway: Gateway, site: Site) -> None:
    response = await gateway.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "upstream": "answers", "signing_keys": "loaded"}
    assert site.audit_records() == []


async def test_unknown_routes_are_refused_and_audited(gateway: Gateway, site: Site) -> None:
    response = await gateway.client.get("/admin")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    response = await gateway.client.get("/v1/chat/completions")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")
    response = await gateway.client.get("/v1/models/")  # no redirect: refused and audited
    assert response.status_code == 404
    await gateway.client.get("/x" * 1000)
    assert [(r["route"], r["status"]) for r in site.audit_records()] == [
        ("/admin", 404), ("/v1/chat/completions", 405), ("/v1/models/", 404),
        ("/x" * 126 + "/...", 404),  # cut at 256 bytes (audit.clip)
    ]  # fmt: skip


async def test_upstream_key_replaces_the_callers_token(
    site: Site, upstream: FakeUpstream, clock: FakeClock, tmp_path: Path
) -> None:
    key_file = tmp_path / "upstream.key"
    key_file.write_text("sk-upstream-0123456789\n")
    gateway = await open_gateway(
        site.config(upstream={"url": "http://upstream.test", "api_key_file": str(key_file)}),
        upstream,
        clock,
    )
    try:
        assert (await gateway.chat(site.token())).status_code == 200
        assert upstream.received[-1]["headers"]["authorization"] == "Bearer sk-upstream-0123456789"
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()


async def test_prompts_are_logged_only_when_configured(
    site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    gateway = await open_gateway(site.config(audit={"log_prompts": True}), upstream, clock)
    try:
        await gateway.chat(site.token())
        await gateway.client.post(
            "/v1/completions",
            json={"model": "gemma", "prompt": "Article 1"},
            headers={"authorization": f"Bearer {site.token()}"},
        )
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()
    records = site.audit_records()
    assert records[0]["prompt"] == [{"role": "user", "content": "hello"}]
    assert records[1]["prompt"] == "Article 1"


async def test_upstream_cookies_do_not_travel_between_callers(
    gateway: Gateway, site: Site, upstream: FakeUpstream
) -> None:
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def set_cookie(request: object) -> JSONResponse:
        response = JSONResponse({"object": "list", "data": []})
        response.set_cookie("session", "caller-a-secret")
        return response

    upstream.app.router.routes.insert(0, Route("/v1/models", set_cookie))
    await gateway.client.get("/v1/models", headers={"authorization": f"Bearer {site.token()}"})
    await gateway.chat(site.token(azp="team-b"))
    assert "cookie" not in upstream.received[-1]["headers"]


async def test_a_client_leaving_while_sending_its_body(gateway: Gateway, site: Site) -> None:
    """Raw ASGI: half a body, then the disconnect. Recorded, nothing raised, nothing forwarded."""
    token = site.token().encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "https", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("10.0.0.9", 4000), "server": ("gw", 443),
        "headers": [(b"authorization", b"Bearer " + token), (b"content-type", b"application/json")],
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": b'{"model": "gem', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await gateway.app(scope, receive, send)
    record = site.audit_records()[-1]
    assert (record["status"], record["reason"], record["client_id"]) == (
        499, "client_disconnected", CLIENT,
    )  # fmt: skip


class BreaksKeptAliveConnections(httpx.AsyncBaseTransport):
    """The model server's side of a keep-alive race: the first `breaks` sends fail unanswered."""

    def __init__(self, app: object, breaks: int) -> None:
        self.inner = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        self.breaks = breaks

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.breaks:
            self.breaks -= 1
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize(("breaks", "status"), [(1, 200), (2, 502)])
async def test_a_connection_closed_as_it_is_reused_is_retried_once(
    site: Site, upstream: FakeUpstream, clock: FakeClock, breaks: int, status: int
) -> None:
    app = create_app(
        site.config(),
        upstream_transport=BreaksKeptAliveConnections(upstream.app, breaks),
        clock=clock,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gw.test"
    ) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gemma", "messages": []},
            headers={"authorization": f"Bearer {site.token()}"},
        )
    await app.state.gateway.aclose()
    assert response.status_code == status
    assert len(upstream.received) == (1 if status == 200 else 0)


async def test_an_address_sending_refused_tokens_is_held_off_before_parsing(
    site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    config = site.config(rate_limits={"refused_per_address": {"requests_per_s": 1, "burst": 3}})
    gateway = await open_gateway(config, upstream, clock)
    try:
        bad = "Bearer not.a.token"
        for _ in range(3):
            refused = await gateway.chat(bad.removeprefix("Bearer "))
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                401,
                "malformed_token",
            )
        # The budget is spent: even a good token from this address waits, and is not parsed.
        held = await gateway.chat(site.token())
        assert (held.status_code, held.json()["error"]["code"]) == (429, "rate_limited")
        assert held.headers["retry-after"] == "1"
        record = site.audit_records()[-1]
        assert (record["status"], record["reason"], record["client_id"]) == (
            429,
            "rate_limited",
            None,
        )
        assert "refused credentials" in record["detail"]
        assert upstream.received == []
        clock.advance(1.0)  # one refusal earned back: heard again
        assert (await gateway.chat(site.token())).status_code == 200
        # A 403 (valid token, model not granted) is not a token problem: it spends nothing.
        for _ in range(5):
            assert (await gateway.chat(site.token(), model="not-granted")).status_code == 403
        assert (await gateway.chat(site.token())).status_code == 200
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()


def test_refusal_buckets_are_bounded() -> None:
    from appliance.gateway.config import RateLimit
    from appliance.gateway.ratelimit import MAX_ADDRESSES, RefusalLimiter

    clock = FakeClock()
    limiter = RefusalLimiter(RateLimit(requests_per_s=1, burst=1), clock)
    for i in range(MAX_ADDRESSES + 10):
        limiter.refused(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == MAX_ADDRESSES
    assert limiter.wait("10.0.0.0") is None  # the oldest was forgotten
    assert limiter.wait(f"10.0.{(MAX_ADDRESSES + 9) // 256}.{(MAX_ADDRESSES + 9) % 256}") == 1.0
