"""The group watch: keeps a multi-node serving group one unit on its members.

Laid down into every release of a group member (its source is this file: stdlib only,
Python 3.9+, run by the host's ``python3`` as ``appliance-group-watch.service``) with a
JSON settings file written by the deploy (``watch_settings``). Why it exists (vLLM 0.32's
multi-node runtime, checked on lab hosts, /work notes in docs/multi-node.md):

- a worker that dies leaves a pipeline-parallel head *hung* with ``/health`` still 200;
  under tensor parallel the head answers one 500 and exits;
- a worker restarted alone does not heal the group (it joins a rendezvous that is gone);
- a worker whose head died keeps running, silently, forever.

So each unit's ``Restart=`` brings its own process back, and the watch makes the group
whole again:

- **head**: every member's rendezvous connection (an established TCP connection from the
  worker's group address to the head's master port, read from ``ss``) and a real one-token
  completion on the model server's loopback port. A worker gone, or the model not
  answering twice in a row, once the group had formed: the group is *degraded* (the state
  file says why: the gateway answers 503 with that reason) and the head's model server is
  restarted, which ends the old rendezvous.
- **worker**: its own rendezvous connection to the head. Gone (the head restarted or died)
  for two checks in a row, once its process has been up ``grace`` seconds: the worker's
  model server is restarted, and joins the head's new rendezvous.

The state file (``/run/appliance/group-state.json``, no secrets, world-readable) is what
``appliance status`` and the gateway read: ``state`` is one of starting, serving,
degraded, down; ``reason`` says why in words; ``joined``/``missing`` name the workers.

The decisions are pure (``HeadWatch.step``, ``WorkerWatch.step`` over ``Observation``s)
and unit-tested; ``main`` only observes, writes and restarts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

STATE_FILE = "/run/appliance/group-state.json"
UNIT_NAME = "appliance-model.service"  # = host_layout.UNIT_NAME (this file must stay stdlib-only)
TICK_S = 2.0
MAX_SS_BYTES = 4 << 20


@dataclass(frozen=True)
class Member:
    host: str
    address: str
    rank: int


@dataclass(frozen=True)
class Settings:
    role: str  # "head" or "worker"
    group: str
    host: str
    rank: int
    head: Member
    workers: tuple[Member, ...]
    master_port: int
    model_port: int
    served_model: str
    start_timeout: int  # seconds a (re)started head may take to form the group and answer
    probe_interval: int = 10
    probe_timeout: int = 30
    grace: int = 30  # a worker's seconds up before a missing rendezvous counts

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        def member(m: dict[str, Any]) -> Member:
            return Member(str(m["host"]), str(m["address"]), int(m["rank"]))

        role = str(data["role"])
        if role not in ("head", "worker"):
            raise ValueError(f"role must be head or worker, found {role!r}")
        return cls(
            role=role,
            group=str(data["group"]),
            host=str(data["host"]),
            rank=int(data["rank"]),
            head=member(data["head"]),
            workers=tuple(member(m) for m in data["workers"]),
            master_port=int(data["master_port"]),
            model_port=int(data["model_port"]),
            served_model=str(data["served_model"]),
            start_timeout=int(data["start_timeout"]),
            probe_interval=int(data.get("probe_interval", 10)),
            probe_timeout=int(data.get("probe_timeout", 30)),
            grace=int(data.get("grace", 30)),
        )


@dataclass(frozen=True)
class Observation:
    """What one tick saw on this member."""

    now: float  # monotonic seconds
    unit_state: str  # systemd ActiveState of the model server: active, activating, failed, ...
    started: float | None  # monotonic seconds the unit entered "active" (None: not active)
    connections: frozenset[
        tuple[str, str, int]
    ]  # established (local address, peer address, peer port) ...
    listening_peers: frozenset[str]  # head: peer addresses connected to its master port
    probe: str | None = None  # head: None = not probed this tick, "ok", or why it failed


@dataclass
class Verdict:
    state: str  # starting | serving | degraded | down
    reason: str
    restart: bool = False
    joined: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def _describe(member: Member) -> str:
    return f"{member.host} (rank {member.rank}, {member.address})"


@dataclass
class HeadWatch:
    settings: Settings
    formed: bool = False
    started: float | None = None  # the unit start this watch judges
    gone_ticks: int = 0
    failed_probes: int = 0
    last_probe: float = -1e9
    cause: str | None = None  # why this watch last restarted the group, until it serves again

    def wants_probe(self, now: float, all_joined: bool) -> bool:
        return all_joined and now - self.last_probe >= self.settings.probe_interval

    def step(self, seen: Observation) -> Verdict:
        """The verdict of one tick; while the group re-forms after a restart this watch made,
        every verdict but *serving* also says why it restarted (``cause``)."""
        verdict = self._step(seen)
        if verdict.restart:
            self.cause = verdict.reason.removesuffix("; restarting the group")
        elif verdict.state == "serving":
            self.cause = None
        elif self.cause is not None:
            verdict.reason = f"{verdict.reason} (the group is re-forming: {self.cause})"
        return verdict

    def _step(self, seen: Observation) -> Verdict:
        s = self.settings
        if seen.unit_state != "active" or seen.started is None:
            self.formed, self.started, self.gone_ticks, self.failed_probes = False, None, 0, 0
            state = "starting" if seen.unit_state in ("activating", "reloading") else "down"
            return Verdict(state, f"the head's model server is {seen.unit_state}")
        if seen.started != self.started:  # a new start of the unit: judge it afresh
            self.formed, self.started, self.gone_ticks, self.failed_probes = (
                False,
                seen.started,
                0,
                0,
            )
        joined = tuple(w.host for w in s.workers if w.address in seen.listening_peers)
        missing = tuple(w for w in s.workers if w.address not in seen.listening_peers)
        names = tuple(w.host for w in missing)
        if seen.probe is not None:
            self.last_probe = seen.now
            self.failed_probes = 0 if seen.probe == "ok" else self.failed_probes + 1
        age = seen.now - seen.started
        if not self.formed:
            if not missing and seen.probe == "ok":
                self.formed = True
                return Verdict(
                    "serving", "every member joined and the model answers", joined=joined
                )
            if age > s.start_timeout:
                why = (
                    f"waiting for {', '.join(_describe(w) for w in missing)}"
                    if missing
                    else f"the model does not answer ({seen.probe or 'not probed'})"
                )
                return Verdict("degraded", f"the group did not form within {s.start_timeout} s "
                               f"({why}); restarting the group", restart=True, joined=joined,
                               missing=names)  # fmt: skip
            why = (
                f"waiting for {', '.join(_describe(w) for w in missing)} to join"
                if missing
                else "every member joined; the engine is starting"
            )
            return Verdict("starting", why, joined=joined, missing=names)
        self.gone_ticks = self.gone_ticks + 1 if missing else 0
        if self.gone_ticks >= 2:
            return Verdict("degraded", f"{', '.join(_describe(w) for w in missing)} left the group; "
                           "restarting the group", restart=True, joined=joined, missing=names)  # fmt: skip
        if missing:
            return Verdict("degraded", f"{', '.join(_describe(w) for w in missing)} lost its "
                           "connection to the head", joined=joined, missing=names)  # fmt: skip
        if self.failed_probes >= 2:
            return Verdict("degraded", f"the model does not answer ({seen.probe}); restarting the "
                           "group", restart=True, joined=joined)  # fmt: skip
        if self.failed_probes:
            return Verdict("degraded", f"the model did not answer ({seen.probe})", joined=joined)
        return Verdict("serving", "every member joined and the model answers", joined=joined)


@dataclass
class WorkerWatch:
    settings: Settings
    gone_ticks: int = 0
    started: float | None = None

    def step(self, seen: Observation) -> Verdict:
        s = self.settings
        if seen.unit_state != "active" or seen.started is None:
            self.gone_ticks, self.started = 0, None
            state = "starting" if seen.unit_state in ("activating", "reloading") else "down"
            return Verdict(state, f"this worker's model server is {seen.unit_state}")
        if seen.started != self.started:
            self.gone_ticks, self.started = 0, seen.started
        connected = any(
            peer == s.head.address and port == s.master_port for _, peer, port in seen.connections
        )
        if connected:
            self.gone_ticks = 0
            return Verdict("serving", f"joined the head {_describe(s.head)}")
        if seen.now - seen.started < s.grace:
            return Verdict("starting", f"joining the head {_describe(s.head)}")
        self.gone_ticks += 1
        if self.gone_ticks >= 2:
            self.gone_ticks = 0
            return Verdict("degraded", f"no connection to the head {_describe(s.head)}; "
                           "restarting this worker to join it again", restart=True)  # fmt: skip
        return Verdict("degraded", f"lost its connection to the head {_describe(s.head)}")


def _address(text: str) -> tuple[str, int] | None:
    """``10.0.0.2:29501``, ``[::ffff:10.0.0.2]:29501`` or ``[fe80::1]:22`` as (address, port)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not host:
        return None
    host = host.strip("[]")
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(port)


