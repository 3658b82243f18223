"""Step 7, Done: what was deployed (base and adapters), then per host the outcome, the
endpoint, the smoke-test answer and the audit record.

The smoke test is the core's ``appliance.report.smoke.chat``: one question to
the model server through an SSH tunnel, asked from this machine. With a site
file each host also shows the gateway's endpoint and its firewall, and the
screen says how a caller gets a token (``tui.present.token_howto``); without
one, how to reach the loopback-only server and how to get the gateway
(``tui.present.NO_GATEWAY_HOWTO``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from tui.messages import Call, Failed, SmokeAnswered
from tui.present import (
    NO_GATEWAY_HOWTO,
    NO_GATEWAY_TITLE,
    TOKEN_TITLE,
    deployed_models,
    host_access,
    host_outcome,
    summary_line,
    token_howto,
)
from tui.screens.base import StepScreen

if TYPE_CHECKING:
    from appliance.deploy.run import HostResult
    from appliance.report.smoke import ChatAnswer

SERVING = ("converged", "unchanged")


class DoneScreen(StepScreen):
    STEP = "Done"
    ABOUT = """
What was deployed: the bundle's base model and adapters (provider, licences,
the findings of each adapter's transparency record); then, per host: the outcome, the endpoint (with a site file, the
gateway's https://ADDRESS:8443/v1 and the loaded firewall; without, the model
server on the host's loopback), the answer of the smoke test (one question
asked the model server from this machine through an SSH tunnel), and the id of
the audit record the deploy wrote on the host (check the chain with
`appliance audit verify --inventory FILE`). Below: how a caller gets a token
for the gateway, or, without a site file, how to reach the model server.
"""
    NEXT_LABEL = "Quit"

    def compose_body(self) -> ComposeResult:
        results = self.session.results or []
        with VerticalScroll(id="done-body"):
            yield Static(summary_line(results), id="summary")
            verified = self.session.verified
            if verified is not None:
                yield Static(deployed_models(verified), id="deployed", markup=False)
            for result in results:
                yield Static(self.host_text(result), id=f"host-{result.host}", classes="host-done")
            site = self.session.site
            if site is not None and any(r.gateway_port is not None for r in results):
                tokens = site.config.tokens
                yield Label(Text(TOKEN_TITLE, "bold"))
                yield Static(token_howto(tokens.issuer, tokens.audience), id="token", markup=False)
            else:
                yield Label(Text(NO_GATEWAY_TITLE, "bold"))
                yield Static(NO_GATEWAY_HOWTO, id="token", markup=False)

    def host_text(
        self, result: HostResult, answer: ChatAnswer | None = None, smoke: Text | str | None = None
    ) -> Text:
        inventory = self.session.inventory
        entry = (
            next((h for h in inventory.hosts if h.name == result.host), None) if inventory else None
        )
        address = entry.address if entry is not None else result.host
        lines = [host_outcome(result)]
        lines += [
            Text(line) for line in host_access(result, address, answer.endpoint if answer else None)
        ]
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
                Call.SMOKE,
                partial(self.backend.smoke_test, host, port=port),
                partial(SmokeAnswered, result.host),
                host=result.host,
            )
        self.set_status("finished; Quit when done")

    def result(self, name: str) -> HostResult:
        return next(r for r in self.session.results or [] if r.host == name)

    def show(
        self, result: HostResult, answer: ChatAnswer | None = None, smoke: Text | str | None = None
    ) -> None:
        self.query_one(f"#host-{result.host}", Static).update(self.host_text(result, answer, smoke))

    def on_smoke_answered(self, message: SmokeAnswered) -> None:
        self.show(self.result(message.host), answer=message.answer)

    def failed(self, failure: Failed) -> None:
        assert failure.host is not None  # the smoke test is the one call here, about one host
        smoke = Text.assemble(("FAIL ", "bold red"), failure.error.message)
        self.show(self.result(failure.host), smoke=smoke)
        super().failed(failure)

    def action_next(self) -> None:
        self.done()  # the last step: the app ends the run
