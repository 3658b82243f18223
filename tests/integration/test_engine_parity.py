"""Both engines, one plan: the same bundle deployed with pyinfra to host A and Ansible to host B.

Two fresh lab hosts (one lab), each in its own single-host inventory, get the
same demo-cpu release 1 with the same site file (``deploy --site``): the model
server, Keycloak (the bundle's STAND-IN distribution and Java runtime,
``keycloak_standin``: its system user, its directories, the distribution
unpacked, the realm import and admin file sent 0600), the gateway and the
host's firewall. Then both are read by an independent checker over plain SSH
(neither engine): ``probe.probe_script``, every path under
``/opt/appliance``, ``/etc/appliance`` and Keycloak's distribution with its
owner, mode, type and link target, the sha256 of every file, and the units'
states. The two
hosts must agree on all of it, but for the files that name the host itself
(its firewall ruleset, the names in the gateway's certificate request), and
each host's files must be its plan's bytes. Host B (Ansible) must answer a chat completion with no connection
attempt off the host; a second Ansible deploy must change nothing, and so must
the engine run directly and plain ``ansible-playbook`` with the generated files
(the way an Ansible shop would run ``playbooks/deploy.yml``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.bundle.site.verify import verify_bundle
from appliance.deploy.host_desired import HostDesired
from appliance.deploy.integrity import RECORD_FILE
from appliance.deploy.probe import diff, parse_probe, probe_script
from appliance.deploy.run import plan_hosts
from appliance.deploy.site import load_site
from appliance.events import drain
from appliance.lab import dev_site
from appliance.lab.state import Lab, LabHost
from appliance.plan.inventory import load_inventory
from appliance.plan.profiles import load_profiles
from tests.integration.conftest import SESSION, temporary_lab
from tests.integration.helpers import (
    EGRESS_RULES,
    appliance,
    build_keycloak_bundle,
    chat,
    deploy,
    on,
    single_host_inventory,
    sso_site,
)

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
BUNDLE = "demo-kc-1"
SITE_FILE = "site-sso.yaml"

# Read-only: every path with mode, type and link target; the digest of every file; the unit's state.
# Keycloak's distribution without what the stand-in writes when it runs (its signing key differs).
STATE_SCRIPT = r"""set -u
kc=/var/lib/appliance/keycloak-dist
echo @@paths
find /opt/appliance /etc/appliance $kc /var/lib/appliance/keycloak -path "$kc/*/data/stand-in-*" -prune \
  -o -printf '%p %u %m %y %l\n' | LC_ALL=C sort
echo @@digests
find /opt/appliance /etc/appliance $kc /etc/systemd/system/appliance-model.service \
  /etc/systemd/system/appliance-gateway.service /etc/systemd/system/appliance-nftables.service \
  /etc/systemd/system/appliance-keycloak.service -path "$kc/*/data/stand-in-*" -prune -o -type f -print0 \
  | LC_ALL=C sort -z | xargs -0 sha256sum
echo @@pyc
find /opt/appliance -name '*.pyc' -exec sh -c \
  'for f; do printf "%s  %s\n" "$({ head -c 8 "$f"; tail -c +13 "$f"; } | sha256sum | cut -d" " -f1)" "$f"; done' sh {} + \
  | LC_ALL=C sort -k 2
