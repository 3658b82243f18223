"""deploy_and_accept: the trust state records a deployed bundle iff a host serves it.

The deploy itself is stood in for by ``fake_deploy`` (an in-memory fake generator
that yields one event and returns the given host results): what is under test is
when the record is prepared, committed or dropped, on a real state directory.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from appliance.bundle.site.state import ACCEPTED, TrustState
from appliance.bundle.site.verify import verify_bundle
from appliance.deploy.acceptance import deploy_and_accept
from appliance.deploy.run import HostResult
from appliance.errors import DeploymentError, StateWriteError
from appliance.events import Event, Warned, drain
from tests.unit.bundle.conftest import BundleFactory, Trust
from tests.unit.mounts import needs_root, read_only, snapshot


def fake_deploy(
    statuses: list[str], started: list[bool], fail: bool = False
) -> Generator[Event, None, list[HostResult]]:
    started.append(True)
    yield Warned("deploy", "converging host-1")
    if fail:
        raise DeploymentError("the host went away")
    return [HostResult(f"host-{i}", status) for i, status in enumerate(statuses)]  # type: ignore[arg-type]


def _verified(tmp_path: Path, make_bundle: BundleFactory, trust: Trust):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    return state, drain(verify_bundle(make_bundle(version=4), trust.root_path, state, record=False))


@pytest.mark.parametrize(
    ("statuses", "recorded"),
    [
        (["converged"], True),
        (["failed", "unchanged"], True),
        (["failed", "rolled-back"], False),
        ([], False),
    ],
)
def test_recorded_iff_a_host_serves_the_release(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust, statuses: list[str], recorded: bool
) -> None:
    state, verified = _verified(tmp_path, make_bundle, trust)
    started: list[bool] = []
    drain(deploy_and_accept(verified, fake_deploy(statuses, started)))
    assert started == [True]
    accepted = TrustState(state).accepted("demo", "stable")
    assert (accepted is not None and accepted.version == 4) is recorded
    assert not [p.name for p in state.iterdir() if ".tmp-" in p.name]


def test_a_deploy_that_raises_records_nothing(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    state, verified = _verified(tmp_path, make_bundle, trust)
    before = snapshot(state)
    with pytest.raises(DeploymentError):
        drain(deploy_and_accept(verified, fake_deploy(["converged"], [], fail=True)))
    after = {name: data for name, data in snapshot(state).items() if name != ".lock"}
    assert after == before  # only the (empty) lock file was made
    assert not (state / ACCEPTED).exists()


@needs_root
def test_an_unwritable_state_stops_before_any_host(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    state, verified = _verified(tmp_path, make_bundle, trust)
    state.mkdir(exist_ok=True)
    started: list[bool] = []
    with read_only(state), pytest.raises(StateWriteError, match="read-only"):
        drain(deploy_and_accept(verified, fake_deploy(["converged"], started)))
    assert started == []
