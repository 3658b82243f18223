"""The transparency card's vocabulary, shared by its reader (``card``) and writer (``export``).

One table of sections (template number, title, the short name problems use) and
of each section's fields (the name in the card, where the value goes in the
record, how it is written), so the reader and the writer cannot drift apart;
the checkbox marks, the "not stated" spellings, the cell escaping and the
Hugging Face licence ids with their SPDX equivalents. docs/transparency-cards.md
is this module in prose.

Cell escaping, the one rule both sides keep: a backslash before any character
that is not a letter, digit or line break makes that character literal (``\\|``
is a pipe inside a cell, ``\\,`` a comma inside a list item, ``Not\\ stated``
the text rather than the answer); ``<br>`` is a line break inside a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from appliance.compliance.record import Modality, SizeBucket

FieldKind = Literal[
    "short", "long", "date", "yesno", "modalities", "bucket", "int", "decimal", "list", "deps"
]
ColumnKind = Literal["short", "records"]

SHORT_MAX = 512  # record.ShortText
LONG_MAX = 8192  # record.Text

MODALITIES: tuple[Modality, ...] = ("text", "image", "audio", "video", "other")
SIZE_BUCKETS: tuple[SizeBucket, ...] = (
    "less than 1 billion tokens",
    "1 billion to 10 trillion tokens",
    "more than 10 trillion tokens",
)
BUCKET_LABELS: dict[SizeBucket, str] = {
    "less than 1 billion tokens": "Less than 1 billion tokens",
    "1 billion to 10 trillion tokens": "1 billion to 10 trillion tokens",
    "more than 10 trillion tokens": "More than 10 trillion tokens",
}

TICKED = "☒"
UNTICKED = "☐"
TICKED_MARKS = ("☒", "☑", "✅", "✔\ufe0f", "✔", "[x]", "[X]")
UNTICKED_MARKS = ("☐", "[ ]")

NOT_STATED = "Not stated"
_NOT_STATED_SPELLINGS = frozenset({"", "not stated", "-", "\u2014", "\u2013"})  # em, en dash

# A dataset's Records cell without a count starts with one of these (records_note keeps it).
NON_COUNT_WORDS = (
    "merged",
    "n/a",
    "na",
    "unknown",
    "not counted",
    "not applicable",
    "not disclosed",
    "undisclosed",
    "various",
)

# Hugging Face licence ids (front matter ``license``) that have an SPDX equivalent.
HF_LICENCES: dict[str, str] = {
    "apache-2.0": "Apache-2.0",
    "mit": "MIT",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-3-clause-clear": "BSD-3-Clause-Clear",
    "bsl-1.0": "BSL-1.0",
    "isc": "ISC",
    "zlib": "Zlib",
    "unlicense": "Unlicense",
    "cc0-1.0": "CC0-1.0",
    "cc-by-2.0": "CC-BY-2.0",
    "cc-by-2.5": "CC-BY-2.5",
    "cc-by-3.0": "CC-BY-3.0",
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "cc-by-nc-2.0": "CC-BY-NC-2.0",
    "cc-by-nc-3.0": "CC-BY-NC-3.0",
    "cc-by-nc-4.0": "CC-BY-NC-4.0",
    "cc-by-nd-4.0": "CC-BY-ND-4.0",
    "cc-by-nc-nd-3.0": "CC-BY-NC-ND-3.0",
    "cc-by-nc-nd-4.0": "CC-BY-NC-ND-4.0",
    "cc-by-nc-sa-2.0": "CC-BY-NC-SA-2.0",
    "cc-by-nc-sa-3.0": "CC-BY-NC-SA-3.0",
    "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0",
    "cdla-permissive-1.0": "CDLA-Permissive-1.0",
    "cdla-permissive-2.0": "CDLA-Permissive-2.0",
    "cdla-sharing-1.0": "CDLA-Sharing-1.0",
    "odc-by": "ODC-By-1.0",
    "odbl": "ODbL-1.0",
    "pddl": "PDDL-1.0",
    "ecl-2.0": "ECL-2.0",
    "epl-1.0": "EPL-1.0",
    "epl-2.0": "EPL-2.0",
    "eupl-1.1": "EUPL-1.1",
    "eupl-1.2": "EUPL-1.2",
    "mpl-2.0": "MPL-2.0",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-3.0": "GPL-3.0-only",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-3.0": "LGPL-3.0-only",
    "agpl-3.0": "AGPL-3.0-only",
    "afl-3.0": "AFL-3.0",
    "artistic-2.0": "Artistic-2.0",
    "wtfpl": "WTFPL",
    "postgresql": "PostgreSQL",
    "osl-3.0": "OSL-3.0",
    "ofl-1.1": "OFL-1.1",
    "lppl-1.3c": "LPPL-1.3c",
    "ncsa": "NCSA",
}
SPDX_TO_HF: dict[str, str] = {spdx: hf for hf, spdx in HF_LICENCES.items()}
LICENSE_REF = "LicenseRef-"
LICENSE_NAME = re.compile(r"[A-Za-z0-9.\-]+")  # front matter license_name (LicenseRef-<name>)


@dataclass(frozen=True)
class FieldSpec:
    """A row of a section's ``| Field | Value |`` table."""

    names: tuple[str, ...]  # as written in the card; the first is the one the exporter writes
    path: tuple[str, ...]  # where the value goes in the record's dict
    kind: FieldKind
    required: str | None = None  # what is expected, for the three fields the record requires
    low: int = 1  # for kind "int"
    high: int | None = None


