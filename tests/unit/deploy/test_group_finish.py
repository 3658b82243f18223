"""A serving group's activation as one unit (``run._finish_group``): every member or none.

The hosts are a fake here (``FakeHosts``: it records every step the deploy takes on each
member, in order, in place of SSH); the decisions under test are the deploy's own.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from appliance.deploy import run
from appliance.plan.engine_args import NodeCommand
from appliance.plan.inventory import HostEntry

MEMBERS = [HostEntry(name=n, address=f"10.0.0.{i}", roles=["model-server"])
           for i, n in enumerate(("head", "worker"), 2)]  # fmt: skip


class FakeHosts:
    """Every step taken on a member, in order: (host, step, detail)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, previous: dict[str, int | None],
                 problem: str | None) -> None:  # fmt: skip
        self.steps: list[tuple[str, str, Any]] = []
        self.audit: dict[str, list[dict[str, Any]]] = {m.name: [] for m in MEMBERS}
        steps = self.steps

        class Journal:
            def __init__(self, host: HostEntry, deploy_id: str) -> None:
                self.host = host

            def record(self, step: str, status: str, **extra: Any) -> None:
                steps.append((self.host.name, f"journal {step} {status}", extra))

        def audit(host: HostEntry, record: dict[str, Any]) -> dict[str, Any]:
            self.audit[host.name].append(record)
            return {"hash": f"h-{host.name}-{len(self.audit[host.name])}"}

        def switched(host: HostEntry, release_dir: str, record: dict[str, Any]) -> dict[str, Any]:
            steps.append((host.name, "switch", release_dir))
            return audit(host, record)

        monkeypatch.setattr(run, "Journal", Journal)
        monkeypatch.setattr(run, "append_audit", audit)
        monkeypatch.setattr(run, "switch_recorded", switched)
        monkeypatch.setattr(run, "current_version", lambda h: previous[h.name])
        monkeypatch.setattr(
            run, "stop_group", lambda ms: steps.append(("*", "stop", [m.name for m in ms]))
        )
        monkeypatch.setattr(run, "start_group", lambda ms, v: steps.append(("*", "start", v)))
        monkeypatch.setattr(
            run, "activate", lambda h, v, wait=True: steps.append((h.name, "activate", (v, wait)))
        )
        monkeypatch.setattr(run, "_unhealthy", lambda h, p, **kw: None)
        monkeypatch.setattr(run, "group_problem", lambda ms: problem if ms == MEMBERS else None)
        monkeypatch.setattr(run, "release_check", lambda h, v: SimpleNamespace(port=8000))
        monkeypatch.setattr(run, "health_check", lambda h, c, **kw: True)
        monkeypatch.setattr(
            run, "apply_firewall", lambda h, v: steps.append((h.name, "firewall", v))
        )

    def of(self, step: str) -> list[tuple[str, Any]]:
        return [(host, detail) for host, s, detail in self.steps if s == step]


def site() -> Any:
    command = NodeCommand("head", "head", ("python", "--port", "8000"), {})
    plan = SimpleNamespace(commands=(command,))
    desired = SimpleNamespace(gateway_port=None, firewall=None, keycloak=None,
                              release_dir="/opt/appliance/releases/7")  # fmt: skip
    return SimpleNamespace(planned={m.name: (plan, desired) for m in MEMBERS})


VERIFIED: Any = SimpleNamespace(name="b", version=7, content_digest="d" * 64,
                                payload=SimpleNamespace(model=None, adapters=[], reuses=None))  # fmt: skip
CONVERGED = {m.name: (True, "ok") for m in MEMBERS}


def finish(outcomes: dict[str, tuple[bool, str]] = CONVERGED) -> list[run.HostResult]:
    return run._finish_group(MEMBERS, site(), outcomes, VERIFIED, "dep", "pyinfra", "op")


def test_a_group_that_serves_is_switched_on_every_member_the_head_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = FakeHosts(monkeypatch, {"head": 6, "worker": 6}, problem=None)
    results = finish()
    assert [r.status for r in results] == ["converged", "converged"]
    assert hosts.of("stop") == [("*", ["head", "worker"])] and hosts.of("start") == [("*", 7)]
    assert hosts.of("switch") == [("worker", "/opt/appliance/releases/7"),
                                  ("head", "/opt/appliance/releases/7")]  # fmt: skip
    assert "as a worker of head's group" in results[1].message
    for name, rank in (("head", 0), ("worker", 1)):
        (record,) = hosts.audit[name]
        assert record["result"] == "ok"
        assert record["group"] == {"members": ["head", "worker"], "rank": rank}


def test_a_group_that_does_not_serve_goes_back_whole_to_what_it_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = FakeHosts(monkeypatch, {"head": 6, "worker": 6},
                      problem="worker worker did not join (degraded: no connection)")  # fmt: skip
    results = finish()
    assert [r.status for r in results] == ["rolled-back", "rolled-back"]
    assert all("worker worker did not join" in r.message for r in results)
    assert "release 6 is active again on every member" in results[0].message
    assert hosts.of("switch") == []  # nothing switched anywhere
    # Back on 6: stopped again, the worker started unwaited, then the head, then firewalls.
    assert hosts.of("stop") == [("*", ["head", "worker"])] * 2
    assert hosts.of("activate") == [("worker", (6, False)), ("head", (6, True))]
    assert hosts.of("firewall") == [("head", 6), ("worker", 6)]
    assert [a[0]["result"] for a in hosts.audit.values()] == ["rolled-back", "rolled-back"]


def test_a_new_group_that_does_not_serve_fails_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = FakeHosts(monkeypatch, {"head": None, "worker": None}, problem="did not form")
    results = finish()
    assert [r.status for r in results] == ["failed", "failed"]
    assert hosts.of("activate") == [] and hosts.of("switch") == []


def test_a_member_that_did_not_converge_stops_the_group_before_activation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = FakeHosts(monkeypatch, {"head": 6, "worker": 6}, problem=None)
    results = finish({"head": (True, "ok"), "worker": (False, "disk full")})
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("worker: disk full" in r.message and "no member was activated" in r.message
               for r in results)  # fmt: skip
    assert hosts.of("stop") == [] and hosts.of("start") == [] and hosts.of("switch") == []
    assert [a[0]["result"] for a in hosts.audit.values()] == ["failed", "failed"]


def test_a_group_with_one_changed_member_is_activated_whole() -> None:
    """A re-run after a deployer killed mid-group: the worker already switched, the head not
    (its `current` differs): the whole group is activated again; a group with nothing to
    change and a single host with changes are left as they are."""
    from appliance.plan.inventory import GroupEntry, Inventory

    alone = HostEntry(name="alone", address="10.0.0.9", roles=["model-server"])
    inventory = Inventory(schema_version=1, hosts=[*MEMBERS, alone],
                          groups=[GroupEntry(name="g", hosts=["head", "worker"], interface="eth0")])  # fmt: skip
    units = run._units([alone, *MEMBERS], inventory)
    assert [[h.name for h in u] for u in units] == [["alone"], ["head", "worker"]]
    assert run.changing_hosts(units, {"head"}) == {"head", "worker"}
    assert run.changing_hosts(units, {"alone"}) == {"alone"}
    assert run.changing_hosts(units, set()) == set()
