"""The gateway in front of a multi-node group's head: 503 ``group_unavailable`` with the group
watch's reason while the group is not serving; forwarded as before once it serves.

The watch's state file is written here by hand (what the real watch writes, see
``appliance.deploy.group_watch``); the model server is ``FakeUpstream``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.gateway.group_state import MAX_BYTES, STALE_S, read_group_state
from appliance.gateway.reasons import Reason
from tests.unit.gateway.conftest import FakeClock, Gateway, Site, open_gateway
from tests.unit.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


def write_state(path: Path, state: str, reason: str, *, mtime: float | None = None) -> None:
    path.write_text(json.dumps({"group": "lab", "role": "head", "rank": 0, "state": state,
                                "reason": reason, "joined": [], "missing": ["g-2"]}))  # fmt: skip
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "group-state.json"


@pytest.fixture
async def gateway(
    site: Site, upstream: FakeUpstream, clock: FakeClock, state_file: Path
) -> AsyncIterator[Gateway]:
    config = site.config(group={"name": "lab", "state_file": str(state_file)})
    gw = await open_gateway(config, upstream, clock)
    try:
        yield gw
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


async def test_a_degraded_group_is_answered_503_with_the_watch_reason(
    gateway: Gateway, site: Site, clock: FakeClock, state_file: Path, upstream: FakeUpstream
) -> None:
    reason = "g-2 (rank 1, 10.0.0.3) left the group; restarting the group"
    write_state(state_file, "degraded", reason, mtime=clock.time())
    answer = await gateway.chat(site.token())
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == Reason.GROUP_UNAVAILABLE == "group_unavailable"
    assert error["message"] == f"group lab is degraded: {reason}"
    assert upstream.received == []  # never forwarded to a head that may hang
    models = await gateway.client.get(
        "/v1/models", headers={"authorization": f"Bearer {site.token()}"}
    )
    assert models.status_code == 503
    health = await gateway.client.get("/healthz")
    assert health.status_code == 503 and "left the group" in health.json()["group"]
    (record,) = [r for r in site.audit_records() if r.get("route") == "/v1/chat/completions"]
    assert record["reason"] == "group_unavailable" and record["status"] == 503
    # The group serves again: the next read (after REFRESH_S) forwards.
    write_state(state_file, "serving", "every member joined", mtime=clock.time())
    clock.advance(1)
    answer = await gateway.chat(site.token())
    assert answer.status_code == 200, answer.text
    assert (await gateway.client.get("/healthz")).status_code == 200


async def test_no_token_is_still_401_before_the_group_is_looked_at(
    gateway: Gateway, state_file: Path, clock: FakeClock
) -> None:
    write_state(state_file, "degraded", "x", mtime=clock.time())
    assert (await gateway.chat(None)).status_code == 401


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "its watch has not reported a state yet"),
        (b"{", "its state file is not JSON"),
        (b"[]", "its state file has no state"),
        (b'{"state": 3}', "its state file has no state"),
        (b"x" * (MAX_BYTES + 1), f"larger than {MAX_BYTES} bytes"),
    ],
)
def test_an_unusable_state_file_means_not_serving(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_bytes(content)
    view = read_group_state(path, "lab", now=path.stat().st_mtime if content else 0.0)
    assert not view.serving and expected in view.reason


def test_a_state_the_watch_stopped_refreshing_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, "serving", "ok", mtime=1000.0)
    assert read_group_state(path, "lab", now=1000.0 + STALE_S - 1).serving
    stale = read_group_state(path, "lab", now=1000.0 + STALE_S + 5)
    assert not stale.serving and "stopped reporting 35 s ago" in stale.reason
