"""The host rulesets with real packets between lab hosts.

Three lab hosts get the rulesets ``appliance render --target host`` writes for
the lab's inventory (host 1: gateway + Keycloak, hosts 2 and 3: model
servers), loaded the way a deployer should (``apply_script``: check, arm a
revert, load; confirmed over a new SSH connection). Then the same with hosts 2
and 3 as a serving group on eth0 (host 2 its head): members reach the head's
master port and each other's port range, nothing else reaches those ports
(not host 1, not this machine, not the master port on the worker, not a port
just outside the range); with the group's sysctl drop-in applied, a listener
on an ephemeral port lands inside the range and only the other member
reaches it. Every host listens on
every port probed, so a failed connection is the firewall's doing, not a
missing listener. Then, from this machine (the lab's admin and client
address) and from each host to every other host: the model's flows connect,
everything else times out (dropped leaving the source or entering the
destination; both counters grow); SSH from this machine still works; a
connection to an address outside the site (TEST-NET-1, routed at the lab
bridge just for this, dropped before it leaves the host) is counted in
``drop_offsite``; and a ruleset that would cut SSH reverts by itself.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance.lab import Lab
from appliance.lab.errors import LabError
from appliance.lab.ssh import run_on
from appliance.lab.state import LabHost
from appliance.netpolicy.model import PolicyModel, build_policy, group_component, inventory_groups
from appliance.netpolicy.nftables import RULESET_PATH, apply_script, confirm_script
from appliance.netpolicy.port_range_sysctl import SYSCTL_PATH, group_sysctl
from appliance.plan.group import GroupNetwork
from appliance.plan.inventory import DEFAULT_GROUP_PORTS, DEFAULT_MASTER_PORT, load_inventory
from appliance.plan.profiles import load_profiles

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]
ROOT = Path(__file__).resolve().parents[2]
MASTER = DEFAULT_MASTER_PORT  # the group's master port (29501)
FIRST, LAST = DEFAULT_GROUP_PORTS  # the group's port range (40000-44095)
# sshd answers 22; listen.py the rest (the group's ports and those just outside its range)
PORTS = (22, 8443, 8180, 8000, 8080, 6379, 9999, MASTER, FIRST - 1, FIRST, LAST, LAST + 1)
OUTSIDE = "192.0.2.1"  # TEST-NET-1: stands for "anywhere outside the site"
TIMEOUT = 1.5

LISTEN = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
"""

