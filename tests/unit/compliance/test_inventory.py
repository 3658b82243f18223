"""The inventory rows and their one text form (what inspect, models and the TUI print)."""

from __future__ import annotations

from pathlib import Path

from appliance.compliance.card import load_card
from appliance.compliance.inventory import (
    AdapterInput,
    BaseModelInput,
    DatasetRow,
    inventory_json,
    inventory_lines,
    inventory_rows,
)
from appliance.compliance.policy import DEFAULT_POLICY, SitePolicy
from appliance.compliance.record import Answer, DataSources

ROOT = Path(__file__).resolve().parents[3]
RECORD = load_card(ROOT / "tests/fixtures/cards/complete.md").record
assert RECORD is not None
BASE = BaseModelInput(
    name="gemma-3-270m",
    licence="LicenseRef-Gemma",
    origin="hf from hf-hub google/gemma-3-270m @ 9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1",
    repo_id="google/gemma-3-270m",
    revision="9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1",
    digest="ab" * 32,
)


def _policy(**data: object) -> SitePolicy:
    return SitePolicy.model_validate({"schema_version": 1, "intended_use": "commercial"} | data)


def test_rows_list_base_then_each_adapter_with_provider_licences_sources_and_findings() -> None:
    rows = inventory_rows(BASE, [AdapterInput("pirate", RECORD, rank=16, alpha=32)], DEFAULT_POLICY)
    base, pirate = rows
    assert (base.kind, base.parent, base.licences, base.decisions) == (
        "base", None, ("LicenseRef-Gemma",), ()
    )  # fmt: skip
    assert (pirate.kind, pirate.parent, pirate.provider) == (
        "adapter", "gemma-3-270m", "Example Lab GmbH"
    )  # fmt: skip
    assert pirate.licences == ("Apache-2.0", "CC-BY-SA-4.0", "CC0-1.0")
    assert [d.name for d in pirate.datasets] == ["wiki-subset", "pirate-phrases"]
    assert pirate.datasets[1].records is None
    assert pirate.datasets[1].records_note == "merged into wiki-subset"
    # trained on the bundle's model and revision: no mismatch; the share-alike dataset warns
    assert [(d.finding.code, d.action) for d in pirate.decisions] == [
        ("licence-not-permissive", "warn")
    ]
    lines = inventory_lines(rows)
    assert lines[0] == "base gemma-3-270m: licence LicenseRef-Gemma"
    assert f"  weights digest {'ab' * 32}" in lines
    assert lines[lines.index("adapter pirate on gemma-3-270m: provider Example Lab GmbH;"
                             " licences Apache-2.0, CC-BY-SA-4.0, CC0-1.0") + 1] == (
        "  lab-pirate v1.0; LoRA r=16 alpha=32"
    )  # fmt: skip
    assert (
        "  2.1 public datasets: wiki-subset (licence CC-BY-SA-4.0, 12000 records),"
        " pirate-phrases (licence CC0-1.0, records: merged into wiki-subset)"
    ) in lines
    assert "  2.3 crawled data: not used" in lines and "  2.5 synthetic data: used" in lines
    assert "  findings: 1 (0 refused, 1 warned, 0 ignored under the site policy)" in lines
    assert any(line.startswith("    WARN licence-not-permissive: public dataset 'wiki-subset'")
               for line in lines)  # fmt: skip


def test_not_stated_is_never_shown_as_not_used() -> None:
    record = RECORD.model_copy(
        update={"sources": DataSources(user_data=Answer(used=False), synthetic=Answer())}
    )
    (row,) = inventory_rows(None, [AdapterInput("x", record)], DEFAULT_POLICY)
    lines = inventory_lines([row])
    assert "  2.4 user data: not used" in lines
    assert "  2.5 synthetic data: not stated" in lines
    assert "  2.3 crawled data: not stated" in lines
    assert "  2.1 public datasets: none listed" in lines
    # without a base the parent is what the record names
    assert row.parent == "google/gemma-3-270m"


