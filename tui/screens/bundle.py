"""Step 3, Bundle: verify a bundle against this site's trusted root (``appliance bundle verify``).

Verification is the core's ordered, all-or-nothing generator; its progress
events drive the bar (bytes) and the counter (files). Only a verified bundle
lets the operator go on: then its signers, version, expiry, and the licences
and provenance of the model and adapters are shown.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, ProgressBar, Static

from tui.messages import Call, EventEmitted, Failed, Verified
from tui.present import bundle_summary, progress_line
from tui.screens.base import StepScreen


class BundleScreen(StepScreen):
    STEP = "Bundle"
    ABOUT = """
The bundle directory (copied from the medium, or joined from split media with
`appliance bundle join`) and this site's trusted root (root.json). Verify
checks, in order: the root, any root rotation, the manifest's signatures and
threshold, expiry, the exact file set and sizes, then the SHA-256 of every
file. Nothing from a bundle that fails is used.
"""
    KEYS = (("enter", "in a field: verify"),)

    def __init__(self) -> None:
        super().__init__()
        self.verifying = False
        self.finished = ""
        self.last_line = ""

    def compose_body(self) -> ComposeResult:
        options = self.session.options
        with VerticalScroll(id="bundle-body"):
            yield Label("Bundle directory:")
            yield Input(
                str(options.bundle or ""), placeholder="e.g. /media/usb/demo-1", id="bundle-path"
            )
            yield Label("Trusted root of this site (root.json):")
            with Horizontal(classes="field"):
                yield Input(
                    str(options.trust or ""),
                    placeholder="e.g. /etc/appliance/root.json",
                    id="trust-path",
                )
                yield Button("Verify", id="verify", variant="primary", compact=True)
            yield ProgressBar(show_eta=False, id="verify-bar")
            yield Static("", id="verify-progress")
            yield Static("Not verified yet.", id="bundle-result")

    def on_mount(self) -> None:
        # Arriving here (again) means verifying (again): the medium may have changed meanwhile.
        self.session.invalidate_from("Bundle")
        self.query_one("#verify-bar", ProgressBar).display = False
        self.set_status("give the bundle and the trusted root, then Verify")

    def paths(self) -> tuple[Path, Path] | None:
        bundle = self.query_one("#bundle-path", Input).value.strip()
        trust = self.query_one("#trust-path", Input).value.strip()
        if not bundle or not trust:
            return None
        return Path(bundle), Path(trust)

    def start_verify(self) -> None:
        paths = self.paths()
        if paths is None:
            self.set_status("!! give both the bundle directory and the trusted root")
            return
        if self.verifying:
            return
        self.verifying = True
        self.session.invalidate_from("Bundle")
        bundle, trust = paths
        self.query_one("#bundle-result", Static).update(f"Verifying {bundle} against {trust}...")
        self.query_one("#verify-progress", Static).update("")
        self.query_one("#verify", Button).disabled = True
        self.set_status("verifying")
        self.stream(Call.VERIFY, lambda: self.backend.verify(bundle, trust), Verified)

    def on_event_emitted(self, message: EventEmitted) -> None:
        from appliance.events import Finished, Progress, Started, Warned

        event = message.event
        bar = self.query_one("#verify-bar", ProgressBar)
        label = self.query_one("#verify-progress", Static)
        if isinstance(event, Started) and event.total_bytes is not None:
            bar.display = True
            bar.update(total=max(event.total_bytes, 1), progress=0)
            self.last_line = progress_line(0, event.total_bytes, 0, event.total_items)
            label.update(self.last_line)
        elif isinstance(event, Progress):
            bar.display = True
            bar.update(total=max(event.total_bytes or 1, 1), progress=event.done_bytes)
            line = progress_line(
                event.done_bytes, event.total_bytes, event.done_items, event.total_items
            )
            self.last_line = f"{line}: {event.item}" if event.item else line
            label.update(self.last_line)
        elif isinstance(event, Warned):
            self.notify(event.message, title="!! warning", severity="warning")
        elif isinstance(event, Finished):
            self.finished = event.message

    def on_verified(self, message: Verified) -> None:
        self.verifying = False
        self.query_one("#verify", Button).disabled = False
        verified = message.verified
        self.session.verified = verified
        if self.finished:
            progress = self.query_one("#verify-progress", Static)
            progress.update(
                Text.assemble(self.last_line, "\n", ("OK ", "bold green"), self.finished)
            )
        self.query_one("#bundle-result", Static).update(bundle_summary(verified))
        self.set_status(
            Text.assemble(("OK ", "bold green"), f"verified version {verified.version}")
        )

    def failed(self, failure: Failed) -> None:
        self.verifying = False
        self.query_one("#verify", Button).disabled = False
        self.query_one("#bundle-result", Static).update(
            Text.assemble(("NOT VERIFIED: ", "bold red"), "nothing from this bundle will be used.")
        )
        super().failed(failure)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "bundle-path" and not self.query_one("#trust-path", Input).value:
            self.query_one("#trust-path", Input).focus()
        else:
            self.start_verify()

    def on_input_changed(self, event: Input.Changed) -> None:
        # A verified bundle stands for the paths it was verified at.
        if self.session.verified is not None and not self.verifying:
            self.session.invalidate_from("Bundle")
            self.query_one("#bundle-result", Static).update("Changed: verify again.")
            self.set_status("give the bundle and the trusted root, then Verify")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "verify":
            event.stop()
            self.start_verify()
        else:
            super().on_button_pressed(event)

    def action_next(self) -> None:
        if self.verifying:
            self.set_status("!! wait: verification is running")
            return
        if self.session.verified is None:
            self.start_verify()
            return
        self.done()
