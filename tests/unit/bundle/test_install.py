"""Verify-before-write install: the bytes installed are the bytes hashed, the result is
read-only, and any failure leaves the destination's parent exactly as it was.

Every failing case snapshots the parent directory before and after: no staging
directory, no partial ``dest``, nothing else written.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bundle.format import FileRecord
from appliance.bundle.hashing import copy_and_hash
from appliance.bundle.site import contents, install
from appliance.bundle.site.contents import check_file_set, verify_contents
from appliance.bundle.site.install import install_files
from appliance.errors import (
    DeploymentError,
    DigestMismatchError,
    FileSetError,
    InputError,
    SizeMismatchError,
    UnsafePathError,
)
from appliance.events import Finished, Progress, Started, drain

SHARD = 64 * 1024
BIG = "models/m/model.bin"
BIG_LEN = 3 * SHARD + 1000  # four shards, the last one short


def pattern(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


TREE = {
    BIG: pattern(BIG_LEN),
    "models/m/config.json": b'{"model_type": "llama"}\n',
    "wheels/deep/er/a-1.0-py3-none-any.whl": pattern(5000, 1),
    "empty.txt": b"",
}


def build_tree(
    tmp_path: Path, files: dict[str, bytes] | None = None
) -> tuple[Path, list[FileRecord]]:
    """bundle/files/ and its records, made with copy_and_hash as the build does."""
    src, dst = tmp_path / "src", tmp_path / "bundle" / "files"
    records = []
    for rel, data in (TREE if files is None else files).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        records.append(copy_and_hash(src / rel, dst / rel, rel, shard_size=SHARD))
    dst.mkdir(parents=True, exist_ok=True)
    return dst, records


@pytest.fixture
def releases(tmp_path: Path) -> Path:
    path = tmp_path / "releases"
    path.mkdir()
    (path / "current").mkdir()  # a working release that must never be touched
    (path / "current" / "keep").write_bytes(b"keep")
    return path


def snapshot(path: Path) -> list[tuple[str, int, int]]:
    """Every entry under ``path`` with its mode and size: any write shows up."""
    entries = []
    for dirpath, dirs, names in os.walk(path):
        for name in dirs + names:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            entries.append((os.path.relpath(full, path), st.st_mode, st.st_size))
    return sorted(entries)


def run(
    files: Path,
    records: list[FileRecord],
    dest: Path,
    workers: int = 2,
    on_event: Callable[[object], None] | None = None,
) -> Path:
    return drain(install_files(files, records, dest, workers=workers), on_event)


def assert_refused(
    files: Path,
    records: list[FileRecord],
    releases: Path,
    error: type[Exception],
    match: str,
) -> None:
    before = snapshot(releases)
    with pytest.raises(error, match=match):
        run(files, records, releases / "r1")
    assert snapshot(releases) == before


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))


# --- happy path --------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_install_copies_exactly_and_read_only(tmp_path: Path, releases: Path, workers: int) -> None:
    files, records = build_tree(tmp_path)
    before = snapshot(releases)
    events: list[object] = []
    dest = run(files, records, releases / "r1", workers, events.append)
    assert dest == releases / "r1"
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert events[0].total_bytes == sum(len(v) for v in TREE.values())
    for rel, data in TREE.items():
        path = dest / rel
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert path.stat().st_nlink == 1
    directories = [dest, dest / "models", dest / "models/m", dest / "wheels/deep/er"]
    for directory in directories:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o555
    # the parent gained dest, and nothing else (no staging directory left)
    assert [e for e in snapshot(releases) if not e[0].startswith("r1")] == before
    check_file_set(dest, records)  # exactly the signed set, nothing extra
    drain(verify_contents(dest, records))


def test_empty_manifest_installs_an_empty_release(tmp_path: Path, releases: Path) -> None:
    (tmp_path / "files").mkdir()
    dest = run(tmp_path / "files", [], releases / "r1")
    assert list(dest.iterdir()) == []
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555


def test_staging_is_private_and_next_to_dest(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, records = build_tree(tmp_path)
    monkeypatch.setattr(install, "PROGRESS_INTERVAL", 0.0)
    seen: list[tuple[str, int]] = []

    def look(event: object) -> None:
        if isinstance(event, Progress) and not seen:
            for entry in releases.iterdir():
                if entry.name not in ("current",):
                    seen.append((entry.name, stat.S_IMODE(entry.stat().st_mode)))

    run(files, records, releases / "r1", on_event=look)
    assert len(seen) == 1
    name, mode = seen[0]
    assert re.fullmatch(r"\.r1\.staging-\w+", name)
    assert mode == 0o700


# --- refusals: nothing left behind --------------------------------------------------

FLIPS = {"start": 0, "before boundary": SHARD - 1, "after boundary": SHARD, "end": BIG_LEN - 1}


@pytest.mark.parametrize("offset", FLIPS.values(), ids=FLIPS.keys())
def test_damaged_shard_is_named_and_nothing_installed(
    tmp_path: Path, releases: Path, offset: int
) -> None:
    files, records = build_tree(tmp_path)
    flip(files / BIG, offset)
    shard = offset // SHARD + 1
    assert_refused(files, records, releases, DigestMismatchError, rf"{BIG} shard {shard} of 4")


def test_damaged_small_file(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    flip(files / "models/m/config.json", 3)
    assert_refused(
        files, records, releases, DigestMismatchError, re.escape("models/m/config.json: expected")
    )


def test_swapped_shards(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    data = (files / BIG).read_bytes()
    (files / BIG).write_bytes(data[SHARD : 2 * SHARD] + data[:SHARD] + data[2 * SHARD :])
    assert_refused(files, records, releases, DigestMismatchError, r"shard [12] of 4")


@pytest.mark.parametrize("change", ["truncate", "extend", "empty"])
def test_wrong_size_source(tmp_path: Path, releases: Path, change: str) -> None:
    files, records = build_tree(tmp_path)
    with open(files / BIG, "r+b") as f:
        if change == "extend":
            f.seek(0, os.SEEK_END)
            f.write(b"more")
        else:
            f.truncate(0 if change == "empty" else BIG_LEN - 1)
    assert_refused(files, records, releases, SizeMismatchError, rf"signed length {BIG_LEN}")


def test_zero_length_record_with_content(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "empty.txt").write_bytes(b"x")
    assert_refused(files, records, releases, SizeMismatchError, "empty.txt: signed length 0")


def test_missing_source(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "wheels/deep/er/a-1.0-py3-none-any.whl").unlink()
    assert_refused(files, records, releases, FileSetError, "a-1.0-py3-none-any.whl is missing")


@pytest.mark.parametrize("target", ["inside", "outside"])
def test_symlinked_source(tmp_path: Path, releases: Path, target: str) -> None:
    files, records = build_tree(tmp_path)
    link = files / "models/m/config.json"
    outside = tmp_path / "outside"
    outside.write_bytes(link.read_bytes())
    link.unlink()
    link.symlink_to(outside if target == "outside" else files / "empty.txt")
    assert_refused(files, records, releases, UnsafePathError, "config.json is a symbolic link")


def test_symlinked_source_dir(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "wheels").rename(tmp_path / "wheels")
    (files / "wheels").symlink_to(tmp_path / "wheels")
    assert_refused(files, records, releases, UnsafePathError, "wheels is a symbolic link")


def test_source_root_a_symlink(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    (tmp_path / "link").symlink_to(files)
    assert_refused(tmp_path / "link", records, releases, UnsafePathError, "symbolic link")


def test_hardlinked_source(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    os.link(files / "empty.txt", tmp_path / "other")
    assert_refused(files, records, releases, UnsafePathError, "2 hard links")


def test_fifo_source_never_blocks(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "empty.txt").unlink()
    os.mkfifo(files / "empty.txt")
    assert_refused(files, records, releases, UnsafePathError, "empty.txt is a FIFO")


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_device_source(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "empty.txt").unlink()
    os.mknod(files / "empty.txt", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert_refused(files, records, releases, UnsafePathError, "empty.txt is a device node")


def test_escaping_record_path_is_refused_before_any_write(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    evil = FileRecord("../../escaped", 0, hashlib.sha256(b"").hexdigest(), SHARD)
    assert_refused(files, [*records, evil], releases, UnsafePathError, r"'\.\.'")
    assert not (tmp_path / "escaped").exists()


def test_source_changed_after_verify_is_refused(tmp_path: Path, releases: Path) -> None:
    files, records = build_tree(tmp_path)
    check_file_set(files, records)
    drain(verify_contents(files, records))
    # The medium changes between the verify and the install (same size).
    data = bytearray((files / BIG).read_bytes())
    data[2 * SHARD + 7] ^= 0xFF
    (files / BIG).write_bytes(bytes(data))
    assert_refused(files, records, releases, DigestMismatchError, rf"{BIG} shard 3 of 4")


def test_bytes_installed_are_bytes_hashed(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source is corrupted on disk right after each read: an install that hashed
    the source and then copied it again would install the corruption."""
    files, records = build_tree(tmp_path)
    real_preadv = os.preadv

    def preadv_then_corrupt(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        if n:
            os.pwrite(fd_rw[os.fstat(fd).st_ino], b"\xff" * n, offset)
        return n

    fd_rw = {}
    for record in records:
        rw = os.open(files / record.path, os.O_RDWR)
        fd_rw[os.fstat(rw).st_ino] = rw
    monkeypatch.setattr(contents.os, "preadv", preadv_then_corrupt)
    try:
        dest = run(files, records, releases / "r1")
    finally:
        for rw in fd_rw.values():
            os.close(rw)
    for rel, data in TREE.items():
        assert (dest / rel).read_bytes() == data
    assert (files / BIG).read_bytes() == b"\xff" * BIG_LEN  # the source really changed


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_source_changing_size_during_install_is_refused(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Right size when opened; then it grows (endless data) or shrinks mid-copy."""
    files, records = build_tree(tmp_path)
    real_preadv = os.preadv
    changed = False

    def preadv_then_resize(fd: int, buffers: list[memoryview], offset: int) -> int:
        nonlocal changed
        n = real_preadv(fd, buffers, offset)
        if not changed and os.fstat(fd).st_size == BIG_LEN:
            changed = True
            os.truncate(files / BIG, BIG_LEN + 1 if change == "grow" else SHARD)
        return n

    monkeypatch.setattr(contents.os, "preadv", preadv_then_resize)
    expected = "the file is longer" if change == "grow" else "shrank while being read"
    assert_refused(files, records, releases, SizeMismatchError, expected)


# --- dest rules ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dir", "file", "dangling symlink"])
def test_existing_dest_is_refused(tmp_path: Path, releases: Path, kind: str) -> None:
    files, records = build_tree(tmp_path)
    dest = releases / "current"
    if kind != "dir":
        dest = releases / "r1"
        if kind == "file":
            dest.write_bytes(b"")
        else:
            dest.symlink_to(tmp_path / "nowhere")
    before = snapshot(releases)
    with pytest.raises(InputError, match="already exists"):
        run(files, records, dest)
    assert snapshot(releases) == before
    assert not (tmp_path / "nowhere").exists()


def test_missing_parent_is_refused(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        run(files, records, tmp_path / "no" / "r1")
    assert not (tmp_path / "no").exists()


def test_dest_appearing_during_install_is_not_replaced(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, records = build_tree(tmp_path)
    monkeypatch.setattr(install, "PROGRESS_INTERVAL", 0.0)
    dest = releases / "r1"

    def squat(event: object) -> None:
        if isinstance(event, Progress) and not dest.exists():
            dest.mkdir()  # an empty directory: a plain rename would replace it

    with pytest.raises(InputError, match="appeared during the install"):
        run(files, records, dest, on_event=squat)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in releases.iterdir()) == ["current", "r1"]


# --- interruption --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "KeyboardInterrupt"])
def test_interrupted_install_leaves_nothing(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    files, records = build_tree(tmp_path, {f"f{i}": pattern(2 * SHARD, i) for i in range(30)})
    monkeypatch.setattr(install, "PROGRESS_INTERVAL", 0.0)
    before = snapshot(releases)
    fds = len(os.listdir("/proc/self/fd"))
    gen = install_files(files, records, releases / "r1", workers=2)
    assert isinstance(next(gen), Started)
    assert isinstance(next(gen), Progress)
    assert len(snapshot(releases)) > len(before)  # staging exists mid-way
    if how == "close":
        gen.close()
    else:
        with pytest.raises(KeyboardInterrupt):
            gen.throw(KeyboardInterrupt())
    assert snapshot(releases) == before
    assert len(os.listdir("/proc/self/fd")) == fds


def test_interrupt_inside_a_worker_leaves_nothing(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, records = build_tree(tmp_path)
    real = install._pwrite_all
    calls = 0

    def interrupted(fd: int, path: str, chunk: memoryview, position: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        real(fd, path, chunk, position)

    monkeypatch.setattr(install, "_pwrite_all", interrupted)
    before = snapshot(releases)
    with pytest.raises(KeyboardInterrupt):
        run(files, records, releases / "r1")
    assert snapshot(releases) == before


def test_write_failure_is_a_deployment_error(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, records = build_tree(tmp_path)

    def no_space(fd: int, data: memoryview, position: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(install.os, "pwrite", no_space)
    before = snapshot(releases)
    with pytest.raises(DeploymentError, match="No space left on device"):
        run(files, records, releases / "r1")
    monkeypatch.undo()
    assert snapshot(releases) == before


def test_final_rename_never_replaces(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a check-then-rename leaves open: dest created after the check."""
    staging = releases / ".r1.staging-x"
    staging.mkdir()
    dest = releases / "r1"
    dest.mkdir()  # empty: os.rename would silently replace it
    monkeypatch.setattr(install.os.path, "lexists", lambda _path: False)  # the check missed it
    with pytest.raises(InputError, match="appeared during the install"):
        install.rename_noreplace(staging, dest)
    monkeypatch.undo()
    assert staging.is_dir() and dest.is_dir()
