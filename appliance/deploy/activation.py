"""Activating a release on a host: its units, its health, and the recorded ``current`` switch.

Engine-independent on purpose: activating a release's units, the health
checks, the atomic ``current`` switch (recorded before, in the intent file, and
after, in the audit log) and rollback behave the same whichever engine laid the
files down. Every call goes through ``transport`` and is bounded in time.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from appliance.deploy import transport
from appliance.deploy.host_check import INTENT
from appliance.deploy.host_layout import (
    CURRENT,
    GATEWAY_UNIT,
    GROUP_SYSCTL,
    GROUP_WATCH_UNIT,
    KEYCLOAK_UNIT,
    RELEASE_ETC,
    ROOT,
    STATE,
    SYSCTL_PATH,
    UNIT_NAME,
    active_unit_path,
)
from appliance.deploy.journal import append_audit, now
from appliance.plan.engine_args import argv_port, argv_value
from appliance.plan.inventory import HostEntry


def current_version(host: HostEntry) -> int | None:
    target = transport.run(host, f"readlink {CURRENT} 2>/dev/null; true", timeout=30).strip()
    name = target.rsplit("/", 1)[-1]
    return int(name) if name.isdigit() else None


# The services a release may have, in start order; the model server is always one of them.
SERVICES = (UNIT_NAME, KEYCLOAK_UNIT, GATEWAY_UNIT, GROUP_WATCH_UNIT)
# Started without waiting: Keycloak's readiness is polled; the group watch judges the group
# as it forms.
NO_BLOCK = frozenset({KEYCLOAK_UNIT, GROUP_WATCH_UNIT})


def activate(host: HostEntry, version: int, *, wait: bool = True) -> None:
    """Make release ``version``'s units the active ones and (re)start them.

    A service the release does not have (an older release without the
    gateway) is stopped and its active unit removed. The firewall is not
    touched here: ``apply_firewall`` loads it with a safety net. A group
    member's port range (its sysctl drop-in) is applied before the model server
    starts. ``wait=False``: the model server's start is not waited on (a group's
    worker waits for its head before it starts; the head is activated after it).
    """
    etc = f"{RELEASE_ETC}/{version}"
    lines = ["set -e", f"test -f {etc}/{UNIT_NAME}"]
    # A group member's port range, before its model server starts; read back, so that a
    # read-only /proc/sys (a container) fails the activation instead of passing silently.
    lines.append(
        f"if [ -f {etc}/{GROUP_SYSCTL} ]; then "
        f"{{ cp {etc}/{GROUP_SYSCTL} {SYSCTL_PATH}.tmp && mv -f {SYSCTL_PATH}.tmp {SYSCTL_PATH} "
        f"&& sysctl -q -p {SYSCTL_PATH} && "
        f"[ \"$(sed -n 's/^net.ipv4.ip_local_port_range *= *//p' {SYSCTL_PATH})\" = "
        f"\"$(tr -s '\\t ' ' ' < /proc/sys/net/ipv4/ip_local_port_range)\" ]; }} || "
        f"{{ echo 'the serving group port range could not be set (net.ipv4.ip_local_port_range)' >&2; "
        f"exit 1; }}; else rm -f {SYSCTL_PATH}; fi"
    )
    for unit in SERVICES:
        active = active_unit_path(unit)
        lines.append(
            f"if [ -f {etc}/{unit} ]; then cp {etc}/{unit} {active}.tmp && mv -f {active}.tmp {active}; "
            f"else systemctl disable --now {unit} >/dev/null 2>&1 || true; rm -f {active}; fi"
        )
    lines.append("systemctl daemon-reload")
    # `systemctl restart` waits for a unit's ExecStartPre steps; Keycloak's first start builds
    # its server there (minutes), so it is not waited on here: its readiness is polled after.
    # A gateway beside it checks the realm's signing keys before it starts (`--check`), which
    # Keycloak serves only once ready: that gateway is not waited on either. Its unit is ordered
    # after Keycloak's and restarts until the check passes; the deploy polls its health after
    # Keycloak's (a blocking start here failed whenever Keycloak was slower than the gateway).
    keycloak_here = f"[ -f {active_unit_path(KEYCLOAK_UNIT)} ]"
    for unit in SERVICES:
        if unit in NO_BLOCK or (unit == UNIT_NAME and not wait):
            restart = f"systemctl restart --no-block {unit}"
        elif unit == GATEWAY_UNIT:
            restart = (
                f"if {keycloak_here}; then systemctl restart --no-block {unit}; "
                f"else systemctl restart {unit}; fi"
            )
        else:
            restart = f"systemctl restart {unit}"
        lines.append(
            f"if [ -f {active_unit_path(unit)} ]; then systemctl enable {unit} >/dev/null 2>&1; "
            f"{restart}; fi"
        )
    transport.run(host, "\n".join(lines) + "\n", timeout=90)


def switch_recorded(host: HostEntry, release_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    """Switch ``current`` to ``release_dir`` so that it cannot happen unrecorded.

    The intent (where to, and the audit record to write) goes to ``INTENT`` first, then the
    switch, then the audit record, then the intent is removed. A deployer dying in between
    leaves the intent: the next operation's ``reconcile`` writes the record it finds missing.
    """
    previous = transport.run(host, f"readlink {CURRENT} 2>/dev/null; true", timeout=30).strip()
    intent = json.dumps({"at": now(), "to": release_dir, "from": previous or None, "record": record},
                        sort_keys=True)  # fmt: skip
    transport.run(host, f"mkdir -p {STATE} && printf '%s\\n' {shlex.quote(intent)} > {INTENT}.tmp && "
              f"mv -f {INTENT}.tmp {INTENT}", timeout=30)  # fmt: skip
    switch_current(host, release_dir)
    entry = append_audit(host, record)
    transport.run(host, f"rm -f {INTENT}", timeout=30)
    return entry


def switch_current(host: HostEntry, release_dir: str) -> None:
    transport.run(
        host,
        f"ln -sfn {release_dir} {ROOT}/.current.tmp && mv -T {ROOT}/.current.tmp {CURRENT}",
        timeout=30,
    )


def gateway_healthy(host: HostEntry, port: int, cafile: str, *, timeout: int = 60) -> bool:
    """Poll the gateway's /healthz over TLS on the host's loopback (its certificate checked)."""
    return poll_ok(host, f"https://127.0.0.1:{port}/healthz", timeout, cafile=cafile,
                   unit=GATEWAY_UNIT)  # fmt: skip


# Keycloak's first start builds its optimised server, then imports the realm: minutes, not seconds.
KEYCLOAK_START_TIMEOUT = 300


def keycloak_healthy(host: HostEntry, url: str, *, timeout: int = KEYCLOAK_START_TIMEOUT) -> bool:
    """Poll Keycloak's readiness (its management port, on the host's loopback)."""
    return poll_ok(host, url, timeout, unit=KEYCLOAK_UNIT)


@dataclass(frozen=True, slots=True)
class ReleaseCheck:
    """How a release's model server is checked, as its kept unit says (``X-Appliance-*``).

    A unit written before these settings existed gets the old check: ``/v1/models`` answering
    200 within 180 seconds, whatever model it names.
    """

    port: int
    paths: tuple[str, ...] = ("/v1/models",)
    model: str | None = None
    start_timeout: int = 180
    engine: str | None = None  # "vllm" or "llamacpp" (X-Appliance-Engine)
    context: int | None = None  # --max-model-len (vLLM) or --n_ctx (llama.cpp) of its ExecStart


def parse_release_unit(text: str) -> ReleaseCheck | None:
    """The check of a model-server unit's text (``None`` without a port on its ExecStart)."""
    settings: dict[str, str] = {}
    port = context = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            try:
                argv = shlex.split(value)
            except ValueError:  # unbalanced quotes: not a unit this appliance wrote
                argv = []
            port = argv_port(argv)
            length = argv_value(argv, "--max-model-len", "--n_ctx")
            context = int(length) if length and length.isdigit() and len(length) < 10 else None
        elif key.startswith("X-Appliance-"):
            settings[key.removeprefix("X-Appliance-")] = value.strip()
    if port is None:
        return None
    timeout = settings.get("Start-Timeout", "")
    paths = tuple(p for p in settings.get("Health", "").split() if p.startswith("/"))
    return ReleaseCheck(
        port=port,
        paths=paths or ("/v1/models",),
        model=settings.get("Served-Model") or None,
        start_timeout=min(int(timeout), 3600) if timeout.isdigit() else 180,
        engine=settings.get("Engine") if settings.get("Engine") in ("vllm", "llamacpp") else None,
        context=context,
    )


