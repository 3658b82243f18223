"""What a bundle and a release serve, shown: `bundle inspect`, `bundle export-records`, `models`.

The bundles are real (built from a small model, adapters with the fixture card and one
without a record); `models` reads hosts through a fake SSH transport (``fake_ssh_run``)
that answers the two reads the command makes from a built bundle's manifest.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.cli.main import main
from appliance.deploy import transport
from appliance.errors import DeploymentError
from appliance.exitcodes import ExitCode
from appliance.plan.inventory import HostEntry
from tests.unit.bundle.test_adapter_only import _adapters, _build, _recipe
from tests.unit.bundle.test_build import small_llama
from tests.unit.bundle.test_sources import PROVENANCE, make_adapter


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1: the model, a carded adapter and one without a record; v2: adapter-only on v1."""
    tmp = tmp_path_factory.mktemp("shown")
    (tmp / "bare-src").mkdir()
    bare = make_adapter(tmp / "bare-src")
    bare_spec = {"name": "bare", "path": str(bare), "provenance": PROVENANCE}
    model = {"local_dir": str(small_llama(tmp)), "licence": "MIT"}
    _build(_recipe(tmp, model=model, adapters=[*_adapters(tmp / "s1", "pirate"), bare_spec]),
           tmp / "v1")  # fmt: skip
    _build(_recipe(tmp, version=2, reuse={"bundle": str(tmp / "v1")},
                   adapters=_adapters(tmp / "s2", "pirate", "poet")), tmp / "v2")  # fmt: skip
    return {"v1": tmp / "v1", "v2": tmp / "v2"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _policy(tmp_path: Path, **data: Any) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps({"schema_version": 1, "intended_use": "commercial"} | data))
    return path


# --- bundle inspect ------------------------------------------------------------------------------


def test_inspect_lists_the_base_and_each_adapter_with_its_rows(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "bundle", "inspect", str(bundles["v1"]))
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert "  base small-llama: licence MIT" in lines
    assert (
        "  adapters' findings under the site policy: the default policy (no --policy given)"
        in lines
    )
    assert (
        "  adapter pirate on small-llama: provider Example Lab GmbH; licences Apache-2.0,"
        " CC-BY-SA-4.0, CC0-1.0"
    ) in lines
    assert "    2.2.1 commercially licensed data: not used" in lines
    # the card says google/gemma-3-270m; this bundle's model is small-llama
    assert any(line.startswith("      REFUSE base-model-mismatch:") for line in lines)
    assert "  adapter bare on small-llama: provider Example; licences Apache-2.0" in lines
    assert any(line.startswith("      REFUSE record-missing: adapter 'bare'") for line in lines)
    assert "NOT VERIFIED" in out and "adapter-only" not in out


