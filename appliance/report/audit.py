"""A host's deploy audit log read from this machine (``status``, ``audit verify --inventory``).

Read-only. The chain is checked with ``appliance.audit.verify_chain`` and the
log's length against this machine's anchors with
``appliance.deploy.audit_anchor.check_host``: the anchoring stays in deploy,
because every deploy, rollback and uninstall moves the anchors right after
writing its record, and deploy never imports report.
"""

from __future__ import annotations

from appliance.deploy import transport
from appliance.deploy.audit_log import AUDIT_LOG
from appliance.plan.inventory import HostEntry


def read_log(host: HostEntry) -> str:
    """The host's deploy audit log (``/var/log/appliance/audit.jsonl``; empty if it has none)."""
    return transport.run(host, f"cat {AUDIT_LOG} 2>/dev/null; true", timeout=30)
