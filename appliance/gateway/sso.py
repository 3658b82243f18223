"""The relay to Keycloak: callers reach the realm's public endpoints through the gateway only.

The network policy lets clients reach the gateway and nothing else; Keycloak
listens on the internal network, reachable from the gateway. So a caller's
discovery, key-set and token requests come here and are relayed, exactly
these three and only for the configured realm:

    GET  /realms/<realm>/.well-known/openid-configuration
    GET  /realms/<realm>/protocol/openid-connect/certs
    POST /realms/<realm>/protocol/openid-connect/token

Keycloak is told who asked and how through ``X-Forwarded-*`` headers (it
trusts them from the gateway's address only: ``--proxy-trusted-addresses``),
so the URLs and the ``iss`` it issues are the gateway's. Only the headers a
token request needs are passed on (``Authorization: Basic`` for
``client_secret_basic``, the content type); the body is passed as it is and
never read, logged or audited: it may hold a client secret. Each relayed call
gets an audit record (event ``gateway.sso``: the route, the calling client id
as the request names it, Keycloak's status); a token request Keycloak
refuses with 401 spends the caller address's refusal budget like a refused
bearer token, so client secrets cannot be guessed at the gateway's speed.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from appliance.gateway.config import Sso
from appliance.gateway.reasons import Reason, RefusedError

if TYPE_CHECKING:
    import httpx
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from appliance.gateway.calls import Call, Gateway

WELL_KNOWN = ".well-known/openid-configuration"
CERTS = "protocol/openid-connect/certs"
TOKEN = "protocol/openid-connect/token"
MAX_ANSWER_BYTES = 256 * 1024
# Keycloak's answer headers a caller may see; nothing else (no cookies, no server banner).
ANSWER_HEADERS = ("content-type", "cache-control", "pragma", "www-authenticate")


def make_sso_client(settings: Sso, transport: Any = None) -> httpx.AsyncClient:
    import httpx

    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.read_timeout_s,
    )
    return httpx.AsyncClient(
        base_url=settings.url,
        transport=transport or httpx.AsyncHTTPTransport(retries=0),
        timeout=timeout,
        follow_redirects=False,
    )


def client_named(headers: Any, body: bytes) -> str | None:
    """The client id a token request names (Basic user name, or ``client_id`` in the form)."""
    authorization = headers.get("authorization") or ""
    if authorization[:6].lower() == "basic ":
        try:
            user = base64.b64decode(authorization[6:], validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user[:128] or None
    try:
        form = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return None
    value = form.get("client_id")
    return value[:128] if value else None


def forwarded_headers(request: Request, call: Call) -> dict[str, str]:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else "443"
    return {
        "x-forwarded-for": call.peer or "",
        "x-forwarded-proto": "https",
        "x-forwarded-host": host,
        "x-forwarded-port": port,
    }


def sso_routes(gateway: Gateway, settings: Sso) -> list[Route]:
    """The three relayed routes of ``settings.realm``."""
    from starlette.routing import Route

    base = f"/realms/{settings.realm}"

    async def relay(request: Request) -> Response:
        return await _relay(gateway, settings, request)

    return [
        Route(f"{base}/{WELL_KNOWN}", relay, methods=["GET"]),
        Route(f"{base}/{CERTS}", relay, methods=["GET"]),
        Route(f"{base}/{TOKEN}", relay, methods=["POST"]),
    ]


async def _bounded_answer(answer: httpx.Response) -> bytes:
    """Keycloak's answer (decoded), read no further than ``MAX_ANSWER_BYTES``."""
    content = bytearray()
    async for chunk in answer.aiter_bytes():
        content += chunk
        if len(content) > MAX_ANSWER_BYTES:
            raise RefusedError(Reason.UPSTREAM_ERROR, "Keycloak's answer is larger than expected")
    return bytes(content)


async def _relay(gateway: Gateway, settings: Sso, request: Request) -> Response:
    import httpx
    from starlette.responses import Response

    from appliance.gateway.calls import read_body

    client = gateway.sso_client
    assert client is not None  # the routes exist only with an `sso` section
    call = gateway.start(request, event="gateway.sso")
    is_token = call.route.endswith(TOKEN)
    try:
        if is_token:
            gateway.check_refusal_budget(call)
        body = await read_body(request, settings.max_body_bytes, call.deadline) if is_token else b""
        headers = {"accept": "application/json", **forwarded_headers(request, call)}
        if is_token:
            call.client_id = client_named(request.headers, body)
            headers["content-type"] = request.headers.get(
                "content-type", "application/x-www-form-urlencoded"
            )
            if request.headers.get("authorization"):
                headers["authorization"] = request.headers["authorization"]
        outgoing = client.build_request(
            request.method, call.route, content=body or None, headers=headers
        )
        try:
            answer = await client.send(outgoing, stream=True)
            try:
                content = await _bounded_answer(answer)
            finally:
                await answer.aclose()
        except httpx.TimeoutException as exc:
            raise RefusedError(
                Reason.UPSTREAM_TIMEOUT, f"Keycloak did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise RefusedError(
                Reason.UPSTREAM_UNAVAILABLE, f"Keycloak cannot be reached ({type(exc).__name__})"
            ) from exc
        call.status = answer.status_code
        if answer.status_code >= 400:
            call.reason = Reason.UPSTREAM_ERROR
            call.detail = f"Keycloak answered {answer.status_code}"
            if is_token and answer.status_code == 401 and call.peer is not None:
                gateway.refusals.refused(call.peer)
        await gateway.finish_and_sync(call)
        passed = {k: v for k, v in answer.headers.items() if k.lower() in ANSWER_HEADERS}
        return Response(content, status_code=answer.status_code,
                        headers={**passed, "x-request-id": call.request_id})  # fmt: skip
    except RefusedError as exc:
        response = gateway.refusal(call, exc)
        await gateway.finish_and_sync(call)
        return response
