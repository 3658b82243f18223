"""The server side of ``connections``: uvicorn's h11 protocol with caps and deadlines.

See ``appliance.gateway.connections`` for what uvicorn offers and why this exists.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import h11

from appliance.gateway.connections import OVER_CAP, Admission, ConnectionGuard, Cut
from appliance.gateway.reasons import Reason, error_body

# The server cuts a body this long after the app's own deadline (which answers 408).
BODY_GRACE_S = 5.0


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        error_body(
            Reason.HEADER_TIMEOUT,
            f"the request's headers did not arrive within {seconds:g} s; send them at once",
        )
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def bound_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``guard``.

    Defined here, not at import: uvicorn loads click, which the core must not
    (tests/unit/test_core_imports.py); only serving imports it.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with connection caps and per-phase deadlines.

        Phases follow h11's view of the client: ``IDLE`` on a fresh connection or
        once bytes of a next request arrived (an idle kept-alive connection is
        uvicorn's ``timeout_keep_alive``) -> headers deadline; ``SEND_BODY`` ->
        body deadline; anything else (the app is answering) -> none. A deadline is
        armed once per phase, so trickled bytes never extend it.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._peer = "unknown"
            self._admission = Admission.DROPPED
            self._deadline: asyncio.TimerHandle | None = None
            self._phase: Cut | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else "unknown"
            self._admission = guard.admit(self._peer)
            if self._admission is Admission.DROPPED:
                transport.close()
                return
            if self._admission is not Admission.ADMITTED:
                # Seen by the app as scope["state"][OVER_CAP] on every request of this connection.
                self.app_state = {**self.app_state, OVER_CAP: self._admission.value}
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            guard.release(self._peer, self._admission)
            self._admission = Admission.DROPPED  # released once
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def _follow(self) -> None:
            if self.transport.is_closing():
                self._disarm()
                return
            state = self.conn.their_state
            limits = guard.limits
            if state is h11.IDLE and self.timeout_keep_alive_task is None:
                self._arm(Cut.HEADER_TIMEOUT, limits.header_timeout_s)
            elif state is h11.SEND_BODY:
                grace = min(BODY_GRACE_S, limits.body_timeout_s)
                self._arm(Cut.BODY_TIMEOUT, limits.body_timeout_s + grace)
            else:
                self._disarm()

        def _arm(self, phase: Cut, seconds: float) -> None:
            if self._phase is phase:
                return
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._phase = None, None

        def _expired(self, phase: Cut, seconds: float) -> None:
            self._deadline, self._phase = None, None
            if self.transport.is_closing():
                return
            guard.report.count(phase.value, self._peer)
            if phase is Cut.HEADER_TIMEOUT and self.conn.our_state is h11.IDLE:
                self.transport.write(_timeout_response(seconds))  # nothing was sent on it yet
            self.transport.close()

    return GuardedH11Protocol


class HandshakeBoundedLoop(asyncio.SelectorEventLoop):
    """The event loop, with a TLS handshake deadline on every server it creates.

    uvicorn calls ``create_server`` without ``ssl_handshake_timeout`` (asyncio's
    default is 60 s); a client that opens TCP and never finishes the handshake
    holds a file descriptor for that long, before any cap can count it.
    """

    handshake_timeout_s: ClassVar[float] = 10.0

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
            kwargs["ssl_handshake_timeout"] = self.handshake_timeout_s
        return await super().create_server(*args, **kwargs)


def loop_factory(handshake_timeout_s: float) -> type[HandshakeBoundedLoop]:
    return type(
        "GatewayEventLoop", (HandshakeBoundedLoop,), {"handshake_timeout_s": handshake_timeout_s}
    )
