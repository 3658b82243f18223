"""Lab hosts: bring a lab up, tear it down, list the labs on this machine.

A host is a Debian system booted by ``systemd-nspawn --boot`` on an overlay of
the cached image (``appliance.lab.rootfs``), inside its own network namespace
on the lab bridge (``appliance.lab.network``), reachable over SSH as root with
the lab's key only.

Invariants:

- Air gap: a host has no default route and no DNS, only its lab /24.
- Identity per host, never in the image: host name, machine-id, SSH host key
  and ``authorized_keys`` are written into the host's own overlay layer
  before it boots; the host keys go into the lab's ``known_hosts`` at the same
  time, so every SSH connection checks them strictly from the first one.
- Nothing is left behind: ``lab_up`` tears down whatever it made if it fails
  or is interrupted; ``lab_down`` finds what a lab owns from its record, its
  namespace names and its link aliases, removes all of it, and is idempotent.
  Stopping escalates: ``systemctl poweroff`` over SSH (a host without SSH
  yet gets SIGTERM to nspawn, which asks the container to power off, and a
  second SIGTERM, which ends it, a few seconds later), then SIGTERM to nspawn,
  then SIGKILL to nspawn and to every process left in the host's namespace.
- Every wait is bounded (the ``*_S`` constants below).

Why an overlay rather than ``nspawn --ephemeral``: on a file system without
snapshots ``--ephemeral`` copies the whole image (~330 MB) per boot, and a
killed nspawn leaves that copy next to the shared cache, where no lab can
tell whose it is. An overlay is instant, lives in the lab's own directory, and
lets the lab write each host's identity before boot.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import signal
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path

from appliance.events import Event, Finished, Progress, Started, Warned, drain
from appliance.lab.errors import LabError, LabInputError
from appliance.lab.inventory_files import (
    InventoryHost,
    render_etc_hosts,
    render_inventory,
    render_known_hosts,
    roles_for,
)
from appliance.lab.network import (
    HostNet,
    LabNet,
    check_host_count,
    check_name,
    choose_index,
    create_bridge,
    create_host_link,
    delete_link,
    delete_netns,
    lab_alias,
    lab_range,
    links,
    machine_networks,
    netns_names,
    netns_pids,
    plan_network,
)
from appliance.lab.proc import (
    file_lock,
    kill_group,
    process_matches,
    remove_tree,
    require_commands,
    require_root,
    run,
    signal_pid,
    spawn_detached,
    wait_until,
)
from appliance.lab.rootfs import CACHE_ROOT, ensure_rootfs
from appliance.lab.ssh import run_on
from appliance.lab.state import Lab, LabHost, LabPaths, lab_files, lab_names, load_lab, save_lab
from appliance.plan.inventory import ansible_ini, load_inventory

SSH_WAIT_S = 90.0  # all hosts answer SSH (a boot takes ~1-3 s; slack for a loaded machine)
BOOT_WAIT_S = 60  # systemd reaches running/degraded after SSH answers
POWEROFF_WAIT_S = 20.0  # clean shutdown after `systemctl poweroff`
TERM_WAIT_S = 10.0  # after SIGTERM to nspawn
EARLY_STOP_S = 3.0  # a host not answering SSH gets this long to power off before a hard stop
KILL_WAIT_S = 10.0  # after SIGKILL
LOCK_WAIT_S = 60.0
REQUIRED_COMMANDS = (
    "debootstrap", "systemd-nspawn", "ssh", "ssh-keygen", "ip", "mount", "umount", "rm",
)  # fmt: skip
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")


@dataclass(frozen=True, slots=True)
class LabHostInfo:
    name: str
    address: str
    running: bool


@dataclass(frozen=True, slots=True)
class LabInfo:
    name: str
    status: str  # up | creating | degraded (some hosts stopped) | stopped | broken (no record)
    subnet: str | None
    hosts: tuple[LabHostInfo, ...]
    state_dir: Path
    inventory: Path | None


# /proc/sys/net writable inside a host (its own network namespace), as on a real host: the
# deploy sets a serving group member's net.ipv4.ip_local_port_range (the collective
# library's ports). The rest of /proc/sys stays read-only.
NSPAWN_ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}


def nspawn_argv(host: LabHost) -> list[str]:
    """The command that boots ``host``: its overlay tree, inside its own network namespace."""
    return [
        "systemd-nspawn",
        "--register=no", "--keep-unit",  # no systemd/dbus on the machine to register with
        "--console=passive",
        "--capability=CAP_NET_ADMIN",  # nftables inside the host
        "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        f"--hostname={host.name}",
        f"--machine={host.name}",
        f"--directory={host.disk / 'root'}",
        f"--network-namespace-path=/run/netns/{host.netns}",
        "--boot",
    ]  # fmt: skip


def _nspawn_alive(host: LabHost) -> bool:
    return host.pid is not None and process_matches(
        host.pid, "systemd-nspawn", f"--machine={host.name}"
    )


# --- up --------------------------------------------------------------------------------


def lab_up(
    name: str = "lab",
    hosts: int = 1,
    *,
    network: str | None = None,
    mirror: str | None = None,
    paths: LabPaths | None = None,
    cache_root: Path = CACHE_ROOT,
) -> Generator[Event, None, Lab]:
    """Boot ``hosts`` disconnected Debian hosts named ``NAME-1``..; return the lab once SSH works.

    ``network`` (or ``APPLIANCE_LAB_NETWORK``) is the private range labs take a
    /24 from; ``mirror`` (or ``APPLIANCE_LAB_MIRROR``) overrides the apt sources.
    """
    paths = paths or LabPaths()
    check_name(name)
    check_host_count(hosts)
    require_root()
    require_commands(REQUIRED_COMMANDS)
    base = lab_range(text=network)
    _refuse_existing(name, paths)  # before a possibly long image build; again under the lock
    rootfs = yield from ensure_rootfs(cache_root=cache_root, mirror=mirror)
    started = time.monotonic()
    lab, net = _reserve(name, hosts, base, rootfs, paths)
    try:
        yield Started("lab up", total_items=hosts)
        lab = yield from _create(lab, net)
    except BaseException as exc:
        try:
            drain(lab_down(name, paths=paths))
        except Exception as cleanup:
            exc.add_note(
                f"cleaning up the half-created lab failed too ({cleanup}); "
                f"run `appliance lab down --name {name}`"
            )
        raise
    yield Finished(
        "lab up",
        f"lab {name}: {hosts} host(s) up in {time.monotonic() - started:.1f} s on {lab.subnet}",
    )
    return lab


def _reserve(
    name: str, count: int, base: IPv4Network, rootfs: Path, paths: LabPaths
) -> tuple[Lab, LabNet]:
    """Claim the name and a /24 (under a lock) and write the lab's first record."""
    with file_lock(paths.state_root / ".lock", timeout=LOCK_WAIT_S, what="the lab state"):
        _refuse_existing(name, paths)
        used = [other.index for n in lab_names(paths) if (other := load_lab(paths, n)) is not None]
        net = plan_network(name, count, base, choose_index(base, used, machine_networks()))
        lab = Lab(
            name=name,
            status="creating",
            index=net.index,
            subnet=str(net.subnet),
            bridge=net.bridge,
            gateway=str(net.gateway),
            rootfs=str(rootfs),
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
            hosts=tuple(_lab_host(paths, name, h) for h in net.hosts),
            **lab_files(paths, name),
        )
        lab.state_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        lab.state_dir.mkdir(mode=0o755)
        save_lab(lab)
    return lab, net


