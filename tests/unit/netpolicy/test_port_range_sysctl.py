"""The sysctl drop-in that pins a group member's ephemeral ports to the group's range."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.netpolicy.model import NetworkPolicyError
from appliance.netpolicy.port_range_sysctl import (
    PORT_RANGE_SYSCTL,
    SYSCTL_PATH,
    group_sysctl,
    port_range_value,
)
from appliance.plan.group import GroupNetwork


def group(port_range: tuple[int, int] = (40000, 44095), master_port: int = 29501) -> GroupNetwork:
    return GroupNetwork("pp", ("gpu-1", "gpu-2"), "eth1", ("10.20.2.11", "10.20.2.12"),
                        master_port, port_range)  # fmt: skip


def settings(text: str) -> dict[str, str]:
    """``key = value`` lines as sysctl.d(5) reads them (comments and blank lines skipped)."""
    found = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"not a sysctl.d line: {line!r}"
        found[key.strip()] = value.strip()
    return found


def test_the_drop_in_sets_the_groups_range_and_nothing_else() -> None:
    text = group_sysctl(group())
    assert settings(text) == {"net.ipv4.ip_local_port_range": "40000 44095"}
    assert "group pp" in text and "eth1" in text and text.endswith("\n")
    assert SYSCTL_PATH.startswith("/etc/sysctl.d/") and SYSCTL_PATH.endswith(".conf")
    assert settings(group_sysctl(group((50000, 50255), 29400))) == {
        PORT_RANGE_SYSCTL: "50000 50255"
    }


def test_the_key_is_a_kernel_setting() -> None:
    proc = Path("/proc/sys") / PORT_RANGE_SYSCTL.replace(".", "/")
    if not proc.exists():
        pytest.skip(f"{proc} is not there (not Linux?)")
    first, last = proc.read_text().split()
    assert int(first) < int(last)  # the same shape: "first last"


@pytest.mark.parametrize(
    ("port_range", "master_port"),
    [
        ((44095, 40000), 29501),
        ((40000, 44095), 41000),
        ((80, 4000), 29501),
        ((40000, 70000), 29501),
    ],
)
def test_a_bad_range_is_refused(port_range: tuple[int, int], master_port: int) -> None:
    with pytest.raises(NetworkPolicyError) as caught:
        port_range_value(group(port_range, master_port))
    assert "serving group pp: expected a port range" in caught.value.message
    assert caught.value.hint