PROBE = """
import errno, json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    address, port = target
    try:
        socket.create_connection((address, port), timeout=float(sys.argv[2])).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


def probe_here(targets: list[tuple[str, int]]) -> list[str]:
    """The same probe from this machine (only ever to lab hosts)."""

    def one(target: tuple[str, int]) -> str:
        try:
            socket.create_connection(target, timeout=TIMEOUT).close()
            return "open"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc.errno))

    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(one, targets))


def probe_from(lab: Lab, host: LabHost, targets: list[tuple[str, int]]) -> list[str]:
    out = run_on(lab, host, f"python3 /root/probe.py '{json.dumps(targets)}' {TIMEOUT}", timeout=30)
    result: list[str] = json.loads(out.stdout)
    return result


def upload(lab: Lab, host: LabHost, path: str, text: str) -> None:
    data = base64.b64encode(text.encode()).decode()
    run_on(lab, host, f"mkdir -p $(dirname {path}) && echo {data} | base64 -d > {path}")


def counters(lab: Lab, host: LabHost) -> dict[str, int]:
    data = json.loads(run_on(lab, host, "nft -j list counters table inet appliance").stdout)
    return {
        item["counter"]["name"]: item["counter"]["packets"]
        for item in data["nftables"]
        if "counter" in item
    }


def render(work: Path, lab: Lab, profile: str, admin: str, inventory: Path | None = None) -> Path:
    inventory = inventory or lab.inventory
    out = work / f"{profile}-{admin.replace('/', '_')}-{inventory.stem}"
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "render", "--profile", profile, "--target", "host",
         "--out", str(out), "--inventory", str(inventory), "--site-cidr", lab.subnet,
         "--admin-cidr", admin],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out / "nftables"


def load(lab: Lab, host: LabHost, ruleset: Path, *, revert_after: int = 30) -> None:
    """Check, arm the revert, load; then confirm over a new SSH connection (as a deployer must)."""
    upload(lab, host, RULESET_PATH, ruleset.read_text())
    upload(lab, host, "/root/apply.sh", apply_script(RULESET_PATH, revert_after))
    run_on(lab, host, "sh /root/apply.sh", timeout=30)
    run_on(lab, host, confirm_script(), timeout=15)  # a new connection: SSH still works


def expected_open(model: PolicyModel, roles: dict[str, tuple[str, ...]], source: str,
                  destination: str, port: int) -> bool:  # fmt: skip
    """From the model alone: may ``source`` (a host, or this machine) reach ``destination:port``?"""
    ours = roles[source]
    return any(
        f.source in ours
        and f.destination in roles[destination]
        and f.allows(port)
        and f.interface in (None, "eth0")  # the lab hosts' one interface
        for f in model.flows_for("host")
    )


def check_matrix(
    lab: Lab, model: PolicyModel, inventory_path: Path
) -> dict[tuple[str, str, int], str]:
    inventory = load_inventory(inventory_path)
    roles: dict[str, tuple[str, ...]] = {h.name: tuple(h.roles) for h in inventory.hosts}
    for group in inventory.groups:  # members, and the head, are components of the model too
        for member in group.hosts:
            head = (group_component(group.name, head=True),) if member == group.head else ()
            roles[member] += (group_component(group.name), *head)
    roles["machine"] = ("admin", "clients")  # the lab's bridge address: admin and client
    results: dict[tuple[str, str, int], str] = {}
    sources = ["machine", *(h.name for h in lab.hosts)]

    def from_source(source: str) -> None:
        pairs = [(d, p) for d in lab.hosts if d.name != source for p in PORTS]
        targets = [(d.address, p) for d, p in pairs]
        found = (
            probe_here(targets)
            if source == "machine"
            else probe_from(lab, lab.host(source), targets)
        )
        for (destination, port), outcome in zip(pairs, found, strict=True):
            results[(source, destination.name, port)] = outcome

    with ThreadPoolExecutor(len(sources)) as pool:  # every source probes at once
        list(pool.map(from_source, sources))
    wrong = {
        key: outcome
        for key, outcome in results.items()
        if (outcome == "open") != expected_open(model, roles, *key)
        or outcome not in ("open", "timeout")
    }
    assert wrong == {}, f"{model.profile}: outcomes that differ from the model: {wrong}"
    return results


EPHEMERAL = """
import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", 0)); s.listen(8)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
while True:
    c, _ = s.accept(); c.close()
