"""The preflight of a multi-node serving group: do the members agree, and where do they meet.

``group_network`` builds the group's ``GroupNetwork`` (each member's IPv4 address on the
inventory's interface, head first). ``group_problems`` lists every way the members
disagree or cannot serve together; ``check_group`` is the same list as plain sentences.
The site plan (``plan.site``) runs both before any host changes and refuses with
``GroupRefusedError`` (exit 3).

Checks, each naming the hosts, the values found and what to do:

- facts: every member has facts (a member the deploy could not read or refused leaves the
  group unable to serve);
- GPUs (GPU profiles only): the same GPU models and the same number of them, the same
  driver version and the same CUDA driver version on every member (tensor parallel inside
  a node assumes identical nodes; the pipeline stages are cut evenly);
- interface: present on every member, operational (``up``; ``unknown``, what drivers that
  do not track it report, is accepted: the rendezvous fails at start if it is not), with an
  IPv4 address (vLLM's ``VLLM_HOST_IP``); the same MTU on every member (a smaller MTU on
  one side drops or fragments the collective library's large frames);
- clock: each worker's offset from the head within ``clock_bound_ms`` (default
  ``CLOCK_BOUND_MS``, 1 s: any host synchronised by NTP/chrony or PTP is within
  milliseconds, so a second means its time sync is broken; the group's logs, its status
  timestamps and the tokens the gateway checks then disagree between members). Offsets are
  measured against the deployer with an uncertainty (half the facts call); a worker is
  refused only when the difference exceeds the bound plus both uncertainties, so a slow
  SSH call never refuses a synchronised group. Not recorded (older facts): not checked;
- RDMA, when the profile says ``match.gpu.rdma: required``: every member has an ACTIVE
  RDMA port (InfiniBand or RoCE); without one NCCL falls back to sockets
  (``NET/Socket``), far too slow for the pipeline across nodes. Not recorded: a problem.
  (``nvidia_peermem`` is recorded, not checked: without it NCCL still uses RDMA, through
  host memory.)
- compilers, when the profile's vLLM engine runs compiled (``enforce_eager`` false) and
  the facts recorded them: a C compiler (``C_COMPILERS``, Triton's launchers) on every
  member, and for vLLM's CPU build a C++ one (``CXX_COMPILERS``, inductor's C++ code).

``--force`` passes the clock and RDMA problems only (the group serves, slower or with
logs out of order); members that disagree on GPUs, driver, CUDA, interface or MTU, or
lack a compiler or facts, do not start or do not meet, so nothing lets them through.

Pure: plain data in, plain data out; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.detect.facts import C_COMPILERS, CXX_COMPILERS, HostFacts, InterfaceFacts
from appliance.errors import GroupRefusedError
from appliance.plan.group import GroupNetwork
from appliance.plan.inventory import GroupEntry
from appliance.plan.profiles import Profile, VllmEngine

CLOCK_BOUND_MS = 1000
USABLE_STATES = ("up", "unknown")
_SHOWN = 8  # interfaces named in a message

Check = Literal["facts", "gpu", "driver", "cuda", "interface", "mtu", "clock", "rdma", "compiler"]
FORCEABLE: frozenset[Check] = frozenset({"clock", "rdma"})


@dataclass(frozen=True, slots=True)
class GroupProblem:
    check: Check
    text: str  # the hosts, the values found, what to do

    @property
    def forceable(self) -> bool:
        return self.check in FORCEABLE


def _interface(facts: HostFacts, name: str) -> InterfaceFacts | None:
    return next((i for i in facts.interfaces or () if i.name == name), None)


def _interface_problem(entry: GroupEntry, host: str, facts: HostFacts) -> str | None:
    """Why ``host`` cannot take part on the group's interface, or None."""
    where = f"group {entry.name}: host {host}"
    if facts.interfaces is None:
        return (f"{where}: its facts do not list network interfaces (collected by an older "
                "appliance); deploy again with this version so the facts script reads them")  # fmt: skip
    found = _interface(facts, entry.interface)
    if found is None:
        names = ", ".join(i.name for i in facts.interfaces[:_SHOWN]) or "none"
        return (f"{where} has no interface {entry.interface!r} (it has: {names}); set the "
                "group's interface in the inventory to the one its members reach each other on")  # fmt: skip
    if found.operstate not in USABLE_STATES:
        return (f"{where}: interface {entry.interface} is {found.operstate}, expected up; "
                f"bring it up (`ip link set {entry.interface} up`, check the cable or switch port)")  # fmt: skip
    if found.ipv4 is None:
        return (f"{where}: the addresses of {entry.interface} are unknown (no iproute2 on the "
                "host); install iproute2 there, or give the interface an address, then deploy again")  # fmt: skip
    if not found.ipv4:
        return (f"{where}: interface {entry.interface} has no IPv4 address; configure one "
                "(the members reach each other on it), then deploy again")  # fmt: skip
    return None


