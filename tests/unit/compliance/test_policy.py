"""The site policy file: the documented example loads, every hostile or wrong file is refused
with what was expected and found (exit 2), the default is the narrowest use."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from appliance.compliance.codes import FINDING_CODES
from appliance.compliance.policy import DEFAULT_POLICY, PolicyFileError, SitePolicy, load_policy
from appliance.exitcodes import ExitCode

REPO = Path(__file__).resolve().parents[3]

GOOD = """\
schema_version: 1
intended_use: research
severity:
  evaluation-missing: refuse
  pii-screening-not-stated: ignore
allowed_licences: [LicenseRef-Gemma, cc-by-nc-4.0]
require_evaluation: false
"""


def write(tmp_path: Path, text: str | bytes, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_a_full_policy_loads(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    assert policy.intended_use == "research"
    assert policy.severity == {"evaluation-missing": "refuse", "pii-screening-not-stated": "ignore"}
    assert policy.allowed_licences == ("LicenseRef-Gemma", "cc-by-nc-4.0")
    assert policy.require_evaluation is False


def test_a_minimal_policy_fills_the_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "schema_version: 1\nintended_use: non-commercial\n"))
    assert policy == SitePolicy(schema_version=1, intended_use="non-commercial")
    assert (policy.severity, policy.allowed_licences, policy.require_evaluation) == ({}, (), False)


def test_the_default_policy_is_commercial_without_overrides() -> None:
    assert DEFAULT_POLICY.intended_use == "commercial"
    assert (DEFAULT_POLICY.severity, DEFAULT_POLICY.allowed_licences) == ({}, ())
    assert DEFAULT_POLICY.require_evaluation is False


def test_the_documented_example_loads(tmp_path: Path) -> None:
    doc = (REPO / "docs/compliance.md").read_text()
    example = re.search(r"```yaml\n(schema_version: 1\n.*?)```", doc, re.S)
    assert example is not None, "docs/compliance.md has no policy example"
    policy = load_policy(write(tmp_path, example.group(1)))
    assert policy.intended_use == "commercial"


def test_every_code_the_docs_list_is_a_code_and_every_code_is_documented() -> None:
    doc = (REPO / "docs/compliance.md").read_text()
    section = doc.split("## The findings\n", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.M))
    assert table == set(FINDING_CODES)


# Each hostile or wrong file -> what the message must say.
BAD: dict[str, tuple[str | bytes, str]] = {
    "unknown-key": (
        "schema_version: 1\nintended_use: research\nallowed_licenses: [MIT]\n",
        "unknown key `allowed_licenses`; did you mean `allowed_licences`?",
    ),
    "unknown-use": (
        "schema_version: 1\nintended_use: personal\n",
        "`intended_use` has an unknown value: expected one of 'commercial', 'non-commercial'"
        " or 'research', found string \"personal\"",
    ),
    "missing-use": ("schema_version: 1\n", "missing required key `intended_use`"),
    "wrong-version": (
        "schema_version: 2\nintended_use: research\n",
        "`schema_version` has an unknown value: expected one of 1, found number 2",
    ),
    "version-as-string": (
        "schema_version: '1'\nintended_use: research\n",
        '`schema_version` has an unknown value: expected one of 1, found string "1"',
    ),
    "unknown-code": (
        "schema_version: 1\nintended_use: research\nseverity: {licence-not-spdxx: warn}\n",
        "`severity`: unknown finding code 'licence-not-spdxx'; did you mean `licence-not-spdx`?",
    ),
    "unknown-action": (
        "schema_version: 1\nintended_use: research\nseverity: {record-missing: allow}\n",
        "`severity.record-missing` has an unknown value: expected one of 'warn', 'refuse' or"
        " 'ignore', found string \"allow\"",
    ),
    "severity-as-list": (
        "schema_version: 1\nintended_use: research\nseverity: [record-missing]\n",
        "`severity` has the wrong type: expected an object, found an array of 1 item",
    ),
    "require-as-string": (
        "schema_version: 1\nintended_use: research\nrequire_evaluation: 'yes please'\n",
        "`require_evaluation`",
    ),
    "licence-free-text": (
        "schema_version: 1\nintended_use: research\nallowed_licences: ['research use only']\n",
        "`allowed_licences[0]`: String should match pattern",
    ),
    "licence-as-string": (
        "schema_version: 1\nintended_use: research\nallowed_licences: MIT\n",
        '`allowed_licences` has the wrong type: expected an array, found string "MIT"',
    ),
    "licence-repeated": (
        "schema_version: 1\nintended_use: research\nallowed_licences: [MIT, MIT]\n",
        "`allowed_licences` repeats MIT",
    ),
    "placeholder-licence": (
        "schema_version: 1\nintended_use: research\nallowed_licences: [MIT, Other]\n",
        "`allowed_licences` lists Other, which names no particular licence",
    ),
    "contradiction": (
        "schema_version: 1\nintended_use: research\nrequire_evaluation: true\n"
        "severity: {evaluation-missing: warn}\n",
        "`require_evaluation: true` contradicts `severity.evaluation-missing: warn`",
    ),
    "duplicate-key": (
        "schema_version: 1\nintended_use: research\nintended_use: commercial\n",
        "duplicate key 'intended_use' (first given at line 2)",
    ),
    "not-a-mapping": (
        "- schema_version: 1\n",
        "expected a YAML mapping with schema_version and intended_use; found a list",
    ),
    "empty": ("", "expected a YAML mapping with schema_version and intended_use; found an empty"),
    "not-yaml": ("schema_version: [1\n", "not valid YAML"),
    "python-tag": (
        "schema_version: 1\nintended_use: !!python/object/apply:os.system ['true']\n",
        "not valid YAML",
    ),
    "alias-bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "schema_version: 1\nintended_use: research\n",
        "an alias expansion bomb",
    ),
    "deep-nesting": ("x: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than"),
    "huge": (
        "schema_version: 1\nintended_use: research\n" + "# padding\n" * 120_000,
        "the site policy is larger than 1048576 bytes",
    ),
    "not-utf8": (b"schema_version: 1\nintended_use: r\xe9search\n", "UTF-8"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_policy_file_is_refused_with_its_reason(tmp_path: Path, name: str) -> None:
    text, expected = BAD[name]
    path = write(tmp_path, text)
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert expected in caught.value.message
    assert str(path) in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_wrong_value_points_at_the_documentation(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError) as caught:
        load_policy(write(tmp_path, BAD["unknown-use"][0]))
    assert caught.value.hint == "The format is documented in docs/compliance.md."


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError) as caught:
        load_policy(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_directory_or_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="a directory"):
        load_policy(tmp_path)
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    with pytest.raises(PolicyFileError, match=r"named pipe \(FIFO\)"):
        load_policy(fifo)


def test_the_policy_is_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        DEFAULT_POLICY.intended_use = "research"  # type: ignore[misc]
