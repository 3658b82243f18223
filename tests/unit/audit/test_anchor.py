"""Audit anchors find records cut off the end of a host's logs (appliance/deploy/audit_anchor.py).

The host side is the real observation script (POSIX sh and awk) run on files in a
temporary directory: ``run_locally_instead_of_ssh`` is a fake of the SSH transport
only, mapping the host's log paths to those files. The anchor file is real.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from appliance.audit import GENESIS, chain_record
from appliance.cli.main import main
from appliance.deploy import audit_anchor, transport
from appliance.errors import AuditAnchorError
from appliance.plan.inventory import HostEntry

HOST = HostEntry(name="gpu1", address="10.0.0.5", roles=["model-server"])


def chain(n: int, start: str = GENESIS, tag: str = "op") -> list[str]:
    lines, previous = [], start
    for i in range(n):
        entry = chain_record({"event": tag, "n": i}, previous)
        previous = entry["hash"]
        lines.append(json.dumps(entry, sort_keys=True))
    return lines


class Host:
    """The host's two logs as local files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = {log: root / log / "audit.jsonl" for log in audit_anchor.LOGS}
        for path in self.paths.values():
            path.parent.mkdir(parents=True)

    def write(self, log: str, lines: list[str]) -> None:
        self.paths[log].write_text("".join(f"{line}\n" for line in lines))

    def lines(self, log: str) -> list[str]:
        return self.paths[log].read_text().splitlines()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    fake = Host(tmp_path / "host")

    def run_locally_instead_of_ssh(
        entry: HostEntry, script: str, *, timeout: float = 60, check: bool = True
    ) -> str:
        for log, path in audit_anchor.LOGS.items():
            script = script.replace(path, str(fake.paths[log]))
        return subprocess.run(
            ["sh", "-c", script], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout

    monkeypatch.setattr(transport, "run", run_locally_instead_of_ssh)
    monkeypatch.setenv(audit_anchor.ENV, str(tmp_path / "state" / "audit-anchors.json"))
    fake.write("deploy", chain(5, tag="deploy"))
    fake.write("gateway", chain(40, tag="gateway.call"))
    return fake


def problems(results: list[audit_anchor.LogCheck]) -> dict[str, str]:
    return {r.log: r.problem for r in results if r.problem is not None}


def anchored(host: Host) -> None:
    assert problems(audit_anchor.check_host(HOST, by="test")) == {}


def test_first_check_anchors_both_logs(host: Host) -> None:
    results = audit_anchor.check_host(HOST, by="deploy")
    assert [r.describe() for r in results] == [
        "deploy log: 5 records, no anchor before this check; anchor now at record 5",
        "gateway log: 40 records, no anchor before this check; anchor now at record 40",
    ]
    path = audit_anchor.anchors_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = audit_anchor.load(path)["gpu1@10.0.0.5"]
    assert saved["deploy"].records == 5
    assert saved["deploy"].last_hash == json.loads(host.lines("deploy")[-1])["hash"]
    assert saved["gateway"].by == "deploy"


def test_appended_records_pass_and_move_the_anchor(host: Host) -> None:
    anchored(host)
    lines = host.lines("deploy")
    host.write("deploy", lines + chain(2, start=json.loads(lines[-1])["hash"]))
    results = audit_anchor.check_host(HOST, by="status")
    assert problems(results) == {}
    assert results[0].moved_to is not None and results[0].moved_to.records == 7


@pytest.mark.parametrize("log", ["deploy", "gateway"])
def test_one_record_cut_off_the_end(host: Host, log: str) -> None:
    anchored(host)
    host.write(log, host.lines(log)[:-1])
    found = problems(audit_anchor.check_host(HOST, by="audit verify"))
    assert list(found) == [log]
    assert "at least 1 record(s) were cut off the end" in found[log]


def test_all_records_cut(host: Host) -> None:
    anchored(host)
    host.write("deploy", [])
    found = problems(audit_anchor.check_host(HOST, by="audit verify"))
    assert "it has 0 records, but 5 were anchored" in found["deploy"]


def test_the_whole_file_removed(host: Host) -> None:
    anchored(host)
    host.paths["gateway"].unlink()
    found = problems(audit_anchor.check_host(HOST, by="audit verify"))
    assert "the log is gone, but 40 records were anchored" in found["gateway"]


def test_replaced_with_a_valid_shorter_chain(host: Host) -> None:
    anchored(host)
    host.write("deploy", chain(3, tag="forged"))  # a chain that verifies on its own
    found = problems(audit_anchor.check_host(HOST, by="audit verify"))
    assert "it has 3 records, but 5 were anchored" in found["deploy"]


def test_cut_and_written_again_to_the_same_length(host: Host) -> None:
    anchored(host)
    lines = host.lines("deploy")[:3]
    host.write("deploy", lines + chain(4, start=json.loads(lines[-1])["hash"], tag="later"))
    found = problems(audit_anchor.check_host(HOST, by="audit verify"))
    assert "record 5 is not the one anchored" in found["deploy"]


def test_a_failed_check_keeps_its_anchor(host: Host) -> None:
    anchored(host)
    before = audit_anchor.load(audit_anchor.anchors_path())["gpu1@10.0.0.5"]["deploy"]
    host.write("deploy", host.lines("deploy")[:2])
    assert problems(audit_anchor.check_host(HOST, by="deploy"))
    # Appending again (the next deploy) does not launder the cut: still reported.
    lines = host.lines("deploy")
    host.write("deploy", lines + chain(5, start=json.loads(lines[-1])["hash"]))
    assert "record 5 is not the one anchored" in problems(
        audit_anchor.check_host(HOST, by="deploy")
    ).get("deploy", "")
    after = audit_anchor.load(audit_anchor.anchors_path())["gpu1@10.0.0.5"]["deploy"]
    assert after == before


def test_after_append_never_raises(host: Host) -> None:
    anchored(host)
    host.write("gateway", [])
    assert any("gateway log: TRUNCATED" in m for m in audit_anchor.after_append(HOST, by="x"))
    audit_anchor.anchors_path().write_text("{not json")
    assert audit_anchor.after_append(HOST, by="x")[0].startswith("audit anchor not updated")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": 2, "hosts": {}}', "not an audit anchors file"),
        (
            '{"format": 1, "hosts": {"h@a": {"deploy": {"records": true, "last_hash": "'
            + "0" * 64
            + '", "at": "x", "by": "y"}}}}',
            "records: integer >= 1",
        ),
        (
            '{"format": 1, "hosts": {"h@a": {"deploy": {"records": 3, "last_hash": "zz",'
            ' "at": "x", "by": "y"}}}}',
            "64 hex digits",
        ),
        ('{"format": 1, "hosts": {"h@a": {"syslog": {}}}}', "expected logs"),
    ],
)
def test_a_corrupt_anchor_file_is_reported_and_kept(
    host: Host, content: str, fragment: str
) -> None:
    path = audit_anchor.anchors_path()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(AuditAnchorError, match=fragment) as caught:
        audit_anchor.check_host(HOST, by="status")
    assert "move it aside" in (caught.value.hint or "")
    assert path.read_text() == content  # the evidence is not overwritten


