"""Hash while copying: every byte is read once and feeds every digest that needs it.

``copy_and_hash`` copies one file and returns its ``FileRecord`` (whole-file
SHA-256 and shard digests); a ``PartHasher`` fed the same bytes, file after
file in manifest order, yields the media part digests. Used by the build
(connected side). Reads go through one reusable buffer: memory stays flat
whatever the file size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from appliance.bundle.format import SHARD_SIZE, FileRecord, MediaPart
from appliance.errors import BundleBuildError
from appliance.input_files import open_input

CHUNK = 4 * 1024 * 1024


class PartHasher:
    """Digests of fixed-size parts of a byte stream fed in order."""

    def __init__(self, part_size: int) -> None:
        if part_size <= 0:
            raise ValueError("part size must be positive")
        self.part_size = part_size
        self._offset = 0  # stream bytes fed so far
        self._start = 0  # offset where the current part began
        self._current = hashlib.sha256()
        self._parts: list[MediaPart] = []

    def feed(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        while view:
            room = self._start + self.part_size - self._offset
            piece = view[:room]
            self._current.update(piece)
            self._offset += len(piece)
            view = view[len(piece) :]
            if self._offset - self._start == self.part_size:
                self._close()

    def _close(self) -> None:
        self._parts.append(
            MediaPart(
                len(self._parts) + 1,
                self._start,
                self._offset - self._start,
                self._current.hexdigest(),
            )
        )
        self._start = self._offset
        self._current = hashlib.sha256()

    def finish(self) -> list[MediaPart]:
        if self._offset > self._start or not self._parts:
            self._close()  # the last, shorter part (or one empty part for an empty stream)
        return list(self._parts)


class _ShardHasher:
    def __init__(self, shard_size: int) -> None:
        self.shard_size = shard_size
        self.digests: list[str] = []
        self._current = hashlib.sha256()
        self._filled = 0

    def feed(self, view: memoryview) -> None:
        while view:
            piece = view[: self.shard_size - self._filled]
            self._current.update(piece)
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == self.shard_size:
                self.digests.append(self._current.hexdigest())
                self._current = hashlib.sha256()
                self._filled = 0

    def finish(self) -> list[str]:
        if self._filled:
            self.digests.append(self._current.hexdigest())
        return self.digests


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def copy_and_hash(
    src: Path,
    dst: Path,
    relpath: str,
    *,
    shard_size: int = SHARD_SIZE,
    parts: PartHasher | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> FileRecord:
    """Copy ``src`` to a new file ``dst`` (must not exist), hashing the bytes written."""
    whole = hashlib.sha256()
    shards = _ShardHasher(shard_size)
    buffer = bytearray(CHUNK)
    length = 0
    # A source swapped for a FIFO or device after it was listed is refused, never read.
    source = open_input(src, f"source file for {relpath}", error=BundleBuildError)
    with open(source, "rb", buffering=0) as reader:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with open(fd, "wb", buffering=0) as writer:
            while n := reader.readinto(buffer):
                view = memoryview(buffer)[:n]
                whole.update(view)
                shards.feed(view)
                if parts is not None:
                    parts.feed(view)
                _write_all(writer.fileno(), view)
                length += n
                if on_bytes is not None:
                    on_bytes(n)
            os.fsync(writer.fileno())
    digests = shards.finish()
    return FileRecord(
        path=relpath,
        length=length,
        sha256=whole.hexdigest(),
        shard_size=shard_size,
        shards=tuple(digests) if len(digests) > 1 else (),
    )
