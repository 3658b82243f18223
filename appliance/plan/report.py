"""The plan report: evidence -> chosen profile -> fit -> engine command lines.

``build_plan`` is a plain function over plain data (profiles, host facts, an
optional model); front ends render ``Plan`` or its stable JSON form
(``plan_to_json``, golden-tested, ``PLAN_SCHEMA_VERSION``). A plan that does
not fit is still a complete report: the caller decides the exit code
(``Plan.fits``; exit 3 unless forced).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from appliance.detect.facts import HostFacts
from appliance.model.info import ModelInfo
from appliance.plan.engine_args import LoraModules, NodeCommand, engine_commands
from appliance.plan.fit import GIB, Estimate, FitReport, fit_report
from appliance.plan.group import GroupNetwork
from appliance.plan.profiles import Profile
from appliance.plan.selection import Selection, select_profile

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Plan:
    facts_source: str
    hosts: tuple[HostFacts, ...]
    selection: Selection
    model: ModelInfo | None
    fit: FitReport | None
    commands: tuple[NodeCommand, ...]

    @property
    def fits(self) -> bool:
        return self.fit is None or self.fit.fits

    def verdict(self, forced: bool = False) -> Literal["ok", "does-not-fit", "forced"]:
        if self.fits:
            return "ok"
        return "forced" if forced else "does-not-fit"


def build_plan(
    profiles: dict[str, Profile],
    hosts: tuple[HostFacts, ...],
    *,
    facts_source: str,
    requested: str | Profile = "auto",
    model: ModelInfo | None = None,
    context: int | None = None,
    lora: LoraModules | None = None,
    group: GroupNetwork | None = None,
) -> Plan:
    selection = select_profile(profiles, hosts, requested)
    profile = selection.profile
    fit = None
    commands: tuple[NodeCommand, ...] = ()
    if model is not None:
        others = tuple(p for p in profiles.values() if p.name != profile.name)
        fit = fit_report(model, profile, hosts, others=others, context=context)
        if fit.layout is not None and fit.estimate is not None:
            commands = engine_commands(
                profile,
                fit.layout,
                model,
                tuple(h.hostname for h in hosts),
                context=fit.estimate.context,
                quantization=fit.quantization,
                lora=lora,
                group=group,
            )
    return Plan(facts_source, hosts, selection, model, fit, commands)


def _estimate_json(est: Estimate) -> dict[str, Any]:
    data = asdict(est)
    data["fits"] = est.fits
    data["required_per_device_gib"] = round(est.required_per_device / GIB, 2)
    data["budget_per_device_gib"] = round(est.budget_per_device / GIB, 2)
    return data


def plan_to_json(plan: Plan, *, forced: bool = False) -> dict[str, Any]:
    sel = plan.selection
    fit = plan.fit
    return {
        "schema_version": PLAN_SCHEMA_VERSION,
        "verdict": plan.verdict(forced),
        "facts": {"source": plan.facts_source, "hosts": [h.hostname for h in plan.hosts]},
        "evidence": list(sel.evidence),
        "profile": {
            "name": sel.profile.name,
            "mode": sel.mode,
            "matches_hardware": sel.matches_hardware,
            "engine": sel.profile.engine.kind,
        },
        "gpu_notice": sel.gpu_notice,
        "warnings": list(sel.warnings),
        "candidates": [asdict(c) for c in sel.candidates],
        "model": None if plan.model is None else asdict(plan.model),
        "fit": None
        if fit is None
        else {
            "fits": fit.fits,
            "layout": None if fit.layout is None else asdict(fit.layout),
            "quantization": fit.quantization,
            "estimate": None if fit.estimate is None else _estimate_json(fit.estimate),
            "problems": list(fit.problems),
            "notes": list(fit.notes),
            "alternatives": [
                {"what": a.what, "detail": a.detail, "estimate": _estimate_json(a.estimate)}
                for a in fit.alternatives
            ],
        },
        "engine": [asdict(c) for c in plan.commands],
    }
