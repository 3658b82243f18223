"""What a bundle or a release serves, per model: the rows every front end shows, worded once.

``inventory_rows`` takes plain inputs (the base model's facts, each adapter's
transparency record or its absence, the site policy) and returns one
``ModelRow`` per model: the base first, then each adapter in order, with its
kind, parent, provider, licences (its own and its datasets'/sources'), data
sources (2.1 public datasets with licence and records; 2.2.1-2.6 answered
used, not used or not stated) and its findings with the site policy's action
on each. ``inventory_lines`` is the one text form of those rows: ``appliance
bundle inspect``, ``appliance models`` and the TUI's Bundle and Done steps
print its lines, so they cannot drift apart; ``inventory_json`` is their JSON form.

Invariants: pure (no IO, no bundle or deploy imports); an adapter without a
record is a row that says so, with its ``record-missing`` finding, never left
out; "not stated" is never shown as "not used"; the base model carries no
transparency record in the bundle format, so its row says so and has no findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.compliance.findings import BaseIdentity, Decision, check_record, decide
from appliance.compliance.policy import SitePolicy
from appliance.compliance.record import Answer, TransparencyRecord

NOT_STATED = "not stated"
# The template's yes/no questions of section 2 after 2.1, in its order.
ANSWER_LABELS: tuple[tuple[str, str], ...] = (
    ("2.2.1", "commercially licensed data"),
    ("2.2.2", "private third-party data"),
    ("2.3", "crawled data"),
    ("2.4", "user data"),
    ("2.5", "synthetic data"),
    ("2.6", "other sources"),
)
ACTION_WORDS = {"refuse": "REFUSE", "warn": "WARN", "ignore": "ignore"}


@dataclass(frozen=True)
class DatasetRow:
    """One 2.1 public dataset (or, for an adapter without a record, a dataset its
    provenance declares): name, licence, records (``records_note`` when not a count)."""

    name: str
    licence: str | None = None
    records: int | None = None
    records_note: str | None = None

    def describe(self) -> str:
        if self.records is not None:
            count = f"{self.records} records"
        else:
            count = f"records: {self.records_note or NOT_STATED}"
        return f"{self.name} (licence {self.licence or NOT_STATED}, {count})"


@dataclass(frozen=True)
class SourceAnswer:
    """One of 2.2.1-2.6: whether the source was used (None: not stated), what it names."""

    section: str
    label: str
    used: bool | None
    detail: str = ""  # the sources, domains or details stated

    def describe(self) -> str:
        word = {True: "used", False: "not used", None: NOT_STATED}[self.used]
        return f"{self.section} {self.label}: {word}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class BaseModelInput:
    """The base model as the bundle's payload names it (plain values, no bundle types)."""

    name: str
    licence: str | None = None
    origin: str = ""  # e.g. "hf-hub google/gemma-3-270m @ 9b0c..."
    repo_id: str | None = None
    revision: str | None = None
    digest: str | None = None  # weights_digest of its files


@dataclass(frozen=True)
class AdapterInput:
    """One adapter as the payload carries it: its record (None: none carried) and what its
    provenance declares (shown when there is no record)."""

    name: str
    record: TransparencyRecord | None
    licence: str | None = None  # provenance's licence
    datasets: tuple[DatasetRow, ...] = ()  # provenance's datasets
    rank: int | None = None
    alpha: int | None = None
    trained_on: str | None = None  # provenance's base model
    # Without a record: the provider and lines of the provenance's short training summary.
    provider: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRow:
    """One model or adapter as shown everywhere."""

    name: str
    kind: Literal["base", "adapter"]
    parent: str | None
    provider: str | None
    licences: tuple[str, ...]
    has_record: bool
    datasets: tuple[DatasetRow, ...] = ()
    answers: tuple[SourceAnswer, ...] = ()
    decisions: tuple[Decision, ...] = ()
    details: tuple[str, ...] = ()  # origin, digest, rank: what identifies it
    notes: tuple[str, ...] = ()  # without a record: what the provenance's short summary says

    @property
    def refused(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "refuse")


def base_identity(base: BaseModelInput | None) -> BaseIdentity:
    """The base as the compliance checks compare adapters with it ("none": no model)."""
    if base is None:
        return BaseIdentity(name="none")
    return BaseIdentity(base.name, base.repo_id, base.revision, base.digest)


def inventory_rows(
    base: BaseModelInput | None, adapters: Sequence[AdapterInput], policy: SitePolicy
) -> tuple[ModelRow, ...]:
    """The base's row (if there is a base), then one row per adapter, checked under ``policy``."""
    rows: list[ModelRow] = []
    identity = base_identity(base)
    if base is not None:
        details = [base.origin] if base.origin else []
        if base.digest is not None:
            details.append(f"weights digest {base.digest}")
        rows.append(
            ModelRow(
                name=base.name,
                kind="base",
                parent=None,
                provider=None,
                licences=() if base.licence is None else (base.licence,),
                has_record=False,
                details=tuple(details),
            )
        )
    parent = base.name if base is not None else None
    for adapter in adapters:
        decisions = decide(check_record(adapter.name, adapter.record, identity, policy), policy)
        rows.append(_adapter_row(adapter, parent, decisions))
    return tuple(rows)


