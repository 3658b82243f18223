"""The host's audit log: where it is, and its tail checked before a record is chained to it.

``/var/log/appliance/audit.jsonl`` holds one hash-chained record (``appliance.audit``)
per deploy, rollback and uninstall. Pure: nothing here reads or writes a host; the
tail script runs on the host inside other scripts (``journal.append_audit``,
``host_check``), and ``audit_tail_hash`` checks its output.
"""

from __future__ import annotations

from typing import Any

from appliance.audit import GENESIS, record_hash
from appliance.deploy.host_layout import LOG
from appliance.errors import HostStateError
from appliance.input_files import parse_json

AUDIT_LOG = f"{LOG}/audit.jsonl"

# The audit log's last two lines, then whether it ends with a newline (a half-written line
# does not), then its type if it exists but is not a regular file.
AUDIT_TAIL_SCRIPT = f"""if [ -e {AUDIT_LOG} ] && [ ! -f {AUDIT_LOG} ]; then echo "@@notfile"; else
if [ -s {AUDIT_LOG} ] && [ "$(tail -c 1 {AUDIT_LOG} | wc -l)" = 0 ]; then echo "@@nonewline"; fi
tail -n 2 {AUDIT_LOG} 2>/dev/null; fi; true
"""

_REPAIR_AUDIT = (
    f"Look at the end of {AUDIT_LOG} on the host (`appliance audit verify --inventory FILE` "
    "names the line). Keep the damaged log as evidence and take out the damaged last line: "
    f"`cp -a {AUDIT_LOG} {AUDIT_LOG}.damaged-$(date +%s) && sed -i '$d' {AUDIT_LOG}`, "
    "then run the operation again."
)


def audit_tail_hash(host_name: str, tail: str) -> str:
    """The hash the next audit record chains from, from ``AUDIT_TAIL_SCRIPT``'s output (pure).

    The last line must be a whole, unedited audit record chained to the line before it;
    anything else raises ``HostStateError`` (nothing appended: a record chained to garbage
    would hide the damage).
    """
    lines = [line for line in tail.splitlines() if line.strip()]
    if "@@notfile" in lines:
        raise HostStateError(
            f"{host_name}: {AUDIT_LOG} exists but is not a regular file; refusing to change anything",
            hint=f"Move it aside on the host (`mv {AUDIT_LOG} {AUDIT_LOG}.damaged`) and run again.",
        )
    truncated = "@@nonewline" in lines
    lines = [line for line in lines if not line.startswith("@@")]
    if not lines:
        return GENESIS
    where = f"{host_name}: the last line of {AUDIT_LOG}"
    if truncated:
        raise HostStateError(
            f"{where} is incomplete (no newline: a write was cut); refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            record = parse_json(line, "an audit line", error=HostStateError)
        except HostStateError:
            record = None
        records.append(record if isinstance(record, dict) else {})
    last = records[-1]
    if not isinstance(last.get("hash"), str) or not isinstance(last.get("prev"), str):
        raise HostStateError(
            f"{where} is not an audit record (not JSON with hash and prev): "
            f"{lines[-1][:60]!r}; refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    if record_hash(last) != last["hash"]:
        raise HostStateError(
            f"{where} was edited (its content does not match its hash); refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    if len(records) == 2 and records[0].get("hash") != last["prev"]:
        raise HostStateError(
            f"{where} is not chained to the line before it; refusing to change anything",
            hint=_REPAIR_AUDIT,
        )
    return str(last["hash"])