def parse_established(text: str) -> list[tuple[str, int, str, int]]:
    """``ss -Htn state established`` lines as (local address, local port, peer address, peer
    port); lines that do not read as such are skipped."""
    found = []
    for line in text.splitlines()[:100000]:
        fields = line.split()
        # Recv-Q Send-Q Local:Port Peer:Port [Process]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        local, peer = _address(fields[2]), _address(fields[3])
        if local is not None and peer is not None:
            found.append((*local, *peer))
    return found


def observe_connections(
    rows: list[tuple[str, int, str, int]], settings: Settings
) -> tuple[frozenset[tuple[str, str, int]], frozenset[str]]:
    """(this member's connections as (local, peer, peer port), the peers connected to the
    head's master port here)."""
    connections = frozenset((local, peer, pport) for local, _, peer, pport in rows)
    peers = frozenset(peer for _, lport, peer, _ in rows if lport == settings.master_port)
    return connections, peers


# --- I/O (not unit-tested: the lab rehearsal runs it) ---------------------------------


def _run(argv: list[str], timeout: float = 10) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout[:MAX_SS_BYTES].decode("utf-8", "replace")


def _unit(unit: str) -> tuple[str, float | None]:
    out = _run(["systemctl", "show", "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic",
                unit])  # fmt: skip
    values = dict(line.partition("=")[::2] for line in out.splitlines())
    state = values.get("ActiveState", "unknown")
    entered = values.get("ActiveEnterTimestampMonotonic", "0")
    started = int(entered) / 1e6 if entered.isdigit() and int(entered) > 0 else None
    return state, started if state == "active" else None