def group_network(entry: GroupEntry, facts: Mapping[str, HostFacts]) -> GroupNetwork:
    """The group's network: each member's (first, primary) IPv4 address on ``entry.interface``,
    head first. Refused (``GroupRefusedError``) when a member has no facts, or the interface
    is missing, not up, or has no IPv4 address on a member."""
    problems = [p.text for p in _facts_problems(entry, facts)]
    problems += [
        text
        for host in entry.hosts
        if host in facts and (text := _interface_problem(entry, host, facts[host])) is not None
    ]
    if problems:
        raise _refusal(entry, problems)
    addresses = []
    for host in entry.hosts:
        found = _interface(facts[host], entry.interface)
        assert found is not None and found.ipv4  # checked above
        addresses.append(found.ipv4[0].partition("/")[0])
    return GroupNetwork(
        name=entry.name,
        hosts=tuple(entry.hosts),
        interface=entry.interface,
        addresses=tuple(addresses),
        master_port=entry.master_port,
        port_range=entry.port_range,
    )


def check_group(
    entry: GroupEntry,
    facts: Mapping[str, HostFacts],
    profile: Profile,
    *,
    clock_bound_ms: int = CLOCK_BOUND_MS,
) -> list[str]:
    """Every problem of the group as one sentence each (empty: the members agree)."""
    return [p.text for p in group_problems(entry, facts, profile, clock_bound_ms=clock_bound_ms)]


def group_problems(
    entry: GroupEntry,
    facts: Mapping[str, HostFacts],
    profile: Profile,
    *,
    clock_bound_ms: int = CLOCK_BOUND_MS,
) -> list[GroupProblem]:
    """Every problem of the group (see the module docstring), each with its check's name."""
    problems = _facts_problems(entry, facts)
    members = {h: facts[h] for h in entry.hosts if h in facts}
    if profile.match.accelerator == "gpu":
        problems += _gpu_problems(entry, members)
    problems += [
        GroupProblem("interface", text)
        for host, f in members.items()
        if (text := _interface_problem(entry, host, f)) is not None
    ]
    problems += _mtu_problems(entry, members)
    problems += _clock_problems(entry, members, clock_bound_ms)
    if profile.match.gpu is not None and profile.match.gpu.rdma == "required":
        problems += _rdma_problems(entry, members, profile.name)
    problems += _compiler_problems(entry, members, profile)
    return problems


def refuse_group(entry: GroupEntry, problems: Sequence[GroupProblem], *, force: bool) -> None:
    """Raise ``GroupRefusedError`` listing every problem, unless there are none or ``force``
    and each is forceable."""
    if problems and not (force and all(p.forceable for p in problems)):
        raise _refusal(
            entry, [p.text for p in problems], forceable=all(p.forceable for p in problems)
        )


def _refusal(
    entry: GroupEntry, problems: Sequence[str], *, forceable: bool = False
) -> GroupRefusedError:
    lines = "\n".join(f"  - {p}" for p in problems)
    hint = (
        "Fix each problem above, or pass --force to serve anyway (these problems slow the group "
        "or disorder its logs, they do not stop it)."
        if forceable
        else "Fix each problem above on the hosts or in the inventory, then plan again; "
        "--force does not pass them (the group would not start or its members would not meet)."
    )
    return GroupRefusedError(
        f"group {entry.name} ({', '.join(entry.hosts)}; head {entry.head}) cannot serve: "
        f"{len(problems)} problem(s), refused before any host changed:\n{lines}",
        hint=hint,
    )


def _facts_problems(entry: GroupEntry, facts: Mapping[str, HostFacts]) -> list[GroupProblem]:
    missing = [h for h in entry.hosts if h not in facts]
    if not missing:
        return []
    return [GroupProblem("facts",
        f"group {entry.name}: no facts for {', '.join(missing)} (not reachable, or refused by "
        "an earlier check): the group cannot serve without every member; make every member "
        "reachable and deployable, or take the host out of the group in the inventory")]  # fmt: skip


def _by_value(members: Mapping[str, object]) -> str:
    """``host=value`` for each member, grouped: "a, b: 8x H100; c: 4x H100"."""
    groups: dict[str, list[str]] = {}
    for host, value in members.items():
        groups.setdefault(str(value), []).append(host)
    return "; ".join(f"{', '.join(hosts)}: {value}" for value, hosts in groups.items())


def _disagree(values: Mapping[str, object]) -> bool:
    return len({str(v) for v in values.values()}) > 1


