"""The reference model-server units: every vLLM profile x reference model, from recorded facts.

Each setup is a hardware profile on the recorded facts of a machine it matches (the
h100-cluster once on one node and once on two, the cpu-vllm-group rehearsal on two CPU
hosts); each reference model is a config.json fixture with the real model's
hyper-parameters. ``reference_matrix()`` plans every pair with ``build_plan`` (a two-node
setup with its group's network, ``GROUPS``) and renders with ``render_model_unit``, as a
deploy would for release 1, the unit of every node: the one that runs vLLM's server (single
node, or a group's head) and each headless worker of a group.
A pair that does not fit gets no unit; ``index`` says why (the deploy refuses it, exit 3).

Used by the golden test (tests/unit/deploy/test_reference_units.py) and by the check of
the command lines against vLLM's own parser (tests/integration/test_vllm_argv.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.deploy.render import model_unit_variables, render_model_unit
from appliance.detect.facts_file import load_facts
from appliance.model.info import load_model_info
from appliance.plan.engine_args import LoraModules, NodeCommand, adapter_target_path
from appliance.plan.group import GroupNetwork
from appliance.plan.profiles import load_profiles
from appliance.plan.report import build_plan

ROOT = Path(__file__).resolve().parents[3]
FACTS = ROOT / "tests/fixtures/facts"
MODELS = ROOT / "tests/fixtures/models"
GOLDEN = ROOT / "tests/golden/units"

# setup name -> (profile, recorded facts)
SETUPS: dict[str, tuple[str, str]] = {
    "a100-single": ("a100-single", "a100-80gb"),
    "rtx4090": ("rtx4090", "rtx4090"),
    "h100-cluster": ("h100-cluster", "h100x8"),
    "h100-cluster-2nodes": ("h100-cluster", "h100x8-2nodes"),
    "cpu-vllm": ("cpu-vllm", "cpu-avx512"),
    "cpu-vllm-group": ("cpu-vllm-group", "cpu-avx2-2nodes"),
}
# The multi-node setups' groups, as the site plan hands them over from an inventory.
GROUPS: dict[str, GroupNetwork] = {
    "h100-cluster-2nodes": GroupNetwork(
        name="h100-pair", hosts=("dgx-h100-a", "dgx-h100-b"), interface="ens1f0",
        addresses=("10.10.0.11", "10.10.0.12"), master_port=29501, port_range=(40000, 40999),
    ),
    "cpu-vllm-group": GroupNetwork(
        name="lab-pair", hosts=("cpu-avx2-a", "cpu-avx2-b"), interface="eth0",
        addresses=("192.0.2.11", "192.0.2.12"), master_port=29501, port_range=(40000, 40999),
    ),
}  # fmt: skip
MODEL_NAMES: tuple[str, ...] = (
    "mistral-7b-instruct-v0.3",
    "mixtral-8x7b-instruct-v0.1",
    "mixtral-8x22b-instruct-v0.1",
    "devstral-small-2505",
    "apertus-70b-instruct-2509",
)
# Multi-LoRA: the same profiles serving a base model with two adapters (ranks 16 and 8, as
# plan.adapters.lora_settings sets the limits for them).
LORA_MODEL = "mistral-7b-instruct-v0.3"
LORA = LoraModules(
    adapters=(
        ("support-fr", adapter_target_path("support-fr")),
        ("legal-de", adapter_target_path("legal-de")),
    ),
    max_lora_rank=16,
    max_loras=2,
    max_cpu_loras=2,
)
LORA_SETUPS: dict[str, tuple[str, str]] = {
    "a100-single-lora": ("a100-single", "a100-80gb"),
    "cpu-vllm-lora": ("cpu-vllm", "cpu-avx512"),
}
# What the rendered units say about their bundle (fixed, so the goldens are stable).
RELEASE_VERSION = 1
BUNDLE_NAME = "reference"
CONTENT_DIGEST = "0" * 16
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class ReferenceUnit:
    setup: str
    profile: str
    facts: str
    model: str
    server: NodeCommand | None  # the command running vLLM's server; None: does not fit
    unit: str | None
    env: str | None
    reason: str | None  # why there is no unit
    workers: tuple[WorkerUnit, ...] = ()  # a group's headless workers, by node rank

    @property
    def stem(self) -> str:
        return f"{self.setup}_{self.model}"


@dataclass(frozen=True, slots=True)
class WorkerUnit:
    command: NodeCommand
    unit: str
    env: str

    def stem(self, head: ReferenceUnit) -> str:
        return f"{head.stem}.worker{self.command.rank}"


def reference_matrix() -> tuple[ReferenceUnit, ...]:
    profiles = load_profiles()
    out = [
        _reference(profiles, setup, profile, facts, model_name, None)
        for model_name in MODEL_NAMES
        for setup, (profile, facts) in SETUPS.items()
    ]
    out += [
        _reference(profiles, setup, profile, facts, LORA_MODEL, LORA)
        for setup, (profile, facts) in LORA_SETUPS.items()
    ]
    return tuple(out)


def _reference(
    profiles: dict[str, Any],
    setup: str,
    profile: str,
    facts: str,
    model_name: str,
    lora: LoraModules | None,
) -> ReferenceUnit:
    model = load_model_info(MODELS / model_name)
    plan = build_plan(
        profiles,
        load_facts(FACTS / f"{facts}.json"),
        facts_source=f"tests/fixtures/facts/{facts}.json",
        requested=profile,
        model=model,
        lora=lora,
        group=GROUPS.get(setup),
    )
    fit = plan.fit
    assert fit is not None and plan.selection.profile.name == profile
    est = fit.estimate
    if not fit.fits or not plan.commands or est is None:
        if est is None:
            reason = "; ".join(fit.problems) or "no layout"
        else:
            reason = "; ".join(fit.problems) or (
                f"does not fit: needs {est.required_per_device / GIB:.1f} GiB per "
                f"device at context {est.context} ({est.precision}, {est.devices} "
                f"device(s)), budget {est.budget_per_device / GIB:.1f} GiB"
            )
        return ReferenceUnit(setup, profile, facts, model_name, None, None, None, reason)
    (server,) = [c for c in plan.commands if c.role in ("single", "head")]
    rendered = []
    for command in plan.commands:
        variables = model_unit_variables(
            command, engine="vllm", version=RELEASE_VERSION, bundle_name=BUNDLE_NAME,
            content_digest=CONTENT_DIGEST, model_name=model.name,
            model_bytes=model.stored_weights_bytes or est.weights_bytes,
        )  # fmt: skip
        rendered.append(render_model_unit(variables))
    unit, env = rendered[0]
    workers = tuple(
        WorkerUnit(c, *files)
        for c, files in zip(plan.commands, rendered, strict=True)
        if c.role == "worker"
    )
    return ReferenceUnit(setup, profile, facts, model_name, server, unit, env, None, workers)


def index(units: tuple[ReferenceUnit, ...]) -> dict[str, Any]:
    """The golden index: every pair, its unit files or why it has none."""
    return {
        "about": (
            "Model-server units rendered for every vLLM profile x reference model "
            "(tests/unit/deploy/reference_units.py), a multi-node group's head and each of its "
            "workers; every ExecStart is checked against vLLM's own parser by "
            "tests/integration/test_vllm_argv.py; regenerate with "
            "UPDATE_GOLDENS=1 pytest tests/unit/deploy/test_reference_units.py"
        ),
        "combinations": [
            {
                "setup": u.setup,
                "profile": u.profile,
                "facts": f"tests/fixtures/facts/{u.facts}.json",
                "model": u.model,
                **(
                    {"unit": f"{u.stem}.service", "env": f"{u.stem}.env"}
                    if u.unit is not None
                    else {"unit": None, "no_unit_because": u.reason}
                ),
                **(
                    {
                        "workers": [
                            {
                                "host": w.command.host,
                                "node_rank": w.command.rank,
                                "unit": f"{w.stem(u)}.service",
                                "env": f"{w.stem(u)}.env",
                            }
                            for w in u.workers
                        ]
                    }
                    if u.workers
                    else {}
                ),
            }
            for u in units
        ],
    }
