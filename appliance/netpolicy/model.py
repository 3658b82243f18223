"""The policy model: who may talk to whom on which port; nothing leaves the site.

``build_policy(profile, groups)`` lists the components (the site's client network,
the operator's admin network, the gateway, the model server, Keycloak, cluster
DNS, and per multi-node serving group its members and its head) and the flows
between them (from, to, protocol, port or port range), as frozen data.
``Site`` binds the components to a site's addresses (its networks, the admin
network, the hosts of an inventory and the groups' member addresses).
Renderers (``nftables``, ``k8s``) translate the two; tests compare what each
rendering allows with ``flows``.

A serving group (``plan.group.GroupNetwork``) has two flows, on its interface
only and between its members only: members -> head on the master port (the
head's torch.distributed store, which listens on every interface), and
members <-> members on the group's port range (vLLM's message queues and the
collective library's sockets take kernel-ephemeral ports; each member's
``net.ipv4.ip_local_port_range`` is set to that range, see ``group_sysctl``).
Group components are named ``group:NAME`` (members) and ``group:NAME:head``.

Invariants:
- Flows only allow. Everything not listed is dropped, in both directions.
- Every endpoint of a flow is a component of the model, and every component
  is bound to addresses inside the site: there is no "anywhere" to allow,
  so nothing can be allowed to leave the site.
- A flow says which renderings it exists in: SSH from the admin network on
  hosts only, cluster DNS in Kubernetes only. A flow with an ``interface``
  is allowed on that interface only (hosts; pods have one network).
- Groups only with a multi-node profile; with groups, the model servers'
  any-port peer flow is gone: members reach each other on the group's ports.
- The model server's port is the profile's (``engine.port``); the other
  ports are the constants below, which the gateway and Keycloak
  configurations must use as well.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Literal

from appliance.errors import InputError
from appliance.plan.group import GroupNetwork
from appliance.plan.profiles import Profile, VllmEngine

if TYPE_CHECKING:
    from appliance.plan.inventory import Inventory
    from appliance.plan.report import Plan

Target = Literal["host", "k8s"]
Protocol = Literal["tcp", "udp"]
# The fixed components; a serving group adds ``group:NAME`` and ``group:NAME:head`` (group_component).
ComponentName = str
RoleName = Literal["gateway", "model-server", "keycloak"]
IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

TARGETS: tuple[Target, ...] = ("host", "k8s")
# The components that run as hosts (inventory roles) or pods; order is the print order.
ROLES: tuple[RoleName, ...] = ("gateway", "model-server", "keycloak")

# Must agree with the services' own defaults (a unit test compares them):
GATEWAY_PORT = 8443  # appliance.gateway.config.Listen.port: the only listener users reach (TLS)
KEYCLOAK_PORT = 8180  # appliance.deploy.keycloak_files.DEFAULT_HTTP_PORT: behind the gateway
SSH_PORT = 22
DNS_PORT = 53

GROUP_PREFIX = "group:"
HEAD_SUFFIX = ":head"

_GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as plan.inventory.GroupEntry
_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}")

# Narrower than this and a "site network" is a large part of the Internet.
MIN_PREFIX = {4: 8, 6: 16}


class NetworkPolicyError(InputError):
    """Site networks, the admin network or an inventory cannot be bound to the policy."""


def group_component(group: str, *, head: bool = False) -> ComponentName:
    """``group:NAME`` (every member) or ``group:NAME:head``; group names hold no ``:``."""
    return f"{GROUP_PREFIX}{group}{HEAD_SUFFIX if head else ''}"


def group_of_component(component: ComponentName) -> tuple[str, bool] | None:
    """(group name, head?) for a group component, None for the fixed ones."""
    if not component.startswith(GROUP_PREFIX):
        return None
    name = component.removeprefix(GROUP_PREFIX)
    return (name.removesuffix(HEAD_SUFFIX), True) if name.endswith(HEAD_SUFFIX) else (name, False)


@dataclass(frozen=True, slots=True)
class Component:
    name: ComponentName
    kind: Literal["network", "role", "cluster-service", "group"]
    description: str
    targets: tuple[Target, ...] = TARGETS


@dataclass(frozen=True, slots=True)
class Flow:
    """One allowed flow: ``source`` may open connections to ``destination`` on ``port``."""

    source: ComponentName
    destination: ComponentName
    protocol: Protocol
    port: int | None  # None: every port of the protocol; else the first port
    purpose: str
    targets: tuple[Target, ...] = TARGETS
    last_port: int | None = None  # a port range port..last_port (inclusive); None: one port
    interface: str | None = None  # hosts: only on this interface; None: any

    @property
    def key(self) -> tuple[str, str, str, int | None]:
        return (self.source, self.destination, self.protocol, self.port)

    @property
    def ports_text(self) -> str:
        """``any``, ``8000`` or ``40000-44095`` (nftables' and nca's range syntax)."""
        if self.port is None:
            return "any"
        return str(self.port) if self.last_port is None else f"{self.port}-{self.last_port}"

    @property
    def port_text(self) -> str:
        return f"{self.ports_text}/{self.protocol}"

    def allows(self, port: int) -> bool:
        """Whether ``port`` is one of this flow's ports."""
        if self.port is None:
            return True
        return self.port <= port <= (self.port if self.last_port is None else self.last_port)


