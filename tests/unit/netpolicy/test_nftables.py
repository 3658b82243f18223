"""nftables rulesets: golden files, the kernel's own check (`nft -c -f`), and the air gap in the text."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.netpolicy.model import NetworkPolicyError, build_policy, build_site
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
    "h100-cluster-three-hosts": (
        "h100-cluster", ["10.20.0.0/16", "fd00:20::/48"], ["10.20.5.0/24", "fd00:20:0:5::/64"],
        "three-hosts.yaml",
    ),
    "rtx4090-dual-stack-no-inventory": (
        "rtx4090", ["10.20.0.0/16", "192.168.7.0/24", "fd00:20::/48"], ["192.168.7.0/28"], None,
    ),
}  # fmt: skip


def render(case: str) -> dict[str, str]:
    profile, site, admin, inventory = CASES[case]
    bound = build_site(site, admin, load_inventory(FIXTURES / inventory) if inventory else None)
    return host_rulesets(build_policy(PROFILES[profile]), bound)


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
