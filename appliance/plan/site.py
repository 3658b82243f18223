"""Plan the site, not the host: from every host's facts and the inventory's roles, each
model-server host's part and the engine command it runs.

The profile arrives resolved (``selection.resolve_profile``: a ``Profile``,
or "auto"), once, before anything was read or hashed. ``plan_site`` is a pure function over plain data
(profiles, that request, the hosts' facts by inventory name, the inventory,
the bundle's model) returning a ``SitePlan``: per host a ``HostPart``, which
says what it serves (alone, or as head or worker of a multi-node group), the
``Plan`` of the group it serves in and its own ``NodeCommand``, and whether
the gateway and Keycloak go on it.

Invariants:
- The model-server hosts are the inventory's, in inventory order, that have
  facts (the deploy leaves out hosts it refused); other roles alone get no part.
- Groups named in the inventory (``groups``: head first, then workers) serve one
  model together: every member must have facts, and the members must agree
  (``plan.group_preflight``: GPUs, driver, CUDA, interface, MTU, clock, RDMA,
  compilers), else ``GroupRefusedError`` (exit 3) lists every problem; ``force``
  passes only the clock and RDMA ones. The group's ``GroupNetwork`` (each member's
  address on the group's interface) goes to the engine commands and to each
  member's ``HostPart.group``. A named group whose profile does not plan one
  command per member (a single-node profile) is refused too.
- With named groups, a host in no group is planned alone. Without any (the
  implicit grouping, kept for ``appliance plan``-style callers): hosts serve one
  model together only when the profile is multi-node (``match.gpu.nodes.max > 1``)
  and there are several hosts; with "auto", when choosing over all hosts at once
  picks such a profile. Such a part has no ``GroupNetwork`` (no interface is
  named) and says so: ``HostPart.grouping == "implicit"``.
- The gateway goes where a model server listens (single or head), when the
  site asks for it; Keycloak (``sso.install``) on the first of those: one
  realm signs the site's tokens.
- A plan that does not fit is refused (``DoesNotFitError``, exit 3) unless
  forced; so is a plan with no engine command. Messages name the host(s)
  and the profile as requested.
- LoRA adapters (``adapters``, with the base model's ``identity``) are checked
  against each group's profile (``plan.adapters.check_adapters``: refused with
  ``AdapterRefusedError``, exit 3, never forced) and served by its engine with
  the limits of the set (``lora_settings``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.compliance.findings import BaseIdentity
from appliance.detect.facts import HostFacts
from appliance.errors import AdapterRefusal, AdapterRefusedError, DoesNotFitError, GroupRefusedError
from appliance.model.info import ModelInfo
from appliance.plan.adapters import AdapterFiles, check_adapters, lora_settings
from appliance.plan.engine_args import LoraModules, NodeCommand, adapter_target_path
from appliance.plan.group import GroupNetwork
from appliance.plan.group_preflight import group_network, group_problems, refuse_group
from appliance.plan.inventory import GroupEntry, Inventory
from appliance.plan.profiles import Profile, VllmEngine
from appliance.plan.report import Plan, build_plan
from appliance.plan.selection import Requested, requested_name, select_profile


def is_multi_node(profile: Profile) -> bool:
    return profile.multi_node


@dataclass(frozen=True, slots=True)
class HostPart:
    """One host's part in the site: what it serves, with which command, and what else it runs."""

    host: str
    plan: Plan  # of the group it serves in (its own plan when it serves alone)
    command: NodeCommand  # the engine command this host runs
    gateway: bool  # the authenticating gateway (and the host's firewall) go on this host
    keycloak: bool  # Keycloak, as the site file's sso.install asks, goes on this host
    # The network of the inventory's group this host serves in (None: alone, or an implicit
    # group of a multi-node profile over an inventory without ``groups``)
    group: GroupNetwork | None = None

    @property
    def serves(self) -> Literal["single", "head", "worker"]:
        return self.command.role

    @property
    def grouping(self) -> Literal["alone", "inventory", "implicit"]:
        """How the host came to serve: alone, in a group the inventory names, or in a group
        the site plan formed because the profile is multi-node (no ``groups`` in the inventory)."""
        if self.group is not None:
            return "inventory"
        return "alone" if self.serves == "single" else "implicit"


