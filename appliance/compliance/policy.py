"""The site policy: what the site declared it uses models for, and how findings are acted on.

A small strict YAML file (docs/compliance.md), read through the strict bounded loader
(``appliance.yaml_files``: regular files only, at most 1 MiB, no duplicate keys, no
alias bombs, bounded nesting) and validated whole: an unknown key, a wrong type, an
unknown finding code or action is a ``PolicyFileError`` (exit 2) naming the file, the
key, what was expected and what was found. Nothing is guessed.

``DEFAULT_POLICY`` applies when a site gives no policy file: ``intended_use:
commercial``, no overrides, no allowed licences, evaluation not required. Commercial is
the default because it is the narrowest grant: data licensed for research or
non-commercial use only is refused on a site that never said what it does, and the
site says so by writing a policy, not by being silently allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.compliance.codes import FINDING_CODES, FindingCode
from appliance.errors import InputError
from appliance.yaml_files import load_yaml, validate_model

POLICY_SCHEMA_VERSION: Literal[1] = 1
DOC = "docs/compliance.md"
EXPECTED = "schema_version and intended_use"

IntendedUse = Literal["commercial", "non-commercial", "research"]
Action = Literal["warn", "refuse", "ignore"]
# An SPDX id, a LicenseRef-<name>, or a Hub licence id (the record's SpdxId pattern).
LicenceId = Annotated[
    str,
    Field(pattern=r"^(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*)$", max_length=128),
]
# Ids that name no particular licence; allowing one would allow whatever hides behind it.
PLACEHOLDER_IDS = frozenset(
    {"other", "unknown", "none", "noassertion", "custom", "proprietary", "cc", "bsd", "gpl",
     "lgpl", "agpl", "gfdl"}
)  # fmt: skip


class PolicyFileError(InputError):
    """The site policy file is unreadable or invalid (exit 2)."""


class SitePolicy(BaseModel):
    """What the site declared (``intended_use``) and how it acts on findings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    intended_use: IntendedUse
    # Per finding code, the action instead of the default (the finding's severity).
    severity: dict[FindingCode, Action] = Field(default_factory=dict)
    # Licences the site has read and accepts for its use: their licence findings are ignored.
    allowed_licences: tuple[LicenceId, ...] = Field(default=(), max_length=256)
    # A record without evaluation results is an error (refused), not a warning.
    require_evaluation: bool = False

    @field_validator("severity", mode="before")
    @classmethod
    def _known_codes(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for code in value:
                if code not in FINDING_CODES:
                    close = difflib.get_close_matches(str(code), FINDING_CODES, n=1, cutoff=0.6)
                    mean = f"; did you mean `{close[0]}`?" if close else ""
                    raise ValueError(
                        f"unknown finding code {code!r}{mean} (the codes: {', '.join(FINDING_CODES)})"
                    )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SitePolicy:
        action = self.severity.get("evaluation-missing")
        if self.require_evaluation and action in ("warn", "ignore"):
            raise ValueError(
                "`require_evaluation: true` contradicts `severity.evaluation-missing:"
                f" {action}`: keep one of the two"
            )
        vague = [x for x in self.allowed_licences if x.casefold() in PLACEHOLDER_IDS]
        if vague:
            raise ValueError(
                f"`allowed_licences` lists {', '.join(vague)}, which names no particular licence"
                " (it would accept every licence stated that way): list the licence's own id"
            )
        repeated = sorted({x for x in self.allowed_licences if self.allowed_licences.count(x) > 1})
        if repeated:
            raise ValueError(f"`allowed_licences` repeats {', '.join(repeated)}")
        return self


DEFAULT_POLICY = SitePolicy(schema_version=POLICY_SCHEMA_VERSION, intended_use="commercial")


def parse_policy(data: Any, *, source: str) -> SitePolicy:
    """Parsed YAML (or JSON) validated into a ``SitePolicy``; ``source`` names it in errors."""
    return validate_model(
        data, SitePolicy, "site policy", PolicyFileError, source=source, expected=EXPECTED, doc=DOC
    )


def load_policy(path: Path) -> SitePolicy:
    """Read and validate the site policy file at ``path`` (strict YAML; JSON is YAML too)."""
    return parse_policy(load_yaml(Path(path), "site policy", PolicyFileError), source=str(path))
