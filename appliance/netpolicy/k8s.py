"""The policy model as Kubernetes NetworkPolicies, derived flow by flow.

``manifests/`` is what a cluster gets (GitOps or ``kubectl apply``): the
``appliance`` namespace and its NetworkPolicies. ``analysis/`` holds stand-in
workloads (pods carrying the labels the policies select, and a kube-dns pod)
so that an offline analyser such as network-config-analyzer can compute who
may reach whom; it is never applied.

Invariants:
- ``default-deny`` selects every pod of the namespace for ingress and egress;
  every other policy only allows, one per component, one rule per peer.
- Egress peers are pods (same namespace) or kube-dns (kube-system): no egress
  rule has an ``ipBlock``, and none lacks a ``to`` (which would mean anywhere).
- Clients are the site's networks, as ``ipBlock`` ingress sources of the gateway.
- Pods carry ``app.kubernetes.io/name: appliance`` and
  ``app.kubernetes.io/component: <component>``; the policies select exactly that.
- A serving group's pods are model servers that also carry ``appliance/group:
  NAME`` and ``appliance/group-role: head|worker``; ``allow-group-NAME`` and
  ``allow-head-of-group-NAME`` allow the group's flows between those pods only
  (the port range as ``port``/``endPort``). Their pods set
  ``net.ipv4.ip_local_port_range`` (a namespaced, "safe" sysctl) to the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from appliance.netpolicy.model import (
    ROLES,
    ComponentName,
    Flow,
    PolicyModel,
    RoleName,
    Site,
    group_of_component,
)
from appliance.netpolicy.port_range_sysctl import PORT_RANGE_SYSCTL, port_range_value
from appliance.plan.group import GroupNetwork

NAMESPACE = "appliance"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
GROUP_LABEL = "appliance/group"
GROUP_ROLE_LABEL = "appliance/group-role"  # head | worker
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
DNS_NAMESPACE = "kube-system"
DNS_LABELS = {"k8s-app": "kube-dns"}
DNS_WORKLOAD = "kube-dns"
# A second kube-system pod in the stand-ins: DNS egress must reach kube-dns and nothing else there.
OTHER_SYSTEM_WORKLOAD = "other-system-pod"
# Stand-in workloads of analysis/: name and kind per component (pods are NAME-1, NAME-2, ...).
WORKLOADS: dict[RoleName, tuple[str, str]] = {
    "gateway": ("gateway", "Deployment"),
    "model-server": ("model-server", "StatefulSet"),
    "keycloak": ("keycloak", "Deployment"),
}
MANIFESTS_DIR = "manifests"
ANALYSIS_DIR = "analysis"


def pod_labels(role: RoleName) -> dict[str, str]:
    return {NAME_LABEL: "appliance", COMPONENT_LABEL: role}


def group_pod_labels(group: str, role: str) -> dict[str, str]:
    """A group member's pod labels: a model server, its group, ``head`` or ``worker``."""
    return {**pod_labels("model-server"), GROUP_LABEL: group, GROUP_ROLE_LABEL: role}


def _selector(component: ComponentName) -> dict[str, str]:
    """The labels that select ``component``'s pods (a role's, a group's or its head's)."""
    grouped = group_of_component(component)
    if grouped is None:
        assert component in ROLES, component
        return pod_labels(component)
    name, head = grouped
    labels = {NAME_LABEL: "appliance", GROUP_LABEL: name}
    return labels | ({GROUP_ROLE_LABEL: "head"} if head else {})


def policy_name(component: ComponentName) -> str:
    """``allow-gateway``; ``allow-group-NAME``; ``allow-head-of-group-NAME``."""
    grouped = group_of_component(component)
    if grouped is None:
        return f"allow-{component}"
    name, head = grouped
    return f"allow-head-of-group-{name}" if head else f"allow-group-{name}"


def _peers(component: ComponentName, site: Site) -> list[dict[str, Any]]:
    if component in ROLES or group_of_component(component) is not None:
        return [{"podSelector": {"matchLabels": _selector(component)}}]
    if component == "dns":
        return [
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: DNS_NAMESPACE}},
                "podSelector": {"matchLabels": dict(DNS_LABELS)},
            }
        ]
    if component == "clients":
        return [{"ipBlock": {"cidr": str(network)}} for network in site.networks]
    raise ValueError(f"component {component!r} has no Kubernetes peer")  # admin: hosts only


def _port(flow: Flow) -> dict[str, Any]:
    port: dict[str, Any] = {"protocol": flow.protocol.upper()}
    if flow.port is not None:
        port["port"] = flow.port
    if flow.last_port is not None:
        port["endPort"] = flow.last_port
    return port


def _rules(flows: Sequence[Flow], peer_of: str, site: Site, key: str) -> list[dict[str, Any]]:
    """One rule per peer component, with every port the flows give it, in model order."""
    grouped: dict[str, list[Flow]] = {}
    for flow in flows:
        grouped.setdefault(getattr(flow, peer_of), []).append(flow)
    return [
        {key: _peers(peer, site), "ports": [_port(f) for f in group]}
        for peer, group in grouped.items()
    ]


