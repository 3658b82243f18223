"""The lab on this machine for real: hosts boot, are cut off, run Python, and leave no trace.

Traffic goes only to lab hosts; the air gap is checked by looking at routes
(``ip route``, ``ip route get`` is a lookup that sends nothing), never by
sending packets outside the lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from appliance.cli import lab_cmds
from appliance.events import Event, Started, Warned, drain
from appliance.lab import Lab, lab_down, lab_up, run_on
from appliance.lab.hosts import NSPAWN_PROPAGATE
from appliance.lab.network import lab_alias, links, netns_names, netns_pids
from appliance.lab.proc import mounts_under, process_matches
from appliance.lab.ssh import ssh_argv
from appliance.lab.state import LabPaths
from appliance.plan.inventory import load_inventory

from .conftest import SESSION, guarded_teardown, lab_skip_reason

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]


def traces(name: str, pids: Sequence[int] = ()) -> list[str]:
    """Everything of lab ``name`` still on the machine (empty when it is fully gone)."""
    paths = LabPaths()
    found = [
        f"netns {ns}" for ns in netns_names() if re.fullmatch(rf"applab-{re.escape(name)}-\d+", ns)
    ]
    found += [f"link {n}" for n, alias in links().items() if alias == lab_alias(name)]
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "systemd-nspawn" in cmdline and f"--machine={name}-" in cmdline:
            found.append(f"process {pid_dir.name}: {cmdline}")
    found += [f"process {p} (was in a host)" for p in pids if process_matches(p)]
    found += [f"dir {d}" for d in (paths.state_dir(name), paths.disk_dir(name)) if d.exists()]
    found += [f"mount {m}" for m in mounts_under(paths.disk_dir(name))]
    found += [f"nspawn dir {p}" for p in NSPAWN_PROPAGATE.glob(f"{name}-*")]
    return found


def host_pids(lab: Lab) -> list[int]:
    pids = [p for h in lab.hosts for p in netns_pids(h.netns)]
    return pids + [h.pid for h in lab.hosts if h.pid is not None]


# --- one host, shared by the session ---------------------------------------------------


def test_host_boots_to_running(lab_host: Lab) -> None:
    state = run_on(
        lab_host, lab_host.hosts[0], "timeout 60 systemctl is-system-running --wait",
        timeout=75, check=False,
    ).stdout.strip()  # fmt: skip
    assert state in ("running", "degraded")


def test_no_route_out_and_no_dns(lab_host: Lab) -> None:
    host = lab_host.hosts[0]
    routes = run_on(lab_host, host, "ip -4 route; ip -6 route").stdout
    assert "default" not in routes
    assert routes.split("\n")[0].startswith(f"{lab_host.subnet} dev eth0")
    # A route lookup only: nothing is sent. TEST-NET-3 stands for "anywhere outside".
    lookup = run_on(lab_host, host, "ip route get 203.0.113.1", check=False)
    assert lookup.returncode != 0
    assert "unreachable" in lookup.stderr.lower()
    assert "nameserver" not in run_on(lab_host, host, "cat /etc/resolv.conf").stdout
    # The same seen from the machine, and the bridge routes nothing onward.
    outside = subprocess.run(
        ["ip", "-n", host.netns, "route"], capture_output=True, text=True, timeout=10, check=True
    )
    assert "default" not in outside.stdout
    assert Path(f"/proc/sys/net/ipv4/conf/{lab_host.bridge}/forwarding").read_text().strip() == "0"


def test_python_and_venv_work(lab_host: Lab) -> None:
    out = run_on(
        lab_host, lab_host.hosts[0],
        "python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'import sys; print(sys.prefix)'",
        timeout=120,
    ).stdout  # fmt: skip
    assert out.strip() == "/tmp/venv"


def test_nftables_work_inside(lab_host: Lab) -> None:
    run_on(
        lab_host,
        lab_host.hosts[0],
        "nft add table inet probe && nft list tables && nft delete table inet probe",
    )


def test_ssh_takes_the_lab_key_only(lab_host: Lab, tmp_path: Path) -> None:
    config = run_on(lab_host, lab_host.hosts[0], "sshd -T").stdout
    assert "passwordauthentication no" in config
    assert "permitrootlogin without-password" in config
    other = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30
    )
    refused = subprocess.run(
        [*ssh_argv(other, lab_host.known_hosts, lab_host.hosts[0].address), "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr


def test_host_identity_is_per_host_not_from_the_image(lab_host: Lab) -> None:
    host = lab_host.hosts[0]
    out = run_on(lab_host, host, "hostname; cat /etc/machine-id").stdout.split()
    assert out[0] == host.name
    image_id = (Path(lab_host.rootfs) / "etc/machine-id").read_text()
    assert image_id == "" and len(out[1]) == 32
    assert not (Path(lab_host.rootfs) / "root/.ssh/authorized_keys").exists()


def test_inventory_files_work_for_both_engines(lab_host: Lab) -> None:
    inventory = load_inventory(lab_host.inventory)
    assert [(h.name, h.address) for h in inventory.hosts] == [
        (h.name, h.address) for h in lab_host.hosts
    ]
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists():
        pytest.skip("ansible is not installed in this environment")
    result = subprocess.run(
        [str(ansible), "-i", str(lab_host.ansible_inventory), "all", "-m", "ping"],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"ping": "pong"' in result.stdout


def test_lab_list_shows_it(lab_host: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    assert lab_cmds.cmd_lab_list(argparse.Namespace(json=True)) == 0
    labs = {lab["name"]: lab for lab in json.loads(capsys.readouterr().out)}
    mine = labs[lab_host.name]
    assert mine["status"] == "up"
    assert mine["hosts"] == [
        {"name": f"{SESSION}-1", "address": lab_host.hosts[0].address, "running": True}
    ]
    assert mine["inventory"] == str(lab_host.inventory)


# --- labs of their own ------------------------------------------------------------------


def test_two_hosts_reach_each_other_then_down_leaves_nothing(make_lab: MakeLab) -> None:
    with make_lab("pair", 2) as lab:
        one, two = lab.hosts
        probe = (
            "python3 -c \"import socket; socket.create_connection(('{0}', 22), timeout=3).close()\""
        )
        run_on(lab, one, probe.format(two.name), timeout=30)  # by name (/etc/hosts) ...
        run_on(lab, two, probe.format(one.address), timeout=30)  # ... and by address
        pids = host_pids(lab)
        assert len(pids) >= 4
        drain(lab_down(lab.name))
        assert traces(lab.name, pids) == []


def test_down_after_nspawn_was_killed_still_cleans_the_host(make_lab: MakeLab) -> None:
    with make_lab("kill", 1) as lab:
        pids = host_pids(lab)
        assert lab.hosts[0].pid is not None
        os.kill(lab.hosts[0].pid, signal.SIGKILL)  # the container outlives it
        drain(lab_down(lab.name))
        assert traces(lab.name, pids) == []


def test_interrupted_up_leaves_nothing() -> None:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"{SESSION}-int"
    with guarded_teardown(name):
        gen = lab_up(name, 2)
        for event in gen:  # bounded: every wait inside lab_up is
            if isinstance(event, Started) and event.operation == "boot":
                break
        else:
            pytest.fail("lab_up finished without a boot step")
        assert [ns for ns in netns_names() if ns.startswith(f"applab-{name}-")]  # it was half-made
        gen.close()
        assert traces(name) == []


def test_down_is_idempotent() -> None:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    events: list[Event] = []
    drain(lab_down(f"{SESSION}-none"), events.append)
    assert len(events) == 1
    assert isinstance(events[0], Warned)
    assert "nothing to remove" in events[0].message
