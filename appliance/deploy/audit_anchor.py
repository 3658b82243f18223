"""Audit anchors: what this machine last saw of each host's audit logs, so cutting them shows.

Job
    The hash chain (``appliance.audit``) proves no record was edited, inserted or
    reordered, but a log cut short at the end is still a valid chain. An anchor is
    a log's record count and last hash, kept on the deploying machine, where the
    host cannot rewrite it: ``$APPLIANCE_AUDIT_ANCHORS`` (the file's path) if set,
    else ``audit-anchors.json`` in this machine's state directory
    (``$XDG_STATE_HOME/appliance/``, else ``~/.local/state/appliance/``), keyed by host (``name@address``) and log
    (``deploy``: /var/log/appliance/audit.jsonl; ``gateway``: the gateway's
    per-call log). Each deploy, rollback and uninstall (after its audit record),
    each ``status`` and each ``audit verify --inventory`` first checks the host's
    logs against the anchors, then moves the anchors to what it saw.

Invariants
- A log that fails its check (fewer records than anchored, or the anchored
  record's hash not at the anchored position, or the file gone) never moves its
  anchor: the evidence stays until an operator re-anchors on purpose.
- An anchor only moves forward from a log that still holds the anchored record
  at the anchored line; several deploying machines keep consistent anchors.
- The file is replaced atomically (temporary file, fsync, rename) under an
  exclusive ``flock``, mode 0600 in a 0700 directory; a damaged or foreign file is
  reported (``AuditAnchorError``) and never overwritten.
- What is read from the host is bounded: one ``awk`` pass prints the line count,
  the line at the anchored position and the last line.

What it cannot prove: records appended after the last anchor (the gateway's
per-call records between two operations from this machine, or anything after the
last operation) can still be cut by someone with root on the host; a log
rewritten by someone who also rewrites this machine's anchor file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.deploy import transport
from appliance.deploy.audit_log import AUDIT_LOG
from appliance.deploy.gateway_layer import GATEWAY_AUDIT
from appliance.errors import ApplianceError, AuditAnchorError
from appliance.input_files import parse_json, read_input
from appliance.plan.inventory import HostEntry
from appliance.safe_fs import replace_atomically

FORMAT = 1
FILE_NAME = "audit-anchors.json"
ENV = "APPLIANCE_AUDIT_ANCHORS"
# The logs of a host, by the name the anchor file and messages use.
LOGS = {"deploy": AUDIT_LOG, "gateway": GATEWAY_AUDIT}
WHAT_IT_PROVES = (
    "The chain proves no record was edited, inserted or reordered. The anchor "
    "(count and last hash kept on this machine at each deploy, rollback, uninstall, "
    "status and audit verify from it) proves no record up to the anchored one was "
    "removed. It cannot prove that records appended after the last anchor were "
    "kept: someone with root on the host can cut those (the gateway's per-call "
    "records between two anchors included) without trace."
)
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Anchor:
    records: int  # lines in the log when anchored
    last_hash: str  # the ``hash`` of line ``records``
    at: str  # when (UTC)
    by: str  # which operation anchored it


@dataclass(frozen=True, slots=True)
class Observed:
    """One bounded look at a log: its line count and the two lines that matter."""

    exists: bool
    records: int = 0
    line_at_anchor: str = ""
    last_line: str = ""


@dataclass(frozen=True, slots=True)
class LogCheck:
    log: str
    anchor: Anchor | None  # the anchor checked against (None: none yet)
    observed: Observed
    problem: str | None  # truncation found, or None
    moved_to: Anchor | None  # the new anchor, when it moved
    reanchored: bool = False  # moved (or dropped) on the operator's word despite a problem

    def describe(self) -> str:
        if self.problem is not None and self.reanchored:
            now = "dropped" if self.moved_to is None else f"now at record {self.moved_to.records}"
            return f"{self.log} log: re-anchored on request ({now}) although: {self.problem}"
        if self.problem is not None:
            return f"{self.log} log: TRUNCATED: {self.problem}"
        if not self.observed.exists:
            return f"{self.log} log: absent, nothing anchored"
        if self.anchor is None:
            head = f"{self.log} log: {self.observed.records} records, no anchor before this check"
        else:
            head = (
                f"{self.log} log: {self.observed.records} records, the {self.anchor.records} "
                f"anchored on {self.anchor.at} (by {self.anchor.by}) are all there"
            )
        if self.moved_to is not None:
            return f"{head}; anchor now at record {self.moved_to.records}"
        return head


def anchors_path() -> Path:
    """Where this machine keeps its anchors (see the module docstring)."""
    if explicit := os.environ.get(ENV):
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "appliance" / FILE_NAME


def host_key(host: HostEntry) -> str:
    return f"{host.name}@{host.address}"


def observe_script(path: str, position: int) -> str:
    """A POSIX shell script printing ``present``, the line count, line ``position``, the last line."""
    quoted = shlex.quote(path)
    return (
        f"if [ -e {quoted} ]; then echo present; "
        f"awk -v n={int(position)} 'NR==n{{a=$0}} END{{print NR; print a; print $0}}' {quoted}; "
        "else echo absent; fi"
    )


def parse_observation(output: str) -> Observed:
    lines = output.split("\n")
    if lines[0] != "present":
        return Observed(exists=False)
    try:
        records = int(lines[1])
    except (IndexError, ValueError):
        return Observed(exists=True)  # unreadable: the check fails closed below
    padded = [*lines[2:4], "", ""]
    return Observed(True, records, padded[0], padded[1])


def line_hash(line: str) -> str | None:
    """The ``hash`` a log line carries, or None if it is not an audit record."""
    try:
        record = parse_json(line, "an audit line", error=AuditAnchorError)
    except AuditAnchorError:
        return None
    value = record.get("hash") if isinstance(record, dict) else None
    return value if isinstance(value, str) and _HASH.fullmatch(value) else None


def check(
    log: str,
    anchor: Anchor | None,
    observed: Observed,
    *,
    by: str,
    now: str,
    reanchor: bool = False,
) -> LogCheck:
    """Compare what was seen with the anchor; move the anchor only if nothing was cut
    (or, with ``reanchor``, to whatever is there now: an operator's decision)."""
    problem: str | None = None
    if anchor is not None:
        since = f"anchored on {anchor.at} by {anchor.by}"
        if not observed.exists:
            problem = (
                f"the log is gone, but {anchor.records} records were {since}: "
                "it was deleted or moved"
            )
        elif observed.records < anchor.records:
            problem = (
                f"it has {observed.records} records, but {anchor.records} were {since}: "
                f"at least {anchor.records - observed.records} record(s) were cut off the end "
                "(or the log was replaced with a shorter one)"
            )
        elif line_hash(observed.line_at_anchor) != anchor.last_hash:
            problem = (
                f"record {anchor.records} is not the one {since} (hash "
                f"{(line_hash(observed.line_at_anchor) or 'none')[:12]}..., anchored "
                f"{anchor.last_hash[:12]}...): the log was cut and written again, or replaced"
            )
    moved: Anchor | None = None
    if (problem is None or reanchor) and observed.exists and observed.records > 0:
        last = line_hash(observed.last_line)
        if last is not None and (reanchor or anchor is None or observed.records >= anchor.records):
            moved = Anchor(observed.records, last, now, by)
    return LogCheck(log, anchor, observed, problem, moved, reanchor)


# --- the anchor file ---------------------------------------------------------------------------


def _anchor_from(data: Any, where: str) -> Anchor:
    if (
        not isinstance(data, dict)
        or set(data) != {"records", "last_hash", "at", "by"}
        or type(data["records"]) is not int
        or data["records"] < 1
        or not isinstance(data["last_hash"], str)
        or not _HASH.fullmatch(data["last_hash"])
        or not isinstance(data["at"], str)
        or not isinstance(data["by"], str)
    ):
        raise AuditAnchorError(
            f"{where}: expected {{records: integer >= 1, last_hash: 64 hex digits, at, by}}, "
            f"found {json.dumps(data)[:200]}",
            hint=_REPAIR,
        )
    return Anchor(data["records"], data["last_hash"], data["at"], data["by"])


_REPAIR = (
    "The anchors are this machine's only record of how long the hosts' audit logs were: "
    "restore the file from a backup if you have one. Otherwise move it aside; the next "
    "operation anchors every log anew (truncation before that point is then not detectable)."
)


def load(path: Path) -> dict[str, dict[str, Anchor]]:
    """host key -> log -> anchor; an absent file is no anchors yet."""
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        data = parse_json(
            read_input(path, "audit anchors", limit="state", error=AuditAnchorError),
            f"audit anchors {path}",
            error=AuditAnchorError,
        )
    except AuditAnchorError as exc:
        raise AuditAnchorError(exc.message, hint=_REPAIR) from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or set(data) != {"format", "hosts"}
        or not isinstance(data["hosts"], dict)
    ):
        raise AuditAnchorError(
            f"{path}: not an audit anchors file (expected {{format: {FORMAT}, hosts: {{...}}}})",
            hint=_REPAIR,
        )
    anchors: dict[str, dict[str, Anchor]] = {}
    for key, logs in data["hosts"].items():
        if not isinstance(logs, dict) or not set(logs) <= set(LOGS):
            raise AuditAnchorError(
                f"{path}: host {key!r}: expected logs {sorted(LOGS)}", hint=_REPAIR
            )
        anchors[key] = {log: _anchor_from(v, f"{path}: {key} {log}") for log, v in logs.items()}
    return anchors


