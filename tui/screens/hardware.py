"""Step 1, Hardware: what detection found (``appliance detect``), or a saved facts file.

Per host: OS, CPU and the flags llama.cpp cares about, RAM, disks, the GPU
status in one plain sentence (NVML problems included), a per-GPU table and,
with several GPUs, the topology matrix (NV = NVLink).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Button, DataTable, Label, Static

from tui.messages import Call, Detected, Failed
from tui.present import gib, gpu_warnings, host_summary
from tui.screens.base import StepScreen

if TYPE_CHECKING:
    from appliance.detect.facts import HostFacts


class HardwareScreen(StepScreen):
    STEP = "Hardware"
    ABOUT = """
What this machine has (or the hosts of the saved facts file given with
--facts): CPU, RAM, disks, and every NVIDIA GPU with its memory, compute
capability, MIG mode and NVLink. When NVML cannot be used the reason is
stated plainly; the next step never falls back to CPU without saying why.
"""

    def compose_body(self) -> ComposeResult:
        yield Label("Hardware", classes="title")
        yield VerticalScroll(Static("Reading the hardware...", id="loading"), id="hosts")

    def on_mount(self) -> None:
        self.query_one("#back", Button).disabled = True  # the first step
        facts = self.session.options.facts
        self.set_status(f"reading {facts}" if facts else "detecting this machine")
        self.call(Call.DETECT, lambda: self.backend.detect(facts), lambda r: Detected(*r))

    def on_detected(self, message: Detected) -> None:
        hosts, source = message.hosts, message.source
        self.session.hosts, self.session.facts_source = hosts, source
        self.session.invalidate_from("Profile")
        self.show(hosts, source)

    def show(self, hosts: tuple[HostFacts, ...], source: str) -> None:
        self.query_one(".title", Label).update(
            Text.assemble(("Hardware", "bold"), f" ({source}, {len(hosts)} host(s))")
        )
        container = self.query_one("#hosts", VerticalScroll)
        container.remove_children()
        widgets: list[Static | DataTable[str]] = []
        for facts in hosts:
            widgets.append(Static(host_summary(facts), classes="host"))
            if facts.gpu.gpus:
                widgets.append(self.gpu_table(facts))
            if len(facts.gpu.links) > 1:
                widgets.append(Static(Text("topology (NV = NVLink)", "bold")))
                widgets.append(self.topology_table(facts))
            if facts.gpu.warnings:
                widgets.append(Static(gpu_warnings(facts)))
        container.mount_all(widgets)
        self.set_status("OK: facts read; next: the profile")

    @staticmethod
    def gpu_table(facts: HostFacts) -> DataTable[str]:
        from appliance.plan.profiles import format_cc

        table: DataTable[str] = DataTable(cursor_type="none", zebra_stripes=True, classes="gpus")
        table.add_columns("#", "name", "memory", "free", "cc", "arch", "MIG", "NVLink")
        for g in facts.gpu.gpus:
            table.add_row(
                str(g.index), g.name, gib(g.memory_total_bytes), gib(g.memory_free_bytes),
                format_cc(g.compute_capability), g.architecture, g.mig_mode,
                str(g.nvlink_active_links),
            )  # fmt: skip
        table.styles.height = len(facts.gpu.gpus) + 1
        return table

    @staticmethod
    def topology_table(facts: HostFacts) -> DataTable[str]:
        links = facts.gpu.links
        table: DataTable[str] = DataTable(cursor_type="none", classes="topology")
        table.add_columns("", *[f"GPU{i}" for i in range(len(links))])
        for i, row in enumerate(links):
            table.add_row(f"GPU{i}", *row)
        table.styles.height = len(links) + 1
        return table

    def failed(self, failure: Failed) -> None:
        self.query_one("#loading", Static).update(
            "The hardware could not be read: fix the cause shown, then quit and start again."
        )
        super().failed(failure)

    def action_next(self) -> None:
        if not self.session.hosts:
            self.set_status("!! wait: the hardware has not been read yet")
            return
        self.done()
