"""Lab hosts for integration tests: real Debian hosts with systemd, in network namespaces.

Needs root and the lab's packages (``scripts/ensure-system-deps lab``); skips
with the reason otherwise. Every lab a test makes is torn down however the
test ends: ``try/finally`` around it, plus an ``atexit`` hook and a SIGTERM
handler (turned into ``SystemExit`` so the ``finally`` runs) for sessions that
are interrupted or killed politely. ``appliance lab down --name NAME`` removes
anything left after a ``kill -9``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

from appliance.events import drain
from appliance.lab import Lab, lab_down, lab_up
from appliance.lab.hosts import REQUIRED_COMMANDS

SESSION = f"it{os.getpid()}"  # lab names unique per test session

# Audit anchors (appliance/deploy/audit_anchor.py) of this session's lab hosts: kept apart
# from the operator's own ~/.local/state, and gone with the session's hosts.
_ANCHORS = f"/tmp/appliance-{SESSION}-anchors"
os.environ.setdefault("APPLIANCE_AUDIT_ANCHORS", f"{_ANCHORS}/audit-anchors.json")
atexit.register(shutil.rmtree, _ANCHORS, True)


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab integration tests need root (network namespaces, bridges, systemd-nspawn)"
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if missing:
        return (
            f"lab integration tests need {', '.join(missing)}: run `scripts/ensure-system-deps lab`"
        )
    return None


def _quiet_teardown(name: str) -> None:
    with contextlib.suppress(Exception):
        drain(lab_down(name))


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def guarded_teardown(name: str) -> Iterator[None]:
    """Remove lab ``name`` when the block ends, and at interpreter exit if it never does."""
    safety = functools.partial(_quiet_teardown, name)
    atexit.register(safety)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        try:
            drain(lab_down(name))
        finally:
            atexit.unregister(safety)
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def temporary_lab(name: str, hosts: int = 1) -> Iterator[Lab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    with guarded_teardown(name):
        yield drain(lab_up(name, hosts))


@pytest.fixture(scope="session")
def lab_host() -> Iterator[Lab]:
    """A one-host lab for the whole session (host ``it<pid>-1``), always torn down."""
    with temporary_lab(SESSION, 1) as lab:
        yield lab


@pytest.fixture
def make_lab() -> Callable[[str, int], contextlib.AbstractContextManager[Lab]]:
    """``with make_lab("b", 2) as lab:`` - an extra lab, named after the session, torn down at exit."""

    def make(suffix: str, hosts: int = 1) -> contextlib.AbstractContextManager[Lab]:
        return temporary_lab(f"{SESSION}-{suffix}", hosts)

    return make
