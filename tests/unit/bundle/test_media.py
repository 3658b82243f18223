"""Media sets: split at the signed layout, check parts from several media, join, resume.

The bundle here is made with the build's own primitives (``copy_and_hash`` fed
into one ``PartHasher``), with a 100 KiB part size so files span parts and parts
span files. Its metadata/ is a stand-in: these tests never parse it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from appliance.bundle.format import FileRecord
from appliance.bundle.hashing import PartHasher, copy_and_hash
from appliance.bundle.media import join as join_module
from appliance.bundle.media.check import check_parts
from appliance.bundle.media.join import join_parts
from appliance.bundle.media.parts import stream_segments
from appliance.bundle.media.split import split_bundle
from appliance.bundle.payload import MediaLayout
from appliance.errors import (
    DigestMismatchError,
    InputError,
    MediaPartError,
    MetadataError,
    UnsafePathError,
)
from appliance.events import Event, Progress, Started, Warned, drain

REPO = Path(__file__).resolve().parents[3]
PART = 100 * 1024
NAME, VERSION = "demo", 3
# Stream: a.bin [0, 256123) | b/c.bin 30000 | b/d.txt 0 | b/e.bin 100000 | f.bin 77777
# = 463900 bytes, 5 parts; part 3 holds the tail of a.bin, all of b/c.bin and the
# head of b/e.bin; a.bin spans parts 1-3.
SIZES = {"a.bin": 256_123, "b/c.bin": 30_000, "b/d.txt": 0, "b/e.bin": 100_000, "f.bin": 77_777}
COUNT = 5

T = TypeVar("T")


@dataclasses.dataclass
class Built:
    bundle: Path
    records: list[FileRecord]
    layout: MediaLayout


def part_name(index: int) -> str:
    return f"{NAME}-{VERSION}.part{index:03d}-of-{COUNT:03d}"


def run(gen: Generator[Event, None, T]) -> tuple[T, list[Event]]:
    events: list[Event] = []
    result = drain(gen, events.append)
    return result, events


def files_of(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def listing(root: Path) -> set[str]:
    """Every entry (files, dirs, hidden ones) under root."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def built(tmp_path: Path) -> Built:
    rng = random.Random(20261122)
    src, bundle = tmp_path / "src", tmp_path / "bundle"
    hasher = PartHasher(PART)
    records = []
    for rel in sorted(SIZES):  # manifest order, as the build copies
        source = src / rel
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(rng.randbytes(SIZES[rel]))
        target = bundle / "files" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        records.append(copy_and_hash(source, target, rel, parts=hasher))
    shutil.rmtree(src)
    (bundle / "metadata" / "root").mkdir(parents=True)
    (bundle / "metadata" / "targets.json").write_bytes(b'{"signed": {"stand-in": true}}\n')
    (bundle / "metadata" / "root" / "2.root.json").write_bytes(b"{}\n")
    layout = MediaLayout(
        part_size=PART, parts=[(p.index, p.offset, p.length, p.sha256) for p in hasher.finish()]
    )
    assert len(layout.parts) == COUNT
    return Built(bundle, records, layout)


@pytest.fixture
def parts_dir(tmp_path: Path, built: Built) -> Path:
    out = tmp_path / "parts"
    drain(split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out))
    return out


def join(built: Built, dirs: list[Path], out: Path) -> tuple[Path, list[Event]]:
    return run(
        join_parts(dirs, built.layout, NAME, VERSION, built.records, dirs[0] / "metadata", out)
    )


def check(built: Built, dirs: list[Path]) -> dict[int, Path]:
    return drain(check_parts(dirs, built.layout, NAME, VERSION, built.records))


def check_error(built: Built, dirs: list[Path]) -> str:
    with pytest.raises(MediaPartError) as caught:
        check(built, dirs)
    return str(caught.value)


def applied_items(events: list[Event]) -> list[str]:
    return [e.item for e in events if isinstance(e, Progress) and e.operation == "join" and e.item]


# --- stream_segments ----------------------------------------------------------------


def test_stream_segments_cover_exactly_the_range() -> None:
    records = [
        FileRecord("a", 10, "0"),
        FileRecord("b", 0, "0"),
        FileRecord("c", 5, "0"),
        FileRecord("d", 20, "0"),
    ]
    assert stream_segments(records, 8, 10) == [("a", 8, 2), ("c", 0, 5), ("d", 0, 3)]
    assert stream_segments(records, 0, 10) == [("a", 0, 10)]
    assert stream_segments(records, 10, 5) == [("c", 0, 5)]
    assert stream_segments(records, 34, 1) == [("d", 19, 1)]
    assert stream_segments(records, 35, 10) == []
    assert stream_segments(records, 3, 0) == []
    with pytest.raises(ValueError):
        stream_segments(records, -1, 2)


