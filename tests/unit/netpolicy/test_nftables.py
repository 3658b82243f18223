"""nftables rulesets: golden files, the kernel's own check (`nft -c -f`), and the air gap in the text."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.netpolicy.model import (
    NetworkPolicyError,
    PolicyModel,
    Site,
    build_policy,
    build_site,
    inventory_groups,
)
from appliance.netpolicy.nftables import COUNTERS, apply_script, confirm_script, host_rulesets
from appliance.plan.inventory import load_inventory
from appliance.plan.profiles import load_profiles

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden" / "nftables"
PROFILES = load_profiles()

# case -> (profile, site networks, admin networks, inventory fixture)
CASES = {
    "cpu-llamacpp-no-inventory": ("cpu-llamacpp", ["10.20.0.0/16"], ["10.20.5.0/24"], None),
    "cpu-llamacpp-one-host": ("cpu-llamacpp", ["10.20.0.0/16"], ["10.20.5.7/32"], "one-host.yaml"),
    "h100-cluster-group": (
        "h100-cluster", ["10.20.0.0/16"], ["10.20.5.0/24"], "group-hosts.yaml",
    ),
    "h100-cluster-three-hosts": (
        "h100-cluster", ["10.20.0.0/16", "fd00:20::/48"], ["10.20.5.0/24", "fd00:20:0:5::/64"],
        "three-hosts.yaml",
    ),
    "rtx4090-dual-stack-no-inventory": (
        "rtx4090", ["10.20.0.0/16", "192.168.7.0/24", "fd00:20::/48"], ["192.168.7.0/28"], None,
    ),
}  # fmt: skip


def bind(case: str) -> tuple[PolicyModel, Site]:
    """As `appliance render` binds it: the inventory's groups with their inventory addresses."""
    profile, site, admin, inventory = CASES[case]
    loaded = load_inventory(FIXTURES / inventory) if inventory else None
    groups = inventory_groups(loaded) if loaded else ()
    bound = build_site(site, admin, loaded, groups, "inventory")
    return build_policy(PROFILES[profile], groups), bound


def render(case: str) -> dict[str, str]:
    return host_rulesets(*bind(case))


def nft_skip_reason() -> str | None:
    if shutil.which("nft") is None:
        return "nft is not installed (apt-get install nftables)"
    if os.geteuid() != 0:
        return "`nft -c` talks to the kernel's netfilter and needs root"
    return None


def nft_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


