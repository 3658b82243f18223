"""Compliance checks of a transparency record against the bundle's model and the site policy.

``check_record`` reads one adapter's record (or its absence) and returns its findings,
each with a code (``appliance.compliance.codes``), a severity, a message that says what
was found and what was expected (naming the dataset or source), and a hint that says
what to do. ``decide`` turns findings into actions with the site policy: by default an
``error`` is refused, a ``warning`` warned about, an ``info`` ignored; the policy's
``severity`` overrides that per code, and ``allowed_licences`` turns the licence
findings of those licences into ignore. ``ComplianceRefusedError`` (exit 3, like the
preflights) lists every refusal.

The checks read what the provider declared; they do not verify it and they are not
legal advice. "Not stated" is always a finding, never read as "no". The base model's
digest is not compared here (the plan-time adapter checks do that);
``BaseIdentity.digest`` is carried for display. Pure: no IO.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.compliance.codes import LICENCE_CODES, FindingCode
from appliance.compliance.licences import LicenceInfo, canonical_id, classify_licence
from appliance.compliance.policy import DOC, Action, IntendedUse, SitePolicy
from appliance.compliance.record import TransparencyRecord
from appliance.errors import DoesNotFitError

Severity = Literal["info", "warning", "error"]

DEFAULT_ACTIONS: dict[Severity, Action] = {"error": "refuse", "warning": "warn", "info": "ignore"}

_HEX = re.compile(r"^[0-9a-f]{7,64}$")


@dataclass(frozen=True)
class BaseIdentity:
    """The bundle's model: its directory name, Hub repo id and revision when known, the
    digest of its weight files (``bundle.payload.weights_digest``; shown here, compared by
    the plan's adapter checks). One identity for the compliance checks and ``plan.adapters``."""

    name: str
    repo_id: str | None = None
    revision: str | None = None
    digest: str | None = None

    def describe(self) -> str:
        parts = [f"'{self.name}'"]
        if self.repo_id is not None:
            parts.append(f"Hub repo {self.repo_id}")
        if self.revision is not None:
            parts.append(f"revision {self.revision}")
        if self.digest is not None:
            parts.append(f"files {self.digest[:23]}")
        return parts[0] if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"


@dataclass(frozen=True)
class Finding:
    """One thing the checks found in ``subject``'s record (``subject``: the adapter's name).
    ``licence``: for licence findings, the licence as the table names it (else as stated)."""

    code: FindingCode
    subject: str
    severity: Severity
    message: str
    hint: str
    licence: str | None = None


@dataclass(frozen=True)
class Decision:
    """What the site does about one finding."""

    finding: Finding
    action: Action


class ComplianceRefusedError(DoesNotFitError):
    """The site policy refuses one or more compliance findings (exit 3)."""

    @classmethod
    def from_decisions(cls, decisions: Iterable[Decision]) -> ComplianceRefusedError:
        refused = refusals(decisions)
        if not refused:
            raise ValueError("no decision refuses: nothing to raise")
        lines = [f"the site policy refuses {len(refused)} compliance finding(s):"]
        for d in refused:
            f = d.finding
            lines.append(f"  - {f.subject}: {f.code}: {f.message}")
            lines.append(f"    what to do: {f.hint}")
        codes = ", ".join(dict.fromkeys(d.finding.code for d in refused))
        return cls(
            "\n".join(lines),
            hint=(
                "Fix the transparency record (the adapter's model card) and build the bundle"
                " again, or, if the site accepts what was found, change the site policy: the"
                f" action per code under `severity` (codes: {codes}), `allowed_licences`, or"
                f" `intended_use` ({DOC})."
            ),
        )


def refusals(decisions: Iterable[Decision]) -> tuple[Decision, ...]:
    """The decisions whose action is refuse, in order."""
    return tuple(d for d in decisions if d.action == "refuse")


def decide(findings: Iterable[Finding], policy: SitePolicy) -> tuple[Decision, ...]:
    """One decision per finding: ignore for a licence finding of an allowed licence, else the
    policy's action for the code, else the default for the finding's severity."""
    allowed = {_licence_key(x) for x in policy.allowed_licences}
    decisions: list[Decision] = []
    for f in findings:
        if f.code in LICENCE_CODES and f.licence is not None and _licence_key(f.licence) in allowed:
            action: Action = "ignore"
        else:
            action = policy.severity.get(f.code, DEFAULT_ACTIONS[f.severity])
        decisions.append(Decision(f, action))
    return tuple(decisions)


def _licence_key(licence: str) -> str:
    return (canonical_id(licence) or licence).casefold()


def check_record(
    subject: str, record: TransparencyRecord | None, base: BaseIdentity, policy: SitePolicy
) -> tuple[Finding, ...]:
    """Every finding of ``subject``'s record against the bundle's model ``base`` and ``policy``."""
    if record is None:
        return (
            Finding(
                "record-missing",
                subject,
                "error",
                f"adapter '{subject}' carries no transparency record: its provider, training"
                " data and licences are unknown",
                "Give the adapter a model card with the EU AI Act public summary of training"
                " content (docs/compliance.md) and build the bundle again.",
            ),
        )
    found: list[Finding] = []
    found += _base_model(subject, record, base)
    found += _licences(subject, record, policy.intended_use)
    found += _processing(subject, record, policy)
    found += _unstated_fields(subject, record)
    return tuple(found)


# --- base model -----------------------------------------------------------------------


def _base_model(subject: str, record: TransparencyRecord, base: BaseIdentity) -> list[Finding]:
    dep = record.base_model
    if dep is None:
        return [
            Finding(
                "base-model-not-stated",
                subject,
                "warning",
                "the record names no base model (1.2 model dependencies); expected the"
                f" bundle's model {base.describe()}",
                "Name the base model (`base_model` in the card's front matter) and its revision.",
            )
        ]
    said = f"'{dep.name}'" + (f" revision {dep.revision}" if dep.revision else "")
    if not _same_model(dep.name, base):
        return [
            Finding(
                "base-model-mismatch",
                subject,
                "error",
                f"the record says the adapter was trained on {said}; the bundle's model is"
                f" {base.describe()}",
                "Bundle the adapter with the model it was trained on, or use an adapter"
                " trained on this bundle's model.",
            )
        ]
    if dep.revision and base.revision and not _same_revision(dep.revision, base.revision):
        return [
            Finding(
                "base-model-mismatch",
                subject,
                "error",
                f"the record says the adapter was trained on {said}; the bundle carries"
                f" revision {base.revision} of that model ({base.describe()})",
                "Bundle the revision the adapter was trained on, or an adapter trained on this"
                " revision.",
            )
        ]
    return []


def _same_model(name: str, base: BaseIdentity) -> bool:
    said = name.strip().casefold()
    if base.repo_id is not None:
        return said == base.repo_id.casefold() or said == base.name.casefold()
    return said == base.name.casefold() or said.rsplit("/", 1)[-1] == base.name.casefold()


def _same_revision(a: str, b: str) -> bool:
    a, b = a.strip().casefold(), b.strip().casefold()
    if a == b:
        return True
    # An abbreviated commit (at least 7 hex digits) names the commit it begins.
    return bool(_HEX.match(a) and _HEX.match(b)) and (a.startswith(b) or b.startswith(a))


# --- licences -------------------------------------------------------------------------------


def _licences(subject: str, record: TransparencyRecord, use: IntendedUse) -> list[Finding]:
    stated: list[tuple[str, str | None]] = [("the adapter itself", record.licence)]
    stated += [
        (f"public dataset '{d.name}' (2.1)", d.licence) for d in record.sources.public_datasets
    ]
    stated += [
        (f"private source '{s.source}' (2.2.2)", s.licence)
        for s in record.sources.private_third_party
    ]
    found: list[Finding] = []
    for where, licence in stated:
        if licence is None:
            found.append(_not_stated(subject, where, use))
            continue
        info = classify_licence(licence)
        if not info.is_spdx:
            found.append(_not_spdx(subject, where, info, use))
        severity = _class_severity(info, use)
        if severity is not None:
            found.append(_not_permissive(subject, where, info, use, severity))
    return found


def _unknown_severity(use: IntendedUse) -> Severity:
    # Unknown terms cannot be relied on commercially; elsewhere they are to be read.
    return "error" if use == "commercial" else "warning"


def _not_stated(subject: str, where: str, use: IntendedUse) -> Finding:
    return Finding(
        "licence-not-stated",
        subject,
        _unknown_severity(use),
        f"{where}: no licence stated; expected an SPDX licence id (intended use: {use})",
        "State the licence in the model card (an SPDX id such as Apache-2.0 or CC-BY-4.0),"
        " or do not use this data.",
    )


def _not_spdx(subject: str, where: str, info: LicenceInfo, use: IntendedUse) -> Finding:
    if info.licence_class == "unknown":
        return Finding(
            "licence-not-spdx",
            subject,
            _unknown_severity(use),
            f"{where}: licence '{info.stated}' is not an SPDX id appliance knows and its terms"
            f" could not be classified; expected an SPDX id (intended use: {use})",
            "State the licence as its SPDX id (or a LicenseRef-<name>) in the model card; once"
            " the site has read the licence and accepts it, list that id under"
            " `allowed_licences` in the site policy, or set `severity: {licence-not-spdx: warn}`.",
            licence=info.shown,
        )
    return Finding(
        "licence-not-spdx",
        subject,
        "warning",
        f"{where}: licence '{info.stated}' is not an SPDX id ({info.reason});"
        f" read as {info.licence_class}",
        f"State the licence as its SPDX id{f' ({info.spdx})' if info.spdx else ''} in the"
        " model card.",
        licence=info.shown,
    )


def _class_severity(info: LicenceInfo, use: IntendedUse) -> Severity | None:
    """How far the licence's class is from what the site declared; None: nothing to say."""
    cls = info.licence_class
    if cls in ("permissive", "unknown"):
        return None  # unknown is reported as licence-not-spdx
    if cls == "share-alike":
        return "warning" if use == "commercial" else "info"
    if cls == "no-derivatives":
        return "warning"
    if cls == "non-commercial":
        if use == "commercial":
            return "error"
        return "warning" if use == "non-commercial" and info.research_only else "info"
    return "error" if use == "commercial" else "warning"  # restricted


_CLASS_MEANS = {
    "share-alike": "what is derived from it and distributed must carry the same licence",
    "no-derivatives": "changed versions may not be distributed (an adapter trained on it may"
    " be one)",
    "non-commercial": "commercial use is not granted",
    "restricted": "its use is tied to conditions someone must read: use restrictions, an"
    " acceptable-use policy or reserved rights",
}


def _not_permissive(
    subject: str, where: str, info: LicenceInfo, use: IntendedUse, severity: Severity
) -> Finding:
    cls = info.licence_class
    if cls == "non-commercial" and info.research_only:
        means = "it grants research/academic/educational use only"
    else:
        means = _CLASS_MEANS[cls]
    verdict = {
        "error": "which does not grant this site's use",
        "warning": "which this site must check against its use",
        "info": "which covers this site's use",
    }[severity]
    allow = (
        f"list '{info.spdx}' under `allowed_licences`"
        if info.spdx is not None
        else "set `severity: {licence-not-permissive: warn}`"
    )
    return Finding(
        "licence-not-permissive",
        subject,
        severity,
        f"{where}: licence '{info.stated}' is {cls} ({means}); the site declared"
        f" `intended_use: {use}`, {verdict}",
        "Use an adapter trained without this data, or declare the site's real use in the"
        f" policy's `intended_use`; once the licence has been read and accepted, {allow}"
        " in the site policy.",
        licence=info.shown,
    )


# --- data processing (section 3) and evaluation ---------------------------------------------


def _processing(subject: str, record: TransparencyRecord, policy: SitePolicy) -> list[Finding]:
    found: list[Finding] = []
    if not record.adapter.evaluation:
        found.append(
            Finding(
                "evaluation-missing",
                subject,
                "error" if policy.require_evaluation else "warning",
                "the record gives no evaluation results; expected at least one task or"
                " benchmark with its result"
                + (
                    " (the site policy sets `require_evaluation: true`)"
                    if policy.require_evaluation
                    else ""
                ),
                "Add the adapter's evaluation results to its model card.",
            )
        )
    p = record.processing
    missing: list[tuple[FindingCode, str | None, str]] = [
        ("pii-screening-not-stated", p.pii_screening, "how personal data was screened"),
        ("tdm-measures-not-stated", p.tdm_reservations, "3.1 measures to respect"
         " text-and-data-mining reservations"),
        ("illegal-content-measures-not-stated", p.illegal_content, "3.2 measures to remove"
         " illegal content"),
    ]  # fmt: skip
    for code, value, what in missing:
        if value is None:
            found.append(
                Finding(
                    code,
                    subject,
                    "warning",
                    f"the record does not state {what}; expected the provider's answer",
                    f"Ask the provider and add {what} to the model card.",
                )
            )
    return found


# --- template answers left unstated --------------------------------------------------------


def _unstated_fields(subject: str, record: TransparencyRecord) -> list[Finding]:
    data, s = record.training_data, record.sources
    unstated = [
        f"the record does not state 1.3 the size of the training data ({m}); expected one"
        " of the template's size buckets"
        for m in data.modalities
        if m not in data.size_buckets
    ]
    answers: Sequence[tuple[bool | None, bool, str]] = (
        (s.public_datasets_used, bool(s.public_datasets), "2.1 publicly available datasets"),
        (s.commercially_licensed.used, False, "2.2.1 commercially licensed data"),
        (s.private_third_party_used, bool(s.private_third_party), "2.2.2 private third-party data"),
        (s.crawled.used, False, "2.3 crawled data"),
        (s.user_data.used, False, "2.4 user data"),
        (s.synthetic.used, False, "2.5 synthetic data"),
        (s.other.used, False, "2.6 other sources"),
    )
    unstated += [
        f"the record does not answer whether {what} were used; expected yes or no"
        for used, listed, what in answers
        if used is None and not listed
    ]
    for used, listed, what in answers[:3:2]:  # 2.1 and 2.2.2 list what they answer yes to
        if used and not listed:
            unstated.append(f"the record answers yes to {what} but lists none; expected the list")
    found = [
        Finding(
            "field-not-stated",
            subject,
            "warning",
            message,
            "Complete this answer in the model card's public summary of training content.",
        )
        for message in unstated
    ]
    if s.crawled.used and not s.crawled.domains:
        found.append(
            Finding(
                "crawled-without-domains",
                subject,
                "warning",
                "2.3 says crawled data was used but names no domains; expected the most"
                " relevant domain names crawled",
                "List the crawled domains (2.3) in the model card.",
            )
        )
    return found
