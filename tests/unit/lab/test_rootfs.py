"""The image recipe: cache key and the preparation that makes a bootstrapped tree lab-ready."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.lab.rootfs import (
    MASKED_UNITS,
    PACKAGES,
    SUITE,
    cache_key,
    prepare_image,
    rootfs_path,
)


def test_cache_key_follows_suite_and_package_set_only() -> None:
    assert cache_key() == cache_key(SUITE, tuple(reversed(PACKAGES)))
    assert cache_key() != cache_key(SUITE, (*PACKAGES, "curl"))
    assert cache_key() != cache_key("trixie")
    assert rootfs_path(Path("/c")) == Path(f"/c/rootfs-{cache_key()}")


def test_required_packages_for_the_deploy_are_in() -> None:
    assert {"systemd", "openssh-server", "python3", "python3-venv", "nftables", "iproute2"} <= set(
        PACKAGES
    )


def _bootstrapped_tree(root: Path) -> None:
    """The parts of a debootstrap result that prepare_image touches."""
    for d in ("etc/ssh/sshd_config.d", "etc/apt", "etc/systemd/system/timers.target.wants",
              "etc/systemd/system/multi-user.target.wants", "var/lib/dbus", "var/cache/apt/archives"):  # fmt: skip
        (root / d).mkdir(parents=True)
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key"):
        (root / "etc/ssh" / name).write_text("secret")
    (root / "etc/machine-id").write_text("447b865858074ec9b92b60e7bf0437ba\n")
    (root / "var/lib/dbus/machine-id").write_text("447b865858074ec9b92b60e7bf0437ba\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.255.255.53\n")
    (root / "etc/apt/sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (root / "etc/hostname").write_text("vm\n")
    (root / "etc/systemd/system/timers.target.wants/apt-daily.timer").symlink_to(
        "/lib/systemd/system/apt-daily.timer"
    )
    (root / "etc/systemd/system/multi-user.target.wants/ssh.service").symlink_to(
        "/lib/systemd/system/ssh.service"
    )
    (root / "var/cache/apt/archives/x.deb").write_text("deb")


def test_prepare_image_strips_identity_network_and_slow_units(tmp_path: Path) -> None:
    _bootstrapped_tree(tmp_path)
    prepare_image(tmp_path)
    etc = tmp_path / "etc"
    assert not list((etc / "ssh").glob("ssh_host_*"))
    assert (etc / "machine-id").read_text() == ""
    assert os.readlink(tmp_path / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert "nameserver" not in (etc / "resolv.conf").read_text()
    assert "deb " not in (etc / "apt/sources.list").read_text()
    sshd = (etc / "ssh/sshd_config.d/appliance-lab.conf").read_text()
    assert "PasswordAuthentication no" in sshd
    assert "PermitRootLogin prohibit-password" in sshd
    for unit in MASKED_UNITS:
        assert os.readlink(etc / "systemd/system" / unit) == "/dev/null"
    assert not (etc / "systemd/system/timers.target.wants/apt-daily.timer").is_symlink()
    assert (etc / "systemd/system/multi-user.target.wants/ssh.service").is_symlink()
    assert (tmp_path / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "root/.ssh/authorized_keys").exists()  # the key comes per lab, at boot
    assert not list((tmp_path / "var/cache/apt/archives").glob("*.deb"))


def test_prepare_image_is_repeatable(tmp_path: Path) -> None:
    _bootstrapped_tree(tmp_path)
    prepare_image(tmp_path)
    prepare_image(tmp_path)
    assert os.readlink(tmp_path / "etc/systemd/system/apt-daily.timer") == "/dev/null"