@dataclass(frozen=True, slots=True)
class PolicyModel:
    profile: str
    engine: str
    model_server_port: int
    multi_node: bool
    components: tuple[Component, ...]
    flows: tuple[Flow, ...]
    groups: tuple[GroupNetwork, ...] = ()  # the multi-node serving groups the flows name

    def flows_for(self, target: Target) -> tuple[Flow, ...]:
        return tuple(f for f in self.flows if target in f.targets)

    def components_for(self, target: Target) -> tuple[Component, ...]:
        return tuple(c for c in self.components if target in c.targets)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)


def build_policy(profile: Profile, groups: Sequence[GroupNetwork] = ()) -> PolicyModel:
    """The components and flows for a site running ``profile``, with its serving ``groups``.

    Groups are refused unless the profile is multi-node (they would open ports
    for a runtime that does not run).
    """
    engine = profile.engine
    port = engine.port
    multi_node = isinstance(engine, VllmEngine) and profile.multi_node
    if isinstance(engine, VllmEngine):
        server = "vLLM" + (
            f" on up to {profile.nodes.max} nodes ({engine.distributed_executor_backend})"
            if multi_node
            else ""
        )
    else:
        server = "llama.cpp server (llama-cpp-python)"
    components: tuple[Component, ...] = (
        Component("clients", "network", "callers on the site network; they reach the gateway only"),
        Component("admin", "network", "the operator's admin network (SSH to every host)", ("host",)),
        Component("gateway", "role", "authenticating gateway, the only listener users reach"),
        Component("model-server", "role", f"{server}, port {port}"),
        Component("keycloak", "role", "Keycloak SSO behind the gateway (which relays token requests); no outbound calls"),
        Component("dns", "cluster-service", "cluster DNS (kube-system, k8s-app=kube-dns)", ("k8s",)),
    )  # fmt: skip
    flows = [
        Flow("clients", "gateway", "tcp", GATEWAY_PORT, "OpenAI-compatible API over TLS"),
        Flow("gateway", "model-server", "tcp", port, "authorised calls proxied to the model server"),
        Flow("gateway", "keycloak", "tcp", KEYCLOAK_PORT, "realm keys (JWKS) and token requests"),
    ]  # fmt: skip
    if groups and not multi_node:
        raise NetworkPolicyError(
            f"profile {profile.name} serves on one node, found serving group(s) "
            f"{', '.join(g.name for g in groups)} in the inventory (several hosts serving one "
            "model): expected a multi-node profile for them",
            hint="Choose a multi-node profile (nodes.max > 1, e.g. h100-cluster or cpu-vllm-group), or "
            "drop the groups from the inventory.",
        )
    group_components, group_flows = _group_parts(groups)
    components += group_components
    if multi_node and not groups:
        flows.append(
            Flow("model-server", "model-server", "tcp", None,
                 "multi-node vLLM between model-server nodes (NCCL, gloo: dynamic ports)")
        )  # fmt: skip
    flows += group_flows
    flows += [
        Flow("admin", role, "tcp", SSH_PORT, "operator's SSH (deploy, status, rollback)", ("host",))
        for role in ROLES
    ]
    flows += [
        Flow(role, "dns", protocol, DNS_PORT, "name lookups in the cluster", ("k8s",))
        for role in ROLES
        for protocol in ("udp", "tcp")
    ]
    return PolicyModel(profile.name, engine.kind, port, multi_node, components, tuple(flows),
                       tuple(groups))  # fmt: skip


