"""The policy model: who may talk to whom on which port; nothing leaves the site.

``build_policy(profile)`` lists the components (the site's client network,
the operator's admin network, the gateway, the model server, Keycloak, cluster
DNS) and the flows between them (from, to, protocol, port), as frozen data.
``Site`` binds the components to a site's addresses (its networks, the admin
network, and the hosts of an inventory). Renderers (``nftables``, ``k8s``)
translate the two; tests compare what each rendering allows with ``flows``.

Invariants:
- Flows only allow. Everything not listed is dropped, in both directions.
- Every endpoint of a flow is a component of the model, and every component
  is bound to addresses inside the site: there is no "anywhere" to allow,
  so nothing can be allowed to leave the site.
- A flow says which renderings it exists in: SSH from the admin network on
  hosts only, cluster DNS in Kubernetes only.
- The model server's port is the profile's (``engine.port``); the other
  ports are the constants below, which the gateway and Keycloak
  configurations must use as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Literal

from appliance.errors import InputError
from appliance.plan.profiles import Profile, VllmEngine

if TYPE_CHECKING:
    from appliance.plan.inventory import Inventory
    from appliance.plan.report import Plan

Target = Literal["host", "k8s"]
Protocol = Literal["tcp", "udp"]
ComponentName = Literal["clients", "admin", "gateway", "model-server", "keycloak", "dns"]
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

# Narrower than this and a "site network" is a large part of the Internet.
MIN_PREFIX = {4: 8, 6: 16}


class NetworkPolicyError(InputError):
    """Site networks, the admin network or an inventory cannot be bound to the policy."""


@dataclass(frozen=True, slots=True)
class Component:
    name: ComponentName
    kind: Literal["network", "role", "cluster-service"]
    description: str
    targets: tuple[Target, ...] = TARGETS


@dataclass(frozen=True, slots=True)
class Flow:
    """One allowed flow: ``source`` may open connections to ``destination`` on ``port``."""

    source: ComponentName
    destination: ComponentName
    protocol: Protocol
    port: int | None  # None: every port of the protocol
    purpose: str
    targets: tuple[Target, ...] = TARGETS

    @property
    def key(self) -> tuple[str, str, str, int | None]:
        return (self.source, self.destination, self.protocol, self.port)

    @property
    def port_text(self) -> str:
        return f"{'any' if self.port is None else self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class PolicyModel:
    profile: str
    engine: str
    model_server_port: int
    multi_node: bool
    components: tuple[Component, ...]
    flows: tuple[Flow, ...]

    def flows_for(self, target: Target) -> tuple[Flow, ...]:
        return tuple(f for f in self.flows if target in f.targets)

    def components_for(self, target: Target) -> tuple[Component, ...]:
        return tuple(c for c in self.components if target in c.targets)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)


def build_policy(profile: Profile) -> PolicyModel:
    """The components and flows for a site running ``profile``."""
    engine = profile.engine
    port = engine.port
    multi_node = (
        isinstance(engine, VllmEngine)
        and profile.match.gpu is not None
        and profile.match.gpu.nodes.max > 1
    )
    if isinstance(engine, VllmEngine):
        server = "vLLM" + (
            f" on up to {profile.match.gpu.nodes.max} nodes ({engine.distributed_executor_backend})"
            if multi_node and profile.match.gpu is not None
            else ""
        )
    else:
        server = "llama.cpp server (llama-cpp-python)"
    components = (
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
    if multi_node:
        flows.append(
            Flow("model-server", "model-server", "tcp", None,
                 "multi-node vLLM between model-server nodes (Ray, NCCL: dynamic ports)")
        )  # fmt: skip
    flows += [
        Flow("admin", role, "tcp", SSH_PORT, "operator's SSH (deploy, status, rollback)", ("host",))
        for role in ROLES
    ]
    flows += [
        Flow(role, "dns", protocol, DNS_PORT, "name lookups in the cluster", ("k8s",))
        for role in ROLES
        for protocol in ("udp", "tcp")
    ]
    return PolicyModel(profile.name, engine.kind, port, multi_node, components, tuple(flows))


def policy_for_plan(plan: Plan) -> PolicyModel:
    return build_policy(plan.selection.profile)


# --- the site binding ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteHost:
    name: str
    address: IPAddress
    roles: tuple[RoleName, ...]
    ssh_port: int = SSH_PORT


@dataclass(frozen=True, slots=True)
class Site:
    """Where the components are: the site's networks, the admin network, the inventory's hosts.

    Without hosts (no inventory), each role may be anywhere on the site.
    """

    networks: tuple[IPNetwork, ...]
    admin: tuple[IPNetwork, ...] = ()
    hosts: tuple[SiteHost, ...] = ()

    def addresses(self, component: ComponentName) -> tuple[IPNetwork, ...]:
        if component == "clients":
            return self.networks
        if component == "admin":
            return self.admin
        if component == "dns":
            return ()
        if not self.hosts:
            return self.networks
        return tuple(ipaddress.ip_network(h.address) for h in self.hosts if component in h.roles)

    def with_role(self, role: RoleName) -> tuple[SiteHost, ...]:
        return tuple(h for h in self.hosts if role in h.roles)


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
) -> Site:
    """Check and bind: admin networks and host addresses must lie inside the site's networks."""
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
    return Site(networks, admin, tuple(hosts))


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
    for c in model.components:
        where = "" if c.targets == TARGETS else f"  [{', '.join(c.targets)} only]"
        lines.append(f"  {c.name:13s} {c.kind:16s} {c.description}{where}")
    lines += ["", "Flows (source may open connections to destination)"]
    lines.append(f"  {'#':>2}  {'from':13s}    {'to':13s} {'port':9s} {'in':10s} why")
    for number, f in enumerate(model.flows, 1):
        targets = ", ".join(f.targets)
        lines.append(
            f"  {number:2d}  {f.source:13s} -> {f.destination:13s} {f.port_text:9s} "
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
    return "\n".join(lines) + "\n"


def _join(networks: Sequence[IPNetwork]) -> str:
    return ", ".join(map(str, networks)) or "(none)"
