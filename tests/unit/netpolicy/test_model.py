"""The one policy model per profile, and its binding to a site's addresses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.detect.facts_file import load_facts
from appliance.errors import InputError
from appliance.exitcodes import ExitCode
from appliance.netpolicy.model import (
    GATEWAY_PORT,
    KEYCLOAK_PORT,
    ROLES,
    Flow,
    NetworkPolicyError,
    build_policy,
    build_site,
    describe_model,
    describe_site,
    group_component,
    group_of_component,
    inventory_groups,
    policy_for_plan,
)
from appliance.plan.group import GroupNetwork
from appliance.plan.inventory import load_inventory
from appliance.plan.profiles import VllmEngine, load_profiles
from appliance.plan.report import build_plan

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
PROFILES = load_profiles()


def keys(flows: tuple[Flow, ...]) -> set[tuple[str, str, str, int | None]]:
    return {f.key for f in flows}


SSH = {("admin", role, "tcp", 22) for role in ROLES}
DNS = {(role, "dns", proto, 53) for role in ROLES for proto in ("udp", "tcp")}


def test_cpu_llamacpp_single_host_flows() -> None:
    model = build_policy(PROFILES["cpu-llamacpp"])
    assert (model.engine, model.model_server_port, model.multi_node) == ("llamacpp", 8080, False)
    service = {
        ("clients", "gateway", "tcp", 8443),
        ("gateway", "model-server", "tcp", 8080),
        ("gateway", "keycloak", "tcp", 8180),
    }
    assert keys(model.flows_for("host")) == service | SSH
    assert keys(model.flows_for("k8s")) == service | DNS


def test_h100_cluster_multi_node_has_peer_flows() -> None:
    model = build_policy(PROFILES["h100-cluster"])
    assert (model.engine, model.model_server_port, model.multi_node) == ("vllm", 8000, True)
    peer = ("model-server", "model-server", "tcp", None)
    for target in ("host", "k8s"):
        assert peer in keys(model.flows_for(target))  # type: ignore[arg-type]
    assert ("gateway", "model-server", "tcp", 8000) in keys(model.flows)


GROUP_INVENTORY = FIXTURES / "group-hosts.yaml"


def fixture_groups() -> tuple[GroupNetwork, ...]:
    return inventory_groups(load_inventory(GROUP_INVENTORY))


def multi_node(name: str) -> bool:
    profile = PROFILES[name]
    nodes = profile.match.gpu.nodes if profile.match.gpu is not None else profile.match.cpu.nodes  # type: ignore[union-attr]
    return isinstance(profile.engine, VllmEngine) and nodes.max > 1


@pytest.mark.parametrize(
    ("name", "grouped"),
    [(n, False) for n in sorted(PROFILES)] + [(n, True) for n in sorted(PROFILES) if multi_node(n)],
)
def test_every_profile_keeps_the_invariants(name: str, grouped: bool) -> None:
    profile = PROFILES[name]
    model = build_policy(profile, fixture_groups() if grouped else ())
    names = {c.name for c in model.components}
    assert len(keys(model.flows)) == len(model.flows), "a flow is listed twice"
    for flow in model.flows:
        assert {flow.source, flow.destination} <= names
        assert set(flow.targets) <= set(model.component(flow.source).targets)
        assert set(flow.targets) <= set(model.component(flow.destination).targets)
        # Nothing on the appliance side initiates towards the users' or admins' networks.
        assert flow.destination not in ("clients", "admin")
        assert flow.port is None or 0 < flow.port < 65536
    sources_of = {d: {f.source for f in model.flows if f.destination == d} for d in names}
    assert sources_of["gateway"] == {"clients", "admin"}
    assert sources_of["keycloak"] == {"gateway", "admin"}
    peers = model.multi_node and not grouped  # with groups, members talk on the group's ports
    expected_model = {"gateway", "admin"} | ({"model-server"} if peers else set())
    assert sources_of["model-server"] == expected_model
    # Keycloak makes no outbound calls; the model server only talks to its peers (and DNS).
    assert {f.destination for f in model.flows if f.source == "keycloak"} == {"dns"}
    assert {f.destination for f in model.flows if f.source == "model-server"} <= {
        "model-server",
        "dns",
    }
    # Group flows: within one group only, on its interface, a port or a range, never "any".
    for flow in model.flows:
        source, destination = group_of_component(flow.source), group_of_component(flow.destination)
        if source is None and destination is None:
            assert flow.interface is None and flow.last_port is None
            continue
        assert source is not None and destination is not None
        assert source[0] == destination[0] and not source[1]
        group = next(g for g in model.groups if g.name == source[0])
        assert flow.interface == group.interface and flow.port is not None
        assert flow.last_port is None or flow.port < flow.last_port < 65536
    assert model.model_server_port == profile.engine.port
    assert model.multi_node == multi_node(profile.name)
    assert (GATEWAY_PORT, KEYCLOAK_PORT) == (8443, 8180)


def test_ports_agree_with_the_services_defaults() -> None:
    from appliance.gateway.config import Listen

    assert Listen().port == GATEWAY_PORT
    keycloak = pytest.importorskip("appliance.deploy.keycloak_files")
    assert keycloak.DEFAULT_HTTP_PORT == KEYCLOAK_PORT


def test_policy_for_plan_is_the_plans_profile() -> None:
    plan = build_plan(
        PROFILES, load_facts(ROOT / "tests/fixtures/facts/h100x8-2nodes.json"), facts_source="t"
    )
    assert plan.selection.profile.name == "h100-cluster"
    assert policy_for_plan(plan) == build_policy(PROFILES["h100-cluster"])


@pytest.mark.parametrize("name", ["cpu-llamacpp", "h100-cluster"])
def test_printed_model_golden(name: str) -> None:
    text = describe_model(build_policy(PROFILES[name]))
    golden = GOLDEN / f"model-{name}.txt"
    if os.environ.get("UPDATE_GOLDENS"):
        golden.write_text(text)
    assert text == golden.read_text(), f"run UPDATE_GOLDENS=1 pytest {__file__}"


def test_groups_replace_the_any_port_peer_flow() -> None:
    (group,) = fixture_groups()
    model = build_policy(PROFILES["h100-cluster"], [group])
    members, head = group_component("pp"), group_component("pp", head=True)
    assert (members, head) == ("group:pp", "group:pp:head")
    assert group_of_component(head) == ("pp", True) and group_of_component("gateway") is None
    group_flows = [f for f in model.flows if f.source == members]
    assert [(f.destination, f.port, f.last_port, f.interface, f.targets) for f in group_flows] == [
        (head, 29501, None, "eth1", ("host", "k8s")),
        (members, 40000, 44095, "eth1", ("host", "k8s")),
    ]
    assert ("model-server", "model-server", "tcp", None) not in keys(model.flows)
    assert [f.port_text for f in group_flows] == ["29501/tcp", "40000-44095/tcp"]
    master, ephemeral = group_flows
    assert master.allows(29501) and not master.allows(29500) and not master.allows(29502)
    assert ephemeral.allows(40000) and ephemeral.allows(44095)
    assert not ephemeral.allows(39999) and not ephemeral.allows(44096)
    assert model.groups == (group,)


def test_groups_with_a_single_node_profile_are_refused() -> None:
    with pytest.raises(NetworkPolicyError) as caught:
        build_policy(PROFILES["cpu-llamacpp"], fixture_groups())
    assert "expected a multi-node profile" in caught.value.message
    assert "serving group(s) pp" in caught.value.message and caught.value.hint


@pytest.mark.parametrize(
    ("name", "interface"),
    [("pp", 'eth1" accept'), ("pp_x", "eth1"), ("pp", "a-very-long-interface")],
)
def test_group_names_that_would_break_a_ruleset_are_refused(name: str, interface: str) -> None:
    group = GroupNetwork(name, ("gpu-1", "gpu-2"), interface, ("10.20.2.11", "10.20.2.12"),
                         29501, (40000, 44095))  # fmt: skip
    with pytest.raises(NetworkPolicyError, match="expected a name of"):
        build_policy(PROFILES["h100-cluster"], [group])


def test_printed_model_with_a_group_golden() -> None:
    text = describe_model(build_policy(PROFILES["h100-cluster"], fixture_groups()))
    golden = GOLDEN / "model-h100-cluster-group.txt"
    if os.environ.get("UPDATE_GOLDENS"):
        golden.write_text(text)
    assert text == golden.read_text(), f"run UPDATE_GOLDENS=1 pytest {__file__}"


# --- the site binding -----------------------------------------------------------------


def test_site_from_inventory() -> None:
    site = build_site(
        ["10.20.0.0/16", "10.20.7.0/24", "fd00:20::/48"],
        ["10.20.5.0/24"],
        load_inventory(FIXTURES / "three-hosts.yaml"),
    )
    assert [str(n) for n in site.networks] == ["10.20.0.0/16", "fd00:20::/48"]  # collapsed
    assert [str(n) for n in site.addresses("model-server")] == ["10.20.2.11/32", "10.20.2.12/32"]
    assert [str(n) for n in site.addresses("gateway")] == ["10.20.1.10/32"]
    assert [h.ssh_port for h in site.hosts] == [22, 22, 2222]
    assert site.addresses("dns") == ()
    assert "gpu-2                10.20.2.12       ssh 2222  model-server" in describe_site(
        site, "host"
    )


def test_site_without_inventory_puts_roles_anywhere_on_site() -> None:
    site = build_site(["10.20.0.0/16"], ["10.20.5.0/24"])
    assert site.addresses("keycloak") == site.networks == site.addresses("clients")
    assert "no inventory" in describe_site(site, "host")


def test_group_bound_from_the_inventory_and_from_facts() -> None:
    inventory = load_inventory(GROUP_INVENTORY)
    groups = inventory_groups(inventory)
    assert groups == (
        GroupNetwork("pp", ("gpu-1", "gpu-2", "gpu-3"), "eth1",
                     ("10.20.2.11", "10.20.2.12", "10.20.2.13"), 29501, (40000, 44095)),
    )  # fmt: skip
    site = build_site(["10.20.0.0/16"], ["10.20.5.0/24"], inventory, groups, "inventory")
    assert [str(n) for n in site.addresses("group:pp")] == [
        "10.20.2.11/32", "10.20.2.12/32", "10.20.2.13/32",
    ]  # fmt: skip
    assert [str(n) for n in site.addresses("group:pp:head")] == ["10.20.2.11/32"]
    assert site.components_of("gpu-1") == ("group:pp", "group:pp:head")
    assert site.components_of("gpu-3") == ("group:pp",)
    assert site.components_of("gpu-4") == site.components_of("edge-1") == ()
    text = describe_site(site, "host")
    assert "serving group pp: gpu-1 10.20.2.11 (head), gpu-2 10.20.2.12, gpu-3 10.20.2.13" in text
    assert "group addresses from the inventory" in text
    # From the plan: each member's address on the group's interface (another network here).
    facts = GroupNetwork("pp", ("gpu-1", "gpu-2", "gpu-3"), "eth1",
                         ("10.21.0.1", "10.21.0.2", "10.21.0.3"), 29501, (40000, 44095))  # fmt: skip
    site = build_site(["10.20.0.0/16", "10.21.0.0/24"], ["10.20.5.0/24"], inventory, [facts])
    assert [str(n) for n in site.addresses("group:pp:head")] == ["10.21.0.1/32"]
    assert "group addresses from the inventory" not in describe_site(site, "host")


def _group(addresses: tuple[str, ...], hosts: tuple[str, ...] = ("gpu-1", "gpu-2")) -> GroupNetwork:
    return GroupNetwork("pp", hosts, "eth1", addresses, 29501, (40000, 44095))


BAD_GROUPS = {
    "a name, not an address": (_group(("10.20.2.11", "gpu-2.example")), "expected an IP address on eth1"),
    "outside the site": (_group(("10.20.2.11", "192.168.9.2")), "found 192.168.9.2"),
    "not in the inventory": (_group(("10.20.2.11", "10.20.2.19"), ("gpu-1", "gpu-9")), "found gpu-9 missing"),
    "one address twice": (_group(("10.20.2.11", "10.20.2.11")), "found the same address twice"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_GROUPS))
def test_bad_group_is_refused_with_what_to_do(case: str) -> None:
    group, fragment = BAD_GROUPS[case]
    with pytest.raises(NetworkPolicyError) as caught:
        build_site(["10.20.0.0/16"], ["10.20.5.0/24"], load_inventory(GROUP_INVENTORY), [group])
    assert fragment in caught.value.message and "serving group pp" in caught.value.message
    assert caught.value.hint and caught.value.exit_code == ExitCode.USAGE


BAD_SITES = {
    "no site network": ([], [], None, "expected at least one --site-cidr"),
    "not a network": (["10.20.0/16x"], [], None, "expected a network in CIDR form"),
    "host bits set": (["10.20.0.1/16"], [], None, "has host bits set"),
    "the whole internet": (["0.0.0.0/0"], [], None, "expected a site network of /8 or narrower"),
    "too wide v6": (["2000::/3"], [], None, "expected a site network of /16 or narrower"),
    "admin outside the site": (["10.20.0.0/16"], ["10.30.0.0/24"], None, "expected a network inside the site"),
    "inventory host by name": (["10.20.0.0/16"], [], "dns-name.yaml", "expected an IP address"),
    "inventory host outside": (["10.20.0.0/16"], [], "outside-site.yaml", "found 192.168.50.10"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_SITES))
def test_bad_site_is_refused_with_what_to_do(case: str) -> None:
    site, admin, inventory, fragment = BAD_SITES[case]
    with pytest.raises(NetworkPolicyError) as caught:
        build_site(site, admin, load_inventory(FIXTURES / inventory) if inventory else None)
    assert fragment in caught.value.message
    assert caught.value.hint
    assert isinstance(caught.value, InputError) and caught.value.exit_code == ExitCode.USAGE
