"""The facts script's network, RDMA, compiler and clock sections, and their parsers.

``tests/fixtures/remote_facts/dev-host-*.txt`` are what ``facts_script()`` printed on the
development machine (Debian, iproute2 installed; then again with a ``PATH`` holding no
``ip`` and no compiler, so the script read /sys/class/net). Its RDMA loop runs here against
a /sys tree laid out as an mlx5 host's (this machine has no RDMA device). Hostile outputs:
each refused with the host and the section named, never a traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from appliance.detect.facts import ClockFacts, InterfaceFacts, RdmaPortFacts
from appliance.detect.remote import (
    MAX_INTERFACES,
    MAX_SECTION_CHARS,
    facts_script,
    parse_facts_output,
)
from appliance.errors import RemoteFactsError

from .test_remote_facts import recording, with_section


def test_a_host_with_iproute2_gives_its_interfaces_with_mtu_state_and_ipv4() -> None:
    facts = parse_facts_output(recording("dev-host-iproute2"), "dev")
    assert facts.interfaces is not None
    by_name = {i.name: i for i in facts.interfaces}
    assert by_name["eth0"] == InterfaceFacts("eth0", 1400, "up", ("192.0.2.2/24",))
    assert by_name["lo"] == InterfaceFacts("lo", 65536, "unknown", ("127.0.0.1/8",))
    assert by_name["ifb0"] == InterfaceFacts("ifb0", 1500, "down", ())  # no address
    assert by_name["applab0"].ipv4 == ("10.231.0.1/24",)  # IPv6 addresses are left out
    assert (facts.rdma_ports, facts.nvidia_peermem) == ((), False)  # no /sys/class/infiniband
    assert facts.compilers == ("g++", "gcc")
    assert facts.clock is None  # no window given: the offset is not recorded


def test_without_iproute2_the_interfaces_come_from_sys_without_addresses() -> None:
    facts = parse_facts_output(recording("dev-host-no-iproute2"), "dev")
    assert facts.interfaces is not None
    by_name = {i.name: i for i in facts.interfaces}
    assert by_name["eth0"] == InterfaceFacts("eth0", 1400, "up", None)
    assert by_name["ifb1"].operstate == "down" and by_name["lo"].mtu == 65536
    assert facts.compilers == ()  # that PATH held none


def test_output_recorded_before_these_sections_still_parses_with_them_unknown() -> None:
    text = recording("lab-debian-fresh")
    assert not re.search(r"^@@(net|rdma|cc|clock)$", text, re.M)
    facts = parse_facts_output(text, "sp13-1", clock_window=(1.0, 2.0))
    assert (facts.interfaces, facts.rdma_ports, facts.nvidia_peermem) == (None, None, None)
    assert (facts.compilers, facts.clock) == (None, None)


def test_the_script_prints_the_new_sections_here(tmp_path: Path) -> None:
    before = time.time()
    result = subprocess.run(["sh", "-s"], input=facts_script(str(tmp_path)), text=True,
                            capture_output=True, check=True, timeout=60)  # fmt: skip
    after = time.time()
    facts = parse_facts_output(result.stdout, "local", clock_window=(before, after))
    assert facts.interfaces is not None and "lo" in {i.name for i in facts.interfaces}
    assert facts.rdma_ports is not None and facts.compilers is not None
    # The same clock on both sides: the offset lies within its uncertainty.
    assert facts.clock is not None
    assert abs(facts.clock.offset_ms) <= facts.clock.uncertainty_ms
    assert facts.clock.uncertainty_ms <= (after - before) * 500 + 1


# --- the clock --------------------------------------------------------------------


def with_clock(line: str) -> str:
    return recording("dev-host-iproute2").replace(
        "@@clock\n" + recording("dev-host-iproute2").split("@@clock\n", 1)[1].split("\n", 1)[0],
        f"@@clock\n{line}",
    )


@pytest.mark.parametrize(
    ("printed", "window", "expected"),
    [
        ("1000.250000000", (999.0, 1001.0), ClockFacts(250, 1000)),  # host 250 ms ahead
        ("1000.000000000", (1004.9, 1005.1), ClockFacts(-5000, 100)),  # host 5 s behind
        ("1000.%N", (999.0, 1001.0), ClockFacts(500, 1500)),  # no %N: seconds, +-0.5 s more
        ("1000", (1000.0, 1000.0), ClockFacts(500, 500)),
    ],
)
def test_the_clock_offset_is_the_hosts_time_against_the_windows_midpoint(
    printed: str, window: tuple[float, float], expected: ClockFacts
) -> None:
    assert parse_facts_output(with_clock(printed), "h", clock_window=window).clock == expected


@pytest.mark.parametrize("printed", ["yesterday", "-5", "1" * 13, "12:00:00"])
def test_a_clock_that_is_not_seconds_is_refused(printed: str) -> None:
    with pytest.raises(RemoteFactsError, match=r"^h: the facts script's @@clock section holds"):
        parse_facts_output(with_clock(printed), "h", clock_window=(1.0, 2.0))


def test_a_window_that_ends_before_it_starts_is_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="before <= after"):
        parse_facts_output(with_clock("1000.0"), "h", clock_window=(2.0, 1.0))


# --- hostile network sections ------------------------------------------------------


def ip_json(*interfaces: dict[str, object]) -> list[str]:
    return [json.dumps(list(interfaces))]


def iface(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"ifname": "eth1", "mtu": 9000, "operstate": "UP", "addr_info": [
        {"family": "inet", "local": "10.0.0.5", "prefixlen": 24}]}  # fmt: skip
    return base | changes


def net(lines: list[str]) -> tuple[InterfaceFacts, ...] | None:
    return parse_facts_output(with_section(recording("dev-host-iproute2"), "net", lines),
                              "h").interfaces  # fmt: skip


def test_interface_names_no_group_could_use_are_left_out() -> None:
    assert net(ip_json(iface(ifname="x" * 16), iface(ifname="bad name"), iface())) == (
        InterfaceFacts("eth1", 9000, "up", ("10.0.0.5/24",)),
    )
    assert net(["eth1 9000 up", "weird/name 1500 up"]) == (InterfaceFacts("eth1", 9000, "up"),)
    assert net(ip_json(iface(addr_info=None))) == (InterfaceFacts("eth1", 9000, "up", ()),)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['[{"ifname": "eth1", '], "is not JSON"),
        (["[" * 100_000], "is not JSON"),  # nested past the parser's recursion: refused
        (['{"ifname": "eth1"}'], "NAME MTU OPERSTATE"),  # an object, not ip's list
        (['"eth1"'], "NAME MTU OPERSTATE"),
        (ip_json(*[iface(ifname=f"e{i}") for i in range(MAX_INTERFACES + 1)]), "more than 512"),
        (["[1]"], "not an object"),
        (ip_json(iface(mtu="9000")), "gives eth1 the MTU '9000'"),
        (ip_json(iface(mtu=True)), "gives eth1 the MTU"),
        (ip_json(iface(mtu=-1)), "gives eth1 the MTU"),
        (ip_json(iface(operstate="UP; rm -rf")), "gives eth1 the state"),
        (ip_json(iface(addr_info="10.0.0.5")), "addresses or no list"),
        (ip_json(iface(addr_info=[{"family": "inet", "local": "10.0.0.5"}] * 65)), "more than 64"),
        (ip_json(iface(addr_info=["10.0.0.5"])), "an address that is not an object"),
        (ip_json(iface(addr_info=[{"family": "inet", "local": "999.0.0.1", "prefixlen": 24}])),
         "IPv4 address '999.0.0.1'/24"),
        (ip_json(iface(addr_info=[{"family": "inet", "local": "10.0.0.5", "prefixlen": 33}])),
         "IPv4 address '10.0.0.5'/33"),
        (ip_json(iface(addr_info=[{"family": "inet", "local": "fe80::1", "prefixlen": 64}])),
         "IPv4 address 'fe80::1'"),
        (["eth1 lots up"], "NAME MTU OPERSTATE"),
        (["eth1 1500"], "NAME MTU OPERSTATE"),
        (["eth1 " + "9" * 8 + " up"], "NAME MTU OPERSTATE"),
        (["x" * (MAX_SECTION_CHARS + 1)], f"more than {MAX_SECTION_CHARS}"),
        ([f"e{i} 1500 up" for i in range(MAX_INTERFACES + 1)], "more than 512"),
    ],
)  # fmt: skip
def test_a_network_section_no_linux_host_prints_is_refused(lines: list[str], match: str) -> None:
    with pytest.raises(RemoteFactsError, match=r"^h: the facts script's @@net section") as caught:
        net(lines)
    assert match in caught.value.message
    assert caught.value.hint is not None


# --- RDMA -------------------------------------------------------------------------


def rdma_loop() -> str:
    """The script's RDMA lines, as sent to a host."""
    script = facts_script("/opt/appliance")
    return script.split('echo "@@rdma"; ', 1)[1].split('echo "@@cc"', 1)[0]


