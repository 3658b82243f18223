"""Step 5, Plan review: the dry run, per host (``appliance deploy --dry-run``).

The core plans every model-server host from its own facts (read over SSH),
checks the fit, and diffs the desired state against the host; nothing is
changed. Deploying asks for a confirmation, as the CLI does without --yes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from tui.messages import Call, EventEmitted, Failed, Reviewed
from tui.present import host_changes, site_line
from tui.screens.base import StepScreen
from tui.screens.dialogs import ConfirmDialog

if TYPE_CHECKING:
    from appliance.deploy.run import HostResult


class ReviewScreen(StepScreen):
    STEP = "Plan"
    ABOUT = """
The dry run: for every model-server host, appliance reads the host's facts
over SSH, plans the chosen profile with the bundle's model (a model that does
not fit stops here unless you overrode the profile), and lists what would
change: directories, release files with their digests, the virtualenv, the
unit and environment files, the active release. With a site file (--site),
also the authenticating gateway (TLS on port 8443 of each host's address) and
each host's nftables firewall; without one, the model server alone, on each
host's loopback. Nothing is changed until you confirm the deploy.
"""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.shown: list[HostResult] | None = None

    def compose_body(self) -> ComposeResult:
        session = self.session
        verified, inventory = session.verified, session.inventory
        assert verified is not None and inventory is not None
        forced = " (forced: does not fit)" if session.force else ""
        yield Label(Text("Plan review (dry run)", "bold"), classes="title")
        yield Static(
            f"profile {session.profile and session.profile.name}{forced}, bundle {verified.name} version {verified.version}, "
            f"{len(inventory.with_role('model-server'))} model server(s)",
            id="review-head",
        )
        yield Static(site_line(session.site), id="review-site")
        with VerticalScroll(id="changes"):
            yield Static("Asking the hosts...", id="review-wait")

    def on_mount(self) -> None:
        self.start()

    def on_screen_resume(self) -> None:
        # Back from the deploy: the hosts have changed since this diff was shown.
        if self.shown is not None and self.session.review is None and not self.running:
            self.start()

    def start(self) -> None:
        session = self.session
        verified, inventory, profile = session.verified, session.inventory, session.profile
        assert verified is not None and inventory is not None and profile is not None
        self.running = True
        session.invalidate_from("Plan")
        self.set_status("dry run: planning each host")
        self.stream(
            Call.REVIEW,
            lambda: self.backend.review(
                verified, inventory, profile=profile, force=session.force, site=session.site
            ),
            Reviewed,
        )

    def on_event_emitted(self, message: EventEmitted) -> None:
        from appliance.events import Progress, Warned

        event = message.event
        if isinstance(event, Progress) and event.item:
            self.set_status(f"planned {event.done_items} of {event.total_items}: {event.item}")
        elif isinstance(event, Warned):
            self.notify(event.message, title="!! warning", severity="warning")

    def on_reviewed(self, message: Reviewed) -> None:
        self.running = False
        results = message.results
        self.session.review = self.shown = results
        container = self.query_one("#changes", VerticalScroll)
        container.remove_children()
        container.mount_all([Static(host_changes(r), classes="host-changes") for r in results])
        total = sum(len(r.changes) for r in results)
        self.set_status(
            Text.assemble(
                ("OK ", "bold green"),
                f"{total} change(s) on {len(results)} host(s); Next to deploy",
            )
        )

    def failed(self, failure: Failed) -> None:
        self.running = False
        self.query_one("#changes", VerticalScroll).remove_children()
        self.query_one("#changes", VerticalScroll).mount(
            Static(Text.assemble(("FAIL ", "bold red"), "the dry run failed; Next tries again."))
        )
        super().failed(failure)

    def action_next(self) -> None:
        if self.running:
            self.set_status("!! wait: the dry run is running")
            return
        results = self.session.review
        if results is None:
            self.start()
            return
        verified = self.session.verified
        assert verified is not None
        lines = [
            f"- {r.host}: {len(r.changes)} change(s)" if r.changes else f"- {r.host}: up to date"
            for r in results
        ]
        body = (
            "\n".join(lines)
            + f"\n\n{site_line(self.session.site)}"
            + f"\n\nDeploy {verified.name} version {verified.version} to {len(results)} host(s)? "
            "Hosts are locked while it runs; Cancel stops at the next safe point."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.done()

        self.app.push_screen(ConfirmDialog("Deploy these changes?", body, yes="Deploy"), answered)