def _probe(settings: Settings) -> str:
    body = json.dumps({"model": settings.served_model, "prompt": "ping", "max_tokens": 1,
                       "temperature": 0}).encode()  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.model_port}/v1/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.probe_timeout) as answer:
            return "ok" if answer.status == 200 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except Exception as exc:  # any failure is an answer the group did not give
        # (OSError, timeouts, http.client's IncompleteRead and RemoteDisconnected, bad JSON)
        return (
            f"no answer within {settings.probe_timeout} s"
            if "timed out" in str(exc)
            else (f"cannot be reached ({type(exc).__name__})")
        )


def _write_state(path: str, settings: Settings, verdict: Verdict) -> None:
    data = {
        "group": settings.group,
        "host": settings.host,
        "role": settings.role,
        "rank": settings.rank,
        "state": verdict.state,
        "reason": verdict.reason,
        "joined": list(verdict.joined),
        "missing": list(verdict.missing),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, sort_keys=True)
        out.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: group_watch.py SETTINGS.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as handle:
        settings = Settings.from_json(json.load(handle))
    head = HeadWatch(settings) if settings.role == "head" else None
    worker = WorkerWatch(settings) if settings.role == "worker" else None
    last: tuple[str, str] | None = None
    while True:
        now = time.monotonic()
        state, started = _unit(UNIT_NAME)
        rows = parse_established(_run(["ss", "-Htn", "state", "established"]))
        connections, peers = observe_connections(rows, settings)
        probe = None
        if head is not None:
            joined = all(w.address in peers for w in settings.workers)
            if state == "active" and head.wants_probe(now, joined):
                probe = _probe(settings)
            verdict = head.step(Observation(now, state, started, connections, peers, probe))
        else:
            assert worker is not None
            verdict = worker.step(Observation(now, state, started, connections, peers))
        _write_state(STATE_FILE, settings, verdict)
        if (verdict.state, verdict.reason) != last:
            print(f"group {settings.group}: {verdict.state}: {verdict.reason}", flush=True)
            last = (verdict.state, verdict.reason)
        if verdict.restart:
            _run(["systemctl", "restart", "--no-block", UNIT_NAME], timeout=30)
        time.sleep(TICK_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
