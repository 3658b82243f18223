"""The gateway's ASGI app: authenticate, authorise, rate-limit, proxy, audit.

A call to a model route goes: the address's refusal budget (``ratelimit``) -> token
(``tokens``) -> rate limit (per client id)
-> bounded body -> ``model`` field against the caller's roles (``base`` and ``adapter``
of the record from the config's ``served``) -> the model
server (streaming answers forwarded chunk by chunk as they arrive) -> one audit
record. Every refusal is an OpenAI-style JSON error whose ``code`` is the
``Reason``; a 401 also carries ``WWW-Authenticate: Bearer ...`` (RFC 6750).
Every call except ``/healthz`` is audited, refused or not; every field a request or a
token controls is cut (``audit.clip``), so one call writes at most ``MAX_RECORD_BYTES``
(plus the prompt, bounded by ``audit.max_prompt_bytes``, when prompts are logged).
A body must arrive within ``limits.body_timeout_s`` of the request's start (else 408,
and the connection is closed) and be strict, bounded JSON (``input_files.parse_json``:
nesting, duplicate keys, NaN, non-UTF-8 are 400). Connection caps and header deadlines
are the server's (``connections``); this app answers over-cap connections health only.

The caller's ``Authorization`` header is never forwarded: the model server sees
the gateway's own key (``upstream.api_key_file``) or none.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from appliance.errors import InputError
from appliance.gateway.calls import Call, Gateway, read_body
from appliance.gateway.clock import Clock
from appliance.gateway.config import GatewayConfig
from appliance.gateway.connections import HealthOnlyWhenOverCap
from appliance.gateway.jwks import JwksSource
from appliance.gateway.model_list import parse_model_list, visible_models
from appliance.gateway.reasons import Reason, RefusedError
from appliance.gateway.sso import make_sso_client, sso_routes
from appliance.gateway.upstream import SseTally, send, usage_from_body
from appliance.input_files import parse_json

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("appliance.gateway")

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")


class RequestBodyError(InputError):
    """A request body that is not strict, bounded JSON; answered 400, never raised further."""


def parse_generation(body: bytes) -> dict[str, Any]:
    try:
        payload = parse_json(body, "the body", error=RequestBodyError)
    except RequestBodyError as exc:
        raise RefusedError(Reason.BAD_REQUEST, exc.message) from exc
    if not isinstance(payload, dict):
        raise RefusedError(Reason.BAD_REQUEST, "the body must be a JSON object")
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise RefusedError(
            Reason.BAD_REQUEST,
            'the body must name a model: {"model": "...", ...} (see GET /v1/models)',
        )
    return payload


@dataclass
class _StreamState:
    done: bool = False
    disconnected: bool = False
    broken: str | None = None


class ProxiedStream(Response):
    """Forwards an upstream event stream chunk by chunk; audits when it ends, however it ends.

    A disconnect listener runs beside the forwarding (uvicorn drops writes to a
    closed connection silently), so a client that goes away stops the upstream
    generation at once instead of after the last token.
    """

    def __init__(self, gateway: Gateway, call: Call, upstream: httpx.Response) -> None:
        self.gateway, self.call, self.upstream = gateway, call, upstream
        self.status_code = upstream.status_code
        self.background = None
        self.init_headers(
            {
                "content-type": upstream.headers.get("content-type", "text/event-stream"),
                "cache-control": "no-cache",
                "x-request-id": call.request_id,
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import httpx

        call, clock = self.call, self.gateway.clock
        tally = SseTally()
        state = _StreamState()

        async def watch(cancel: anyio.CancelScope) -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state.done:
                        state.disconnected = True
                        cancel.cancel()
                    return

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch, group.cancel_scope)
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
                try:
                    async for chunk in self.upstream.aiter_raw():
                        if call.first_byte_ms is None:
                            call.first_byte_ms = round((clock.monotonic() - call.started) * 1000, 3)
                        tally.feed(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError as exc:
                    state.broken = f"{type(exc).__name__}: {exc}"
                state.done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:  # ASGI 2.4 servers raise on a write to a closed connection
            state.disconnected = True
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
                call.status = self.status_code
                call.usage = tally.usage
                if state.disconnected:
                    call.reason = Reason.CLIENT_DISCONNECTED
                    call.detail = "the client closed the connection before the end of the stream"
                elif state.broken is not None:
                    call.reason = Reason.UPSTREAM_STREAM_BROKEN
                    call.detail = state.broken[:200]
                elif self.status_code >= 400:
                    call.reason = Reason.UPSTREAM_ERROR
                await self.gateway.finish_and_sync(call)


async def forward(gateway: Gateway, request: Request, call: Call, body: bytes) -> Response:
    import httpx

    headers = gateway.upstream_headers(request.headers.get("accept"))
    headers["content-type"] = "application/json"
    outgoing = gateway.client.build_request("POST", call.route, content=body, headers=headers)
    try:
        upstream = await send(gateway.client, outgoing)
    except httpx.TimeoutException as exc:
        raise RefusedError(
            Reason.UPSTREAM_TIMEOUT,
            f"the model server did not answer in time ({type(exc).__name__})",
        ) from exc
    except httpx.HTTPError as exc:
        raise RefusedError(
            Reason.UPSTREAM_UNAVAILABLE,
            f"the model server cannot be reached ({type(exc).__name__})",
        ) from exc
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return ProxiedStream(gateway, call, upstream)
    try:
        content = await upstream.aread()
    except httpx.HTTPError as exc:
        raise RefusedError(
            Reason.UPSTREAM_UNAVAILABLE,
            f"the model server's answer broke off ({type(exc).__name__})",
        ) from exc
    finally:
        await upstream.aclose()
    call.status = upstream.status_code
    if upstream.status_code < 300:
        call.usage = usage_from_body(content)
    else:
        call.reason = Reason.UPSTREAM_ERROR
    await gateway.finish_and_sync(call)
    return Response(
        content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
        headers={"x-request-id": call.request_id},
    )


def create_app(
    config: GatewayConfig,
    *,
    upstream_transport: Any = None,
    clock: Clock | None = None,
    keys_source: JwksSource | None = None,
    sso_transport: Any = None,
) -> Starlette:
    """The gateway app; ``app.state.gateway`` holds its state (``aclose()`` when not served by uvicorn)."""
    sso_client = None if config.sso is None else make_sso_client(config.sso, sso_transport)
    gateway = Gateway(config, upstream_transport=upstream_transport, clock=clock,
                      keys_source=keys_source, sso_client=sso_client)  # fmt: skip

    async def generation(request: Request) -> Response:
        call = gateway.start(request)
        try:
            caller = await gateway.authenticate(request, call)
            body = await read_body(request, config.limits.max_body_bytes, call.deadline)
            payload = parse_generation(body)
            call.model, call.stream = payload["model"], payload.get("stream") is True
            call.base, call.adapter = config.served.resolve(call.model)
            if config.audit.log_prompts:
                call.prompt = payload.get("messages", payload.get("prompt"))
            if call.model not in gateway.allowed_models(caller):
                raise RefusedError(
                    Reason.MODEL_NOT_ALLOWED,
                    f"model {call.model!r} is not granted to client {caller.client_id!r}"
                    " (no role of the token grants it; see GET /v1/models)",
                )
            gateway.require_group()
            return await forward(gateway, request, call, body)
        except RefusedError as exc:
            response = gateway.refusal(call, exc)
            await gateway.finish_and_sync(call)
            return response

    async def models(request: Request) -> Response:
        import httpx

        call = gateway.start(request)
        try:
            caller = await gateway.authenticate(request, call)
            gateway.require_group()
            outgoing = gateway.client.build_request(
                "GET", "/v1/models", headers=gateway.upstream_headers()
            )
            try:
                upstream = await send(gateway.client, outgoing)
                try:
                    await upstream.aread()
                finally:
                    await upstream.aclose()
            except httpx.TimeoutException as exc:
                raise RefusedError(
                    Reason.UPSTREAM_TIMEOUT, "the model server did not answer in time"
                ) from exc
            except httpx.HTTPError as exc:
                raise RefusedError(
                    Reason.UPSTREAM_UNAVAILABLE,
                    f"the model server cannot be reached ({type(exc).__name__})",
                ) from exc
            entries = parse_model_list(upstream)
            listing = {
                "object": "list",
                "data": visible_models(entries, config.served, gateway.allowed_models(caller)),
            }
            call.status = 200
            await gateway.finish_and_sync(call)
            return JSONResponse(listing, headers={"x-request-id": call.request_id})
        except RefusedError as exc:
            response = gateway.refusal(call, exc)
            await gateway.finish_and_sync(call)
            return response

    async def health(request: Request) -> Response:
        if not gateway.keys.loaded:
            await gateway.keys.refresh()
        upstream_ok, upstream = await gateway.upstream_healthy()
        group = None if gateway.group is None else gateway.group.view()
        ok = upstream_ok and gateway.keys.loaded and (group is None or group.serving)
        body = {
            "status": "ok" if ok else "unavailable",
            "upstream": upstream,
            "signing_keys": "loaded" if gateway.keys.loaded else "not loaded",
        }
        if group is not None:
            body["group"] = group.reason
        return JSONResponse(body, status_code=200 if ok else 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        call = gateway.start(request)
        reason = Reason.METHOD_NOT_ALLOWED if exc.status_code == 405 else Reason.NOT_FOUND
        detail = f"{request.method} {request.url.path} is not a route of this gateway"
        response = gateway.refusal(call, RefusedError(reason, detail))
        await gateway.finish_and_sync(call)
        return response

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        call = gateway.start(request)
        response = gateway.refusal(call, RefusedError(Reason.INTERNAL_ERROR, "internal error"))
        gateway.finish(call)
        return response

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.keys.refresh()
        if not gateway.keys.loaded:
            log.error(
                "no signing keys loaded from %s: every token will be refused",
                gateway.keys.source.description,
            )
        async with anyio.create_task_group() as group:
            group.start_soon(gateway.audit.sync_periodically)
            group.start_soon(
                gateway.connection_report.report_periodically,
                gateway.audit,
                config.audit.connection_report_interval_s,
            )
            yield
            group.cancel_scope.cancel()
        gateway.connection_report.report(gateway.audit)
        await gateway.aclose()

    routes = [
        *(Route(path, generation, methods=["POST"]) for path in GENERATION_ROUTES),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        *(sso_routes(gateway, config.sso) if config.sso is not None else ()),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
        middleware=[Middleware(HealthOnlyWhenOverCap)],
    )
    # "/v1/models/" is a 404 (audited), not a redirect (which would not be).
    app.router.redirect_slashes = False
    app.state.gateway = gateway
    return app
