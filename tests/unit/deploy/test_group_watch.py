"""The group watch's decisions (pure), over observations made up here (fakes of what ``ss``
and systemd report), and its parsing of real ``ss`` output captured on this machine."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from appliance.deploy import group_watch
from appliance.deploy.group_watch import (
    HeadWatch,
    Observation,
    Settings,
    WorkerWatch,
    observe_connections,
    parse_established,
)

SETTINGS = Settings.from_json(
    {
        "role": "head", "group": "lab", "host": "g-1", "rank": 0,
        "head": {"host": "g-1", "address": "10.0.0.2", "rank": 0},
        "workers": [{"host": "g-2", "address": "10.0.0.3", "rank": 1}],
        "master_port": 29501, "model_port": 8000, "served_model": "m", "start_timeout": 300,
    }
)  # fmt: skip
WORKER = Settings.from_json({**{k: v for k, v in SETTINGS.__dict__.items()}, "role": "worker",
                             "host": "g-2", "rank": 1,
                             "head": {"host": "g-1", "address": "10.0.0.2", "rank": 0},
                             "workers": [{"host": "g-2", "address": "10.0.0.3", "rank": 1}]})  # fmt: skip

# `ss -Htn state established` on a head while a worker at 10.0.0.3 is joined (IPv6-mapped,
# as torch's TCPStore listens on both families), plus a gloo pair and an SSH session.
SS_HEAD = """0      0      [::ffff:10.0.0.2]:29501 [::ffff:10.0.0.3]:40012 users:(("VLLM::Worker_PP",pid=1,fd=15))
0      0      10.0.0.2:41127          10.0.0.3:40020 users:(("VLLM::Worker_PP",pid=1,fd=64))
0      36     10.0.0.2:22             10.0.0.1:51000
garbage line
"""


def seen(now: float, *, peers: tuple[str, ...] = ("10.0.0.3",), probe: str | None = None,
         state: str = "active", started: float | None = 0.0,
         connections: frozenset[tuple[str, str, int]] = frozenset()) -> Observation:  # fmt: skip
    return Observation(now, state, started if state == "active" else None, connections,
                       frozenset(peers), probe)  # fmt: skip


def test_ss_lines_read_as_addresses_and_ports() -> None:
    rows = parse_established(SS_HEAD)
    assert rows == [
        ("10.0.0.2", 29501, "10.0.0.3", 40012),
        ("10.0.0.2", 41127, "10.0.0.3", 40020),
        ("10.0.0.2", 22, "10.0.0.1", 51000),
    ]
    _, peers = observe_connections(rows, SETTINGS)
    assert peers == frozenset({"10.0.0.3"})


def test_head_forms_then_serves() -> None:
    watch = HeadWatch(SETTINGS)
    first = watch.step(seen(5, peers=()))
    assert first.state == "starting" and "g-2 (rank 1, 10.0.0.3)" in first.reason
    assert first.missing == ("g-2",) and not first.restart
    assert watch.step(seen(10)).state == "starting"  # joined, not probed yet
    assert watch.wants_probe(10, True)
    ok = watch.step(seen(12, probe="ok"))
    assert ok.state == "serving" and ok.joined == ("g-2",)


def test_head_restarts_the_group_when_a_worker_leaves() -> None:
    watch = HeadWatch(SETTINGS)
    watch.step(seen(12, probe="ok"))
    once = watch.step(seen(14, peers=()))
    assert once.state == "degraded" and not once.restart  # one tick: not yet
    twice = watch.step(seen(16, peers=()))
    assert twice.state == "degraded" and twice.restart
    assert "g-2 (rank 1, 10.0.0.3) left the group" in twice.reason
    # The restarted head is judged afresh: starting, no second restart while it forms; until
    # the group serves again every state says why it was restarted (the gateway's 503 too).
    down = watch.step(seen(18, state="deactivating"))
    assert down.state == "down" and "g-2 (rank 1, 10.0.0.3) left the group" in down.reason
    again = watch.step(seen(40, peers=(), started=30.0))
    assert again.state == "starting" and not again.restart
    assert "(the group is re-forming: g-2 (rank 1, 10.0.0.3) left the group)" in again.reason
    assert watch.step(seen(50, probe="ok", started=30.0)).reason == (
        "every member joined and the model answers")  # fmt: skip
    assert "re-forming" not in watch.step(seen(60, peers=(), state="failed")).reason


def test_head_restarts_when_the_model_stops_answering_twice() -> None:
    watch = HeadWatch(SETTINGS)
    watch.step(seen(12, probe="ok"))
    one = watch.step(seen(22, probe="no answer within 30 s"))
    assert one.state == "degraded" and not one.restart
    two = watch.step(seen(32, probe="no answer within 30 s"))
    assert two.restart and "does not answer" in two.reason
    assert watch.step(seen(42, probe="ok", started=35.0)).state == "serving"


def test_head_that_never_forms_is_restarted_after_its_start_timeout() -> None:
    watch = HeadWatch(SETTINGS)
    assert not watch.step(seen(299, peers=())).restart
    late = watch.step(seen(301, peers=()))
    assert late.restart and "did not form within 300 s" in late.reason


def test_head_unit_not_active_is_down_or_starting() -> None:
    watch = HeadWatch(SETTINGS)
    assert watch.step(seen(1, state="failed")).state == "down"
    assert watch.step(seen(1, state="activating")).state == "starting"


def test_worker_rejoins_when_its_rendezvous_is_gone() -> None:
    watch = WorkerWatch(WORKER)
    linked = frozenset({("10.0.0.3", "10.0.0.2", 29501)})
    assert watch.step(seen(5, connections=frozenset())).state == "starting"  # within grace
    assert watch.step(seen(31, connections=linked)).state == "serving"
    assert not watch.step(seen(40, connections=frozenset())).restart
    gone = watch.step(seen(42, connections=frozenset()))
    assert gone.restart and "no connection to the head g-1" in gone.reason
    # A connection to another port of the head is not the rendezvous.
    other = frozenset({("10.0.0.3", "10.0.0.2", 41000)})
    watch = WorkerWatch(WORKER)
    watch.step(seen(31, connections=other))
    assert watch.step(seen(33, connections=other)).restart


def test_settings_refuse_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="role must be head or worker"):
        Settings.from_json({**SETTINGS.__dict__, "role": "leader"})


def test_the_watch_is_stdlib_only() -> None:
    """It runs on the host's python3, outside any venv: only the standard library."""
    tree = ast.parse(Path(group_watch.__file__).read_text())
    modules = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    modules |= {n.module.split(".")[0] for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert modules - {"__future__"} <= set(sys.stdlib_module_names), modules