def test_an_anchor_file_that_is_a_directory(host: Host) -> None:
    audit_anchor.anchors_path().mkdir(parents=True)
    with pytest.raises(AuditAnchorError, match="regular file"):
        audit_anchor.check_host(HOST, by="status")


def test_forget_drops_only_that_host(host: Host) -> None:
    anchored(host)
    other = HostEntry(name="gpu2", address="10.0.0.6", roles=["model-server"])
    audit_anchor.check_host(other, by="test")
    audit_anchor.forget(HOST)
    assert list(audit_anchor.load(audit_anchor.anchors_path())) == ["gpu2@10.0.0.6"]


# --- appliance audit verify --inventory ----------------------------------------------------


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "hosts": [{"name": "gpu1", "address": "10.0.0.5", "roles": ["model-server"]}],
            }
        )
    )
    return path


def verify(inventory: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["audit", "verify", "--inventory", str(inventory)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reports_truncation_with_exit_4(
    host: Host, inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = verify(inventory, capsys)
    assert code == 0, err
    assert "gpu1: 5 records, chain intact" in out
    assert "gpu1: deploy log: 5 records, no anchor before this check; anchor now at record 5" in out
    assert "cannot prove that records appended after the last anchor" in out
    host.write("deploy", host.lines("deploy")[:4])  # still a valid chain
    code, out, err = verify(inventory, capsys)
    assert code == 4
    assert "gpu1: 4 records, chain intact" in out  # the chain alone cannot see it
    assert "gpu1: deploy log: TRUNCATED: it has 4 records, but 5 were anchored" in err
    assert "Traceback" not in err


def test_cli_reports_a_corrupt_anchor_file(
    host: Host, inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = audit_anchor.anchors_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe")
    code, _out, err = verify(inventory, capsys)
    assert code == 4
    assert "gpu1: audit anchors:" in err and "move it aside" in err and "Traceback" not in err


def test_cli_on_a_local_copy_says_no_anchor_was_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "audit.jsonl"
    copy.write_text("\n".join(chain(3)) + "\n")
    assert main(["audit", "verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "a local copy: no anchor compared" in out


def test_the_anchor_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(audit_anchor.ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert audit_anchor.anchors_path() == tmp_path / "appliance" / "audit-anchors.json"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert audit_anchor.anchors_path() == Path(os.path.expanduser("~")) / (
        ".local/state/appliance/audit-anchors.json"
    )


def test_reanchor_after_a_rotation_on_purpose(
    host: Host, inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(inventory, capsys)[0] == 0
    host.paths["gateway"].unlink()  # moved aside by the operator
    host.write("deploy", host.lines("deploy")[:3])
    code = main(["audit", "verify", "--inventory", str(inventory), "--reanchor"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "deploy log: re-anchored on request (now at record 3) although: it has 3" in out
    assert "gateway log: re-anchored on request (dropped) although: the log is gone" in out
    assert list(audit_anchor.load(audit_anchor.anchors_path())["gpu1@10.0.0.5"]) == ["deploy"]
    code, out, err = verify(inventory, capsys)
    assert code == 0, err


def test_reanchor_needs_an_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "audit.jsonl"
    copy.write_text("\n".join(chain(1)) + "\n")
    assert main(["audit", "verify", str(copy), "--reanchor"]) == 2
    assert "give --inventory" in capsys.readouterr().err