def _save(path: Path, anchors: dict[str, dict[str, Anchor]]) -> None:
    body = {
        "format": FORMAT,
        "hosts": {
            key: {
                log: {"records": a.records, "last_hash": a.last_hash, "at": a.at, "by": a.by}
                for log, a in sorted(logs.items())
            }
            for key, logs in sorted(anchors.items())
            if logs
        },
    }
    data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    replace_atomically(path, data, 0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive use of the anchor file (across processes and the deploy's host threads)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AuditAnchorError(
            f"cannot use the audit anchors in {path.parent}: {exc.strerror or exc}",
            hint=f"Make the directory writable, or point ${ENV} at a writable file.",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- on a host -----------------------------------------------------------------------------


def check_host(
    host: HostEntry, *, by: str, path: Path | None = None, reanchor: bool = False
) -> list[LogCheck]:
    """Check every log of ``host`` against this machine's anchors and move those that passed
    (``reanchor``: move all of them to what is there now, drop those of absent logs).

    Raises ``AuditAnchorError`` (anchor file unusable) or ``DeploymentError`` (SSH).
    """
    path = path or anchors_path()
    key = host_key(host)
    with _locked(path):
        anchors = load(path)
        mine = anchors.get(key, {})
        results = []
        for log, log_path in LOGS.items():
            anchor = mine.get(log)
            position = anchor.records if anchor is not None else 0
            observed = parse_observation(
                transport.run(host, observe_script(log_path, position), timeout=120)
            )
            results.append(check(log, anchor, observed, by=by, now=_now(), reanchor=reanchor))
        moved = {r.log: r.moved_to for r in results if r.moved_to is not None}
        dropped = {r.log for r in results if reanchor and r.moved_to is None and r.anchor}
        if moved or dropped:
            kept = {log: a for log, a in mine.items() if log not in dropped}
            anchors[key] = {**kept, **moved}
            try:
                _save(path, anchors)
            except OSError as exc:
                raise AuditAnchorError(
                    f"cannot write the audit anchors {path}: {exc.strerror or exc}"
                ) from exc
    return results


def after_append(host: HostEntry, *, by: str) -> list[str]:
    """``check_host`` after an operation wrote its audit record; never fails the operation.

    Its findings are reported by the next ``status`` or ``audit verify`` (a log that
    failed keeps its old anchor); what is returned here is for the caller to show.
    """
    try:
        return [r.describe() for r in check_host(host, by=by) if r.problem is not None]
    except ApplianceError as exc:
        return [f"audit anchor not updated: {exc.message}"]


def forget(host: HostEntry, *, path: Path | None = None) -> None:
    """Drop ``host``'s anchors (its logs were purged on purpose).

    An unusable anchor file is left as it is (``status`` and ``audit verify`` report it).
    """
    path = path or anchors_path()
    with contextlib.suppress(AuditAnchorError), _locked(path):
        anchors = load(path)
        if anchors.pop(host_key(host), None) is not None:
            _save(path, anchors)
