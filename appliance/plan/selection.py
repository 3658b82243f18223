"""Profile selection from evidence, explained.

``select_profile`` evaluates every profile against the host facts and returns
the evidence it used, the chosen profile, and for every profile why it matches
or every reason it does not. Invariant: the CPU profile is never chosen
silently. Whenever a llama.cpp profile is chosen, ``gpu_notice`` says why no
GPU is used (no NVIDIA device, an NVML failure, or GPUs no GPU profile accepts),
and front ends must show it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from appliance.detect.facts import GpuFacts, HostFacts
from appliance.errors import DoesNotFitError
from appliance.plan.profiles import CpuMatch, GpuMatch, Profile, format_cc, get_profile

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Candidate:
    profile: str
    preference: int
    matches: bool
    reasons: tuple[str, ...]  # why it matches, or every reason it does not


@dataclass(frozen=True, slots=True)
class Selection:
    profile: Profile
    mode: Literal["auto", "requested"]
    evidence: tuple[str, ...]
    candidates: tuple[Candidate, ...]  # highest preference first
    gpu_notice: str | None  # must be shown whenever set
    warnings: tuple[str, ...]

    @property
    def matches_hardware(self) -> bool:
        return next(c.matches for c in self.candidates if c.profile == self.profile.name)


def evidence(hosts: tuple[HostFacts, ...]) -> tuple[str, ...]:
    lines: list[str] = []
    for host in hosts:
        cpu, gpu = host.cpu, host.gpu
        flags = " ".join(cpu.flags) or "none of interest"
        lines.append(
            f"{host.hostname}: {cpu.model} ({cpu.architecture}), {cpu.physical_cores} physical / "
            f"{cpu.logical_cores} logical cores, RAM {host.memory.total_bytes / GIB:.1f} GiB; "
            f"CPU flags: {flags}"
        )
        lines.append(f"{host.hostname}: {gpu.message}")
        for name, gpus in _by_model(gpu.gpus).items():
            first = gpus[0]
            lines.append(
                f"{host.hostname}: {len(gpus)}x {name}, {first.memory_total_bytes / GIB:.1f} GiB each, "
                f"compute capability {format_cc(first.compute_capability)} ({first.architecture}), "
                f"MIG {first.mig_mode}"
            )
        if len(gpu.gpus) > 1:
            lines.append(f"{host.hostname}: GPU interconnect: {_describe_links(host)}")
    return tuple(lines)


def _by_model(gpus: tuple[GpuFacts, ...]) -> dict[str, list[GpuFacts]]:
    grouped: dict[str, list[GpuFacts]] = {}
    for gpu in gpus:
        grouped.setdefault(gpu.name, []).append(gpu)
    return grouped


def _describe_links(host: HostFacts) -> str:
    links = host.gpu.links
    pairs = Counter(links[i][j] for i in range(len(links)) for j in range(i + 1, len(links)))
    if not pairs:
        return "unknown (NVML gave no topology)"
    names = {
        "NV": "NVLink",
        "PIX": "same PCIe switch",
        "PXB": "PCIe switches",
        "PHB": "PCIe host bridge",
        "NODE": "PCIe within a NUMA node",
        "SYS": "across NUMA nodes (SMP interconnect)",
        "?": "unknown",
    }
    return ", ".join(
        f"{count} pair(s) {names.get(kind, kind)}" for kind, count in sorted(pairs.items())
    )


def match_profile(profile: Profile, hosts: tuple[HostFacts, ...]) -> Candidate:
    match = profile.match
    if match.gpu is not None:
        reasons, ok = _match_gpu(match.gpu, hosts)
    else:
        assert match.cpu is not None
        reasons, ok = _match_cpu(match.cpu, hosts)
    if profile.rehearsal:
        reasons = [*reasons, f"rehearsal profile: used only when named (--profile {profile.name})"]
    return Candidate(profile.name, profile.preference, ok, tuple(reasons))


def _match_gpu(want: GpuMatch, hosts: tuple[HostFacts, ...]) -> tuple[list[str], bool]:
    problems: list[str] = []
    good: list[str] = []
    if not want.nodes.min <= len(hosts) <= want.nodes.max:
        problems.append(
            f"needs {want.nodes.min}-{want.nodes.max} node(s), the facts list {len(hosts)}"
        )
    patterns = [re.compile(p, re.IGNORECASE) for p in want.name_patterns]
    for host in hosts:
        name = host.hostname
        if not host.gpu.usable:
            problems.append(f"{name}: no usable GPU ({host.gpu.status})")
            continue
        eligible: list[GpuFacts] = []
        for model, gpus in _by_model(host.gpu.gpus).items():
            why = _gpu_shortfalls(want, patterns, gpus[0])
            if why:
                problems.append(f"{name}: {len(gpus)}x {model}: " + "; ".join(why))
            else:
                eligible.extend(gpus)
        if not eligible:
            continue
        count = len(eligible)
        upper = want.max_count_per_node
        if count < want.min_count_per_node:
            problems.append(
                f"{name}: {count} matching GPU(s), needs at least {want.min_count_per_node}"
            )
        elif upper is not None and count > upper:
            problems.append(f"{name}: {count} matching GPU(s), profile takes at most {upper}")
        if want.require_nvlink and not _all_nvlink(host, eligible):
            problems.append(f"{name}: the matching GPUs are not all connected by NVLink (needed)")
        if not problems:
            good.append(
                f"{name}: {count}x {eligible[0].name} qualify"
                + (", all NVLink" if want.require_nvlink else "")
            )
    return (problems, False) if problems else (good, True)


def _gpu_shortfalls(want: GpuMatch, patterns: list[re.Pattern[str]], gpu: GpuFacts) -> list[str]:
    why = []
    if not any(p.search(gpu.name) for p in patterns):
        why.append(f"name does not match {' or '.join(want.name_patterns)}")
    memory = gpu.memory_total_bytes / GIB
    if memory < want.min_memory_gib:
        why.append(f"{memory:.1f} GiB memory, needs {want.min_memory_gib:g}")
    if gpu.compute_capability < want.min_compute_capability:
        why.append(
            f"compute capability {format_cc(gpu.compute_capability)}, needs "
            f"{format_cc(want.min_compute_capability)}"
        )
    if gpu.mig_mode == "enabled":
        why.append("MIG is enabled (whole GPUs needed: disable MIG with nvidia-smi -mig 0)")
    return why


def _all_nvlink(host: HostFacts, gpus: list[GpuFacts]) -> bool:
    links = host.gpu.links
    index = [g.index for g in gpus]
    try:
        return all(links[i][j] == "NV" for i in index for j in index if i != j)
    except IndexError:
        return False


def _match_cpu(want: CpuMatch, hosts: tuple[HostFacts, ...]) -> tuple[list[str], bool]:
    problems: list[str] = []
    good: list[str] = []
    # A single-host CPU profile is matched host by host (each host alone); a multi-node one
    # needs as many hosts as its group takes.
    if want.nodes.max > 1 and not want.nodes.min <= len(hosts) <= want.nodes.max:
        problems.append(
            f"needs {want.nodes.min}-{want.nodes.max} hosts, the facts list {len(hosts)}"
        )
    for host in hosts:
        cpu, name = host.cpu, host.hostname
        ram = host.memory.total_bytes / GIB
        if cpu.architecture not in want.architectures:
            problems.append(
                f"{name}: CPU architecture {cpu.architecture}, profile supports {', '.join(want.architectures)}"
            )
        if cpu.physical_cores < want.min_physical_cores:
            problems.append(
                f"{name}: {cpu.physical_cores} physical cores, needs {want.min_physical_cores}"
            )
        if ram < want.min_ram_gib:
            problems.append(f"{name}: {ram:.1f} GiB RAM, needs {want.min_ram_gib:g}")
        missing = [f for f in want.required_flags if f not in cpu.flags]
        if missing:
            problems.append(f"{name}: CPU lacks {', '.join(missing)}")
        good.append(f"{name}: {cpu.physical_cores} cores, {ram:.1f} GiB RAM")
    return (problems, False) if problems else (good, True)


def _no_gpu_notice(
    hosts: tuple[HostFacts, ...], candidates: list[Candidate], chosen: Profile
) -> str:
    engine = "llama.cpp" if chosen.engine.kind == "llamacpp" else "vLLM's CPU build"
    unusable = [h for h in hosts if not h.gpu.usable]
    if unusable:
        why = "; ".join(f"{h.hostname}: {h.gpu.message}" for h in unusable)
        return f"NO USABLE GPU: {why} The CPU profile {chosen.name} ({engine}) is used instead."
    gpu_rejections = [
        f"{c.profile}: {'; '.join(c.reasons)}"
        for c in candidates
        if not c.matches and c.reasons and c.profile != chosen.name
    ]
    return (
        "GPUS PRESENT BUT NOT USED: no GPU profile accepts them ("
        + " | ".join(gpu_rejections)
        + f"). The CPU profile {chosen.name} ({engine}) is used instead; "
        "add a site profile with --profiles-dir or choose one with --profile NAME."
    )


Requested = Profile | Literal["auto"]  # what a command asked for, resolved once


def resolve_profile(profiles: dict[str, Profile], name: str) -> Requested:
    """``--profile NAME`` resolved: "auto", or the profile (an unknown name raises
    ``ProfileError`` naming the known ones). Done once, before any slow step."""
    return "auto" if name == "auto" else get_profile(profiles, name)


def requested_name(requested: Requested) -> str:
    return requested if isinstance(requested, str) else requested.name


def select_profile(
    profiles: dict[str, Profile], hosts: tuple[HostFacts, ...], requested: str | Profile = "auto"
) -> Selection:
    """``requested``: "auto", a profile's name, or a profile already resolved (``get_profile``)."""
    ordered = sorted(profiles.values(), key=lambda p: (-p.preference, p.name))
    candidates = [match_profile(p, hosts) for p in ordered]
    warnings: list[str] = []
    if requested == "auto":
        # A rehearsal profile (vLLM's CPU build) serves a lab, never a site by default.
        chosen_name = next(
            (c.profile for c in candidates if c.matches and not profiles[c.profile].rehearsal),
            None,
        )
        if chosen_name is None:
            reasons = "\n".join(f"  - {c.profile}: {'; '.join(c.reasons)}" for c in candidates)
            raise DoesNotFitError(
                f"no hardware profile matches these hosts:\n{reasons}",
                hint="Add a site profile with --profiles-dir, or force one with --profile NAME.",
            )
        chosen = profiles[chosen_name]
        mode: Literal["auto", "requested"] = "auto"
    else:
        chosen = requested if isinstance(requested, Profile) else get_profile(profiles, requested)
        mode = "requested"
        mismatch = next(c for c in candidates if c.profile == chosen.name)
        if not mismatch.matches:
            warnings.append(
                f"profile {chosen.name} was requested but does not match this hardware: "
                f"{'; '.join(mismatch.reasons)}"
            )
    notice = None
    if chosen.match.accelerator == "cpu":
        gpu_candidates = [c for c in candidates if profiles[c.profile].match.accelerator == "gpu"]
        notice = _no_gpu_notice(hosts, gpu_candidates, chosen)
        if mode == "requested" and any(c.matches for c in gpu_candidates):
            notice = f"GPUS PRESENT BUT NOT USED: the CPU profile {chosen.name} was requested."
    return Selection(
        profile=chosen,
        mode=mode,
        evidence=evidence(hosts),
        candidates=tuple(candidates),
        gpu_notice=notice,
        warnings=tuple(warnings),
    )
