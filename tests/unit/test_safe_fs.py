"""The descriptor-based primitives of ``appliance.safe_fs``: links, FIFOs, wrong kinds."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import safe_fs


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """tmp_path/root with a/b/file.txt, a real directory and a descriptor on it."""
    base = tmp_path / "root"
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "b" / "file.txt").write_bytes(b"hello")
    fd = os.open(base, safe_fs.DIR_FLAGS)
    try:
        yield base, fd
    finally:
        os.close(fd)


def test_open_dirs_walks_real_directories(root: tuple[Path, int]) -> None:
    _, fd = root
    dir_fd = safe_fs.open_dirs(fd, ["a", "b"])
    assert dir_fd is not None
    try:
        assert os.listdir(dir_fd) == ["file.txt"]
    finally:
        os.close(dir_fd)
    assert safe_fs.open_dirs(fd, ["a", "missing"]) is None


def test_a_symlink_in_the_path_is_refused(root: tuple[Path, int], tmp_path: Path) -> None:
    base, fd = root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"x")
    (base / "link").symlink_to(outside)
    with pytest.raises(OSError) as walked:
        safe_fs.open_dirs(fd, ["link"])
    assert walked.value.errno in safe_fs.LINK_ERRNOS
    with pytest.raises(OSError) as looked:
        safe_fs.lstat_beneath(fd, "link/secret")
    assert looked.value.errno in safe_fs.LINK_ERRNOS
    with pytest.raises(OSError) as made:
        safe_fs.make_dirs(fd, ["link", "new"])
    assert made.value.errno in safe_fs.LINK_ERRNOS
    assert not (outside / "new").exists()


def test_a_symlink_as_the_file_is_refused(root: tuple[Path, int]) -> None:
    base, fd = root
    (base / "a" / "b" / "alias").symlink_to("file.txt")
    dir_fd = safe_fs.open_dirs(fd, ["a", "b"])
    assert dir_fd is not None
    try:
        with pytest.raises(OSError) as opened:
            safe_fs.open_regular("alias", dir_fd=dir_fd)
        assert opened.value.errno in safe_fs.LINK_ERRNOS
        info = safe_fs.lstat_beneath(fd, "a/b/alias")
        assert info is not None and stat.S_ISLNK(info.st_mode)  # seen, never followed
    finally:
        os.close(dir_fd)


def test_a_fifo_is_refused_without_blocking(root: tuple[Path, int]) -> None:
    base, fd = root
    os.mkfifo(base / "pipe")
    with pytest.raises(OSError) as opened:
        safe_fs.open_regular("pipe", dir_fd=fd)  # no writer: a blocking open would hang
    assert opened.value.errno == errno.EMLINK
    with pytest.raises(OSError) as by_path:
        safe_fs.open_regular(base / "pipe")
    assert by_path.value.errno == errno.EMLINK


def test_a_directory_where_a_file_is_expected_is_refused(root: tuple[Path, int]) -> None:
    _, fd = root
    with pytest.raises(OSError) as opened:
        safe_fs.open_regular("a", dir_fd=fd)
    assert opened.value.errno == errno.EMLINK


def test_a_file_where_a_directory_is_expected_is_refused(root: tuple[Path, int]) -> None:
    _, fd = root
    with pytest.raises(OSError) as walked:
        safe_fs.open_dirs(fd, ["a", "b", "file.txt"])
    assert walked.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as made:
        safe_fs.make_dirs(fd, ["a", "b", "file.txt"])
    assert made.value.errno == errno.ENOTDIR


def test_open_regular_reads_a_plain_file_blocking(root: tuple[Path, int]) -> None:
    base, _ = root
    fd = safe_fs.open_regular(base / "a" / "b" / "file.txt")
    try:
        assert os.get_blocking(fd)
        assert os.read(fd, 100) == b"hello"
    finally:
        os.close(fd)


def test_make_dirs_creates_what_is_missing(root: tuple[Path, int]) -> None:
    base, fd = root
    dir_fd = safe_fs.make_dirs(fd, ["a", "new", "deeper"])
    try:
        new = os.open("f", safe_fs.CREATE_FLAGS, 0o644, dir_fd=dir_fd)
        safe_fs.write_all(new, memoryview(b"data"))
        os.close(new)
    finally:
        os.close(dir_fd)
    assert (base / "a" / "new" / "deeper" / "f").read_bytes() == b"data"


def test_create_flags_never_reuse_a_name(root: tuple[Path, int]) -> None:
    base, fd = root
    (base / "dangling").symlink_to(base / "nowhere")
    with pytest.raises(FileExistsError):
        os.open("dangling", safe_fs.CREATE_FLAGS, 0o644, dir_fd=fd)
    assert not (base / "nowhere").exists()


def test_unlink_quiet_ignores_what_is_not_there(root: tuple[Path, int]) -> None:
    base, fd = root
    safe_fs.unlink_quiet(fd, "missing")
    (base / "gone").write_bytes(b"")
    safe_fs.unlink_quiet(fd, "gone")
    assert not (base / "gone").exists()
    assert safe_fs.lstat_beneath(fd, "gone") is None


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that narrows nothing, so a mode seen is the mode the code asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_create_new_is_0600_from_the_first_byte_and_never_reuses_a_name(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "key"
    safe_fs.create_new(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        safe_fs.create_new(path, b"other")
    assert path.read_bytes() == b"secret"
    (tmp_path / "dangling").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):  # a link is a name that exists: never followed
        safe_fs.create_new(tmp_path / "dangling", b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_create_new_exact_mode_ignores_a_narrow_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        safe_fs.create_new(tmp_path / "narrow", b"c", 0o644)
        safe_fs.create_new(tmp_path / "exact", b"c", 0o644, exact_mode=True)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "narrow").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "exact").stat().st_mode) == 0o644


def test_replace_atomically_swaps_whole_files_and_leaves_no_temporary(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    path.chmod(0o644)
    safe_fs.replace_atomically(path, b"new", 0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_replace_atomically_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"untouched")
    (tmp_path / "secrets.json").symlink_to(target)
    safe_fs.replace_atomically(tmp_path / "secrets.json", b"mine")
    assert target.read_bytes() == b"untouched"
    assert not (tmp_path / "secrets.json").is_symlink()
    assert (tmp_path / "secrets.json").read_bytes() == b"mine"


def test_a_failed_replace_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # a directory where the file goes: the rename fails
    with pytest.raises(IsADirectoryError):
        safe_fs.replace_atomically(tmp_path / "taken", b"x")
    assert (tmp_path / "taken").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