def release_check(host: HostEntry, version: int) -> ReleaseCheck | None:
    """How release ``version`` is checked, read from its kept unit."""
    text = transport.run(
        host, f"head -c 65536 {RELEASE_ETC}/{version}/{UNIT_NAME} 2>/dev/null; true", timeout=30
    )
    return parse_release_unit(text)


def health_check(host: HostEntry, check: ReleaseCheck, *, timeout: int | None = None) -> bool:
    """Poll the model server on the host's loopback until each of ``check.paths`` answers 200
    in turn (vLLM: ``/health``, then ``/v1/models``), and ``/v1/models`` names the served model.

    ``timeout`` defaults to the release's start-up timeout. False as soon as systemd restarts
    the model server during the wait (it crashed).
    """
    urls = [f"http://127.0.0.1:{check.port}{path}" for path in check.paths]
    return poll_ok(host, urls, check.start_timeout if timeout is None else timeout,
                   unit=UNIT_NAME, model=check.model)  # fmt: skip


def failure_lines(host: HostEntry, unit: str = UNIT_NAME, *, lines: int = 3) -> str:
    """The last error lines of ``unit``'s journal on ``host`` (what made it fail to serve),
    bounded: at most ``lines`` lines of 300 characters; empty when none is found."""
    text = transport.run(
        host,
        f"journalctl -u {unit} -n 400 --no-pager -o cat 2>/dev/null "
        "| grep -E '(Error|ERROR|error:|Traceback|cannot open|Killed|failed)' | tail -n 20; true",
        timeout=30,
    )
    found = [line.strip()[:300] for line in text.splitlines() if line.strip()]
    return " | ".join(found[-lines:])


