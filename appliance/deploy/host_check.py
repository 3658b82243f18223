"""What an operation depends on at a host, read and checked before anything is changed.

One SSH call reads the audit log's tail, where ``current`` points, the state
directories and a pending switch (``host_state``); ``check_host_state`` checks the
answer (pure) and refuses a damaged host (``HostStateError``, with how to repair)
before anything is changed. A switch of ``current`` left recorded as intended only
(the deployer died between the switch and its audit record) is closed by
``reconcile``. Each release on the host is checked against its install record
(``release_problems``); a damaged copy is moved aside as evidence (``set_aside``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from appliance.deploy import transport
from appliance.deploy.audit_log import AUDIT_TAIL_SCRIPT, audit_tail_hash
from appliance.deploy.host_layout import CURRENT, LOG, RELEASES, STATE
from appliance.deploy.integrity import check_command, parse_integrity
from appliance.deploy.journal import JOURNAL_DIR, append_audit
from appliance.errors import HostStateError
from appliance.input_files import parse_json
from appliance.plan.inventory import HostEntry

# A switch of `current` about to happen (written before it, removed once its audit record is
# written): an operation finding one reconciles it first (``reconcile``).
INTENT = f"{STATE}/switch-intent.json"


@dataclass(frozen=True, slots=True)
class HostState:
    """What an operation depends on, read in one SSH call and checked (``check_host_state``)."""

    audit_hash: str  # the hash the next audit record chains from
    current: str | None  # where `current` points (None: no link)
    intent: dict[str, Any] | None  # a switch recorded as about to happen, not yet as done


STATE_SCRIPT = f"""echo "@@audit"
{AUDIT_TAIL_SCRIPT}echo "@@current"
if [ -L {CURRENT} ]; then echo "link $(readlink {CURRENT})"; elif [ -e {CURRENT} ]; then echo other; fi
echo "@@notdir"
for d in {STATE} {JOURNAL_DIR} {LOG} {RELEASES}; do [ -e "$d" ] && [ ! -d "$d" ] && echo "$d"; done
echo "@@intent"
cat {INTENT} 2>/dev/null; true
"""


def check_host_state(host_name: str, output: str) -> HostState:
    """``STATE_SCRIPT``'s output checked (pure); ``HostStateError`` with how to repair."""
    sections: dict[str, list[str]] = {}
    current_section = ""
    for line in output.splitlines():
        if line in ("@@audit", "@@current", "@@notdir", "@@intent"):
            current_section = line[2:]
            sections[current_section] = []
        elif current_section:
            sections[current_section].append(line)
    if set(sections) != {"audit", "current", "notdir", "intent"}:
        raise HostStateError(f"{host_name}: the host's state could not be read (incomplete answer)")
    for path in filter(None, (line.strip() for line in sections["notdir"])):
        raise HostStateError(
            f"{host_name}: {path} is not a directory; refusing to change anything",
            hint=f"Move it aside on the host (`mv {path} {path}.damaged`) and run again.",
        )
    audit = audit_tail_hash(host_name, "\n".join(sections["audit"]))
    link = " ".join(sections["current"]).strip()
    current: str | None = None
    if link:
        target = link.removeprefix("link ")
        name = target.removeprefix(RELEASES + "/")
        if link == "other" or not name.isdigit() or target != f"{RELEASES}/{name}":
            raise HostStateError(
                f"{host_name}: {CURRENT} is not a link to a release under {RELEASES} "
                f"(found {link!r}); refusing to change anything",
                hint=f"Move it aside on the host (`mv {CURRENT} {CURRENT}.damaged`), then deploy "
                "or roll back to the release that must serve.",
            )
        current = target
    intent_text = "\n".join(sections["intent"]).strip()
    intent: dict[str, Any] | None = None
    if intent_text:
        try:
            intent = parse_json(intent_text, str(INTENT), error=HostStateError)
        except HostStateError:
            intent = None
        if (
            not isinstance(intent, dict)
            or not isinstance(intent.get("to"), str)
            or not isinstance(intent.get("record"), dict)
        ):
            raise HostStateError(
                f"{host_name}: {INTENT} (a switch of {CURRENT} about to happen) is damaged; "
                "refusing to change anything",
                hint=f"Check which release {CURRENT} points at and that it serves, note it, then "
                f"remove the file on the host (`rm {INTENT}`) and run again.",
            )
    return HostState(audit, current, intent)


def host_state(host: HostEntry) -> HostState:
    """Read and check what an operation depends on; read-only. ``HostStateError`` if damaged."""
    return check_host_state(host.name, transport.run(host, STATE_SCRIPT, timeout=30))


def reconcile_record(intent: dict[str, Any], current: str | None) -> dict[str, Any]:
    """The audit record that closes a switch found recorded as intended only (pure).

    ``current`` at the intended target: the switch happened and its record was never
    written (the deployer died between the two); anything else: it did not happen.
    """
    done = current == intent["to"]
    return {
        **intent["record"],
        "result": "ok" if done else "interrupted",
        "reconciled": True,
        "note": (
            f"found after an interruption: {CURRENT} had been switched to {intent['to']}"
            if done
            else f"found after an interruption: {CURRENT} was not switched to {intent['to']} "
            f"(it points at {current or 'nothing'})"
        ),
    }


def reconcile(host: HostEntry, state: HostState) -> HostState:
    """Close a switch left recorded as intended only (audit record, then the intent removed)."""
    if state.intent is None:
        return state
    entry = append_audit(host, reconcile_record(state.intent, state.current))
    transport.run(host, f"rm -f {INTENT}", timeout=30)
    return HostState(entry["hash"], state.current, None)


def release_problems(
    host: HostEntry, releases: list[str], *, full: bool = False
) -> dict[str, tuple[str, ...]]:
    """Per release directory, how it differs from what was installed (empty: intact)."""
    if not releases:
        return {}
    found = parse_integrity(transport.run(host, check_command(releases, full=full) + "; true",
                                timeout=3600 if full else 300))  # fmt: skip
    return {r: found.get(r, ("its install record could not be checked",)) for r in releases}


def set_aside(host: HostEntry, release_dir: str, deploy_id: str) -> str:
    """Move a damaged release out of the way (kept as evidence, on the same filesystem: a
    rename, no copy) so it can be laid down again; where it went."""
    version = release_dir.rsplit("/", 1)[-1]
    evidence = f"{RELEASES}/.damaged-{version}-{deploy_id}"
    transport.run(host, f"mv -T {shlex.quote(release_dir)} {shlex.quote(evidence)}", timeout=60)
    return evidence
