"""What the operator has chosen and what the core has answered so far, shared by the screens.

Plain mutable state on the app: each screen reads what earlier steps left
and writes its own step's outcome. Going back and changing a step clears what
depended on it (``invalidate_from``), so a later screen never shows an answer
to a question that is no longer asked. The order of the steps is the app's
step table (``tui.app.STEPS``), given to the session as ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.bundle.site.verify import VerifiedBundle
    from appliance.deploy.run import HostResult
    from appliance.deploy.site import Site
    from appliance.detect.facts import HostFacts
    from appliance.model.info import ModelInfo
    from appliance.plan.inventory import Inventory
    from appliance.plan.profiles import Profile
    from appliance.plan.report import Plan


@dataclass(frozen=True, slots=True)
class AppOptions:
    """The command line of ``appliance tui``: starting values the operator may change."""

    facts: Path | None = None  # saved facts instead of detecting this machine
    model: Path | None = None  # model for the fit report
    bundle: Path | None = None
    trust: Path | None = None
    inventory: Path | None = None
    site: Path | None = None  # the site file: with it, the gateway and firewall are laid down too


@dataclass
class Session:
    options: AppOptions
    steps: tuple[str, ...]  # the step names, in order (the app's step table)
    site: Site | None = None  # options.site, loaded before the app starts; fixed for the run
    hosts: tuple[HostFacts, ...] = ()
    facts_source: str = ""
    model: ModelInfo | None = None
    plan: Plan | None = None
    force: bool = False  # the operator accepted a profile or model that does not fit
    verified: VerifiedBundle | None = None
    inventory: Inventory | None = None
    inventory_path: Path | None = None
    reachability: dict[str, tuple[bool, str]] = field(default_factory=dict)
    review: list[HostResult] | None = None
    results: list[HostResult] | None = None

    @property
    def profile(self) -> Profile | None:
        return None if self.plan is None else self.plan.selection.profile

    def invalidate_from(self, step: str) -> None:
        """Forget the answers of ``step`` and of every step after it."""
        index = self.steps.index(step)
        if index <= self.steps.index("Profile"):
            self.plan, self.force = None, False
        if index <= self.steps.index("Bundle"):
            self.verified = None
        if index <= self.steps.index("Targets"):
            self.inventory, self.reachability = None, {}
        if index <= self.steps.index("Plan"):
            self.review = None
        if index <= self.steps.index("Deploy"):
            self.results = None
