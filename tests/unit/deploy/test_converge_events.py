"""Per-host progress and cancel of the engines' converge, without hosts.

The engines themselves run against lab hosts (tests/integration); here: the
pure progress bookkeeping, the Ansible event mapping, and the thread that
streams an engine's events to the deploy generator (with an in-memory fake
engine standing in for pyinfra).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.deploy import converge
from appliance.deploy.engines import pyinfra as pyinfra_engine
from appliance.deploy.engines.ansible import _reporter
from appliance.deploy.host_desired import HostDesired, HostOutcome
from appliance.errors import Cancelled, DeploymentError
from appliance.events import Event, Progress, Warned


def test_progress_counts_operations_per_host() -> None:
    events: list[Event] = []
    progress = pyinfra_engine._Progress(events.append, None)
    progress.totals = {"a": 3, "b": 2}
    progress.succeeded("a", "directory /opt/appliance")
    progress.succeeded("b", "directory /opt/appliance")
    progress.succeeded("a", "upload files/model.gguf")
    progress.failed("b", "upload files/model.gguf")
    assert [
        (e.host, e.done_items, e.total_items, e.item) for e in events if isinstance(e, Progress)
    ] == [
        ("a", 1, 3, "directory /opt/appliance"),
        ("b", 1, 2, "directory /opt/appliance"),
        ("a", 2, 3, "upload files/model.gguf"),
    ]
    assert [e.message for e in events if isinstance(e, Warned)] == [
        "b: upload files/model.gguf failed"
    ]


def test_cancel_stops_before_the_next_operation_not_during_one() -> None:
    cancel = threading.Event()
    progress = pyinfra_engine._Progress(lambda event: None, cancel)
    progress.starting()  # not cancelled: the operation may start
    cancel.set()
    progress.succeeded("a", "an operation already running finishes and is counted")
    with pytest.raises(Cancelled, match="deploy again to resume") as caught:
        progress.starting()
    assert caught.value.exit_code == 130


def test_pyinfra_callbacks_are_a_real_state_callback() -> None:
    from pyinfra.api.state import BaseStateCallback

    events: list[Event] = []
    callbacks = pyinfra_engine._callbacks(pyinfra_engine._Progress(events.append, None))
    assert isinstance(callbacks, BaseStateCallback)

    class FakeState:  # the two things the callbacks read from pyinfra's State
        def get_op_meta(self, op_hash: str) -> Any:
            return type("Meta", (), {"names": {f"op {op_hash}"}})()

    class FakeHost:
        name = "h1"

    callbacks.operation_start(FakeState(), "x")
    callbacks.operation_host_success(FakeState(), FakeHost(), "x", 0)
    callbacks.operation_host_error(FakeState(), FakeHost(), "y", 0, 0)
    assert [type(e).__name__ for e in events] == ["Progress", "Warned"]
    assert events[0].item == "op x"  # type: ignore[union-attr]


def test_ansible_events_become_per_host_progress() -> None:
    events: list[Event] = []
    handle = _reporter(events.append)
    feed: list[dict[str, Any]] = [
        {"event": "playbook_on_start", "event_data": {}},
        {"event": "runner_on_ok", "event_data": {"host": "h1", "task": "directories"}},
        {"event": "runner_on_skipped", "event_data": {"host": "h1", "task": "check release"}},
        {"event": "runner_on_ok", "event_data": {"host": "h2", "task": "directories"}},
        {
            "event": "runner_on_failed",
            "event_data": {"host": "h2", "task": "upload", "ignore_errors": True},
        },
        {"event": "runner_on_unreachable", "event_data": {"host": "h2", "task": "upload"}},
    ]
    assert all(handle(e) for e in feed)  # every event is kept for the run's own records
    assert [(e.host, e.done_items, e.item) for e in events if isinstance(e, Progress)] == [
        ("h1", 1, "directories"), ("h1", 2, "check release"), ("h2", 1, "directories"),
    ]  # fmt: skip
    assert [e.message for e in events if isinstance(e, Warned)] == ["h2: upload failed"]


def fake_engine(
    monkeypatch: pytest.MonkeyPatch,
    body: Callable[[Callable[[Event], None], threading.Event | None], list[HostOutcome]],
) -> None:
    def converge(
        plans: Sequence[HostDesired],
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[HostOutcome]:
        assert on_event is not None
        return body(on_event, cancel)

    monkeypatch.setattr(pyinfra_engine, "converge", converge)


def collect(gen: Any) -> tuple[list[Event], Any]:
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_engine_events_stream_to_the_caller_as_they_come(monkeypatch: pytest.MonkeyPatch) -> None:
    seen_by_engine: list[str] = []

    def body(
        on_event: Callable[[Event], None], cancel: threading.Event | None
    ) -> list[HostOutcome]:
        seen_by_engine.append(threading.current_thread().name)
        for i in range(1, 4):
            on_event(Progress("converge", 0, None, i, 3, item=f"op {i}", host="h1"))
        return [HostOutcome("h1", True, True, "converged")]

    fake_engine(monkeypatch, body)
    events, outcomes = collect(converge.converge_hosts("pyinfra", [], threading.Event()))
    assert [e.done_items for e in events] == [1, 2, 3]  # type: ignore[union-attr]
    assert outcomes == {"h1": (True, "converged")}
    assert seen_by_engine == ["converge-pyinfra"]  # the engine ran in its own thread


def test_an_engine_error_reaches_the_caller_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    def body(
        on_event: Callable[[Event], None], cancel: threading.Event | None
    ) -> list[HostOutcome]:
        raise DeploymentError("the engine broke")

    fake_engine(monkeypatch, body)
    with pytest.raises(DeploymentError, match="the engine broke"):
        collect(converge.converge_hosts("pyinfra", [], threading.Event()))


def test_closing_the_deploy_early_cancels_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    started, stopped = threading.Event(), threading.Event()

    def body(
        on_event: Callable[[Event], None], cancel: threading.Event | None
    ) -> list[HostOutcome]:
        assert cancel is not None
        on_event(Progress("converge", 0, None, 1, 2, item="op 1", host="h1"))
        started.set()
        cancel.wait(10)  # a long operation that ends at the next safe point once cancelled
        stopped.set()
        raise Cancelled("cancelled")

    fake_engine(monkeypatch, body)
    cancel = threading.Event()
    gen = converge.converge_hosts("pyinfra", [], cancel)
    assert next(gen).item == "op 1"  # type: ignore[union-attr]
    assert started.wait(5)
    gen.close()  # e.g. Ctrl-C in the consumer, or the TUI leaving
    assert cancel.is_set() and stopped.wait(5)


def test_pyinfra_never_draws_its_own_spinner(tmp_path: Path) -> None:
    # In a subprocess whose stdout and stderr are a terminal (a pty), pyinfra as the engine
    # loads it must not take the terminal: the TUI draws there.
    import os
    import pty
    import subprocess
    import sys

    out = tmp_path / "seen"
    code = (
        "import sys, pathlib; from appliance.deploy.engines.pyinfra import _load_pyinfra; _load_pyinfra();"
        "import pyinfra.progress as p;"
        f"pathlib.Path({str(out)!r}).write_text(f'{{p.IS_TTY}} {{sys.stdout.isatty()}} {{sys.stderr.isatty()}}')"
    )
    leader, follower = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-c", code], stdout=follower, stderr=follower,
                                timeout=60, check=False)  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    assert out.read_text() == "False True True"  # a terminal was there; pyinfra saw none
