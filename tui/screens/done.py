"""Step 7, Done: per host the outcome, the endpoint, the smoke-test answer and the audit record.

The smoke test is the core's ``appliance.deploy.smoke.chat``: one question to
the model server through an SSH tunnel, asked from this machine. How to obtain
a token is ``tui.present.TOKEN_HOWTO`` (one place, it changes with the
gateway).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from tui.messages import Answered
from tui.present import TOKEN_HOWTO, host_outcome, summary_line
from tui.screens.base import StepScreen

if TYPE_CHECKING:
    from appliance.deploy.run import HostResult
    from appliance.deploy.smoke import ChatAnswer
    from appliance.errors import ApplianceError

SERVING = ("converged", "unchanged")


class DoneScreen(StepScreen):
    STEP = "Done"
    ABOUT = """
What was deployed, per host: the outcome, the endpoint the model server
listens on, the answer of the smoke test (one question asked from this machine
through an SSH tunnel), and the id of the audit record the deploy wrote on the
host (check the chain with `appliance audit verify --inventory FILE`).
"""
    NEXT_LABEL = "Quit"

    def compose_body(self) -> ComposeResult:
        results = self.session.results or []
        with VerticalScroll(id="done-body"):
            yield Static(summary_line(results), id="summary")
            for result in results:
                yield Static(self.host_text(result), id=f"host-{result.host}", classes="host-done")
            yield Label(Text("How to obtain a token", "bold"))
            yield Static(TOKEN_HOWTO, id="token")

    @staticmethod
    def host_text(
        result: HostResult, answer: ChatAnswer | None = None, smoke: Text | str | None = None
    ) -> Text:
        lines = [host_outcome(result)]
        if result.port is not None:
            endpoint = (
                answer.endpoint if answer else f"http://127.0.0.1:{result.port}/v1 on {result.host}"
            )
            lines.append(Text(f"  endpoint: {endpoint} (the host's loopback only)"))
        lines.append(Text(f"  audit record: {result.audit_hash or 'none written'}"))
        if answer is not None:
            lines.append(Text.assemble("  smoke test: ", ("OK", "bold green"), f" {answer.model} answered "
                                       f"({answer.completion_tokens} tokens):"))  # fmt: skip
            lines.append(Text(f"    {answer.text.strip()}"))
        elif smoke is not None:
            lines.append(Text.assemble("  smoke test: ", smoke))
        return Text("\n").join(lines)

    def on_mount(self) -> None:
        inventory = self.session.inventory
        assert inventory is not None
        entries = {h.name: h for h in inventory.hosts}
        for result in self.session.results or []:
            if result.status not in SERVING or result.port is None:
                self.show(result, smoke="not run (the host is not serving)")
                continue
            self.show(result, smoke="asking the model one question...")
            host, port = entries[result.host], result.port
            self.call(
                f"smoke:{result.host}",
                partial(self.backend.smoke_test, host, port=port),
            )
        self.set_status("finished; Quit when done")

    def result(self, name: str) -> HostResult:
        return next(r for r in self.session.results or [] if r.host == name)

    def show(
        self, result: HostResult, answer: ChatAnswer | None = None, smoke: Text | str | None = None
    ) -> None:
        self.query_one(f"#host-{result.host}", Static).update(self.host_text(result, answer, smoke))

    def on_answered(self, message: Answered) -> None:
        name = message.what.removeprefix("smoke:")
        self.show(self.result(name), answer=message.result)

    def failed(self, what: str, error: ApplianceError) -> None:
        name = what.removeprefix("smoke:")
        self.show(self.result(name), smoke=Text.assemble(("FAIL ", "bold red"), error.message))
        super().failed(what, error)

    def action_next(self) -> None:
        self.app.exit(self.appliance.exit_code)
