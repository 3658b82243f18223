"""Exported records: the Markdown card reads back to the same record; the JSON is canonical."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from appliance.compliance.card import load_card, parse_card, require_record
from appliance.compliance.export import record_json, record_markdown
from appliance.compliance.record import (
    TEMPLATE,
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

CARDS = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "cards"

MINIMAL = TransparencyRecord(
    provider=Provider(name="Tiny Lab"),
    model=ModelIdentification(versioned_name="tiny 0.1"),
    training_data=TrainingDataOverview(modalities=("text",)),
)

# Every value the card format must escape, in every kind of field.
AWKWARD = TransparencyRecord(
    licence="LicenseRef-lab-terms-1.0",
    provider=Provider(
        name="A | B \\ C <br> D",
        contact="line one\nline two\n  indented | piped",
        authorised_representative="Not stated",
    ),
    model=ModelIdentification(
        versioned_name="  padded name\t",
        dependencies=(
            ModelDependency(name="org/base (v2); beta", revision="rev (1); x"),
            ModelDependency(name="org/other"),
            ModelDependency(name="org/third", revision="abc123"),
        ),
        placed_on_market="2026-02-28",
    ),
    training_data=TrainingDataOverview(
        modalities=("image", "text", "other"),
        size_buckets={
            "text": "1 billion to 10 trillion tokens",
            "image": "more than 10 trillion tokens",
            "video": "less than 1 billion tokens",
        },
        content_types="-",
        approximate_size="—",
        latest_acquisition="2025-12",
        linguistic_characteristics="☒ Yes ☐ No",
        other_characteristics="<!-- not a comment -->\n# not a heading\n- not a bullet\n| Field | Value |",
    ),
    sources=DataSources(
        public_datasets_used=True,
        public_datasets=(
            PublicDataset(name="a|b", url="https://x/?q=a|b", licence="MIT", records=0),
            PublicDataset(name="big", records=123456789012, records_note="note (with parens)"),
            PublicDataset(name="merged one", records_note="merged into a|b"),
            PublicDataset(name="Not stated\\"),
            PublicDataset(name="n/a", records_note="n/a"),
        ),
        commercially_licensed=Answer(used=True, details="licence\nfrom\nvendor"),
        private_third_party_used=True,
        private_third_party=(PrivateSource(source="Partner", licence="LicenseRef-partner"),),
        crawled=CrawledData(
            used=True,
            crawler="bot, v1",
            period="2024-01 to 2025-06",
            domains=("example.org", "a,b.example", " spaced "),
            details="robots.txt honoured",
        ),
        user_data=Answer(used=False),
        synthetic=Answer(details="Not Stated."),
        other=Answer(used=None, details="x" * 8192),
    ),
    processing=DataProcessing(
        tdm_reservations="opt-outs \\| respected",
        illegal_content="filtered",
        other="3.3",
        pii_screening="regex <b>bold</b>",
    ),
    adapter=AdapterFacts(
        rank=1024,
        alpha=1,
        dropout="-0.5",
        target_modules=("q_proj", "weird,module", "o_proj"),
        evaluation=(
            Evaluation(name="task | one", value="12%"),
            Evaluation(name="task two", metric="acc", value="pass", dataset="set\nB"),
        ),
        limitations=("line\nbreak", "- dash", "Not stated", "  padded  ", "`code` | pipe"),
        card_version="1.0 (draft)",
    ),
)


def test_records_read_back_from_their_markdown() -> None:
    complete = load_card(CARDS / "complete.md").record
    assert complete is not None
    unknown_licence = MINIMAL.model_copy(update={"licence": "gemma"})
    for name, record in [
        ("complete", complete),
        ("minimal", MINIMAL),
        ("awkward | name\nwith a line break", AWKWARD),
        ("gemma", unknown_licence),
    ]:
        text = record_markdown(name, record)
        imported = parse_card(text, name)
        assert imported.problems == (), (name, imported.problems)
        assert imported.record == record, name
        assert require_record(imported, name) == record


def test_markdown_says_not_stated_and_writes_the_front_matter() -> None:
    text = record_markdown("tiny", MINIMAL)
    assert not text.startswith("---")  # no licence, no base model: no front matter
    assert "| Contact details | Not stated |" in text
    assert "| Used | ☐ Yes ☐ No |" in text
    assert "| Modality | ☒ Text ☐ Image ☐ Audio ☐ Video ☐ Other |" in text
    assert text.endswith("### Limitations\n\nNot stated\n")
    complete = load_card(CARDS / "complete.md")
    assert complete.record is not None
    written = parse_card(record_markdown("pirate", complete.record), "pirate")
    assert written.front_matter == {
        "base_model": "google/gemma-3-270m",
        "base_model_revision": "9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1",
        "license": "apache-2.0",
    }
    awkward = parse_card(record_markdown("awkward", AWKWARD), "awkward")
    assert awkward.front_matter == {
        "base_model": ["org/base (v2); beta", "org/other", "org/third"],
        "base_model_revision": "rev (1); x",
        "license": "other",
        "license_name": "lab-terms-1.0",
    }


def test_a_carriage_return_is_written_as_a_line_break_never_breaking_the_table() -> None:
    record = MINIMAL.model_copy(
        update={"processing": DataProcessing(other="a\r\nb\rc | d", pii_screening="e")}
    )
    imported = parse_card(record_markdown("cr", record), "cr")
    assert imported.problems == ()
    assert imported.record is not None
    assert imported.record.processing == DataProcessing(other="a\nb\nc | d", pii_screening="e")


def test_markdown_is_deterministic() -> None:
    reordered = AWKWARD.model_copy(
        update={
            "training_data": AWKWARD.training_data.model_copy(
                update={"size_buckets": dict(reversed(AWKWARD.training_data.size_buckets.items()))}
            )
        }
    )
    assert record_markdown("a", reordered) == record_markdown("a", AWKWARD)


def test_a_count_less_note_without_a_non_count_word_is_not_expressible() -> None:
    """Documented: such a note is written as it is and read back as a problem, never guessed."""
    record = MINIMAL.model_copy(
        update={
            "sources": DataSources(
                public_datasets=(PublicDataset(name="d", records_note="about 12k"),)
            )
        }
    )
    imported = parse_card(record_markdown("d", record), "d")
    assert [p.field for p in imported.problems] == [
        "2.1 Publicly available datasets: Records (row 'd')"
    ]


@pytest.mark.parametrize("record", [MINIMAL, AWKWARD], ids=["minimal", "awkward"])
def test_json_is_canonical_and_reads_back(record: TransparencyRecord) -> None:
    data = record_json("adapter-a", record)
    document = json.loads(data)
    assert list(document) == ["name", "record", "record_version", "template"]
    assert document["name"] == "adapter-a"
    assert document["template"] == TEMPLATE
    assert document["record_version"] == 1
    assert TransparencyRecord.model_validate(document["record"]) == record
    assert data.endswith(b"}\n")
    assert (
        data == (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    )


def test_json_of_equal_records_is_byte_identical() -> None:
    reordered = AWKWARD.model_copy(
        update={
            "training_data": AWKWARD.training_data.model_copy(
                update={"size_buckets": dict(reversed(AWKWARD.training_data.size_buckets.items()))}
            )
        }
    )
    assert record_json("a", reordered) == record_json("a", AWKWARD)
    assert record_json("a", AWKWARD) != record_json("b", AWKWARD)
    assert "Hauptstraße".encode() in record_json(
        "c", load_card(CARDS / "complete.md").record or MINIMAL
    )


# Pieces that each mean something to the card format: escapes, separators, marks, comments.
_PIECES = (
    *("a", "b", " ", "\t", "\n", "|", "\\", "<", ">", "<br>", "<!--", "-->", "-", ",", ";"),
    *("(", ")", "#", "☒", "☐", "[x]", "Not stated", ":", ".", "—", "é", "`", "*", "---"),
    *("revision ", "merged", "12", "\\|", "other"),
)


def _awkward_text(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 6)))


def _scrambled(rng: random.Random) -> TransparencyRecord:
    """AWKWARD with every free-text value replaced by a random run of the pieces."""
    data = json.loads(AWKWARD.model_dump_json())
    fixed = {"placed_on_market", "latest_acquisition", "dropout", "size_buckets", "modalities"}
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        keys = node.keys() if isinstance(node, dict) else range(len(node))
        for key in keys:
            if key in fixed:
                continue
            if isinstance(node[key], str):
                node[key] = _awkward_text(rng)
            elif isinstance(node[key], (dict, list)):
                stack.append(node[key])
    for dataset in data["sources"]["public_datasets"]:
        if dataset["records"] is None and dataset["records_note"] is not None:
            # a count-less note must start with a non-count word (documented)
            dataset["records_note"] = "merged " + dataset["records_note"]
    data["licence"] = rng.choice(
        ["Apache-2.0", "LicenseRef-a.b-1", "LicenseRef-a b", "gemma", None, _awkward_text(rng)]
    )
    return TransparencyRecord.model_validate(data)


def test_scrambled_records_read_back_from_their_markdown() -> None:
    rng = random.Random(15)
    for _ in range(150):
        record = _scrambled(rng)
        if record.licence is not None and record.licence.casefold() == "other":
            continue  # not expressible (documented)
        imported = parse_card(record_markdown(_awkward_text(rng), record), "scrambled")
        assert imported.problems == ()
        assert imported.record == record