def _host_namespaces(name: str) -> list[str]:
    pattern = re.compile(rf"applab-{re.escape(name)}-\d+")
    return sorted(ns for ns in netns_names() if pattern.fullmatch(ns))


def _refuse_existing(name: str, paths: LabPaths) -> None:
    leftovers = _host_namespaces(name)
    if name in lab_names(paths) or leftovers:
        raise LabInputError(
            f"a lab named {name} already exists"
            + (f" (namespaces {', '.join(leftovers)})" if leftovers else ""),
            hint=f"Remove it with `appliance lab down --name {name}`, or pick another --name.",
        )


def _lab_host(paths: LabPaths, name: str, host: HostNet) -> LabHost:
    return LabHost(
        name=host.name,
        address=str(host.address),
        netns=host.netns,
        veth=host.veth,
        disk=paths.disk_dir(name) / host.name,
        log=paths.state_dir(name) / "logs" / f"{host.name}.log",
    )


def _create(lab: Lab, net: LabNet) -> Generator[Event, None, Lab]:
    yield Started("network", total_items=len(lab.hosts))
    alias = lab_alias(lab.name)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"appliance-lab-{lab.name}",
         "-f", str(lab.key)])  # fmt: skip
    lab.key.chmod(0o600)
    public_key = lab.key.with_name(lab.key.name + ".pub").read_text()
    create_bridge(net, alias)
    inventory_hosts = [
        InventoryHost(h.name, h.address, roles_for(i, len(lab.hosts)))
        for i, h in enumerate(lab.hosts, start=1)
    ]
    host_keys = []
    for host_net, host in zip(net.hosts, lab.hosts, strict=True):
        create_host_link(net, host_net, alias)
        host_key = _prepare_disk(host, Path(lab.rootfs), inventory_hosts, public_key)
        host_keys.append((host.name, host.address, host_key))
    lab.known_hosts.write_text(render_known_hosts(host_keys))
    yield Finished("network", f"network {lab.subnet} on bridge {lab.bridge}; booting")

    (lab.state_dir / "logs").mkdir(exist_ok=True)
    started = []
    for host in lab.hosts:
        started.append(replace(host, pid=spawn_detached(nspawn_argv(host), host.log, NSPAWN_ENV)))
        lab = replace(lab, hosts=(*started, *lab.hosts[len(started) :]))
        save_lab(lab)
    yield from _wait_for_ssh(lab)
    yield from _wait_for_boot(lab)

    lab.inventory.write_text(render_inventory(inventory_hosts, lab.key, lab.known_hosts))
    # Read back through the deploy's strict loader: the lab never hands out an inventory it refuses.
    lab.ansible_inventory.write_text(ansible_ini(load_inventory(lab.inventory)))
    lab = replace(lab, status="up")
    save_lab(lab)
    return lab


