"""The lab's network: one bridge per lab on the machine, one network namespace per host.

Layout (lab index ``i``, the ``i``-th /24 of the lab range, 10.231.0.0/16 by
default, ``APPLIANCE_LAB_NETWORK`` to change it)::

    machine: bridge applab<i>  10.231.i.1/24   (forwarding off, IPv6 off)
      ├─ veth applab<i>h1 ── netns applab-<lab>-1: eth0 10.231.i.2/24, lo
      └─ veth applab<i>h2 ── netns applab-<lab>-2: eth0 10.231.i.3/24, lo

Invariants: a host has an on-link route to its /24 and nothing else (no
default route, no DNS): that is the air gap. Hosts reach each other and the
machine's bridge address; the bridge does not forward (per-interface IPv4
forwarding off), so even a machine with ``ip_forward=1`` routes nothing out
for them. Every link the lab creates carries the alias ``appliance-lab:<lab>``
so teardown finds it even without the lab's state file. A lab's /24 never
overlaps an address or route the machine already has.

Pure parts (address plan, parsing ``ip -j`` output) are separate from the
``ip`` commands that apply them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from appliance.lab.errors import LabInputError
from appliance.lab.proc import run, wait_until

NETWORK_ENV = "APPLIANCE_LAB_NETWORK"
DEFAULT_NETWORK = "10.231.0.0/16"
LAB_PREFIX = 24
MAX_LABS = 256
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")
MAX_NAME = 20
MAX_HOSTS = 32
HOST_IFNAME = "eth0"


@dataclass(frozen=True, slots=True)
class HostNet:
    name: str  # host name, also the nspawn machine name
    address: IPv4Address
    netns: str
    veth: str  # machine side of the veth pair


@dataclass(frozen=True, slots=True)
class LabNet:
    index: int
    subnet: IPv4Network
    bridge: str
    gateway: IPv4Address  # the machine's address on the bridge
    hosts: tuple[HostNet, ...]


def check_name(name: str) -> str:
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise LabInputError(
            f"lab name {name!r} is not usable: expected lowercase letters, digits and single "
            f"dashes, starting with a letter, at most {MAX_NAME} characters (e.g. 'lab', 'ci-2')"
        )
    return name


def check_host_count(count: int) -> int:
    if not 1 <= count <= MAX_HOSTS:
        raise LabInputError(f"expected 1 to {MAX_HOSTS} lab hosts, found {count}")
    return count


def lab_range(environ: Mapping[str, str] | None = None, text: str | None = None) -> IPv4Network:
    """The private IPv4 range labs take their /24 networks from."""
    env = os.environ if environ is None else environ
    value = text or env.get(NETWORK_ENV, "").strip() or DEFAULT_NETWORK
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise LabInputError(f"lab address range {value!r} is not an IPv4 network: {exc}") from exc
    if not network.is_private or network.prefixlen > LAB_PREFIX:
        raise LabInputError(
            f"lab address range {value} must be a private IPv4 network of /{LAB_PREFIX} or larger"
        )
    return network


def lab_alias(name: str) -> str:
    return f"appliance-lab:{name}"


def plan_network(name: str, host_count: int, base: IPv4Network, index: int) -> LabNet:
    """Names and addresses of lab ``name`` on the ``index``-th /24 of ``base``."""
    count = 1 << (LAB_PREFIX - base.prefixlen)
    if not 0 <= index < min(count, MAX_LABS):
        raise LabInputError(f"lab index {index} is outside the lab range {base}")
    subnet = IPv4Network((int(base.network_address) + (index << (32 - LAB_PREFIX)), LAB_PREFIX))
    hosts = tuple(
        HostNet(
            name=f"{name}-{n}",
            address=subnet.network_address + 1 + n,
            netns=f"applab-{name}-{n}",
            veth=f"applab{index}h{n}",
        )
        for n in range(1, host_count + 1)
    )
    return LabNet(index, subnet, f"applab{index}", subnet.network_address + 1, hosts)


def choose_index(base: IPv4Network, used: Iterable[int], taken: Iterable[IPv4Network]) -> int:
    """The lowest lab index not used by another lab whose /24 clashes with nothing on the machine."""
    used_set, taken_list = set(used), list(taken)
    for index, subnet in enumerate(base.subnets(new_prefix=LAB_PREFIX)):
        if index >= MAX_LABS:
            break
        if index in used_set or any(subnet.overlaps(net) for net in taken_list):
            continue
        return index
    raise LabInputError(
        f"no free /{LAB_PREFIX} left in the lab range {base} (other labs or the machine's own "
        "networks use them all)",
        hint=f"Remove a lab (`appliance lab down --name NAME`) or set {NETWORK_ENV} to another private range.",
    )


def taken_networks(
    routes: list[dict[str, Any]], addresses: list[dict[str, Any]]
) -> list[IPv4Network]:
    """IPv4 networks the machine already uses, from ``ip -j route show table all`` and ``ip -j addr``.

    The default route is not a clash (it covers everything), so it is left out.
    """
    taken: list[IPv4Network] = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if not dst or dst == "default":
            continue
        try:
            taken.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue  # IPv6 or unparsable
    for link in addresses:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                taken.append(
                    ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                )
    return taken


# --- applying it --------------------------------------------------------------------


def machine_networks() -> list[IPv4Network]:
    routes = json.loads(run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")
    addresses = json.loads(run(["ip", "-j", "addr", "show"]).stdout or "[]")
    return taken_networks(routes, addresses)


def links() -> dict[str, str]:
    """Links in the machine's namespace: name -> alias ('' if none)."""
    data = json.loads(run(["ip", "-j", "-d", "link", "show"]).stdout or "[]")
    return {str(link["ifname"]): str(link.get("ifalias", "")) for link in data}


