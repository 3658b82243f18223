"""Classify a licence as a transparency record states it: which SPDX id, and what it allows.

Where the table comes from: the identifiers are those of the SPDX License List
(https://spdx.org/licenses/), restricted to the licences models and datasets on the
Hugging Face Hub commonly carry, plus the Hub's own lowercase licence ids
(``apache-2.0``, ``cc-by-nc-4.0``, ``odc-by``, ``llama3``, ...; the Hub's model-card
metadata specification) mapped to the SPDX spelling. Licences the SPDX list does not
have (the OpenRAIL family, the Llama and Gemma terms) carry a ``LicenseRef-`` id of
this table's own. Each entry's class was assigned by reading the licence's grant
(commercial use allowed? derivatives? share-alike?); change an entry only after
reading the licence text again, and say why in the commit.

The classes:

- ``permissive``: use, change and redistribute, also commercially, keeping notices.
- ``share-alike``: as permissive, but what is derived and distributed must carry the
  same licence (copyleft: GPL, CC-BY-SA, ODbL, MPL at file level).
- ``non-commercial``: commercial use is not granted (CC-BY-NC-*, "research use only").
- ``no-derivatives``: changed versions may not be distributed (CC-BY-ND-*).
- ``restricted``: the grant is tied to conditions a person must read before the site
  relies on it: behavioural-use clauses (OpenRAIL), acceptable-use policies and user
  caps (Llama, Gemma), "all rights reserved", "internal use only".
- ``unknown``: not in the table and not recognisable. Unknown means unknown: it is a
  finding for the site to resolve, never taken as allowed.

SPDX ids are matched case-insensitively (as the SPDX specification says). Free text
is never classified as permissive: text that mentions research, academic or
educational use, or non-commercial use, is ``non-commercial``; text that reserves
rights or limits use is ``restricted``; text that names a table licence in another
spelling ("CC BY-NC 4.0", "Apache 2.0") gets that licence's class, and is still
reported as not an SPDX id. Pure: no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

LicenceClass = Literal[
    "permissive", "share-alike", "non-commercial", "no-derivatives", "restricted", "unknown"
]
LICENCE_CLASSES: tuple[LicenceClass, ...] = (
    "permissive",
    "share-alike",
    "non-commercial",
    "no-derivatives",
    "restricted",
    "unknown",
)

# SPDX id (or this table's LicenseRef) -> class. Reviewed entries only; see the docstring.
SPDX_TABLE: dict[str, LicenceClass] = {
    # permissive software licences
    "Apache-2.0": "permissive",
    "MIT": "permissive",
    "BSD-2-Clause": "permissive",
    "BSD-3-Clause": "permissive",
    "BSD-3-Clause-Clear": "permissive",
    "ISC": "permissive",
    "Zlib": "permissive",
    "BSL-1.0": "permissive",
    "Unlicense": "permissive",
    "0BSD": "permissive",
    # permissive data and content licences
    "CC0-1.0": "permissive",
    "CC-BY-3.0": "permissive",
    "CC-BY-4.0": "permissive",
    "ODC-By-1.0": "permissive",
    "PDDL-1.0": "permissive",
    "CDLA-Permissive-1.0": "permissive",
    "CDLA-Permissive-2.0": "permissive",
    # share-alike (copyleft)
    "CC-BY-SA-3.0": "share-alike",
    "CC-BY-SA-4.0": "share-alike",
    "ODbL-1.0": "share-alike",
    "CDLA-Sharing-1.0": "share-alike",
    "GPL-2.0-only": "share-alike",
    "GPL-2.0-or-later": "share-alike",
    "GPL-3.0-only": "share-alike",
    "GPL-3.0-or-later": "share-alike",
    "LGPL-2.1-only": "share-alike",
    "LGPL-3.0-only": "share-alike",
    "AGPL-3.0-only": "share-alike",
    "MPL-2.0": "share-alike",
    "EPL-2.0": "share-alike",
    "EUPL-1.2": "share-alike",
    "GFDL-1.3-only": "share-alike",
    # non-commercial
    "CC-BY-NC-3.0": "non-commercial",
    "CC-BY-NC-4.0": "non-commercial",
    "CC-BY-NC-SA-3.0": "non-commercial",
    "CC-BY-NC-SA-4.0": "non-commercial",
    "CC-BY-NC-ND-3.0": "non-commercial",
    "CC-BY-NC-ND-4.0": "non-commercial",
    # no derivatives
    "CC-BY-ND-4.0": "no-derivatives",
    # use-restricted model licences (no SPDX id; this table's LicenseRef ids)
    "LicenseRef-OpenRAIL": "restricted",
    "LicenseRef-OpenRAIL-M": "restricted",
    "LicenseRef-OpenRAIL-PlusPlus": "restricted",
    "LicenseRef-BigScience-OpenRAIL-M": "restricted",
    "LicenseRef-BigScience-BLOOM-RAIL-1.0": "restricted",
    "LicenseRef-BigCode-OpenRAIL-M": "restricted",
    "LicenseRef-CreativeML-OpenRAIL-M": "restricted",
    "LicenseRef-Llama2": "restricted",
    "LicenseRef-Llama3": "restricted",
    "LicenseRef-Llama3.1": "restricted",
    "LicenseRef-Llama3.2": "restricted",
    "LicenseRef-Llama3.3": "restricted",
    "LicenseRef-Llama4": "restricted",
    "LicenseRef-Gemma": "restricted",
}

# Hub licence ids (and deprecated SPDX ids) that are not an SPDX id of the table in
# another case -> the table's id. Ids equal to a table id but for case need no entry.
HUB_ALIASES: dict[str, str] = {
    "odc-by": "ODC-By-1.0",
    "odbl": "ODbL-1.0",
    "pddl": "PDDL-1.0",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-3.0": "GPL-3.0-only",
    "gpl-3.0+": "GPL-3.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-3.0": "LGPL-3.0-only",
    "agpl-3.0": "AGPL-3.0-only",
    "openrail": "LicenseRef-OpenRAIL",
    "openrail-m": "LicenseRef-OpenRAIL-M",
    "openrail++": "LicenseRef-OpenRAIL-PlusPlus",
    "bigscience-openrail-m": "LicenseRef-BigScience-OpenRAIL-M",
    "bigscience-bloom-rail-1.0": "LicenseRef-BigScience-BLOOM-RAIL-1.0",
    "bigcode-openrail-m": "LicenseRef-BigCode-OpenRAIL-M",
    "creativeml-openrail-m": "LicenseRef-CreativeML-OpenRAIL-M",
    "llama2": "LicenseRef-Llama2",
    "llama3": "LicenseRef-Llama3",
    "llama3.1": "LicenseRef-Llama3.1",
    "llama3.2": "LicenseRef-Llama3.2",
    "llama3.3": "LicenseRef-Llama3.3",
    "llama4": "LicenseRef-Llama4",
    "gemma": "LicenseRef-Gemma",
}

_BY_KEY: dict[str, str] = {spdx.casefold(): spdx for spdx in SPDX_TABLE} | {
    alias.casefold(): spdx for alias, spdx in HUB_ALIASES.items()
}

# Free text: research/academic/educational use; non-commercial; reserved or limited use.
_RESEARCH = re.compile(r"\b(research|academic|educational|education|scientific)\b", re.I)
_NON_COMMERCIAL = re.compile(
    r"non[\s_-]?commercial|not\s+for\s+commercial|no\s+commercial"
    r"|commercial\s+(use\s+)?(is\s+)?(prohibited|forbidden|not\s+(permitted|allowed))",
    re.I,
)
_RESTRICTED = re.compile(
    r"all\s+rights\s+reserved|proprietary|confidential|internal\s+use|evaluation\s+(use\s+)?only"
    r"|personal\s+use|no\s+redistribution|not\s+(for\s+)?redistribut|terms\s+of\s+(use|service)"
    r"|\bonly\b",
    re.I,
)
# "CC BY-NC 4.0", "Apache License 2.0", "cc_by_sa_4.0" -> "cc-by-nc-4.0", "apache-2.0", ...
_NOISE = re.compile(r"\blicen[cs]e\b|\bversion\b|\bv(?=\d)", re.I)


@dataclass(frozen=True)
class LicenceInfo:
    """What a stated licence is: ``spdx`` the table's id when recognised (else None),
    ``is_spdx`` whether the statement itself is that id (any case) or a Hub licence id,
    ``research_only`` whether it limits use to research/academic/education, ``reason``
    how it was classified (shown in findings)."""

    stated: str
    spdx: str | None
    licence_class: LicenceClass
    is_spdx: bool
    research_only: bool
    reason: str

    @property
    def shown(self) -> str:
        """The licence as findings name it: the table's id, else the statement."""
        return self.spdx or self.stated