def test_stream_segments_match_the_signed_parts(built: Built) -> None:
    lengths = {r.path: r.length for r in built.records}
    for _index, offset, length, _digest in built.layout.parts:
        segments = stream_segments(built.records, offset, length)
        assert sum(n for _, _, n in segments) == length
        assert all(off >= 0 and off + n <= lengths[p] for p, off, n in segments)
    assert [p for p, _, _ in stream_segments(built.records, 2 * PART, PART)] == [
        "a.bin",
        "b/c.bin",
        "b/e.bin",
    ]


# --- split --------------------------------------------------------------------------


def test_split_writes_the_signed_parts_and_the_metadata(parts_dir: Path, built: Built) -> None:
    names = sorted(p.name for p in parts_dir.iterdir() if p.is_file())
    assert names == [part_name(i) for i in range(1, COUNT + 1)]
    assert not [p for p in parts_dir.iterdir() if p.name.startswith(".")]
    assert files_of(parts_dir / "metadata") == files_of(built.bundle / "metadata")
    stream = b"".join((built.bundle / "files" / r.path).read_bytes() for r in built.records)
    assert b"".join((parts_dir / part_name(i)).read_bytes() for i in range(1, 6)) == stream
    assert (parts_dir / part_name(5)).stat().st_size == len(stream) - 4 * PART


def test_split_refuses_another_part_size_with_the_rebuild_hint(
    tmp_path: Path, built: Built
) -> None:
    out = tmp_path / "parts"
    with pytest.raises(InputError) as caught:
        drain(
            split_bundle(
                built.bundle, built.records, built.layout, NAME, VERSION, out, part_size=2 * PART
            )
        )
    message = str(caught.value)
    assert "signed at build time" in message
    assert "appliance bundle build ... --part-size SIZE" in message
    assert not out.exists()
    # the signed size itself is accepted
    drain(
        split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out, part_size=PART)
    )
    assert len(list(out.glob("demo-3.part*"))) == COUNT


def test_split_of_a_damaged_bundle_names_the_part_and_keeps_nothing(
    tmp_path: Path, built: Built
) -> None:
    flip(built.bundle / "files" / "b" / "e.bin", 0)  # stream offset 286123: part 3
    out = tmp_path / "parts"
    out.mkdir()
    with pytest.raises(DigestMismatchError) as caught:
        drain(split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out))
    assert "part 3" in str(caught.value)
    assert "files/b/e.bin" in str(caught.value)
    assert listing(out) == set()  # parts 1-2 were good, but a half set is not kept


def test_split_into_a_new_directory_leaves_nothing_on_failure(tmp_path: Path, built: Built) -> None:
    flip(built.bundle / "files" / "f.bin", 77_776)  # last byte of the stream
    out = tmp_path / "new" / "parts"
    with pytest.raises(DigestMismatchError, match="part 5"):
        drain(split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out))
    assert not out.exists()


def test_abandoned_split_removes_what_it_wrote(tmp_path: Path, built: Built) -> None:
    out = tmp_path / "parts"
    gen = split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out)
    for event in gen:
        if isinstance(event, Progress) and event.item == part_name(2):
            break
    assert (out / part_name(1)).exists()
    gen.close()
    assert not out.exists()


def test_split_refuses_bad_output_directories(
    tmp_path: Path, built: Built, parts_dir: Path
) -> None:
    def split(out: Path) -> None:
        drain(split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out))

    with pytest.raises(InputError, match="inside the bundle"):
        split(built.bundle / "parts")
    with pytest.raises(InputError, match="inside the bundle"):
        split(built.bundle)
    assert not (built.bundle / "parts").exists()
    before = listing(parts_dir)
    with pytest.raises(InputError, match="already holds part files"):
        split(parts_dir)
    assert listing(parts_dir) == before
    other = tmp_path / "other"
    (other / "metadata").mkdir(parents=True)
    with pytest.raises(InputError, match="metadata already exists"):
        split(other)
    assert listing(other) == {"metadata"}


def test_split_refuses_a_symlinked_source_file(tmp_path: Path, built: Built) -> None:
    victim = built.bundle / "files" / "b" / "e.bin"
    elsewhere = tmp_path / "elsewhere.bin"
    victim.rename(elsewhere)
    victim.symlink_to(elsewhere)  # same bytes, but a link: must not be followed
    out = tmp_path / "parts"
    with pytest.raises(UnsafePathError, match=r"b/e\.bin"):
        drain(split_bundle(built.bundle, built.records, built.layout, NAME, VERSION, out))
    assert not out.exists()