def netns_names() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    result = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


def create_bridge(net: LabNet, alias: str) -> None:
    run(["ip", "link", "add", net.bridge, "type", "bridge"])
    run(["ip", "link", "set", net.bridge, "alias", alias])
    # Defence in depth: nothing from the lab is routed onward, whatever ip_forward says.
    _sysctl(f"net/ipv4/conf/{net.bridge}/forwarding", "0")
    _sysctl(f"net/ipv6/conf/{net.bridge}/disable_ipv6", "1")
    run(["ip", "addr", "add", f"{net.gateway}/{net.subnet.prefixlen}", "dev", net.bridge])
    run(["ip", "link", "set", net.bridge, "up"])


def create_host_link(net: LabNet, host: HostNet, alias: str) -> None:
    """The host's namespace with eth0 on the lab bridge and lo up; no default route."""
    run(["ip", "netns", "add", host.netns])
    run(
        [
            "ip",
            "link",
            "add",
            host.veth,
            "type",
            "veth",
            "peer",
            "name",
            HOST_IFNAME,
            "netns",
            host.netns,
        ]
    )
    run(["ip", "link", "set", host.veth, "alias", alias])
    _sysctl(f"net/ipv6/conf/{host.veth}/disable_ipv6", "1")
    run(["ip", "link", "set", host.veth, "master", net.bridge, "up"])
    inside = ["ip", "-n", host.netns]
    # No IPv6 on the lab link: its autoconfiguration (router solicitations, MLD
    # reports) would be packets leaving the host, and the air gap test counts those.
    for key in (f"net.ipv6.conf.{HOST_IFNAME}.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
        run(["ip", "netns", "exec", host.netns, "sysctl", "-q", "-w", f"{key}=1"])
    run([*inside, "addr", "add", f"{host.address}/{net.subnet.prefixlen}", "dev", HOST_IFNAME])
    run([*inside, "link", "set", HOST_IFNAME, "up"])
    run([*inside, "link", "set", "lo", "up"])


def delete_netns(netns: str) -> None:
    if netns in netns_names():
        run(["ip", "netns", "delete", netns])


def delete_link(name: str) -> None:
    # A veth goes away by itself when its peer's namespace is deleted (asynchronously):
    # a failed delete is fine if the link is gone by now.
    if (
        name in links()
        and run(["ip", "link", "delete", name], check=False).returncode != 0
        and not wait_until(lambda: name not in links(), 5.0)
    ):
        run(["ip", "link", "delete", name])