def canonical_id(text: str) -> str | None:
    """The table's id for an SPDX id (any case) or a Hub licence id; None otherwise."""
    return _BY_KEY.get(text.strip().casefold())


def classify_licence(text: str) -> LicenceInfo:
    """Classify one stated licence (an SPDX id, a Hub licence id, or free text)."""
    stated = text.strip()
    spdx = canonical_id(stated)
    if spdx is not None:
        how = "SPDX id" if spdx.casefold() == stated.casefold() else f"Hub licence id for {spdx}"
        return LicenceInfo(stated, spdx, SPDX_TABLE[spdx], True, False, f"{how} in the table")
    research = bool(_RESEARCH.search(stated))
    if research or _NON_COMMERCIAL.search(stated):
        what = "research/academic/educational use" if research else "non-commercial use"
        return LicenceInfo(
            stated, None, "non-commercial", False, research, f"free text limiting it to {what}"
        )
    respelled = canonical_id(_respell(stated))
    if respelled is not None:
        return LicenceInfo(
            stated,
            respelled,
            SPDX_TABLE[respelled],
            False,
            False,
            f"free text naming {respelled}",
        )
    if _RESTRICTED.search(stated):
        return LicenceInfo(stated, None, "restricted", False, False, "free text restricting use")
    return LicenceInfo(stated, None, "unknown", False, False, "not in the table of licences")


def _respell(text: str) -> str:
    words = _NOISE.sub(" ", text)
    return re.sub(r"[\s_,-]+", "-", words.strip()).strip("-")