@dataclass(frozen=True, slots=True)
class SitePlan:
    parts: tuple[HostPart, ...]  # inventory order

    def part(self, host: str) -> HostPart:
        return next(p for p in self.parts if p.host == host)

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The hosts that serve one model together (one host each, unless multi-node), head
        first."""
        groups: dict[int, list[HostPart]] = {}
        for part in self.parts:
            groups.setdefault(id(part.plan), []).append(part)
        return tuple(tuple(p.host for p in sorted(parts, key=_rank)) for parts in groups.values())


def plan_site(
    profiles: dict[str, Profile],
    requested: Requested,
    facts: Mapping[str, HostFacts],
    inventory: Inventory,
    model: ModelInfo,
    *,
    force: bool = False,
    gateway: bool = False,
    keycloak: bool = False,
    adapters: Sequence[AdapterFiles] = (),
    identity: BaseIdentity | None = None,
) -> SitePlan:
    """Every model-server host's part (see the module docstring). ``facts`` are keyed by
    inventory host name; ``gateway``/``keycloak``: whether the site lays them down."""
    names = [h.name for h in inventory.with_role("model-server") if h.name in facts]
    units: list[tuple[list[str], Requested, GroupNetwork | None]]
    if inventory.groups:
        networks = {g.name: _named_group(profiles, requested, g, facts, force=force)
                    for g in inventory.groups}  # fmt: skip
        units = []
        for name in names:
            entry = inventory.group_of(name)
            if entry is None:
                units.append(([name], requested, None))
            elif entry.head == name:
                units.append((list(entry.hosts), requested, networks[entry.name]))
    else:
        group = _group_profile(profiles, requested, tuple(facts[n] for n in names))
        units = (
            [(names, group, None)] if group is not None else [([n], requested, None) for n in names]
        )
    parts: list[HostPart] = []
    keycloak_placed = False
    for hosts, profile, network in units:
        plan = _plan(profiles, profile, hosts, facts, model, requested, force=force, group=network)
        if adapters:
            lora = _lora(plan, model, adapters, identity or BaseIdentity(model.name))
            plan = _plan(profiles, plan.selection.profile, hosts, facts, model, requested,
                         force=force, lora=lora, group=network)  # fmt: skip
        # engine_commands gives one command per host, in the order the hosts were given.
        for host, command in zip(hosts, plan.commands, strict=True):
            listens = command.role != "worker"
            here = keycloak and listens and not keycloak_placed
            keycloak_placed |= here
            parts.append(HostPart(host, plan, command, gateway and listens, here, network))
    order = {n: i for i, n in enumerate(names)}
    return SitePlan(tuple(sorted(parts, key=lambda p: order[p.host])))


def _named_group(
    profiles: dict[str, Profile],
    requested: Requested,
    entry: GroupEntry,
    facts: Mapping[str, HostFacts],
    *,
    force: bool,
) -> GroupNetwork:
    """The inventory's group checked (``plan.group_preflight``) and its network; refused with
    every problem listed. The profile checked against is the one requested, or with "auto"
    the one chosen over the members' facts."""
    if any(h not in facts for h in entry.hosts):
        group_network(entry, facts)  # refuses, naming the members without facts
    if requested == "auto":
        try:
            profile = select_profile(profiles, tuple(facts[h] for h in entry.hosts), "auto").profile
        except DoesNotFitError as exc:
            raise GroupRefusedError(f"group {entry.name} ({', '.join(entry.hosts)}): {exc.message}",
                                    hint=exc.hint) from exc  # fmt: skip
    else:
        profile = requested
    if len(entry.hosts) > _max_nodes(profile):
        raise GroupRefusedError(
            f"group {entry.name} ({', '.join(entry.hosts)}): profile {profile.name} serves on "
            f"at most {_max_nodes(profile)} host(s), the group has {len(entry.hosts)}",
            hint="Name a multi-node profile (--profile; `appliance profiles`), or take the "
            "group out of the inventory; --force does not pass this.",
        )
    refuse_group(entry, group_problems(entry, facts, profile), force=force)
    return group_network(entry, facts)


