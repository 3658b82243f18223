"""The deploy lock on a host: one deploy, rollback or uninstall at a time.

Lock: ``/var/lib/appliance/deploy.lock`` (``mkdir`` is atomic). Its owner is
``host:pid``; a lock whose owner is this machine and whose process is gone
(a deployer killed with ``kill -9``) is taken over, anything else is refused.
"""

from __future__ import annotations

import os
import socket

from appliance.deploy import transport
from appliance.deploy.host_layout import STATE
from appliance.errors import DeploymentError
from appliance.plan.inventory import HostEntry

LOCK_DIR = f"{STATE}/deploy.lock"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lock(host: HostEntry) -> None:
    script = f"""mkdir -p {STATE}
if mkdir {LOCK_DIR} 2>/dev/null; then echo '{_owner()}' > {LOCK_DIR}/owner; echo acquired
else echo "held $(cat {LOCK_DIR}/owner 2>/dev/null) $(stat -c %Y {LOCK_DIR})"; fi
"""
    answer = transport.run(host, script, timeout=30).strip()
    if answer == "acquired":
        return
    parts = answer.split()
    owner = parts[1] if len(parts) > 1 else "unknown"
    machine, _, pid = owner.partition(":")
    if machine == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        # Our own deployer died (kill -9) holding the lock: take it over and converge.
        transport.run(host, f"rm -rf {LOCK_DIR}", timeout=30)
        return acquire_lock(host)
    raise DeploymentError(
        f"{host.name}: another deploy holds the lock ({owner}); refusing to run two deploys at once",
        hint=f"Wait for it to finish. If it is certainly dead, remove {LOCK_DIR} on the host.",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_lock(host: HostEntry) -> None:
    transport.run(
        host,
        f"[ \"$(cat {LOCK_DIR}/owner 2>/dev/null)\" = '{_owner()}' ] && rm -rf {LOCK_DIR}; true",
        timeout=30,
    )