def _group_parts(
    groups: Sequence[GroupNetwork],
) -> tuple[tuple[Component, ...], list[Flow]]:
    components: list[Component] = []
    flows: list[Flow] = []
    seen: set[str] = set()
    for group in groups:
        if group.name in seen:
            raise NetworkPolicyError(
                f"serving group {group.name}: expected each group once, found it twice",
                hint="Give each group one entry (the inventory's groups have unique names).",
            )
        seen.add(group.name)
        # They end up in nftables set names and quoted interface matches: check them here too.
        if not _GROUP_NAME.fullmatch(group.name) or not _INTERFACE.fullmatch(group.interface):
            raise NetworkPolicyError(
                f"serving group {group.name!r}: expected a name of [a-z0-9-] and an interface "
                f"name of at most 15 characters [A-Za-z0-9_.:-], found interface "
                f"{group.interface!r}",
                hint="Fix the group in the inventory (docs/inventory.md).",
            )
        members, head = group_component(group.name), group_component(group.name, head=True)
        first, last = group.port_range
        on = f"on {group.interface}"
        components += [
            Component(members, "group",
                      f"serving group {group.name}: {', '.join(group.hosts)} (head first) {on}"),
            Component(head, "group", f"the head of group {group.name}: {group.head}"),
        ]  # fmt: skip
        flows += [
            Flow(members, head, "tcp", group.master_port,
                 f"group {group.name}: workers join the head's torch.distributed store "
                 f"(--master-port) {on}", interface=group.interface),
            Flow(members, members, "tcp", first,
                 f"group {group.name}: message queues and collective library sockets "
                 f"(kernel-ephemeral ports, pinned by ip_local_port_range) {on}",
                 last_port=last, interface=group.interface),
        ]  # fmt: skip
    return tuple(components), flows


def policy_for_plan(plan: Plan, groups: Sequence[GroupNetwork] = ()) -> PolicyModel:
    return build_policy(plan.selection.profile, groups)


def inventory_groups(inventory: Inventory) -> tuple[GroupNetwork, ...]:
    """The inventory's serving groups with each member's *inventory* address.

    For ``appliance render`` from an inventory alone: the deploy passes the
    ``GroupNetwork`` the plan built from the members' facts (their addresses on
    the group's interface) instead. Addresses that are not IP addresses are
    refused by ``build_site`` (firewall rules match addresses).
    """
    address = {h.name: h.address for h in inventory.hosts}
    return tuple(
        GroupNetwork(g.name, tuple(g.hosts), g.interface, tuple(address[h] for h in g.hosts),
                     g.master_port, g.port_range)
        for g in inventory.groups
    )  # fmt: skip


# --- the site binding ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteHost:
    name: str
    address: IPAddress
    roles: tuple[RoleName, ...]
    ssh_port: int = SSH_PORT


@dataclass(frozen=True, slots=True)
class SiteGroup:
    """A serving group's members (inventory names, head first) and their group addresses."""

    name: str
    hosts: tuple[str, ...]
    addresses: tuple[IPAddress, ...]  # same order as hosts
    source: Literal["facts", "inventory"]  # where the addresses came from

    @property
    def head(self) -> str:
        return self.hosts[0]

    def address_of(self, host: str) -> IPAddress:
        return self.addresses[self.hosts.index(host)]


