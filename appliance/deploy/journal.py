"""What an operation records on a host: its journal and its hash-chained audit record.

The journal (``/var/lib/appliance/journal/<deploy>.jsonl``) says, step by step,
where a deploy got to, so a re-run resumes; the audit log (``audit_log``) says
what each operation did. Appending to the audit log checks its tail first and
then anchors both of the host's logs on this machine (``audit_anchor``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.audit import chain_record
from appliance.deploy import audit_anchor, transport
from appliance.deploy.audit_log import AUDIT_LOG, AUDIT_TAIL_SCRIPT, audit_tail_hash
from appliance.deploy.host_layout import LOG, STATE
from appliance.plan.inventory import HostEntry

JOURNAL_DIR = f"{STATE}/journal"


@dataclass(frozen=True, slots=True)
class Journal:
    host: HostEntry
    deploy_id: str

    def record(self, step: str, status: str, **extra: Any) -> None:
        line = json.dumps(
            {"at": now(), "deploy": self.deploy_id, "step": step, "status": status, **extra},
            sort_keys=True,
        )
        transport.run(
            self.host,
            f"mkdir -p {JOURNAL_DIR} && printf '%s\\n' {shlex.quote(line)} >> {JOURNAL_DIR}/{self.deploy_id}.jsonl",
            timeout=30,
        )


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_audit(host: HostEntry, record: dict[str, Any]) -> dict[str, Any]:
    """Append a hash-chained record: each carries the previous record's hash and its own.

    The log's tail is checked first (``audit_tail_hash``): a damaged tail is refused
    (``HostStateError``) and nothing is appended, never a traceback.
    """
    previous = audit_tail_hash(
        host.name, transport.run(host, f"mkdir -p {LOG}\n{AUDIT_TAIL_SCRIPT}", timeout=30)
    )
    entry = chain_record({"at": now(), "host": host.name, **record}, previous)
    line = json.dumps(entry, sort_keys=True)
    transport.run(
        host,
        f"printf '%s\\n' {shlex.quote(line)} >> {AUDIT_LOG} && chmod 0640 {AUDIT_LOG}",
        timeout=30,
    )
    # Anchor both logs on this machine now, so cutting them later shows (audit_anchor.py).
    audit_anchor.after_append(host, by=str(record.get("event", "operation")))
    return entry
