"""The policy model as nftables rulesets: one per host (with an inventory) or per role.

Each ruleset is one ``table inet appliance`` (IPv4 and IPv6) loaded atomically
with ``nft -f``: it declares, deletes and re-creates the table, so loading it
again replaces it whole (and resets its counters). Invariants:

- Input, output and forward chains drop by default; loopback and replies to
  established connections pass; then exactly the model's ``host`` flows whose
  destination (input) or source (output) is one of the host's roles or group
  components (``group:NAME``, and ``group:NAME:head`` on the head).
- A flow with an interface (a serving group's) matches ``iifname``/``oifname``
  of that interface, and its peers' group addresses only; a host's own
  addresses are never its peers (its own traffic is loopback).
- Outbound packets to an address outside the site are dropped before anything
  else (even replies), counted in ``drop_offsite`` and logged.
- Every other drop is counted (``drop_in``, ``drop_out``, ``drop_forward``) and
  logged at a bounded rate with an ``appliance-drop-...:`` prefix.
- SSH from the admin network is a flow like any other: a ruleset without an
  admin network is refused rather than rendered (it would lock the operator out).

``apply_script``/``confirm_script`` are the shell a deployer runs on the host
to load a ruleset with an automatic revert unless a new SSH session confirms.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from appliance.netpolicy.model import (
    ROLES,
    ComponentName,
    Flow,
    IPAddress,
    IPNetwork,
    NetworkPolicyError,
    PolicyModel,
    Site,
    SiteHost,
    group_of_component,
)

TABLE = "appliance"
# Where a deployer puts the host's ruleset, and the revert state it keeps.
RULESET_PATH = "/etc/appliance/nftables.nft"
REVERT_UNIT = "appliance-nft-revert"
LOG_LIMIT = "limit rate 10/minute burst 5 packets"

# name -> (what it counts, log prefix)
COUNTERS: dict[str, tuple[str, str]] = {
    "drop_in": ("inbound packets no listed flow allows", "appliance-drop-in: "),
    "drop_out": ("outbound packets to site addresses no listed flow allows", "appliance-drop-out: "),
    "drop_offsite": ("outbound packets to addresses outside the site", "appliance-drop-offsite: "),
    "drop_forward": ("packets this host was asked to route", "appliance-drop-fwd: "),
}  # fmt: skip


def set_name(component: str, version: int) -> str:
    """``model_server_v4``; a group's ``group_NAME_v4`` and its head's ``grouphead_NAME_v4``
    (group names hold no ``_``, so no two components share a set)."""
    grouped = group_of_component(component)
    if grouped is not None:
        name, head = grouped
        component = f"{'grouphead' if head else 'group'}_{name}"
    return f"{component.replace('-', '_')}_v{version}"


def _family(network: IPNetwork) -> int:
    return 4 if isinstance(network, IPv4Network) else 6


def _element(network: IPNetwork) -> str:
    whole = 32 if isinstance(network, IPv4Network) else 128
    return str(network.network_address) if network.prefixlen == whole else str(network)


@dataclass(frozen=True, slots=True)
class _Rule:
    match: str  # e.g. ``ip saddr @clients_v4 tcp dport 443``
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    port: str
    why: tuple[str, ...]
    reply: bool = False

    def merged(self, other: _Rule) -> _Rule:
        def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
            return a + tuple(x for x in b if x not in a)

        return _Rule(self.match, union(self.sources, other.sources),
                     union(self.destinations, other.destinations), self.port,
                     union(self.why, other.why), self.reply)  # fmt: skip

    def lines(self) -> list[str]:
        label = f"{', '.join(self.sources)} -> {', '.join(self.destinations)} {self.port}"
        if self.reply:
            return [f'{self.match} accept comment "replies: {label}"']
        return [*(f"# {w}" for w in self.why), f'{self.match} accept comment "{label}"']


class _Chain:
    """Rules in model order; two flows with the same match become one rule."""

    def __init__(self) -> None:
        self.rules: dict[str, _Rule] = {}
        self.replies: dict[str, _Rule] = {}
        self.notes: list[str] = []

    def add(self, rule: _Rule) -> None:
        rules = self.replies if rule.reply else self.rules
        known = rules.get(rule.match)
        rules[rule.match] = rule if known is None else known.merged(rule)

    def lines(self) -> list[str]:
        lines = [line for rule in self.rules.values() for line in rule.lines()]
        if self.replies:
            lines += [
                "# Replies of the flows' connections that were open before connection tracking",
                "# saw them (the first load on a running host: the SSH session doing it). Without",
                "# SYN a packet cannot open a connection.",
                *(line for rule in self.replies.values() for line in rule.lines()),
            ]
        return lines + self.notes


@dataclass(frozen=True, slots=True)
class _HostView:
    roles: tuple[ComponentName, ...]  # its roles, then the group components it is part of
    own: tuple[IPAddress, ...] = ()  # the host's addresses (inventory, group), when known
    single_host: bool = False  # no inventory, every role: role peers are this host itself


class _Ruleset:
    """Collects sets and rules for one host, then prints the table."""

    def __init__(self, site: Site, view: _HostView) -> None:
        self.site = site
        self.view = view
        self.sets: dict[str, tuple[IPNetwork, ...]] = {}
        self.input = _Chain()
        self.output = _Chain()

    def use_set(self, component: str, networks: Sequence[IPNetwork], version: int) -> str:
        name = set_name(component, version)
        self.sets[name] = tuple(n for n in networks if _family(n) == version)
        return name

    def peers(self, component: ComponentName) -> tuple[tuple[IPNetwork, ...], str]:
        """Addresses of ``component`` other than this host, or why there are none."""
        here = "on this host only: over loopback, which is always allowed"
        if group_of_component(component) is not None:
            others = tuple(
                n for n in self.site.addresses(component)
                if not any(n.network_address == a for a in self.view.own)
            )  # fmt: skip
            return others, here
        if component not in ROLES:
            return self.site.addresses(component), f"no {component} network given"
        if self.view.single_host:
            return (), here
        if not self.site.hosts:
            return self.site.networks, ""
        others = tuple(
            ipaddress.ip_network(h.address)
            for h in self.site.hosts
            if component in h.roles and h.address not in self.view.own
        )
        if others:
            return others, ""
        return (), here if component in self.view.roles else f"no {component} host in the inventory"

    def add_flow(self, flow: Flow, direction: str, ports: str | None) -> None:
        """``ports``: ``None`` (any), ``8000`` or ``40000-44095``."""
        peer = flow.source if direction == "input" else flow.destination
        chain = self.input if direction == "input" else self.output
        networks, why_none = self.peers(peer)
        port_text = f"{'any' if ports is None else ports}/{flow.protocol}"
        match_port = (
            f"meta l4proto {flow.protocol}" if ports is None else f"{flow.protocol} dport {ports}"
        )
        side = "saddr" if direction == "input" else "daddr"
        other_side, other_chain = ("daddr", self.output) if direction == "input" else ("saddr", self.input)  # fmt: skip
        nic, other_nic = ("", "")
        if flow.interface is not None:
            iif, oif = f'iifname "{flow.interface}" ', f'oifname "{flow.interface}" '
            nic, other_nic = (iif, oif) if direction == "input" else (oif, iif)
        why = f"{flow.source} -> {flow.destination} {port_text}: {flow.purpose}"
        added = False
        for version, keyword in ((4, "ip"), (6, "ip6")):
            if any(_family(n) == version for n in networks):
                name = self.use_set(peer, networks, version)
                chain.add(_Rule(f"{nic}{keyword} {side} @{name} {match_port}", (flow.source,),
                                (flow.destination,), port_text, (why,)))  # fmt: skip
                if ports is not None and flow.protocol == "tcp":
                    reply = (f"{other_nic}{keyword} {other_side} @{name} tcp sport {ports} "
                             "tcp flags & syn == 0")  # fmt: skip
                    other_chain.add(_Rule(reply, (flow.source,), (flow.destination,), port_text,
                                          (why,), reply=True))  # fmt: skip
                added = True
        if not added:
            chain.notes.append(f"# {flow.source} -> {flow.destination} {port_text}: {why_none}")

    def text(self, header: Sequence[str]) -> str:
        site4 = self.use_set("site", self.site.networks, 4)
        site6 = self.use_set("site", self.site.networks, 6)
        lines = [*(f"# {h}" for h in header), ""]
        # Declare, delete, define: one atomic transaction that also works on a fresh host.
        lines += [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
        for name, (comment, _) in COUNTERS.items():
            lines.append(f'\tcounter {name} {{ comment "{comment}"; }}')
        lines.append("")
        for name in sorted(n for n in self.sets if self.sets[n]):
            kind = "ipv4_addr" if name.endswith("_v4") else "ipv6_addr"
            members = sorted(self.sets[name], key=lambda n: (n.network_address, n.prefixlen))
            elements = ", ".join(map(_element, members))
            lines.append(
                f"\tset {name} {{ type {kind}; flags interval; elements = {{ {elements} }}; }}"
            )
        v6 = bool(self.sets[site6])
        neighbour = [
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept"
        ]
        body = ["", "chain input {", "\ttype filter hook input priority filter; policy drop;"]
        body += ['\tiif "lo" accept', "\tct state established,related accept"]
        body += [
            "\t" + r for r in (neighbour if v6 else []) + self.input.lines() + _drop_tail("drop_in")
        ]
        body += [
            "}",
            "",
            "chain output {",
            "\ttype filter hook output priority filter; policy drop;",
        ]
        out = ['oif "lo" accept', *(neighbour if v6 else [])]
        out.append("# nothing leaves the site: not even replies")
        for version, keyword, name in ((4, "ip", site4), (6, "ip6", site6)):
            family = f"meta nfproto ipv{version}"
            if self.sets[name]:
                out.append(f"{family} {keyword} daddr != @{name} goto offsite")
            else:
                out.append(f"{family} goto offsite")
        out += [
            "ct state established,related accept",
            *self.output.lines(),
            *_drop_tail("drop_out"),
        ]
        body += ["\t" + r for r in out]
        body += [
            "}",
            "",
            "chain forward {",
            "\ttype filter hook forward priority filter; policy drop;",
        ]
        body += ["\t" + r for r in _drop_tail("drop_forward")]
        body += ["}", "", "chain offsite {"]
        body += ["\t" + r for r in [*_drop_tail("drop_offsite"), "drop"]] + ["}"]
        lines += [("\t" + line) if line else "" for line in body] + ["}"]
        return "\n".join(lines) + "\n"


def _drop_tail(counter: str) -> list[str]:
    prefix = COUNTERS[counter][1]
    return [f'counter name "{counter}"', f'{LOG_LIMIT} log prefix "{prefix}" level info']


def _render(
    model: PolicyModel, site: Site, view: _HostView, title: str, ssh_port: int | None
) -> str:
    if not site.admin:
        raise NetworkPolicyError(
            "expected an admin network (--admin-cidr) for host rulesets, found none: without it "
            "the rulesets would drop the operator's SSH and lock them out",
            hint="Add --admin-cidr CIDR: the network the operator connects from (inside the site).",
        )
    ruleset = _Ruleset(site, view)
    for flow in model.flows_for("host"):
        ports = None if flow.port is None else flow.ports_text
        if flow.source == "admin" and ssh_port is not None:
            ports = str(ssh_port)
        if flow.destination in view.roles:
            ruleset.add_flow(flow, "input", ports)
        if flow.source in view.roles:
            ruleset.add_flow(flow, "output", ports)
    roles = ", ".join(r for r in view.roles if r in ROLES)
    groups = [r for r in view.roles if r not in ROLES]
    header = [
        f"appliance network policy: nftables ruleset for {title}",
        f"roles: {roles}; profile {model.profile} (engine {model.engine})",
        *([f"serving group components: {', '.join(groups)}"] if groups else []),
        "Generated by `appliance render`; the model and its flows are in policy.txt.",
        "Check: nft -c -f FILE. Load: nft -f FILE (atomic; replaces table inet appliance).",
        "Drops: nft list counters table inet appliance; kernel log prefix appliance-drop-.",
    ]
    return ruleset.text(header)


def host_rulesets(model: PolicyModel, site: Site) -> dict[str, str]:
    """File name -> ruleset: ``host-NAME.nft`` per inventory host; without an inventory,
    ``role-ROLE.nft`` per role and ``single-host.nft`` (one host playing every role)."""
    _check_groups(model, site)
    if site.hosts:
        return {
            f"host-{h.name}.nft": _render(model, site, _host_view(site, h),
                                          f"host {h.name} ({h.address})", h.ssh_port)
            for h in site.hosts
        }  # fmt: skip
    if model.multi_node:
        raise NetworkPolicyError(
            f"profile {model.profile} runs the model server on several nodes, which talk to each "
            "other on any TCP port: expected an inventory naming those hosts, found none (without "
            "it every address on the site would be allowed every port)",
            hint="Add --inventory FILE (docs/inventory.md) with the model-server hosts.",
        )
    files = {
        f"role-{role}.nft": _render(model, site, _HostView((role,)), f"any {role} host", None)
        for role in ROLES
    }
    files["single-host.nft"] = _render(
        model, site, _HostView(ROLES, single_host=True), "a single host playing every role", None
    )
    return files


def _host_view(site: Site, host: SiteHost) -> _HostView:
    groups = tuple(g for g in site.groups if host.name in g.hosts)
    own = (host.address, *(g.address_of(host.name) for g in groups))
    return _HostView((*host.roles, *site.components_of(host.name)), tuple(dict.fromkeys(own)))


def _check_groups(model: PolicyModel, site: Site) -> None:
    """Every group of the model is bound to the same members' addresses in the site."""
    bound = {g.name: g.hosts for g in site.groups}
    wanted = {g.name: g.hosts for g in model.groups}
    if bound != wanted:
        raise NetworkPolicyError(
            "expected the same serving groups in the policy model and the site binding, found "
            f"model {_groups_text(wanted)} and site {_groups_text(bound)}",
            hint="Build both from the same groups (build_policy(profile, groups) and "
            "build_site(..., inventory, groups)).",
        )