def _prepare_disk(host: LabHost, rootfs: Path, hosts: list[InventoryHost], public_key: str) -> str:
    """Mount the host's overlay and write its identity into it; return its SSH host public key."""
    root = host.disk / "root"
    for part in ("upper", "work", "root"):
        (host.disk / part).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={rootfs},upperdir={host.disk / 'upper'},workdir={host.disk / 'work'}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)])
    etc = root / "etc"
    (etc / "hostname").write_text(host.name + "\n")
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    (etc / "hosts").write_text(render_etc_hosts(hosts, host.name))
    host_key = etc / "ssh/ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
         "-f", str(host_key)])  # fmt: skip
    authorized = root / "root/.ssh/authorized_keys"
    authorized.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized.write_text(public_key)
    authorized.chmod(0o600)
    return host_key.with_name(host_key.name + ".pub").read_text().strip()


def _log_tail(host: LabHost, lines: int = 15) -> str:
    try:
        return "\n".join(host.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for_ssh(lab: Lab) -> Generator[Event, None, None]:
    total = len(lab.hosts)
    yield Started("boot", total_items=total)
    pending = list(lab.hosts)
    deadline = time.monotonic() + SSH_WAIT_S
    while pending:
        for host in list(pending):
            if not _nspawn_alive(host):
                raise LabError(
                    f"host {host.name} stopped while booting; end of {host.log}:\n{_log_tail(host)}"
                )
            probe = run_on(lab, host, "true", timeout=5, check=False, connect_timeout=1)
            if probe.returncode == 0:
                pending.remove(host)
                yield Progress(
                    "boot",
                    0,
                    None,
                    done_items=total - len(pending),
                    total_items=total,
                    item=host.name,
                )
        if pending and time.monotonic() >= deadline:
            raise LabError(
                f"no SSH answer from {', '.join(h.name for h in pending)} within {SSH_WAIT_S:g} s",
                hint=f"Boot logs: {', '.join(str(h.log) for h in pending)}",
            )
        if pending:
            time.sleep(0.25)


def _wait_for_boot(lab: Lab) -> Generator[Event, None, None]:
    for host in lab.hosts:
        state = run_on(
            lab, host, f"timeout {BOOT_WAIT_S} systemctl is-system-running --wait",
            timeout=BOOT_WAIT_S + 15, check=False,
        ).stdout.strip()  # fmt: skip
        if state == "degraded":
            failed = run_on(lab, host, "systemctl --failed --no-legend --plain", check=False)
            units = ", ".join(
                line.split()[0] for line in failed.stdout.splitlines() if line.split()
            )
            yield Warned(
                "lab up", f"host {host.name} booted degraded (failed units: {units or '?'})"
            )
        elif state != "running":
            raise LabError(
                f"host {host.name} did not finish booting within {BOOT_WAIT_S} s "
                f"(systemd state {state or 'unknown'!r})",
                hint=f"Look at `systemctl list-jobs` on the host, or {host.log}.",
            )


# --- down ------------------------------------------------------------------------------


def lab_down(name: str = "lab", *, paths: LabPaths | None = None) -> Generator[Event, None, None]:
    """Stop the lab's hosts and remove everything it made. Safe on a half-made or absent lab."""
    paths = paths or LabPaths()
    check_name(name)
    require_root()
    started = time.monotonic()
    lab = load_lab(paths, name)
    hosts = list(lab.hosts) if lab is not None else []
    namespaces = {h.netns for h in hosts} | set(_host_namespaces(name))
    alias = lab_alias(name)
    own_links = {n for n, a in links().items() if a == alias}
    if lab is not None:
        own_links |= {h.veth for h in hosts} | {lab.bridge}
    dirs = [d for d in (paths.disk_dir(name), paths.state_dir(name)) if d.exists()]
    if lab is None and not namespaces and not own_links and not dirs:
        yield Warned("lab down", f"no lab named {name} on this machine; nothing to remove")
        return
    yield Started("lab down", total_items=len(hosts))

    yield from _stop_hosts(lab, hosts)
    for netns in sorted(namespaces):
        # A killed nspawn leaves its container running: end whatever is left in the namespace,
        # and wait for those processes to be gone (they leave the namespace before they exit).
        left = netns_pids(netns)
        for pid in left:
            signal_pid(pid, signal.SIGKILL)
        if not wait_until(functools.partial(_all_gone, netns, left), KILL_WAIT_S):
            yield Warned(
                "lab down", f"processes of {netns} still there: {netns_pids(netns) or left}"
            )
    remove_tree(paths.disk_dir(name))  # unmounts the overlays first
    for netns in sorted(namespaces):
        delete_netns(netns)
    bridges = {lab.bridge} if lab is not None else set()
    for link in sorted(own_links - bridges) + sorted(own_links & bridges):
        delete_link(link)
    for machine in {ns.removeprefix("applab-") for ns in namespaces}:  # = the host names
        with contextlib.suppress(OSError):
            (NSPAWN_PROPAGATE / machine).rmdir()  # nspawn's per-machine dir, empty once stopped
    remove_tree(paths.state_dir(name))
    yield Finished(
        "lab down",
        f"lab {name} removed ({len(namespaces)} host(s)) in {time.monotonic() - started:.1f} s",
    )


def _all_gone(netns: str, pids: list[int]) -> bool:
    return not netns_pids(netns) and not any(process_matches(p) for p in pids)


def _ssh_poweroff(lab: Lab | None, host: LabHost) -> bool:
    if lab is None or not lab.key.exists() or not lab.known_hosts.exists():
        return False
    # --no-block: the SSH session returns at once instead of dying with the host.
    command = "systemctl poweroff --no-block"
    return run_on(lab, host, command, timeout=10, check=False).returncode == 0


def _stop_hosts(lab: Lab | None, hosts: list[LabHost]) -> Generator[Event, None, None]:
    alive = [h for h in hosts if _nspawn_alive(h)]
    if not alive:
        return
    no_ssh = []
    for host in alive:
        assert host.pid is not None
        if not _ssh_poweroff(lab, host):
            signal_pid(host.pid, signal.SIGTERM)  # nspawn asks the container's systemd to power off
            no_ssh.append(host)
    # A host without SSH is still booting and its systemd may not heed that request yet;
    # nothing on it is worth a wait: a second SIGTERM makes nspawn end the container at once.
    if no_ssh and not wait_until(lambda: not any(_nspawn_alive(h) for h in no_ssh), EARLY_STOP_S):
        for host in no_ssh:
            if host.pid is not None and _nspawn_alive(host):
                signal_pid(host.pid, signal.SIGTERM)
    if wait_until(lambda: not any(_nspawn_alive(h) for h in alive), POWEROFF_WAIT_S):
        return
    stubborn = [h for h in alive if _nspawn_alive(h)]
    for host in stubborn:
        assert host.pid is not None
        yield Warned("lab down", f"host {host.name} did not power off; stopping systemd-nspawn")
        signal_pid(host.pid, signal.SIGTERM)
    wait_until(lambda: not any(_nspawn_alive(h) for h in stubborn), TERM_WAIT_S)
    for host in stubborn:
        if _nspawn_alive(host):
            assert host.pid is not None
            kill_group(host.pid)  # nspawn was started as a session (and group) leader
    if not wait_until(lambda: not any(_nspawn_alive(h) for h in stubborn), KILL_WAIT_S):
        raise LabError(
            "systemd-nspawn still running after SIGKILL: "
            + ", ".join(f"{h.name} (pid {h.pid})" for h in stubborn if _nspawn_alive(h))
        )


# --- list ------------------------------------------------------------------------------


def lab_list(*, paths: LabPaths | None = None) -> list[LabInfo]:
    """The labs on this machine, with which of their hosts are running."""
    paths = paths or LabPaths()
    infos = []
    for name in lab_names(paths):
        lab = load_lab(paths, name)
        if lab is None:
            infos.append(LabInfo(name, "broken", None, (), paths.state_dir(name), None))
            continue
        hosts = tuple(LabHostInfo(h.name, h.address, _nspawn_alive(h)) for h in lab.hosts)
        running = sum(h.running for h in hosts)
        if lab.status == "creating":
            status = "creating"
        elif running == len(hosts):
            status = "up"
        else:
            status = "stopped" if running == 0 else "degraded"
        inventory = lab.inventory if lab.inventory.exists() else None
        infos.append(LabInfo(name, status, lab.subnet, hosts, lab.state_dir, inventory))
    return infos
