"""network-config-analyzer's connectivity report, and the same connections derived from the model.

``nca --connectivity -o txt_no_fw_rules --output_endpoints pods`` prints one
line per (source, destination) and protocol group, e.g.
``appliance/gateway-1 => appliance/model-server-2 : {protocols:TCP,dst_ports:8000}``
or ``10.20.0.0-10.20.255.255 => appliance/gateway-1 : {protocols:TCP,dst_ports:443}``.
Both sides become sets of ``(source, destination, protocol, port)`` with
``port`` None for every port; IP ranges become their canonical CIDRs.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

from appliance.netpolicy.k8s import (
    ANALYSIS_DIR,
    DNS_NAMESPACE,
    DNS_WORKLOAD,
    MANIFESTS_DIR,
    NAMESPACE,
    WORKLOADS,
    analysis_replicas,
    group_workloads,
)
from appliance.netpolicy.model import ROLES, PolicyModel, Site, group_component

Edge = tuple[str, str, str, int | None]
NCA = Path(sys.executable).parent / "nca"
_LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conn>.+)$")
_GROUP = re.compile(
    r"\{protocols:(?P<protocols>[A-Z]+(?:, [A-Z]+)*)(?:,dst_ports:(?P<ports>[0-9,-]+))?\}"
)
_RANGE = re.compile(r"^(?P<first>[0-9a-fA-F.:]+)-(?P<last>[0-9a-fA-F.:]+)$")


def run_nca(directory: Path) -> str:
    result = subprocess.run(
        [str(NCA), "--connectivity", "-r", str(directory / MANIFESTS_DIR), "-r",
         str(directory / ANALYSIS_DIR), "-o", "txt_no_fw_rules", "--output_endpoints", "pods"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Error" not in result.stderr, result.stderr
    return result.stdout


def parse_connection(text: str) -> set[tuple[str, int | None]]:
    """``{protocols:TCP, UDP,dst_ports:53}`` -> {("tcp", 53), ("udp", 53)}; anything else fails."""
    if text.strip() == "All connections":
        return {("all", None)}
    groups = list(_GROUP.finditer(text))
    assert groups and "".join(g.group(0) for g in groups) == text.replace("},{", "}{").strip(), (
        f"unexpected nca connection text {text!r}"
    )
    result: set[tuple[str, int | None]] = set()
    for group in groups:
        ports: list[int | None] = [None]
        if group["ports"]:
            ports = []
            for part in group["ports"].split(","):
                first, _, last = part.partition("-")
                ports += range(int(first), int(last or first) + 1)
        for protocol in group["protocols"].split(", "):
            result |= {(protocol.lower(), port) for port in ports}
    return result


def _endpoints(text: str) -> list[str]:
    """A pod stays ``ns/name-i``; an IP range becomes its CIDRs."""
    match = _RANGE.match(text)
    if match is None:
        return [text]
    first, last = (ipaddress.ip_address(match[k]) for k in ("first", "last"))
    return [str(n) for n in ipaddress.summarize_address_range(first, last)]  # type: ignore[arg-type]


def nca_edges(report: str) -> set[Edge]:
    """Every connection nca reports with an ``appliance`` pod at either end."""
    edges: set[Edge] = set()
    for line in report.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        if not (
            match["src"].startswith(f"{NAMESPACE}/") or match["dst"].startswith(f"{NAMESPACE}/")
        ):
            continue  # kube-system's own traffic: not ours to police
        for protocol, port in parse_connection(match["conn"]):
            for src in _endpoints(match["src"]):
                for dst in _endpoints(match["dst"]):
                    edges.add((src, dst, protocol, port))
    return edges


def model_edges(model: PolicyModel, site: Site) -> set[Edge]:
    """The model's k8s flows over the stand-in pods (a pod never counts as its own peer);
    a group's pods are model servers too; a port range is every port in it."""
    endpoints: dict[str, list[str]] = {
        role: [f"{NAMESPACE}/{WORKLOADS[role][0]}-{i}"
               for i in range(1, analysis_replicas(model, role) + 1)]
        for role in ROLES
    }  # fmt: skip
    for group in model.groups:
        pods = {
            member: [f"{NAMESPACE}/{name}-{i}" for i in range(1, replicas + 1)]
            for name, member, replicas in group_workloads(group)
        }
        endpoints[group_component(group.name, head=True)] = pods["head"]
        endpoints[group_component(group.name)] = pods["head"] + pods["worker"]
        endpoints["model-server"] += pods["head"] + pods["worker"]
    endpoints["dns"] = [f"{DNS_NAMESPACE}/{DNS_WORKLOAD}-1"]
    endpoints["clients"] = [str(n) for n in site.networks]
    edges: set[Edge] = set()
    for flow in model.flows_for("k8s"):
        ports: list[int | None] = [flow.port]
        if flow.port is not None and flow.last_port is not None:
            ports = list(range(flow.port, flow.last_port + 1))
        for src in endpoints[flow.source]:
            for dst in endpoints[flow.destination]:
                if src != dst:
                    edges |= {(src, dst, flow.protocol, port) for port in ports}
    return edges
