"""Content checks of a bundle's ``files/`` directory against its signed file records.

The verifier calls these after the metadata passed (signatures, expiry,
freshness): the ``FileRecord`` values are trusted, the directory is not.

- ``check_file_set``: the directory holds exactly the signed files (nothing
  missing, nothing extra, not even an empty directory or a dotfile), each of
  the signed length, and nothing that is not a plain file or directory.
- ``verify_contents``: the SHA-256 of every signed piece (the whole file, or
  each shard of a file larger than one shard), hashed in parallel.

Invariants:
- Nothing here follows a symbolic link: the tree is walked with ``lstat``, and
  files are opened component by component relative to directory descriptors
  with ``O_NOFOLLOW`` (the flags of ``appliance.safe_fs``); ``files_dir``
  itself must be a real directory.
- What is hashed is read from a descriptor whose ``fstat`` was checked
  (regular file, one link, the signed length), and a file that shrinks or grows
  while it is read is refused: there is no window between check and use.
- Memory and descriptors are bounded whatever the bundle size: one reusable
  buffer per worker thread (all together within ``BUFFER_BUDGET``), at most
  ``2 x workers`` tasks in flight (a task is one shard, or a batch of small
  files), and a file is open only while a worker is on it.

``appliance.bundle.site.install`` reuses the opening, hashing and scheduling helpers
so that install checks files the same way verify does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from appliance.bundle.format import (
    MAX_FILES,
    FileRecord,
    check_no_collisions,
    check_relpath,
    describe_mode,
    expected_shard_count,
)
from appliance.errors import (
    DigestMismatchError,
    FileSetError,
    InputError,
    MetadataError,
    SizeMismatchError,
    UnsafePathError,
)
from appliance.events import Event, Finished, Progress, Started, Throttle
from appliance.safe_fs import DIR_FLAGS, READ_FLAGS

MiB = 1024 * 1024
# Threads beyond this add no speed (no medium feeds 64 cores of SHA-NI) but add buffers.
MAX_WORKERS = 64
# All per-thread read buffers together stay within this, so peak RSS stays far
# below 150 MiB on any host; each buffer is still large enough for big reads.
BUFFER_BUDGET = 64 * MiB
MAX_BUFFER = 8 * MiB
MIN_BUFFER = 1 * MiB
MAX_SHOWN = 10  # names listed in one error message
BATCH_BYTES = 4 * MiB  # small files per task: up to this many bytes ...
BATCH_FILES = 64  # ... or this many files
PROGRESS_INTERVAL = 0.1  # seconds: at most ~10 progress events a second
# Stop walking a tree with far more entries than any bundle may list ("endless data").
MAX_WALK_ENTRIES = 2 * MAX_FILES


_REFETCH_HINT = (
    "The bundle was damaged or altered after signing; copy it again from the original medium."
)

A = TypeVar("A")
R = TypeVar("R")


# --- records ----------------------------------------------------------------------


def validate_records(records: Sequence[FileRecord]) -> None:
    """Refuse records no check could make safe: bad or colliding paths, duplicates,
    negative lengths, shard lists that do not cover the file exactly."""
    seen: set[str] = set()
    for record in records:
        check_relpath(record.path)
        if record.path in seen:
            raise UnsafePathError(f"path {record.path!r} is listed twice in the manifest")
        seen.add(record.path)
        if record.length < 0 or record.shard_size <= 0:
            raise MetadataError(
                f"{record.path!r}: length {record.length} and shard size {record.shard_size} "
                "must be non-negative and positive"
            )
        # A short shard list would leave the bytes after it unchecked.
        wanted = expected_shard_count(record.length, record.shard_size)
        if len(record.shards) != wanted:
            raise MetadataError(
                f"{record.path!r}: {len(record.shards)} shard digests for {record.length} bytes "
                f"in shards of {record.shard_size}, expected {wanted}"
            )
    check_no_collisions([r.path for r in records])


def resolve_workers(workers: int | None) -> int:
    """The thread count: ``workers`` or the CPU count, capped at ``MAX_WORKERS``."""
    if workers is None:
        workers = os.cpu_count() or 1
    elif workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    return min(workers, MAX_WORKERS)


def buffer_size(workers: int) -> int:
    """Bytes of each worker's read buffer: large reads, bounded total."""
    return max(MIN_BUFFER, min(MAX_BUFFER, BUFFER_BUDGET // workers))


# --- opening without following links ---------------------------------------------


def _lstat_at(dir_fd: int, name: str, shown: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError as exc:
        raise FileSetError(f"{shown} is missing", hint=_REFETCH_HINT) from exc
    except OSError as exc:
        raise FileSetError(f"{shown} cannot be read: {exc.strerror}") from exc


def open_root(path: Path) -> int:
    """A descriptor of directory ``path``, which must not itself be a symbolic link."""
    try:
        return os.open(path, DIR_FLAGS)
    except FileNotFoundError as exc:
        raise FileSetError(f"{path} does not exist", hint=_REFETCH_HINT) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            kind = describe_mode(os.lstat(path).st_mode)
            raise UnsafePathError(f"{path} is {kind}, expected a real directory") from exc
        raise FileSetError(f"{path} cannot be opened: {exc.strerror}") from exc


def _open_dir_at(dir_fd: int, name: str, shown: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise FileSetError(f"{shown} is missing", hint=_REFETCH_HINT) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            kind = describe_mode(_lstat_at(dir_fd, name, shown).st_mode)
            error = UnsafePathError if kind != "a regular file" else FileSetError
            raise error(f"{shown} is {kind}, expected a directory") from exc
        raise FileSetError(f"{shown} cannot be opened: {exc.strerror}") from exc


def open_dir_beneath(root_fd: int, relpath: str) -> int:
    """A descriptor of directory ``relpath`` under ``root_fd``, no component a link."""
    parts = relpath.split("/")
    dir_fd = root_fd
    for i, part in enumerate(parts):
        try:
            next_fd = _open_dir_at(dir_fd, part, "/".join(parts[: i + 1]))
        finally:
            if dir_fd != root_fd:
                os.close(dir_fd)
        dir_fd = next_fd
    return dir_fd


def open_record(root_fd: int, record: FileRecord) -> int:
    """Open ``record.path`` under ``root_fd`` for reading and check the open file.

    Every component is opened with ``O_NOFOLLOW``; the final name is ``lstat``-ed
    first (so no device or FIFO is ever opened) and the descriptor must be the
    same inode, a regular file with one link and exactly the signed length.
    """
    parent, _, name = record.path.rpartition("/")
    dir_fd = open_dir_beneath(root_fd, parent) if parent else root_fd
    try:
        before = _lstat_at(dir_fd, name, record.path)
        if not stat.S_ISREG(before.st_mode):
            raise UnsafePathError(
                f"{record.path} is {describe_mode(before.st_mode)}, expected a regular file"
            )
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{record.path} became a symbolic link") from exc
            raise FileSetError(f"{record.path} cannot be opened: {exc.strerror}") from exc
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
    try:
        check_open_file(fd, record, (before.st_dev, before.st_ino))
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_open_file(fd: int, record: FileRecord, inode: tuple[int, int] | None = None) -> None:
    """The open file must be a regular, singly linked file of the signed length."""
    st = os.fstat(fd)
    if inode is not None and (st.st_dev, st.st_ino) != inode:
        raise UnsafePathError(f"{record.path} was replaced while it was being opened")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(
            f"{record.path} is {describe_mode(st.st_mode)}, expected a regular file"
        )
    if st.st_nlink > 1:
        raise UnsafePathError(
            f"{record.path} has {st.st_nlink} hard links; bundle files must have exactly one"
        )
    if st.st_size != record.length:
        raise SizeMismatchError(
            f"{record.path}: signed length {record.length} bytes, found {st.st_size} bytes",
            hint=_REFETCH_HINT,
        )


# --- the file set ------------------------------------------------------------------


def _listing(label: str, names: list[str]) -> str:
    shown = ", ".join(names[:MAX_SHOWN])
    more = f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else ""
    return f"\n  {label} ({len(names)}): {shown}{more}"


def _walk(
    root_fd: int, files_dir: Path, records: Sequence[FileRecord]
) -> tuple[dict[str, int], list[str]]:
    """Sizes of the listed regular files found, and the extra entries; raises on
    anything that is not a regular file or directory. Directories are opened by
    descriptor with ``O_NOFOLLOW`` at each component, so no link is ever followed."""
    lengths = {r.path: r.length for r in records}
    needed_dirs = {
        r.path.rsplit("/", i)[0] for r in records for i in range(1, r.path.count("/") + 1)
    }
    found: dict[str, int] = {}
    extra: list[str] = []
    entries = 0
    pending = [""]  # directories still to list, relative, with a trailing "/"
    while pending:
        prefix = pending.pop()
        dir_fd = open_dir_beneath(root_fd, prefix[:-1]) if prefix else root_fd
        try:
            with os.scandir(dir_fd) as it:
                children = sorted(it, key=lambda e: e.name)
            infos = [entry.stat(follow_symlinks=False) for entry in children]
        except OSError as exc:
            raise FileSetError(f"{prefix or files_dir} cannot be listed: {exc.strerror}") from exc
        finally:
            if dir_fd != root_fd:
                os.close(dir_fd)
        if not children and prefix and prefix[:-1] not in needed_dirs:
            extra.append(prefix)  # an empty directory no record needs
        entries += len(children)
        if entries > MAX_WALK_ENTRIES:
            raise FileSetError(
                f"{files_dir} holds more than {MAX_WALK_ENTRIES} entries; "
                f"the manifest lists {len(records)} files"
            )
        subdirs: list[str] = []
        for entry, info in zip(children, infos, strict=True):
            rel = prefix + entry.name
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(rel + "/")
            elif not stat.S_ISREG(info.st_mode):
                raise UnsafePathError(
                    f"{rel} is {describe_mode(info.st_mode)}; a bundle holds regular files only",
                    hint=_REFETCH_HINT,
                )
            elif info.st_nlink > 1:
                raise UnsafePathError(
                    f"{rel} has {info.st_nlink} hard links; bundle files must have exactly one"
                )
            elif rel in lengths:
                found[rel] = info.st_size
            else:
                extra.append(rel)
        pending.extend(reversed(subdirs))  # a stack: pop them in name order
    return found, extra


def check_file_set(files_dir: Path, records: Sequence[FileRecord]) -> None:
    """The regular files under ``files_dir`` must be exactly the records' paths.

    Raises ``UnsafePathError`` for a symlink (wherever it points), device node,
    FIFO, socket or hard-linked file; ``FileSetError`` for missing and extra
    entries (extra files, dotfiles included, and directories no record needs);
    ``SizeMismatchError`` when a file's size differs from the signed length.
    Symbolic links are never followed.
    """
    validate_records(records)
    root_fd = open_root(files_dir)
    try:
        found, extra = _walk(root_fd, files_dir, records)
    finally:
        os.close(root_fd)

    missing = [r.path for r in records if r.path not in found]
    if missing or extra:
        raise FileSetError(
            f"{files_dir} does not match the signed manifest: "
            f"{len(missing)} missing, {len(extra)} extra"
            + (_listing("missing", missing) if missing else "")
            + (_listing("extra", sorted(extra)) if extra else ""),
            hint=_REFETCH_HINT,
        )
    wrong = [
        f"{r.path} (signed {r.length} bytes, found {found[r.path]})"
        for r in records
        if found[r.path] != r.length
    ]
    if wrong:
        raise SizeMismatchError(
            f"{len(wrong)} file(s) in {files_dir} differ in size from the signed manifest:"
            + _listing("size differs", wrong),
            hint=_REFETCH_HINT,
        )


# --- hashing pieces in parallel ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardMismatch:
    """A piece whose digest differs from the signed one."""

    file_index: int  # position in the manifest, for a stable report order
    path: str
    index: int  # 0-based shard index
    count: int  # shards of the file (1: the whole-file digest)
    offset: int
    length: int
    expected: str
    found: str

    def describe(self) -> str:
        where = self.path
        if self.count > 1:
            last = self.offset + self.length - 1
            where += f" shard {self.index + 1} of {self.count} (bytes {self.offset}-{last})"
        return f"{where}: expected sha256 {self.expected[:16]}..., found {self.found[:16]}..."


def digest_error(mismatches: list[ShardMismatch], *, stopped: bool) -> DigestMismatchError:
    """One error naming every mismatching piece (at most ``MAX_SHOWN``)."""
    ordered = sorted(mismatches, key=lambda m: (m.file_index, m.index))
    count = f"at least {len(ordered)}" if stopped else str(len(ordered))
    lines = "".join(f"\n  {m.describe()}" for m in ordered[:MAX_SHOWN])
    if len(ordered) > MAX_SHOWN:
        lines += f"\n  ... and {len(ordered) - MAX_SHOWN} more"
    return DigestMismatchError(
        f"{count} piece(s) do not match the signed SHA-256:{lines}", hint=_REFETCH_HINT
    )


Opener = Callable[[FileRecord], tuple[int, int]]
"""Opens a record's source (and, for install, its destination): ``(src_fd, dst_fd)``."""


class OpenFile:
    """One file being processed. Its descriptors are opened by the first worker that
    needs them (so opens run in parallel and only files being worked on hold
    descriptors), shared by its pieces, and closed after its last piece."""

    def __init__(self, index: int, record: FileRecord, opener: Opener) -> None:
        self.index = index
        self.record = record
        self.src_fd = -1
        self.dst_fd = -1
        self.remaining = len(record.shard_ranges())
        self._opener = opener
        self._opened = False
        self._lock = threading.Lock()

    def ensure_open(self) -> None:
        with self._lock:  # the other pieces of this file wait for the one open
            if not self._opened:
                self.src_fd, self.dst_fd = self._opener(self.record)
                self._opened = True

    def piece_done(self) -> bool:
        """Count one finished piece; True for the file's last one."""
        with self._lock:
            self.remaining -= 1
            return self.remaining == 0

    def close(self) -> None:
        with self._lock:
            fds, self.src_fd, self.dst_fd = (self.src_fd, self.dst_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


@dataclass(frozen=True, slots=True)
class Piece:
    """One digest to check: a shard of a large file, or a whole small file."""

    file: OpenFile
    index: int
    offset: int
    length: int
    expected: str

    @property
    def is_last(self) -> bool:
        return self.offset + self.length == self.file.record.length

    def mismatch(self, found: str) -> ShardMismatch | None:
        if found == self.expected:
            return None
        record = self.file.record
        return ShardMismatch(
            self.file.index,
            record.path,
            self.index,
            len(record.shard_ranges()),
            self.offset,
            self.length,
            self.expected,
            found,
        )


Batch = tuple[Piece, ...]


def plan_batches(
    records: Sequence[FileRecord],
    make_file: Callable[[int, FileRecord], OpenFile],
    registry: set[OpenFile],
) -> Iterator[Batch]:
    """The work, lazily, in manifest order: each shard of a multi-shard file alone;
    consecutive small files grouped up to ``BATCH_BYTES``/``BATCH_FILES`` so that a
    thread hand-off (tens of microseconds on a VM) is not paid per small file.
    ``make_file`` runs in the caller's thread; each file goes into ``registry`` so
    the caller can close what an aborted run left open."""
    group: list[Piece] = []
    group_bytes = 0
    for index, record in enumerate(records):
        opened = make_file(index, record)
        registry.add(opened)
        ranges = record.shard_ranges()
        if len(ranges) > 1:
            for shard, (offset, length, expected) in enumerate(ranges):
                yield (Piece(opened, shard, offset, length, expected),)
            continue
        offset, length, expected = ranges[0]
        group.append(Piece(opened, 0, offset, length, expected))
        group_bytes += length
        if group_bytes >= BATCH_BYTES or len(group) >= BATCH_FILES:
            yield tuple(group)
            group, group_bytes = [], 0
    if group:
        yield tuple(group)


_local = threading.local()


def thread_buffer(size: int) -> memoryview:
    """This thread's reusable read buffer."""
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = memoryview(bytearray(size))
        _local.buffer = buffer
    return buffer


def hash_range(
    fd: int,
    path: str,
    offset: int,
    length: int,
    buffer: memoryview,
    sink: Callable[[memoryview, int], None] | None = None,
) -> str:
    """SHA-256 of ``length`` bytes at ``offset``; each chunk hashed is then handed to
    ``sink`` (with its file offset) unchanged. A file that ends early is refused."""
    digest = hashlib.sha256()
    position, end = offset, offset + length
    while position < end:
        view = buffer[: min(len(buffer), end - position)]
        try:
            n = os.preadv(fd, [view], position)
        except OSError as exc:
            raise FileSetError(f"{path} cannot be read: {exc.strerror}") from exc
        if n == 0:
            raise SizeMismatchError(
                f"{path}: the file ends at byte {position}, before the signed end of the "
                f"piece at byte {end} (it shrank while being read)",
                hint=_REFETCH_HINT,
            )
        chunk = view[:n]
        digest.update(chunk)
        if sink is not None:
            sink(chunk, position)
        position += n
    return digest.hexdigest()


def refuse_growth(fd: int, record: FileRecord) -> None:
    """Read one byte past the signed end: a file longer than signed is refused
    without ever reading the excess."""
    try:
        extra = os.pread(fd, 1, record.length)
    except OSError as exc:
        raise FileSetError(f"{record.path} cannot be read: {exc.strerror}") from exc
    if extra:
        raise SizeMismatchError(
            f"{record.path}: signed length {record.length} bytes, but the file is longer",
            hint=_REFETCH_HINT,
        )


def run_bounded(
    fn: Callable[[A], R], items: Iterable[A], workers: int
) -> Generator[tuple[A, R], None, None]:
    """Run ``fn`` over ``items`` in a thread pool, yielding ``(item, result)`` as they
    complete. At most ``2 x workers`` items are in flight, so items (and whatever
    they hold open) are produced lazily. A task's exception is raised here; on any
    exit the pending tasks are cancelled and the running ones awaited."""
    limit = 2 * workers
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="appliance-hash") as pool:
        pending: dict[Future[R], A] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(fn, item)] = item
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = pending.pop(future)
                    yield item, future.result()
        finally:
            for future in pending:
                future.cancel()


def _open_source(root_fd: int, record: FileRecord) -> tuple[int, int]:
    return open_record(root_fd, record), -1


def _verify_batch(batch: Batch, buffer_bytes: int) -> list[tuple[bool, ShardMismatch | None]]:
    """Hash each piece; for each, (was it its file's last piece, mismatch or None)."""
    buffer = thread_buffer(buffer_bytes)
    results: list[tuple[bool, ShardMismatch | None]] = []
    for piece in batch:
        opened = piece.file
        opened.ensure_open()
        record = opened.record
        found = hash_range(opened.src_fd, record.path, piece.offset, piece.length, buffer)
        if piece.is_last:
            refuse_growth(opened.src_fd, record)
        last = opened.piece_done()
        if last:
            opened.close()
        results.append((last, piece.mismatch(found)))
    return results


def verify_contents(
    files_dir: Path, records: Sequence[FileRecord], *, workers: int | None = None
) -> Generator[Event, None, None]:
    """Check the SHA-256 of every signed piece of every file, in parallel.

    Yields ``Started``, throttled ``Progress`` and ``Finished``. Raises
    ``DigestMismatchError`` naming up to ``MAX_SHOWN`` mismatching pieces (file,
    shard and byte range), ``SizeMismatchError``, ``UnsafePathError`` or
    ``FileSetError`` for files that are not as signed or cannot be opened.
    """
    validate_records(records)
    threads = resolve_workers(workers)
    total_bytes = sum(r.length for r in records)
    yield Started("verify", total_bytes=total_bytes, total_items=len(records))
    root_fd = open_root(files_dir)
    registry: set[OpenFile] = set()
    mismatches: list[ShardMismatch] = []
    done_bytes = done_files = 0
    throttle = Throttle(PROGRESS_INTERVAL)
    try:
        opener = partial(_open_source, root_fd)
        batches = plan_batches(records, lambda i, r: OpenFile(i, r, opener), registry)
        task = partial(_verify_batch, buffer_bytes=buffer_size(threads))
        runner = run_bounded(task, batches, threads)
        try:
            for batch, results in runner:
                for piece, (file_done, mismatch) in zip(batch, results, strict=True):
                    done_bytes += piece.length
                    if file_done:
                        done_files += 1
                        registry.discard(piece.file)
                    if mismatch is not None:
                        mismatches.append(mismatch)
                if len(mismatches) >= MAX_SHOWN:
                    break  # enough to name; do not hash a ruined bundle to the end
                if throttle.due():
                    yield Progress(
                        "verify",
                        done_bytes,
                        total_bytes,
                        done_files,
                        len(records),
                        batch[-1].file.record.path,
                    )
        finally:
            runner.close()
    finally:
        for opened in registry:
            opened.close()
        os.close(root_fd)
    if mismatches:
        raise digest_error(mismatches, stopped=done_files < len(records))
    yield Progress("verify", done_bytes, total_bytes, done_files, len(records))
    yield Finished("verify", f"{len(records)} files, {total_bytes} bytes match the signed digests")
