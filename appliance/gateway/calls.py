"""One call's record and the gateway state every call goes through.

``Gateway`` holds what one running gateway keeps (keys, rate-limit buckets, the audit
log, the upstream and Keycloak clients) and the steps shared by the model routes
(``app``) and the relay to Keycloak (``sso``): start a ``Call``, spend or check the
refusal budget, read a bounded body by its deadline, answer a refusal, write the
audit record. Both route modules import this one; it imports neither.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from appliance.gateway.audit import AuditLog, clip
from appliance.gateway.clock import Clock, SystemClock
from appliance.gateway.config import GatewayConfig
from appliance.gateway.connections import ConnectionReport
from appliance.gateway.group_state import GroupState
from appliance.gateway.jwks import (
    FileJwksSource,
    FirstAnswering,
    JwksSource,
    KeyStore,
    UrlJwksSource,
)
from appliance.gateway.ratelimit import RateLimiter, RefusalLimiter, retry_after
from appliance.gateway.reasons import Reason, RefusedError, error_body
from appliance.gateway.tokens import Caller, TokenValidator
from appliance.gateway.upstream import Usage, make_client, read_api_key

if TYPE_CHECKING:
    import httpx

HEALTH_CACHE_S = 1.0
HEALTH_TIMEOUT_S = 2.0
# Bytes (JSON-escaped) a field may take in an audit record; the rest is cut ("...").
MAX_ROUTE_BYTES = 256
MAX_METHOD_BYTES = 32
MAX_NAME_BYTES = 128  # model, base, adapter, subject, client id
MAX_DETAIL_BYTES = 512
# What one call's record takes at most, prompt aside (tests/unit/gateway/test_hostile_clients.py).
MAX_RECORD_BYTES = 2304  # 2048 before `base` and `adapter` (128 bytes each at most)


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
    # What serves ``model`` by the config's ``served``: the base model's served name, and the
    # adapter's name for a LoRA adapter (None for a base model, or for a name not served).
    base: str | None = None
    adapter: str | None = None
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
            "base": clip(self.base, MAX_NAME_BYTES),
            "adapter": clip(self.adapter, MAX_NAME_BYTES),
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
        sso_client: httpx.AsyncClient | None = None,
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
        self.sso_client = sso_client
        self._health: tuple[float, bool, str] | None = None
        self.group = (
            None
            if config.group is None
            else GroupState(config.group.state_file, config.group.name, self.clock)
        )

    def require_group(self) -> None:
        """Refuse the call (503 ``group_unavailable``, with the watch's reason) while the
        multi-node group behind the model server is not serving."""
        if self.group is not None and not (view := self.group.view()).serving:
            raise RefusedError(Reason.GROUP_UNAVAILABLE, view.reason)

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
