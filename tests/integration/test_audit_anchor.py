"""Audit anchors on a real lab host: a record cut off the end of its audit log is found.

The chain alone cannot see it (the shortened log is still a valid chain); the anchor
kept on this machine at the last operation does. Real SSH, real host, real CLI.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.deploy import audit_anchor, journal, transport
from appliance.deploy.audit_log import AUDIT_LOG
from appliance.lab.state import Lab
from appliance.plan.inventory import load_inventory
from tests.integration.helpers import appliance, single_host_inventory

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_a_cut_audit_log_is_reported(
    make_lab: Callable[[str, int], contextlib.AbstractContextManager[Lab]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A host of its own: the log it cuts must not be the one the session's deploy tests read.
    with make_lab("anchor", 1) as lab:
        _cut_and_report(lab, tmp_path, monkeypatch)


def _cut_and_report(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(audit_anchor.ENV, str(tmp_path / "state" / "audit-anchors.json"))
    inventory = single_host_inventory(lab, lab.hosts[0], tmp_path / "inventory.yml")
    host = load_inventory(inventory).hosts[0]
    transport.run(host, f"rm -f {AUDIT_LOG}")
    for n in range(3):  # what deploy, rollback and uninstall do after their work
        journal.append_audit(host, {"event": "test", "n": n})

    ok = appliance("audit", "verify", "--inventory", inventory, cwd=ROOT)
    assert "3 records, chain intact" in ok.stdout
    assert "deploy log: 3 records, the 3 anchored on" in ok.stdout

    transport.run(host, f"sed -i '$d' {AUDIT_LOG}")  # root on the host cuts the last record
    cut = appliance("audit", "verify", "--inventory", inventory, cwd=ROOT, expect=4)
    assert "2 records, chain intact" in cut.stdout  # the chain alone sees nothing
    assert "deploy log: TRUNCATED: it has 2 records, but 3 were anchored" in cut.stderr
    assert "cannot prove that records appended after the last anchor" in cut.stdout

    status = appliance("status", "--inventory", inventory, "--json", cwd=ROOT, expect=5)
    row = json.loads(status.stdout)[0]
    assert row["audit_ok"] is False and "cut off the end" in row["message"]
