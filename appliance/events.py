"""Typed events yielded by long operations (hashing, building, verifying, deploying).

Long operations are generators: they ``yield`` these events and ``return``
their result; failures are raised as ``ApplianceError`` subclasses. Front ends
only render events (CLI progress bars or ``--json`` lines; TUI widgets).
``drain`` runs a generator for callers that only want the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar


@dataclass(frozen=True, slots=True)
class Started:
    operation: str  # "verify", "build", "copy", ...
    total_bytes: int | None = None
    total_items: int | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    operation: str
    done_bytes: int
    total_bytes: int | None
    done_items: int = 0
    total_items: int | None = None
    item: str | None = None  # e.g. the file just finished
    host: str | None = None  # set by deploy steps that run per host


@dataclass(frozen=True, slots=True)
class Warned:
    operation: str
    message: str


@dataclass(frozen=True, slots=True)
class Finished:
    operation: str
    message: str


Event = Started | Progress | Warned | Finished


class Throttle:
    """At most one progress event per ``interval`` seconds (renderers need no more)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


T = TypeVar("T")


def drain(gen: Generator[Event, None, T], on_event: Callable[[Event], None] | None = None) -> T:
    """Run an operation to completion, passing each event to ``on_event``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result: T = stop.value
            return result
        if on_event is not None:
            on_event(event)