def test_inspect_json_carries_records_and_rows_under_the_policy(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = _policy(tmp_path, severity={"base-model-mismatch": "warn", "record-missing": "warn"})
    code, out, _ = _run(capsys, "bundle", "inspect", str(bundles["v1"]), "--json",
                        "--policy", str(policy))  # fmt: skip
    assert code == ExitCode.OK
    data = json.loads(out)
    pirate = next(a for a in data["adapters"] if a["name"] == "pirate")
    assert pirate["record"]["provider"]["name"] == "Example Lab GmbH"
    rows = {r["name"]: r for r in data["inventory"]}
    assert rows["small-llama"]["kind"] == "base"
    actions = {(f["code"], f["action"]) for f in rows["pirate"]["findings"]}
    assert ("base-model-mismatch", "warn") in actions
    assert rows["bare"]["findings"][0]["action"] == "warn"
    assert data["reuses"] is None


def test_inspect_of_an_adapter_only_bundle_names_the_base_it_reuses(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "bundle", "inspect", str(bundles["v2"]))
    assert code == ExitCode.OK
    code, raw, _ = _run(capsys, "bundle", "inspect", str(bundles["v2"]), "--json")
    data = json.loads(raw)
    reuses = data["reuses"]
    assert (reuses["bundle"], reuses["version"], reuses["model"]) == ("lab", 1, "small-llama")
    reused = sum(f["length"] for f in reuses["files"])
    assert reuses["reused_bytes"] == reused and reuses["carried_bytes"] == data["total_bytes"]
    assert (
        f"  adapter-only: reuses bundle lab version 1's model small-llama (weights digest"
        f" {reuses['model_digest']})"
    ) in out.splitlines()
    assert (
        f"reused from the release in place (checked by digest on the host): {len(reuses['files'])}"
        f" files, {reused} bytes; carried: {len(data['files'])} files, {data['total_bytes']} bytes"
    ) in out
    assert "adapter pirate on small-llama" in out and "adapter poet on small-llama" in out
    # the base row's digest is the one the adapter-only bundle names
    assert f"weights digest {reuses['model_digest']}" in out


# --- bundle export-records ------------------------------------------------------------------------


def test_export_records_writes_each_record_and_an_index_that_lists_the_unrecorded(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "records"
    code, out, _ = _run(capsys, "bundle", "export-records", str(bundles["v1"]),
                        "--out", str(out_dir))  # fmt: skip
    assert code == ExitCode.OK
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "_index.json", "_index.md", "pirate.json", "pirate.md"
    ]  # fmt: skip
    assert "bare: NO transparency record carried (finding record-missing" in out
    record = json.loads((out_dir / "pirate.json").read_text())
    assert record["name"] == "pirate" and record["record"]["provider"]["name"] == "Example Lab GmbH"
    from appliance.compliance.card import parse_card

    card = parse_card((out_dir / "pirate.md").read_text(), "pirate.md")
    assert card.record is not None and card.record.provider.name == "Example Lab GmbH"
    index = json.loads((out_dir / "_index.json").read_text())
    assert index["bundle"] == "lab version 1"
    assert index["adapters"] == [
        {"adapter": "pirate", "record": {"json": "pirate.json", "markdown": "pirate.md"}},
        {"adapter": "bare", "record": None},
    ]
    bare = next(m for m in index["models"] if m["name"] == "bare")
    assert [(f["code"], f["action"]) for f in bare["findings"]] == [("record-missing", "refuse")]
    md = (out_dir / "_index.md").read_text()
    assert "| bare | NONE (record-missing) | 1 | 0 | 0 |" in md
    assert "| pirate | [pirate.md](pirate.md), [pirate.json](pirate.json) | 1 | 1 | 0 |" in md


def test_export_records_takes_the_policy_and_an_empty_directory(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "empty"
    out_dir.mkdir()
    policy = _policy(tmp_path, intended_use="research", allowed_licences=["CC-BY-SA-4.0"])
    code, out, _ = _run(capsys, "bundle", "export-records", str(bundles["v2"]), "--out",
                        str(out_dir), "--policy", str(policy), "--json")  # fmt: skip
    assert code == ExitCode.OK
    data = json.loads(out)
    assert {f["path"] for f in data["files"]} == {
        "_index.json", "_index.md", "pirate.json", "pirate.md", "poet.json", "poet.md"
    }  # fmt: skip
    assert data["without_record"] == [] and data["verified"] is False
    index = json.loads((out_dir / "_index.json").read_text())
    assert index["policy"]["intended_use"] == "research"
    assert index["policy"]["source"] == str(policy)


def test_export_records_refuses_a_non_empty_directory_and_changes_nothing(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    code, out, err = _run(capsys, "bundle", "export-records", str(bundles["v1"]),
                          "--out", str(out_dir))  # fmt: skip
    assert code == ExitCode.USAGE and out == ""
    assert "expected a new or empty directory; found 1 entry (notes.txt)" in err
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_records_leaves_nothing_behind_when_a_write_fails(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    written: list[Path] = []
    real = Path.write_bytes

    def disk_full_after_one_file(self: Path, data: bytes) -> int:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_after_one_file)
    out_dir = tmp_path / "records"
    code, out, err = _run(capsys, "bundle", "export-records", str(bundles["v1"]),
                          "--out", str(out_dir))  # fmt: skip
    assert code == ExitCode.USAGE and out == ""
    assert "could not write the records: no space is left on its filesystem" in err
    assert written and list(tmp_path.iterdir()) == []


def test_export_records_refuses_a_bad_policy_before_writing(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = _policy(tmp_path, severity={"record-mising": "warn"})
    out_dir = tmp_path / "records"
    code, _, err = _run(capsys, "bundle", "export-records", str(bundles["v1"]),
                        "--out", str(out_dir), "--policy", str(policy))  # fmt: skip
    assert code == ExitCode.USAGE and "record-missing" in err
    assert not out_dir.exists()


# --- models ---------------------------------------------------------------------------------------


def _inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    hosts = [
        {"name": name, "address": f"10.0.0.{i}", "roles": ["model-server"]}
        for i, name in enumerate(("srv-1", "srv-2", "srv-3"), start=1)
    ]
    path.write_text(json.dumps({"schema_version": 1, "hosts": hosts}))
    return path


def _fake_ssh(
    monkeypatch: pytest.MonkeyPatch, manifest: bytes, *, down: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """A fake of the SSH transport: srv-1 serves release 2 (``manifest``), srv-3 has no
    release, the hosts in ``down`` do not answer."""
    calls: list[tuple[str, str]] = []

    def fake_ssh_run(host: HostEntry, script: str, **kwargs: Any) -> str:
        calls.append((host.name, script))
        if host.name in down:
            raise DeploymentError(f"{host.name}: no answer within 30 s")
        if script.startswith("readlink /opt/appliance/current"):
            return "/opt/appliance/releases/2\n" if host.name == "srv-1" else ""
        if script.endswith(" /opt/appliance/current/metadata/targets.json"):
            assert script.startswith("head -c "), script  # bounded: a host's files are untrusted
            limit = int(script.split()[2])
            return manifest.decode()[:limit]
        raise AssertionError(f"unexpected script on {host.name}: {script}")

    monkeypatch.setattr(transport, "run", fake_ssh_run)
    return calls


def test_models_lists_what_each_host_serves_and_says_it_is_not_reverified(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    manifest = (bundles["v2"] / "metadata/targets.json").read_bytes()
    calls = _fake_ssh(monkeypatch, manifest)
    policy = _policy(tmp_path, severity={"base-model-mismatch": "warn"})
    code, out, _ = _run(capsys, "models", "--inventory", str(_inventory(tmp_path)),
                        "--policy", str(policy))  # fmt: skip
    assert code == ExitCode.OK, out
    lines = out.splitlines()
    assert lines[0].startswith("srv-1") and lines[0].endswith("release 2: bundle lab version 2")
    assert any(
        line.startswith("  adapter-only: reuses bundle lab version 1's model") for line in lines
    )
    assert "  base small-llama: licence MIT" in lines
    assert any(
        line.startswith("  adapter poet on small-llama: provider Example Lab GmbH")
        for line in lines
    )
    assert any(line.startswith("      WARN base-model-mismatch:") for line in lines)
    assert any(
        line.startswith("srv-2") and "release none: no release in place" in line for line in lines
    )
    assert "not verified again against the trust root here; `appliance status`" in out
    assert ("srv-1", "head -c 67108865 /opt/appliance/current/metadata/targets.json") in calls


def test_models_refused_findings_exit_3_and_an_unreachable_host_exits_5(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    manifest = (bundles["v1"] / "metadata/targets.json").read_bytes()
    inventory = str(_inventory(tmp_path))
    _fake_ssh(monkeypatch, manifest)
    code, out, _ = _run(capsys, "models", "--inventory", inventory, "--json")
    assert code == ExitCode.DOES_NOT_FIT  # the default policy refuses what srv-1 serves
    data = json.loads(out)
    assert "not verified again against the trust root" in data["source"]
    srv1 = data["hosts"][0]
    assert (srv1["host"], srv1["release"], srv1["bundle"]) == ("srv-1", 2, "lab")
    bare = next(m for m in srv1["models"] if m["name"] == "bare")
    assert bare["findings"][0]["code"] == "record-missing"
    _fake_ssh(monkeypatch, manifest, down=("srv-3",))
    code, out, _ = _run(capsys, "models", "--inventory", inventory)
    assert code == ExitCode.DEPLOYMENT_FAILED
    assert any(line.startswith("srv-3") and "UNREACHABLE  srv-3: no answer" in line
               for line in out.splitlines())  # fmt: skip
    assert "adapter pirate on small-llama" in out  # the other hosts are still listed


def test_models_names_a_manifest_it_cannot_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_ssh(monkeypatch, b'{"signed": {}}')
    code, out, _ = _run(capsys, "models", "--inventory", str(_inventory(tmp_path)))
    assert code == ExitCode.DEPLOYMENT_FAILED
    assert (
        "srv-1                release 2: /opt/appliance/current/metadata/targets.json cannot be read:"
        in out
    )