def mlx5_tree(root: Path) -> None:
    """/sys as an mlx5 host has it: mlx5_0 port 1 ACTIVE on InfiniBand with netdev ib0,
    mlx5_1 port 1 DOWN on Ethernet (RoCE) with ens1f1; nvidia_peermem loaded."""
    for device, state, layer, netdev in (("mlx5_0", "4: ACTIVE", "InfiniBand", "ib0"),
                                         ("mlx5_1", "1: DOWN", "Ethernet", "ens1f1")):  # fmt: skip
        port = root / "sys/class/infiniband" / device / "ports/1"
        port.mkdir(parents=True)
        (port / "state").write_text(state + "\n")
        (port / "link_layer").write_text(layer + "\n")
        (root / "sys/class/infiniband" / device / "device/net" / netdev).mkdir(parents=True)
    (root / "sys/module/nvidia_peermem").mkdir(parents=True)


def test_the_rdma_loop_reads_an_mlx5_hosts_sysfs(tmp_path: Path) -> None:
    mlx5_tree(tmp_path)
    loop = rdma_loop().replace("/sys/", f"{tmp_path}/sys/")
    printed = subprocess.run(["sh", "-c", loop], text=True, capture_output=True, check=True,
                             timeout=30).stdout.splitlines()  # fmt: skip
    assert printed == ["port|mlx5_0|1|4: ACTIVE|InfiniBand", "port|mlx5_1|1|1: DOWN|Ethernet",
                       "net|mlx5_0|ib0", "net|mlx5_1|ens1f1", "peermem|yes"]  # fmt: skip
    facts = parse_facts_output(with_section(recording("dev-host-iproute2"), "rdma", printed), "h")
    assert facts.rdma_ports == (
        RdmaPortFacts("mlx5_0", 1, "ACTIVE", "InfiniBand", ("ib0",)),
        RdmaPortFacts("mlx5_1", 1, "DOWN", "Ethernet", ("ens1f1",)),
    )
    assert facts.nvidia_peermem is True


