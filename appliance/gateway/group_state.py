"""Whether the multi-node group behind this gateway can serve, as its group watch reports.

On a group's head the group watch (``appliance.deploy.group_watch``) writes the group's
state to a small JSON file; the gateway reads it, at most once per ``REFRESH_S``, and
answers 503 ``group_unavailable`` with the watch's reason while the group is not
serving (a worker gone, the group re-forming), instead of forwarding a call that would
hang on a pipeline-parallel head whose worker died.

Invariants: the file is untrusted input, read bounded (``MAX_BYTES``); a missing,
unreadable or malformed file, or one the watch stopped refreshing (older than
``STALE_S``), means "not serving" with a reason that says which. Without a ``group``
section in the configuration nothing is read and every call is forwarded as before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.gateway.clock import Clock

REFRESH_S = 0.5
STALE_S = 30.0  # the watch writes every 2 s
MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class GroupView:
    serving: bool
    reason: str  # in words, for the 503's message and the health answer


def read_group_state(path: Path, group: str, now: float) -> GroupView:
    """The group's state from the watch's file at ``path`` (``now``: wall-clock seconds)."""
    try:
        with path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return GroupView(False, f"group {group}: its watch has not reported a state yet")
    except OSError as exc:
        return GroupView(False, f"group {group}: its state cannot be read ({exc.strerror})")
    if len(raw) > MAX_BYTES:
        return GroupView(False, f"group {group}: its state file is larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        return GroupView(False, f"group {group}: its state file is not JSON")
    if not isinstance(data, dict) or not isinstance(data.get("state"), str):
        return GroupView(False, f"group {group}: its state file has no state")
    if now - stat.st_mtime > STALE_S:
        return GroupView(False, f"group {group}: its watch stopped reporting "
                         f"{int(now - stat.st_mtime)} s ago")  # fmt: skip
    state = data["state"][:40]
    reason = data["reason"] if isinstance(data.get("reason"), str) else ""
    if state == "serving":
        return GroupView(True, f"group {group}: serving")
    return GroupView(False, f"group {group} is {state}: {reason[:500]}")


class GroupState:
    """The group's state as this gateway last read it (refreshed at most every ``REFRESH_S``)."""

    def __init__(self, path: Path, group: str, clock: Clock) -> None:
        self.path, self.group, self.clock = path, group, clock
        self._read_at: float | None = None
        self._view = GroupView(False, f"group {group}: not read yet")

    def view(self) -> GroupView:
        now = self.clock.monotonic()
        if self._read_at is None or now - self._read_at >= REFRESH_S:
            self._view = read_group_state(self.path, self.group, self.clock.time())
            self._read_at = now
        return self._view
