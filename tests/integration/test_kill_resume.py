"""Kill the deployer with SIGKILL at 10 random moments of a deploy; each re-run converges.

Each round starts from an uninstalled host, so the kill points spread over the
whole first deploy (verify, facts, lock, upload, on-host check, venv, render,
activation, health check, switch). After each kill the same deploy is run
again and must leave release 1 current, the service healthy, a chat completion
answering, no staging directory behind, and the stale lock taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab.state import Lab
from tests.integration.test_deploy import appliance, chat, on_host, site  # noqa: F401 - the site fixture

pytestmark = pytest.mark.integration
KILL_POINTS = 10


def deploy_argv(lab: Lab) -> list[str]:
    return [sys.executable, "-m", "appliance", "deploy", "--profile", "cpu-llamacpp", "--bundle", "demo-1",
            "--trust", "keys/root.json", "--inventory", str(lab.inventory), "--yes", "--json"]  # fmt: skip


def test_kill_9_at_random_points_then_resume(site: tuple[Lab, Path]) -> None:  # noqa: F811
    lab, work = site
    rng = random.Random(20261122)
    # How long an uninterrupted first deploy takes, to spread the kill points over it.
    appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work)
    start = time.monotonic()
    appliance(*deploy_argv(lab)[3:], cwd=work)
    full = time.monotonic() - start
    landed = []
    for round_ in range(KILL_POINTS):
        appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work)
        delay = rng.uniform(0.2, full * 0.9)
        process = subprocess.Popen(deploy_argv(lab), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
        time.sleep(delay)
        finished_before_kill = process.poll() is not None
        if not finished_before_kill:
            with contextlib.suppress(ProcessLookupError):  # it may end between poll and kill
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        journal = on_host(
            lab, "cat /var/lib/appliance/journal/*.jsonl 2>/dev/null | tail -n 1; true"
        )
        landed.append(
            (
                round(delay, 1),
                finished_before_kill,
                json.loads(journal)["step"] if journal else "before the journal",
            )
        )
        result = json.loads(appliance(*deploy_argv(lab)[3:], cwd=work).stdout)
        host = result["hosts"][0]
        assert host["status"] in ("converged", "unchanged"), (round_, delay, host)
        assert on_host(lab, "readlink /opt/appliance/current") == "/opt/appliance/releases/1"
        assert on_host(lab, "ls -a /opt/appliance/releases | grep -c staging; true") == "0"
        assert not on_host(lab, "ls /var/lib/appliance/deploy.lock 2>/dev/null; true")
    assert chat(lab)["usage"]["completion_tokens"] > 0  # type: ignore[index]
    print(f"\nfull deploy {full:.1f} s; kill points (s, finished?, last journal step): {landed}")