@dataclass(frozen=True)
class ColumnSpec:
    """A column of a row table (2.1's datasets, 2.2.2's sources, the evaluation)."""

    names: tuple[str, ...]
    key: str  # the row's key in the record
    kind: ColumnKind = "short"
    required: bool = False


@dataclass(frozen=True)
class RowsSpec:
    path: tuple[str, ...]
    columns: tuple[ColumnSpec, ...]


@dataclass(frozen=True)
class SectionSpec:
    number: str | None
    title: str  # the template's title, as the exporter writes it
    label: str  # the short name problems use
    level: int
    aliases: tuple[str, ...] = ()  # other titles it is recognised by
    fields: tuple[FieldSpec, ...] = ()
    rows: RowsSpec | None = None
    bullets: tuple[str, ...] | None = None  # the record path of a bullet list
    parent: bool = False  # holds subsections, no fields

    @property
    def heading(self) -> str:
        if self.number is None:
            return self.title
        dot = "." if "." not in self.number else ""
        return f"{self.number}{dot} {self.title}"


def _answer(path: tuple[str, ...], *extra: FieldSpec) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec(("Used",), (*path, "used"), "yesno"),
        *extra,
        FieldSpec(("Details",), (*path, "details"), "long"),
    )


_LIC = ("Licence", "License")

SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("1", "General information", "1 General information", 2, parent=True),
    SectionSpec(
        "1.1",
        "Provider identification",
        "1.1 Provider",
        3,
        aliases=("provider",),
        fields=(
            FieldSpec(("Name",), ("provider", "name"), "short", required="the provider's name"),
            FieldSpec(("Contact details",), ("provider", "contact"), "short"),
            FieldSpec(
                ("Authorised representative", "Authorized representative"),
                ("provider", "authorised_representative"),
                "short",
            ),
        ),
    ),
    SectionSpec(
        "1.2",
        "Model identification",
        "1.2 Model identification",
        3,
        fields=(
            FieldSpec(
                ("Versioned model name",),
                ("model", "versioned_name"),
                "short",
                required="the model's name with its version",
            ),
            FieldSpec(("Model dependencies",), ("model", "dependencies"), "deps"),
            FieldSpec(("Date of placement on the market",), ("model", "placed_on_market"), "date"),
        ),
    ),
    SectionSpec(
        "1.3",
        "Modalities, overall training data size and other characteristics",
        "1.3 Modalities and training data size",
        3,
        aliases=("modalities and training data size", "modalities"),
        fields=(
            FieldSpec(
                ("Modality", "Modalities"),
                ("training_data", "modalities"),
                "modalities",
                required="at least one modality ticked (Text, Image, Audio, Video, Other)",
            ),
            *(
                FieldSpec(
                    (f"Training data size ({m})",), ("training_data", "size_buckets", m), "bucket"
                )
                for m in MODALITIES
            ),
            FieldSpec(("Types of content",), ("training_data", "content_types"), "short"),
            FieldSpec(("Approximate size",), ("training_data", "approximate_size"), "short"),
            FieldSpec(
                ("Latest date of data acquisition",),
                ("training_data", "latest_acquisition"),
                "date",
            ),
            FieldSpec(
                ("Linguistic characteristics",),
                ("training_data", "linguistic_characteristics"),
                "short",
            ),
            FieldSpec(
                ("Other characteristics",), ("training_data", "other_characteristics"), "long"
            ),
        ),
    ),
    SectionSpec("2", "List of data sources", "2 List of data sources", 2, parent=True),
    SectionSpec(
        "2.1",
        "Publicly available datasets",
        "2.1 Publicly available datasets",
        3,
        fields=(
            FieldSpec(
                ("Have you used publicly available datasets?", "Used"),
                ("sources", "public_datasets_used"),
                "yesno",
            ),
        ),
        rows=RowsSpec(
            ("sources", "public_datasets"),
            (
                ColumnSpec(("Name",), "name", required=True),
                ColumnSpec(("URL",), "url"),
                ColumnSpec(_LIC, "licence"),
                ColumnSpec(("Records",), "records", "records"),
            ),
        ),
    ),
    SectionSpec(
        "2.2",
        "Private non-publicly available datasets obtained from third parties",
        "2.2 Private non-publicly available datasets",
        3,
        parent=True,
    ),
    SectionSpec(
        "2.2.1",
        "Commercially licensed data",
        "2.2.1 Commercially licensed data",
        4,
        fields=_answer(("sources", "commercially_licensed")),
    ),
    SectionSpec(
        "2.2.2",
        "Private datasets obtained from third parties",
        "2.2.2 Private datasets obtained from third parties",
        4,
        fields=(
            FieldSpec(
                ("Used", "Have you used private datasets obtained from third parties?"),
                ("sources", "private_third_party_used"),
                "yesno",
            ),
        ),
        rows=RowsSpec(
            ("sources", "private_third_party"),
            (
                ColumnSpec(("Source",), "source", required=True),
                ColumnSpec(("URL",), "url"),
                ColumnSpec(_LIC, "licence"),
            ),
        ),
    ),
    SectionSpec(
        "2.3",
        "Data crawled and scraped from online sources",
        "2.3 Data crawled and scraped from online sources",
        3,
        aliases=("crawled data",),
        fields=_answer(
            ("sources", "crawled"),
            FieldSpec(("Crawler",), ("sources", "crawled", "crawler"), "short"),
            FieldSpec(("Period",), ("sources", "crawled", "period"), "short"),
            FieldSpec(("Main domains",), ("sources", "crawled", "domains"), "list"),
        ),
    ),
    SectionSpec("2.4", "User data", "2.4 User data", 3, fields=_answer(("sources", "user_data"))),
    SectionSpec(
        "2.5", "Synthetic data", "2.5 Synthetic data", 3, fields=_answer(("sources", "synthetic"))
    ),
    SectionSpec(
        "2.6",
        "Other sources of data",
        "2.6 Other sources of data",
        3,
        fields=_answer(("sources", "other")),
    ),
    SectionSpec("3", "Data processing aspects", "3 Data processing aspects", 2, parent=True),
    SectionSpec(
        "3.1",
        "Respect of reservation of rights from text and data mining exception or limitation",
        "3.1 Text and data mining reservations",
        3,
        aliases=("text and data mining reservations",),
        fields=(FieldSpec(("Measures",), ("processing", "tdm_reservations"), "long"),),
    ),
    SectionSpec(
        "3.2",
        "Removal of illegal content",
        "3.2 Removal of illegal content",
        3,
        fields=(
            FieldSpec(("Measures",), ("processing", "illegal_content"), "long"),
            FieldSpec(("Personal data screening",), ("processing", "pii_screening"), "long"),
        ),
    ),
    SectionSpec(
        "3.3",
        "Other information",
        "3.3 Other information",
        3,
        fields=(FieldSpec(("Details",), ("processing", "other"), "long"),),
    ),
    SectionSpec(
        None,
        "Adapter",
        "Adapter",
        2,
        fields=(
            FieldSpec(("Rank",), ("adapter", "rank"), "int", low=1, high=1024),
            FieldSpec(("Alpha",), ("adapter", "alpha"), "int", low=1),
            FieldSpec(("Dropout",), ("adapter", "dropout"), "decimal"),
            FieldSpec(("Target modules",), ("adapter", "target_modules"), "list"),
            FieldSpec(("Card version",), ("adapter", "card_version"), "short"),
        ),
    ),
    SectionSpec(
        None,
        "Evaluation",
        "Adapter: Evaluation",
        3,
        rows=RowsSpec(
            ("adapter", "evaluation"),
            (
                ColumnSpec(("Task",), "name", required=True),
                ColumnSpec(("Metric",), "metric"),
                ColumnSpec(("Value",), "value", required=True),
                ColumnSpec(("Dataset",), "dataset"),
            ),
        ),
    ),
    SectionSpec(None, "Limitations", "Adapter: Limitations", 3, bullets=("adapter", "limitations")),
)


