"""The deploy plans every host from one site plan (facts read over SSH are faked here)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from appliance.bundle.format import FILES_DIR
from appliance.bundle.payload import ModelEntry, ModelSource
from appliance.bundle.site.verify import VerifiedBundle, verify_bundle
from appliance.deploy import run
from appliance.deploy.render import desired_state
from appliance.detect.facts import HostFacts
from appliance.errors import DeploymentError
from appliance.events import drain
from appliance.plan.inventory import HostEntry, Inventory
from appliance.plan.profiles import load_profiles
from appliance.plan.report import build_plan
from tests.unit.bundle.conftest import BundleFactory, Trust
from tests.unit.plan.conftest import MODELS, facts

HOSTS = [HostEntry(name=n, address=f"10.0.0.{i}", roles=["model-server"])
         for i, n in enumerate(("a", "b"), 2)]  # fmt: skip
INVENTORY = Inventory(schema_version=1, hosts=HOSTS)


def with_model(make_bundle: BundleFactory, trust: Trust, name: str) -> VerifiedBundle:
    verified: VerifiedBundle = drain(verify_bundle(make_bundle(), trust.root_path))
    shutil.copytree(MODELS / name, verified.directory / FILES_DIR / "models" / name)
    entry = ModelEntry(name=name, path=f"models/{name}", format="hf",
                       source=ModelSource(kind="local-dir"))  # fmt: skip
    return dataclasses.replace(
        verified, payload=verified.payload.model_copy(update={"model": entry})
    )


def fake_facts(monkeypatch: pytest.MonkeyPatch, fixture: str) -> dict[str, HostFacts]:
    by_name = {h.name: dataclasses.replace(f, hostname=h.name)
               for h, f in zip(HOSTS, facts(fixture), strict=False)}  # fmt: skip
    monkeypatch.setattr(run, "remote_facts", lambda host: by_name[host.name])
    return by_name


def test_each_single_node_host_gets_the_plan_and_state_it_had_alone(
    make_bundle: BundleFactory, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = with_model(make_bundle, trust, "mistral-7b-instruct-v0.3")
    rtx = facts("rtx4090")[0]
    by_name = {h.name: dataclasses.replace(rtx, hostname=h.name) for h in HOSTS}
    monkeypatch.setattr(run, "remote_facts", lambda host: by_name[host.name])
    profiles = load_profiles()
    planned = run.plan_hosts(verified, HOSTS, profiles, profiles["rtx4090"], force=False,
                             inventory=INVENTORY)  # fmt: skip
    info = run.load_model_info(verified.directory / FILES_DIR / "models/mistral-7b-instruct-v0.3")
    for host in HOSTS:
        alone = build_plan(profiles, (by_name[host.name],), facts_source=f"ssh {host.name}",
                           requested="rtx4090", model=info)  # fmt: skip
        plan, desired = planned[host.name]
        assert plan == alone
        assert desired == desired_state(verified, alone.commands[0], host, engine="vllm")


def test_a_multi_node_group_the_inventory_does_not_name_is_refused_before_any_change(
    make_bundle: BundleFactory, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = with_model(make_bundle, trust, "apertus-70b-instruct-2509")
    fake_facts(monkeypatch, "h100x8-2nodes")
    profiles = load_profiles()
    with pytest.raises(DeploymentError, match=r"profile h100-cluster plans one model served by "
                       r"several hosts \(a, b\), but the inventory names no serving group") as refused:  # fmt: skip
        run.plan_hosts(verified, HOSTS, profiles, profiles["h100-cluster"], force=False,
                       inventory=INVENTORY)  # fmt: skip
    assert refused.value.hint is not None and "groups:" in refused.value.hint


def test_a_named_group_gets_its_watch_and_port_range_on_every_member(
    make_bundle: BundleFactory, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each member's release carries the group watch (its source, its settings, its unit) and
    the sysctl drop-in; the head serves, the worker runs headless, both on the group's network."""
    import json

    from appliance.deploy import group_watch
    from appliance.deploy.host_layout import GROUP_WATCH_UNIT, UNIT_NAME
    from appliance.plan.inventory import GroupEntry
    from tests.unit.plan.test_group_preflight import member

    verified = with_model(make_bundle, trust, "apertus-70b-instruct-2509")
    by_name = {h.name: dataclasses.replace(member(i), hostname=h.name) for i, h in enumerate(HOSTS)}
    monkeypatch.setattr(run, "remote_facts", lambda host: by_name[host.name])
    entry = GroupEntry(name="llm", hosts=["a", "b"], interface="ens1f0")
    inventory = INVENTORY.model_copy(update={"groups": [entry]})
    profiles = load_profiles()
    planned = run.plan_hosts(verified, HOSTS, profiles, profiles["h100-cluster"], force=False,
                             inventory=inventory)  # fmt: skip
    (_, head), (_, worker) = planned["a"], planned["b"]
    assert GROUP_WATCH_UNIT in head.units and GROUP_WATCH_UNIT in worker.units
    files = {r.path.rsplit("/", 1)[-1]: r for r in worker.rendered}
    settings = json.loads(files["group-watch.json"].content)
    assert settings["role"] == "worker" and settings["rank"] == 1
    assert settings["head"] == {"host": "a", "address": "10.10.0.10", "rank": 0}
    assert settings["master_port"] == 29501 and settings["model_port"] == 8000
    assert files["group-watch.py"].content == Path(group_watch.__file__).read_text()
    assert "net.ipv4.ip_local_port_range = 40000 44095" in files["sysctl-group.conf"].content
    assert "--headless" in worker.unit_file_of(UNIT_NAME).content
    assert "--headless" not in head.unit_file_of(UNIT_NAME).content
    assert "(llm, head rank 0)" in head.unit_file_of(GROUP_WATCH_UNIT).content