def poll_ok(
    host: HostEntry,
    url: str | list[str],
    timeout: int,
    *,
    cafile: str | None = None,
    unit: str | None = None,
    model: str | None = None,
) -> bool:
    """On ``host``: GET each of ``url`` in turn every second until it answers 200 (True) or
    ``timeout`` s pass. With ``model``, a ``/v1/models`` answer must list that model id.

    With ``unit``, give up at once when systemd restarts that unit during the
    wait (its ``NRestarts`` grows): a server that crashes on start (a port
    taken, a bad argument) is not waited on for the whole timeout.
    """
    urls = [url] if isinstance(url, str) else url
    context = "None" if cafile is None else f"ssl.create_default_context(cafile={cafile!r})"
    script = f"""python3 - <<'EOF'
import json, ssl, subprocess, time, urllib.request
def restarts():
    if {unit!r} is None:
        return 0
    out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", {unit!r}],
                         capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() else 0
def ok(url):
    with urllib.request.urlopen(url, timeout=5, context={context}) as r:
        if r.status != 200:
            return False
        if {model!r} is None or not url.endswith("/v1/models"):
            return True
        data = json.loads(r.read(1 << 20)).get("data") or []
        return any(isinstance(m, dict) and m.get("id") == {model!r} for m in data)
before = restarts()
deadline = time.monotonic() + {timeout}
pending = {urls!r}
while time.monotonic() < deadline:
    try:
        while pending and ok(pending[0]):
            pending.pop(0)
    except Exception:
        pass
    if not pending:
        print("healthy"); break
    if restarts() > before:
        print("restarted"); break
    time.sleep(1)
else:
    print("unhealthy")
EOF
"""
    return transport.run(host, script, timeout=timeout + 30).strip() == "healthy"
