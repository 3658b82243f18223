"""The dry-run resolve of a wheel set: pip's command line, its report, the bounds.

pip itself runs in tests/integration/test_vllm_cuda_resolve.py (network to
PyPI); here its report is parsed from JSON written by the test, and the
download bound is checked on a real process that fills its TMPDIR.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from appliance.bundle.connected.recipe import WheelsSpec
from appliance.bundle.connected.resolve import (
    MIN_PIP,
    _run_bounded,
    parse_report,
    pip_resolve_command,
    resolve_wheels,
)
from appliance.bundle.connected.torch_variant import WheelInfo, torch_build
from appliance.bundle.payload import TorchBuild
from appliance.errors import BundleBuildError
from appliance.exitcodes import ExitCode

SPEC = WheelsSpec.model_validate(
    {
        "python": "3.11",
        "platforms": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64"],
        "requirements": ["vllm==0.32.0"],
        "extra_index_urls": ["https://download.pytorch.org/whl/cu130"],
    }
)


def test_the_dry_run_command(tmp_path: Path) -> None:
    cmd = pip_resolve_command(SPEC, tmp_path / "t", tmp_path / "r.json", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "install"]
    for flag in ("--dry-run", "--ignore-installed", "--only-binary=:all:", "--no-cache-dir"):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    assert cmd[cmd.index("--abi") + 1] == "cp311"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == SPEC.platforms
    assert cmd[cmd.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cu130"
    assert cmd[cmd.index("--report") + 1] == str(tmp_path / "r.json")
    assert cmd[-2:] == ["--", "vllm==0.32.0"]


def report(*items: tuple[str, str, list[str]]) -> bytes:
    install = [
        {"metadata": {"name": n, "version": v, "requires_dist": r}, "requested": False}
        for n, v, r in items
    ]
    return json.dumps({"version": "1", "install": install}).encode()


def test_the_report_is_read() -> None:
    infos = parse_report(
        report(
            ("torchvision", "0.28.0", ["torch==2.13.0"]),
            ("torch", "2.13.0", ['cuda-toolkit[cudart]==13.0.3; platform_system == "Linux"']),
        ),
        "r",
    )
    assert [i.name for i in infos] == ["torch", "torchvision"]
    assert torch_build(infos) == TorchBuild(version="2.13.0", variant="default", cuda="13.0")
    assert parse_report(report(("x", "1", [])), "r") == [WheelInfo("x", "1", (), "pip report")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "r: not valid JSON"),
        (b"[]", "expected pip's report with an `install` list"),
        (json.dumps({"install": [{"metadata": {"name": "x"}}]}).encode(), "install[0] lacks"),
        (json.dumps({"install": [{"metadata": {"name": "x", "version": "1", "requires_dist": [1]}}]}).encode(), "install[0] lacks"),
    ],
)  # fmt: skip
def test_a_bad_report_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(BundleBuildError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_report(data, "r")


def test_an_old_pip_is_refused(tmp_path: Path) -> None:
    # A fake interpreter that answers only `-m pip --version`, as pip 23.2.1 does.
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'pip 23.2.1 from /x/pip (python 3.11)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(BundleBuildError) as caught:
        resolve_wheels(SPEC, python=str(fake))
    need = ".".join(map(str, MIN_PIP))
    assert f"is pip 23.2; resolving without downloading needs pip {need}" in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE
    assert f"'pip>={need}'" in str(caught.value.hint)


def test_downloads_past_the_bound_stop_pip(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # A real process that does what an index without metadata makes pip do: fill TMPDIR.
    filler = (
        "import os, tempfile, time\n"
        "with open(os.path.join(tempfile.gettempdir(), 'wheel'), 'wb') as f:\n"
        "    f.write(os.urandom(4 * 1024 * 1024)); f.flush(); time.sleep(30)\n"
    )
    with pytest.raises(
        BundleBuildError, match=r"held \d+ bytes of downloads \(more than 1048576\)"
    ):
        _run_bounded([sys.executable, "-c", filler], tmp, timeout=20, max_bytes=1024 * 1024)
    clean = tmp_path / "clean"
    clean.mkdir()
    code, _, peak = _run_bounded(
        [sys.executable, "-c", "print('ok')"], clean, timeout=20, max_bytes=1024 * 1024
    )
    assert (code, peak < 1024 * 1024) == (0, True)


def test_the_cli_refuses_a_recipe_without_wheels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: n\nversion: 1\nexpires: 90d\nmodel: {gguf: m.gguf, licence: MIT}\n",
        encoding="utf-8",
    )
    assert main(["bundle", "resolve", "--recipe", str(recipe)]) == ExitCode.USAGE
    assert "has no `wheels`: there is no wheel set to resolve" in capsys.readouterr().err