def _gpu_problems(entry: GroupEntry, members: Mapping[str, HostFacts]) -> list[GroupProblem]:
    problems: list[GroupProblem] = []
    g = entry.name

    def models(f: HostFacts) -> str:
        counts = Counter(gpu.name for gpu in f.gpu.gpus)
        return " + ".join(f"{n}x {name}" for name, n in sorted(counts.items())) or "no GPU"

    names = {
        h: ", ".join(sorted(set(gpu.name for gpu in f.gpu.gpus))) or "no GPU"
        for h, f in members.items()
    }
    counts = {h: len(f.gpu.gpus) for h, f in members.items()}
    if _disagree(names):
        problems.append(GroupProblem("gpu", f"group {g}: the members have different GPU models "
            f"({_by_value({h: models(f) for h, f in members.items()})}); a group needs identical "
            "nodes: take the odd host out of the group or give it the same GPUs"))  # fmt: skip
    if _disagree(counts):
        problems.append(GroupProblem("gpu", f"group {g}: the members have different GPU counts "
            f"({_by_value({h: f'{n} GPU(s)' for h, n in counts.items()})}); tensor parallel "
            "spans every GPU of a node, the same on each: take the odd host out of the group"))  # fmt: skip
    versions: tuple[tuple[Check, str, str], ...] = (
        ("driver", "driver_version", "NVIDIA driver"),
        ("cuda", "cuda_driver_version", "driver's CUDA version"),
    )
    for check, attribute, what in versions:
        values = {h: getattr(f.gpu, attribute) or "unknown" for h, f in members.items()}
        if _disagree(values):
            problems.append(GroupProblem(check, f"group {g}: the members run different "
                f"{what}s ({_by_value(values)}); install the same driver on every member"))  # fmt: skip
    return problems


def _mtu_problems(entry: GroupEntry, members: Mapping[str, HostFacts]) -> list[GroupProblem]:
    mtus = {h: found.mtu for h, f in members.items()
            if (found := _interface(f, entry.interface)) is not None}  # fmt: skip
    if not _disagree(mtus):
        return []
    return [GroupProblem("mtu", f"group {entry.name}: interface {entry.interface} has different "
        f"MTUs ({_by_value(mtus)}); set the same MTU on every member (and on the switch ports "
        "between them)")]  # fmt: skip


def _clock_problems(
    entry: GroupEntry, members: Mapping[str, HostFacts], bound_ms: int
) -> list[GroupProblem]:
    head = members.get(entry.head)
    if head is None or head.clock is None:
        return []
    problems = []
    for host, f in members.items():
        if host == entry.head or f.clock is None:
            continue
        apart = f.clock.offset_ms - head.clock.offset_ms
        slack = f.clock.uncertainty_ms + head.clock.uncertainty_ms
        if abs(apart) > bound_ms + slack:
            problems.append(GroupProblem("clock", f"group {entry.name}: the clock of {host} is "
                f"{abs(apart)} ms {'ahead of' if apart > 0 else 'behind'} the head {entry.head}'s "
                f"(± {slack} ms of measurement; bound {bound_ms} ms); synchronise the members' "
                "clocks (chrony or NTP against the site's time server)"))  # fmt: skip
    return problems


def _rdma_problems(
    entry: GroupEntry, members: Mapping[str, HostFacts], profile: str
) -> list[GroupProblem]:
    problems = []
    for host, f in members.items():
        where = f"group {entry.name}: host {host}"
        if f.rdma_ports is None:
            text = (f"{where}: its facts do not list RDMA devices (collected by an older "
                    f"appliance) and profile {profile} requires them; deploy again with this version")  # fmt: skip
        elif not f.rdma_ports:
            text = (f"{where} has no RDMA device (/sys/class/infiniband is empty) and profile "
                    f"{profile} requires one: NCCL would fall back to sockets; install the "
                    "InfiniBand/RoCE adapter's driver (rdma-core, mlx5_ib) or choose a profile "
                    "that does not require RDMA")  # fmt: skip
        elif not any(p.state == "ACTIVE" for p in f.rdma_ports):
            states = ", ".join(f"{p.device}/{p.port} {p.state}" for p in f.rdma_ports[:_SHOWN])
            text = (f"{where}: no RDMA port is ACTIVE ({states}) and profile {profile} requires "
                    "one: check the cable, the switch and the subnet manager (InfiniBand)")  # fmt: skip
        else:
            continue
        problems.append(GroupProblem("rdma", text))
    return problems


def _compiler_problems(
    entry: GroupEntry, members: Mapping[str, HostFacts], profile: Profile
) -> list[GroupProblem]:
    engine = profile.engine
    if not isinstance(engine, VllmEngine) or engine.enforce_eager:
        return []
    needed = [("C", C_COMPILERS)] + ([("C++", CXX_COMPILERS)] if engine.device == "cpu" else [])
    problems = []
    for host, f in members.items():
        if f.compilers is None:
            continue
        for language, names in needed:
            if not set(names) & set(f.compilers):
                problems.append(GroupProblem("compiler", f"group {entry.name}: host {host} has no "
                    f"{language} compiler on PATH ({' or '.join(names)}) and profile {profile.name} "
                    "runs vLLM compiled (no enforce_eager), which compiles on the host; install "
                    f"{names[-1]} from the site's OS media, or use a profile with enforce_eager"))  # fmt: skip
    return problems
