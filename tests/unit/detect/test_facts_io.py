"""load_facts / dump_facts_json: round trips of saved facts, and one bad file per failure mode."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest

from appliance.detect.facts import HostFacts, dump_facts_json
from appliance.detect.facts_file import load_facts
from appliance.detect.host import detect_host
from appliance.errors import FactsFileError
from appliance.exitcodes import ExitCode

FACTS = Path(__file__).resolve().parents[2] / "fixtures" / "facts"
BAD = FACTS / "bad"
DOCS = Path(__file__).resolve().parents[3] / "docs"

GOOD = sorted(p.name for p in FACTS.glob("*.json"))


def test_expected_fixture_files_exist() -> None:
    # The profile-selection tests use these exact names.
    assert set(GOOD) >= {
        "h100x8.json",
        "h100x8-2nodes.json",
        "a100-80gb.json",
        "a100-40gb.json",
        "rtx4090.json",
        "rtx4090x2.json",
        "cpu-avx512.json",
        "cpu-avx2.json",
        "nvml-missing.json",
        "nvml-mismatch.json",
    }


@pytest.mark.parametrize("name", GOOD)
def test_saved_facts_load_and_dump_back_identically(name: str) -> None:
    text = (FACTS / name).read_text("utf-8")
    hosts = load_facts(FACTS / name)
    assert all(isinstance(h, HostFacts) for h in hosts)
    cluster = text.lstrip().startswith("[")
    assert dump_facts_json(hosts if cluster else hosts[0]) == text


def test_cluster_file_is_two_distinct_hosts() -> None:
    hosts = load_facts(FACTS / "h100x8-2nodes.json")
    assert [h.hostname for h in hosts] == ["dgx-h100-a", "dgx-h100-b"]
    assert all(len(h.gpu.gpus) == 8 for h in hosts)


def test_loaded_values_have_the_dataclass_types() -> None:
    (host,) = load_facts(FACTS / "h100x8.json")
    gpu = host.gpu.gpus[0]
    assert gpu.compute_capability == (9, 0)
    assert isinstance(host.gpu.links, tuple) and isinstance(host.gpu.links[0], tuple)
    assert host.gpu.links[0][1] == "NV"
    assert host.gpu.usable


def test_round_trip_of_this_host(tmp_path: Path) -> None:
    facts = detect_host()
    path = tmp_path / "host.json"
    path.write_text(dump_facts_json(facts))
    assert load_facts(path) == (facts,)


def test_dump_is_stable(tmp_path: Path) -> None:
    (host,) = load_facts(FACTS / "rtx4090.json")
    text = dump_facts_json(host)
    assert text.endswith("}\n")
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert (
        dump_facts_json([host])
        == "[\n"
        + "\n".join("  " + line if line else line for line in text.rstrip("\n").split("\n"))
        + "\n]\n"
    )


# --------------------------------------------------------------------------- bad files

# file -> phrases the message must contain (what, where, found, what to do)
BAD_FILES: dict[str, list[str]] = {
    "empty.json": ["is empty", "appliance detect --json"],
    "truncated.json": ["not valid JSON", "line 42", "looks truncated", "Copy it again"],
    "malformed.json": ["not valid JSON", "line 66, column 28"],
    "not-utf8.json": ["not UTF-8", "0xe9"],
    "utf16.json": ["UTF-16", "UTF-8", "PowerShell"],
    "schema-version-future.json": [
        "schema_version 2",
        "reads schema_version 1",
        "Upgrade appliance",
    ],
    "unknown-key.json": [
        "unknown key `gpu.gpus[0].memory_totl_bytes`",
        "did you mean `memory_total_bytes`?",
    ],
    "wrong-type.json": [
        "`gpu.gpus[0].memory_total_bytes` has the wrong type",
        "expected an integer",
        'found string "24GB"',
    ],
    "wrong-type-cc.json": [
        "`gpu.gpus[0].compute_capability`",
        "expected an array",
        'found string "8.9"',
    ],
    "bad-status.json": ["`gpu.status`", "'no-nvidia-device'", 'found string "OK"'],
    "missing-key.json": ["missing required key `memory`"],
    "empty-list.json": ["empty list", "at least one host"],
    "top-level-string.json": ['string "ws-rtx4090"', "expected a host object or a list"],
    "duplicate-hostnames.json": ["'ws-rtx4090' twice", "hosts [0] and [1]"],
}


def test_every_bad_file_is_covered() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_facts_file_is_rejected_clearly(name: str) -> None:
    with pytest.raises(FactsFileError) as caught:
        load_facts(BAD / name)
    error = caught.value
    text = str(error)
    assert text.startswith(f"Facts file {BAD / name} ")
    for phrase in BAD_FILES[name]:
        assert phrase in text, f"{phrase!r} not in {text!r}"
    assert error.hint, "every message says what to do"
    assert error.exit_code == ExitCode.USAGE
    assert "Traceback" not in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FactsFileError, match=r"does not exist") as caught:
        load_facts(tmp_path / "host.json")
    assert "appliance detect --json" in str(caught.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(FactsFileError, match="found a directory"):
        load_facts(tmp_path)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(data))
    return path


def _host() -> dict[str, typing.Any]:
    data: dict[str, typing.Any] = json.loads((FACTS / "rtx4090.json").read_text("utf-8"))
    return data


def test_older_schema_version_says_rerun_detect(tmp_path: Path) -> None:
    host = _host() | {"schema_version": 0}
    with pytest.raises(FactsFileError, match="schema_version 0") as caught:
        load_facts(_write(tmp_path, host))
    assert "Re-run `appliance detect --json`" in str(caught.value)


def test_schema_version_in_a_cluster_names_the_host(tmp_path: Path) -> None:
    second = _host() | {"hostname": "other", "schema_version": 3}
    with pytest.raises(FactsFileError, match=r"schema_version 3 \(host \[1\]\)"):
        load_facts(_write(tmp_path, [_host(), second]))


@pytest.mark.parametrize(
    ("path", "value", "found"),
    [
        (("cpu", "logical_cores"), 32.0, "number 32.0"),
        (("cpu", "logical_cores"), "32", 'string "32"'),
        (("memory", "total_bytes"), True, "boolean true"),
        (("gpu", "gpus", 0, "index"), None, "null"),
    ],
)
def test_no_coercion(
    path: tuple[str | int, ...], value: object, found: str, tmp_path: Path
) -> None:
    host = _host()
    node: typing.Any = host
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    where = re.sub(r"\.(\d+)", r"[\1]", ".".join(str(p) for p in path))
    with pytest.raises(FactsFileError) as caught:
        load_facts(_write(tmp_path, host))
    assert f"`{where}` has the wrong type" in str(caught.value)
    assert f"found {found}" in str(caught.value)


def test_problems_in_a_cluster_carry_the_host_index(tmp_path: Path) -> None:
    second = _host() | {"hostname": "other"}
    second["cpu"]["flags"] = "avx2"
    with pytest.raises(FactsFileError, match=r"`\[1\]\.cpu\.flags` has the wrong type"):
        load_facts(_write(tmp_path, [_host(), second]))


def test_many_problems_are_listed_and_capped(tmp_path: Path) -> None:
    host = _host()
    for key in ("model", "architecture", "physical_cores", "logical_cores", "flags"):
        host["cpu"][key] = {}
    host["memory"]["total_bytes"] = "x"
    with pytest.raises(FactsFileError) as caught:
        load_facts(_write(tmp_path, host))
    text = str(caught.value)
    assert "(6 problems)" in text
    assert text.count("\n  - ") == 5
    assert "... and 1 more" in text


def test_unknown_top_level_key_lists_allowed_keys_when_nothing_is_close(tmp_path: Path) -> None:
    with pytest.raises(FactsFileError) as caught:
        load_facts(_write(tmp_path, _host() | {"zzz": 1}))
    assert "unknown key `zzz` (keys allowed here: hostname, collected_at" in str(caught.value)


def test_list_with_a_non_object(tmp_path: Path) -> None:
    with pytest.raises(FactsFileError, match=r"has number 3 at \[1\], expected a host object"):
        load_facts(_write(tmp_path, [_host(), 3]))


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"a": NaN}', "NaN is not valid JSON"),
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
    ],
)
def test_json_that_python_would_accept_is_rejected(text: str, phrase: str, tmp_path: Path) -> None:
    path = tmp_path / "facts.json"
    path.write_text(text)
    with pytest.raises(FactsFileError, match=phrase):
        load_facts(path)


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "facts.json"
    path.write_bytes(b"\xef\xbb\xbf" + (FACTS / "rtx4090.json").read_bytes())
    assert load_facts(path)[0].hostname == "ws-rtx4090"


# --------------------------------------------------------------------------- docs


def _all_fields(cls: type, seen: set[str]) -> None:
    for f in dataclasses.fields(cls):
        seen.add(f.name)
        hint = typing.get_type_hints(cls)[f.name]
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
                _all_fields(candidate, seen)


def test_docs_name_every_field() -> None:
    fields: set[str] = set()
    _all_fields(HostFacts, fields)
    text = (DOCS / "facts.md").read_text("utf-8")
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"docs/facts.md does not document: {missing}"


def test_docs_example_is_the_fixture() -> None:
    text = (DOCS / "facts.md").read_text("utf-8")
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert example == (FACTS / "rtx4090.json").read_text("utf-8")
