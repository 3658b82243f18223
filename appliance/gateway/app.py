"""The gateway's ASGI app: authenticate, authorise, rate-limit, proxy, audit.

A call to a model route goes: the address's refusal budget (``ratelimit``) -> token
(``tokens``) -> rate limit (per client id)
-> bounded body -> ``model`` field against the caller's roles -> the model
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

import json
import logging
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from appliance.errors import InputError
from appliance.gateway.audit import AuditLog, clip
from appliance.gateway.clock import Clock, SystemClock
from appliance.gateway.config import GatewayConfig
from appliance.gateway.connections import ConnectionReport, HealthOnlyWhenOverCap
from appliance.gateway.jwks import (
    FileJwksSource,
    FirstAnswering,
    JwksSource,
    KeyStore,
    UrlJwksSource,
)
from appliance.gateway.ratelimit import RateLimiter, RefusalLimiter, retry_after
from appliance.gateway.reasons import Reason, RefusedError, error_body
from appliance.gateway.sso import make_sso_client, sso_routes
from appliance.gateway.tokens import Caller, TokenValidator
from appliance.gateway.upstream import (
    SseTally,
    UpstreamAnswerError,
    Usage,
    make_client,
    read_api_key,
    send,
    usage_from_body,
)
from appliance.input_files import parse_json

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("appliance.gateway")

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
HEALTH_CACHE_S = 1.0
HEALTH_TIMEOUT_S = 2.0
MAX_MODELS_BYTES = 4 * 1024 * 1024
# Bytes (JSON-escaped) a field may take in an audit record; the rest is cut ("...").
MAX_ROUTE_BYTES = 256
MAX_METHOD_BYTES = 32
MAX_NAME_BYTES = 128  # model, subject, client id
MAX_DETAIL_BYTES = 512
# What one call's record takes at most, prompt aside (tests/unit/gateway/test_hostile_clients.py).
MAX_RECORD_BYTES = 2048


@dataclass
class Call:
    """What the audit record of one call will say; filled in as the call proceeds."""

    request_id: str
    method: str
    route: str
    peer: str | None
    started: float
    subject: str | None = None
    client_id: str | None = None
    model: str | None = None
    stream: bool = False
    status: int | None = None
    reason: Reason | None = None
    detail: str | None = None
    usage: Usage = field(default_factory=Usage)
    first_byte_ms: float | None = None
    prompt: Any = None
    event: str = "gateway.call"  # "gateway.sso" for a request relayed to Keycloak
    deadline: float = math.inf  # anyio time by which the request's body must have arrived

    def record(self, now: float, *, with_prompt: bool, max_prompt_bytes: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "event": self.event,
            "request_id": self.request_id,
            "method": clip(self.method, MAX_METHOD_BYTES),
            "route": clip(self.route, MAX_ROUTE_BYTES),
            "peer": clip(self.peer, MAX_NAME_BYTES),
            "subject": clip(self.subject, MAX_NAME_BYTES),
            "client_id": clip(self.client_id, MAX_NAME_BYTES),
            "model": clip(self.model, MAX_NAME_BYTES),
            "stream": self.stream,
            "status": self.status,
            "reason": self.reason.value if self.reason else None,
            "detail": clip(self.detail, MAX_DETAIL_BYTES),
            "tokens_in": self.usage.tokens_in,
            "tokens_out": self.usage.tokens_out,
            "usage_source": self.usage.source,
            "latency_ms": round((now - self.started) * 1000, 3),
        }
        if self.first_byte_ms is not None:
            entry["first_byte_ms"] = self.first_byte_ms
        if with_prompt and self.prompt is not None:
            entry["prompt"] = _bounded_prompt(self.prompt, max_prompt_bytes)
        return entry


def _bounded_prompt(prompt: Any, limit: int) -> Any:
    """The prompt as sent when its JSON fits ``limit`` bytes; else that JSON, cut, as a string."""
    text = json.dumps(prompt)
    return prompt if len(text) <= limit else clip(text, limit)


def jwks_source(config: GatewayConfig) -> JwksSource:
    t = config.tokens
    sources: list[JwksSource] = []
    if t.jwks_url is not None:
        sources.append(UrlJwksSource(t.jwks_url, ca_file=t.jwks_ca_file))
    if t.jwks_file is not None:
        sources.append(FileJwksSource(t.jwks_file))
    return sources[0] if len(sources) == 1 else FirstAnswering(sources)


class Gateway:
    """Everything one running gateway holds: keys, buckets, the audit log, the upstream client."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        upstream_transport: Any = None,
        clock: Clock | None = None,
        keys_source: JwksSource | None = None,
        sso_transport: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        t = config.tokens
        self.keys = KeyStore(
            keys_source or jwks_source(config),
            t.algorithms,
            self.clock,
            refresh_interval_s=t.jwks_refresh_interval_s,
            max_age_s=t.jwks_max_age_s,
        )
        self.validator = TokenValidator(t, self.keys, self.clock)
        self.limiter = RateLimiter(config.rate_limits, self.clock)
        self.refusals = RefusalLimiter(config.rate_limits.refused_per_address, self.clock)
        self.upstream_key = read_api_key(config.upstream.api_key_file)
        self.audit = AuditLog(
            config.audit.path,
            self.clock,
            fsync_interval_s=config.audit.fsync_interval_s,
            fsync_batch=config.audit.fsync_batch,
        )
        self.client = make_client(config.upstream, upstream_transport)
        self.connection_report = ConnectionReport()
        self.sso_client = None if config.sso is None else make_sso_client(config.sso, sso_transport)
        self._health: tuple[float, bool, str] | None = None

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sso_client is not None:
            await self.sso_client.aclose()
        self.audit.close()

    # --- the steps of a call -----------------------------------------------------------

    def start(self, request: Request, *, event: str = "gateway.call") -> Call:
        return Call(
            event=event,
            request_id=secrets.token_hex(8),
            method=request.method,
            route=request.url.path,
            peer=request.client.host if request.client else None,
            started=self.clock.monotonic(),
            deadline=anyio.current_time() + self.config.limits.body_timeout_s,
        )

    async def authenticate(self, request: Request, call: Call) -> Caller:
        values = request.headers.getlist("authorization")
        if len(values) > 1:
            raise RefusedError(Reason.MALFORMED_HEADER, "more than one Authorization header")
        self.check_refusal_budget(call)
        peer = call.peer
        try:
            caller = await self.validator.caller(values[0] if values else None)
        except RefusedError as exc:
            if peer is not None and exc.reason.is_token_problem:
                self.refusals.refused(peer)
            raise
        call.subject, call.client_id = caller.subject, caller.client_id
        wait = self.limiter.take(caller.client_id)
        if wait is not None:
            raise RefusedError(
                Reason.RATE_LIMITED,
                f"client {caller.client_id!r} is over its rate limit; retry in {wait:.1f} s",
                retry_after=wait,
            )
        return caller

    def check_refusal_budget(self, call: Call) -> None:
        """Refuse (429) an address that has spent its budget of refused credentials."""
        peer = call.peer
        if peer is not None and (held := self.refusals.wait(peer)) is not None:
            raise RefusedError(
                Reason.RATE_LIMITED,
                f"address {peer} sent too many requests with refused credentials; "
                f"retry in {held:.1f} s",
                retry_after=held,
            )

    def allowed_models(self, caller: Caller) -> frozenset[str]:
        return self.config.access.models_for(caller.roles)

    def upstream_headers(self, accept: str | None = None) -> dict[str, str]:
        # identity: stream chunks are forwarded as raw bytes, never re-encoded
        headers = {"accept": accept or "application/json", "accept-encoding": "identity"}
        if self.upstream_key is not None:
            headers["authorization"] = f"Bearer {self.upstream_key}"
        return headers

    def finish(self, call: Call) -> None:
        """Write the call's audit record."""
        a = self.config.audit
        entry = call.record(
            self.clock.monotonic(), with_prompt=a.log_prompts, max_prompt_bytes=a.max_prompt_bytes
        )
        self.audit.write(entry)

    async def finish_and_sync(self, call: Call) -> None:
        """Write the call's audit record, and fsync the pending batch when it is due."""
        self.finish(call)
        if self.audit.sync_due:
            await self.audit.sync()

    def refusal(self, call: Call, exc: RefusedError) -> Response:
        call.status, call.reason, call.detail = exc.reason.status, exc.reason, exc.detail
        headers = {"x-request-id": call.request_id}
        if exc.reason.is_token_problem:
            headers["www-authenticate"] = _www_authenticate(exc)
        elif exc.reason is Reason.MODEL_NOT_ALLOWED:
            headers["www-authenticate"] = 'Bearer realm="appliance", error="insufficient_scope"'
        if exc.retry_after is not None:
            headers["retry-after"] = retry_after(exc.retry_after)
        if exc.reason in (Reason.BODY_TIMEOUT, Reason.BODY_TOO_LARGE):
            # The rest of the body is unread: the connection cannot carry another request.
            headers["connection"] = "close"
        return error_response(exc.reason, exc.detail, headers, status=exc.reason.status)

    async def upstream_healthy(self) -> tuple[bool, str]:
        """Whether the model server answers ``/v1/models`` (cached for a second)."""
        import httpx

        now = self.clock.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_CACHE_S:
            return self._health[1], self._health[2]
        try:
            response = await self.client.get(
                "/v1/models", headers=self.upstream_headers(), timeout=HEALTH_TIMEOUT_S
            )
            ok, detail = response.status_code == 200, f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, detail = False, f"unreachable ({type(exc).__name__})"
        self._health = (now, ok, "answers" if ok else detail)
        return self._health[1], self._health[2]


