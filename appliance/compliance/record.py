"""An adapter's transparency record: the EU AI Act public summary of training content.

The structure follows the AI Office's template for the public summary of training
content (2025-07-24, Art. 53(1)(d) of Regulation (EU) 2024/1689), section by
section: 1 general information (1.1 provider, 1.2 model identification, 1.3
modalities and overall training-data characteristics), 2 list of data sources
(2.1 public datasets, 2.2.1 commercially licensed data, 2.2.2 private third-party
data, 2.3 crawled data, 2.4 user data, 2.5 synthetic data, 2.6 other sources),
3 data-processing aspects (3.1 text-and-data-mining reservations, 3.2 illegal
content, 3.3 other), plus the adapter's own facts (``AdapterFacts``: rank, alpha,
dropout, target modules, evaluation, limitations, card version).

Strict and frozen like the bundle payload (it is carried signed inside it): unknown
keys are refused, and no field holds a float (signed metadata is canonical JSON,
which has none), so decimals such as a dropout or a score are kept as the text the
card gave. A field the provider did not state is ``None``; "not stated" is never
turned into "no".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

RECORD_VERSION: Literal[1] = 1

TEMPLATE = "EU AI Office template for the public summary of training content, 2025-07-24"

# SPDX licence identifier, or LicenseRef-<name> (the payload's SpdxId, repeated here so the
# record does not depend on the bundle package).
SpdxId = Annotated[
    str,
    Field(pattern=r"^(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*)$"),
]
Decimal = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?%?$")]  # "0.05", "71.3", "12%"
Modality = Literal["text", "image", "audio", "video", "other"]
# The template's buckets for the training data's size, per modality (1.3).
SizeBucket = Literal[
    "less than 1 billion tokens",
    "1 billion to 10 trillion tokens",
    "more than 10 trillion tokens",
]
Text = Annotated[str, Field(min_length=1, max_length=8192)]
ShortText = Annotated[str, Field(min_length=1, max_length=512)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- 1. General information -----------------------------------------------------------


class Provider(_Strict):
    """1.1: who placed the model on the market."""

    name: ShortText
    contact: ShortText | None = None  # address and contact details
    authorised_representative: ShortText | None = None  # for providers outside the EU


class ModelDependency(_Strict):
    """A model this one was built from (for an adapter: its base model)."""

    name: ShortText  # e.g. "google/gemma-3-270m"
    revision: ShortText | None = None  # commit or version of that model


class ModelIdentification(_Strict):
    """1.2: the model's versioned name, what it was built on, when it was placed on the market."""

    versioned_name: ShortText
    dependencies: tuple[ModelDependency, ...] = ()
    placed_on_market: Annotated[str, Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")] | None = None


class TrainingDataOverview(_Strict):
    """1.3: modalities and the overall characteristics of the training data."""

    modalities: tuple[Modality, ...] = Field(min_length=1)
    size_buckets: dict[Modality, SizeBucket] = Field(default_factory=dict)
    content_types: ShortText | None = None  # e.g. "fiction, technical manuals"
    approximate_size: ShortText | None = None  # e.g. "about 2 million tokens"
    latest_acquisition: Annotated[str, Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")] | None = None
    linguistic_characteristics: ShortText | None = None  # languages
    other_characteristics: Text | None = None


# --- 2. List of data sources ----------------------------------------------------------


class PublicDataset(_Strict):
    """2.1: one publicly available dataset (``records`` None when the card gave no count,
    e.g. "merged"; ``records_note`` then keeps what it said)."""

    name: ShortText
    url: ShortText | None = None
    licence: ShortText | None = None  # as the card stated it; compliance checks it is SPDX
    records: Annotated[int, Field(ge=0)] | None = None
    records_note: ShortText | None = None


class PrivateSource(_Strict):
    """2.2.2: private data licensed from a third party."""

    source: ShortText
    url: ShortText | None = None
    licence: ShortText | None = None


class Answer(_Strict):
    """A yes/no question of the template with its free-text detail."""

    used: bool | None = None  # None: the card does not say
    details: Text | None = None


class CrawledData(Answer):
    """2.3: data the provider crawled (or had crawled) from the web."""

    crawler: ShortText | None = None
    period: ShortText | None = None
    domains: tuple[ShortText, ...] = ()


class DataSources(_Strict):
    """Section 2 of the template."""

    public_datasets_used: bool | None = None  # 2.1's question; the list follows
    public_datasets: tuple[PublicDataset, ...] = ()
    commercially_licensed: Answer = Answer()  # 2.2.1
    private_third_party_used: bool | None = None  # 2.2.2's question
    private_third_party: tuple[PrivateSource, ...] = ()
    crawled: CrawledData = CrawledData()  # 2.3
    user_data: Answer = Answer()  # 2.4
    synthetic: Answer = Answer()  # 2.5
    other: Answer = Answer()  # 2.6


# --- 3. Data processing aspects ---------------------------------------------------------


class DataProcessing(_Strict):
    """Section 3: how reservations, illegal content and personal data were handled."""

    tdm_reservations: Text | None = None  # 3.1: text-and-data-mining opt-outs respected
    illegal_content: Text | None = None  # 3.2: measures to remove illegal content
    other: Text | None = None  # 3.3
    pii_screening: Text | None = None  # how personal data was screened (part of 3.2/3.3)


# --- The adapter's own facts --------------------------------------------------------------


class Evaluation(_Strict):
    name: ShortText  # the task or benchmark
    metric: ShortText | None = None
    value: ShortText  # as the card gives it: "71.3", "12%", "pass"
    dataset: ShortText | None = None


class AdapterFacts(_Strict):
    rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    alpha: Annotated[int, Field(ge=1)] | None = None
    dropout: Decimal | None = None
    target_modules: tuple[ShortText, ...] = ()
    evaluation: tuple[Evaluation, ...] = ()
    limitations: tuple[Text, ...] = ()
    card_version: ShortText | None = None


# --- The record -------------------------------------------------------------------------------


class TransparencyRecord(_Strict):
    """One model's or adapter's public summary of training content, with its own facts."""

    record_version: Literal[1] = RECORD_VERSION
    licence: ShortText | None = None  # the adapter's own licence (card front matter)
    provider: Provider
    model: ModelIdentification
    training_data: TrainingDataOverview
    sources: DataSources = DataSources()
    processing: DataProcessing = DataProcessing()
    adapter: AdapterFacts = AdapterFacts()

    @property
    def base_model(self) -> ModelDependency | None:
        """The model this one was built on (the first dependency), if the record names one."""
        return self.model.dependencies[0] if self.model.dependencies else None

    def licences(self) -> tuple[str, ...]:
        """Every licence the record states (its own and each dataset's or source's), in order."""
        found: list[str] = [] if self.licence is None else [self.licence]
        found += [d.licence for d in self.sources.public_datasets if d.licence is not None]
        found += [s.licence for s in self.sources.private_third_party if s.licence is not None]
        return tuple(dict.fromkeys(found))
