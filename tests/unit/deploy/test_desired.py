"""Desired state: from a verified bundle to files, digests, unit, venv; probe and diff."""

from __future__ import annotations

import subprocess
from pathlib import Path

from appliance.bundle.site.verify import verify_bundle
from appliance.deploy.host_layout import CURRENT, RELEASES, UNIT_NAME, UNIT_PATH
from appliance.deploy.probe import diff, parse_probe, probe_script
from appliance.deploy.render import desired_state
from appliance.events import drain
from appliance.plan.engine_args import NodeCommand
from appliance.plan.inventory import HostEntry
from tests.unit.bundle.conftest import BundleFactory, Trust

HOST = HostEntry(name="lab-1", address="10.231.0.2", roles=["model-server"])
COMMAND = NodeCommand(
    host="lab-1",
    role="single",
    argv=("/opt/appliance/current/venv/bin/python", "-m", "llama_cpp.server", "--model",
          "/opt/appliance/current/files/models/demo.gguf", "--host", "127.0.0.1", "--port", "8080"),
    env={"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"},
)  # fmt: skip


def desired(make_bundle: BundleFactory, trust: Trust):  # type: ignore[no-untyped-def]
    verified = drain(verify_bundle(make_bundle(version=5), trust.root_path))
    return verified, desired_state(verified, COMMAND, HOST, engine="llamacpp")


def test_release_files_carry_the_signed_digests(make_bundle: BundleFactory, trust: Trust) -> None:
    verified, d = desired(make_bundle, trust)
    assert d.release_dir == f"{RELEASES}/5"
    by_path = {f.path: f for f in d.release_files}
    for record in verified.records:
        assert by_path[f"{RELEASES}/5/files/{record.path}"].sha256 == record.sha256
    assert (
        f"{RELEASES}/5/metadata/targets.json" in by_path
    )  # the signed manifest travels with the release
    assert d.venvs == ()  # no wheels in this bundle


def test_the_manifest_is_described_by_the_verified_bytes_not_a_second_read(
    make_bundle: BundleFactory, trust: Trust
) -> None:
    import hashlib

    verified = drain(verify_bundle(make_bundle(version=5), trust.root_path))
    verified_bytes = (verified.directory / "metadata/targets.json").read_bytes()
    # The manifest is swapped on disk after verification (another writer, a bad medium).
    (verified.directory / "metadata/targets.json").write_bytes(verified_bytes + b" ")
    d = desired_state(verified, COMMAND, HOST, engine="llamacpp")
    manifest = {f.path: f for f in d.release_files}[f"{RELEASES}/5/metadata/targets.json"]
    assert manifest.sha256 == hashlib.sha256(verified_bytes).hexdigest()
    assert manifest.length == len(verified_bytes)  # the host's `sha256sum -c` refuses the swap


def test_unit_runs_one_fixed_release_with_the_plan_command(
    make_bundle: BundleFactory, trust: Trust
) -> None:
    _, d = desired(make_bundle, trust)
    unit = d.unit_file.content
    assert d.unit_file.path == "/etc/appliance/releases/5/appliance-model.service"
    assert (
        f"ExecStart={RELEASES}/5/venv/bin/python -m llama_cpp.server --model {RELEASES}/5/files/models/demo.gguf"
        in unit
    )
    assert CURRENT not in unit.split("ExecStart=")[1].splitlines()[0]
    assert "DynamicUser=yes" in unit and "ProtectSystem=strict" in unit
    assert "EnvironmentFile=/etc/appliance/releases/5/model-server.env" in unit
    env = next(r for r in d.rendered if r.path.endswith("model-server.env")).content
    assert "HF_HUB_OFFLINE=1" in env and "DO_NOT_TRACK=1" in env


def test_rendering_is_deterministic(make_bundle: BundleFactory, trust: Trust) -> None:
    verified, first = desired(make_bundle, trust)
    again = desired_state(verified, COMMAND, HOST, engine="llamacpp")
    assert [r.content for r in first.rendered] == [r.content for r in again.rendered]


def test_probe_runs_and_diff_lists_every_change_on_an_empty_host(
    make_bundle: BundleFactory, trust: Trust
) -> None:
    _, d = desired(make_bundle, trust)
    out = subprocess.run(
        ["sh", "-c", probe_script(d)], capture_output=True, text=True, check=True
    ).stdout
    actual = parse_probe(out)  # this machine has none of it: everything must change
    kinds = [c.kind for c in diff(d, actual)]
    assert kinds.count("put-file") == len(d.release_files)
    assert kinds.count("render") == 2
    assert {"activate", "switch-current", "enable", "start"} <= set(kinds)


def test_diff_is_empty_when_converged(make_bundle: BundleFactory, trust: Trust) -> None:
    _, d = desired(make_bundle, trust)
    actual = {
        "current": d.release_dir, "units": {UNIT_NAME: {"enabled": "enabled", "active": "active"}},
        "venvs": {}, "nft": False, "dirs": dict.fromkeys(d.directories, True),
        "files": {f.path: f.sha256 for f in d.release_files} | {r.path: r.sha256 for r in d.rendered}
        | {UNIT_PATH: d.unit_file.sha256},
    }  # fmt: skip
    assert diff(d, actual) == []
    actual["files"][UNIT_PATH] = "0" * 64
    assert [c.kind for c in diff(d, actual)] == ["activate"]


def test_templates_exist_for_both_engines() -> None:
    templates = Path(__file__).resolve().parents[3] / "playbooks/templates"
    assert {p.name for p in templates.glob("*.j2")} >= {
        "appliance-model.service.j2",
        "model-server.env.j2",
    }