def network_policies(model: PolicyModel, site: Site) -> list[tuple[list[str], dict[str, Any]]]:
    """(comment lines, NetworkPolicy) in apply order: default deny first."""
    flows = model.flows_for("k8s")
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": NAMESPACE},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    result = [(["Every pod of the namespace: no ingress, no egress, unless allowed below."], deny)]
    for component in model.components_for("k8s"):
        if component.kind not in ("role", "group"):
            continue
        role = component.name
        inbound = [f for f in flows if f.destination == role]
        outbound = [f for f in flows if f.source == role]
        spec: dict[str, Any] = {"podSelector": {"matchLabels": _selector(role)}}
        types = []
        if inbound:
            types.append("Ingress")
            spec["ingress"] = _rules(inbound, "source", site, "from")
        if outbound:
            types.append("Egress")
            spec["egress"] = _rules(outbound, "destination", site, "to")
        if not types:
            continue
        spec["policyTypes"] = types
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": policy_name(role), "namespace": NAMESPACE,
                         "labels": {NAME_LABEL: "appliance"}},
            "spec": spec,
        }  # fmt: skip
        comments = list(
            dict.fromkeys(
                f"{f.source} -> {f.destination} {f.port_text}: {f.purpose}"
                for f in inbound + outbound
            )
        )
        result.append((comments, policy))
    return result


def _namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {NAMESPACE_LABEL: name, **(labels or {})}},
    }


def _workload(
    name: str,
    kind: str,
    namespace: str,
    labels: dict[str, str],
    ports: list[int],
    replicas: int,
    sysctls: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "stand-in.invalid/analysis-only:0"}
    if ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    pod: dict[str, Any] = {"containers": [container]}
    if sysctls:
        pod["securityContext"] = {"sysctls": [{"name": k, "value": v} for k, v in sysctls.items()]}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": dict(labels)},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": spec,
    }


def analysis_replicas(model: PolicyModel, role: RoleName) -> int:
    """Two model-server pods for a multi-node profile without groups (so its any-port peer
    flow shows), else one."""
    return 2 if role == "model-server" and model.multi_node and not model.groups else 1


def group_workloads(group: GroupNetwork) -> list[tuple[str, str, int]]:
    """A group's stand-in StatefulSets: (name, group role, replicas): its head, its workers."""
    return [
        (f"group-{group.name}-head", "head", 1),
        (f"group-{group.name}-worker", "worker", len(group.hosts) - 1),
    ]


def analysis_workloads(model: PolicyModel) -> list[dict[str, Any]]:
    listening = {
        role: sorted({f.port for f in model.flows_for("k8s") if f.destination == role and f.port})
        for role in ROLES
    }
    docs = [_namespace(DNS_NAMESPACE)]
    docs.append(_workload(DNS_WORKLOAD, "Deployment", DNS_NAMESPACE, DNS_LABELS, [], 1))
    docs.append(
        _workload(OTHER_SYSTEM_WORKLOAD, "Deployment", DNS_NAMESPACE,
                  {"k8s-app": OTHER_SYSTEM_WORKLOAD}, [], 1)
    )  # fmt: skip
    for role in ROLES:
        name, kind = WORKLOADS[role]
        docs.append(
            _workload(name, kind, NAMESPACE, pod_labels(role), listening[role],
                      analysis_replicas(model, role))
        )  # fmt: skip
    for group in model.groups:
        sysctls = {PORT_RANGE_SYSCTL: port_range_value(group)}
        for name, member, replicas in group_workloads(group):
            ports = [group.master_port] if member == "head" else []
            docs.append(
                _workload(name, "StatefulSet", NAMESPACE, group_pod_labels(group.name, member),
                          ports, replicas, sysctls)
            )  # fmt: skip
    return docs


def _dump(documents: Sequence[tuple[list[str], dict[str, Any]]], header: Sequence[str]) -> str:
    parts = []
    for index, (comments, doc) in enumerate(documents):
        lines = [f"# {line}".rstrip() for line in ([*header, ""] if index == 0 else []) + comments]
        parts.append(
            "\n".join([*lines, yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)])
        )
    return "---\n".join(parts)


def render_manifests(model: PolicyModel, site: Site) -> dict[str, str]:
    """Relative path -> YAML text."""
    origin = (
        f"appliance network policy for profile {model.profile}; generated by `appliance render`."
    )
    return {
        f"{MANIFESTS_DIR}/00-namespace.yaml": _dump(
            [([], _namespace(NAMESPACE, {NAME_LABEL: "appliance"}))], [origin]
        ),
        f"{MANIFESTS_DIR}/10-networkpolicies.yaml": _dump(
            network_policies(model, site),
            [origin, "Each policy lists, above it, the flows of policy.txt it allows."],
        ),
        f"{ANALYSIS_DIR}/stand-in-workloads.yaml": _dump(
            [([], doc) for doc in analysis_workloads(model)],
            [
                origin,
                "STAND-INS FOR OFFLINE ANALYSIS ONLY: never apply. Pods with the labels the",
                "policies select, so that `nca --connectivity` can compute who may reach whom.",
            ],
        ),
    }
