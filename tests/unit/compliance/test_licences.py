"""Licence classification: the table's ids in any case, the Hub's ids, free text never permissive."""

from __future__ import annotations

import pytest

from appliance.compliance.licences import (
    HUB_ALIASES,
    LICENCE_CLASSES,
    SPDX_TABLE,
    canonical_id,
    classify_licence,
)
from appliance.compliance.record import SpdxId


@pytest.mark.parametrize(
    ("stated", "spdx", "cls"),
    [
        ("Apache-2.0", "Apache-2.0", "permissive"),
        ("apache-2.0", "Apache-2.0", "permissive"),
        ("mit", "MIT", "permissive"),
        ("bsd-3-clause", "BSD-3-Clause", "permissive"),
        ("cc0-1.0", "CC0-1.0", "permissive"),
        ("cc-by-4.0", "CC-BY-4.0", "permissive"),
        ("odc-by", "ODC-By-1.0", "permissive"),
        ("pddl", "PDDL-1.0", "permissive"),
        ("unlicense", "Unlicense", "permissive"),
        ("cc-by-sa-4.0", "CC-BY-SA-4.0", "share-alike"),
        ("odbl", "ODbL-1.0", "share-alike"),
        ("gpl-3.0", "GPL-3.0-only", "share-alike"),
        ("AGPL-3.0-only", "AGPL-3.0-only", "share-alike"),
        ("lgpl-3.0", "LGPL-3.0-only", "share-alike"),
        ("mpl-2.0", "MPL-2.0", "share-alike"),
        ("cc-by-nc-4.0", "CC-BY-NC-4.0", "non-commercial"),
        ("CC-BY-NC-SA-4.0", "CC-BY-NC-SA-4.0", "non-commercial"),
        ("cc-by-nc-nd-4.0", "CC-BY-NC-ND-4.0", "non-commercial"),
        ("cc-by-nd-4.0", "CC-BY-ND-4.0", "no-derivatives"),
        ("openrail", "LicenseRef-OpenRAIL", "restricted"),
        ("bigscience-openrail-m", "LicenseRef-BigScience-OpenRAIL-M", "restricted"),
        ("creativeml-openrail-m", "LicenseRef-CreativeML-OpenRAIL-M", "restricted"),
        ("llama3.1", "LicenseRef-Llama3.1", "restricted"),
        ("gemma", "LicenseRef-Gemma", "restricted"),
        ("LicenseRef-Gemma", "LicenseRef-Gemma", "restricted"),
    ],
)
def test_spdx_and_hub_ids_are_classified_and_count_as_spdx(
    stated: str, spdx: str, cls: str
) -> None:
    info = classify_licence(stated)
    assert (info.spdx, info.licence_class, info.is_spdx, info.research_only) == (
        spdx,
        cls,
        True,
        False,
    )
    assert info.shown == spdx


@pytest.mark.parametrize(
    "stated",
    [
        "for research/educational use only",
        "Research use only",
        "academic use",
        "Apache-2.0 for research purposes",  # an SPDX id in research text is still research-only
        "For non-commercial scientific research",
    ],
)
def test_research_free_text_is_non_commercial_research_only(stated: str) -> None:
    info = classify_licence(stated)
    assert (info.spdx, info.licence_class, info.is_spdx, info.research_only) == (
        None,
        "non-commercial",
        False,
        True,
    )


@pytest.mark.parametrize(
    "stated", ["non-commercial", "Non commercial use", "not for commercial use", "NonCommercial"]
)
def test_non_commercial_free_text(stated: str) -> None:
    info = classify_licence(stated)
    assert (info.licence_class, info.is_spdx, info.research_only) == (
        "non-commercial",
        False,
        False,
    )


@pytest.mark.parametrize(
    ("stated", "spdx", "cls"),
    [
        ("CC BY-NC 4.0", "CC-BY-NC-4.0", "non-commercial"),
        ("CC BY 4.0", "CC-BY-4.0", "permissive"),
        ("Apache License, Version 2.0", "Apache-2.0", "permissive"),
        ("cc_by_sa_4.0", "CC-BY-SA-4.0", "share-alike"),
        ("MIT License", "MIT", "permissive"),
    ],
)
def test_other_spellings_of_table_licences_are_recognised_but_not_spdx(
    stated: str, spdx: str, cls: str
) -> None:
    info = classify_licence(stated)
    assert (info.spdx, info.licence_class, info.is_spdx) == (spdx, cls, False)


@pytest.mark.parametrize(
    ("stated", "cls"),
    [
        ("All rights reserved", "restricted"),
        ("proprietary", "restricted"),
        ("internal use only", "restricted"),
        ("Evaluation only", "restricted"),
        ("other", "unknown"),
        ("unknown", "unknown"),
        ("cc", "unknown"),  # the Hub's "cc" names no particular licence
        ("bsd", "unknown"),
        ("gfdl", "unknown"),  # the Hub's versionless ids name no particular version
        ("gpl", "unknown"),
        ("Zlib-Acme-1.0", "unknown"),
        ("Apache-2.0 OR MIT", "unknown"),  # expressions are not read
        ("public domain", "unknown"),  # free text is never permissive
    ],
)
def test_free_text_is_never_permissive(stated: str, cls: str) -> None:
    info = classify_licence(stated)
    assert (info.spdx, info.licence_class, info.is_spdx) == (None, cls, False)


def test_surrounding_space_is_not_part_of_the_id() -> None:
    assert classify_licence("  MIT \n").spdx == "MIT"


def test_the_table_is_consistent() -> None:
    assert set(SPDX_TABLE.values()) <= set(LICENCE_CLASSES) - {"unknown"}
    assert set(HUB_ALIASES.values()) <= set(SPDX_TABLE)
    # No alias hides a table id of another case, and every id is unique ignoring case.
    keys = [k.casefold() for k in (*SPDX_TABLE, *HUB_ALIASES)]
    assert len(keys) == len(set(keys))
    for spdx in SPDX_TABLE:
        assert canonical_id(spdx.upper()) == spdx
        assert canonical_id(spdx.lower()) == spdx


def test_every_table_id_fits_the_records_licence_pattern() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(SpdxId)
    for spdx in (*SPDX_TABLE, *HUB_ALIASES):
        adapter.validate_python(spdx)
