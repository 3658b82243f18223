"""Every core operation the TUI needs, behind one small ABC.

``CoreBackend`` calls the real core (detection, profiles, plan, bundle
verification, inventory, site file, lab list, SSH reachability, deploy,
smoke test);
the tests use an in-memory ``FakeBackend`` (``tests/tui/fake_backend.py``)
built from the same core data types. Long operations are the core's event
generators, returned as they are: the screens drain them in worker threads.
Failures are ``ApplianceError`` subclasses, raised unchanged.

Core modules are imported inside the methods: the first screen paints
before pydantic, TUF or pyinfra are loaded.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from appliance.bundle.site.verify import VerifiedBundle
    from appliance.deploy.run import HostResult
    from appliance.deploy.site import Site
    from appliance.detect.facts import HostFacts
    from appliance.events import Event
    from appliance.lab import LabInfo
    from appliance.model.info import ModelInfo
    from appliance.plan.inventory import HostEntry, Inventory
    from appliance.plan.profiles import Profile
    from appliance.plan.report import Plan
    from appliance.report.smoke import ChatAnswer

# The TUI deploys with the built-in engine (brief: pyinfra is the default for the TUI).
ENGINE: Final[Literal["pyinfra"]] = "pyinfra"


class Backend(ABC):
    """The core as the TUI sees it. Implementations raise ``ApplianceError`` on failure."""

    @abstractmethod
    def detect(self, facts_file: Path | None) -> tuple[tuple[HostFacts, ...], str]:
        """This host's facts (or a saved facts file's hosts) and where they came from."""

    @abstractmethod
    def profiles(self) -> dict[str, Profile]: ...

    @abstractmethod
    def load_model(self, path: Path) -> ModelInfo: ...

    @abstractmethod
    def plan(
        self,
        hosts: tuple[HostFacts, ...],
        *,
        facts_source: str,
        requested: str,
        model: ModelInfo | None,
    ) -> Plan:
        """Profile selection with evidence and every rejection, and the fit report."""

    @abstractmethod
    def verify(self, bundle: Path, trust: Path) -> Generator[Event, None, VerifiedBundle]: ...

    @abstractmethod
    def labs(self) -> list[LabInfo]:
        """Lab hosts on this machine (``appliance lab list``)."""

    @abstractmethod
    def load_site(self, path: Path) -> Site:
        """The site file (``appliance deploy --site``); raises ``SiteFileError``."""

    @abstractmethod
    def load_inventory(self, path: Path) -> Inventory: ...

    @abstractmethod
    def reachable(self, host: HostEntry) -> tuple[bool, str]:
        """Can this machine log in to ``host`` over SSH, and what it said."""

    @abstractmethod
    def review(
        self,
        verified: VerifiedBundle,
        inventory: Inventory,
        *,
        profile: Profile,
        force: bool,
        site: Site | None,
    ) -> Generator[Event, None, list[HostResult]]:
        """The dry run: per host, the difference between the plan and the host now.

        With ``site``, the gateway and the host's firewall are part of the plan.
        """

    @abstractmethod
    def deploy(
        self,
        verified: VerifiedBundle,
        inventory: Inventory,
        *,
        profile: Profile,
        force: bool,
        site: Site | None,
        cancel: threading.Event,
    ) -> Generator[Event, None, list[HostResult]]:
        """Converge the hosts; a set ``cancel`` stops at the next safe point (``Cancelled``)."""

    @abstractmethod
    def smoke_test(self, host: HostEntry, *, port: int) -> ChatAnswer:
        """Ask the deployed model server on ``host`` one question."""


class CoreBackend(Backend):
    """The real core, exactly as the CLI commands call it."""

    def __init__(self, *, profiles_dir: Path | None = None, state: Path | None = None) -> None:
        self.profiles_dir = profiles_dir
        self.state = state  # trust state dir (rollback protection), as `--state`
        self._profiles: dict[str, Profile] | None = None

    def detect(self, facts_file: Path | None) -> tuple[tuple[HostFacts, ...], str]:
        if facts_file is not None:
            from appliance.detect.facts_file import load_facts

            return load_facts(facts_file), str(facts_file)
        from appliance.detect.host import detect_host

        host = detect_host()
        return (host,), f"detected on {host.hostname}"

    def profiles(self) -> dict[str, Profile]:
        if self._profiles is None:
            from appliance.plan.profiles import load_profiles

            self._profiles = load_profiles(self.profiles_dir)
        return self._profiles

    def load_model(self, path: Path) -> ModelInfo:
        from appliance.model.info import load_model_info

        return load_model_info(path)

    def plan(
        self,
        hosts: tuple[HostFacts, ...],
        *,
        facts_source: str,
        requested: str,
        model: ModelInfo | None,
    ) -> Plan:
        from appliance.plan.report import build_plan

        return build_plan(
            self.profiles(), hosts, facts_source=facts_source, requested=requested, model=model
        )

    def verify(self, bundle: Path, trust: Path) -> Generator[Event, None, VerifiedBundle]:
        from appliance.bundle.site.verify import VerifyOptions, verify_bundle

        # The state is only read here: the deploy records the acceptance once a host serves it.
        return verify_bundle(bundle, trust, self.state, VerifyOptions(), record=False)

    def labs(self) -> list[LabInfo]:
        from appliance.lab import lab_list

        return lab_list()

    def load_inventory(self, path: Path) -> Inventory:
        from appliance.plan.inventory import load_inventory

        return load_inventory(path)

    def load_site(self, path: Path) -> Site:
        from appliance.deploy.site import load_site

        return load_site(path)

    def reachable(self, host: HostEntry) -> tuple[bool, str]:
        from appliance.deploy.transport import reachable

        return reachable(host)

    def review(
        self,
        verified: VerifiedBundle,
        inventory: Inventory,
        *,
        profile: Profile,
        force: bool,
        site: Site | None,
    ) -> Generator[Event, None, list[HostResult]]:
        from appliance.deploy.run import deploy

        return deploy(
            verified, inventory, self.profiles(), profile=profile, engine=ENGINE, dry_run=True,
            force=force, site=site,
        )  # fmt: skip

    def deploy(
        self,
        verified: VerifiedBundle,
        inventory: Inventory,
        *,
        profile: Profile,
        force: bool,
        site: Site | None,
        cancel: threading.Event,
    ) -> Generator[Event, None, list[HostResult]]:
        import getpass

        from appliance.deploy.acceptance import deploy_and_accept
        from appliance.deploy.run import deploy

        return deploy_and_accept(verified, deploy(
            verified, inventory, self.profiles(), profile=profile, engine=ENGINE, dry_run=False,
            force=force, operator=getpass.getuser(), cancel=cancel, site=site,
        ))  # fmt: skip

    def smoke_test(self, host: HostEntry, *, port: int) -> ChatAnswer:
        from appliance.report.smoke import chat

        return chat(host, port=port)
