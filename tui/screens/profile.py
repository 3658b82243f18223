"""Step 2, Profile: the recommended profile and its evidence, every rejection, the fit report.

The same plan ``appliance plan`` prints (``appliance.plan.report.build_plan``). The
operator may choose another profile; one that does not match the hardware, or
under which the model does not fit, needs a confirmation, and the deploy is
then forced (as ``appliance deploy --force``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.messages import Call, Failed, ModelLoaded, Planned, ProfilesListed
from tui.present import (
    candidate_label,
    fit_report,
    misfit_reasons,
    model_summary,
    selection_summary,
)
from tui.screens.base import StepScreen
from tui.screens.dialogs import ConfirmDialog

if TYPE_CHECKING:
    from appliance.plan.report import Plan

AUTO = "auto"


class ProfileScreen(StepScreen):
    STEP = "Profile"
    ABOUT = """
The profile appliance recommends for this hardware, the evidence it used, and
every other profile with the reason it was rejected. Give a model (a Hugging
Face directory or a GGUF file) to see whether it fits: weights + KV cache at
the context + engine overhead, against the memory budget.

Choose another profile in the list if you must. If it does not match the
hardware, or the model does not fit under it, you are asked to confirm and the
deploy is forced: the model may run out of memory.
"""
    KEYS = (("up / down", "move in the profile list"),)

    def __init__(self) -> None:
        super().__init__()
        self.recommended: str | None = None
        self.requested = AUTO

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="profile-body"):
            yield Static("Choosing a profile...", id="recommended")
            yield Static("", id="selection")
            yield Label("Profiles (enter or click to choose; auto = the recommendation):")
            yield OptionList(id="candidates")
            yield Label("Model for the fit report (Hugging Face directory or GGUF file):")
            with Horizontal(classes="field"):
                model = self.session.options.model
                yield Input(
                    str(model) if model else "", placeholder="path to the model", id="model-path"
                )
                yield Button("Check fit", id="check-fit", compact=True)
            yield Static("", id="model")
            yield Static("", id="fit")

    def on_mount(self) -> None:
        if self.session.options.model is not None:
            self.load_model(self.session.options.model)
        else:
            self.replan()

    # --- core calls ---------------------------------------------------------------------------

    def load_model(self, path: Path) -> None:
        self.set_status(f"reading {path}")
        self.call(Call.MODEL, lambda: self.backend.load_model(path), ModelLoaded)

    def replan(self) -> None:
        session, requested = self.session, self.requested
        self.set_status(f"planning ({requested})")
        self.call(
            Call.PLAN,
            lambda: self.backend.plan(
                session.hosts,
                facts_source=session.facts_source,
                requested=requested,
                model=session.model,
            ),
            Planned,
        )

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.session.model = message.model
        self.replan()

    def on_planned(self, message: Planned) -> None:
        self.show_plan(message.plan)

    def on_profiles_listed(self, message: ProfilesListed) -> None:
        self.show_choices([Option(Text(name), id=name) for name in message.names])

    def failed(self, failure: Failed) -> None:
        super().failed(failure)
        error = failure.error
        if failure.call is Call.MODEL:
            self.session.model = None
            self.query_one("#model", Static).update(Text("!! the model could not be read", "bold"))
            self.query_one("#fit", Static).update("")
            self.replan()
        elif failure.call is Call.PLAN:
            # No profile matches (exit 3 in the CLI): the operator may still choose one.
            self.session.invalidate_from("Profile")
            self.query_one("#recommended", Static).update(
                Text.assemble(("!! ", "bold yellow"), "no profile matches this hardware")
            )
            self.query_one("#selection", Static).update(
                "\n".join([error.message, error.hint or ""])
            )
            self.call(Call.PROFILES, lambda: sorted(self.backend.profiles()), ProfilesListed)

    # --- display ------------------------------------------------------------------------------

    def show_plan(self, plan: Plan) -> None:
        self.session.invalidate_from("Profile")
        self.session.plan = plan
        chosen = plan.selection.profile.name
        if plan.selection.mode == "auto":
            self.recommended = chosen
        recommended = self.recommended or "none (no profile matches)"
        self.query_one("#recommended", Static).update(
            Text.assemble(("Recommended for this hardware: ", "bold"), recommended)
        )
        self.query_one("#selection", Static).update(selection_summary(plan))
        self.show_choices(
            [Option(Text.assemble(("auto", "bold"), " let appliance choose"), id=AUTO)]
            + [Option(candidate_label(c, chosen), id=c.profile) for c in plan.selection.candidates]
        )
        self.query_one("#model", Static).update(
            model_summary(plan.model) if plan.model else "No model given: no fit report."
        )
        self.query_one("#fit", Static).update(fit_report(plan.fit) if plan.fit else "")
        if misfit_reasons(plan):
            self.set_status(
                Text.assemble(("!! ", "bold yellow"), f"{chosen} does not fit: see below")
            )
        else:
            self.set_status(Text.assemble(("OK ", "bold green"), f"profile {chosen}"))

    def show_choices(self, options: list[Option]) -> None:
        choices = self.query_one("#candidates", OptionList)
        choices.clear_options()
        choices.add_options(options)
        ids = [o.id for o in options]
        if self.requested in ids:
            choices.highlighted = ids.index(self.requested)

    # --- input --------------------------------------------------------------------------------

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.requested = event.option.id
            self.replan()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.check_fit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "check-fit":
            event.stop()
            self.check_fit()
        else:
            super().on_button_pressed(event)

    def check_fit(self) -> None:
        text = self.query_one("#model-path", Input).value.strip()
        if text:
            self.load_model(Path(text))
        else:
            self.session.model = None
            self.replan()

    def action_next(self) -> None:
        plan = self.session.plan
        if plan is None:
            self.set_status("!! choose a profile first")
            return
        reasons = misfit_reasons(plan)
        if not reasons:
            self.session.force = False
            self.go_on()
            return
        name = plan.selection.profile.name
        body = (
            "\n".join(f"- {r}" for r in reasons)
            + f"\n\nDeploy with profile {name} anyway? The deploy will be forced "
            "(as `appliance deploy --force`): the model may run out of memory."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.session.force = True
                self.query_one("#fit", Static).update(
                    fit_report(plan.fit, forced=True) if plan.fit else ""
                )
                self.go_on()

        self.app.push_screen(
            ConfirmDialog(f"Override: {name} does not fit", body, yes="Override"), answered
        )

    def go_on(self) -> None:
        self.done()
