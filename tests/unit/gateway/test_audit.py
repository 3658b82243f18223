"""The gateway's audit log: the appliance hash chain, append-only, 0640, one writer, fail closed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from appliance.audit import GENESIS, verify_chain
from appliance.gateway.audit import AuditLog, AuditLogError
from tests.unit.gateway.conftest import FakeClock, FakeUpstream, Site, open_gateway

pytestmark = pytest.mark.anyio


def test_records_form_a_verifiable_chain(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.jsonl", FakeClock()
    log = AuditLog(path, clock)
    first = log.write({"event": "gateway.call", "status": 200})
    assert first["prev"] == GENESIS
    log.write({"event": "gateway.call", "status": 401, "reason": "expired"})
    log.close()
    report = verify_chain(path.read_text())
    assert report.ok and report.records == 2 and report.last_hash == log.last_hash
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert json.loads(path.read_text().splitlines()[0])["at"] == "2025-10-09T08:53:20.000+00:00"


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.jsonl", FakeClock()
    for i in range(3):
        log = AuditLog(path, clock)
        log.write({"event": "gateway.call", "n": i})
        log.close()
    report = verify_chain(path.read_text())
    assert report.ok and report.records == 3


def test_tampering_is_found_by_appliance_audit_verify(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.jsonl", FakeClock()
    log = AuditLog(path, clock)
    for i in range(3):
        log.write({"event": "gateway.call", "client_id": "team-a", "n": i})
    log.close()
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("team-a", "team-b")
    assert not verify_chain("\n".join(lines)).ok
    del lines[1]
    assert not verify_chain("\n".join(lines)).ok


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, FakeClock())
    with pytest.raises(AuditLogError, match="another process holds the audit log"):
        AuditLog(path, FakeClock())
    first.close()
    AuditLog(path, FakeClock()).close()


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ('{"event": "gateway.call", "hash": "ab', "incomplete"),
        ("not json\n", "not an audit record"),
        ('{"event": "x"}\n', "not an audit record"),
    ],
)
def test_a_damaged_end_is_refused(tmp_path: Path, tail: str, message: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, FakeClock())
    log.write({"event": "gateway.call"})
    log.close()
    with path.open("a") as f:
        f.write(tail)
    with pytest.raises(AuditLogError, match=message) as caught:
        AuditLog(path, FakeClock())
    assert "appliance audit verify" in str(caught.value)


def test_symlink_and_wide_modes(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    (tmp_path / "audit.jsonl").symlink_to(target)
    with pytest.raises(AuditLogError, match="cannot open"):
        AuditLog(tmp_path / "audit.jsonl", FakeClock())
    wide = tmp_path / "wide.jsonl"
    wide.write_text("")
    wide.chmod(0o666)
    AuditLog(wide, FakeClock()).close()
    assert stat.S_IMODE(wide.stat().st_mode) == 0o640
    with pytest.raises(AuditLogError, match="cannot open"):
        AuditLog(tmp_path / "no-such-dir" / "audit.jsonl", FakeClock())


async def test_fsync_in_batches(tmp_path: Path) -> None:
    clock = FakeClock()
    log = AuditLog(tmp_path / "audit.jsonl", clock, fsync_interval_s=1.0, fsync_batch=3)
    log.write({"n": 1})
    log.write({"n": 2})
    assert not log.sync_due
    log.write({"n": 3})
    assert log.sync_due  # the batch is full
    await log.sync()
    assert not log.sync_due
    log.write({"n": 4})
    assert not log.sync_due
    clock.advance(1.0)
    assert log.sync_due  # the interval passed
    await log.sync()
    assert not log.sync_due
    log.close()


async def test_the_gateway_writes_one_record_per_call(
    site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    gateway = await open_gateway(site.config(), upstream, clock)
    try:
        await gateway.chat(site.token())
        await gateway.chat(None)
        await gateway.client.get("/v1/models", headers={"authorization": f"Bearer {site.token()}"})
        await gateway.client.get("/healthz")  # not audited
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()
    report = verify_chain(site.audit_file.read_text())
    assert report.ok and report.records == 3
    assert os.stat(site.audit_file).st_size > 0