"""


def check_group_sysctl(
    lab: Lab, group: GroupNetwork, h1: LabHost, h2: LabHost, h3: LabHost, work: Path
) -> None:
    """The drop-in pins the members' ephemeral ports: a listener on port 0 on the worker lands
    in the range, and only the other member reaches it.

    The lab hosts' ``/proc/sys`` is read-only (systemd-nspawn; their systemd-sysctl skips it and
    still exits 0), so the drop-in is applied to each member's network namespace (the setting
    is per namespace) from this machine, with sysctl reading the very file a deploy lays down.
    """
    drop_in = work / "group-ports.conf"
    drop_in.write_text(group_sysctl(group))
    for member in (h2, h3):
        subprocess.run(["ip", "netns", "exec", member.netns, "sysctl", "-q", "-p", str(drop_in)],
                       check=True, timeout=30)  # fmt: skip
        found = run_on(lab, member, "cat /proc/sys/net/ipv4/ip_local_port_range").stdout.split()
        assert found == [str(FIRST), str(LAST)], found
    assert h1.netns not in (h2.netns, h3.netns)
    assert run_on(lab, h1, "cat /proc/sys/net/ipv4/ip_local_port_range").stdout.split() != [
        str(FIRST), str(LAST),
    ]  # fmt: skip
    upload(lab, h3, "/root/ephemeral.py", EPHEMERAL)
    run_on(lab, h3, "rm -f /root/ephemeral.port; setsid -f timeout 300 python3 /root/ephemeral.py "
                    "/root/ephemeral.port >/dev/null 2>&1 < /dev/null; sleep 0.3")  # fmt: skip
    port = int(run_on(lab, h3, "cat /root/ephemeral.port").stdout)
    assert FIRST <= port <= LAST, f"a listener on port 0 got {port}, outside {FIRST}-{LAST}"
    assert probe_from(lab, h2, [(h3.address, port)]) == ["open"]  # the other member
    assert probe_from(lab, h1, [(h3.address, port)]) == ["timeout"]  # a non-member
    assert probe_here([(h3.address, port)]) == ["timeout"]  # this machine
    print(f"group sysctl ({SYSCTL_PATH}) applied on {h2.name}, {h3.name}; an ephemeral listener "
          f"on {h3.name} got port {port}: {h2.name} connects, {h1.name} and this machine do not")  # fmt: skip


def test_rulesets_with_real_packets(make_lab: MakeLab, tmp_path: Path) -> None:
    started = time.monotonic()
    with make_lab("nft", 3) as lab:
        h1, h2, h3 = lab.hosts
        for host in lab.hosts:
            upload(lab, host, "/root/listen.py", LISTEN)
            upload(lab, host, "/root/probe.py", PROBE)
            ports = " ".join(str(p) for p in PORTS if p != 22)
            run_on(lab, host, f"setsid -f timeout 600 python3 /root/listen.py {ports} "
                              ">/dev/null 2>&1 < /dev/null; sleep 0.3")  # fmt: skip
        # Without rules every probe connects: listeners are up, failures later are the firewall's.
        everything = [(h.address, p) for h in (h2, h3) for p in PORTS]
        assert set(probe_from(lab, h1, everything)) == {"open"}
        assert set(probe_here([(h.address, p) for h in lab.hosts for p in PORTS])) == {"open"}

        admin = f"{lab.gateway}/32"
        profiles = load_profiles()
        grouped = tmp_path / "inventory-group.yml"  # hosts 2 and 3 serve together, 2 the head
        grouped.write_text(lab.inventory.read_text().rstrip("\n") + (
            f"\ngroups:\n  - name: lab\n    hosts: [{h2.name}, {h3.name}]\n    interface: eth0\n"))  # fmt: skip
        runs = (("h100-cluster", lab.inventory), ("h100-cluster", grouped),
                ("cpu-llamacpp", lab.inventory))  # fmt: skip
        for profile, inventory in runs:
            groups = inventory_groups(load_inventory(inventory))
            model = build_policy(profiles[profile], groups)
            rulesets = render(tmp_path, lab, profile, admin, inventory)
            with ThreadPoolExecutor(len(lab.hosts)) as pool:  # each host loads its own
                files = [rulesets / f"host-{h.name}.nft" for h in lab.hosts]
                list(pool.map(load, [lab] * len(files), lab.hosts, files))
            before = {h.name: counters(lab, h) for h in lab.hosts}
            results = check_matrix(lab, model, inventory)
            after = {h.name: counters(lab, h) for h in lab.hosts}
            # The hand-checked core of the matrix (independent of expected_open):
            assert results[("machine", h1.name, 8443)] == "open"  # clients -> gateway
            assert all(results[("machine", h.name, 22)] == "open" for h in lab.hosts)  # SSH
            port = model.model_server_port
            assert results[("machine", h2.name, port)] == "timeout"  # model server: gateway only
            assert results[(h1.name, h2.name, port)] == "open"  # gateway -> model server
            assert results[(h1.name, h2.name, 9999)] == "timeout"  # ... on its port only
            assert results[(h2.name, h1.name, 8443)] == "timeout"  # a model server is no client
            assert results[(h3.name, h1.name, 22)] == "timeout"  # hosts do not SSH each other
            peers = "open" if model.multi_node and not groups else "timeout"
            assert results[(h2.name, h3.name, 6379)] == peers  # any port between model servers
            assert results[(h3.name, h2.name, 9999)] == peers  # (a group has its ports instead)
            if groups:  # hand-checked: the group's ports, between its members only
                assert results[(h3.name, h2.name, MASTER)] == "open"  # worker -> head's store
                assert results[(h2.name, h3.name, MASTER)] == "timeout"  # no store on a worker
                for a, b in ((h2, h3), (h3, h2)):
                    assert results[(a.name, b.name, FIRST)] == "open"
                    assert results[(a.name, b.name, LAST)] == "open"
                    assert results[(a.name, b.name, FIRST - 1)] == "timeout"  # just outside
                    assert results[(a.name, b.name, LAST + 1)] == "timeout"
                for stranger in ("machine", h1.name):  # a non-member, this machine
                    for b in (h2, h3):
                        for port in (MASTER, FIRST, LAST):
                            assert results[(stranger, b.name, port)] == "timeout"
                check_group_sysctl(lab, groups[0], h1, h2, h3, tmp_path)
            opened = sorted(k for k, v in results.items() if v == "open")
            label = f"{profile}{' with group ' + groups[0].name if groups else ''}"
            print(f"\n{label}: {len(opened)} of {len(results)} probes connect: {opened}")
            print(f"{label}: counters before {before}, after {after}")
            for name in (h1.name, h2.name, h3.name):  # every blocked probe was counted
                assert after[name]["drop_in"] > before[name]["drop_in"]
                assert after[name]["drop_out"] > before[name]["drop_out"]
            run_on(lab, h2, "true")  # SSH from this machine still works

        # Egress off-site: give TEST-NET-1 a route (else connect() fails before netfilter sees
        # anything), then try TCP and UDP; both are dropped on the host and counted.
        run_on(lab, h2, f"ip route add 192.0.2.0/24 via {lab.gateway}")
        try:
            offsite = counters(lab, h2)["drop_offsite"]
            attempt = run_on(lab, h2, (
                f"python3 -c \"import socket, errno\n"
                f"try: socket.create_connection(('{OUTSIDE}', 443), timeout=2); print('tcp:open')\n"
                f"except OSError as e: print('tcp:' + errno.errorcode.get(e.errno or 0, 'timeout'))\n"
                f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"try: s.sendto(b'x', ('{OUTSIDE}', 53)); print('udp:sent')\n"
                f"except OSError as e: print('udp:' + errno.errorcode.get(e.errno or 0, str(e)))\""
            ), timeout=15).stdout.split()  # fmt: skip
            # TCP retries its SYN until the timeout; UDP learns of the drop at once (EPERM).
            assert attempt == ["tcp:timeout", "udp:EPERM"]
            now = counters(lab, h2)["drop_offsite"]
            print(f"off-site attempts from {h2.name}: {attempt}; drop_offsite {offsite} -> {now}")
            assert now >= offsite + 2
        finally:
            run_on(lab, h2, "ip route del 192.0.2.0/24", check=False)

        # A ruleset that would cut SSH (admin elsewhere) is not confirmed, and reverts by itself.
        wrong_admin = render(tmp_path, lab, "cpu-llamacpp", f"{h3.address}/32")
        upload(lab, h3, RULESET_PATH, (wrong_admin / f"host-{h3.name}.nft").read_text())
        upload(lab, h3, "/root/apply.sh", apply_script(RULESET_PATH, revert_after=6))
        run_on(lab, h3, "sh /root/apply.sh", timeout=30)  # the established session survives
        applied = time.monotonic()
        with pytest.raises(LabError):
            run_on(lab, h3, confirm_script(), timeout=10)  # a new connection does not
        deadline = time.monotonic() + 30
        while True:
            try:
                table = run_on(lab, h3, "nft list table inet appliance", timeout=10).stdout
                break
            except LabError:
                assert time.monotonic() < deadline, "the revert did not give SSH back"
                time.sleep(1)
        # On time (systemd's default timer accuracy of a minute once made this flaky).
        assert time.monotonic() - applied < 20
        # The previous (confirmed) ruleset is back: admin is this machine again.
        assert lab.gateway in table and h3.address not in table
    assert time.monotonic() - started < 120
