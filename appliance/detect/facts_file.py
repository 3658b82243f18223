"""Read saved facts files (the JSON that ``appliance detect --json`` prints).

Job: ``load_facts`` reads a
file holding one host object or a non-empty list of hosts (a cluster) and
validates it strictly against ``appliance.detect.facts``; ``facts_json_schema`` is
the published schema (``docs/facts.schema.json``, drift-tested).

Invariants:
- Every problem with a file raises ``FactsFileError`` whose message names the
  file, the place (``gpu.gpus[0].memory_total_bytes``), what was expected,
  what was found and what to do; never a traceback.
- The file is read through ``input_files.read_input`` (regular files only, at most
  ``LIMITS["facts"]`` bytes, never blocking) and its JSON nests at most
  ``MAX_JSON_DEPTH`` levels: the facts-specific wording of JSON errors
  (UTF-16, truncation) is why this module words its own decode errors.
- Validation is strict: unknown keys, coercion (``"8"`` for 8, ``8.0`` for 8,
  ``true`` for 1) and a different ``schema_version`` are all rejected.
- The writer is ``appliance.detect.facts.dump_facts_json`` (one writer, no pydantic).
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError

from appliance.detect.facts import FACTS_SCHEMA_VERSION, HostFacts
from appliance.errors import FactsFileError
from appliance.input_files import MAX_JSON_DEPTH, json_depth, read_input
from appliance.schema_errors import describe_errors, describe_value

_MAX_REPORTED = 5
_HINT = (
    "Facts files are written by `appliance detect --json > FILE` on the host itself; "
    "re-run it there rather than editing the file (fields: docs/facts.md)."
)


def facts_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a facts file: one host object or a non-empty list."""

    file_type = HostFacts | typing.Annotated[list[HostFacts], Field(min_length=1)]
    schema: dict[str, Any] = TypeAdapter(file_type).json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"appliance host facts, schema_version {FACTS_SCHEMA_VERSION}",
        "description": (
            "Output of `appliance detect --json`: one host object, or a list of host "
            "objects for a cluster. Sizes are bytes. See docs/facts.md."
        ),
        **schema,
    }


# --------------------------------------------------------------------------- reading


def _fail(path: Path, problem: str, hint: str | None = _HINT) -> FactsFileError:
    return FactsFileError(f"Facts file {path} {problem}", hint=hint)


def _read_text(path: Path) -> str:
    if not os.path.lexists(path):
        raise _fail(
            path,
            "does not exist.",
            "Create it on the host with `appliance detect --json > FILE` and copy it here.",
        )
    # Regular files only, bounded, never blocking (a FIFO or /dev/zero is refused by type).
    raw = read_input(path, "facts file", limit="facts", error=FactsFileError)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _fail(
            path,
            "is UTF-16 encoded, expected UTF-8 (PowerShell's `>` writes UTF-16).",
            "Save it as UTF-8, e.g. `Get-Content FILE | Set-Content -Encoding utf8 NEW`, "
            "or copy the file produced on the host unchanged.",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            path,
            f"is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start}).",
            "Copy the file produced by `appliance detect --json` unchanged (binary-safe).",
        ) from exc
    return text.removeprefix("\ufeff")  # a UTF-8 BOM is harmless: tolerate it


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key: key {key!r} appears twice in one object")
        result[key] = value
    return result


def _parse_json(path: Path, text: str) -> Any:
    if not text.strip():
        raise _fail(
            path,
            "is empty, expected the JSON printed by `appliance detect --json`.",
            "Re-run `appliance detect --json > FILE` on the host (check that it exited with 0).",
        )
    try:
        document = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except RecursionError:
        raise _fail(path, f"is nested deeper than {MAX_JSON_DEPTH} levels; refused.") from None
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        where = f"line {exc.lineno}, column {exc.colno}"
        # Some decoder messages already end in "at" ("Unterminated string starting at").
        detail = f"is not valid JSON: {exc.msg.removesuffix(' at')} at {where}"
        if truncated:
            raise _fail(
                path,
                f"{detail}; the file looks truncated (it ends before the JSON does).",
                "Copy it again, or re-run `appliance detect --json > FILE` on the host.",
            ) from exc
        raise _fail(path, f"{detail}.") from exc
    except ValueError as exc:
        raise _fail(path, f"is not valid JSON: {exc}.") from exc
    if json_depth(document) > MAX_JSON_DEPTH:
        raise _fail(path, f"is nested deeper than {MAX_JSON_DEPTH} levels; refused.")
    return document


def _check_schema_version(path: Path, host: dict[str, Any], where: str) -> None:
    found = host.get("schema_version", FACTS_SCHEMA_VERSION)
    if isinstance(found, bool) or not isinstance(found, int) or found == FACTS_SCHEMA_VERSION:
        return  # right version, or a type error that validation reports with the others
    if found > FACTS_SCHEMA_VERSION:
        todo = (
            "Upgrade appliance here to the version that wrote it, or re-run "
            "`appliance detect --json` on the host with this appliance version."
        )
    else:
        todo = "Re-run `appliance detect --json` on the host with this appliance version."
    raise _fail(
        path,
        f"has schema_version {found}{where}, but this appliance reads schema_version "
        f"{FACTS_SCHEMA_VERSION}.",
        todo,
    )


def load_facts(path: Path) -> tuple[HostFacts, ...]:
    """Load and strictly validate a facts file: one host, or a non-empty list (a cluster).

    Raises ``FactsFileError`` for every problem (see the module docstring).
    """

    document = _parse_json(path, _read_text(path))

    if isinstance(document, dict):
        hosts: list[Any] = [document]
        prefixes = [""]
    elif isinstance(document, list):
        if not document:
            raise _fail(
                path,
                "is an empty list; a cluster file needs at least one host object.",
                "Put the `appliance detect --json` output of each node in the list.",
            )
        hosts = document
        prefixes = [f"[{i}]" for i in range(len(document))]
    else:
        raise _fail(
            path,
            f"holds {describe_value(document)}, expected a host object or a list of host objects.",
        )

    for host, prefix in zip(hosts, prefixes, strict=True):
        if not isinstance(host, dict):
            raise _fail(path, f"has {describe_value(host)} at {prefix}, expected a host object.")
        _check_schema_version(path, host, f" (host {prefix})" if prefix else "")

    adapter = TypeAdapter(HostFacts)
    problems: list[str] = []
    result: list[HostFacts] = []
    for host, prefix in zip(hosts, prefixes, strict=True):
        try:
            # JSON mode on purpose: strict JSON validation builds tuples from arrays,
            # which strict Python-mode validation would refuse.
            result.append(adapter.validate_json(json.dumps(host)))
        except ValidationError as exc:
            problems.extend(describe_errors(exc, HostFacts, prefix))
    if problems:
        shown = problems[:_MAX_REPORTED]
        more = len(problems) - len(shown)
        if len(problems) == 1:
            raise _fail(path, f"does not match the facts schema: {problems[0]}.")
        lines = "\n".join(f"  - {p}" for p in shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise _fail(
            path, f"does not match the facts schema ({len(problems)} problems):\n{lines}{tail}"
        )

    seen: dict[str, int] = {}
    for index, host_facts in enumerate(result):
        first = seen.setdefault(host_facts.hostname, index)
        if first != index:
            raise _fail(
                path,
                f"lists hostname {host_facts.hostname!r} twice (hosts [{first}] and "
                f"[{index}]); every node of a cluster must be a different host.",
                "Run `appliance detect --json` on each node and put each output in the list once.",
            )
    return tuple(result)
