"""An adapter-only release takes the release in place's venv (hard links) only when it is
built from the same wheels and that release passes its integrity check; else it builds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance.deploy.host_desired import VenvSpec
from appliance.deploy.host_layout import CURRENT
from appliance.deploy.integrity import record_command
from appliance.deploy.staging import VENV_MARKER, venv_command

DIGEST = "d" * 64


def _site(tmp: Path) -> tuple[Path, Path]:
    base = tmp / "releases/2"
    (base / "venv/lib").mkdir(parents=True)
    (base / "venv/lib/module.py").write_text("x = 1\n")
    (base / "venv" / VENV_MARKER).write_text(DIGEST)
    (base / "metadata").mkdir()
    (base / "metadata/targets.json").write_text('{"signed": {"targets": {}}}')
    subprocess.run(record_command(str(base)), shell=True, check=True)
    (tmp / "current").symlink_to(base)
    staging = tmp / "releases/.staging-3"
    staging.mkdir()
    return base, staging


def _run(tmp: Path, spec: VenvSpec) -> None:
    command = venv_command(spec, "/opt/appliance/releases/3", str(tmp / "releases/.staging-3"))
    command = command.replace(CURRENT, str(tmp / "current"))
    subprocess.run(["bash", "-c", command], check=True, timeout=120)


def _spec(digest: str = DIGEST, reusable: bool = True) -> VenvSpec:
    return VenvSpec("/opt/appliance/releases/3/venv", "/opt/appliance/releases/3/files/wheels",
                    (), wheels_digest=digest, reusable=reusable)  # fmt: skip


def _linked(base: Path, staging: Path) -> bool:
    return (
        os.stat(base / "venv/lib/module.py").st_ino
        == os.stat(staging / "venv/lib/module.py").st_ino
        if (staging / "venv/lib/module.py").exists()
        else False
    )


def test_the_same_wheels_in_an_intact_release_are_linked_not_rebuilt(tmp_path: Path) -> None:
    base, staging = _site(tmp_path)
    _run(tmp_path, _spec())
    assert _linked(base, staging)
    assert (staging / "venv" / VENV_MARKER).read_text() == DIGEST


@pytest.mark.parametrize("case", ["other wheels", "tampered venv", "not adapter-only"])
def test_otherwise_the_venv_is_built_and_marked(tmp_path: Path, case: str) -> None:
    base, staging = _site(tmp_path)
    spec = _spec()
    if case == "other wheels":
        spec = _spec("e" * 64)
    elif case == "tampered venv":
        (base / "venv/lib/module.py").write_text("x = 2\n")  # same size: the digest finds it
    else:
        spec = _spec(reusable=False)
    _run(tmp_path, spec)
    assert not _linked(base, staging)
    assert (staging / "venv/bin/python").exists()  # a venv built here
    assert (staging / "venv" / VENV_MARKER).read_text() == spec.wheels_digest