def _www_authenticate(exc: RefusedError) -> str:
    if exc.reason is Reason.MISSING_TOKEN:
        return 'Bearer realm="appliance"'
    # quoted-string: no quotes, backslashes or non-ASCII from a token's claims
    description = "".join(
        c for c in exc.detail if c.isascii() and c not in '"\\' and c.isprintable()
    )
    return (
        f'Bearer realm="appliance", error="invalid_token", error_description="{description[:200]}"'
    )


def error_response(
    reason: Reason, message: str, headers: dict[str, str] | None = None, *, status: int
) -> JSONResponse:
    return JSONResponse(error_body(reason, message), status_code=status, headers=headers)


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The request's body: at most ``limit`` bytes, all of it by ``deadline`` (anyio time)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and len(declared) < 20 and int(declared) > limit:
        raise RefusedError(
            Reason.BODY_TOO_LARGE, f"the body has {declared} bytes; at most {limit} are accepted"
        )
    body = bytearray()
    try:
        with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise RefusedError(
                        Reason.BODY_TOO_LARGE, f"the body exceeds {limit} bytes, the most accepted"
                    )
    except TimeoutError as exc:
        raise RefusedError(
            Reason.BODY_TIMEOUT,
            f"the body did not arrive in time ({len(body)} bytes received); send it at once",
        ) from exc
    except ClientDisconnect as exc:
        raise RefusedError(
            Reason.CLIENT_DISCONNECTED, f"the client went away after {len(body)} bytes of its body"
        ) from exc
    return bytes(body)


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
    gateway = Gateway(config, upstream_transport=upstream_transport, clock=clock,
                      keys_source=keys_source, sso_transport=sso_transport)  # fmt: skip

    async def generation(request: Request) -> Response:
        call = gateway.start(request)
        try:
            caller = await gateway.authenticate(request, call)
            body = await read_body(request, config.limits.max_body_bytes, call.deadline)
            payload = parse_generation(body)
            call.model, call.stream = payload["model"], payload.get("stream") is True
            if config.audit.log_prompts:
                call.prompt = payload.get("messages", payload.get("prompt"))
            if call.model not in gateway.allowed_models(caller):
                raise RefusedError(
                    Reason.MODEL_NOT_ALLOWED,
                    f"model {call.model!r} is not granted to client {caller.client_id!r}"
                    " (no role of the token grants it; see GET /v1/models)",
                )
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
            listing = _model_list(upstream)
            allowed = gateway.allowed_models(caller)
            listing["data"] = [
                m for m in listing["data"] if isinstance(m, dict) and m.get("id") in allowed
            ]
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
        ok = upstream_ok and gateway.keys.loaded
        body = {
            "status": "ok" if ok else "unavailable",
            "upstream": upstream,
            "signing_keys": "loaded" if gateway.keys.loaded else "not loaded",
        }
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


def _model_list(upstream: httpx.Response) -> dict[str, Any]:
    if upstream.status_code != 200 or len(upstream.content) > MAX_MODELS_BYTES:
        raise RefusedError(
            Reason.UPSTREAM_ERROR,
            f"the model server answered HTTP {upstream.status_code} to /v1/models",
        )
    try:
        listing = parse_json(upstream.content, "the model list", error=UpstreamAnswerError)
    except UpstreamAnswerError as exc:
        raise RefusedError(
            Reason.UPSTREAM_ERROR, f"the model server's model list is unusable: {exc.message}"
        ) from exc
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        raise RefusedError(Reason.UPSTREAM_ERROR, "the model server's model list has no data array")
    return {"object": "list", "data": listing["data"]}
