"""Messages the worker threads post to the screens: past tense, one class per core answer.

Workers never touch widgets; they post one of these (``post_message`` is
thread-safe) and the screen's handler (``on_<message>``, named after the
class) updates the display on the UI thread. Each answer has its own class
with typed fields, so a screen handles exactly the answers it asked for;
``Call`` names the core call a worker ran, for a failure and its words.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from appliance.bundle.site.verify import VerifiedBundle
    from appliance.deploy.run import HostResult
    from appliance.detect.facts import HostFacts
    from appliance.errors import ApplianceError
    from appliance.events import Event
    from appliance.lab import LabInfo
    from appliance.model.info import ModelInfo
    from appliance.plan.inventory import Inventory
    from appliance.plan.report import Plan
    from appliance.report.smoke import ChatAnswer


class Call(Enum):
    """The core calls the screens make (the value is the call's name in the status line)."""

    DETECT = "detect"
    MODEL = "model"
    PLAN = "plan"
    PROFILES = "profiles"
    VERIFY = "verify"
    LABS = "labs"
    INVENTORY = "inventory"
    REACH = "reach"
    REVIEW = "review"
    DEPLOY = "deploy"
    SMOKE = "smoke"

    def label(self, host: str | None = None) -> str:
        """``verify``, or ``reach:HOST`` for a call about one host."""
        return self.value if host is None else f"{self.value}:{host}"


# --- answers, one per core call ----------------------------------------------------------------


class Detected(Message):
    """``Backend.detect``: the hosts' facts and where they came from."""

    def __init__(self, hosts: tuple[HostFacts, ...], source: str) -> None:
        super().__init__()
        self.hosts = hosts
        self.source = source


class ModelLoaded(Message):
    """``Backend.load_model``: the model for the fit report."""

    def __init__(self, model: ModelInfo) -> None:
        super().__init__()
        self.model = model


class Planned(Message):
    """``Backend.plan``: the profile selection and the fit report."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan


class ProfilesListed(Message):
    """``Backend.profiles``: the names of every profile, sorted."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names


class Verified(Message):
    """``Backend.verify``: the bundle passed every check."""

    def __init__(self, verified: VerifiedBundle) -> None:
        super().__init__()
        self.verified = verified


class LabsListed(Message):
    """``Backend.labs``: the lab hosts on this machine."""

    def __init__(self, labs: list[LabInfo]) -> None:
        super().__init__()
        self.labs = labs


class InventoryLoaded(Message):
    """``Backend.load_inventory``: the inventory file, read and checked."""

    def __init__(self, inventory: Inventory) -> None:
        super().__init__()
        self.inventory = inventory


class Reached(Message):
    """``Backend.reachable``: whether ``host`` answered one SSH login, and what SSH said."""

    def __init__(self, host: str, ok: bool, detail: str) -> None:
        super().__init__()
        self.host = host
        self.ok = ok
        self.detail = detail


class Reviewed(Message):
    """``Backend.review``: the dry run's result per host."""

    def __init__(self, results: list[HostResult]) -> None:
        super().__init__()
        self.results = results


class Deployed(Message):
    """``Backend.deploy``: the deploy's result per host."""

    def __init__(self, results: list[HostResult]) -> None:
        super().__init__()
        self.results = results


class SmokeAnswered(Message):
    """``Backend.smoke_test``: the model server on ``host`` answered the question."""

    def __init__(self, host: str, answer: ChatAnswer) -> None:
        super().__init__()
        self.host = host
        self.answer = answer


# --- progress and failure, for any call --------------------------------------------------------


class EventEmitted(Message):
    """A long operation yielded an event (Started, Progress, Warned, Finished)."""

    def __init__(self, call: Call, event: Event) -> None:
        super().__init__()
        self.call = call
        self.event = event


class Failed(Message):
    """A core call raised an ``ApplianceError``; the screen shows it as the CLI would.

    ``host`` is the host a per-host call (``REACH``, ``SMOKE``) was about.
    """

    def __init__(self, call: Call, error: ApplianceError, host: str | None = None) -> None:
        super().__init__()
        self.call = call
        self.error = error
        self.host = host

    @property
    def label(self) -> str:
        return self.call.label(self.host)
