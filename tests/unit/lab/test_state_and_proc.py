"""Lab records, listing without root, the boot command line, and the bounded process helpers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from appliance.lab.errors import LabError
from appliance.lab.hosts import lab_list, nspawn_argv
from appliance.lab.proc import (
    mount_points,
    process_matches,
    spawn_detached,
    stream_lines,
    wait_until,
)
from appliance.lab.state import (
    Lab,
    LabHost,
    LabPaths,
    lab_files,
    lab_from_json,
    lab_to_json,
    save_lab,
)


def _lab(paths: LabPaths, pid: int | None = None) -> Lab:
    host = LabHost(
        name="t-1", address="10.231.0.2", netns="applab-t-1", veth="applab0h1",
        disk=paths.disk_dir("t") / "t-1", log=paths.state_dir("t") / "logs/t-1.log", pid=pid,
    )  # fmt: skip
    return Lab(
        name="t", status="up", index=0, subnet="10.231.0.0/24", bridge="applab0",
        gateway="10.231.0.1", rootfs="/var/cache/appliance/lab/rootfs-x", created="2026-01-01T00:00:00+00:00",
        hosts=(host,), **lab_files(paths, "t"),
    )  # fmt: skip


def test_record_round_trip_recomputes_paths_from_the_name(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "run", tmp_path / "lib")
    lab = _lab(paths, pid=123)
    data = lab_to_json(lab)
    assert lab_from_json(json.loads(json.dumps(data)), paths) == lab
    # A damaged record cannot point teardown at the machine's own links or files.
    data["hosts"][0].update(disk="/", netns="default", veth="eth0", name="../../etc")
    data.update(key="/etc/shadow", bridge="eth0")
    again = lab_from_json(data, paths)
    assert again == lab


def test_list_without_root_reports_stopped_and_broken_labs(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "run", tmp_path / "lib")
    save_lab(_lab(paths, pid=2**22 + 7))  # no such process
    (paths.state_root / "half").mkdir()
    infos = {i.name: i for i in lab_list(paths=paths)}
    assert infos["t"].status == "stopped"
    assert infos["t"].hosts[0].running is False
    assert infos["half"].status == "broken"


def test_boot_command_is_the_recipe_without_ephemeral_copy(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "run", tmp_path / "lib")
    argv = nspawn_argv(_lab(paths).hosts[0])
    for flag in ("--register=no", "--keep-unit", "--console=passive", "--capability=CAP_NET_ADMIN",
                 "--boot", "--machine=t-1", "--hostname=t-1", "--resolv-conf=off",
                 "--network-namespace-path=/run/netns/applab-t-1"):  # fmt: skip
        assert flag in argv
    assert f"--directory={paths.disk_dir('t') / 't-1' / 'root'}" in argv
    assert "--ephemeral" not in argv


def test_mountinfo_parsing_unescapes_spaces() -> None:
    text = (
        "36 35 98:0 / / rw,noatime master:1 - ext4 /dev/root rw\n"
        "40 36 0:44 / /var/lib/appliance/lab/a\\040b/root rw - overlay overlay rw,lowerdir=x\n"
    )
    assert mount_points(text) == [Path("/"), Path("/var/lib/appliance/lab/a b/root")]


def test_stream_lines_yields_output_and_raises_with_the_tail() -> None:
    gen = stream_lines(["sh", "-c", "echo one; echo two"], timeout=10)
    assert list(gen) == ["one", "two"]
    with pytest.raises(LabError, match=r"exit 3.*\n.*boom"):
        list(stream_lines(["sh", "-c", "echo boom; exit 3"], timeout=10))


def test_stream_lines_is_bounded() -> None:
    started = time.monotonic()
    with pytest.raises(LabError, match=r"did not finish within 0\.5 s"):
        list(stream_lines(["sleep", "30"], timeout=0.5))
    assert time.monotonic() - started < 10


def test_detached_process_is_recognised_reaped_and_not_confused(tmp_path: Path) -> None:
    pid = spawn_detached(["sleep", "30"], tmp_path / "log")
    try:
        assert os.getsid(pid) == pid  # its own session and process group
        assert process_matches(pid, "sleep", "30")
        assert not process_matches(pid, "systemd-nspawn")
    finally:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not process_matches(pid, "sleep"), 5)  # a zombie counts as gone