def chain(text: str, name: str) -> list[str]:
    body = text.split(f"\tchain {name} {{\n", 1)[1].split("\n\t}", 1)[0]
    return [
        line.strip()
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def sets(text: str) -> dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    found = {}
    for name, elements in re.findall(
        r"\tset (\w+) \{ type \w+; flags interval; elements = \{ ([^}]*) \}; \}", text
    ):
        found[name] = [ipaddress.ip_network(e.strip()) for e in elements.split(",")]
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_rulesets(case: str) -> None:
    files = render(case)
    directory = GOLDEN / case
    if os.environ.get("UPDATE_GOLDENS"):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, text in files.items():
            (directory / name).write_text(text)
    assert sorted(p.name for p in directory.glob("*.nft")) == sorted(files)
    for name, text in files.items():
        assert text == (directory / name).read_text(), (
            f"{name}: run UPDATE_GOLDENS=1 pytest {__file__}"
        )


def test_file_names() -> None:
    assert sorted(render("cpu-llamacpp-no-inventory")) == [
        "role-gateway.nft", "role-keycloak.nft", "role-model-server.nft", "single-host.nft",
    ]  # fmt: skip
    assert sorted(render("h100-cluster-group")) == [
        "host-edge-1.nft", "host-gpu-1.nft", "host-gpu-2.nft", "host-gpu-3.nft", "host-gpu-4.nft",
    ]  # fmt: skip
    assert sorted(render("h100-cluster-three-hosts")) == [
        "host-edge-1.nft", "host-gpu-1.nft", "host-gpu-2.nft",
    ]  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_nft_check_accepts_every_ruleset(tmp_path: Path, case: str) -> None:
    reason = nft_skip_reason()
    if reason:
        pytest.skip(reason)
    for name, text in render(case).items():
        path = tmp_path / name
        path.write_text(text)
        result = nft_check(path)
        assert result.returncode == 0, f"{name}:\n{result.stderr}"


def test_nft_check_can_fail(tmp_path: Path) -> None:
    reason = nft_skip_reason()
    if reason:
        pytest.skip(reason)
    path = tmp_path / "broken.nft"
    path.write_text(
        render("cpu-llamacpp-one-host")["host-box-1.nft"].replace(
            "tcp dport 8443", "tcp dport 70000"
        )
    )
    assert nft_check(path).returncode != 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_shape_default_drop_counted_and_logged(case: str) -> None:
    for name, text in render(case).items():
        assert (
            "\ntable inet appliance\ndelete table inet appliance\ntable inet appliance {\n" in text
        )
        for hook in ("input", "output", "forward"):
            assert (
                chain(text, hook)[0] == f"type filter hook {hook} priority filter; policy drop;"
            ), name
        for counter, (_, prefix) in COUNTERS.items():
            assert f"\tcounter {counter} {{" in text
            assert f'counter name "{counter}"' in text
            assert f'limit rate 10/minute burst 5 packets log prefix "{prefix}" level info' in text
        assert chain(text, "input")[1:3] == [
            'iif "lo" accept',
            "ct state established,related accept",
        ]
        assert chain(text, "offsite")[-1] == "drop"


@pytest.mark.parametrize("case", sorted(CASES))
def test_air_gap_nothing_leaves_the_site(case: str) -> None:
    _, site_cidrs, _, _ = CASES[case]
    site = [ipaddress.ip_network(c) for c in site_cidrs]
    for name, text in render(case).items():
        output = chain(text, "output")
        known = sets(text)
        # Before any accept but loopback (and IPv6 neighbour discovery), off-site goes to `offsite`.
        established = output.index("ct state established,related accept")
        before = output[:established]
        for version, keyword in ((4, "ip"), (6, "ip6")):
            own = sorted(n for n in site if n.version == version)  # the cases have no overlaps
            rule = f"meta nfproto ipv{version} {keyword} daddr != @site_v{version} goto offsite"
            if not own:
                rule = f"meta nfproto ipv{version} goto offsite"  # no site addresses of this family
            assert rule in before, f"{name}: {rule!r} missing before the first accept"
            assert known.get(f"site_v{version}", []) == own
        assert [r for r in before if "accept" in r and "offsite" not in r] in (
            ['oif "lo" accept'],
            [
                'oif "lo" accept',
                "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
            ],
        )
        # Every destination an accept names is a set of site addresses.
        for rule in output[established + 1 :]:
            if " accept" not in rule:
                continue
            target = re.search(r"daddr @(\w+)", rule)
            assert target, f"{name}: an output accept without a destination set: {rule}"
            for network in known[target[1]]:
                assert any(network.version == s.version and network.subnet_of(s) for s in site), (  # type: ignore[arg-type]
                    f"{name}: {network} is outside the site"
                )
        assert "0.0.0.0/0" not in text and "::/0" not in text


def test_the_model_server_is_reachable_from_the_gateway_only() -> None:
    files = render("h100-cluster-three-hosts")
    for name in ("host-gpu-1.nft", "host-gpu-2.nft"):
        rules = [r for r in chain(files[name], "input") if "dport 8000" in r]
        assert [r.split(" tcp")[0] for r in rules] == ["ip saddr @gateway_v4"]
        assert sets(files[name])["gateway_v4"] == [ipaddress.ip_network("10.20.1.10/32")]
        # Peers: the other model server only, on any TCP port.
        peer = [r for r in chain(files[name], "input") if "meta l4proto tcp" in r]
        assert [r.split(" meta")[0] for r in peer] == ["ip saddr @model_server_v4"]
    assert sets(files["host-gpu-1.nft"])["model_server_v4"] == [
        ipaddress.ip_network("10.20.2.12/32")
    ]
    edge = [r for r in chain(files["host-edge-1.nft"], "input") if "dport" in r]
    assert not any("8000" in r or "8180" in r for r in edge), (
        "the edge host takes the gateway port only"
    )


def test_ssh_from_the_admin_network_on_every_host_with_its_port() -> None:
    files = render("h100-cluster-three-hosts")
    for name, port in (("host-edge-1.nft", 22), ("host-gpu-1.nft", 22), ("host-gpu-2.nft", 2222)):
        rules = [r for r in chain(files[name], "input") if "@admin_v" in r]
        assert [r.split(" accept")[0] for r in rules] == [
            f"ip saddr @admin_v4 tcp dport {port}", f"ip6 saddr @admin_v6 tcp dport {port}",
        ]  # fmt: skip


def test_single_host_allows_users_and_ssh_only() -> None:
    text = render("cpu-llamacpp-no-inventory")["single-host.nft"]
    accepts = [
        r.split(" accept")[0] for r in chain(text, "input") if r.endswith('"') and " accept" in r
    ]
    assert accepts == ["ip saddr @clients_v4 tcp dport 8443", "ip saddr @admin_v4 tcp dport 22"]
    # Out: nothing opens a connection; only replies (no SYN) of those two flows.
    outbound = [r.split(" accept")[0] for r in chain(text, "output") if " accept comment" in r]
    assert outbound == [
        "ip daddr @clients_v4 tcp sport 8443 tcp flags & syn == 0",
        "ip daddr @admin_v4 tcp sport 22 tcp flags & syn == 0",
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_reply_rules_cannot_open_connections(case: str) -> None:
    for text in render(case).values():
        for hook in ("input", "output"):
            for rule in chain(text, hook):
                if "replies: " in rule:
                    assert " tcp sport " in rule and "tcp flags & syn == 0 accept" in rule, rule
                    assert "dport" not in rule, rule


def test_rulesets_without_an_admin_network_are_refused() -> None:
    with pytest.raises(NetworkPolicyError, match="lock them out"):
        host_rulesets(build_policy(PROFILES["cpu-llamacpp"]), build_site(["10.20.0.0/16"]))


def test_multi_node_without_an_inventory_is_refused() -> None:
    site = build_site(["10.20.0.0/16"], ["10.20.5.0/24"])
    with pytest.raises(NetworkPolicyError, match="expected an inventory"):
        host_rulesets(build_policy(PROFILES["h100-cluster"]), site)


def test_apply_and_confirm_scripts_are_valid_shell() -> None:
    for script in (apply_script("/etc/appliance/nftables.nft", 30), confirm_script()):
        assert subprocess.run(["sh", "-n"], input=script, text=True, check=False).returncode == 0
    script = apply_script("/etc/appliance/nftables.nft", 30)
    # Checked before anything changes; the revert is armed before the new rules load.
    assert script.index("nft -c -f") < script.index("systemd-run") < script.index("\nnft -f /etc")
    assert (
        "--on-active=30s --timer-property=AccuracySec=1s" in script
    )  # on time, not up to a minute late


# --- what the rulesets allow, evaluated from their text, equals the model's flows ------------

_ACCEPT = re.compile(
    r'^(?:(?P<nic>iifname|oifname) "(?P<interface>[^"]+)" )?(?P<family>ip6?) '
    r"(?P<side>saddr|daddr) @(?P<set>\w+) "
    r"(?:tcp dport (?P<first>\d+)(?:-(?P<last>\d+))?|meta l4proto tcp) accept comment "
)
_PASS = ('iif "lo" accept', 'oif "lo" accept', "ct state established,related accept")
PROBE_PORTS = (22, 2222, 6379, 8000, 8180, 8443, 29500, 29501, 29502, 39999, 40000, 42000,
               44095, 44096)  # fmt: skip
INTERFACES = ("eth0", "eth1")
MACHINE = ipaddress.ip_address("10.20.5.7")  # on the admin network (and a client)


def admits(text: str, hook: str, peer: ipaddress.IPv4Address, port: int, interface: str) -> bool:
    """Whether ``hook`` accepts a new TCP connection (SYN) with ``peer`` on ``port`` via
    ``interface``: read rule by rule; an accept this reader does not know fails the test."""
    known = sets(text)
    for rule in chain(text, hook):
        if " accept" not in rule or rule in _PASS or "replies: " in rule:
            continue  # loopback, established, replies (never SYN) pass no new connection
        if rule.startswith("icmpv6 "):
            continue
        match = _ACCEPT.match(rule)
        assert match, f"an accept rule this reader does not know: {rule}"
        if match["interface"] not in (None, interface):
            continue
        if not any(peer in n for n in known[match["set"]] if n.version == peer.version):
            continue
        if match["first"] is None:
            return True
        if int(match["first"]) <= port <= int(match["last"] or match["first"]):
            return True
    return False


def model_allows(model: PolicyModel, site: Site, source: str, destination: str, port: int,
                 interface: str) -> bool:  # fmt: skip
    """From the model and the site alone: may ``source`` open ``destination:port``?"""

    def components(name: str) -> tuple[str, ...]:
        if name == "machine":
            return ("admin", "clients")
        host = next(h for h in site.hosts if h.name == name)
        return (*host.roles, *site.components_of(name))

    def address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return (
            MACHINE if name == "machine" else next(h.address for h in site.hosts if h.name == name)
        )

    ssh = next(h.ssh_port for h in site.hosts if h.name == destination)
    for flow in model.flows_for("host"):
        if flow.source not in components(source) or flow.destination not in components(destination):
            continue
        if flow.interface not in (None, interface):
            continue
        if not any(address(source) in n for n in site.addresses(flow.source)):
            continue
        if flow.source == "admin":
            if port == ssh:
                return True
        elif flow.allows(port):
            return True
    return False


def differences(
    model: PolicyModel, site: Site, files: dict[str, str]
) -> tuple[list[tuple[object, ...]], set[tuple[str, str, int, str]]]:
    """(source, destination, port, interface) where rulesets and model disagree; what is allowed."""
    differ: list[tuple[object, ...]] = []
    allowed = set()
    address = {h.name: h.address for h in site.hosts} | {"machine": MACHINE}
    for source in ["machine", *(h.name for h in site.hosts)]:
        for target in site.hosts:
            if target.name == source:
                continue  # loopback
            for port in PROBE_PORTS:
                for interface in INTERFACES:
                    leaves = source == "machine" or admits(
                        files[f"host-{source}.nft"],
                        "output",
                        target.address,
                        port,
                        interface,  # type: ignore[arg-type]
                    )
                    enters = admits(files[f"host-{target.name}.nft"], "input",
                                    address[source], port, interface)  # type: ignore[arg-type]  # fmt: skip
                    expected = model_allows(model, site, source, target.name, port, interface)
                    if (leaves and enters) != expected:
                        differ.append((source, target.name, port, interface, leaves, enters))
                    if expected:
                        allowed.add((source, target.name, port, interface))
    return differ, allowed


@pytest.mark.parametrize("case", ["cpu-llamacpp-one-host", "h100-cluster-three-hosts",
                                  "h100-cluster-group"])  # fmt: skip
def test_what_the_rulesets_allow_equals_the_model(case: str) -> None:
    model, site = bind(case)
    differ, allowed = differences(model, site, render(case))
    assert differ == [], (
        f"rulesets and model differ (source, destination, port, nic, out, in): {differ}"
    )
    assert allowed, "nothing allowed at all: the comparison would be empty"
    if case == "h100-cluster-group":
        assert ("gpu-2", "gpu-1", 29501, "eth1") in allowed
        assert ("gpu-3", "gpu-2", 44095, "eth1") in allowed
        assert ("gpu-1", "gpu-2", 29501, "eth1") not in allowed


def test_the_ruleset_comparison_can_fail() -> None:
    # Widen the group's range by one port in every ruleset: exactly those probes must differ.
    model, site = bind("h100-cluster-group")
    files = {n: t.replace("dport 40000-44095", "dport 40000-44096")
             for n, t in render("h100-cluster-group").items()}  # fmt: skip
    differ, _ = differences(model, site, files)
    members = ("gpu-1", "gpu-2", "gpu-3")
    assert sorted(differ) == sorted(
        (a, b, 44096, "eth1", True, True) for a in members for b in members if a != b
    )


def test_group_ports_between_members_only() -> None:
    files = render("h100-cluster-group")
    head, worker, other_worker = ("host-gpu-1.nft", "host-gpu-2.nft", "host-gpu-3.nft")
    members = {n: ipaddress.ip_address(a) for n, a in
               (("gpu-1", "10.20.2.11"), ("gpu-2", "10.20.2.12"), ("gpu-3", "10.20.2.13"))}  # fmt: skip
    outsider, edge = ipaddress.ip_address("10.20.2.14"), ipaddress.ip_address("10.20.1.10")
    # The head's store: from the workers, on eth1 only.
    assert admits(files[head], "input", members["gpu-2"], 29501, "eth1")
    assert admits(files[worker], "output", members["gpu-1"], 29501, "eth1")
    assert not admits(files[head], "input", members["gpu-2"], 29501, "eth0")  # another interface
    assert not admits(files[worker], "output", members["gpu-1"], 29501, "eth0")
    # The master port on a worker: nobody.
    assert not admits(files[worker], "input", members["gpu-1"], 29501, "eth1")
    assert not admits(files[other_worker], "output", members["gpu-2"], 29501, "eth1")
    # The range, both ways between every pair of members; its edges, not beyond.
    for port, inside in ((39999, False), (40000, True), (44095, True), (44096, False)):
        assert admits(files[worker], "input", members["gpu-3"], port, "eth1") == inside
        assert admits(files[head], "output", members["gpu-2"], port, "eth1") == inside
    # Non-members: the model server outside the group, the gateway, the admin network.
    for stranger in (outsider, edge, MACHINE):
        for port in (29501, 40000, 44095):
            assert not admits(files[head], "input", stranger, port, "eth1")
            assert not admits(files[worker], "input", stranger, port, "eth1")
    for name in ("host-gpu-4.nft", "host-edge-1.nft"):
        assert "group" not in files[name]  # nothing about the group where it is not
    # Each member's peers exclude itself (its own traffic is loopback).
    assert sets(files[worker])["group_pp_v4"] == [
        ipaddress.ip_network("10.20.2.11/32"), ipaddress.ip_network("10.20.2.13/32")
    ]  # fmt: skip


def test_groups_must_be_bound_to_render() -> None:
    model, _ = bind("h100-cluster-group")
    unbound = build_site(["10.20.0.0/16"], ["10.20.5.0/24"],
                         load_inventory(FIXTURES / "group-hosts.yaml"))  # fmt: skip
    with pytest.raises(NetworkPolicyError, match="same serving groups"):
        host_rulesets(model, unbound)
