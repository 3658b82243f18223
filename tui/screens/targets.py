"""Step 4, Targets: an inventory file, or a lab's, and SSH reachability of every host.

The inventory is read by the core's strict loader (``appliance.plan.inventory``);
labs come from ``appliance lab list``; each host is checked with one SSH login
(``appliance.deploy.transport.reachable``), in parallel threads, and its answer
is shown as a word (OK, FAIL) with what SSH said.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.messages import Call, Failed, InventoryLoaded, LabsListed, Reached
from tui.screens.base import StepScreen

if TYPE_CHECKING:
    from appliance.lab import LabInfo
    from appliance.plan.inventory import Inventory

CHECKING = "checking"


def reached(host: str, answer: tuple[bool, str]) -> Reached:
    ok, detail = answer
    return Reached(host, ok, detail)


class TargetsScreen(StepScreen):
    STEP = "Targets"
    ABOUT = """
Where to deploy: an inventory file (docs/inventory.md), or the inventory of a
lab started on this machine with `appliance lab up`. Every host is checked
with one SSH login (batch mode, pinned host keys when the inventory gives
them). The model-server hosts must all answer before the plan review.
"""
    KEYS = (("enter", "in the field: load; in the lab list: use that lab"),)

    def compose_body(self) -> ComposeResult:
        inventory = self.session.options.inventory
        with VerticalScroll(id="targets-body"):
            yield Label("Inventory file:")
            with Horizontal(classes="field"):
                yield Input(
                    str(inventory or ""), placeholder="e.g. site/inventory.yml", id="inventory-path"
                )
                yield Button("Load", id="load", variant="primary", compact=True)
            yield Label("Lab hosts on this machine (enter to use a lab's inventory):")
            yield OptionList(Option("looking for labs...", disabled=True), id="labs")
            yield DataTable(cursor_type="row", id="hosts")
            yield Static("", id="reach-detail")

    def on_mount(self) -> None:
        table = self.query_one("#hosts", DataTable)
        for key, label in (
            ("host", "host"),
            ("address", "address"),
            ("roles", "roles"),
            ("ssh", "SSH"),
        ):
            table.add_column(label, key=key)
        self.session.invalidate_from("Targets")  # this screen's table is empty: so is the choice
        self.call(Call.LABS, self.backend.labs, LabsListed)
        if self.session.options.inventory is not None:
            self.load(self.session.options.inventory)
        else:
            self.set_status("give an inventory file or choose a lab")

    def load(self, path: Path) -> None:
        self.session.invalidate_from("Targets")
        self.session.inventory_path = path
        self.query_one("#hosts", DataTable).clear()
        self.query_one("#reach-detail", Static).update("")
        self.set_status(f"reading {path}")
        self.call(Call.INVENTORY, lambda: self.backend.load_inventory(path), InventoryLoaded)

    def on_labs_listed(self, message: LabsListed) -> None:
        self.show_labs(message.labs)

    def on_inventory_loaded(self, message: InventoryLoaded) -> None:
        self.show_inventory(message.inventory)

    def on_reached(self, message: Reached) -> None:
        name, ok, detail = message.host, message.ok, message.detail
        if self.session.inventory is None or name not in {
            h.name for h in self.session.inventory.hosts
        }:
            return  # an answer about an inventory no longer shown
        self.session.reachability[name] = (ok, detail)
        word = Text("OK", "bold green") if ok else Text("FAIL", "bold red")
        self.query_one("#hosts", DataTable).update_cell(name, "ssh", word)
        self.show_details()

    def show_labs(self, labs: list[LabInfo]) -> None:
        options = self.query_one("#labs", OptionList)
        options.clear_options()
        usable = [lab for lab in labs if lab.inventory is not None]
        for lab in usable:
            options.add_option(
                Option(
                    f"{lab.name}  {lab.status}  {lab.subnet or '-'}  {len(lab.hosts)} host(s)  "
                    f"inventory {lab.inventory}",
                    id=str(lab.inventory),
                )
            )
        if usable:
            options.highlighted = 0
        else:
            options.add_option(
                Option("none (start one with `appliance lab up --name NAME`)", disabled=True)
            )

    def show_inventory(self, inventory: Inventory) -> None:
        self.session.inventory = inventory
        self.session.reachability = {}
        table = self.query_one("#hosts", DataTable)
        table.clear()
        for host in inventory.hosts:
            table.add_row(
                host.name, f"{host.address}:{host.ssh.port}", ", ".join(host.roles), CHECKING,
                key=host.name,
            )  # fmt: skip
            self.call(
                Call.REACH,
                partial(self.backend.reachable, host),
                partial(reached, host.name),
                host=host.name,
            )
        table.styles.height = min(len(inventory.hosts) + 1, 12)
        servers = inventory.with_role("model-server")
        self.set_status(
            f"{len(inventory.hosts)} host(s), {len(servers)} model server(s): checking SSH"
        )

    def show_details(self) -> None:
        inventory = self.session.inventory
        if inventory is None:
            return
        lines = Text()
        for host in inventory.hosts:
            ok, detail = self.session.reachability.get(host.name, (None, CHECKING))
            word = {
                True: ("OK   ", "bold green"),
                False: ("FAIL ", "bold red"),
                None: ("...  ", ""),
            }[ok]
            lines.append_text(Text.assemble(word, f"{host.name}: {detail}\n"))
        self.query_one("#reach-detail", Static).update(lines)
        if len(self.session.reachability) == len(inventory.hosts):
            bad = [n for n, (ok, _) in self.session.reachability.items() if not ok]
            self.set_status(
                Text.assemble(("FAIL ", "bold red"), f"not reachable: {', '.join(bad)}")
                if bad
                else Text.assemble(("OK ", "bold green"), "every host answered over SSH")
            )

    def failed(self, failure: Failed) -> None:
        if failure.call is Call.INVENTORY:
            self.session.inventory = None
        super().failed(failure)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.load(Path(event.value.strip()))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.query_one("#inventory-path", Input).value = event.option.id
            self.load(Path(event.option.id))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "load":
            event.stop()
            value = self.query_one("#inventory-path", Input).value.strip()
            if value:
                self.load(Path(value))
        else:
            super().on_button_pressed(event)

    def action_next(self) -> None:
        inventory = self.session.inventory
        if inventory is None:
            self.set_status("!! load an inventory first")
            return
        servers = inventory.with_role("model-server")
        if not servers:
            self.set_status("!! the inventory has no host with the model-server role")
            return
        reach = self.session.reachability
        waiting = [h.name for h in servers if h.name not in reach]
        if waiting:
            self.set_status(f"!! wait: SSH check running for {', '.join(waiting)}")
            return
        bad = [h.name for h in servers if not reach[h.name][0]]
        if bad:
            self.set_status(
                Text.assemble(
                    ("FAIL ", "bold red"), f"fix SSH to {', '.join(bad)}, then Load again"
                )
            )
            return
        self.done()
