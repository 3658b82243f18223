"""Engines: what converges hosts to their ``HostDesired``, chosen by name from one registry.

An engine lays down a release (directories, the release staged, checked and
moved into place, rendered files, Keycloak's user, distribution and secret
files) and nothing else: activation, health and ``current`` are the deploy's
(``deploy.run``, ``deploy.activation``), the same whichever engine ran. Engines see
only ``HostDesired`` values, never the bundle, the plan or the site, so hosts
end up byte-identical whichever engine converged them (the parity test).

``ENGINES`` maps each name (``deploy --engine``, the journal, the audit
records) to its engine; ``engine(name)`` looks one up. An engine's module, and
the library it drives, is imported when it converges, so naming the engines
(the command line's choices) costs nothing. A new engine: a module with a
``converge`` like ``engines/pyinfra.py``'s and its ``ModuleEngine`` in ``ENGINES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.errors import InputError

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence

    from appliance.deploy.host_desired import HostDesired, HostOutcome
    from appliance.events import Event


class Engine(Protocol):
    """Converges hosts to their desired state, reporting progress as events."""

    @property
    def name(self) -> str:
        """How ``deploy --engine``, the journal and the audit records name it."""
        ...

    def converge(
        self,
        plans: Sequence[HostDesired],
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[HostOutcome]:
        """Converge every host of ``plans`` (in parallel); one outcome per host, in order.

        A failing host does not stop the others. Each finished operation is
        reported through ``on_event`` (``Progress("converge", host=...)``); a set
        ``cancel`` stops the run at the next safe point, raising ``Cancelled``.
        """
        ...


@dataclass(frozen=True)
class ModuleEngine:
    """An engine whose ``converge`` is the function of the same name in one module of this
    package, imported on the first converge (the library it drives comes with it)."""

    name: str
    module: str  # in appliance.deploy.engines

    def converge(
        self,
        plans: Sequence[HostDesired],
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[HostOutcome]:
        module = importlib.import_module(f"{__name__}.{self.module}")
        converge: Callable[..., list[HostOutcome]] = module.converge
        return converge(plans, on_event=on_event, cancel=cancel)


DEFAULT = "pyinfra"
ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        ModuleEngine("pyinfra", "pyinfra"),  # pyinfra's API, in this process
        ModuleEngine("ansible", "ansible"),  # playbooks/deploy.yml through ansible-runner
    )
}


def engine(name: str) -> Engine:
    """The engine called ``name``, or a refusal naming those there are."""
    try:
        return ENGINES[name]
    except KeyError:
        raise InputError(
            f"unknown engine {name!r}", hint=f"Choose one of: {', '.join(ENGINES)}."
        ) from None


__all__ = ["DEFAULT", "ENGINES", "Engine", "ModuleEngine", "engine"]
