"""A bundle payload's models as shown: its base and adapters as inventory rows, and what an
adapter-only bundle reuses.

``payload_inventory`` turns a payload (read from a bundle's manifest or from a
host's copy of it) into the plain inputs of ``appliance.compliance.inventory``
and checks each adapter's record under the site policy, with the base model
identified as the deploy's compliance gate identifies it (name, Hub repo,
revision, digest of its weight files, carried or reused). ``reuse_summary``
says what an adapter-only bundle takes from the release in place: the base
bundle's name and version, the model and its digest, the files and bytes
reused against those carried. Pure: no IO; nothing here verifies a signature
(the caller says whether what it read was verified).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.bundle.format import FileRecord
from appliance.bundle.payload import AdapterEntry, Payload, model_identity
from appliance.compliance.inventory import (
    AdapterInput,
    BaseModelInput,
    DatasetRow,
    ModelRow,
    inventory_rows,
)
from appliance.compliance.policy import DEFAULT_POLICY, SitePolicy


def base_input(payload: Payload, records: Iterable[FileRecord]) -> BaseModelInput | None:
    """The payload's model as the inventory and the compliance checks see it."""
    model = payload.model
    if model is None:
        return None
    identity = model_identity(payload, ((r.path, r.sha256) for r in records))
    assert identity is not None  # the payload has a model
    src = model.source
    origin = src.repo_id or src.original_path or ""
    commit = identity.revision
    return BaseModelInput(
        name=model.name,
        licence=model.licence,
        origin=f"{model.format} from {src.kind} {origin}".rstrip()
        + (f" @ {commit}" if commit else ""),
        repo_id=identity.repo_id,
        revision=commit,
        digest=identity.digest,
    )


def _summary_notes(adapter: AdapterEntry) -> tuple[str, ...]:
    summary = adapter.provenance.training_summary
    if summary is None:
        return ()
    private = ", ".join(summary.private_datasets) or "none listed"
    return (
        f"training content summary (short form): size {summary.training_data_size},"
        f" modalities {', '.join(summary.modalities)}, private datasets: {private}",
        f"copyright opt-outs: {summary.copyright_opt_out_measures}",
        f"illegal content: {summary.illegal_content_measures}",
    )


def adapter_inputs(payload: Payload) -> tuple[AdapterInput, ...]:
    """Each adapter's record and what its provenance declares, in the payload's order."""
    return tuple(_adapter_input(a) for a in payload.adapters)


def _adapter_input(adapter: AdapterEntry) -> AdapterInput:
    prov = adapter.provenance
    revision = f" @ {prov.base_model_revision}" if prov.base_model_revision else ""
    summary = prov.training_summary
    return AdapterInput(
        name=adapter.name,
        record=adapter.record,
        licence=prov.licence,
        datasets=tuple(DatasetRow(d.name, d.licence, d.records) for d in prov.datasets),
        rank=prov.rank,
        alpha=prov.alpha,
        trained_on=prov.base_model + revision,
        provider=None if summary is None else summary.provider,
        notes=_summary_notes(adapter),
    )


def payload_inventory(
    payload: Payload, records: Sequence[FileRecord], policy: SitePolicy | None = None
) -> tuple[ModelRow, ...]:
    """The base's row, then each adapter's, its record checked under ``policy`` (default:
    ``DEFAULT_POLICY``)."""
    return inventory_rows(
        base_input(payload, records), adapter_inputs(payload), policy or DEFAULT_POLICY
    )


@dataclass(frozen=True)
class ReuseSummary:
    """What an adapter-only bundle takes from the release in place, against what it carries."""

    bundle: str
    version: int
    model: str
    model_digest: str
    reused_files: int
    reused_bytes: int
    carried_files: int
    carried_bytes: int

    def lines(self) -> list[str]:
        return [
            f"adapter-only: reuses bundle {self.bundle} version {self.version}'s model"
            f" {self.model} (weights digest {self.model_digest})",
            f"  reused from the release in place (checked by digest on the host):"
            f" {self.reused_files} files, {self.reused_bytes} bytes;"
            f" carried: {self.carried_files} files, {self.carried_bytes} bytes",
        ]


def reuse_summary(payload: Payload, records: Sequence[FileRecord]) -> ReuseSummary | None:
    """For an adapter-only bundle, its base and the files reused vs carried; else None."""
    reuse = payload.reuses
    if reuse is None:
        return None
    return ReuseSummary(
        bundle=reuse.bundle,
        version=reuse.version,
        model=reuse.model,
        model_digest=reuse.model_digest,
        reused_files=len(reuse.files),
        reused_bytes=sum(f.length for f in reuse.files),
        carried_files=len(records),
        carried_bytes=sum(r.length for r in records),
    )