def test_an_adapter_without_a_record_is_listed_with_its_refusal_and_what_provenance_says() -> None:
    bare = AdapterInput(
        "helpdesk", None, licence="Apache-2.0",
        datasets=(DatasetRow("tickets", "LicenseRef-internal", 100),), trained_on="org/base",
    )  # fmt: skip
    rows = inventory_rows(BASE, [bare], DEFAULT_POLICY)
    row = rows[1]
    assert (row.has_record, row.provider, row.licences) == (
        False, None, ("Apache-2.0", "LicenseRef-internal")
    )  # fmt: skip
    assert [(d.finding.code, d.action) for d in row.refused] == [("record-missing", "refuse")]
    lines = inventory_lines(rows)
    assert "adapter helpdesk on gemma-3-270m: provider not stated; licences Apache-2.0," \
        " LicenseRef-internal" in lines  # fmt: skip
    assert any("transparency record: NONE carried" in line for line in lines)
    assert "  datasets its provenance declares: tickets (licence LicenseRef-internal," \
        " 100 records)" in lines  # fmt: skip
    assert "    REFUSE record-missing: adapter 'helpdesk' carries no transparency record: its" \
        " provider, training data and licences are unknown" in lines  # fmt: skip
    assert not any(line.lstrip().startswith("2.") for line in lines)  # nothing invented


def test_the_site_policy_decides_the_actions_shown() -> None:
    other_base = BaseModelInput(name="mistral-7b", repo_id="mistralai/Mistral-7B-v0.3")
    adapters = [AdapterInput("pirate", RECORD)]
    default = inventory_rows(other_base, adapters, DEFAULT_POLICY)[1]
    assert ("base-model-mismatch", "refuse") in [
        (d.finding.code, d.action) for d in default.decisions
    ]
    policy = _policy(severity={"base-model-mismatch": "warn"}, allowed_licences=["CC-BY-SA-4.0"])
    relaxed = inventory_rows(other_base, adapters, policy)[1]
    assert relaxed.refused == ()
    lines = inventory_lines([relaxed])
    assert "  findings: 2 (0 refused, 1 warned, 1 ignored under the site policy)" in lines
    assert "    ignored: licence-not-permissive" in lines
    assert any(line.startswith("    WARN base-model-mismatch:") for line in lines)


def test_brief_lines_and_json_carry_the_same_rows() -> None:
    rows = inventory_rows(BASE, [AdapterInput("pirate", RECORD), AdapterInput("bare", None)],
                          DEFAULT_POLICY)  # fmt: skip
    brief = inventory_lines(rows, indent="  ", brief=True)
    assert brief == [
        "  base gemma-3-270m: licence LicenseRef-Gemma",
        "  adapter pirate on gemma-3-270m: provider Example Lab GmbH; licences Apache-2.0,"
        " CC-BY-SA-4.0, CC0-1.0",
        "    findings: 1 (0 refused, 1 warned, 0 ignored under the site policy)",
        "  adapter bare on gemma-3-270m: provider not stated; licences not stated;"
        " transparency record: NONE",
        "    findings: 1 (1 refused, 0 warned, 0 ignored under the site policy)",
    ]
    data = inventory_json(rows)
    assert [(r["kind"], r["name"], r["has_record"]) for r in data] == [
        ("base", "gemma-3-270m", False), ("adapter", "pirate", True), ("adapter", "bare", False)
    ]  # fmt: skip
    assert data[1]["public_datasets"][1] == {
        "name": "pirate-phrases", "licence": "CC0-1.0", "records": None,
        "records_note": "merged into wiki-subset",
    }  # fmt: skip
    assert {"section": "2.5", "label": "synthetic data", "used": True, "detail": ""} in data[1][
        "sources"
    ]
    assert data[2]["findings"][0]["code"] == "record-missing"
    assert data[2]["findings"][0]["action"] == "refuse"