echo @@units
systemctl is-enabled appliance-model || true
systemctl is-active appliance-model || true
systemctl is-enabled appliance-gateway || true
systemctl is-active appliance-gateway || true
systemctl is-enabled appliance-keycloak || true
systemctl is-active appliance-keycloak || true
getent passwd appliance-keycloak | cut -d: -f1,6,7
systemctl is-enabled appliance-nftables || true
nft list table inet appliance >/dev/null && echo firewall-loaded || true
"""
# CPython writes the source's mtime into each .pyc (pip compiles them at install time): the
# one thing that legitimately differs between two installs of the same wheels. Their digests
# are compared without those 4 bytes (header bytes 9-12).
NONDETERMINISTIC = re.compile(r"/__pycache__/[^/]+\.pyc$")


@dataclass(frozen=True)
class HostState:
    paths: tuple[str, ...]
    digests: dict[str, str]
    pyc: dict[str, str]  # without the source mtime
    units: tuple[str, ...]
    probe: dict[str, object]


def install_record(lab: Lab, host: LabHost) -> list[dict[str, object]]:
    """The release's install record (deploy/integrity.py) less what differs by build time:
    mtimes, and the digests of .pyc files (they embed their source's mtime)."""
    text = on(lab, host, f"cat /opt/appliance/releases/1/{RECORD_FILE}")
    entries = [json.loads(line) for line in text.splitlines() if line]
    for entry in entries:
        entry.pop("mtime_ns")
        if NONDETERMINISTIC.search("/" + str(entry["path"])):
            entry.pop("sha256", None)
    return entries


def read_state(lab: Lab, host: LabHost, desired: HostDesired) -> HostState:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in on(lab, host, STATE_SCRIPT).splitlines():
        if line.startswith("@@"):
            current = line[2:]
            sections[current] = []
        else:
            sections[current].append(line)
    digests, pyc = ({path: digest for digest, _, path in (ln.partition("  ") for ln in sections[s])}
                    for s in ("digests", "pyc"))  # fmt: skip
    # The probe's free space ("disk") is the shared machine's, read at some moment: not host state.
    probe = {
        k: v for k, v in parse_probe(on(lab, host, probe_script(desired))).items() if k != "disk"
    }
    return HostState(tuple(sections["paths"]), digests, pyc, tuple(sections["units"]), probe)


@dataclass(frozen=True)
class Site:
    lab: Lab
    work: Path
    a: LabHost  # pyinfra
    b: LabHost  # Ansible
    inventory_a: Path
    inventory_b: Path
    desired_a: HostDesired
    desired_b: HostDesired
    first_ansible_deploy: float


def plan_for(work: Path, inventory: Path) -> HostDesired:
    verified = drain(verify_bundle(work / BUNDLE, work / "keys/root.json"))
    loaded = load_inventory(inventory)
    site = load_site(work / "site" / SITE_FILE)
    profiles = load_profiles()
    host = loaded.hosts[0]
    return plan_hosts(verified, [host], profiles, profiles["cpu-llamacpp"], force=False,
                      site=site, inventory=loaded)[host.name][1]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("parity")
    assert build_keycloak_bundle(work) == BUNDLE
    with temporary_lab(f"{SESSION}-parity", 2) as lab:
        a, b = lab.hosts
        roles = ("model-server", "gateway")
        inventory_a = single_host_inventory(lab, a, work / "inventory-a.yml", roles)
        inventory_b = single_host_inventory(lab, b, work / "inventory-b.yml", roles)
        dev_site.prepare(work / "site", lab, "gemma-3-270m-q4_k_m")  # access file, secrets dir
        # One site file for both: the issuer names the site's gateway, not either host.
        site_file = str(sso_site(work / "site" / SITE_FILE, lab, "https://llm.lab.example:8443"))
        on(lab, b, EGRESS_RULES)
        start = time.monotonic()
        first = deploy(work, inventory_a, BUNDLE, "--engine", "pyinfra", "--site", site_file)
        print(
            f"\npyinfra engine: first deploy (appliance deploy, one host) {time.monotonic() - start:.1f} s"
        )
        assert first["hosts"][0]["status"] == "converged", first  # type: ignore[index]
        start = time.monotonic()
        second = deploy(work, inventory_b, BUNDLE, "--engine", "ansible", "--site", site_file)
        took = time.monotonic() - start
        assert second["hosts"][0]["status"] == "converged", second  # type: ignore[index]
        print(f"ansible engine: first deploy (appliance deploy, one host) {took:.1f} s")
        yield Site(lab, work, a, b, inventory_a, inventory_b, plan_for(work, inventory_a),
                   plan_for(work, inventory_b), took)  # fmt: skip


def test_both_engines_leave_the_same_host_state(site: Site) -> None:
    # The same plan for both hosts (identical lab hosts): the same files, digests, units; only
    # the files that name the host itself differ (its ruleset; its names in the gateway's unit).
    assert site.desired_a.release_files == site.desired_b.release_files
    own = {ra.path for ra, rb in zip(site.desired_a.rendered, site.desired_b.rendered, strict=True)
           if ra != rb}  # fmt: skip
    assert {p.rsplit("/", 1)[-1] for p in own} == {"nftables.nft", "appliance-gateway.service"}
    own |= {"/etc/appliance/nftables.nft", "/etc/systemd/system/appliance-gateway.service"}
    # The install record holds each host's own mtimes (and .pyc digests): compared below
    # without them.
    own.add(f"/opt/appliance/releases/1/{RECORD_FILE}")
    a = read_state(site.lab, site.a, site.desired_a)
    b = read_state(site.lab, site.b, site.desired_b)
    record_a, record_b = (install_record(site.lab, host) for host in (site.a, site.b))
    assert record_a == record_b and len(record_a) > 1000

    assert a.paths == b.paths  # same file set, modes, types, link targets
    assert len(a.paths) > 1000  # the release, its venv, /etc/appliance
    assert "/opt/appliance/current root 777 l /opt/appliance/releases/1" in a.paths
    assert "/opt/appliance/releases/1 root 555 d " in a.paths
    assert "/opt/appliance/releases/1/.sha256sums root 444 f " in a.paths
    assert "/etc/appliance/releases/1/appliance-model.service root 644 f " in a.paths
    assert "/etc/appliance/releases/1/gateway.yaml root 644 f " in a.paths
    assert "/opt/appliance/releases/1/runtime/java/bin/java root 555 f " in a.paths
    kc = "/var/lib/appliance/keycloak-dist/1"
    assert {f"{kc} root 755 d ", f"{kc}/lib/quarkus appliance-keycloak 755 d ",
            f"{kc}/data/import/appliance-realm.json appliance-keycloak 600 f ",
            "/etc/appliance/keycloak/keycloak-admin.env root 600 f ",
            "/var/lib/appliance/keycloak appliance-keycloak 700 d "} <= set(a.paths)  # fmt: skip
    assert [
        p for p in a.paths if p.startswith("/opt/appliance/releases/1/gateway-venv/bin/python ")
    ]
    assert not [p for p in a.paths if ".staging-" in p]

    assert a.digests.keys() == b.digests.keys()
    differing = sorted(p for p in a.digests if a.digests[p] != b.digests[p])
    assert [p for p in differing if not NONDETERMINISTIC.search(p) and p not in own] == []
    assert set(differing) - own <= a.pyc.keys() and len(a.pyc) > 100
    assert a.pyc == b.pyc  # .pyc files: identical but for the source mtime
    print(
        f"\nparity: {len(a.paths)} paths, {len(a.digests)} files, {len(differing)} .pyc differ in mtime only"
    )
    for rendered in site.desired_b.rendered:  # the Ansible host's renderings are the plan's bytes
        assert b.digests[rendered.path] == rendered.sha256
    for rendered in site.desired_a.rendered:  # and the pyinfra host's
        assert a.digests[rendered.path] == rendered.sha256
    for f in site.desired_b.release_files:
        assert b.digests[f.path] == f.sha256

    assert a.units == b.units == (
        "enabled", "active", "enabled", "active", "enabled", "active",
        "appliance-keycloak:/var/lib/appliance/keycloak:/usr/sbin/nologin", "enabled", "firewall-loaded",
    )  # fmt: skip
    assert {k: v for k, v in a.probe.items() if k != "files"} == {
        k: v for k, v in b.probe.items() if k != "files"
    }
    assert a.probe["current"] == "/opt/appliance/releases/1"
    assert diff(site.desired_a, a.probe) == diff(site.desired_b, b.probe) == []


def test_the_ansible_host_serves_and_nothing_left_it(site: Site) -> None:
    answer = chat(site.lab, site.b)
    assert answer["usage"]["completion_tokens"] > 0  # type: ignore[index]
    assert answer["choices"][0]["message"]["content"]  # type: ignore[index]
    counters = on(site.lab, site.b, "nft list chain inet egress_probe out")
    assert counters.count("counter packets 0 bytes 0") == 2, counters


def test_a_second_ansible_deploy_changes_nothing(site: Site, tmp_path: Path) -> None:
    from appliance.deploy.engines.ansible import converge

    lab, b = site.lab, site.b
    before = read_state(lab, b, site.desired_b)
    started = on(lab, b, "systemctl show -p ActiveEnterTimestampMonotonic appliance-model")

    start = time.monotonic()
    again = deploy(site.work, site.inventory_b, BUNDLE, "--engine", "ansible", "--site",
                   str(site.work / "site" / SITE_FILE))  # fmt: skip
    cli = time.monotonic() - start
    assert again["hosts"][0]["status"] == "unchanged", again  # type: ignore[index]

    # The engine itself on a converged host: it checks, and changes nothing.
    start = time.monotonic()
    [outcome] = converge([site.desired_b])
    engine = time.monotonic() - start
    assert (outcome.ok, outcome.changed, outcome.message) == (True, False, "already converged")

    # Plain ansible-playbook with the inventory and host_vars `deploy --emit-ansible` writes
    # (playbooks/README.md); the command it prints is the one run here.
    emitted = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", BUNDLE, "--trust", "keys/root.json",
                        "--inventory", site.inventory_b, "--emit-ansible", tmp_path / "run", "--json",
                        "--site", site.work / "site" / SITE_FILE, cwd=site.work)  # fmt: skip
    command = json.loads(emitted.stdout)["command"]
    assert command.startswith(
        f"ANSIBLE_CONFIG={tmp_path / 'run' / 'ansible.cfg'} ansible-playbook -i "
    )
    assert sorted(p.name for p in (tmp_path / "run/inventory/host_vars").iterdir()) == [
        f"{b.name}.yml"
    ]
    assert not list(tmp_path.glob(".run.partial-*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    result = subprocess.run(command, shell=True, env=env | {"PATH": f"{BIN}:{env['PATH']}"},
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(rf"{b.name}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", result.stdout)

    assert read_state(lab, b, site.desired_b) == before  # not a byte, mode or state changed
    assert on(lab, b, "systemctl show -p ActiveEnterTimestampMonotonic appliance-model") == started
    print(
        f"\nansible engine: first deploy {site.first_ansible_deploy:.1f} s; no-op re-deploy "
        f"(appliance deploy) {cli:.1f} s; no-op converge (engine only) {engine:.1f} s"
    )
