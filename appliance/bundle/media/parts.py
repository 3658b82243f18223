"""What split, check and join share: part names, the signed layout, the content stream.

- ``PART_NAME``: ``<name>-<version>.part<i>-of-<n>``, the only names a part set has;
  split writes ``.<part name>.partial`` (``TEMP_SUFFIX``) and renames it when done.
- ``layout_parts``: the signed parts, after checking they tile the content stream
  (the bytes of every file under ``files/`` in manifest order) exactly.
- ``stream_segments`` / ``describe_part``: which file bytes a stream range holds, to
  name the files a damaged part would have carried.
- ``copy_metadata``: the (tiny) ``metadata/`` tree copied by descriptor, never
  following a link, bounded by ``MAX_METADATA_TREE_BYTES``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from appliance.bundle.format import (
    FILES_DIR,
    MAX_VERSION,
    FileRecord,
    MediaPart,
    check_no_collisions,
    check_relpath,
)
from appliance.bundle.payload import MediaLayout
from appliance.errors import InputError, MetadataError, UnsafePathError
from appliance.safe_fs import CREATE_FLAGS, DIR_FLAGS, LINK_ERRNOS, open_regular, write_all

CHUNK = 4 * 1024 * 1024  # split/join buffer: large reads, flat memory
PROGRESS_EVERY = 64 * 1024 * 1024
MAX_METADATA_TREE_BYTES = 256 * 1024 * 1024  # targets.json + root history, with room
MAX_LISTED_FILES = 20  # files named per damaged part before "and N more"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # payload.Name
PART_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<version>[0-9]+)"
    r"\.part(?P<index>[0-9]+)-of-(?P<count>[0-9]+)\Z"  # \Z: "$" also matches before a final "\n"
)
TEMP_SUFFIX = ".partial"  # split writes ".<part name>.partial", then renames


def stream_segments(
    records: Sequence[FileRecord], offset: int, length: int
) -> list[tuple[str, int, int]]:
    """The (path, offset in file, length) slices of files that the stream range covers.

    Files of zero length hold no stream bytes and never appear.
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    end = offset + length
    segments: list[tuple[str, int, int]] = []
    if length == 0:
        return segments
    start = 0
    for record in records:
        if start >= end:
            break
        stop = start + record.length
        if stop > offset and record.length:
            lo, hi = max(start, offset), min(stop, end)
            segments.append((record.path, lo - start, hi - lo))
        start = stop
    return segments


def layout_parts(layout: MediaLayout, records: Sequence[FileRecord]) -> list[MediaPart]:
    """The signed parts, after checking they tile the content stream exactly."""
    parts = [MediaPart(index, off, length, sha) for index, off, length, sha in layout.parts]
    total = sum(record.length for record in records)
    if not parts:
        raise MetadataError("the signed media layout lists no parts")
    expected = 0
    for number, part in enumerate(parts, 1):
        last = number == len(parts)
        if part.index != number or part.offset != expected:
            raise MetadataError(
                f"signed media part {part.index} is out of sequence "
                f"(expected part {number} at stream offset {expected}, found offset {part.offset})"
            )
        full = part.length == layout.part_size
        if not (
            full or (last and 0 < part.length < layout.part_size) or (part.length == 0 == total)
        ):
            raise MetadataError(
                f"signed media part {part.index} has {part.length} bytes; with a part size of "
                f"{layout.part_size} only the last part may be shorter"
            )
        expected += part.length
    if expected != total:
        raise MetadataError(
            f"the signed media parts cover {expected} bytes but the signed files add up "
            f"to {total}: the layout does not belong to this manifest"
        )
    return parts


def check_records(records: Sequence[FileRecord]) -> None:
    paths = [check_relpath(record.path) for record in records]
    if len(set(paths)) != len(paths):
        raise MetadataError("the manifest lists the same path more than once")
    check_no_collisions(paths)


def check_identity(name: str, version: int) -> None:
    # Both end up in file names: refuse anything that is not a plain payload name.
    if not _NAME.fullmatch(name):
        raise InputError(f"bundle name {name!r} is not a valid bundle name")
    if not 0 <= version <= MAX_VERSION:
        raise InputError(f"bundle version {version} is out of range")


def describe_part(records: Sequence[FileRecord], part: MediaPart) -> str:
    lengths = {record.path: record.length for record in records}
    segments = stream_segments(records, part.offset, part.length)
    shown = []
    for path, offset, length in segments[:MAX_LISTED_FILES]:
        if offset == 0 and length == lengths[path]:
            shown.append(f"{FILES_DIR}/{path} (whole file)")
        else:
            shown.append(
                f"{FILES_DIR}/{path} (bytes {offset}-{offset + length - 1} of {lengths[path]})"
            )
    if len(segments) > MAX_LISTED_FILES:
        shown.append(f"and {len(segments) - MAX_LISTED_FILES} more files")
    return ", ".join(shown) if shown else "no file data"


# --- the metadata copy (split and join) ---------------------------------------------


def _copy_tree(src_fd: int, dst_fd: int, where: str, budget: list[int]) -> None:
    """Copy a directory's plain files and subdirectories byte for byte (fd to fd)."""
    for name in sorted(os.listdir(src_fd)):
        check_relpath(name)  # the medium's names obey the bundle's path rules too
        info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(name, 0o755, dir_fd=dst_fd)
            sub_src = os.open(name, DIR_FLAGS, dir_fd=src_fd)
            try:
                sub_dst = os.open(name, DIR_FLAGS, dir_fd=dst_fd)
                try:
                    _copy_tree(sub_src, sub_dst, f"{where}/{name}", budget)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
            continue
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"{where}/{name} is not a plain file or directory")
        try:
            reader = open_regular(name, dir_fd=src_fd)
        except OSError as exc:
            if exc.errno in LINK_ERRNOS:
                raise UnsafePathError(f"{where}/{name} is not a plain file") from exc
            raise
        try:
            writer = os.open(name, CREATE_FLAGS, 0o644, dir_fd=dst_fd)
            try:
                while data := os.read(reader, 1024 * 1024):
                    budget[0] -= len(data)
                    if budget[0] < 0:
                        raise MetadataError(
                            f"{where} holds more than {MAX_METADATA_TREE_BYTES} bytes; "
                            "bundle metadata is never that large"
                        )
                    write_all(writer, memoryview(data))
                os.fsync(writer)
            finally:
                os.close(writer)
        finally:
            os.close(reader)
    os.fsync(dst_fd)


def copy_metadata(src: Path, dst_parent_fd: int, dst_name: str) -> None:
    """Copy the directory ``src`` to ``dst_parent_fd/dst_name`` (which must not exist)."""
    try:
        src_fd = os.open(src, DIR_FLAGS)
    except FileNotFoundError:
        raise InputError(f"{src} does not exist: no bundle metadata to copy") from None
    except OSError as exc:
        raise InputError(f"{src} is not a plain directory ({exc.strerror})") from exc
    try:
        os.mkdir(dst_name, 0o755, dir_fd=dst_parent_fd)
        dst_fd = os.open(dst_name, DIR_FLAGS, dir_fd=dst_parent_fd)
        try:
            _copy_tree(src_fd, dst_fd, str(src), [MAX_METADATA_TREE_BYTES])
        finally:
            os.close(dst_fd)
        os.fsync(dst_parent_fd)
    finally:
        os.close(src_fd)


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
