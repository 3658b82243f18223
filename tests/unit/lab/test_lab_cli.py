"""`appliance lab` arguments and the usage errors a person meets first (no root needed)."""

from __future__ import annotations

import argparse

import pytest

from appliance.cli import lab_cmds
from appliance.exitcodes import ExitCode
from appliance.lab.errors import LabInputError, LabPrerequisiteError


def _parse(*argv: str) -> tuple[argparse.Namespace, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="appliance")
    sub = parser.add_subparsers(dest="command")
    handlers = lab_cmds.register(sub)
    return parser.parse_args(list(argv)), dict(handlers)


def test_registers_up_down_list_with_defaults() -> None:
    args, handlers = _parse("lab", "up")
    assert set(handlers) == {"lab.up", "lab.down", "lab.list"}
    assert (args.subcommand, args.hosts, args.name, args.network, args.json) == (
        "up",
        1,
        "lab",
        None,
        False,
    )
    args, _ = _parse("lab", "up", "--hosts", "3", "--name", "ci")
    assert (args.hosts, args.name) == (3, "ci")
    assert _parse("lab", "list", "--json")[0].json is True
    assert _parse("lab", "down", "--name", "ci")[0].name == "ci"


def test_zero_hosts_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        _parse("lab", "up", "--hosts", "0")
    assert info.value.code == 2


def test_not_root_says_so_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for argv in (("lab", "up"), ("lab", "down")):
        args, _ = _parse(*argv)
        handler = {"up": lab_cmds.cmd_lab_up, "down": lab_cmds.cmd_lab_down}[args.subcommand]
        with pytest.raises(LabPrerequisiteError, match="needs root") as info:
            handler(args)
        assert info.value.exit_code == ExitCode.USAGE
        assert "sudo" in str(info.value)


def test_bad_name_is_refused_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    args, _ = _parse("lab", "up", "--name", "../etc")
    with pytest.raises(LabInputError, match="not usable") as info:
        lab_cmds.cmd_lab_up(args)
    assert info.value.exit_code == ExitCode.USAGE


def test_missing_packages_point_at_the_install_script(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.lab.proc import require_commands

    monkeypatch.setattr(
        "shutil.which", lambda name: None if name == "debootstrap" else f"/usr/bin/{name}"
    )
    with pytest.raises(LabPrerequisiteError, match="debootstrap") as info:
        require_commands(["debootstrap", "ip"])
    assert "scripts/ensure-system-deps lab" in str(info.value)