@pytest.mark.parametrize(
    "lines",
    [
        ["port|mlx5_0|one|4: ACTIVE|InfiniBand"],
        ["port|mlx5 0|1|4: ACTIVE|InfiniBand"],
        ["port|mlx5_0|1|4: active; reboot|InfiniBand"],
        ["hello"],
        ["peermem|yes"] * 600,
        ["x" * (MAX_SECTION_CHARS + 1)],
    ],
)
def test_an_rdma_section_no_linux_host_prints_is_refused(lines: list[str]) -> None:
    text = with_section(recording("dev-host-iproute2"), "rdma", lines)
    with pytest.raises(RemoteFactsError, match=r"^h: the facts script's @@rdma section"):
        parse_facts_output(text, "h")


def test_an_unknown_link_layer_is_recorded_as_unknown() -> None:
    text = with_section(recording("dev-host-iproute2"), "rdma", ["port|mlx5_0|1|4: ACTIVE|"])
    facts = parse_facts_output(text, "h")
    assert facts.rdma_ports == (RdmaPortFacts("mlx5_0", 1, "ACTIVE", "unknown"),)
    assert facts.nvidia_peermem is None  # no peermem line


def test_the_compiler_section_keeps_only_the_probed_names() -> None:
    text = with_section(recording("dev-host-iproute2"), "cc", ["gcc", "rm", "clang++", "g++"])
    assert parse_facts_output(text, "h").compilers == ("clang++", "g++", "gcc")
