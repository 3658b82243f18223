"""Activating a release on a multi-node serving group: every member, or none.

The members of a group run one vLLM process group: a worker must never serve one
release while its head serves another, and a member restarted alone does not heal the
group (``group_watch`` says why). So a group's release is activated as one unit:

1. every member's group watch and model server stopped (no old head or worker is left
   for a new member to join);
2. each worker's units activated without waiting (its model server waits for the head's
   rendezvous port), then the head's, whose start the deploy waits on;
3. the group's health: the head's own check (the caller's), then its watch reporting the
   group *serving* (every worker joined, a real completion answered), then every
   worker's model server active and its watch joined to the head.

Bounded: every wait has a timeout; every call goes through ``transport``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from appliance.deploy import transport
from appliance.deploy.activation import activate
from appliance.deploy.host_layout import GROUP_STATE_FILE, GROUP_WATCH_UNIT, UNIT_NAME
from appliance.plan.inventory import HostEntry

# After the head answers its own health check: how long its watch may take to see every
# worker joined and a completion answered (it probes every 10 s, 30 s per probe at most).
GROUP_SERVING_TIMEOUT = 120
WORKER_JOINED_TIMEOUT = 60
MAX_STATE_BYTES = 64 * 1024


def _each(hosts: Sequence[HostEntry], action: Callable[[HostEntry], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        return list(pool.map(action, hosts))


def stop_group(members: Sequence[HostEntry]) -> None:
    """Every member's group watch, then its model server, stopped (in parallel)."""
    script = f"systemctl stop {GROUP_WATCH_UNIT} {UNIT_NAME} >/dev/null 2>&1; true"
    _each(members, lambda host: transport.run(host, script, timeout=180))


def start_group(members: Sequence[HostEntry], version: int) -> None:
    """Release ``version``'s units on every member: the workers' first, not waited on (each
    waits for the head), then the head's (``members[0]``)."""
    head, workers = members[0], members[1:]
    _each(workers, lambda host: activate(host, version, wait=False))
    activate(head, version)


def wait_state(host: HostEntry, want: str, timeout: int) -> dict[str, Any] | None:
    """Poll the member's watch state until it says ``want`` (returned) or ``timeout`` s pass
    (the last state read, or ``None``)."""
    script = f"""python3 - <<'EOF'
import json, time
deadline = time.monotonic() + {timeout}
last = None
while True:
    try:
        with open({GROUP_STATE_FILE!r}, "rb") as f:
            last = json.loads(f.read({MAX_STATE_BYTES}))
    except (OSError, ValueError):
        pass
    if isinstance(last, dict) and last.get("state") == {want!r}:
        break
    if time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps(last))
EOF
"""
    try:
        data = json.loads(transport.run(host, script, timeout=timeout + 30).strip() or "null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def group_problem(members: Sequence[HostEntry]) -> str | None:
    """Why the group does not serve once its head answers (``None``: every member joined and
    the model answers), from the members' watches."""
    head, workers = members[0], members[1:]
    state = wait_state(head, "serving", GROUP_SERVING_TIMEOUT)
    if state is None or state.get("state") != "serving":
        said = "no state" if state is None else f"{state.get('state')}: {state.get('reason')}"
        return f"the group did not form on its head {head.name} ({said})"
    problems = []
    for worker, seen in zip(workers, _each(workers, lambda w: wait_state(w, "serving", WORKER_JOINED_TIMEOUT)), strict=True):  # fmt: skip
        if seen is None or seen.get("state") != "serving":
            said = "no state" if seen is None else f"{seen.get('state')}: {seen.get('reason')}"
            problems.append(f"worker {worker.name} did not join ({said})")
    return "; ".join(problems) or None