@dataclass(frozen=True, slots=True)
class Site:
    """Where the components are: the site's networks, the admin network, the inventory's hosts
    and the serving groups' member addresses.

    Without hosts (no inventory), each role may be anywhere on the site.
    """

    networks: tuple[IPNetwork, ...]
    admin: tuple[IPNetwork, ...] = ()
    hosts: tuple[SiteHost, ...] = ()
    groups: tuple[SiteGroup, ...] = ()

    def addresses(self, component: ComponentName) -> tuple[IPNetwork, ...]:
        if component == "clients":
            return self.networks
        if component == "admin":
            return self.admin
        if component == "dns":
            return ()
        grouped = group_of_component(component)
        if grouped is not None:
            group = self.group(grouped[0])
            chosen = group.addresses[:1] if grouped[1] else group.addresses
            return tuple(ipaddress.ip_network(a) for a in chosen)
        if not self.hosts:
            return self.networks
        return tuple(ipaddress.ip_network(h.address) for h in self.hosts if component in h.roles)

    def with_role(self, role: RoleName) -> tuple[SiteHost, ...]:
        return tuple(h for h in self.hosts if role in h.roles)

    def group(self, name: str) -> SiteGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def components_of(self, host: str) -> tuple[ComponentName, ...]:
        """The group components ``host`` is part of (members; the head also ``:head``)."""
        found: list[ComponentName] = []
        for group in self.groups:
            if host in group.hosts:
                found.append(group_component(group.name))
                if host == group.head:
                    found.append(group_component(group.name, head=True))
        return tuple(found)


def parse_networks(texts: Iterable[str], option: str) -> tuple[IPNetwork, ...]:
    """CIDRs as given on the command line, checked and collapsed (no overlaps, sorted)."""
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            network = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as exc:
            raise NetworkPolicyError(
                f"{option} {text!r}: expected a network in CIDR form such as 10.20.0.0/16, "
                f"found {text!r} ({exc})",
                hint="Write the network address with its prefix length; host bits must be zero.",
            ) from None
        least = MIN_PREFIX[network.version]
        if network.prefixlen < least:
            raise NetworkPolicyError(
                f"{option} {network}: expected a site network of /{least} or narrower, found "
                f"/{network.prefixlen} (that spans a large part of the Internet, and nothing may "
                "leave the site)",
                hint=f"Give the site's own networks, one {option} each.",
            )
        networks.append(network)
    v4 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, IPv6Network))
    return (*v4, *v6)


def _inside(address: IPAddress | IPNetwork, networks: Sequence[IPNetwork]) -> bool:
    if isinstance(address, IPv4Address | IPv6Address):
        return any(address in n for n in networks)
    return any(
        address.version == n.version and address.subnet_of(n)  # type: ignore[arg-type]
        for n in networks
    )


def build_site(
    site_cidrs: Sequence[str],
    admin_cidrs: Sequence[str] = (),
    inventory: Inventory | None = None,
    groups: Sequence[GroupNetwork] = (),
    group_addresses: Literal["facts", "inventory"] = "facts",
) -> Site:
    """Check and bind: admin networks and host addresses must lie inside the site's networks.

    ``groups``: the serving groups (``GroupNetwork``), whose members must be
    inventory hosts and whose addresses must be IP addresses inside the site;
    ``group_addresses`` says where those addresses came from (the members'
    facts, as the plan hands them on, or the inventory: ``inventory_groups``).
    """
    if not site_cidrs:
        raise NetworkPolicyError(
            "expected at least one --site-cidr (the site's networks: who the clients are, and "
            "where nothing beyond may be reached), found none",
            hint="Add --site-cidr CIDR for each of the site's networks, e.g. --site-cidr 10.20.0.0/16.",
        )
    networks = parse_networks(site_cidrs, "--site-cidr")
    admin = parse_networks(admin_cidrs, "--admin-cidr")
    for network in admin:
        if not _inside(network, networks):
            raise NetworkPolicyError(
                f"--admin-cidr {network}: expected a network inside the site "
                f"({', '.join(map(str, networks))}), found one outside it",
                hint="The admin network is part of the site; add its network with --site-cidr.",
            )
    hosts: list[SiteHost] = []
    for entry in inventory.hosts if inventory is not None else []:
        try:
            address = ipaddress.ip_address(entry.address)
        except ValueError:
            raise NetworkPolicyError(
                f"inventory host {entry.name}: expected an IP address (firewall rules match "
                f"addresses), found the name {entry.address!r}",
                hint="Put the host's address in the inventory's address field.",
            ) from None
        if not _inside(address, networks):
            raise NetworkPolicyError(
                f"inventory host {entry.name}: expected an address inside the site "
                f"({', '.join(map(str, networks))}), found {address}",
                hint="Add the host's network with --site-cidr, or fix the inventory.",
            )
        roles = tuple(r for r in ROLES if r in entry.roles)
        hosts.append(SiteHost(entry.name, address, roles, entry.ssh.port))
    bound = tuple(_bind_group(g, networks, hosts, group_addresses) for g in groups)
    return Site(networks, admin, tuple(hosts), bound)


