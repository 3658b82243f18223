"""Kill the deployer with SIGKILL at 5 random moments of a deploy; each re-run converges.

Also the gentle stops: Cancel (the TUI's button: the core deploy's ``cancel``
event) stops between two engine operations and releases the lock; SIGTERM to
the CLI deployer stops it the same way (exit 130). Both resume on re-run.

Each round starts from an uninstalled host, and each kill point is drawn from its own
fifth of the first deploy's duration (stratified: fewer rounds than uniform draws need to
cover it), so the kill points spread over the whole first deploy (verify, facts, lock, upload, on-host check, venv, render,
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
import threading
import time
from pathlib import Path

import pytest

from appliance.bundle.site.verify import VerifyOptions, verify_bundle
from appliance.deploy.run import deploy
from appliance.errors import Cancelled
from appliance.events import Event, Progress, drain
from appliance.lab.state import Lab
from appliance.plan.inventory import load_inventory
from appliance.plan.profiles import load_profiles
from appliance.report import smoke
from tests.integration.test_deploy import appliance, chat, on_host, site  # noqa: F401 - the site fixture

pytestmark = pytest.mark.integration
KILL_POINTS = 5


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
        width = (full * 0.9 - 0.2) / KILL_POINTS
        delay = rng.uniform(0.2 + round_ * width, 0.2 + (round_ + 1) * width)
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


def _in_process_deploy(
    lab: Lab, work: Path, cancel: threading.Event
) -> tuple[list[Event], BaseException | None]:
    """The deploy the TUI runs (core generator, engine in a worker thread); Cancel at the first upload."""
    verified = drain(verify_bundle(work / "demo-1", work / "keys/root.json", None, VerifyOptions()))
    events: list[Event] = []
    generator = deploy(verified, load_inventory(lab.inventory), load_profiles(None), profile="cpu-llamacpp",
                       operator="pytest", cancel=cancel)  # fmt: skip
    try:
        for event in generator:
            events.append(event)
            if (
                isinstance(event, Progress)
                and event.host
                and (event.item or "").startswith("upload")
            ):
                cancel.set()
    except Cancelled as exc:
        return events, exc
    return events, None


def test_cancel_stops_at_a_safe_point_releases_the_lock_and_resumes(site: tuple[Lab, Path]) -> None:  # noqa: F811
    lab, work = site
    appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work)
    events, error = _in_process_deploy(lab, work, threading.Event())
    assert isinstance(error, Cancelled), events[-5:]
    assert error.exit_code == 130 and "deploy again to resume" in error.message
    converge = [e for e in events if isinstance(e, Progress) and e.operation == "converge"]
    assert converge and all(e.host == lab.hosts[0].name for e in converge)
    assert (
        converge[0].total_items and converge[0].total_items > converge[-1].done_items
    )  # stopped early
    assert not on_host(lab, "ls /var/lib/appliance/deploy.lock 2>/dev/null; true")  # lock released
    last = json.loads(on_host(lab, "cat /var/lib/appliance/journal/*.jsonl | tail -n 1"))
    assert (last["step"], last["status"]) == ("converge", "cancelled")
    assert not on_host(
        lab, "readlink /opt/appliance/current 2>/dev/null; true"
    )  # nothing activated
    result = json.loads(appliance(*deploy_argv(lab)[3:], cwd=work).stdout)
    assert result["hosts"][0]["status"] == "converged"
    answer = smoke.chat(load_inventory(lab.inventory).hosts[0], port=8080)
    assert answer.text.strip() and answer.completion_tokens > 0


def test_sigterm_stops_the_deployer_cleanly_and_a_rerun_converges(site: tuple[Lab, Path]) -> None:  # noqa: F811
    lab, work = site
    appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work)
    process = subprocess.Popen(
        deploy_argv(lab), cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    # Wait until the engine is at work (the lock is taken), then SIGTERM.
    while not on_host(lab, "ls /var/lib/appliance/deploy.lock 2>/dev/null; true"):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.5)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert not on_host(
        lab, "ls /var/lib/appliance/deploy.lock 2>/dev/null; true"
    )  # released, not stale
    result = json.loads(appliance(*deploy_argv(lab)[3:], cwd=work).stdout)
    assert result["hosts"][0]["status"] == "converged"
