"""Address plan and clash detection, from `ip -j` output recorded on this machine kind."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from appliance.lab.errors import LabInputError
from appliance.lab.network import (
    MAX_HOSTS,
    MAX_NAME,
    NETWORK_ENV,
    check_host_count,
    check_name,
    choose_index,
    lab_range,
    plan_network,
    taken_networks,
)

DATA = Path(__file__).parent / "data"
BASE = IPv4Network("10.231.0.0/16")


def test_plan_one_bridge_and_a_slash24_per_lab() -> None:
    net = plan_network("lab", 2, BASE, 3)
    assert net.subnet == IPv4Network("10.231.3.0/24")
    assert net.bridge == "applab3"
    assert net.gateway == IPv4Address("10.231.3.1")
    assert [(h.name, str(h.address), h.netns, h.veth) for h in net.hosts] == [
        ("lab-1", "10.231.3.2", "applab-lab-1", "applab3h1"),
        ("lab-2", "10.231.3.3", "applab-lab-2", "applab3h2"),
    ]


def test_interface_names_fit_the_kernel_limit_at_the_extremes() -> None:
    net = plan_network("a" * MAX_NAME, MAX_HOSTS, BASE, 255)
    assert all(len(n) <= 15 for n in [net.bridge, *(h.veth for h in net.hosts)])
    assert net.hosts[-1].address in net.subnet
    assert net.hosts[-1].address != net.subnet.broadcast_address


def test_index_outside_the_range_is_refused() -> None:
    with pytest.raises(LabInputError):
        plan_network("lab", 1, IPv4Network("10.231.0.0/24"), 1)


def test_choose_index_skips_other_labs_and_the_machines_networks() -> None:
    taken = [IPv4Network("10.231.1.0/24"), IPv4Network("10.0.0.0/8")]
    assert choose_index(BASE, [], []) == 0
    assert choose_index(BASE, [0], [IPv4Network("10.231.1.128/25")]) == 2
    with pytest.raises(LabInputError, match="no free /24"):
        choose_index(BASE, [], taken)


def test_recorded_routes_and_addresses() -> None:
    routes = json.loads((DATA / "ip-route-table-all.json").read_text())
    addresses = json.loads((DATA / "ip-addr.json").read_text())
    taken = taken_networks(routes, addresses)
    assert IPv4Network("192.0.2.0/24") in taken
    assert IPv4Network("127.0.0.0/8") in taken
    assert IPv4Network("0.0.0.0/0") not in taken  # the default route is no clash
    assert choose_index(BASE, [], taken) == 0


def test_lab_range_default_env_and_refusals() -> None:
    assert lab_range({}) == BASE
    assert lab_range({NETWORK_ENV: "172.30.0.0/20"}) == IPv4Network("172.30.0.0/20")
    assert lab_range({NETWORK_ENV: "172.30.0.0/20"}, "192.168.50.0/24") == IPv4Network(
        "192.168.50.0/24"
    )
    for bad in ("8.8.0.0/16", "10.231.0.0/25", "10.231.0.1/16", "nonsense"):
        with pytest.raises(LabInputError):
            lab_range({}, bad)


@pytest.mark.parametrize("name", ["lab", "ci-2", "a1-b2-c3", "x" * MAX_NAME])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Lab", "2lab", "lab-", "la--b", "a_b", "../x", "x" * (MAX_NAME + 1)]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(LabInputError, match="not usable"):
        check_name(name)


def test_host_count_bounds() -> None:
    assert check_host_count(1) == 1
    for bad in (0, MAX_HOSTS + 1):
        with pytest.raises(LabInputError):
            check_host_count(bad)
