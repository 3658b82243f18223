"""Step 5, Plan review: the dry run, per host (``appliance deploy --dry-run``).

The core plans every model-server host from its own facts (read over SSH),
checks the fit, runs the preflights and diffs the desired state against the
host; nothing is changed. Each host shows its preflights (PASS, FAIL, WARN,
SKIP with what was found, what was expected and what to do), the engine
command planned for it (vLLM or llama.cpp), then its changes.

Invariant: the deploy is offered only when no preflight fails that the deploy
would refuse on (``appliance.plan.preflight.failures``, the operator's force
accepting the forceable ones); otherwise Next shows the refusal the CLI would
print (``PreflightError``, exit 3) and the next Next runs the dry run again.
Deploying asks for a confirmation, as the CLI does without --yes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from tui.messages import Call, EventEmitted, Failed, Reviewed
from tui.present import blocking_preflights, host_review, preflight_summary, site_line
from tui.screens.base import StepScreen
from tui.screens.dialogs import ConfirmDialog, ErrorDialog

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
host's loopback.

Each host first shows its preflights: what must hold before a deploy changes
it (the NVIDIA driver against the bundle's CUDA wheels, compute capability,
MIG, GPU memory in use, /dev/shm, the engine's system libraries, disk, fit),
each PASS, FAIL, WARN or SKIP with what was found, what was expected and what
to do; then the engine command planned for it (vLLM or llama.cpp). A FAIL
blocks the deploy: fix it on the host, then Next runs the dry run again.
Nothing is changed until you confirm the deploy.
"""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.shown: list[HostResult] | None = None
        self.recheck = False  # a blocked deploy was refused: the next Next asks the hosts again

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
        self.running, self.recheck = True, False
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
        forced, engine = self.session.force, self.engine_kind()
        container.mount_all(
            [Static(preflight_summary(results, forced=forced), classes="review-preflights")]
            + [
                Static(host_review(r, forced=forced, engine=engine), classes="host-changes")
                for r in results
            ]
        )
        total = sum(len(r.changes) for r in results)
        blocking = blocking_preflights(results, forced=forced)
        if blocking:
            self.set_status(
                Text.assemble(
                    ("FAIL ", "bold red"),
                    f"deploy blocked: {len(blocking)} preflight check(s) failed "
                    f"({', '.join(f'{r.host} {r.name}' for r in blocking)})",
                )
            )
            return
        self.set_status(
            Text.assemble(
                ("OK ", "bold green"),
                f"{total} change(s) on {len(results)} host(s); Next to deploy",
            )
        )

    def engine_kind(self) -> str:
        profile = self.session.profile
        return "" if profile is None else profile.engine.kind

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
        if results is None or self.recheck:
            self.start()
            return
        verified = self.session.verified
        assert verified is not None
        if blocking_preflights(results, forced=self.session.force):
            self.refuse_deploy(results)
            return
        lines = [
            f"- {r.host}: {len(r.changes)} change(s)" if r.changes else f"- {r.host}: up to date"
            for r in results
        ]
        body = (
            "\n".join(lines)
            + f"\n\n{preflight_summary(results, forced=self.session.force).plain}"
            + f"\n\n{site_line(self.session.site)}"
            + f"\n\nDeploy {verified.name} version {verified.version} to {len(results)} host(s)? "
            "Hosts are locked while it runs; Cancel stops at the next safe point."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.done()

        self.app.push_screen(ConfirmDialog("Deploy these changes?", body, yes="Deploy"), answered)

    def refuse_deploy(self, results: list[HostResult]) -> None:
        """A preflight the deploy would refuse on failed: say so as the CLI's deploy would
        (``PreflightError``, exit 3), offer no deploy, and ask the hosts again on the next Next."""
        from appliance.errors import PreflightError
        from appliance.plan.preflight import refuse

        rows = [row for r in results for row in r.preflights]
        try:
            refuse(rows, force=self.session.force)
        except PreflightError as exc:
            self.recheck = True
            self.set_status(
                Text.assemble(
                    ("FAIL ", "bold red"),
                    "deploy refused: a preflight failed; fix it on the host, then Next "
                    "runs the dry run again",
                )
            )
            self.app.push_screen(ErrorDialog(exc))
