"""A bundle's LoRA adapters before any host changes: what the plan checks and what the site allows.

- ``model_identity``: the bundle's base model as the adapter checks compare it (name,
  hub repository and revision, the digest of its weights over carried and reused files).
- ``adapter_files``: each adapter of the verified bundle, as ``plan.adapters`` reads it
  from the verified copy (``files/adapters/<name>``) with what its provenance declares.
- ``compliance``: each adapter's transparency record checked against the site policy
  (``appliance.compliance``); ``compliance_gate`` yields a warning per finding the policy
  warns about and raises ``ComplianceRefusedError`` (exit 3) listing every refusal.
Pure over the verified bundle: nothing here reaches a host.
"""

from __future__ import annotations

from collections.abc import Generator

from appliance.bundle.format import FILES_DIR
from appliance.bundle.payload import model_identity as payload_model_identity
from appliance.bundle.site.verify import VerifiedBundle
from appliance.compliance.findings import (
    BaseIdentity,
    ComplianceRefusedError,
    Decision,
    check_record,
    decide,
    refusals,
)
from appliance.compliance.policy import DEFAULT_POLICY, SitePolicy
from appliance.events import Event, Warned
from appliance.plan.adapters import AdapterFiles


def model_identity(verified: VerifiedBundle) -> BaseIdentity:
    """The verified bundle's model as the checks identify it (``payload.model_identity``)."""
    identity = payload_model_identity(
        verified.payload, ((r.path, r.sha256) for r in verified.records)
    )
    if identity is None:
        raise ValueError("the bundle carries no model")
    return identity


def adapter_files(verified: VerifiedBundle) -> tuple[AdapterFiles, ...]:
    return tuple(
        AdapterFiles(
            name=a.name,
            directory=verified.directory / FILES_DIR / a.path,
            declared_base=a.provenance.base_model,
            declared_revision=a.provenance.base_model_revision,
            declared_base_digest=a.provenance.base_model_digest,
        )
        for a in verified.payload.adapters
    )


def compliance(verified: VerifiedBundle, policy: SitePolicy | None) -> tuple[Decision, ...]:
    """Every adapter's findings and what the site policy does with each (no adapters: none)."""
    policy = policy or DEFAULT_POLICY
    records = ((r.path, r.sha256) for r in verified.records)
    base = payload_model_identity(verified.payload, records) or BaseIdentity(name="none")
    decisions: list[Decision] = []
    for adapter in verified.payload.adapters:
        findings = check_record(adapter.name, adapter.record, base, policy)
        decisions += decide(findings, policy)
    return tuple(decisions)


def compliance_gate(
    verified: VerifiedBundle, policy: SitePolicy | None, operation: str = "deploy"
) -> Generator[Event, None, tuple[Decision, ...]]:
    """Warn about what the policy warns about; refuse (exit 3) with every refusal listed."""
    decisions = compliance(verified, policy)
    refused = refusals(decisions)
    if refused:
        raise ComplianceRefusedError.from_decisions(refused)
    for decision in decisions:
        if decision.action == "warn":
            f = decision.finding
            yield Warned(operation, f"adapter {f.subject}: {f.code}: {f.message}")
    return decisions
