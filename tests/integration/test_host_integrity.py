"""Host-side integrity on a real lab host: damaged files never turn into a crash after the switch.

A garbled line appended to the host's audit log: rollback and deploy refuse (exit 5) before
anything changes, say how to repair, and work once repaired. A file edited inside a release's
virtualenv: status reports it, the dry run shows it, deploy sets the damaged copy aside and
lays the release down again. A releases filesystem too small (a tmpfs mounted over it): deploy
refuses before the upload, naming the filesystem, the bytes needed and free. SIGTERM in the
middle of a deploy: the journal says cancelled.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.state import Lab
from tests.integration import helpers
from tests.integration.helpers import appliance

pytestmark = pytest.mark.integration
AUDIT = "/var/log/appliance/audit.jsonl"


@pytest.fixture(scope="module")
def site(lab_host: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    work = tmp_path_factory.mktemp("integrity")
    helpers.build_demo_bundles(work, (1, 2))
    yield lab_host, work


def deploy(lab: Lab, work: Path, bundle: str, *extra: str, expect: int = 0) -> dict[str, object]:
    result = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", bundle, "--trust", "keys/root.json",
                       "--inventory", lab.inventory, "--yes", "--json", *extra, cwd=work, expect=expect)  # fmt: skip
    data: dict[str, object] = json.loads(result.stdout)
    return data


def on_host(lab: Lab, command: str) -> str:
    return helpers.on(lab, lab.hosts[0], command).strip()


def current(lab: Lab) -> str:
    return on_host(lab, "readlink /opt/appliance/current; true")


def test_a_garbled_audit_line_is_refused_before_any_change(site: tuple[Lab, Path]) -> None:
    lab, work = site
    deploy(lab, work, "demo-1")
    deploy(lab, work, "demo-2")
    assert current(lab) == "/opt/appliance/releases/2"
    on_host(lab, f"echo 'garbage {{not json' >> {AUDIT}")
    audit_before = on_host(lab, f"sha256sum {AUDIT}")

    refused = appliance("rollback", "--inventory", lab.inventory, "--yes", cwd=work, expect=5)
    assert "is not an audit record" in refused.stderr
    assert "refusing to change anything" in refused.stderr
    assert "sed -i '$d' /var/log/appliance/audit.jsonl" in refused.stderr  # how to repair
    result = deploy(lab, work, "demo-1", expect=5)
    [refused_host] = result["hosts"]  # type: ignore[misc]
    assert refused_host["status"] == "failed" and refused_host["changes"] == []
    assert "is not an audit record" in refused_host["message"]
    assert "sed -i '$d' /var/log/appliance/audit.jsonl" in refused_host["message"]
    # Nothing changed: current, the audit log, no lock left behind.
    assert current(lab) == "/opt/appliance/releases/2"
    assert on_host(lab, f"sha256sum {AUDIT}") == audit_before
    assert on_host(lab, "ls /var/lib/appliance/deploy.lock 2>&1 | grep -c 'No such'") == "1"

    # The repair the message gives, then both work and the chain verifies.
    on_host(lab, f"cp -a {AUDIT} {AUDIT}.damaged-$(date +%s) && sed -i '$d' {AUDIT}")
    appliance("rollback", "--inventory", lab.inventory, "--yes", cwd=work)
    assert current(lab) == "/opt/appliance/releases/1"
    again = deploy(lab, work, "demo-2")
    assert again["hosts"][0]["status"] == "converged"  # type: ignore[index]
    appliance("audit", "verify", "--inventory", lab.inventory, cwd=work)
    last = json.loads(on_host(lab, f"tail -n 1 {AUDIT}"))
    assert last["event"] == "deploy" and last["result"] == "ok" and last["version"] == 2
    assert on_host(lab, "ls /var/lib/appliance/switch-intent.json 2>&1 | grep -c 'No such'") == "1"


def test_code_edited_in_a_release_venv_is_reported_shown_and_repaired(
    site: tuple[Lab, Path],
) -> None:
    lab, work = site
    deploy(lab, work, "demo-2")
    target = on_host(
        lab,
        "find /opt/appliance/releases/2/venv/lib -path '*llama_cpp*' -name '*.py' | sort | head -n 1",
    )
    assert target.endswith(".py")
    relative = target.removeprefix("/opt/appliance/releases/2/")
    on_host(lab, f"echo 'import os  # tampered' >> {target}")

    status = appliance("status", "--inventory", lab.inventory, "--json", cwd=work, expect=5)
    row = json.loads(status.stdout)[0]
    assert any(relative in p for p in row["integrity"]["2"]), row["integrity"]
    assert row["integrity"]["1"] == []  # the other release is intact
    text = appliance("status", "--inventory", lab.inventory, cwd=work, expect=5).stdout
    assert "release 2 DIFFERS FROM WHAT WAS INSTALLED" in text and relative in text

    dry = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", "demo-2", "--trust", "keys/root.json",
                    "--inventory", lab.inventory, "--dry-run", "--json", cwd=work)  # fmt: skip
    changes = json.loads(dry.stdout)["hosts"][0]["changes"]
    [reinstall] = [c for c in changes if c["kind"] == "reinstall"]
    assert reinstall["target"] == "/opt/appliance/releases/2" and relative in reinstall["detail"]

    repaired = deploy(lab, work, "demo-2")
    assert repaired["hosts"][0]["status"] == "converged", repaired  # type: ignore[index]
    assert current(lab) == "/opt/appliance/releases/2"
    evidence = on_host(lab, "ls -d /opt/appliance/releases/.damaged-2-*")
    assert "tampered" in on_host(lab, f"cat {evidence}/{relative}")  # kept as evidence
    assert "tampered" not in on_host(lab, f"cat {target}")
    clean = json.loads(
        appliance("status", "--inventory", lab.inventory, "--json", "--verify", cwd=work).stdout
    )
    assert clean[0]["integrity"] == {"1": [], "2": []} and clean[0]["healthy"] is True
    records = [json.loads(x) for x in on_host(lab, f"tail -n 2 {AUDIT}").splitlines()]
    assert records[0]["event"] == "release-set-aside" and records[0]["evidence"] == evidence
    assert helpers.chat(lab, lab.hosts[0])["usage"]["completion_tokens"] > 0  # type: ignore[index]
    on_host(
        lab,
        "chmod -R u+w /opt/appliance/releases/.damaged-2-* && rm -rf /opt/appliance/releases/.damaged-2-*",
    )


def test_a_releases_filesystem_too_small_is_refused_before_upload(site: tuple[Lab, Path]) -> None:
    lab, work = site
    deploy(lab, work, "demo-1")
    on_host(
        lab,
        "mkdir -p /opt/appliance/releases && mount -t tmpfs -o size=1m tmpfs /opt/appliance/releases",
    )
    try:
        result = deploy(lab, work, "demo-2", expect=5)
        message = str(result["message"])
        assert result["error"] == "DiskSpaceError", result
        assert "not enough free space for the release on /opt/appliance/releases (tmpfs)" in message
        assert "bytes needed" in message and "bytes free" in message
        assert "refused before any upload" in message
        assert on_host(lab, "ls -A /opt/appliance/releases") == ""  # nothing was uploaded
    finally:
        on_host(lab, "umount /opt/appliance/releases")
    assert current(lab) == "/opt/appliance/releases/1"


def test_sigterm_in_the_middle_of_a_deploy_is_journaled_as_cancelled(
    site: tuple[Lab, Path],
) -> None:
    lab, work = site
    appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work)
    argv = [*helpers_argv(lab), "--bundle", "demo-1"]
    process = subprocess.Popen(
        argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            # The converge has started once the journal says so (uploads follow).
            if on_host(
                lab,
                "cat /var/lib/appliance/journal/*.jsonl 2>/dev/null | grep -c '\"converge\"'; true",
            ) not in ("", "0"):
                break
            time.sleep(0.5)
        assert process.poll() is None, "the deploy ended before it could be interrupted"
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = json.loads(on_host(lab, "tail -q -n 1 /var/lib/appliance/journal/*.jsonl"))
    assert last["status"] == "cancelled" and last["by"] == "SIGTERM", last
    assert on_host(lab, "ls /var/lib/appliance/deploy.lock 2>&1 | grep -c 'No such'") == "1"


def helpers_argv(lab: Lab) -> list[str]:
    import sys

    return [sys.executable, "-m", "appliance", "deploy", "--profile", "cpu-llamacpp", "--trust", "keys/root.json",
            "--inventory", str(lab.inventory), "--yes", "--json"]  # fmt: skip