def _bind_group(
    group: GroupNetwork,
    networks: Sequence[IPNetwork],
    hosts: Sequence[SiteHost],
    source: Literal["facts", "inventory"],
) -> SiteGroup:
    known = {h.name for h in hosts}
    missing = [h for h in group.hosts if h not in known]
    if missing:
        raise NetworkPolicyError(
            f"serving group {group.name}: expected its members among the inventory's hosts, "
            f"found {', '.join(missing)} missing",
            hint="Render with the inventory that names the group (--inventory FILE).",
        )
    addresses: list[IPAddress] = []
    for host, text in zip(group.hosts, group.addresses, strict=True):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise NetworkPolicyError(
                f"serving group {group.name}, member {host}: expected an IP address on "
                f"{group.interface} (firewall rules match addresses), found {text!r}",
                hint="Put the host's address in the inventory's address field.",
            ) from None
        if not _inside(address, networks):
            raise NetworkPolicyError(
                f"serving group {group.name}, member {host}: expected an address on "
                f"{group.interface} inside the site ({', '.join(map(str, networks))}), "
                f"found {address}",
                hint="Add the group network with --site-cidr (it is part of the site).",
            )
        addresses.append(address)
    if len(set(addresses)) != len(addresses):
        raise NetworkPolicyError(
            f"serving group {group.name}: expected one address per member on {group.interface}, "
            f"found the same address twice ({', '.join(map(str, addresses))})",
            hint="Check the members' addresses on the group's interface.",
        )
    return SiteGroup(group.name, group.hosts, tuple(addresses), source)


# --- the readable form -----------------------------------------------------------------


def describe_model(model: PolicyModel) -> str:
    """Components and flows as a table a security officer can read and sign."""
    lines = [
        f"Network policy for profile {model.profile} (engine {model.engine}, "
        f"model server port {model.model_server_port}"
        + (", multi-node" if model.multi_node else "")
        + ")",
        "Only the flows below are allowed, in both renderings; everything else is dropped,",
        "and nothing may leave the site.",
        "",
        "Components",
    ]
    width = max(13, *(len(c.name) for c in model.components))
    ports = max(9, *(len(f.port_text) for f in model.flows))
    for c in model.components:
        where = "" if c.targets == TARGETS else f"  [{', '.join(c.targets)} only]"
        lines.append(f"  {c.name:{width}s} {c.kind:16s} {c.description}{where}")
    lines += ["", "Flows (source may open connections to destination)"]
    lines.append(
        f"  {'#':>2}  {'from':{width}s}    {'to':{width}s} {'port':{ports}s} {'in':10s} why"
    )
    for number, f in enumerate(model.flows, 1):
        targets = ", ".join(f.targets)
        lines.append(
            f"  {number:2d}  {f.source:{width}s} -> {f.destination:{width}s} {f.port_text:{ports}s} "
            f"{targets:10s} {f.purpose}"
        )
    return "\n".join(lines) + "\n"


def describe_site(site: Site, target: Target) -> str:
    lines = ["Site", f"  site networks (clients; the edge of the site): {_join(site.networks)}"]
    if target == "host":
        lines.append(f"  admin network (SSH):                           {_join(site.admin)}")
        if site.hosts:
            lines.append("  hosts (from the inventory):")
            for h in site.hosts:
                lines.append(
                    f"    {h.name:20s} {h.address!s:16s} ssh {h.ssh_port:<5d} {', '.join(h.roles)}"
                )
        else:
            lines.append(
                "  no inventory: each role's hosts may have any address on the site networks"
            )
        for g in site.groups:
            members = ", ".join(
                f"{h} {a}{' (head)' if h == g.head else ''}"
                for h, a in zip(g.hosts, g.addresses, strict=True)
            )
            lines.append(f"  serving group {g.name}: {members}")
            if g.source == "inventory":
                lines.append(
                    "    group addresses from the inventory (each member's inventory address): "
                    "the deploy uses each member's address on the group's interface instead"
                )
    return "\n".join(lines) + "\n"


def _join(networks: Sequence[IPNetwork]) -> str:
    return ", ".join(map(str, networks)) or "(none)"
