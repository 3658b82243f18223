"""The audit log: hash-chained JSON lines, and the check that finds any tampering.

Each record carries ``prev`` (the previous record's ``hash``; 64 zeros for the
first) and ``hash`` = SHA-256 of the record's canonical JSON without ``hash``.
Editing a record breaks its hash; removing or reordering records breaks the
chain of ``prev``. Cutting records off the end leaves a valid, shorter chain:
that is found by comparing with an anchor (count and last hash) kept where the
log's writer cannot rewrite it, ``appliance/deploy/audit_anchor.py`` (docs/audit.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from appliance.errors import InputError
from appliance.input_files import parse_json

GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def chain_record(record: dict[str, Any], previous: str) -> dict[str, Any]:
    entry = {**record, "prev": previous}
    entry["hash"] = record_hash(entry)
    return entry


@dataclass(frozen=True, slots=True)
class AuditReport:
    records: int
    last_hash: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(text: str) -> AuditReport:
    problems: list[str] = []
    previous = GENESIS
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            problems.append(f"line {number}: empty line")
            continue
        try:
            record = parse_json(line, f"line {number}")
        except InputError as exc:  # not JSON, duplicate keys, nested too deep
            problems.append(exc.message.replace(": not valid JSON", ": not JSON", 1))
            continue
        count += 1
        if not isinstance(record, dict) or "hash" not in record or "prev" not in record:
            problems.append(f"line {number}: not an audit record (no hash/prev)")
            continue
        if record["prev"] != previous:
            problems.append(
                f"line {number}: chain broken: prev {str(record['prev'])[:12]}... expected {previous[:12]}... (a record before it was removed, inserted or reordered)"
            )
        if record_hash(record) != record["hash"]:
            problems.append(f"line {number}: record edited: its content does not match its hash")
        previous = str(record["hash"])
    return AuditReport(count, previous, tuple(problems))
