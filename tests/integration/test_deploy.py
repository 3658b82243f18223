"""Deploy the CPU profile to a real lab host with pyinfra, end to end.

A disconnected Debian host with systemd (the lab), the demo-cpu bundle (the
Gemma 3 270M GGUF and a llama-cpp-python wheelhouse built for the target),
signed and verified; then: the dry-run diff, the deploy, a chat completion
requested from this machine (through an SSH tunnel: the model server listens
on the host's loopback only), zero new outbound connections from the host, a
second deploy that changes nothing, a concurrent deploy refused by the lock,
and a release that fails its health check leaving the previous one serving.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.ssh import run_on
from appliance.lab.state import Lab
from tests.integration import helpers
from tests.integration.helpers import appliance

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Counts every attempt to open a connection off the host: TCP SYNs without ACK, and
# any new non-TCP flow. (Not "ct state new" for TCP: conntrack starts tracking when
# the first rule loads and would pick up the reply stream of the SSH session that
# installs these rules as new.)
EGRESS_RULES = """nft add table inet egress_probe
nft 'add chain inet egress_probe out { type filter hook output priority 0; }'
nft 'add rule inet egress_probe out oifname != "lo" tcp flags & (syn | ack) == syn counter comment "tcp-connect"'
nft 'add rule inet egress_probe out oifname != "lo" meta l4proto != tcp ct state new counter comment "other-new"'
"""


@pytest.fixture(scope="module")
def site(lab_host: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    work = tmp_path_factory.mktemp("deploy")
    helpers.build_demo_bundles(work, (1, 2))
    run_on(lab_host, lab_host.hosts[0], EGRESS_RULES)
    yield lab_host, work


def deploy(lab: Lab, work: Path, bundle: str, *extra: str, expect: int = 0) -> dict[str, object]:
    result = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", bundle, "--trust", "keys/root.json",
                       "--inventory", lab.inventory, "--yes", "--json", *extra, cwd=work, expect=expect)  # fmt: skip
    data: dict[str, object] = json.loads(result.stdout)
    return data


def chat(lab: Lab) -> dict[str, object]:
    return helpers.chat(lab, lab.hosts[0])


def on_host(lab: Lab, command: str) -> str:
    return helpers.on(lab, lab.hosts[0], command).strip()


def test_cpu_profile_end_to_end(site: tuple[Lab, Path]) -> None:
    lab, work = site
    dry = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", "demo-1", "--trust", "keys/root.json",
                    "--inventory", lab.inventory, "--dry-run", "--json", cwd=work)  # fmt: skip
    changes = json.loads(dry.stdout)["hosts"][0]["changes"]
    assert {"put-file", "render", "activate", "switch-current", "start"} <= {
        c["kind"] for c in changes
    }
    assert (
        on_host(lab, "test -e /opt/appliance/current && echo yes || echo no") == "no"
    )  # dry run changed nothing

    first = deploy(lab, work, "demo-1")
    assert first["hosts"][0]["status"] == "converged"  # type: ignore[index]
    answer = chat(lab)
    assert answer["usage"]["completion_tokens"] > 0  # type: ignore[index]
    assert answer["choices"][0]["message"]["content"]  # type: ignore[index]
    # Nothing tried to leave the host: no new outbound connection on any interface but lo.
    counters = on_host(lab, "nft list chain inet egress_probe out")
    assert counters.count("counter packets 0 bytes 0") == 2, counters
    # The release is read-only, current points at it, the audit record is chained.
    assert on_host(lab, "readlink /opt/appliance/current") == "/opt/appliance/releases/1"
    assert on_host(
        lab, "stat -c %a /opt/appliance/releases/1 /opt/appliance/releases/1/files/models/*.gguf"
    ).split() == ["555", "444"]
    record = json.loads(on_host(lab, "tail -n 1 /var/log/appliance/audit.jsonl"))
    assert record["result"] == "ok" and record["version"] == 1 and record["prev"] == "0" * 64

    # A second deploy changes nothing and does not restart the service.
    started = on_host(lab, "systemctl show -p ActiveEnterTimestampMonotonic appliance-model")
    again = deploy(lab, work, "demo-1")
    assert again["hosts"][0]["status"] == "unchanged"  # type: ignore[index]
    assert (
        on_host(lab, "systemctl show -p ActiveEnterTimestampMonotonic appliance-model") == started
    )


def test_a_second_deploy_is_refused_while_one_holds_the_lock(site: tuple[Lab, Path]) -> None:
    lab, work = site
    on_host(
        lab,
        "mkdir -p /var/lib/appliance/deploy.lock && echo other-machine:4242 > /var/lib/appliance/deploy.lock/owner",
    )
    try:
        result = deploy(lab, work, "demo-2", expect=5)
        assert result["error"] == "DeploymentError"
        assert "another deploy holds the lock (other-machine:4242)" in str(result["message"])
        assert (
            on_host(lab, "readlink /opt/appliance/current") == "/opt/appliance/releases/1"
        )  # untouched
    finally:
        on_host(lab, "rm -rf /var/lib/appliance/deploy.lock")


def test_a_release_failing_its_health_check_leaves_the_previous_serving(
    site: tuple[Lab, Path], tmp_path: Path
) -> None:
    lab, work = site
    deploy(lab, work, "demo-1")
    # A site profile whose server cannot start (its port is taken by sshd): release 2 must
    # fail its health check, and release 1 must be serving again.
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (
        (ROOT / "hardware_profiles/cpu-llamacpp.yaml")
        .read_text()
        .replace("  port: 8080", "  port: 22")
    )
    (profiles / "cpu-llamacpp.yaml").write_text(text)
    shutil.copy(ROOT / "hardware_profiles/a100-single.yaml", profiles)
    result = deploy(lab, work, "demo-2", "--profiles-dir", str(profiles), expect=5)
    host = result["hosts"][0]  # type: ignore[index]
    assert host["status"] == "rolled-back", host
    assert on_host(lab, "readlink /opt/appliance/current") == "/opt/appliance/releases/1"
    assert on_host(lab, "systemctl is-active appliance-model") == "active"
    assert chat(lab)["usage"]["completion_tokens"] > 0  # type: ignore[index]


def test_status_rollback_uninstall_and_audit(site: tuple[Lab, Path], tmp_path: Path) -> None:
    lab, work = site
    deploy(lab, work, "demo-1")
    deploy(lab, work, "demo-2")
    status = json.loads(
        appliance("status", "--inventory", lab.inventory, "--json", cwd=work).stdout
    )[0]
    assert status["current"] == 2 and status["healthy"] is True and status["audit_ok"] is True
    assert {1, 2} <= set(status["releases"])
    appliance("rollback", "--inventory", lab.inventory, "--yes", cwd=work)
    assert on_host(lab, "readlink /opt/appliance/current") == "/opt/appliance/releases/1"
    assert chat(lab)["usage"]["completion_tokens"] > 0  # type: ignore[index]
    # The audit chain verifies, and tampering with one record is found.
    appliance("audit", "verify", "--inventory", lab.inventory, cwd=work)
    copy = tmp_path / "audit.jsonl"
    copy.write_text(on_host(lab, "cat /var/log/appliance/audit.jsonl") + "\n")
    lines = copy.read_text().splitlines()
    lines[0] = lines[0].replace('"result": "ok"', '"result": "KO"')
    copy.write_text("\n".join(lines) + "\n")
    tampered = appliance("audit", "verify", copy, cwd=work, expect=4)
    assert "line 1: record edited" in tampered.stderr
    # Uninstall removes what appliance laid down, keeps the audit log, and nothing else.
    before = set(on_host(lab, "ls /etc /opt /var/lib /var/log").split())
    appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work)
    after = set(on_host(lab, "ls /etc /opt /var/lib /var/log").split())
    assert before - after == {"appliance"} or before - after <= {"appliance"}
    assert (
        on_host(
            lab, "ls /opt/appliance /etc/appliance /var/lib/appliance 2>&1 | grep -c 'No such' "
        )
        == "3"
    )
    assert on_host(lab, "systemctl is-active appliance-model; true") in ("inactive", "unknown")
    assert (
        on_host(
            lab,
            "tail -n1 /var/log/appliance/audit.jsonl | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"event\"])'",
        )
        == "uninstall"
    )
