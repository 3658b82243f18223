"""Step 6, Deploy: per-host progress, a live log of every event, and a safe cancel.

The deploy is the core's generator (``appliance.deploy.run.deploy``) drained
in a worker thread. Cancel (after a confirmation) sets the ``threading.Event``
the core was given: it stops at the next safe point, releases the host locks
and raises ``Cancelled`` (exit 130); the journal makes the next deploy resume.
Quitting while a deploy runs goes through the same cancel.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Button, RichLog

from tui.messages import Call, Deployed, EventEmitted, Failed
from tui.present import status_word, summary_line
from tui.screens.base import StepScreen
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.host_progress import HostProgress

if TYPE_CHECKING:
    from appliance.events import Event

CANCELLED = "cancelled — run deploy again to resume"


def event_line(event: Event) -> Text:
    """One log line per event, words first."""
    from appliance.events import Finished, Progress, Started, Warned

    if isinstance(event, Started):
        total = f" ({event.total_items} host(s))" if event.total_items else ""
        return Text(f"{event.operation}: started{total}")
    if isinstance(event, Progress):
        host = f"{event.host}: " if event.host else ""
        count = f"{event.done_items}/{event.total_items} " if event.done_items else ""
        return Text(f"{event.operation}: {host}{count}{event.item or ''}".rstrip())
    if isinstance(event, Warned):
        return Text.assemble(("!! ", "bold yellow"), f"{event.operation}: {event.message}")
    assert isinstance(event, Finished)
    return Text(f"{event.operation}: {event.message}")


class DeployScreen(StepScreen):
    STEP = "Deploy"
    ABOUT = """
The deploy converges each model-server host to the plan with pyinfra, then
activates the new release's unit, checks its health, and only then switches
`current`; a release that fails its health check is rolled back. Every step
is journaled on the host and audited.

Cancel stops at the next safe point (between two engine operations), releases
the host locks, and leaves the journal: deploying again resumes.
"""
    KEYS = (("c", "cancel the deploy (asks first)"),)
    BINDINGS: ClassVar[list[BindingType]] = [Binding("c", "cancel", "Cancel deploy")]

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.running = False
        self.quit_after = False

    def compose_body(self) -> ComposeResult:
        inventory = self.session.inventory
        assert inventory is not None
        with Vertical(id="host-rows"):
            for host in inventory.with_role("model-server"):
                yield HostProgress(host.name)
        log = RichLog(
            id="log", wrap=True, min_width=20, markup=False, highlight=False, max_lines=5000
        )
        log.border_title = "log"
        yield log

    def on_mount(self) -> None:
        session = self.session
        verified, inventory, profile = session.verified, session.inventory, session.profile
        assert verified is not None and inventory is not None and profile is not None
        self.running = True
        self.query_one("#back", Button).disabled = True
        self.query_one("#next", Button).disabled = True
        self.set_status("deploying (c: cancel)")
        cancel, force, site = self.cancel, session.force, session.site
        self.stream(
            Call.DEPLOY,
            lambda: self.backend.deploy(
                verified, inventory, profile=profile, force=force, site=site, cancel=cancel
            ),
            Deployed,
        )

    def row(self, host: str | None) -> HostProgress | None:
        for row in self.query(HostProgress):
            if row.host == host:
                return row
        return None

    def on_event_emitted(self, message: EventEmitted) -> None:
        from appliance.events import Progress

        event = message.event
        self.query_one("#log", RichLog).write(event_line(event))
        if not isinstance(event, Progress):
            return
        if event.operation == "plan" and (row := self.row(event.item)):
            row.update_progress(0, 1, "planned")
        elif event.operation == "converge" and (row := self.row(event.host)):
            row.update_progress(event.done_items, event.total_items, event.item or "")
        elif event.operation == "deploy" and event.item and ": " in event.item:
            host, _, state = event.item.partition(": ")
            if row := self.row(host):
                row.update_progress(1, 1, state)

    def on_deployed(self, message: Deployed) -> None:
        from appliance.exitcodes import ExitCode

        self.running = False
        results = message.results
        self.session.results = results
        for result in results:
            if row := self.row(result.host):
                row.finish(status_word(result.status), result.message)
        summary = summary_line(results)
        self.query_one("#log", RichLog).write(summary)
        failed = any(r.status in ("failed", "rolled-back") for r in results)
        self.installer.exit_code = ExitCode.DEPLOYMENT_FAILED if failed else ExitCode.OK
        self.set_status(summary)
        self.query_one("#next", Button).disabled = False
        self.query_one("#back", Button).disabled = False
        if self.quit_after:
            self.app.exit(self.installer.exit_code)

    def failed(self, failure: Failed) -> None:
        from appliance.exitcodes import ExitCode

        error = failure.error
        self.running = False
        self.query_one("#back", Button).disabled = False
        self.installer.exit_code = int(error.exit_code)
        log = self.query_one("#log", RichLog)
        if error.exit_code == ExitCode.INTERRUPTED:
            log.write(Text.assemble(("!! ", "bold yellow"), error.message))
            log.write(Text(CANCELLED, "bold"))
            for row in self.query(HostProgress):
                row.finish(Text("CANCELLED", "bold yellow"), "stopped at a safe point")
            self.set_status(Text.assemble(("!! ", "bold yellow"), CANCELLED))
            if self.quit_after:
                self.app.exit(self.installer.exit_code)
            return
        log.write(Text.assemble(("FAIL ", "bold red"), error.message))
        super().failed(failure)
        if self.quit_after:
            self.app.exit(self.installer.exit_code)

    def action_cancel(self) -> None:
        if not self.running:
            return
        if self.cancel.is_set():
            self.set_status("!! cancelling: waiting for the next safe point")
            return
        body = (
            "The deploy stops at the next safe point (between two engine operations), "
            "releases the host locks and keeps the journal: deploying again resumes "
            "where it stopped."
        )

        def answered(yes: bool | None) -> None:
            if yes and self.running:
                self.cancel.set()
                self.query_one("#log", RichLog).write(
                    Text("cancel requested: stopping at the next safe point", "bold")
                )
                self.set_status("!! cancelling: waiting for the next safe point")
            else:
                self.quit_after = False

        self.app.push_screen(
            ConfirmDialog("Cancel the deploy?", body, yes="Cancel deploy", no="Keep deploying"),
            answered,
        )

    def action_back(self) -> None:
        if self.running:
            self.action_cancel()
        else:
            self.session.invalidate_from("Plan")
            super().action_back()

    def action_next(self) -> None:
        if self.running:
            self.set_status("!! wait: the deploy is running (c: cancel)")
            return
        if self.session.results is None:
            self.set_status("!! no result: go back to the plan review to deploy again")
            return
        self.done()

    def request_quit(self) -> bool:
        if not self.running:
            return True
        self.quit_after = True
        self.action_cancel()
        return False
