"""A deploy records the bundle's acceptance in the site's trust state iff a host serves it.

The bundle is verified with ``record=False`` (the state is only read); the record
is prepared before any host is changed (a state that cannot be written stops the
deploy before it starts) and committed only once at least one host serves the
release (``converged`` or ``unchanged``); otherwise it is dropped and the state
stays byte-identical. The CLI and the TUI both deploy through here.
"""

from __future__ import annotations

from collections.abc import Generator

from appliance.bundle.site.verify import VerifiedBundle, deferred_acceptance
from appliance.deploy.run import HostResult
from appliance.events import Event

SERVING = ("converged", "unchanged")


def deploy_and_accept(
    verified: VerifiedBundle, deploying: Generator[Event, None, list[HostResult]]
) -> Generator[Event, None, list[HostResult]]:
    """Run ``deploying`` (a not yet started ``deploy(...)``) inside the prepared record."""
    with deferred_acceptance(verified) as pending:
        results = yield from deploying
        if pending is not None and any(r.status in SERVING for r in results):
            pending.commit()
    return results