def _groups_text(groups: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{n}: {', '.join(h)}" for n, h in sorted(groups.items())) or "(none)"


# --- laying a ruleset down on a host ------------------------------------------------------


def apply_script(path: str = RULESET_PATH, revert_after: int = 60) -> str:
    """Shell (run as root on the host) that checks ``path``, arms a revert, then loads it.

    The revert (a transient systemd timer, accurate to 1 s: systemd's default
    accuracy of a minute would let it fire that much later) puts the previous ``inet appliance``
    table back, or removes the table if there was none, ``revert_after``
    seconds later unless ``confirm_script()`` runs first. Run the confirmation
    over a *new* SSH connection: if the new rules cut SSH, it cannot connect,
    and the host reverts by itself.
    """
    quoted = shlex.quote(path)
    state = "/run/appliance"
    return f"""set -eu
nft -c -f {quoted}
mkdir -p {state}
systemctl stop {REVERT_UNIT}.timer {REVERT_UNIT}.service 2>/dev/null || true
systemctl reset-failed {REVERT_UNIT}.timer {REVERT_UNIT}.service 2>/dev/null || true
if nft list table inet {TABLE} > {state}/nft-previous.body 2>/dev/null; then
  printf 'table inet {TABLE}\\ndelete table inet {TABLE}\\n' | cat - {state}/nft-previous.body > {state}/nft-previous.nft
else
  printf 'table inet {TABLE}\\ndelete table inet {TABLE}\\n' > {state}/nft-previous.nft
fi
rm -f {state}/nft-previous.body
systemd-run --quiet --unit={REVERT_UNIT} --on-active={int(revert_after)}s --timer-property=AccuracySec=1s /usr/sbin/nft -f {state}/nft-previous.nft
nft -f {quoted}
"""


def confirm_script() -> str:
    """Shell that keeps the loaded ruleset: stops the pending revert."""
    return f"systemctl stop {REVERT_UNIT}.timer && rm -f /run/appliance/nft-previous.nft\n"
