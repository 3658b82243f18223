"""The audit chain finds every edited, removed, inserted or reordered record."""

from __future__ import annotations

import json

from appliance.audit import GENESIS, chain_record, verify_chain


def log(n: int = 4) -> list[str]:
    lines, previous = [], GENESIS
    for i in range(n):
        entry = chain_record({"event": "deploy", "version": i}, previous)
        previous = entry["hash"]
        lines.append(json.dumps(entry, sort_keys=True))
    return lines


def test_a_clean_chain_verifies() -> None:
    report = verify_chain("\n".join(log()) + "\n")
    assert report.ok and report.records == 4 and report.last_hash == json.loads(log()[-1])["hash"]


def test_edited_record() -> None:
    lines = log()
    lines[1] = lines[1].replace('"version": 1', '"version": 9')
    report = verify_chain("\n".join(lines))
    assert report.problems == ("line 2: record edited: its content does not match its hash",)


def test_removed_record() -> None:
    lines = log()
    del lines[1]
    assert any("line 2: chain broken" in p for p in verify_chain("\n".join(lines)).problems)


def test_reordered_records() -> None:
    lines = log()
    lines[1], lines[2] = lines[2], lines[1]
    problems = verify_chain("\n".join(lines)).problems
    assert any("line 2: chain broken" in p for p in problems) and any(
        "line 3: chain broken" in p for p in problems
    )


def test_inserted_forged_record() -> None:
    lines = log()
    forged = chain_record({"event": "deploy", "version": 99}, json.loads(lines[0])["hash"])
    lines.insert(1, json.dumps(forged))
    assert any("line 3: chain broken" in p for p in verify_chain("\n".join(lines)).problems)


def test_garbage_lines() -> None:
    problems = verify_chain("{nope\n\n" + log(1)[0]).problems
    assert problems[0].startswith("line 1: not JSON") and problems[1] == "line 2: empty line"
