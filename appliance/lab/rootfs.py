"""The lab hosts' root filesystem: a minimal Debian with systemd and sshd, built once, cached.

Built with ``debootstrap --variant=minbase`` from the machine's own Debian
mirror (``appliance.lab.mirror``), then prepared to boot fast and
disconnected (``prepare_image``). Invariants:

- The cache directory ``rootfs-<key>`` exists only when complete: the image is
  built in a temporary sibling and renamed into place as the last step, so an
  interrupted build leaves no half cache (and the next build removes its
  leftovers). The key hashes the suite, the package list and
  ``IMAGE_VERSION``; change either and a new image is built.
- A cached image is never modified afterwards: hosts boot on an overlay of it.
- The image holds no secret and no identity: no SSH host keys, no
  authorized_keys, an empty machine-id, no DNS resolver, no apt source. Each
  host gets its own keys and identity when it is created (``appliance.lab.hosts``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Generator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from appliance.events import Event, Finished, Progress, Started
from appliance.lab.mirror import find_mirror
from appliance.lab.proc import file_lock, remove_tree, stream_lines

SUITE = "bookworm"
# python3 is all pyinfra and Ansible need on a target; python3-venv because the
# deploy makes a virtualenv there from bundled wheels; libnuma1 because vLLM's CPU
# build (profile cpu-vllm) loads libnuma.so.1, a system library a site installs from
# its OS media (the deploy's preflight refuses a host without it); g++ and python3-dev
# because vLLM without --enforce-eager compiles its model with torch.compile (inductor
# builds C++ kernels and their Python bindings: a compiler and Python.h), which pipeline
# parallel across hosts needs on the CPU build (profile cpu-vllm-group).
PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
    "iproute2", "nftables", "procps", "libnuma1", "g++", "python3-dev",
)  # fmt: skip
IMAGE_VERSION = 1  # bump whenever prepare_image changes what it writes
CACHE_ROOT = Path("/var/cache/appliance/lab")
DEBOOTSTRAP_TIMEOUT_S = 1800.0
IMAGE_INFO = "etc/appliance-lab-image.json"

# Units that slow the boot, wait for a network that will never come, or run
# maintenance a throwaway host does not need.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "systemd-networkd-wait-online.service",
    "systemd-pstore.service", "systemd-timesyncd.service", "getty@tty1.service",
)  # fmt: skip

SSHD_CONFIG = """\
# appliance lab: root logs in with the lab's key only.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

# The lab writes each host's key before boot; this only covers an image booted another way.
SSH_SERVICE_DROPIN = """\
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
"""


def cache_key(suite: str = SUITE, packages: Sequence[str] = PACKAGES) -> str:
    recipe = {"suite": suite, "packages": sorted(set(packages)), "image_version": IMAGE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_path(
    cache_root: Path = CACHE_ROOT, suite: str = SUITE, packages: Sequence[str] = PACKAGES
) -> Path:
    return cache_root / f"rootfs-{cache_key(suite, packages)}"


def prepare_image(root: Path) -> None:
    """Make a freshly bootstrapped tree boot fast, disconnected and without identity."""
    etc = root / "etc"
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "machine-id").write_text(
        ""
    )  # systemd makes one at first boot; the lab writes one per host
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()  # else systemd would copy this one into every host
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (etc / "hostname").write_text("localhost\n")
    _replace_file(etc / "resolv.conf", "# appliance lab host: disconnected, no DNS\n")
    (etc / "apt/sources.list").write_text("# appliance lab host: disconnected, no package source\n")
    (etc / "ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (etc / "ssh/sshd_config.d/appliance-lab.conf").write_text(SSHD_CONFIG)
    dropin = etc / "systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "appliance-lab.conf").write_text(SSH_SERVICE_DROPIN)
    units = etc / "systemd/system"
    for unit in MASKED_UNITS:
        for wanted in units.glob(f"*.wants/{unit}"):
            wanted.unlink()
        mask = units / unit
        if mask.exists() or mask.is_symlink():
            mask.unlink()
        mask.symlink_to("/dev/null")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _replace_file(path: Path, text: str) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)


def ensure_rootfs(
    *,
    cache_root: Path = CACHE_ROOT,
    suite: str = SUITE,
    packages: Sequence[str] = PACKAGES,
    mirror: str | None = None,
) -> Generator[Event, None, Path]:
    """The cached image for (suite, packages); built first if missing. Returns its directory."""
    final = rootfs_path(cache_root, suite, packages)
    if final.is_dir():
        yield Finished("rootfs", f"root filesystem: cached {final}")
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    # One build at a time per machine; a second caller waits, then finds the cache.
    with file_lock(
        cache_root / ".lock", timeout=DEBOOTSTRAP_TIMEOUT_S + 120, what="the rootfs cache"
    ):
        if final.is_dir():
            yield Finished("rootfs", f"root filesystem: cached {final}")
            return final
        for stale in cache_root.glob(".build-*"):
            remove_tree(stale)  # an interrupted build; nobody else builds while we hold the lock
        source = mirror or find_mirror(suite)
        work = cache_root / f".build-{final.name}-{secrets.token_hex(4)}"
        started = time.monotonic()
        yield Started("rootfs")
        try:
            argv = [
                "debootstrap", "--variant=minbase", "--components=main",
                f"--include={','.join(sorted(set(packages)))}", suite, str(work), source,
            ]  # fmt: skip
            done = 0
            for line in stream_lines(argv, timeout=DEBOOTSTRAP_TIMEOUT_S):
                if line.startswith("I: "):
                    done += 1
                    yield Progress("rootfs", 0, None, done_items=done, item=line[3:])
            prepare_image(work)
            info = {
                "suite": suite,
                "packages": sorted(set(packages)),
                "image_version": IMAGE_VERSION,
                "mirror": source,
                "built": datetime.now(UTC).replace(microsecond=0).isoformat(),
            }
            (work / IMAGE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.rename(work, final)
        except BaseException:
            with contextlib.suppress(Exception):
                remove_tree(work)
            raise
        yield Finished(
            "rootfs",
            f"root filesystem: built {final} from {source} in {time.monotonic() - started:.0f} s",
        )
        return final