def test_split_refuses_a_layout_of_another_manifest(tmp_path: Path, built: Built) -> None:
    with pytest.raises(MetadataError, match="cover"):
        drain(
            split_bundle(
                built.bundle, built.records[:-1], built.layout, NAME, VERSION, tmp_path / "p"
            )
        )
    assert not (tmp_path / "p").exists()


# --- join ---------------------------------------------------------------------------


def test_split_then_join_reproduces_the_bundle(
    tmp_path: Path, built: Built, parts_dir: Path
) -> None:
    out, events = join(built, [parts_dir], tmp_path / "joined")
    assert out == tmp_path / "joined"
    assert files_of(out) == files_of(built.bundle)
    assert listing(out) == listing(built.bundle)
    assert not (tmp_path / ".joined.joining").exists()
    assert applied_items(events) == [part_name(i) for i in range(1, COUNT + 1)]


def test_parts_in_any_order_across_three_media(
    tmp_path: Path, built: Built, parts_dir: Path
) -> None:
    media_dirs = [tmp_path / f"usb{n}" for n in range(3)]
    for directory in media_dirs:
        shutil.copytree(parts_dir / "metadata", directory / "metadata")
    order = list(range(1, COUNT + 1))
    random.Random(7).shuffle(order)
    for position, index in enumerate(order):
        shutil.copy(parts_dir / part_name(index), media_dirs[position % 3] / part_name(index))
    shuffled = [media_dirs[2], media_dirs[0], media_dirs[1]]
    mapping = check(built, shuffled)
    assert sorted(mapping) == list(range(1, COUNT + 1))
    for index, path in mapping.items():
        assert path.name == part_name(index)
        assert path.read_bytes() == (parts_dir / part_name(index)).read_bytes()
    out, _ = join(built, shuffled, tmp_path / "joined")
    assert files_of(out) == files_of(built.bundle)


def test_join_refuses_an_existing_out_dir(tmp_path: Path, built: Built, parts_dir: Path) -> None:
    out = tmp_path / "joined"
    out.mkdir()
    before = listing(tmp_path)
    with pytest.raises(InputError, match="already exists"):
        join(built, [parts_dir], out)
    assert listing(tmp_path) == before


def test_failed_join_writes_nothing(tmp_path: Path, built: Built, parts_dir: Path) -> None:
    flip(parts_dir / part_name(4), 10)
    before = listing(tmp_path)
    with pytest.raises(MediaPartError):
        join(built, [parts_dir], tmp_path / "joined")
    assert listing(tmp_path) == before


def test_join_refuses_unsafe_record_paths_before_writing(
    tmp_path: Path, built: Built, parts_dir: Path
) -> None:
    evil = [dataclasses.replace(built.records[0], path="../escaped.bin"), *built.records[1:]]
    before = listing(tmp_path)
    with pytest.raises(UnsafePathError):
        drain(
            join_parts(
                [parts_dir],
                built.layout,
                NAME,
                VERSION,
                evil,
                parts_dir / "metadata",
                tmp_path / "joined",
            )
        )
    assert listing(tmp_path) == before


# --- check: every problem named, all at once -----------------------------------------


