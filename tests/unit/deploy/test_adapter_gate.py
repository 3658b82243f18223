"""The deploy's adapter gate: the bundle's base identity and each adapter's transparency
record against the site policy, before any host is read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.bundle.payload import (
    AdapterEntry,
    AdapterProvenance,
    ModelEntry,
    ModelSource,
    weights_digest,
)
from appliance.bundle.site.verify import VerifiedBundle
from appliance.compliance.card import parse_card, require_record
from appliance.compliance.findings import ComplianceRefusedError
from appliance.compliance.policy import parse_policy
from appliance.deploy.adapter_gate import compliance_gate, model_identity
from appliance.events import Warned, drain

from .test_gateway_layer import verified  # noqa: F401 - the fixture

CARD = Path(__file__).resolve().parents[2] / "fixtures/cards/complete.md"


def _with_model(bundle: VerifiedBundle) -> VerifiedBundle:
    """The fixture bundle's files/models/demo (config + safetensors) named as its model."""
    model = ModelEntry(name="demo", path="models/demo", format="hf",
                       source=ModelSource(kind="local-dir"))  # fmt: skip
    return dataclasses.replace(bundle, payload=bundle.payload.model_copy(update={"model": model}))


def _with_adapter(bundle: VerifiedBundle, card: str) -> VerifiedBundle:
    record = require_record(parse_card(card, "test card"), "test card")
    bundle = _with_model(bundle)
    assert bundle.payload.model is not None
    entry = AdapterEntry(
        name="pirate", path="adapters/pirate",
        provenance=AdapterProvenance(base_model=bundle.payload.model.name, rank=16, alpha=32,
                                     target_modules=["q_proj"], licence="Apache-2.0"),
        record=record.model_copy(update={"model": record.model.model_copy(update={
            "dependencies": (record.model.dependencies[0].model_copy(
                update={"name": bundle.payload.model.name, "revision": None}),)})}),
    )  # fmt: skip
    return dataclasses.replace(
        bundle, payload=bundle.payload.model_copy(update={"adapters": [entry]})
    )


def test_a_research_only_dataset_is_refused_on_a_commercial_site_before_any_host(
    verified: VerifiedBundle,  # noqa: F811
) -> None:
    card = CARD.read_text().replace("| CC0-1.0 |", "| for research/educational use only |")
    bundle = _with_adapter(verified, card)
    with pytest.raises(ComplianceRefusedError) as refused:
        drain(compliance_gate(bundle, None))  # the default policy: commercial use
    assert refused.value.exit_code == 3
    assert "pirate" in refused.value.message and "licence-not-permissive" in refused.value.message
    # A research site takes it; what its policy warns about arrives as events.
    research = parse_policy({"schema_version": 1, "intended_use": "research"}, source="test")
    events: list[object] = []
    decisions = drain(compliance_gate(bundle, research), events.append)
    assert not [d for d in decisions if d.action == "refuse"]
    warned = [e for e in events if isinstance(e, Warned)]
    assert len(warned) == len([d for d in decisions if d.action == "warn"])
    assert all(w.message.startswith("adapter pirate: ") for w in warned)


def test_the_identity_names_the_weights_the_adapters_were_trained_on(
    verified: VerifiedBundle,  # noqa: F811
) -> None:
    bundle = _with_model(verified)
    identity = model_identity(bundle)
    weights = next(r for r in bundle.records if r.path == "models/demo/model.safetensors")
    # the weights alone (not config.json): SHA-256 of "<sha256>  <path in the model>\n"
    assert identity.name == "demo"
    assert identity.digest == weights_digest([("model.safetensors", weights.sha256)])
