"""NetworkPolicies: schema-valid, air-gapped, and exactly the model's connectivity according to nca."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from appliance.netpolicy.k8s import (
    ANALYSIS_DIR,
    MANIFESTS_DIR,
    NAMESPACE,
    network_policies,
    render_manifests,
)
from appliance.netpolicy.model import PolicyModel, Site, build_policy, build_site, inventory_groups
from appliance.netpolicy.render import render_files, write_directory
from appliance.plan.inventory import load_inventory
from appliance.plan.profiles import load_profiles

from .nca_report import model_edges, nca_edges, parse_connection, run_nca

PROFILES = load_profiles()
GOLDEN = Path(__file__).parent / "golden" / "k8s"
SITES = {
    "one-network": ["10.20.0.0/16"],
    "two-networks-dual-stack": ["10.20.0.0/16", "192.168.7.0/24", "fd00:20::/48"],
}
# PROFILE+group: the profile with the serving group of fixtures/group-hosts.yaml (3 members).
GROUPED = "h100-cluster+group"
CASES = [(p, s) for p in [*sorted(PROFILES), GROUPED] for s in sorted(SITES)]


def model_for(profile: str) -> PolicyModel:
    name, _, grouped = profile.partition("+")
    groups = inventory_groups(load_inventory(Path(__file__).parent / "fixtures/group-hosts.yaml"))
    return build_policy(PROFILES[name], groups if grouped else ())


def rendered(tmp_path: Path, profile: str, site_name: str) -> tuple[PolicyModel, Site, Path]:
    model = model_for(profile)
    site = build_site(SITES[site_name])
    out = tmp_path / "out"
    write_directory(render_files(model, site, "k8s"), out)
    return model, site, out


def documents(directory: Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def policies(directory: Path) -> list[dict[str, Any]]:
    return [d for d in documents(directory / MANIFESTS_DIR) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize(("profile", "site"), CASES)
def test_manifests_and_stand_ins_pass_kubernetes_validate(
    tmp_path: Path, profile: str, site: str
) -> None:
    _, _, out = rendered(tmp_path, profile, site)
    docs = documents(out / MANIFESTS_DIR) + documents(out / ANALYSIS_DIR)
    assert {d["kind"] for d in docs} == {"Namespace", "NetworkPolicy", "Deployment", "StatefulSet"}
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def test_kubernetes_validate_catches_a_broken_policy() -> None:
    model, site = build_policy(PROFILES["cpu-llamacpp"]), build_site(SITES["one-network"])
    policy = network_policies(model, site)[1][1]
    policy["spec"]["ingress"][0]["ports"][0]["port"] = "not a port!"
    policy["spec"]["podSelectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize(("profile", "site"), CASES)
def test_nca_connectivity_equals_the_policy_model(tmp_path: Path, profile: str, site: str) -> None:
    model, bound, out = rendered(tmp_path, profile, site)
    report = run_nca(out)
    found, expected = nca_edges(report), model_edges(model, bound)
    assert found - expected == set(), f"nca allows more than the model:\n{report}"
    assert expected - found == set(), f"nca allows less than the model:\n{report}"
    if model.multi_node and not model.groups:  # the peer flow is there, between two pods
        assert ("appliance/model-server-1", "appliance/model-server-2", "tcp", None) in found
    if model.groups:  # the group's flows are there; nothing else reaches its ports
        head, w1, w2 = (
            "appliance/group-pp-head-1",
            "appliance/group-pp-worker-1",
            "appliance/group-pp-worker-2",
        )
        assert {(w1, head, "tcp", 29501), (w2, head, "tcp", 29501)} <= found
        assert {(head, w1, "tcp", 40000), (w1, w2, "tcp", 44095), (w2, head, "tcp", 44095)} <= found
        outsiders = ("appliance/model-server-1", "appliance/gateway-1", "appliance/keycloak-1")
        for src, dst, _, port in found:
            if port is not None and (port == 29501 or 40000 <= port <= 44095):
                assert src not in outsiders and not src[0].isdigit(), (src, dst, port)
                assert dst != "appliance/model-server-1", (src, dst, port)
        assert (head, w1, "tcp", 29501) not in found  # the master port on a worker: nobody
        assert (w1, w2, "tcp", 44096) not in found and (w1, w2, "tcp", 39999) not in found
        assert ("appliance/model-server-1", "appliance/model-server-2", "tcp", None) not in found


def test_the_comparison_can_fail(tmp_path: Path) -> None:
    # Guard against a comparison that can never fail: widen one policy, nca must show it.
    model, site, out = rendered(tmp_path, "cpu-llamacpp", "one-network")
    path = out / MANIFESTS_DIR / "10-networkpolicies.yaml"
    path.write_text(
        path.read_text().replace("port: 8180", "port: 8180\n    - protocol: TCP\n      port: 9000")
    )
    extra = nca_edges(run_nca(out)) - model_edges(model, site)
    assert extra == {("appliance/gateway-1", "appliance/keycloak-1", "tcp", 9000)}


def test_nca_connection_texts() -> None:
    assert parse_connection("{protocols:TCP, UDP,dst_ports:53}") == {("tcp", 53), ("udp", 53)}
    assert parse_connection("{protocols:TCP}") == {("tcp", None)}
    assert parse_connection("{protocols:TCP,dst_ports:80,443,8000-8002}") == {
        ("tcp", 80), ("tcp", 443), ("tcp", 8000), ("tcp", 8001), ("tcp", 8002)
    }  # fmt: skip
    assert parse_connection("All connections") == {("all", None)}
    with pytest.raises(AssertionError):
        parse_connection("{protocols:TCP,dst_ports:443,methods:GET}")


@pytest.mark.parametrize(("profile", "site"), CASES)
def test_air_gap_no_egress_leaves_the_site(tmp_path: Path, profile: str, site: str) -> None:
    _, bound, out = rendered(tmp_path, profile, site)
    found = policies(out)
    assert found
    for policy in found:
        assert policy["metadata"]["namespace"] == NAMESPACE
        for rule in policy["spec"].get("egress", []):
            # A rule without `to` (or with an empty one) allows every destination.
            assert rule.get("to"), f"{policy['metadata']['name']}: egress rule without destinations"
            for peer in rule["to"]:
                block = peer.get("ipBlock")
                if block is None:
                    assert set(peer) <= {"podSelector", "namespaceSelector"}
                    continue
                network = ipaddress.ip_network(block["cidr"])
                assert network.prefixlen > 0, "0.0.0.0/0 egress"
                assert any(
                    network.version == n.version and network.subnet_of(n)  # type: ignore[arg-type]
                    for n in bound.networks
                ), f"egress to {network}, outside the site"
        assert "0.0.0.0/0" not in yaml.safe_dump(policy) and "::/0" not in yaml.safe_dump(policy)


@pytest.mark.parametrize("profile", [*sorted(PROFILES), GROUPED])
def test_default_deny_first_and_every_pod_selected(tmp_path: Path, profile: str) -> None:
    _, _, out = rendered(tmp_path, profile, "one-network")
    found = policies(out)
    deny = found[0]
    assert deny["metadata"]["name"] == "default-deny"
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    stand_ins = [d for d in documents(out / ANALYSIS_DIR) if d["kind"] != "Namespace"]
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in stand_ins]
    for policy in found[1:]:
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pods), selector
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} & {
            k.capitalize() for k in policy["spec"] if k in ("ingress", "egress")
        }


@pytest.mark.parametrize("profile", ["cpu-llamacpp", "h100-cluster", GROUPED])
def test_golden_manifests(profile: str) -> None:
    files = render_manifests(model_for(profile), build_site(SITES["one-network"]))
    for relative, text in files.items():
        golden = GOLDEN / profile / relative
        if os.environ.get("UPDATE_GOLDENS"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"run UPDATE_GOLDENS=1 pytest {__file__}"
    on_disk = {str(p.relative_to(GOLDEN / profile)) for p in (GOLDEN / profile).rglob("*.yaml")}
    assert on_disk == set(files)