def _adapter_row(
    adapter: AdapterInput, parent: str | None, decisions: tuple[Decision, ...]
) -> ModelRow:
    details = []
    if adapter.rank is not None:
        alpha = f" alpha={adapter.alpha}" if adapter.alpha is not None else ""
        details.append(f"LoRA r={adapter.rank}{alpha}")
    if adapter.trained_on is not None:
        details.append(f"trained on {adapter.trained_on}")
    record = adapter.record
    if record is None:
        licences = [] if adapter.licence is None else [adapter.licence]
        licences += [d.licence for d in adapter.datasets if d.licence is not None]
        return ModelRow(
            name=adapter.name,
            kind="adapter",
            parent=parent or adapter.trained_on,
            provider=adapter.provider,
            licences=tuple(dict.fromkeys(licences)),
            has_record=False,
            datasets=adapter.datasets,
            decisions=decisions,
            details=tuple(details),
            notes=adapter.notes,
        )
    if record.model.versioned_name:
        details.insert(0, record.model.versioned_name)
    s = record.sources
    datasets = tuple(
        DatasetRow(d.name, d.licence, d.records, d.records_note) for d in s.public_datasets
    )
    private = "; ".join(
        p.source + (f" (licence {p.licence})" if p.licence else "") for p in s.private_third_party
    )
    private_used = s.private_third_party_used
    if private_used is None and s.private_third_party:
        private_used = True
    answers = (
        _answer(ANSWER_LABELS[0], s.commercially_licensed),
        SourceAnswer(*ANSWER_LABELS[1], private_used, private),
        _answer(ANSWER_LABELS[2], s.crawled, ", ".join(s.crawled.domains)),
        _answer(ANSWER_LABELS[3], s.user_data),
        _answer(ANSWER_LABELS[4], s.synthetic),
        _answer(ANSWER_LABELS[5], s.other),
    )
    return ModelRow(
        name=adapter.name,
        kind="adapter",
        parent=parent or (record.base_model.name if record.base_model else adapter.trained_on),
        provider=record.provider.name,
        licences=record.licences(),
        has_record=True,
        datasets=datasets,
        answers=answers,
        decisions=decisions,
        details=tuple(details),
    )


def _answer(label: tuple[str, str], answer: Answer, detail: str = "") -> SourceAnswer:
    return SourceAnswer(label[0], label[1], answer.used, detail if answer.used else "")


# --- the one text form ------------------------------------------------------------------------


def inventory_lines(
    rows: Sequence[ModelRow], *, indent: str = "", brief: bool = False
) -> list[str]:
    """The rows as text lines: what the CLI prints and the TUI shows (one wording).
    ``brief``: each model's head line and its findings' counts only."""
    lines: list[str] = []
    for row in rows:
        lines += [indent + line for line in row_lines(row, brief=brief)]
    return lines


def head_line(row: ModelRow) -> str:
    """A model's first line: kind, name, parent, provider and licences."""
    licences = ", ".join(row.licences) or NOT_STATED
    if row.kind == "base":
        return f"base {row.name}: licence {licences}"
    parent = f" on {row.parent}" if row.parent else ""
    return f"adapter {row.name}{parent}: provider {row.provider or NOT_STATED}; licences {licences}"


def row_lines(row: ModelRow, *, brief: bool = False) -> list[str]:
    """One model's lines: its head line, then (indented) sources and findings."""
    head = head_line(row)
    if brief:
        if row.kind == "base":
            return [head]
        record = "" if row.has_record else "; transparency record: NONE"
        return [head + record, _finding_lines(row.decisions)[0]]
    if row.kind == "base":
        lines = [head, *(f"  {d}" for d in row.details)]
        lines.append(
            "  transparency record: none (the bundle format carries none for a base model)"
        )
        return lines
    lines = [head]
    if row.details:
        lines.append("  " + "; ".join(row.details))
    if not row.has_record:
        lines.append(
            "  transparency record: NONE carried (2.1-2.6 not stated; only what its provenance"
            " declares is shown)"
        )
        if row.datasets:
            lines.append(
                "  datasets its provenance declares: "
                + ", ".join(d.describe() for d in row.datasets)
            )
        lines += [f"  {note}" for note in row.notes]
    else:
        datasets = ", ".join(d.describe() for d in row.datasets) or "none listed"
        lines.append(f"  2.1 public datasets: {datasets}")
        lines += [f"  {a.describe()}" for a in row.answers]
    lines += _finding_lines(row.decisions)
    return lines


def _finding_lines(decisions: Sequence[Decision]) -> list[str]:
    if not decisions:
        return ["  findings: none"]
    acted = [d for d in decisions if d.action != "ignore"]
    ignored = [d for d in decisions if d.action == "ignore"]
    refused = sum(1 for d in acted if d.action == "refuse")
    lines = [
        f"  findings: {len(decisions)} ({refused} refused, {len(acted) - refused} warned,"
        f" {len(ignored)} ignored under the site policy)"
    ]
    lines += [f"    {ACTION_WORDS[d.action]} {d.finding.code}: {d.finding.message}" for d in acted]
    if ignored:
        codes = ", ".join(dict.fromkeys(d.finding.code for d in ignored))
        lines.append(f"    ignored: {codes}")
    return lines


def inventory_json(rows: Sequence[ModelRow]) -> list[dict[str, Any]]:
    """The rows as JSON-ready data (``--json``)."""
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "parent": r.parent,
            "provider": r.provider,
            "licences": list(r.licences),
            "has_record": r.has_record,
            "details": list(r.details),
            "notes": list(r.notes),
            "public_datasets": [
                {
                    "name": d.name,
                    "licence": d.licence,
                    "records": d.records,
                    "records_note": d.records_note,
                }
                for d in r.datasets
            ],
            "sources": [
                {"section": a.section, "label": a.label, "used": a.used, "detail": a.detail}
                for a in r.answers
            ],
            "findings": [
                {
                    "code": d.finding.code,
                    "severity": d.finding.severity,
                    "action": d.action,
                    "message": d.finding.message,
                    "hint": d.finding.hint,
                }
                for d in r.decisions
            ],
        }
        for r in rows
    ]