def _max_nodes(profile: Profile) -> int:
    """How many hosts the profile serves one model over (``match.gpu.nodes`` or
    ``match.cpu.nodes``)."""
    return profile.nodes.max


def _group_profile(
    profiles: dict[str, Profile], requested: Requested, hosts: tuple[HostFacts, ...]
) -> Profile | None:
    """The multi-node profile the hosts serve one model with together, if any."""
    if len(hosts) < 2:
        return None
    if requested != "auto":
        return requested if is_multi_node(requested) else None
    if not any(is_multi_node(p) for p in profiles.values()):
        return None
    try:
        chosen = select_profile(profiles, hosts, "auto").profile
    except DoesNotFitError:
        return None  # no profile takes all hosts at once: each is planned alone, as before
    return chosen if is_multi_node(chosen) else None


def _plan(
    profiles: dict[str, Profile],
    profile: Requested,
    names: list[str],
    facts: Mapping[str, HostFacts],
    model: ModelInfo,
    requested: Requested,
    *,
    force: bool,
    lora: LoraModules | None = None,
    group: GroupNetwork | None = None,
) -> Plan:
    label = ", ".join(names)
    plan = build_plan(
        profiles,
        tuple(facts[n] for n in names),
        facts_source=f"ssh {label}",
        requested=profile,
        model=model,
        lora=lora,
        group=group,
    )
    name = requested_name(requested)
    if not plan.fits and not force:
        problems = "; ".join(plan.fit.problems) if plan.fit else "see appliance plan"
        raise DoesNotFitError(f"{label}: the bundle's model does not fit profile {name}: {problems}",
                              hint="Run `appliance plan` against this host's facts, or pass --force.")  # fmt: skip
    if not plan.commands:
        raise DoesNotFitError(f"{label}: no engine command could be planned for profile {name}")
    return plan


def _lora(
    plan: Plan, model: ModelInfo, adapters: Sequence[AdapterFiles], identity: BaseIdentity
) -> LoraModules:
    """The adapters checked against the plan's profile, as its engine serves them."""
    engine = plan.selection.profile.engine
    layout = plan.fit.layout if plan.fit is not None else None
    if isinstance(engine, VllmEngine) and engine.device == "cpu" and layout is not None \
            and layout.pipeline_parallel > 1:  # fmt: skip
        # Measured on lab hosts (docs/multi-node.md): with --enable-lora vLLM 0.32's CPU build
        # runs uncompiled (compilation mode NONE, no warm-up), and its pipeline stages serve
        # only compiled: every request then fails (an AssertionError in
        # sync_and_gather_intermediate_tensors, HTTP 500).
        raise AdapterRefusedError([
            AdapterRefusal(a.name, f"profile {plan.selection.profile.name} runs pipeline parallel "
                           f"{layout.pipeline_parallel} on vLLM's CPU build, which cannot serve "
                           "LoRA adapters across pipeline stages (with adapters it runs uncompiled, "
                           "and uncompiled pipeline stages fail every request)",
                           "serve the adapters on one host (profile cpu-vllm), or the base model "
                           "alone on the group")
            for a in adapters
        ])  # fmt: skip
    checked = check_adapters(adapters, model, identity, engine)
    assert isinstance(engine, VllmEngine)  # check_adapters refuses every adapter on llama.cpp
    limits = lora_settings(checked, engine)
    return LoraModules(
        adapters=tuple((a.name, adapter_target_path(a.name)) for a in checked),
        max_lora_rank=limits.max_lora_rank,
        max_loras=limits.max_loras,
        max_cpu_loras=limits.max_cpu_loras,
    )


def _rank(part: HostPart) -> int:
    """The part's node rank in its group (the head 0), as engine_args orders the hosts."""
    if part.group is not None:
        return part.group.rank_of(part.host)
    return 0 if part.command.role != "worker" else 1
