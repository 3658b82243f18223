"""Connections under hostile clients: caps per address and in total, counted refusals and cuts.

What uvicorn (0.54, h11) offers and what it lacks, and so what is here:
- ``h11_max_incomplete_event_size`` bounds the bytes of a request line and its
  headers (used: ``server.py``); ``timeout_keep_alive`` bounds an idle
  connection *between* requests (used). Nothing bounds the *time* a client
  takes to send its headers (a fresh connection that sends nothing, or one byte
  a second, lives for ever: any byte cancels the keep-alive timer) or its body,
  nor the TLS handshake beyond asyncio's 60 s. So ``protocol.GuardedH11Protocol``
  (a small subclass of uvicorn's h11 protocol) arms a deadline per phase: the
  headers of each request within ``header_timeout_s`` (answered 408, closed),
  the body within ``body_timeout_s`` plus a grace (closed; the app answers 408
  at ``body_timeout_s`` itself when it reads the body: ``calls.read_body``), and
  ``protocol.HandshakeBoundedLoop`` gives the TLS handshake ``header_timeout_s``.
- ``limit_concurrency`` is one global number that answers 503 to every request
  past it, ``/healthz`` included, and knows nothing of addresses. Not used:
  ``ConnectionGuard`` caps connections per client address and in total; a
  connection past a cap may still ask ``GET /healthz`` (``HealthOnlyWhenOverCap``
  answers anything else 503 ``too_many_connections``, and closes it), one such
  connection per address and ``health_connections`` in all; past those it is
  closed unanswered.
Every refusal and cut is counted in ``ConnectionReport`` and written to the
audit log as one ``gateway.connections`` summary per interval at most, of
bounded size (the counts, the ten busiest addresses): a flood of connections
cannot fill the log. Everything here runs on the event loop's thread, and imports
nothing of uvicorn (the app is also served in process, by tests).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import anyio

from appliance.gateway.config import Limits
from appliance.gateway.reasons import Reason, error_body

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from appliance.gateway.audit import AuditLog

OVER_CAP = "appliance.over_cap"  # key in the ASGI scope's state of an over-cap connection
HEALTH_PER_ADDRESS = 1  # over-cap connections one address may hold (for GET /healthz)
MAX_TRACKED_ADDRESSES = 4096  # per report interval; the others are counted, not named
REPORTED_ADDRESSES = 10


class Admission(StrEnum):
    ADMITTED = "admitted"
    OVER_ADDRESS_CAP = "over_address_cap"  # held for GET /healthz only
    OVER_TOTAL_CAP = "over_total_cap"  # held for GET /healthz only
    DROPPED = "dropped"  # over a cap with no health slot left: closed unanswered


class Cut(StrEnum):
    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"


class ConnectionReport:
    """Counts of refused and cut connections since the last summary record."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.addresses: Counter[str] = Counter()
        self.untracked = 0  # events from addresses past MAX_TRACKED_ADDRESSES
        self.since = time.monotonic()

    def count(self, what: str, peer: str) -> None:
        self.counts[what] += 1
        if peer in self.addresses or len(self.addresses) < MAX_TRACKED_ADDRESSES:
            self.addresses[peer] += 1
        else:
            self.untracked += 1

    def report(self, audit: AuditLog) -> dict[str, Any] | None:
        """Write one summary record if anything was counted; reset the counts."""
        if not self.counts:
            return None
        busiest = self.addresses.most_common(REPORTED_ADDRESSES)
        now = time.monotonic()
        record = {
            "event": "gateway.connections",
            "window_s": round(now - self.since, 3),
            "counts": dict(sorted(self.counts.items())),
            "addresses": {address[:64]: n for address, n in busiest},
            "other_addresses": len(self.addresses) - len(busiest),
            "untracked_events": self.untracked,
        }
        self.counts.clear()
        self.addresses.clear()
        self.untracked = 0
        self.since = now
        return audit.write(record)

    async def report_periodically(self, audit: AuditLog, interval_s: float) -> None:
        self.since = time.monotonic()
        while True:
            await anyio.sleep(interval_s)
            self.report(audit)


class ConnectionGuard:
    """Open connections per address and in total, against ``Limits``."""

    def __init__(self, limits: Limits, report: ConnectionReport) -> None:
        self.limits = limits
        self.report = report
        self.total = 0
        self.per_address: Counter[str] = Counter()
        self.health_total = 0
        self.health_per_address: Counter[str] = Counter()

    def admit(self, peer: str) -> Admission:
        if self.total >= self.limits.max_connections:
            over = Admission.OVER_TOTAL_CAP
        elif self.per_address[peer] >= self.limits.max_connections_per_address:
            over = Admission.OVER_ADDRESS_CAP
        else:
            self.total += 1
            self.per_address[peer] += 1
            return Admission.ADMITTED
        if (
            self.health_total < self.limits.health_connections
            and self.health_per_address[peer] < HEALTH_PER_ADDRESS
        ):
            self.health_total += 1
            self.health_per_address[peer] += 1
            self.report.count(over.value, peer)
            return over
        self.report.count(Admission.DROPPED.value, peer)
        return Admission.DROPPED

    def release(self, peer: str, admission: Admission) -> None:
        if admission is Admission.ADMITTED:
            self.total -= 1
            _decrement(self.per_address, peer)
        elif admission is not Admission.DROPPED:
            self.health_total -= 1
            _decrement(self.health_per_address, peer)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]  # no entry per address that ever connected


class HealthOnlyWhenOverCap:
    """ASGI middleware: a connection over a cap gets ``GET /healthz`` and nothing else.

    Either answer closes the connection (``connection: close``), so an over-cap
    connection holds its health slot for one request at most.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        over = scope.get("state", {}).get(OVER_CAP) if scope["type"] == "http" else None
        if over is None:
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        if scope["method"] == "GET" and scope["path"] == "/healthz":
            await self.app(scope, receive, closing)
            return
        cap = "per address" if over == Admission.OVER_ADDRESS_CAP else "in total"
        body = json.dumps(
            error_body(
                Reason.TOO_MANY_CONNECTIONS,
                f"too many open connections {cap}; close idle ones and retry",
            )
        ).encode()
        await closing(
            {
                "type": "http.response.start",
                "status": Reason.TOO_MANY_CONNECTIONS.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


_CLOSE = (b"connection", b"close")
