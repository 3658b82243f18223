"""All or nothing includes the state: the accepted version is recorded if and only if
the release is in place (install), and a verify never leaves a partial state.

Failures are real where the kernel can make them: a read-only bind mount (EROFS), a
full tmpfs (ENOSPC), a file where the state directory should be (ENOTDIR). Only the
failure of one rename between ``root.json`` and ``accepted.json`` is injected
(``os.replace`` patched), since no filesystem fails one rename and not the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.site.state import ACCEPTED, AUDIT, ROOTS_DIR, TrustState
from appliance.bundle.site.verify import VerifyOptions, install_bundle, verify_bundle
from appliance.bundle.trust import load_trusted_root
from appliance.cli.main import main
from appliance.errors import OutputPathError, StateWriteError
from appliance.events import Started, drain
from tests.unit.bundle.conftest import BundleFactory, Trust
from tests.unit.mounts import fill, needs_root, read_only, snapshot, tiny_tmpfs


def _install(bundle: Path, trust: Trust, dest: Path, state: Path, **options: Any) -> Any:
    return drain(install_bundle(bundle, trust.root_path, dest, state, VerifyOptions(**options)))


def _leftovers(directory: Path) -> list[str]:
    """Staging directories and temp files a failed operation might leave."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if ".release-" in p.name or ".tmp-" in p.name or ".staging-" in p.name
    )


def _assert_nothing_installed(
    releases: Path, dest: Path, state: Path, before: dict[str, Any]
) -> None:
    assert not os.path.lexists(dest)
    assert _leftovers(releases) == []
    assert snapshot(state) == before
    assert not [n for n in before if ".tmp-" in n]


@needs_root
def test_full_state_filesystem_removes_the_release(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    with tiny_tmpfs(tmp_path / "fs") as fs:
        state = fs / "state"
        _install(make_bundle(version=1), trust, releases / "v1", state)
        before = snapshot(state)
        fill(fs)
        with pytest.raises(StateWriteError) as caught:
            _install(make_bundle(version=2), trust, releases / "v2", state)
        assert "no space is left" in caught.value.message
        assert "nothing was installed" in caught.value.message
        _assert_nothing_installed(releases, releases / "v2", state, before)
        assert (releases / "v1").is_dir()  # the release before stays
        assert TrustState(state).accepted("demo", "stable").version == 1  # type: ignore[union-attr]


@needs_root
def test_full_state_filesystem_through_the_cli_exits_2(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust, capsys: pytest.CaptureFixture[str]
) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    bundle = make_bundle(version=1)
    with tiny_tmpfs(tmp_path / "fs") as fs:
        state = fs / "state"
        state.mkdir()
        (state / ".lock").touch()
        fill(fs)
        before = snapshot(state)
        argv = ["bundle", "install", str(bundle), "--trust", str(trust.root_path),
                "--dest", str(releases / "v1"), "--state", str(state)]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "nothing was installed" in err and "Traceback" not in err
        _assert_nothing_installed(releases, releases / "v1", state, before)


@needs_root
def test_read_only_state_is_refused_before_hashing(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    releases, state = tmp_path / "releases", tmp_path / "state"
    releases.mkdir()
    state.mkdir()
    before = snapshot(state)
    events: list[Any] = []
    with read_only(state), pytest.raises(OutputPathError, match="read-only filesystem"):
        drain(install_bundle(make_bundle(), trust.root_path, releases / "v1", state), events.append)
    assert events == []  # refused before Started: nothing read, nothing hashed
    _assert_nothing_installed(releases, releases / "v1", state, before)


def test_file_where_the_state_dir_should_be(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    (tmp_path / "state").write_text("not a directory\n")
    for state in (tmp_path / "state", tmp_path / "state" / "sub"):
        with pytest.raises(OutputPathError, match="not a directory"):
            _install(make_bundle(), trust, releases / "v1", state)
        assert not (releases / "v1").exists() and _leftovers(releases) == []
    assert (tmp_path / "state").read_text() == "not a directory\n"


def test_state_commit_failure_removes_the_release_and_the_audit_line(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    releases, state = tmp_path / "releases", tmp_path / "state"
    releases.mkdir()
    _install(make_bundle(version=2), trust, releases / "v2", state)
    before = snapshot(state)
    real = os.replace

    def failing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == ACCEPTED:
            raise OSError(28, "No space left on device")
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(StateWriteError, match="nothing was installed"):
        # A downgrade: its audit line is appended while preparing, and removed again.
        _install(make_bundle(version=1), trust, releases / "v1", state, allow_downgrade=True)
    monkeypatch.setattr(os, "replace", real)
    _assert_nothing_installed(releases, releases / "v1", state, before)
    assert not (state / AUDIT).exists()


def test_a_kept_root_is_taken_back_when_accepted_cannot_be_replaced(
    tmp_path: Path, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    state = TrustState(state_dir)
    root = load_trusted_root(trust.root_path)
    with state.locked():
        state.record("demo", "stable", 1, "a" * 64)
    before = snapshot(state_dir)
    real, calls = os.replace, []

    def failing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(Path(dst).name)
        if Path(dst).name == ACCEPTED:
            raise OSError(30, "Read-only file system")
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    root.signed.version += 1  # a rotation this record would keep as roots/2.root.json
    with state.locked(), pytest.raises(StateWriteError, match="read-only filesystem"):
        state.record("demo", "stable", 2, "b" * 64, [root])
    monkeypatch.setattr(os, "replace", real)
    assert calls[:2] == ["2.root.json", ACCEPTED]  # the root was kept, then taken back
    assert not (state_dir / ROOTS_DIR).exists()  # nor a temp file, nor the directory made for it
    assert snapshot(state_dir) == before


@needs_root
def test_verify_with_a_full_state_leaves_it_unchanged(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(version=1)
    with tiny_tmpfs(tmp_path / "fs") as fs:
        state = fs / "state"
        state.mkdir()
        (state / ".lock").touch()
        fill(fs)
        before = snapshot(state)
        argv = [
            "bundle",
            "verify",
            str(bundle),
            "--trust",
            str(trust.root_path),
            "--state",
            str(state),
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "NOT recorded" in err and "no space" in err
        assert snapshot(state) == before


@needs_root
def test_verify_with_a_read_only_state_fails_before_hashing(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    events: list[Any] = []
    with read_only(state), pytest.raises(OutputPathError, match="--state"):
        drain(verify_bundle(make_bundle(), trust.root_path, state), events.append)
    assert not any(isinstance(e, Started) for e in events)


def test_deferred_acceptance_records_only_on_commit(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    from appliance.bundle.site.verify import deferred_acceptance

    state = tmp_path / "state"
    verified = drain(verify_bundle(make_bundle(version=3), trust.root_path, state, record=False))
    assert not (state / ACCEPTED).exists()
    with deferred_acceptance(verified):
        pass  # no host served it: nothing recorded
    assert not (state / ACCEPTED).exists() and _leftovers(state) == []
    with deferred_acceptance(verified) as pending:
        assert pending is not None
        assert _leftovers(state) != []  # prepared beside the state, nothing replaced yet
        pending.commit()
    assert TrustState(state).accepted("demo", "stable").version == 3  # type: ignore[union-attr]
    assert _leftovers(state) == []
