"""Content checks of files/: the exact file set (check_file_set) and every signed
digest (verify_contents), against trees built with the build's own copy_and_hash.

Shards are 64 KiB so multi-shard paths run in milliseconds. Each adversarial
case asserts the specific error class and that the message names the culprit.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from appliance.bundle.format import FileRecord
from appliance.bundle.hashing import copy_and_hash
from appliance.bundle.site import contents
from appliance.bundle.site.contents import (
    check_file_set,
    hash_range,
    refuse_growth,
    run_bounded,
    verify_contents,
)
from appliance.errors import (
    DigestMismatchError,
    FileSetError,
    InputError,
    MetadataError,
    SizeMismatchError,
    UnsafePathError,
)
from appliance.events import Finished, Progress, Started, drain

SHARD = 64 * 1024
BIG = "models/m/model.bin"
BIG_LEN = 3 * SHARD + SHARD // 2  # four shards, the last one short


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic bytes where every shard differs (so swaps are detectable)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def default_tree() -> dict[str, bytes]:
    return {
        BIG: pattern(BIG_LEN),
        "models/m/config.json": b'{"model_type": "llama"}\n',
        "wheels/a-1.0-py3-none-any.whl": pattern(5000, 1),
        "empty.txt": b"",
    }


def build_tree(
    tmp_path: Path, files: dict[str, bytes] | None = None
) -> tuple[Path, list[FileRecord]]:
    """files/ and its records, made with copy_and_hash as the build does."""
    src, dst = tmp_path / "src", tmp_path / "files"
    records = []
    for rel, data in (default_tree() if files is None else files).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        records.append(copy_and_hash(src / rel, dst / rel, rel, shard_size=SHARD))
    dst.mkdir(exist_ok=True)
    return dst, records


def verify(files: Path, records: list[FileRecord], workers: int = 2) -> list[object]:
    events: list[object] = []
    drain(verify_contents(files, records, workers=workers), events.append)
    return events


def both(files: Path, records: list[FileRecord]) -> None:
    check_file_set(files, records)
    verify(files, records)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- happy paths -------------------------------------------------------------------


def test_intact_tree_passes_both_checks(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    assert len(records[0].shards) == 4  # the multi-shard path really runs
    check_file_set(files, records)
    events = verify(files, records)
    assert events[0] == Started("verify", total_bytes=sum(r.length for r in records), total_items=4)
    assert isinstance(events[-1], Finished)
    final = events[-2]
    assert isinstance(final, Progress)
    assert (final.done_bytes, final.done_items) == (final.total_bytes, 4)


def test_one_worker_and_many_workers_agree(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    verify(files, records, workers=1)
    verify(files, records, workers=16)


def test_empty_manifest_and_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    both(tmp_path / "files", [])


def test_progress_is_throttled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, records = build_tree(tmp_path)
    monkeypatch.setattr(contents, "PROGRESS_INTERVAL", 3600.0)
    progress = [e for e in verify(files, records) if isinstance(e, Progress)]
    assert len(progress) == 1  # only the final one
    monkeypatch.setattr(contents, "PROGRESS_INTERVAL", 0.0)
    progress = [e for e in verify(files, records, workers=1) if isinstance(e, Progress)]
    assert len(progress) > 4
    assert [p.done_bytes for p in progress] == sorted(p.done_bytes for p in progress)


def test_zero_length_file_is_fine(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path, {"empty": b""})
    assert records[0].sha256 == hashlib.sha256(b"").hexdigest()
    both(files, records)


# --- content damage ----------------------------------------------------------------

FLIPS = {
    "start": (0, 1),
    "middle": (SHARD + SHARD // 2, 2),
    "end": (BIG_LEN - 1, 4),
    "before the first boundary": (SHARD - 1, 1),
    "after the first boundary": (SHARD, 2),
    "before the last boundary": (3 * SHARD - 1, 3),
    "after the last boundary": (3 * SHARD, 4),
}


@pytest.mark.parametrize(("offset", "shard"), FLIPS.values(), ids=FLIPS.keys())
def test_flipped_byte_names_file_and_shard(tmp_path: Path, offset: int, shard: int) -> None:
    files, records = build_tree(tmp_path)
    flip(files / BIG, offset)
    check_file_set(files, records)  # same size: only the digest can tell
    with pytest.raises(DigestMismatchError) as caught:
        verify(files, records)
    message = str(caught.value)
    first, last = (shard - 1) * SHARD, min(shard * SHARD, BIG_LEN) - 1
    assert f"{BIG} shard {shard} of 4 (bytes {first}-{last})" in message
    assert records[0].shards[shard - 1][:16] in message  # the expected digest, abbreviated
    assert message.count("shard") == 1


@pytest.mark.parametrize("offset", [0, 2500, 4999])
def test_flipped_byte_in_single_shard_file(tmp_path: Path, offset: int) -> None:
    files, records = build_tree(tmp_path)
    flip(files / "wheels/a-1.0-py3-none-any.whl", offset)
    with pytest.raises(DigestMismatchError, match=r"wheels/a-1.0-py3-none-any.whl: expected"):
        verify(files, records)


def test_swapped_shards_are_both_named(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    data = (files / BIG).read_bytes()
    (files / BIG).write_bytes(data[SHARD : 2 * SHARD] + data[:SHARD] + data[2 * SHARD :])
    with pytest.raises(DigestMismatchError) as caught:
        verify(files, records)
    message = str(caught.value)
    assert "shard 1 of 4" in message
    assert "shard 2 of 4" in message
    assert "shard 3 of 4" not in message


def test_swapped_files_of_equal_size(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path, {"a": pattern(100, 1), "b": pattern(100, 2)})
    a, b = (files / "a").read_bytes(), (files / "b").read_bytes()
    (files / "a").write_bytes(b)
    (files / "b").write_bytes(a)
    check_file_set(files, records)
    with pytest.raises(DigestMismatchError, match=r"(?s)a: expected.*b: expected"):
        verify(files, records)


def test_many_mismatches_are_listed_up_to_ten(tmp_path: Path) -> None:
    tree = {f"f{i:02d}": pattern(10, i) for i in range(15)}
    files, records = build_tree(tmp_path, tree)
    for name in tree:
        flip(files / name, 0)
    with pytest.raises(DigestMismatchError) as caught:
        verify(files, records, workers=1)
    message = caught.value.message
    assert message.startswith("15 piece(s)")
    assert message.count(": expected") == 10
    assert "f09: expected" in message and "f10" not in message
    assert message.endswith("... and 5 more")


def test_a_ruined_bundle_is_not_hashed_to_the_end(tmp_path: Path) -> None:
    tree = {f"f{i}": pattern(5 * SHARD, i) for i in range(5)}  # 25 shards
    files, records = build_tree(tmp_path, tree)
    for name in tree:
        (files / name).write_bytes(bytes(5 * SHARD))
    with pytest.raises(DigestMismatchError, match=r"^at least 1\d piece\(s\)"):
        verify(files, records, workers=1)


@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_size_change_is_refused_by_both(tmp_path: Path, change: str) -> None:
    files, records = build_tree(tmp_path)
    with open(files / BIG, "r+b") as f:
        if change == "truncate":
            f.truncate(BIG_LEN - 1)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"x")
    with pytest.raises(SizeMismatchError, match=rf"{BIG}.*signed {BIG_LEN} bytes"):
        check_file_set(files, records)
    with pytest.raises(SizeMismatchError, match=rf"{BIG}: signed length {BIG_LEN} bytes"):
        verify(files, records)


def test_zero_length_file_that_should_have_content(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "models/m/config.json").write_bytes(b"")
    with pytest.raises(SizeMismatchError, match=re.escape("config.json")):
        check_file_set(files, records)
    with pytest.raises(SizeMismatchError, match=re.escape("config.json")):
        verify(files, records)


def test_zero_length_record_with_wrong_digest(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path, {"empty": b""})
    forged = [FileRecord("empty", 0, "ab" * 32, SHARD)]
    check_file_set(files, forged)
    with pytest.raises(DigestMismatchError, match="empty: expected sha256 abababab"):
        verify(files, forged)
    assert records[0].sha256 != forged[0].sha256


def test_file_swapped_after_the_set_check(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    check_file_set(files, records)
    (files / "wheels/a-1.0-py3-none-any.whl").write_bytes(pattern(5000, 99))  # same size
    with pytest.raises(DigestMismatchError, match=re.escape("wheels/a-1.0")):
        verify(files, records)


def test_growth_past_the_signed_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcd")
    fd = os.open(path, os.O_RDONLY)
    try:
        refuse_growth(fd, FileRecord("f", 4, "", SHARD))  # exactly as signed
        with pytest.raises(SizeMismatchError, match="longer"):
            refuse_growth(fd, FileRecord("f", 3, "", SHARD))
    finally:
        os.close(fd)


def test_shrinking_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcd")
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = memoryview(bytearray(2))
        assert hash_range(fd, "f", 0, 4, buffer) == hashlib.sha256(b"abcd").hexdigest()
        with pytest.raises(SizeMismatchError, match="ends at byte 4"):
            hash_range(fd, "f", 2, 4, buffer)
    finally:
        os.close(fd)


# --- the file set ------------------------------------------------------------------


def test_renamed_file_is_missing_and_extra(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "models/m/config.json").rename(files / "models/m/config.JSON")
    with pytest.raises(FileSetError) as caught:
        check_file_set(files, records)
    message = str(caught.value)
    assert "1 missing, 1 extra" in message
    assert "missing (1): models/m/config.json" in message
    assert "extra (1): models/m/config.JSON" in message
    with pytest.raises(FileSetError, match=re.escape("config.json is missing")):
        verify(files, records)


def test_moved_file_is_missing_and_extra(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "models/m/config.json").rename(files / "config.json")
    with pytest.raises(
        FileSetError, match=r"(?s)missing \(1\): models/m/config.json.*extra \(1\): config.json"
    ):
        check_file_set(files, records)


def test_missing_directory_of_a_file(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "wheels/a-1.0-py3-none-any.whl").unlink()
    (files / "wheels").rmdir()
    with pytest.raises(FileSetError, match=re.escape("missing (1): wheels/a-1.0")):
        check_file_set(files, records)
    with pytest.raises(FileSetError, match="wheels is missing"):
        verify(files, records)


@pytest.mark.parametrize(
    "extra",
    ["junk.bin", ".hidden", "models/m/.DS_Store", "deep/er/.dot/file", "models/m/tmp/"],
)
def test_extra_entries_are_refused(tmp_path: Path, extra: str) -> None:
    files, records = build_tree(tmp_path)
    if extra.endswith("/"):
        (files / extra).mkdir(parents=True)
    else:
        (files / extra).parent.mkdir(parents=True, exist_ok=True)
        (files / extra).write_bytes(b"x")
    with pytest.raises(FileSetError) as caught:
        check_file_set(files, records)
    assert caught.value.message.endswith(f"0 missing, 1 extra\n  extra (1): {extra}")


def test_extra_empty_dir_at_top(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "lost+found").mkdir()
    with pytest.raises(FileSetError, match=r"lost\+found/"):
        check_file_set(files, records)


def test_lists_are_capped_with_counts(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path, {f"f{i:02d}": b"x" for i in range(12)})
    for i in range(12):
        (files / f"g{i:02d}").write_bytes(b"x")
        (files / f"f{i:02d}").unlink()
    with pytest.raises(FileSetError) as caught:
        check_file_set(files, records)
    message = str(caught.value)
    assert "12 missing, 12 extra" in message
    assert "f09" in message and "f10" not in message and "and 2 more" in message


def test_missing_files_dir(tmp_path: Path) -> None:
    with pytest.raises(FileSetError, match="does not exist"):
        check_file_set(tmp_path / "nope", [])
    with pytest.raises(FileSetError, match="does not exist"):
        verify(tmp_path / "nope", [])


# --- links and special files -------------------------------------------------------


@pytest.mark.parametrize("target", ["inside", "outside"])
def test_symlinked_file_is_unsafe(tmp_path: Path, target: str) -> None:
    files, records = build_tree(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"model_type": "llama"}\n')  # same bytes: a link is refused anyway
    link = files / "models/m/config.json"
    link.unlink()
    link.symlink_to(outside if target == "outside" else files / "empty.txt")
    with pytest.raises(UnsafePathError, match=re.escape("models/m/config.json is a symbolic link")):
        check_file_set(files, records)
    with pytest.raises(UnsafePathError, match=re.escape("models/m/config.json is a symbolic link")):
        verify(files, records)


def test_extra_symlink_is_unsafe(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "link").symlink_to("empty.txt")
    with pytest.raises(UnsafePathError, match="link is a symbolic link"):
        check_file_set(files, records)


def test_symlinked_directory_is_unsafe(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    real = tmp_path / "elsewhere"
    (files / "models").rename(real)
    (files / "models").symlink_to(real)
    with pytest.raises(UnsafePathError, match="models is a symbolic link"):
        check_file_set(files, records)
    with pytest.raises(UnsafePathError, match="models is a symbolic link"):
        verify(files, records)


def test_files_dir_itself_a_symlink(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(files)
    with pytest.raises(UnsafePathError, match="is a symbolic link, expected a real directory"):
        check_file_set(link, records)
    with pytest.raises(UnsafePathError, match="is a symbolic link, expected a real directory"):
        verify(link, records)


def test_files_dir_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "files").write_bytes(b"")
    with pytest.raises(UnsafePathError, match="is a regular file"):
        check_file_set(tmp_path / "files", [])


def test_hardlink_is_unsafe(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    os.link(files / "empty.txt", tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match=re.escape("empty.txt has 2 hard links")):
        check_file_set(files, records)
    with pytest.raises(UnsafePathError, match=re.escape("empty.txt has 2 hard links")):
        verify(files, records)


def test_fifo_is_unsafe_and_never_blocks(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "empty.txt").unlink()
    os.mkfifo(files / "empty.txt")
    with pytest.raises(UnsafePathError, match=re.escape("empty.txt is a FIFO")):
        check_file_set(files, records)
    with pytest.raises(UnsafePathError, match=re.escape("empty.txt is a FIFO")):
        verify(files, records)


def test_socket_is_unsafe(tmp_path: Path) -> None:
    import socket

    files, records = build_tree(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(files)  # AF_UNIX paths are short; bind relative to files/
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
        sock.close()
    with pytest.raises(UnsafePathError, match="sock is a socket"):
        check_file_set(files, records)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_device_node_is_unsafe(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    (files / "empty.txt").unlink()
    os.mknod(files / "empty.txt", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    with pytest.raises(UnsafePathError, match=re.escape("empty.txt is a device node")):
        check_file_set(files, records)
    with pytest.raises(UnsafePathError, match=re.escape("empty.txt is a device node")):
        verify(files, records)


# --- records and scheduling --------------------------------------------------------


def test_bad_records_are_refused(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    big = records[0]
    short = FileRecord(big.path, big.length, big.sha256, SHARD, big.shards[:3])
    with pytest.raises(MetadataError, match="3 shard digests"):
        check_file_set(files, [short, *records[1:]])
    with pytest.raises(MetadataError, match="3 shard digests"):
        verify(files, [short, *records[1:]])
    with pytest.raises(UnsafePathError, match="listed twice"):
        verify(files, [*records, records[1]])
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):
        verify(files, [FileRecord("../x", 0, "", SHARD)])


def test_workers_must_be_positive(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path)
    with pytest.raises(InputError, match="at least 1"):
        verify(files, records, workers=0)


def test_in_flight_work_is_bounded() -> None:
    produced = completed = peak = 0
    lock = threading.Lock()

    def items() -> object:
        nonlocal produced, peak
        for i in range(200):
            with lock:
                produced += 1
                peak = max(peak, produced - completed)
            yield i

    def task(i: int) -> int:
        return i * 2

    results = []
    for item, result in run_bounded(task, items(), 3):  # type: ignore[arg-type]
        completed += 1
        results.append((item, result))
    assert sorted(results) == [(i, 2 * i) for i in range(200)]
    assert peak <= 2 * 3


def test_abandoned_verify_closes_every_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, records = build_tree(tmp_path, {"big": pattern(40 * SHARD)})  # 40 shards, one fd
    monkeypatch.setattr(contents, "PROGRESS_INTERVAL", 0.0)
    before = open_fds()
    gen = verify_contents(files, records, workers=2)
    assert isinstance(next(gen), Started)
    assert isinstance(next(gen), Progress)  # a few shards done: the file is open
    gen.close()
    assert open_fds() == before


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_size_while_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The size was right when the file was opened, and changes during the hashing."""
    files, records = build_tree(tmp_path, {"big": pattern(4 * SHARD)})
    real_preadv = os.preadv
    changed = False

    def preadv_then_resize(fd: int, buffers: list[memoryview], offset: int) -> int:
        nonlocal changed
        n = real_preadv(fd, buffers, offset)
        if not changed:
            changed = True
            os.truncate(files / "big", 5 * SHARD if change == "grow" else 2 * SHARD)
        return n

    monkeypatch.setattr(contents.os, "preadv", preadv_then_resize)
    expected = "the file is longer" if change == "grow" else "it shrank while being read"
    with pytest.raises(SizeMismatchError, match=expected):
        verify(files, records, workers=1)


def test_failed_verify_closes_every_descriptor(tmp_path: Path) -> None:
    files, records = build_tree(tmp_path, {f"f{i}": pattern(3 * SHARD, i) for i in range(20)})
    flip(files / "f3", 5)
    (files / "f9").unlink()
    before = open_fds()
    with pytest.raises((DigestMismatchError, FileSetError)):
        verify(files, records)
    assert open_fds() == before
