"""The model server side: the httpx client, and what the audit learns from its answers.

The client never uses environment proxies (an air-gapped host must not route
model traffic anywhere but the model server), keeps no cookies (nothing passes
between callers) and sends a request a second time only when a kept-alive
connection broke before any answer (``send``). Usage (tokens in/out) comes from the answer's ``usage``;
for a stream, from the last event that carries one, else the number of data
events is recorded as the output count (``usage_source: "chunks"``). The model
server's answers are parsed strictly and bounded (``input_files.parse_json``): a hostile
or broken server's deep nesting, NaN or huge numbers give no usage, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import InputError
from appliance.gateway.config import GatewayConfigError, Upstream
from appliance.input_files import parse_json, read_text_input

if TYPE_CHECKING:
    import httpx

MAX_SSE_LINE = 1024 * 1024  # a longer line is not inspected (it is still forwarded)
KEEPALIVE_S = 2.0
MAX_COUNT = 2**53  # a token count above this is not a count


class UpstreamAnswerError(InputError):
    """An answer of the model server that is not strict, bounded JSON (never raised further)."""


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send, once more on a fresh connection if a kept-alive one broke before any answer.

    A server may close an idle connection at the moment it is reused; nothing
    was answered then, and the request is sent again (once). Any other failure,
    and a second one, is the caller's to report.
    """
    import httpx

    try:
        return await client.send(request, stream=True)
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        return await client.send(request, stream=True)


def make_client(settings: Upstream, transport: Any = None) -> httpx.AsyncClient:
    import httpx  # lazily: httpx loads click and rich

    if transport is None:
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=min(settings.max_connections, 64),
                # Below the model servers' own idle timeout (uvicorn's 5 s in llama-cpp-python
                # and vLLM), so the gateway drops an idle connection before the server does.
                keepalive_expiry=KEEPALIVE_S,
            ),
            retries=0,
        )
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.read_timeout_s,  # under load, wait for a connection rather than fail
    )
    # Cookies the model server might set must not travel from one caller's request to another's.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        base_url=settings.url,
        transport=transport,
        timeout=timeout,
        trust_env=False,
        cookies=no_cookies,
    )


def read_api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    key = read_text_input(
        path, "model server's API key file", limit="key", error=GatewayConfigError
    ).strip()
    if not key or any(c.isspace() for c in key):
        raise GatewayConfigError(f"{path}: expected one API key on one line")
    return key


@dataclass(frozen=True, slots=True)
class Usage:
    tokens_in: int | None = None
    tokens_out: int | None = None
    source: str | None = None  # "upstream" (the server's usage) or "chunks" (counted events)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def usage_of(document: Any) -> Usage | None:
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return None
    return Usage(
        _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), "upstream"
    )


def usage_from_body(body: bytes) -> Usage:
    try:
        return usage_of(parse_json(body, "answer", error=UpstreamAnswerError)) or Usage()
    except UpstreamAnswerError:
        return Usage()


class SseTally:
    """Watches the bytes of a server-sent-event stream as they are forwarded, without changing them."""

    def __init__(self) -> None:
        self._partial = b""
        self.events = 0
        self._usage: Usage | None = None

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_SSE_LINE:
            self._partial = b""
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]" or not payload:
                continue
            self.events += 1
            if b'"usage"' in payload:  # parse only the events that may carry usage
                try:
                    found = usage_of(parse_json(payload, "event", error=UpstreamAnswerError))
                except UpstreamAnswerError:
                    found = None
                if found is not None:
                    self._usage = found

    @property
    def usage(self) -> Usage:
        if self._usage is not None:
            return self._usage
        return Usage(None, self.events, "chunks") if self.events else Usage()
