"""Rich rendering of core results for a person at a terminal.

Meaning is never carried by colour alone: every verdict is also a word
(OK, REJECTED, FITS, DOES NOT FIT, NO USABLE GPU).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from appliance.detect.facts import HostFacts
from appliance.plan.fit import GIB, Estimate, FitReport
from appliance.plan.preflight import Preflight
from appliance.plan.profiles import LlamaCppEngine, Profile, VllmEngine, format_cc
from appliance.plan.report import Plan

# soft_wrap: long lines are left to the terminal, so piped output is not cut at 80 columns.
# markup=False: messages are data, a "[0]" in one must print as written.
out = Console(highlight=False, soft_wrap=True, markup=False)


def emit(*parts: str | tuple[str, str]) -> None:
    """Print one line; a (text, style) part is styled, a str part is plain."""
    out.print(Text.assemble(*parts))


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def render_detect(facts: HostFacts) -> None:
    cpu, mem, gpu = facts.cpu, facts.memory, facts.gpu
    emit(
        (facts.hostname, "bold"),
        f"  {facts.os.distribution}, kernel {facts.os.kernel}, Python {facts.os.python}",
    )
    out.print(
        f"CPU   {cpu.model} ({cpu.architecture}): {cpu.physical_cores} physical / {cpu.logical_cores} logical cores"
    )
    out.print(f"      flags for llama.cpp: {' '.join(cpu.flags) or 'none of interest'}")
    out.print(f"RAM   {gib(mem.total_bytes)} total, {gib(mem.available_bytes)} available")
    for disk in facts.disks:
        where = "" if disk.measured_at == disk.path else f" (measured at {disk.measured_at})"
        out.print(
            f"Disk  {disk.path}: {gib(disk.free_bytes)} free of {gib(disk.total_bytes)}{where}"
        )
    if gpu.usable:
        out.print(f"GPU   {gpu.message}")
    else:
        emit("GPU   ", ("NO USABLE GPU: ", "bold yellow"), gpu.message)
    if gpu.gpus:
        table = Table("#", "name", "memory", "free", "cc", "arch", "MIG", "NVLink", "PCI", "UUID")
        for g in gpu.gpus:
            table.add_row(
                str(g.index),
                g.name,
                gib(g.memory_total_bytes),
                gib(g.memory_free_bytes),
                format_cc(g.compute_capability),
                g.architecture,
                g.mig_mode,
                str(g.nvlink_active_links),
                g.pci_bus_id,
                g.uuid,
            )
        out.print(table)
    if len(gpu.links) > 1:
        topo = Table(
            "", *[f"GPU{i}" for i in range(len(gpu.links))], title="topology (NV = NVLink)"
        )
        for i, row in enumerate(gpu.links):
            topo.add_row(f"GPU{i}", *row)
        out.print(topo)
    for warning in gpu.warnings:
        out.print(f"      warning: {warning}")


def render_profiles(profiles: dict[str, Profile]) -> None:
    table = Table("profile", "pref", "matches", "engine")
    for p in sorted(profiles.values(), key=lambda p: -p.preference):
        gpu, cpu = p.match.gpu, p.match.cpu
        if gpu is not None:
            count = f"{gpu.min_count_per_node}" + (
                f"-{gpu.max_count_per_node}"
                if gpu.max_count_per_node != gpu.min_count_per_node
                else ""
            )
            matches = (
                f"{count}x GPU /{'|'.join(gpu.name_patterns)}/ >= {gpu.min_memory_gib:g} GiB, "
                f"cc >= {format_cc(gpu.min_compute_capability)}"
                + (", NVLink" if gpu.require_nvlink else "")
                + f", nodes {gpu.nodes.min}-{gpu.nodes.max}"
            )
        else:
            assert cpu is not None
            matches = f"CPU {'/'.join(cpu.architectures)}, >= {cpu.min_physical_cores} cores, >= {cpu.min_ram_gib:g} GiB RAM"
        table.add_row(p.name, str(p.preference), matches, _engine_summary(p))
    out.print(table)


def _engine_summary(p: Profile) -> str:
    e = p.engine
    if isinstance(e, VllmEngine):
        return (
            f"vLLM tp={e.tensor_parallel_size} pp={e.pipeline_parallel_size} "
            f"ctx={e.max_model_len} mem={e.gpu_memory_utilization:g} quant={','.join(e.quantization)}"
        )
    assert isinstance(e, LlamaCppEngine)
    return f"llama.cpp threads={e.threads} ctx={e.context_length} quant={','.join(e.quantization)}"


def render_plan(plan: Plan, *, forced: bool, preflights: Sequence[Preflight] = ()) -> None:
    sel = plan.selection
    emit(("Evidence", "bold"), f" ({plan.facts_source})")
    for line in sel.evidence:
        out.print(f"  {line}")
    how = "chosen automatically" if sel.mode == "auto" else "requested with --profile"
    out.print()
    emit((f"Profile: {sel.profile.name}", "bold"), f" ({how}) - {sel.profile.title}")
    for c in sel.candidates:
        if c.profile == sel.profile.name:
            mark = ("CHOSEN  ", "bold green" if c.matches else "bold yellow")
        else:
            mark = ("MATCHES ", "green") if c.matches else ("REJECTED", "red")
        emit("  ", mark, f" {c.profile} (preference {c.preference})")
        for reason in c.reasons:
            out.print(f"             {reason}")
    if sel.gpu_notice:
        out.print()
        emit(("!! ", "bold yellow"), (sel.gpu_notice, "bold"))
    for warning in sel.warnings:
        emit(("warning: ", "yellow"), warning)
    if preflights:
        render_preflights(preflights, forced=forced)
    if plan.model is None:
        out.print(
            "\nNo --model given: pass a Hugging Face directory or a GGUF file for the fit report."
        )
        return
    m = plan.model
    out.print()
    emit(
        ("Model ", "bold"),
        f"{m.name} ({m.format}, {m.model_type}): {m.parameter_count / 1e9:.2f}B parameters "
        f"({m.parameter_count_source}), {m.num_layers} layers, {m.num_attention_heads} heads, "
        f"{m.num_kv_heads} KV heads x {m.head_dim}, stored as {m.checkpoint_dtype}"
        + (f", quantised {m.quantization}" if m.quantization else ""),
    )
    for assumption in m.assumptions:
        out.print(f"  assumption: {assumption}")
    if plan.fit is not None:
        _render_fit(plan.fit, forced)
    suffix = "" if plan.fits else " (what would run if forced)"
    for cmd in plan.commands:
        env = " ".join(f"{k}={v}" for k, v in sorted(cmd.env.items()))
        out.print()
        role = cmd.role if cmd.role == "single" else f"{cmd.role}, node rank {cmd.rank}"
        emit(("Engine command", "bold"), f" on {cmd.host} ({role}){suffix}:")
        out.print(f"  env {env} \\\n    {shlex.join(cmd.argv)}", soft_wrap=True)


_PREFLIGHT_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


def render_preflights(rows: Sequence[Preflight], *, forced: bool) -> None:
    """One line per check and host: the verdict as a word, what was found and expected, and
    (unless it passed) what to do."""
    out.print()
    emit(("Preflights", "bold"), " (checked before a deploy changes any host):")
    for r in rows:
        word = "FAIL (forced)" if r.failed and forced and r.forceable else r.status.upper()
        emit("  ", (f"{word:<5}", _PREFLIGHT_STYLE[r.status]), f" {r.host} {r.name}: {r.found}"
             f" (expected {r.expected})")  # fmt: skip
        if r.action and r.status != "pass":
            out.print(f"        what to do: {r.action}")


def _render_fit(fit: FitReport, forced: bool) -> None:
    est = fit.estimate
    out.print()
    layout = f" {fit.layout.describe()}" if fit.layout is not None else ""
    emit(("Fit", "bold"), f" under {fit.profile}:{layout}")
    for note in fit.notes:
        out.print(f"  note: {note}")
    if est is not None:
        _render_estimate(
            est, "per GPU" if fit.layout and fit.layout.device == "gpu" else "per host"
        )
    for problem in fit.problems:
        emit(("  problem: ", "red"), problem)
    if fit.fits:
        verdict = ("FITS", "bold green")
    else:
        verdict = (
            ("DOES NOT FIT (forced)", "bold yellow") if forced else ("DOES NOT FIT", "bold red")
        )
    emit("  verdict: ", verdict)
    if not fit.fits:
        if fit.alternatives:
            emit(("  Would fit instead:", "bold"))
            for alt in fit.alternatives:
                e = alt.estimate
                out.print(
                    f"    - {alt.what}: {alt.detail}; needs {gib(e.required_per_device)} of "
                    f"{gib(e.budget_per_device)} per device at context {e.context}"
                )
        else:
            out.print("  Nothing among the profiles and quantisations would fit this model.")


def _render_estimate(est: Estimate, unit: str) -> None:
    kib = est.kv_bytes_per_token / 1024
    out.print(
        f"  precision {est.precision}, context {est.context}, {est.devices} device(s), {unit}:"
    )
    out.print(
        f"    weights          {gib(est.weights_per_device):>12}   (total {gib(est.weights_bytes)})"
    )
    out.print(
        f"    KV cache         {gib(est.kv_per_device):>12}   ({kib:g} KiB/token before sharding)"
    )
    out.print(f"    engine overhead  {gib(est.overhead_per_device):>12}")
    out.print(
        f"    needed           {gib(est.required_per_device):>12}   of {gib(est.budget_per_device)} budget"
    )
    if est.max_context == 0:
        out.print("  the weights and engine overhead alone exceed the budget: no context fits")
    else:
        out.print(
            f"  largest context that fits: {est.max_context}; "
            f"full-context sequences at once: {est.sequences_at_context}"
        )
