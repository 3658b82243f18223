"""The engine's converge run, and how a deploy stops: cancel, Ctrl-C, SIGTERM.

The engine (pyinfra or Ansible) runs in a worker thread; its per-host events
(``Progress(operation="converge", host=...)``) are yielded to the caller as they
come (``converge_hosts``). A deploy stops only at a safe point: ``cancel`` (a
``threading.Event``, the TUI's Cancel) is checked before the locks are taken,
between two engine operations and before activation (``stop_if_cancelled``);
Ctrl-C, or SIGTERM in the main thread (``sigterm_as_interrupt``), stops the
engine too. Each locked host's journal then says at which stage and how the
deploy stopped (``journal_cancelled``); running the deploy again resumes.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

from appliance.deploy import engines
from appliance.deploy.host_desired import HostDesired, HostOutcome
from appliance.deploy.journal import Journal
from appliance.errors import ApplianceError, Cancelled
from appliance.events import Event
from appliance.plan.inventory import HostEntry

_DONE = object()
# After Ctrl-C, how long the engine gets to reach its next safe point before the
# deployer exits anyway (a kill at any moment is safe too: the journal resumes).
_CANCEL_GRACE = 10.0


def converge_hosts(
    engine: str, plans: Sequence[HostDesired], cancel: threading.Event
) -> Generator[Event, None, dict[str, tuple[bool, str]]]:
    """Run the engine (``engines.engine(name)``, the registry) in a worker thread; yield its
    per-host progress as it comes."""
    converge = engines.engine(engine).converge

    events: queue.Queue[object] = queue.Queue()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["outcomes"] = converge(plans, on_event=events.put, cancel=cancel)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            events.put(_DONE)

    worker = threading.Thread(target=work, name=f"converge-{engine}", daemon=True)
    worker.start()
    try:
        while (event := events.get()) is not _DONE:
            yield event  # type: ignore[misc]
    except BaseException:  # Ctrl-C, SIGTERM, or the consumer closed us: stop the engine too
        cancel.set()
        worker.join(_CANCEL_GRACE)
        raise
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    outcomes: list[HostOutcome] = box["outcomes"]  # type: ignore[assignment]
    return {o.name: (o.ok, o.message) for o in outcomes}


@dataclass
class Signals:
    sigterm: bool = False  # a SIGTERM arrived (the KeyboardInterrupt it raised was not Ctrl-C)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Signals]:
    """In the main thread, SIGTERM stops the deploy like Ctrl-C (engine stopped, locks released)."""
    seen = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def interrupt(signum: int, frame: object) -> None:
        seen.sigterm = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def journal_cancelled(
    hosts: Sequence[HostEntry],
    deploy_id: str,
    stage: str,
    exc: BaseException,
    signals: Signals,
) -> None:
    """Journal, on every locked host, that the deploy was cancelled, at which stage and how."""
    how = (
        "cancelled by the operator"
        if isinstance(exc, Cancelled)
        else "SIGTERM"
        if signals.sigterm
        else "interrupted (Ctrl-C)"
    )
    for host in hosts:
        with contextlib.suppress(ApplianceError):
            Journal(host, deploy_id).record(stage, "cancelled", by=how)


def stop_if_cancelled(cancel: threading.Event, where: str) -> None:
    if cancel.is_set():
        raise Cancelled(f"deploy cancelled by the operator {where}; deploy again to resume")
