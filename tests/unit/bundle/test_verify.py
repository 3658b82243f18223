"""verify_bundle end to end on bundles signed with real keys: the happy path and freshness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle.format import FILES_DIR, TARGETS_FILE
from appliance.bundle.site.verify import VerifiedBundle, VerifyOptions, verify_bundle
from appliance.errors import (
    RollbackError,
    SameVersionConflictError,
    ThresholdError,
    VersionJumpError,
)
from appliance.events import Finished, drain

from .conftest import BundleFactory, Trust


def verify(
    bundle: Path, trust: Trust, state: Path | None = None, **options: bool
) -> VerifiedBundle:
    return drain(verify_bundle(bundle, trust.root_path, state, VerifyOptions(**options)))  # type: ignore[arg-type]


def test_two_of_three_verifies(make_bundle: BundleFactory, trust: Trust, tmp_path: Path) -> None:
    events: list[object] = []
    bundle = make_bundle()
    result = drain(verify_bundle(bundle, trust.root_path, tmp_path / "state"), events.append)
    assert (result.name, result.channel, result.version) == ("demo", "stable", 1)
    assert len(result.signers) == 2 and result.previous_version is None
    assert isinstance(events[-1], Finished) and "4 files verified" in events[-1].message
    accepted = json.loads((tmp_path / "state" / "accepted.json").read_text())
    assert accepted["demo/stable"]["version"] == 1


def test_one_signature_is_not_enough(make_bundle: BundleFactory, trust: Trust) -> None:
    with pytest.raises(ThresholdError, match="1 valid signature"):
        verify(make_bundle(sign_with=1), trust)


def test_verified_bundle_cannot_be_made_by_hand(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="only made by"):
        VerifiedBundle(tmp_path, "x", "y", 1, None, "", (), 1, None, (), None, b"")  # type: ignore[arg-type]


def test_the_verified_manifest_bytes_are_carried(make_bundle: BundleFactory, trust: Trust) -> None:
    bundle = make_bundle()
    targets = bundle / TARGETS_FILE
    verified_bytes = targets.read_bytes()
    result = verify(bundle, trust)
    assert result.manifest_bytes == verified_bytes
    # What was verified stays what the proof carries, whatever the file holds later.
    targets.write_bytes(verified_bytes.replace(b'"version"', b'"version" ', 1))
    assert targets.read_bytes() != verified_bytes
    assert result.manifest_bytes == verified_bytes
    assert "manifest_bytes" not in repr(result)


def test_rollback_and_same_version_other_content(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    v1 = make_bundle(version=1)
    v2 = make_bundle(version=2)
    verify(v2, trust, state)
    with pytest.raises(RollbackError, match="version 1 is older than version 2"):
        verify(v1, trust, state)
    # Reinstalling the same bundle is fine; the same version with other bytes is not.
    assert verify(v2, trust, state).previous_version == 2
    other = make_bundle(version=2, files={"models/x.gguf": b"GGUF other content"})
    with pytest.raises(SameVersionConflictError, match="accepted before with different content"):
        verify(other, trust, state)
    # An explicit downgrade is allowed and audited.
    assert verify(v1, trust, state, allow_downgrade=True).version == 1
    audit = (state / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["event"] == "downgrade-accepted"


def test_absurd_version_jump(make_bundle: BundleFactory, trust: Trust, tmp_path: Path) -> None:
    verify(make_bundle(version=1), trust, tmp_path / "s")
    with pytest.raises(VersionJumpError, match="jumps from version 1 to 5000"):
        verify(make_bundle(version=5000), trust, tmp_path / "s")
    assert (
        verify(make_bundle(version=5000), trust, tmp_path / "s", allow_version_jump=True).version
        == 5000
    )


def test_failed_verification_records_nothing(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    bundle = make_bundle(version=3)
    target = bundle / FILES_DIR / "models/demo/config.json"
    target.write_bytes(target.read_bytes().replace(b"llama", b"llamb"))
    with pytest.raises(Exception):  # noqa: B017 - the kind is tested in the adversarial suite
        verify(bundle, trust, tmp_path / "state")
    assert not (tmp_path / "state" / "accepted.json").exists()


def test_install_writes_a_read_only_release_in_one_step(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    import stat

    from appliance.bundle.site.verify import install_bundle

    bundle = make_bundle(version=4)
    releases = tmp_path / "releases"
    releases.mkdir()
    dest = releases / "4"
    installed = drain(install_bundle(bundle, trust.root_path, dest, tmp_path / "state"))
    assert installed.directory == dest and installed.files_dir == dest / FILES_DIR
    assert sorted(p.name for p in releases.iterdir()) == ["4"]  # no staging left behind
    assert (dest / "metadata/targets.json").read_bytes() == (
        bundle / "metadata/targets.json"
    ).read_bytes()
    assert installed.manifest_bytes == (dest / "metadata/targets.json").read_bytes()
    config = dest / FILES_DIR / "models/demo/config.json"
    assert config.read_bytes() == (bundle / FILES_DIR / "models/demo/config.json").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o444
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555
    # Installing the same release again is refused: releases are written once.
    with pytest.raises(Exception, match="already exists"):
        drain(install_bundle(bundle, trust.root_path, dest, tmp_path / "state"))


def test_signers_working_on_separate_copies_merge_their_signatures(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from appliance.bundle.manifest import sign_bundle
    from appliance.cli.main import main

    original = make_bundle(sign_with=0)
    copies = [tmp_path / "copy-alice", tmp_path / "copy-carol"]
    for copy, signer in zip(copies, (trust.signers[0], trust.signers[2]), strict=True):
        shutil.copytree(original, copy)
        sign_bundle(copy, signer)  # each on their own machine, at the same time
    assert (
        main(
            [
                "bundle",
                "add-signatures",
                str(original),
                *(str(c / "metadata/targets.json") for c in copies),
            ]
        )
        == 0
    )
    assert verify(original, trust).signers == tuple(
        sorted(k.keyid for k in (trust.keys[0], trust.keys[2]))
    )
    # Signatures over other content are not merged.
    other = make_bundle(files={"x.bin": b"other"}, sign_with=1)
    capsys.readouterr()
    assert (
        main(["bundle", "add-signatures", str(original), str(other / "metadata/targets.json")]) == 4
    )
    assert "signs other content" in capsys.readouterr().err
