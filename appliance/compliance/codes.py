"""The finding codes of the compliance checks, in one place: the checks emit them, the
site policy names them (``severity``), the documentation lists them (docs/compliance.md).

A code is part of the site policy's format: renaming one breaks policy files, so codes
are only ever added.
"""

from __future__ import annotations

import typing
from typing import Literal

FindingCode = Literal[
    "record-missing",
    "licence-not-stated",
    "licence-not-spdx",
    "licence-not-permissive",
    "base-model-not-stated",
    "base-model-mismatch",
    "evaluation-missing",
    "pii-screening-not-stated",
    "tdm-measures-not-stated",
    "illegal-content-measures-not-stated",
    "field-not-stated",
    "crawled-without-domains",
]
FINDING_CODES: tuple[FindingCode, ...] = typing.get_args(FindingCode)

# The codes whose findings are about one licence (``allowed_licences`` turns them into ignore).
LICENCE_CODES: frozenset[FindingCode] = frozenset({"licence-not-spdx", "licence-not-permissive"})
