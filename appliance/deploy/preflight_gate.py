"""The deploy's preflight gate: each host's preflights from what the deploy read, and the
refusal before any host changes.

``host_preflights`` turns what ``deploy.run`` has of a host (its plan, the bundle's PyTorch
build, the disk check's result, whether a release of ours serves there now) into the rows of
``appliance.plan.preflight``; ``refuse_preflights`` raises ``PreflightError`` (exit 3) listing
every failed row of every host.

Invariants:
- The disk row is the deploy's own disk check (``deploy.probe.disk_shortfall``), shown as a
  row, never measured twice. When it is the only failure, the deploy's existing
  ``DiskSpaceError`` (exit 5) stays the refusal; with other failures it is listed with them.
- ``--force`` accepts the forceable rows only (fit, GPU memory in use, /dev/shm); a driver
  too old for the wheels' CUDA, a GPU short of the dtype's or quantisation's compute
  capability, and MIG are refused whatever the flags.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.bundle.site.verify import VerifiedBundle
from appliance.deploy.probe import DiskShortfall
from appliance.plan.preflight import DiskRoom, Preflight, failures, preflights, refuse
from appliance.plan.report import Plan


def host_preflights(
    verified: VerifiedBundle,
    plan: Plan,
    host: str,
    shortfall: DiskShortfall | None,
    *,
    serving: bool,
) -> tuple[Preflight, ...]:
    """The preflight rows of ``host`` (an inventory name, as its facts are named)."""
    facts = next(h for h in plan.hosts if h.hostname == host)
    wheels = verified.payload.wheels
    disk = (
        None
        if shortfall is None
        else DiskRoom(mount=shortfall.mount, needed=shortfall.needed, free=shortfall.free)
    )
    torch = wheels.torch if wheels is not None else None
    return preflights(plan, facts, torch=torch, disk=disk, serving=serving)


def warnings(rows: Sequence[Preflight], *, force: bool) -> list[str]:
    """What a dry run says of the rows a deploy would refuse on."""
    return [
        f"a deploy would be refused: {r.host}: preflight {r.name}: found {r.found}; "
        f"expected {r.expected}; {r.action}"
        for r in failures(rows, force=force)
        if r.name != "disk"  # the dry run already says it (space_message)
    ]


def refuse_preflights(rows: Sequence[Preflight], *, force: bool) -> None:
    """``PreflightError`` for every failed row, unless the disk row alone failed (left to the
    deploy's ``DiskSpaceError``)."""
    failed = failures(rows, force=force)
    if any(r.name != "disk" for r in failed):
        refuse(rows, force=force)
