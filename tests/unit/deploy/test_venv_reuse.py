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


def test_reused_files_are_linked_from_the_release_in_place_and_checked_with_the_rest(
    tmp_path: Path,
) -> None:
    from appliance.deploy.host_desired import HostDesired, ReleaseFile, RenderedFile
    from appliance.deploy.probe import diff, space_needed
    from appliance.deploy.staging import checklist, reuse_command
    from appliance.plan.inventory import HostEntry

    base, staging = _site(tmp_path)
    (base / "files/models/m").mkdir(parents=True)
    (base / "files/models/m/w.safetensors").write_bytes(b"weights")
    release = "/opt/appliance/releases/3"
    local = tmp_path / "adapter.bin"
    local.write_bytes(b"adapter")
    desired = HostDesired(
        HostEntry(name="h", address="10.0.0.2", roles=["model-server"]), 3, release,
        (ReleaseFile(f"{release}/files/adapters/a/w.bin", local, 7, "a" * 64),
         ReleaseFile(f"{release}/files/models/m/w.safetensors", None, 7, "b" * 64)),
        (RenderedFile("/etc/appliance/releases/3/appliance-model.service", "t", "[Unit]\n"),), (),
    )  # fmt: skip
    assert [f.path for f in desired.uploaded] == [f"{release}/files/adapters/a/w.bin"]
    changes = {c.target: c.kind for c in diff(desired, {"files": {}})}
    assert changes[f"{release}/files/models/m/w.safetensors"] == "link-file"
    assert changes[f"{release}/files/adapters/a/w.bin"] == "put-file"
    assert "files/models/m/w.safetensors" in checklist(desired)  # checked like the others
    assert space_needed(desired, {}) < 7 + 7 + 64 * 1024 * 1024  # reused bytes cost nothing
    command = reuse_command(desired, str(staging)).replace(CURRENT, str(tmp_path / "current"))
    subprocess.run(["sh", "-c", command], check=True, timeout=60)
    linked = staging / "files/models/m/w.safetensors"
    assert os.stat(linked).st_ino == os.stat(base / "files/models/m/w.safetensors").st_ino
    # A release in place without the file: the deploy stops and names it.
    (base / "files/models/m/w.safetensors").unlink()
    linked.unlink()
    failed = subprocess.run(
        ["sh", "-c", command], check=False, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1
    assert "has no files/models/m/w.safetensors" in failed.stderr
    assert "deploy its base bundle first" in failed.stderr


def test_a_hosts_file_read_with_a_limit_is_refused_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.deploy import transport
    from appliance.errors import DeploymentError
    from appliance.plan.inventory import HostEntry

    scripts: list[str] = []

    def fake_ssh_run(host: HostEntry, script: str, **kwargs: object) -> str:  # a fake host
        scripts.append(script)
        return "x" * int(script.split()[2])  # a file longer than the limit: head gives limit+1

    monkeypatch.setattr(transport, "run", fake_ssh_run)
    host = HostEntry(name="h", address="10.0.0.2", roles=["model-server"])
    with pytest.raises(DeploymentError, match="larger than 10 bytes"):
        transport.read_file(host, "/etc/big", limit=10)
    assert scripts == ["head -c 11 /etc/big"]