def normalise(name: str) -> str:
    """A heading title or field name as matched: case-folded, spaces collapsed, no trailing
    ':', '?' or '.'."""
    return " ".join(name.split()).casefold().rstrip(":?. ")


SECTION_BY_NUMBER: dict[str, SectionSpec] = {s.number: s for s in SECTIONS if s.number}
SECTION_BY_TITLE: dict[str, SectionSpec] = {
    normalise(title): s
    for s in SECTIONS
    for title in (s.title, s.label.split(" ", 1)[1] if s.number else s.label, *s.aliases)
}


def is_not_stated_text(text: str) -> bool:
    """Whether ``text`` (unescaped, as the card wrote it) is one of the "not stated" spellings."""
    return normalise(text) in _NOT_STATED_SPELLINGS


def escapable(char: str) -> bool:
    """A backslash before ``char`` makes it literal."""
    return not char.isalnum() and char not in "\n\r"


def escape_cell(value: str, specials: str = "") -> str:
    """``value`` written so the reader gets it back exactly: ``\\``, ``|`` and ``<`` (and the
    ``specials`` a list or dependency cell splits on) escaped, line breaks (``\\r`` too) as
    ``<br>``, spaces at either end escaped, a value that reads as "not stated" escaped
    throughout."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")  # a card has no other line break
    sentinel = is_not_stated_text(value)
    out: list[str] = []
    last = len(value) - 1
    lead = len(value) - len(value.lstrip(" \t"))
    trail = last - (len(value) - len(value.rstrip(" \t")))
    for i, char in enumerate(value):
        if char == "\n":
            out.append("<br>")
        elif (
            char in "\\|<"
            or char in specials
            or (char in " \t" and (i < lead or i > trail))
            or (sentinel and escapable(char))
        ):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)