def test_a_flipped_byte_names_the_part_and_its_files(built: Built, parts_dir: Path) -> None:
    flip(parts_dir / part_name(3), PART // 2)
    message = check_error(built, [parts_dir])
    assert "1 problem(s)" in message
    assert f"part 3 ({parts_dir / part_name(3)}) is damaged" in message
    assert "files/a.bin (bytes 204800-256122 of 256123)" in message
    assert "files/b/c.bin (whole file)" in message
    assert "files/b/e.bin (bytes 0-21076 of 100000)" in message
    assert "f.bin" not in message
    assert "Re-copy only the parts named above" in message


@pytest.mark.parametrize("offset", [0, PART - 1])
def test_a_flipped_byte_at_either_end_of_a_part_is_found(
    built: Built, parts_dir: Path, offset: int
) -> None:
    flip(parts_dir / part_name(1), offset)
    assert "part 1 (" in check_error(built, [parts_dir])


def test_a_missing_part_is_named(built: Built, parts_dir: Path) -> None:
    (parts_dir / part_name(4)).unlink()
    message = check_error(built, [parts_dir])
    assert f"part 4 ({part_name(4)}) is missing" in message


def test_a_truncated_part_is_named(built: Built, parts_dir: Path) -> None:
    path = parts_dir / part_name(2)
    path.write_bytes(path.read_bytes()[:-1])
    message = check_error(built, [parts_dir])
    assert f"part 2 ({path}) has {PART - 1} bytes, expected {PART}" in message


def test_stray_files_named_like_parts_are_named(built: Built, parts_dir: Path) -> None:
    (parts_dir / "demo-3.part006-of-005").write_bytes(b"x")
    (parts_dir / "demo-3.part001-of-006").write_bytes(b"x")
    message = check_error(built, [parts_dir])
    assert "2 problem(s)" in message
    assert f"{parts_dir / 'demo-3.part006-of-005'} is named like a part" in message
    assert f"{parts_dir / 'demo-3.part001-of-006'} is named like a part" in message


def test_a_part_of_another_version_is_named(tmp_path: Path, built: Built, parts_dir: Path) -> None:
    other = tmp_path / "usb2"
    other.mkdir()
    shutil.copy(parts_dir / part_name(1), other / "demo-2.part001-of-005")
    message = check_error(built, [parts_dir, other])
    assert "belongs to bundle demo version 2, not demo version 3" in message
    assert str(other / "demo-2.part001-of-005") in message


def test_duplicates_are_fine_when_identical_and_named_when_not(
    tmp_path: Path, built: Built, parts_dir: Path
) -> None:
    other = tmp_path / "usb2"
    other.mkdir()
    shutil.copy(parts_dir / part_name(2), other / part_name(2))
    assert check(built, [parts_dir, other, parts_dir])[2] == parts_dir / part_name(2)
    flip(other / part_name(2), 5)
    message = check_error(built, [parts_dir, other])
    assert "part 2 was found in 2 places with different content" in message
    assert f"{parts_dir / part_name(2)} (matches the signed digest)" in message
    assert f"{other / part_name(2)} (does not match its signed SHA-256" in message


def test_all_problems_are_listed_together(tmp_path: Path, built: Built, parts_dir: Path) -> None:
    (parts_dir / part_name(1)).unlink()
    flip(parts_dir / part_name(3), 0)
    path5 = parts_dir / part_name(5)
    path5.write_bytes(path5.read_bytes() + b"extra")
    (parts_dir / "demo-4.part002-of-005").write_bytes(b"x")
    message = check_error(built, [parts_dir])
    assert "4 problem(s)" in message
    assert "part 1 (demo-3.part001-of-005) is missing" in message
    assert "part 3 (" in message and "is damaged" in message
    assert "part 5 (" in message and "(truncated or extended" in message
    assert "belongs to bundle demo version 4" in message
    assert "part 2" not in message and "part 4" not in message


def test_a_symlinked_part_is_refused(tmp_path: Path, built: Built, parts_dir: Path) -> None:
    real = tmp_path / "real-part"
    (parts_dir / part_name(2)).rename(real)
    (parts_dir / part_name(2)).symlink_to(real)
    assert "part 2: " in check_error(built, [parts_dir])


def test_an_unfinished_split_part_is_ignored_with_a_warning(built: Built, parts_dir: Path) -> None:
    (parts_dir / f".{part_name(2)}.partial").write_bytes(b"half")
    _, events = run(check_parts([parts_dir], built.layout, NAME, VERSION, built.records))
    assert any(isinstance(e, Warned) and "unfinished" in e.message for e in events)


# --- join: interruption and resume --------------------------------------------------


def journal_of(staging: Path) -> list[list[Any]]:
    applied: list[list[Any]] = json.loads((staging / join_module.JOURNAL_NAME).read_text())[
        "applied"
    ]
    return applied


def test_interrupted_join_resumes_after_the_applied_parts(
    tmp_path: Path, built: Built, parts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(join_module, "CHUNK", 16 * 1024)
    real_write = join_module.write_all
    written = 0

    def failing_write(fd: int, view: memoryview) -> None:
        nonlocal written
        if written >= 2 * PART + PART // 2:  # mid part 3
            raise OSError(28, "No space left on device (simulated)")
        real_write(fd, view)
        written += len(view)

    monkeypatch.setattr(join_module, "write_all", failing_write)
    out, staging = tmp_path / "joined", tmp_path / ".joined.joining"
    with pytest.raises(OSError, match="simulated"):
        join(built, [parts_dir], out)
    assert not out.exists()
    assert [index for index, _ in journal_of(staging)] == [1, 2]
    assert (staging / "files" / "a.bin").stat().st_size > 2 * PART  # part 3 half written

    monkeypatch.setattr(join_module, "write_all", real_write)
    _, events = join(built, [parts_dir], out)
    assert any(
        isinstance(e, Warned) and "parts 1-2 are already applied" in e.message for e in events
    )
    assert applied_items(events) == [part_name(i) for i in (3, 4, 5)]
    # the applied parts were neither written nor even re-read
    checked = [e for e in events if isinstance(e, Started) and e.operation == "check-parts"]
    assert checked[0].total_items == 3
    assert files_of(out) == files_of(built.bundle)
    assert listing(out) == listing(built.bundle)
    assert not staging.exists()


def test_resumed_join_does_not_need_the_applied_parts(
    tmp_path: Path, built: Built, parts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = join_parts(
        [parts_dir],
        built.layout,
        NAME,
        VERSION,
        built.records,
        parts_dir / "metadata",
        tmp_path / "joined",
    )
    for event in gen:  # stop the consumer after part 2 is applied
        if isinstance(event, Progress) and event.item == part_name(2):
            break
    gen.close()
    (parts_dir / part_name(1)).unlink()  # medium 1 went back in the drawer
    _, events = join(built, [parts_dir], tmp_path / "joined")
    assert applied_items(events) == [part_name(i) for i in (3, 4, 5)]
    assert files_of(tmp_path / "joined") == files_of(built.bundle)


def test_killed_join_resumes(tmp_path: Path, built: Built, parts_dir: Path) -> None:
    spec = tmp_path / "spec.json"
    out, staging = tmp_path / "joined", tmp_path / ".joined.joining"
    spec.write_text(
        json.dumps(
            {
                "records": [dataclasses.asdict(r) for r in built.records],
                "layout": built.layout.model_dump(mode="json"),
                "parts": str(parts_dir),
                "out": str(out),
            }
        )
    )
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from appliance.bundle.media import join
        from appliance.bundle.format import FileRecord
        from appliance.bundle.payload import MediaLayout
        from appliance.events import drain

        spec = json.loads(Path(sys.argv[1]).read_text())
        records = [FileRecord(**{**r, "shards": tuple(r["shards"])}) for r in spec["records"]]
        layout = MediaLayout.model_validate(spec["layout"])
        parts = Path(spec["parts"])
        join.CHUNK = 8 * 1024
        real = join.write_all

        def slow(fd, view):
            time.sleep(0.02)
            real(fd, view)

        join.write_all = slow
        drain(join.join_parts([parts], layout, "demo", 3, records, parts / "metadata",
                               Path(spec["out"])))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(spec)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(journal_of(staging)) >= 2:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the join finished before it could be killed"
    assert not out.exists()
    applied = len(journal_of(staging))
    assert 2 <= applied < COUNT

    _, events = join(built, [parts_dir], out)
    assert applied_items(events) == [part_name(i) for i in range(applied + 1, COUNT + 1)]
    assert files_of(out) == files_of(built.bundle)
    assert listing(out) == listing(built.bundle)


def test_a_staging_dir_of_another_layout_is_discarded(
    tmp_path: Path, built: Built, parts_dir: Path
) -> None:
    staging = tmp_path / ".joined.joining"
    (staging / "files").mkdir(parents=True)
    (staging / "files" / "junk.bin").write_bytes(b"from another bundle")
    (staging / join_module.JOURNAL_NAME).write_text(
        json.dumps({"journal": 1, "key": "0" * 64, "applied": [[1, "a" * 64]]})
    )
    out, events = join(built, [parts_dir], tmp_path / "joined")
    assert any(
        isinstance(e, Warned) and "discarding" in e.message and "another bundle" in e.message
        for e in events
    )
    assert applied_items(events) == [part_name(i) for i in range(1, COUNT + 1)]
    assert files_of(out) == files_of(built.bundle)


@pytest.mark.parametrize("damage", ["garbage journal", "applied file gone"])
def test_a_staging_dir_that_disagrees_with_itself_is_discarded(
    tmp_path: Path, built: Built, parts_dir: Path, damage: str
) -> None:
    gen = join_parts(
        [parts_dir],
        built.layout,
        NAME,
        VERSION,
        built.records,
        parts_dir / "metadata",
        tmp_path / "joined",
    )
    for event in gen:
        if isinstance(event, Progress) and event.item == part_name(4):
            break
    gen.close()
    staging = tmp_path / ".joined.joining"
    if damage == "garbage journal":
        (staging / join_module.JOURNAL_NAME).write_bytes(b"{not json")
    else:
        (staging / "files" / "b" / "c.bin").unlink()
    out, events = join(built, [parts_dir], tmp_path / "joined")
    assert any(isinstance(e, Warned) and "discarding" in e.message for e in events)
    assert applied_items(events) == [part_name(i) for i in range(1, COUNT + 1)]
    assert files_of(out) == files_of(built.bundle)
