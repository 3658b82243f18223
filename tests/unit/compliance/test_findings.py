"""Findings of transparency records and the site's decisions: exact codes, severities, actions."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.compliance.findings import (
    BaseIdentity,
    ComplianceRefusedError,
    Decision,
    Finding,
    check_record,
    decide,
    refusals,
)
from appliance.compliance.policy import DEFAULT_POLICY, SitePolicy
from appliance.compliance.record import (
    AdapterFacts,
    Answer,
    CrawledData,
    DataProcessing,
    DataSources,
    Evaluation,
    ModelDependency,
    ModelIdentification,
    PrivateSource,
    Provider,
    PublicDataset,
    TrainingDataOverview,
    TransparencyRecord,
)
from appliance.errors import DoesNotFitError
from appliance.exitcodes import ExitCode

BASE = BaseIdentity(
    name="gemma-3-270m",
    repo_id="google/gemma-3-270m",
    revision="9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1",
    digest="sha256:" + "ab" * 32,
)
COMMERCIAL = SitePolicy(schema_version=1, intended_use="commercial")
NON_COMMERCIAL = SitePolicy(schema_version=1, intended_use="non-commercial")
RESEARCH = SitePolicy(schema_version=1, intended_use="research")

NO = Answer(used=False)


def record(**changes: Any) -> TransparencyRecord:
    """A complete record with nothing to find; ``changes`` replace its top-level parts."""
    parts: dict[str, Any] = {
        "licence": "apache-2.0",
        "provider": Provider(name="Example GmbH", contact="ai@example.eu"),
        "model": ModelIdentification(
            versioned_name="support-lora v1",
            dependencies=(ModelDependency(name="google/gemma-3-270m", revision=BASE.revision),),
        ),
        "training_data": TrainingDataOverview(
            modalities=("text",), size_buckets={"text": "less than 1 billion tokens"}
        ),
        "sources": sources(),
        "processing": DataProcessing(
            tdm_reservations="robots.txt and TDM-Rep honoured",
            illegal_content="filtered with a blocklist",
            pii_screening="names and e-mail addresses removed",
        ),
        "adapter": AdapterFacts(
            rank=16, evaluation=(Evaluation(name="support-qa", metric="accuracy", value="71.3"),)
        ),
    }
    return TransparencyRecord(**(parts | changes))


def sources(**changes: Any) -> DataSources:
    parts: dict[str, Any] = {
        "public_datasets_used": True,
        "public_datasets": (
            PublicDataset(name="OpenAssistant/oasst1", licence="apache-2.0", records=84_437),
        ),
        "commercially_licensed": NO,
        "private_third_party_used": False,
        "crawled": CrawledData(used=False),
        "user_data": NO,
        "synthetic": NO,
        "other": NO,
    }
    return DataSources(**(parts | changes))


def with_dataset(licence: str | None, name: str = "edu-corpus") -> TransparencyRecord:
    dataset = PublicDataset(name=name, url="https://example.org/edu", licence=licence)
    return record(sources=sources(public_datasets=(dataset,)))


def codes(findings: tuple[Finding, ...]) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in findings]


def actions(decisions: tuple[Decision, ...]) -> list[tuple[str, str]]:
    return [(d.finding.code, d.action) for d in decisions]


def test_a_complete_record_has_no_findings() -> None:
    for policy in (COMMERCIAL, NON_COMMERCIAL, RESEARCH):
        assert check_record("support-lora", record(), BASE, policy) == ()


def test_an_adapter_without_a_record_is_refused() -> None:
    findings = check_record("support-lora", None, BASE, RESEARCH)
    assert codes(findings) == [("record-missing", "error")]
    assert findings[0].subject == "support-lora"
    assert "adapter 'support-lora' carries no transparency record" in findings[0].message
    assert actions(decide(findings, RESEARCH)) == [("record-missing", "refuse")]


# --- licences -------------------------------------------------------------------------------


RESEARCH_ONLY = "for research/educational use only"


def test_research_only_data_on_a_commercial_site_is_refused() -> None:
    findings = check_record("support-lora", with_dataset(RESEARCH_ONLY), BASE, COMMERCIAL)
    assert codes(findings) == [
        ("licence-not-spdx", "warning"),
        ("licence-not-permissive", "error"),
    ]
    refused = findings[1]
    assert "public dataset 'edu-corpus' (2.1)" in refused.message
    assert f"licence '{RESEARCH_ONLY}' is non-commercial" in refused.message
    assert "research/academic/educational use only" in refused.message
    assert "`intended_use: commercial`, which does not grant this site's use" in refused.message
    assert "set `severity: {licence-not-permissive: warn}`" in refused.hint
    assert actions(decide(findings, COMMERCIAL)) == [
        ("licence-not-spdx", "warn"),
        ("licence-not-permissive", "refuse"),
    ]


def test_the_default_policy_refuses_research_only_data() -> None:
    findings = check_record("a", with_dataset(RESEARCH_ONLY), BASE, DEFAULT_POLICY)
    assert [d.finding.code for d in refusals(decide(findings, DEFAULT_POLICY))] == [
        "licence-not-permissive"
    ]


def test_research_only_data_on_a_research_site_is_only_information() -> None:
    findings = check_record("support-lora", with_dataset(RESEARCH_ONLY), BASE, RESEARCH)
    assert codes(findings) == [("licence-not-spdx", "warning"), ("licence-not-permissive", "info")]
    assert "which covers this site's use" in findings[1].message
    assert actions(decide(findings, RESEARCH)) == [
        ("licence-not-spdx", "warn"),
        ("licence-not-permissive", "ignore"),
    ]


def test_research_only_data_on_a_non_commercial_site_is_a_warning() -> None:
    findings = check_record("a", with_dataset(RESEARCH_ONLY), BASE, NON_COMMERCIAL)
    assert codes(findings) == [
        ("licence-not-spdx", "warning"),
        ("licence-not-permissive", "warning"),
    ]


@pytest.mark.parametrize(
    ("licence", "use", "expected"),
    [
        ("cc-by-nc-4.0", "commercial", [("licence-not-permissive", "error")]),
        ("cc-by-nc-4.0", "non-commercial", [("licence-not-permissive", "info")]),
        ("cc-by-nc-4.0", "research", [("licence-not-permissive", "info")]),
        ("cc-by-sa-4.0", "commercial", [("licence-not-permissive", "warning")]),
        ("cc-by-sa-4.0", "research", [("licence-not-permissive", "info")]),
        ("cc-by-nd-4.0", "commercial", [("licence-not-permissive", "warning")]),
        ("cc-by-nd-4.0", "research", [("licence-not-permissive", "warning")]),
        ("openrail", "commercial", [("licence-not-permissive", "error")]),
        ("openrail", "non-commercial", [("licence-not-permissive", "warning")]),
        ("mit", "commercial", []),
        ("CC0-1.0", "commercial", []),
        ("other", "commercial", [("licence-not-spdx", "error")]),
        ("other", "research", [("licence-not-spdx", "warning")]),
        (None, "commercial", [("licence-not-stated", "error")]),
        (None, "non-commercial", [("licence-not-stated", "warning")]),
        ("CC BY-NC 4.0", "commercial", [
            ("licence-not-spdx", "warning"), ("licence-not-permissive", "error")
        ]),
        ("All rights reserved", "research", [
            ("licence-not-spdx", "warning"), ("licence-not-permissive", "warning")
        ]),
    ],
)  # fmt: skip
def test_licence_class_against_intended_use(
    licence: str | None, use: str, expected: list[tuple[str, str]]
) -> None:
    policy = SitePolicy(schema_version=1, intended_use=use)  # type: ignore[arg-type]
    assert codes(check_record("a", with_dataset(licence), BASE, policy)) == expected


def test_a_non_spdx_licence_names_the_dataset_and_what_to_do() -> None:
    (finding,) = check_record("a", with_dataset("Acme Data Licence v3"), BASE, COMMERCIAL)
    assert finding.code == "licence-not-spdx"
    assert finding.message == (
        "public dataset 'edu-corpus' (2.1): licence 'Acme Data Licence v3' is not an SPDX id"
        " appliance knows and its terms could not be classified; expected an SPDX id"
        " (intended use: commercial)"
    )
    assert finding.hint == (
        "State the licence as its SPDX id (or a LicenseRef-<name>) in the model card; once the"
        " site has read the licence and accepts it, list that id under `allowed_licences` in"
        " the site policy, or set `severity: {licence-not-spdx: warn}`."
    )
    assert finding.licence == "Acme Data Licence v3"


def test_the_adapters_own_licence_and_private_sources_are_checked() -> None:
    private = PrivateSource(source="Partner archive", licence="cc-by-nc-sa-4.0")
    rec = record(
        licence="llama3",
        sources=sources(private_third_party_used=True, private_third_party=(private,)),
    )
    findings = check_record("a", rec, BASE, COMMERCIAL)
    assert codes(findings) == [
        ("licence-not-permissive", "error"),
        ("licence-not-permissive", "error"),
    ]
    assert findings[0].message.startswith("the adapter itself: licence 'llama3' is restricted")
    assert findings[0].licence == "LicenseRef-Llama3"
    assert "list 'LicenseRef-Llama3' under `allowed_licences`" in findings[0].hint
    assert findings[1].message.startswith("private source 'Partner archive' (2.2.2)")
    assert findings[1].licence == "CC-BY-NC-SA-4.0"


def test_allowed_licences_turn_their_findings_into_ignore() -> None:
    rec = record(licence="gemma", sources=sources(public_datasets=(
        PublicDataset(name="nc", licence="CC BY-NC 4.0"),
        PublicDataset(name="sa", licence="cc-by-sa-4.0"),
    )))  # fmt: skip
    policy = SitePolicy(
        schema_version=1,
        intended_use="commercial",
        allowed_licences=("LicenseRef-Gemma", "cc-by-nc-4.0"),  # any case, Hub or SPDX spelling
    )
    assert actions(decide(check_record("a", rec, BASE, policy), policy)) == [
        ("licence-not-permissive", "ignore"),  # gemma
        ("licence-not-spdx", "ignore"),  # "CC BY-NC 4.0" is CC-BY-NC-4.0
        ("licence-not-permissive", "ignore"),
        ("licence-not-permissive", "warn"),  # share-alike: not allowed, a warning
    ]


def test_allowed_licences_win_over_a_severity_override() -> None:
    policy = SitePolicy(
        schema_version=1,
        intended_use="commercial",
        severity={"licence-not-permissive": "refuse"},
        allowed_licences=("CC-BY-SA-4.0",),
    )
    rec = record(sources=sources(public_datasets=(
        PublicDataset(name="sa", licence="cc-by-sa-4.0"),
        PublicDataset(name="sa3", licence="CC-BY-SA-3.0"),
    )))  # fmt: skip
    assert actions(decide(check_record("a", rec, BASE, policy), policy)) == [
        ("licence-not-permissive", "ignore"),
        ("licence-not-permissive", "refuse"),
    ]


# --- base model -------------------------------------------------------------------------------


def with_base(name: str, revision: str | None = None) -> TransparencyRecord:
    dependency = ModelDependency(name=name, revision=revision)
    return record(model=ModelIdentification(versioned_name="x v1", dependencies=(dependency,)))


def test_a_different_base_model_by_name_is_refused() -> None:
    findings = check_record("support-lora", with_base("Qwen/Qwen2.5-0.5B"), BASE, RESEARCH)
    assert codes(findings) == [("base-model-mismatch", "error")]
    assert findings[0].message == (
        "the record says the adapter was trained on 'Qwen/Qwen2.5-0.5B'; the bundle's model is"
        " 'gemma-3-270m' (Hub repo google/gemma-3-270m, revision"
        " 9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1, files sha256:abababababababab)"
    )
    assert actions(decide(findings, RESEARCH)) == [("base-model-mismatch", "refuse")]


def test_a_different_revision_is_refused() -> None:
    findings = check_record(
        "a", with_base("google/gemma-3-270m", "0123456789abcdef"), BASE, RESEARCH
    )
    assert codes(findings) == [("base-model-mismatch", "error")]
    assert "revision 0123456789abcdef" in findings[0].message
    assert f"the bundle carries revision {BASE.revision}" in findings[0].message


@pytest.mark.parametrize(
    ("name", "revision", "base"),
    [
        ("google/gemma-3-270m", "9b0cfec", BASE),  # an abbreviated commit
        ("Google/Gemma-3-270M", None, BASE),  # the Hub's ids ignore case; no revision stated
        ("gemma-3-270m", BASE.revision, BASE),  # the directory name
        ("google/gemma-3-270m", "main", BaseIdentity(name="gemma-3-270m")),  # nothing to compare
        ("google/gemma-3-270m", "v1", BaseIdentity(name="gemma-3-270m", revision="v2")),
    ],
)
def test_the_same_base_model_is_no_finding(
    name: str, revision: str | None, base: BaseIdentity
) -> None:
    found = codes(check_record("a", with_base(name, revision), base, RESEARCH))
    expected = [("base-model-mismatch", "error")] if revision == "v1" else []
    assert found == expected


def test_a_repo_id_decides_over_the_last_part_of_the_name() -> None:
    other_org = with_base("someone/gemma-3-270m")
    assert codes(check_record("a", other_org, BASE, RESEARCH)) == [("base-model-mismatch", "error")]
    unknown_repo = BaseIdentity(name="gemma-3-270m")
    assert codes(check_record("a", other_org, unknown_repo, RESEARCH)) == []


def test_a_short_revision_that_is_no_prefix_is_a_mismatch() -> None:
    found = check_record("a", with_base("google/gemma-3-270m", "9b0cfed"), BASE, RESEARCH)
    assert codes(found) == [("base-model-mismatch", "error")]


def test_a_record_without_a_base_model_is_a_warning() -> None:
    rec = record(model=ModelIdentification(versioned_name="x v1"))
    findings = check_record("a", rec, BASE, RESEARCH)
    assert codes(findings) == [("base-model-not-stated", "warning")]
    assert "expected the bundle's model 'gemma-3-270m'" in findings[0].message


# --- evaluation, section 3, unstated answers -------------------------------------------------


def test_missing_evaluation_pii_tdm_and_illegal_content_are_warnings() -> None:
    rec = record(adapter=AdapterFacts(rank=16), processing=DataProcessing())
    findings = check_record("support-lora", rec, BASE, COMMERCIAL)
    assert codes(findings) == [
        ("evaluation-missing", "warning"),
        ("pii-screening-not-stated", "warning"),
        ("tdm-measures-not-stated", "warning"),
        ("illegal-content-measures-not-stated", "warning"),
    ]
    assert all(d.action == "warn" for d in decide(findings, COMMERCIAL))
    assert "3.1 measures to respect text-and-data-mining reservations" in findings[2].message


def test_require_evaluation_makes_a_missing_evaluation_an_error() -> None:
    policy = SitePolicy(schema_version=1, intended_use="research", require_evaluation=True)
    findings = check_record("a", record(adapter=AdapterFacts()), BASE, policy)
    assert codes(findings) == [("evaluation-missing", "error")]
    assert "`require_evaluation: true`" in findings[0].message
    assert actions(decide(findings, policy)) == [("evaluation-missing", "refuse")]


def test_unanswered_template_questions_are_named() -> None:
    rec = record(
        training_data=TrainingDataOverview(modalities=("text", "image")),
        sources=DataSources(crawled=CrawledData(used=True)),
    )
    findings = check_record("a", rec, BASE, RESEARCH)
    assert [f.code for f in findings] == ["field-not-stated"] * 8 + ["crawled-without-domains"]
    messages = [f.message for f in findings]
    assert "1.3 the size of the training data (text)" in messages[0]
    assert "1.3 the size of the training data (image)" in messages[1]
    assert [m.split("whether ")[1].split(" were")[0] for m in messages[2:8]] == [
        "2.1 publicly available datasets",
        "2.2.1 commercially licensed data",
        "2.2.2 private third-party data",
        "2.4 user data",
        "2.5 synthetic data",
        "2.6 other sources",
    ]
    assert "2.3 says crawled data was used but names no domains" in messages[8]


def test_a_yes_without_a_list_is_not_stated() -> None:
    rec = record(sources=sources(public_datasets=(), private_third_party_used=True))
    findings = check_record("a", rec, BASE, RESEARCH)
    assert codes(findings) == [("field-not-stated", "warning"), ("field-not-stated", "warning")]
    assert "answers yes to 2.1 publicly available datasets but lists none" in findings[0].message
    assert "answers yes to 2.2.2 private third-party data but lists none" in findings[1].message


def test_a_list_answers_its_question() -> None:
    rec = record(sources=sources(public_datasets_used=None))  # the list is given
    assert check_record("a", rec, BASE, RESEARCH) == ()


def test_crawled_data_with_domains_is_no_finding() -> None:
    crawled = CrawledData(used=True, crawler="own", domains=("example.org",))
    assert check_record("a", record(sources=sources(crawled=crawled)), BASE, RESEARCH) == ()


# --- policy overrides and the refusal ---------------------------------------------------------


def test_the_policy_overrides_the_action_per_code() -> None:
    policy = SitePolicy(
        schema_version=1,
        intended_use="commercial",
        severity={
            "record-missing": "warn",
            "pii-screening-not-stated": "refuse",
            "evaluation-missing": "ignore",
        },
    )
    rec = record(adapter=AdapterFacts(), processing=record().processing.model_copy(
        update={"pii_screening": None}
    ))  # fmt: skip
    decisions = decide(
        check_record("a", None, BASE, policy) + check_record("b", rec, BASE, policy), policy
    )
    assert actions(decisions) == [
        ("record-missing", "warn"),
        ("evaluation-missing", "ignore"),
        ("pii-screening-not-stated", "refuse"),
    ]
    assert [d.finding.subject for d in refusals(decisions)] == ["b"]


def test_the_refusal_lists_every_refused_finding_with_what_to_do() -> None:
    findings = check_record("first", None, BASE, COMMERCIAL) + check_record(
        "second", with_dataset(RESEARCH_ONLY), BASE, COMMERCIAL
    )
    error = ComplianceRefusedError.from_decisions(decide(findings, COMMERCIAL))
    assert isinstance(error, DoesNotFitError)
    assert error.exit_code == ExitCode.DOES_NOT_FIT
    lines = error.message.splitlines()
    assert lines[0] == "the site policy refuses 2 compliance finding(s):"
    assert lines[1].startswith("  - first: record-missing: adapter 'first' carries no")
    assert lines[2].startswith("    what to do: Give the adapter a model card")
    assert lines[3].startswith(
        "  - second: licence-not-permissive: public dataset 'edu-corpus' (2.1)"
    )
    assert len(lines) == 5  # the warning (licence-not-spdx) is not listed
    assert error.hint is not None
    assert "(codes: record-missing, licence-not-permissive)" in error.hint
    assert "`severity`" in error.hint and "docs/compliance.md" in error.hint


def test_no_refusal_is_no_error() -> None:
    with pytest.raises(ValueError, match="nothing to raise"):
        ComplianceRefusedError.from_decisions(
            decide(check_record("a", record(), BASE, COMMERCIAL), COMMERCIAL)
        )
