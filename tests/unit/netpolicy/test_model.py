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
    policy_for_plan,
)
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


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_keeps_the_invariants(name: str) -> None:
    profile = PROFILES[name]
    model = build_policy(profile)
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
    expected_model = {"gateway", "admin"} | ({"model-server"} if model.multi_node else set())
    assert sources_of["model-server"] == expected_model
    # Keycloak makes no outbound calls; the model server only talks to its peers (and DNS).
    assert {f.destination for f in model.flows if f.source == "keycloak"} == {"dns"}
    assert {f.destination for f in model.flows if f.source == "model-server"} <= {
        "model-server",
        "dns",
    }
    assert model.model_server_port == profile.engine.port
    multi = isinstance(profile.engine, VllmEngine) and profile.match.gpu is not None
    assert model.multi_node == (multi and profile.match.gpu.nodes.max > 1)  # type: ignore[union-attr]
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
