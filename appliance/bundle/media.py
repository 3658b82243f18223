"""Media sets: cut a bundle's content stream into signed parts, check them, join them.

Job
    ``split_bundle`` writes a bundle as numbered part files plus a copy of its
    (tiny) ``metadata/``, so it fits removable media with file-size limits.
    ``check_parts`` finds the parts of one set across several directories (one
    per medium, any order) and names every missing, damaged, stray or foreign
    part at once. ``join_parts`` rebuilds the bundle directory from a set.

The content stream is the bytes of every file under ``files/`` concatenated in
manifest order: the order of ``records`` as given, which must be the order the
build copied and hashed them. Part boundaries and digests (``Payload.media``)
are computed at build time and signed, so signers approve the part digests.

Invariants
- A part is trusted only through its signed SHA-256. Split hashes each part as
  it writes it and refuses to produce one that differs (a damaged source never
  yields a part set that looks fine). Join checks the whole set first, then
  hashes each part again while applying it: the bytes used are the bytes hashed.
- Split never leaves a complete-looking bad part: a part is written under a
  dot-name and renamed only once its digest matched; on failure it removes
  everything it wrote.
- Join writes only inside ``.<out>.joining`` next to ``out_dir`` and, last,
  renames that to ``out_dir``. Every record path passes ``check_relpath``,
  files are created with O_EXCL|O_NOFOLLOW and directories are walked by file
  descriptor without following links, so nothing lands outside the staging dir.
- Join is resumable: a journal in the staging dir lists the parts fully applied
  (data fsynced) with their digests; a rerun continues after them. A journal or
  staging tree that does not match the current layout is discarded.
- Memory stays flat: data flows through one reusable buffer (per thread).
- A joined directory is not trusted by itself: the verifier checks it against
  the signed manifest like any other bundle before anything is installed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Collection, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.format import (
    FILES_DIR,
    MAX_VERSION,
    METADATA_DIR,
    FileRecord,
    MediaPart,
    check_no_collisions,
    check_relpath,
)
from appliance.bundle.payload import MediaLayout
from appliance.errors import (
    DigestMismatchError,
    FileSetError,
    InputError,
    MediaPartError,
    MetadataError,
    SizeMismatchError,
    UnsafePathError,
)
from appliance.events import Event, Finished, Progress, Started, Warned
from appliance.input_files import input_directory, parse_json

CHUNK = 4 * 1024 * 1024  # split/join buffer: large reads, flat memory
CHECK_CHUNK = 1024 * 1024  # per checking thread
MAX_CHECK_THREADS = 4  # parts often share one medium: more readers only add seeks
PROGRESS_EVERY = 64 * 1024 * 1024
MAX_METADATA_TREE_BYTES = 256 * 1024 * 1024  # targets.json + root history, with room
JOURNAL_NAME = "join-journal.json"
JOURNAL_FORMAT = 1
MAX_JOURNAL_BYTES = 16 * 1024 * 1024
MAX_LISTED_FILES = 20  # files named per damaged part before "and N more"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # payload.Name
_PART_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<version>[0-9]+)"
    r"\.part(?P<index>[0-9]+)-of-(?P<count>[0-9]+)\Z"  # \Z: "$" also matches before a final "\n"
)
_TEMP_SUFFIX = ".partial"  # split writes ".<part name>.partial", then renames

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a file's name must not hang; it is
# refused right after by the S_ISREG check (and is a no-op for regular files).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)

_REBUILD_HINT = (
    "The part digests are signed at build time, so a bundle can only be split at "
    "its signed layout. For another part size, rebuild and re-sign the bundle: "
    "`appliance bundle build ... --part-size SIZE`."
)


# --- pure helpers ------------------------------------------------------------------


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


def _layout_parts(layout: MediaLayout, records: Sequence[FileRecord]) -> list[MediaPart]:
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


def _check_records(records: Sequence[FileRecord]) -> None:
    paths = [check_relpath(record.path) for record in records]
    if len(set(paths)) != len(paths):
        raise MetadataError("the manifest lists the same path more than once")
    check_no_collisions(paths)


def _check_identity(name: str, version: int) -> None:
    # Both end up in file names: refuse anything that is not a plain payload name.
    if not _NAME.fullmatch(name):
        raise InputError(f"bundle name {name!r} is not a valid bundle name")
    if not 0 <= version <= MAX_VERSION:
        raise InputError(f"bundle version {version} is out of range")


def _describe(records: Sequence[FileRecord], part: MediaPart) -> str:
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


# --- descriptor-based file access (never follows links) -----------------------------


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _open_dirs(root_fd: int, components: Sequence[str]) -> int | None:
    """Open root/components... without following links; None if one is missing."""
    fd = os.dup(root_fd)
    try:
        for component in components:
            try:
                child = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_dirs(root_fd: int, components: Sequence[str]) -> int:
    """Open root/components..., creating missing directories; never follows links."""
    fd = os.dup(root_fd)
    try:
        for component in components:
            try:
                os.mkdir(component, 0o755, dir_fd=fd)
                os.fsync(fd)  # the new entry must survive a crash the journal outlives
            except FileExistsError:
                pass
            child = os.open(component, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat_in(root_fd: int, relpath: str) -> os.stat_result | None:
    *dirs, leaf = relpath.split("/")
    dir_fd = _open_dirs(root_fd, dirs)
    if dir_fd is None:
        return None
    try:
        return os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dir_fd)


def _open_regular(dir_fd: int, name: str) -> int:
    """Open a regular file for reading; links and special files are refused (OSError)."""
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EMLINK, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def _open_source(files_fd: int, relpath: str) -> int:
    *dirs, leaf = relpath.split("/")
    try:
        dir_fd = _open_dirs(files_fd, dirs)
        if dir_fd is None:
            raise FileNotFoundError(relpath)
        try:
            return _open_regular(dir_fd, leaf)
        finally:
            os.close(dir_fd)
    except FileNotFoundError:
        raise FileSetError(
            f"{FILES_DIR}/{relpath} is listed in the signed manifest but missing from the bundle"
        ) from None
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise UnsafePathError(
                f"{FILES_DIR}/{relpath} is a link, special file or goes through one; "
                "a bundle holds only plain files"
            ) from exc
        raise


def _copy_tree(src_fd: int, dst_fd: int, where: str, budget: list[int]) -> None:
    """Copy a directory's plain files and subdirectories byte for byte (fd to fd)."""
    for name in sorted(os.listdir(src_fd)):
        check_relpath(name)  # the medium's names obey the bundle's path rules too
        info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(name, 0o755, dir_fd=dst_fd)
            sub_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
            try:
                sub_dst = os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
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
            reader = _open_regular(src_fd, name)
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise UnsafePathError(f"{where}/{name} is not a plain file") from exc
            raise
        try:
            writer = os.open(name, _CREATE_FLAGS, 0o644, dir_fd=dst_fd)
            try:
                while data := os.read(reader, 1024 * 1024):
                    budget[0] -= len(data)
                    if budget[0] < 0:
                        raise MetadataError(
                            f"{where} holds more than {MAX_METADATA_TREE_BYTES} bytes; "
                            "bundle metadata is never that large"
                        )
                    _write_all(writer, memoryview(data))
                os.fsync(writer)
            finally:
                os.close(writer)
        finally:
            os.close(reader)
    os.fsync(dst_fd)


def _copy_metadata(src: Path, dst_parent_fd: int, dst_name: str) -> None:
    """Copy the directory ``src`` to ``dst_parent_fd/dst_name`` (which must not exist)."""
    try:
        src_fd = os.open(src, _DIR_FLAGS)
    except FileNotFoundError:
        raise InputError(f"{src} does not exist: no bundle metadata to copy") from None
    except OSError as exc:
        raise InputError(f"{src} is not a plain directory ({exc.strerror})") from exc
    try:
        os.mkdir(dst_name, 0o755, dir_fd=dst_parent_fd)
        dst_fd = os.open(dst_name, _DIR_FLAGS, dir_fd=dst_parent_fd)
        try:
            _copy_tree(src_fd, dst_fd, str(src), [MAX_METADATA_TREE_BYTES])
        finally:
            os.close(dst_fd)
        os.fsync(dst_parent_fd)
    finally:
        os.close(src_fd)


# --- split -------------------------------------------------------------------------


def _read_stream(
    files_fd: int, records: Sequence[FileRecord], buffer: bytearray
) -> Iterator[memoryview]:
    """The content stream as views of ``buffer`` (each valid until the next one)."""
    view = memoryview(buffer)
    for record in records:
        fd = _open_source(files_fd, record.path)
        try:
            size = os.fstat(fd).st_size
            if size != record.length:
                raise SizeMismatchError(
                    f"{FILES_DIR}/{record.path} has {size} bytes, the signed manifest says "
                    f"{record.length}",
                    hint="The source bundle is damaged: verify it, then rebuild or re-copy it.",
                )
            remaining = record.length
            while remaining:
                n = os.readv(fd, [view[: min(len(view), remaining)]])
                if n == 0:
                    raise SizeMismatchError(f"{FILES_DIR}/{record.path} shrank while being read")
                remaining -= n
                yield view[:n]
            if os.read(fd, 1):
                raise SizeMismatchError(f"{FILES_DIR}/{record.path} grew while being read")
        finally:
            os.close(fd)


def _existing_parts(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(
        name
        for name in os.listdir(directory)
        if _PART_NAME.match(name)
        or (
            name.startswith(".")
            and name.endswith(_TEMP_SUFFIX)
            and _PART_NAME.match(name[1 : -len(_TEMP_SUFFIX)])
        )
    )


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def split_bundle(
    bundle_dir: Path,
    records: Sequence[FileRecord],
    layout: MediaLayout,
    name: str,
    version: int,
    out_dir: Path,
    *,
    part_size: int | None = None,
) -> Generator[Event, None, list[Path]]:
    """Write ``out_dir/metadata/`` and one file per signed part; return the part paths."""
    if part_size is not None and part_size != layout.part_size:
        raise InputError(
            f"this bundle was built with parts of {layout.part_size} bytes; "
            f"a part size of {part_size} was asked for",
            hint=_REBUILD_HINT,
        )
    _check_identity(name, version)
    _check_records(records)
    parts = _layout_parts(layout, records)
    count = len(parts)
    total = sum(record.length for record in records)
    names = [part.filename(name, version, count) for part in parts]

    source, target = bundle_dir.resolve(), out_dir.resolve()
    if target == source or target.is_relative_to(source):
        raise InputError(
            f"{out_dir} is inside the bundle {bundle_dir}",
            hint="Write the parts to a directory outside the bundle (e.g. on the medium).",
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory")
    if found := _existing_parts(out_dir):
        raise InputError(
            f"{out_dir} already holds part files ({', '.join(found[:3])}...)",
            hint="Split into an empty directory, or remove the old parts first.",
        )
    if os.path.lexists(out_dir / METADATA_DIR):
        raise InputError(
            f"{out_dir / METADATA_DIR} already exists",
            hint="Split into an empty directory so the metadata cannot mix with another bundle's.",
        )
    if _free_bytes(out_dir) < total:
        raise InputError(f"not enough free space in {out_dir}: {total} bytes are needed")

    bundle_fd = os.open(bundle_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    created_out = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        out_fd = os.open(out_dir, _DIR_FLAGS)
    except BaseException:
        os.close(bundle_fd)
        raise
    written: list[str] = []
    temp: str | None = None
    metadata_started = False
    files_fd: int | None = None
    chunks: Iterator[memoryview] = iter(())
    try:
        yield Started("split", total_bytes=total, total_items=count)
        files_fd = _open_dirs(bundle_fd, [FILES_DIR])
        if files_fd is None:
            if records:
                raise FileSetError(f"{bundle_dir} has no {FILES_DIR}/ directory")
            files_fd = os.dup(bundle_fd)  # nothing will be read from it
        # Checked absent above, so whatever is there after a failure is ours.
        metadata_started = True
        _copy_metadata(bundle_dir / METADATA_DIR, out_fd, METADATA_DIR)

        buffer = bytearray(CHUNK)
        chunks = _read_stream(files_fd, records, buffer)
        pending = memoryview(b"")
        done = 0
        next_report = PROGRESS_EVERY
        for part, filename in zip(parts, names, strict=True):
            temp = f".{filename}{_TEMP_SUFFIX}"
            fd = os.open(temp, _CREATE_FLAGS, 0o644, dir_fd=out_fd)
            digest = hashlib.sha256()
            try:
                need = part.length
                while need:
                    if not pending:
                        pending = next(chunks, memoryview(b""))
                        if not pending:
                            raise MetadataError("the content stream ended before the last part")
                    piece = pending[:need]
                    digest.update(piece)
                    _write_all(fd, piece)
                    pending = pending[len(piece) :]
                    need -= len(piece)
                    done += len(piece)
                    if done >= next_report:
                        next_report = done + PROGRESS_EVERY
                        yield Progress("split", done, total, len(written), count)
                os.fsync(fd)
            finally:
                os.close(fd)
            if digest.hexdigest() != part.sha256:
                raise DigestMismatchError(
                    f"part {part.index} ({filename}) does not match its signed digest: the "
                    f"source bundle is damaged in {_describe(records, part)}",
                    hint="No parts were kept. Verify the bundle (`appliance bundle verify`), "
                    "re-copy or rebuild it, then split again.",
                )
            os.rename(temp, filename, src_dir_fd=out_fd, dst_dir_fd=out_fd)
            temp = None
            written.append(filename)
            os.fsync(out_fd)
            yield Progress("split", done, total, len(written), count, item=filename)
        # Also opens trailing empty files, so a missing one is caught here too.
        if pending or any(True for _ in chunks):
            raise MetadataError("the content stream is longer than the signed parts")
    except BaseException:
        # All or nothing: the parts already written are good, but a half set next
        # to a failure message invites copying it; remove everything we created.
        if temp is not None:
            _unlink_quiet(out_fd, temp)
        for filename in written:
            _unlink_quiet(out_fd, filename)
        if metadata_started:
            shutil.rmtree(out_dir / METADATA_DIR, ignore_errors=True)
        if created_out:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    finally:
        if isinstance(chunks, Generator):
            chunks.close()
        if files_fd is not None:
            os.close(files_fd)
        os.close(out_fd)
        os.close(bundle_fd)
    yield Finished("split", f"wrote {count} parts of {name} {version} to {out_dir}")
    return [out_dir / filename for filename in written]


def _unlink_quiet(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


# --- check -------------------------------------------------------------------------


@dataclass
class _Candidate:
    path: Path
    size: int
    digest: str | None = None
    error: str | None = None


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _hash_file(path: Path, counter: _Counter, cancel: threading.Event) -> tuple[str, int]:
    fd = os.open(path, _READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EMLINK, "not a regular file")
        os.set_blocking(fd, True)
        buffer = bytearray(CHECK_CHUNK)
        view = memoryview(buffer)
        digest = hashlib.sha256()
        length = 0
        while n := os.readv(fd, [view]):
            if cancel.is_set():
                raise OSError(errno.ECANCELED, "cancelled")
            digest.update(view[:n])
            length += n
            counter.add(n)
        return digest.hexdigest(), length
    finally:
        os.close(fd)


def check_parts(
    parts_dirs: Sequence[Path],
    layout: MediaLayout,
    name: str,
    version: int,
    records: Sequence[FileRecord],
    *,
    only: Collection[int] | None = None,
) -> Generator[Event, None, dict[int, Path]]:
    """Find and check the parts of ``name``-``version`` in ``parts_dirs``; index -> path.

    Collects every problem before raising one ``MediaPartError`` that lists them
    all. ``only`` limits which parts must be present and are hashed (join uses it
    to skip parts a resumed join already applied); stray and foreign files are
    reported either way.
    """
    _check_identity(name, version)
    parts = _layout_parts(layout, records)
    count = len(parts)
    by_index = {part.index: part for part in parts}
    wanted = set(by_index) if only is None else set(only) & set(by_index)
    expected = {part.filename(name, version, count): part.index for part in parts}
    first, last = parts[0].filename(name, version, count), parts[-1].filename(name, version, count)

    problems: list[str] = []
    found: dict[int, list[_Candidate]] = {}
    seen: set[tuple[int, int]] = set()
    for directory in parts_dirs:
        input_directory(directory, "parts directory")
        try:
            entries = sorted(os.listdir(directory))
        except OSError as exc:
            raise InputError(
                f"parts directory {directory} cannot be listed: {exc.strerror or exc}"
            ) from exc
        for entry in entries:
            path = directory / entry
            match = _PART_NAME.match(entry)
            if match is None:
                if entry.startswith(".") and entry.endswith(_TEMP_SUFFIX):
                    yield Warned("check-parts", f"ignoring {path}: an unfinished part")
                continue
            if (match["name"], int(match["version"])) != (name, version):
                problems.append(
                    f"{path} belongs to bundle {match['name']} version {match['version']}, "
                    f"not {name} version {version}: move it away from this set"
                )
                continue
            index = expected.get(entry)
            if index is None:
                problems.append(
                    f"{path} is named like a part of {name} {version}, but this set has "
                    f"{count} parts ({first} to {last}): remove it"
                )
                continue
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                problems.append(
                    f"part {index}: {path} is a link, directory or special file; "
                    "replace it with a copy of the part"
                )
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue  # the same file reached twice (a directory given twice)
            seen.add((info.st_dev, info.st_ino))
            if index in wanted:
                found.setdefault(index, []).append(_Candidate(path, info.st_size))

    for index in sorted(wanted - set(found)):
        problems.append(
            f"part {index} ({by_index[index].filename(name, version, count)}) is missing: "
            "copy it from its medium"
        )

    tasks = [
        candidate
        for index, candidates in found.items()
        for candidate in candidates
        if candidate.size == by_index[index].length
    ]
    total = sum(candidate.size for candidate in tasks)
    yield Started("check-parts", total_bytes=total, total_items=len(tasks))
    counter = _Counter()
    cancel = threading.Event()
    workers = max(1, min(MAX_CHECK_THREADS, os.cpu_count() or 1, len(tasks)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-part") as pool:
        futures: dict[Future[tuple[str, int]], _Candidate] = {
            pool.submit(_hash_file, candidate.path, counter, cancel): candidate
            for candidate in tasks
        }
        pending = set(futures)
        checked = 0
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    candidate = futures[future]
                    checked += 1
                    try:
                        candidate.digest, length = future.result()
                    except OSError as exc:
                        candidate.error = f"cannot be read ({exc.strerror})"
                        continue
                    if length != candidate.size:
                        candidate.error = "changed while being read (still being copied?)"
                yield Progress("check-parts", counter.value, total, checked, len(tasks))
        except BaseException:
            cancel.set()  # the consumer gave up: stop the readers quickly
            raise

    mapping: dict[int, Path] = {}
    for index in sorted(found):
        part = by_index[index]
        candidates = found[index]

        def status(candidate: _Candidate, part: MediaPart = part) -> str | None:
            if candidate.error is not None:
                return candidate.error
            if candidate.size != part.length:
                return (
                    f"has {candidate.size} bytes, expected {part.length} "
                    "(truncated or extended: copy it again)"
                )
            if candidate.digest != part.sha256:
                return "does not match its signed SHA-256 (damaged: copy it again)"
            return None

        if len({(c.size, c.digest, c.error) for c in candidates}) > 1:
            details = "; ".join(
                f"{c.path} ({status(c) or 'matches the signed digest'})" for c in candidates
            )
            problems.append(
                f"part {index} was found in {len(candidates)} places with different "
                f"content: {details}. Keep only a good copy"
            )
            continue
        candidate = candidates[0]
        problem = status(candidate)
        if problem is None:
            mapping[index] = candidate.path
        elif candidate.error is None and candidate.size == part.length:
            problems.append(
                f"part {index} ({candidate.path}) is damaged: its SHA-256 does not match "
                f"the signed digest; it holds {_describe(records, part)}"
            )
        else:
            problems.append(f"part {index} ({candidate.path}) {problem}")

    if problems:
        raise MediaPartError(
            f"the media set of {name} {version} has {len(problems)} problem(s):\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            hint="Re-copy only the parts named above from their media (each part is "
            "checked on its own), move stray or foreign files away, then run again.",
        )
    yield Finished("check-parts", f"{len(mapping)} parts of {name} {version} are intact")
    return mapping


# --- join --------------------------------------------------------------------------


def _journal_key(
    layout: MediaLayout, records: Sequence[FileRecord], name: str, version: int
) -> str:
    """Digest of everything a staging dir's content depends on."""
    document = {
        "name": name,
        "version": version,
        "part_size": layout.part_size,
        "parts": [list(part) for part in layout.parts],
        "files": [[r.path, r.length, r.sha256] for r in records],
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _write_journal(root_fd: int, key: str, applied: Sequence[MediaPart]) -> None:
    """Replace the journal atomically (write, fsync, rename, fsync the directory)."""
    data = json.dumps(
        {
            "journal": JOURNAL_FORMAT,
            "key": key,
            "applied": [[part.index, part.sha256] for part in applied],
        }
    ).encode()
    temp = JOURNAL_NAME + ".tmp"
    _unlink_quiet(root_fd, temp)
    fd = os.open(temp, _CREATE_FLAGS, 0o600, dir_fd=root_fd)
    try:
        view = memoryview(data)
        while view:  # not _write_all: tests patch that one to interrupt part data
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, JOURNAL_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
    os.fsync(root_fd)


def _read_journal(root_fd: int, key: str, parts: Sequence[MediaPart]) -> int | str:
    """Parts already applied per the journal, or why the staging dir cannot be resumed."""
    try:
        fd = _open_regular(root_fd, JOURNAL_NAME)
    except FileNotFoundError:
        return "it has no journal"
    except OSError:
        return "its journal is not a plain file"
    try:
        data = os.read(fd, MAX_JOURNAL_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_JOURNAL_BYTES:
        return "its journal is oversized"
    try:
        journal = parse_json(data, JOURNAL_NAME)
    except InputError:  # not JSON, duplicate keys, too deep: never a RecursionError
        return "its journal is unreadable"
    if not isinstance(journal, dict) or journal.get("journal") != JOURNAL_FORMAT:
        return "its journal has an unknown format"
    if journal.get("key") != key:
        return "it was started for another bundle or layout"
    applied = journal.get("applied")
    signed = [[part.index, part.sha256] for part in parts]
    if not isinstance(applied, list) or applied != signed[: len(applied)]:
        return "its journal does not match the signed parts"
    return len(applied)


def _inspect_staging(
    staging: Path, key: str, parts: Sequence[MediaPart], records: Sequence[FileRecord]
) -> int | str | None:
    """Read-only look at a staging dir: None (absent), parts applied, or why to discard it."""
    try:
        info = os.lstat(staging)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(
            f"{staging} exists and is not a directory join created",
            hint="Remove it, then run join again.",
        )
    root_fd = os.open(staging, _DIR_FLAGS)
    try:
        applied = _read_journal(root_fd, key, parts)
        if isinstance(applied, str):
            return applied
        resume = parts[applied - 1].offset + parts[applied - 1].length if applied else 0
        files_fd = _open_dirs(root_fd, [FILES_DIR])
        if files_fd is None:
            return 0 if resume == 0 else "its files/ directory is missing"
        try:
            start = 0
            for record in records:
                stop = start + record.length
                if record.length:
                    try:
                        found = _lstat_in(files_fd, record.path)
                    except OSError:
                        return f"{record.path} in it goes through a link"
                    if found is not None and not stat.S_ISREG(found.st_mode):
                        return f"{record.path} in it is not a plain file"
                    if stop <= resume and (found is None or found.st_size != record.length):
                        return f"{record.path} in it does not match its journal"
                    if start < resume < stop and (found is None or found.st_size < resume - start):
                        return f"{record.path} in it is shorter than its journal says"
                start = stop
        finally:
            os.close(files_fd)
        return applied
    finally:
        os.close(root_fd)


def _remove_staging(staging: Path) -> None:
    info = os.lstat(staging)
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{staging} is not a directory join created; remove it yourself")
    # rmtree works by descriptor on Linux and does not follow links inside the tree.
    shutil.rmtree(staging)


def _prepare_resume(root_fd: int, records: Sequence[FileRecord], resume: int) -> None:
    """Cut the staging tree back to exactly the stream bytes before ``resume``."""
    files_fd = _make_dirs(root_fd, [FILES_DIR])
    try:
        start = 0
        for record in records:
            stop = start + record.length
            if record.length and stop > resume:
                *dirs, leaf = record.path.split("/")
                dir_fd = _open_dirs(files_fd, dirs)
                if dir_fd is not None:
                    try:
                        if start < resume:  # straddles: keep the applied head only
                            fd = os.open(leaf, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                            try:
                                os.ftruncate(fd, resume - start)
                                os.fsync(fd)
                            finally:
                                os.close(fd)
                        else:  # begins in an unapplied part: written again from scratch
                            _unlink_quiet(dir_fd, leaf)
                    finally:
                        os.close(dir_fd)
            start = stop
    finally:
        os.close(files_fd)


def _open_target(files_fd: int, relpath: str, file_offset: int, staging: Path) -> int:
    """A staging file positioned at ``file_offset``: created (O_EXCL) when it is 0."""
    *dirs, leaf = relpath.split("/")
    dir_fd = _make_dirs(files_fd, dirs)
    try:
        if file_offset == 0:
            fd = os.open(leaf, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)
            os.fsync(dir_fd)
            return fd
        fd = os.open(leaf, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != file_offset:
            os.close(fd)
            raise MediaPartError(
                f"{relpath} in {staging} is not where the join left it "
                f"({info.st_size} bytes, expected {file_offset})",
                hint=f"Remove {staging} and run join again.",
            )
        os.lseek(fd, file_offset, os.SEEK_SET)
        return fd
    finally:
        os.close(dir_fd)


def _apply_part(
    files_fd: int,
    source: Path,
    part: MediaPart,
    records: Sequence[FileRecord],
    buffer: bytearray,
    staging: Path,
    total: int,
    count: int,
) -> Generator[Event, None, None]:
    """Write one part's bytes into the staging files, hashing exactly what is written."""
    try:
        fd = os.open(source, _READ_FLAGS)
    except OSError as exc:
        raise MediaPartError(f"part {part.index} ({source}) cannot be opened: {exc}") from exc
    view = memoryview(buffer)
    digest = hashlib.sha256()
    done = part.offset
    next_report = done + PROGRESS_EVERY
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != part.length:
            raise MediaPartError(f"part {part.index} ({source}) changed after it was checked")
        os.set_blocking(fd, True)
        for relpath, file_offset, length in stream_segments(records, part.offset, part.length):
            out = _open_target(files_fd, relpath, file_offset, staging)
            try:
                remaining = length
                while remaining:
                    n = os.readv(fd, [view[: min(len(view), remaining)]])
                    if n == 0:
                        raise MediaPartError(f"part {part.index} ({source}) shrank while read")
                    digest.update(view[:n])
                    _write_all(out, view[:n])
                    remaining -= n
                    done += n
                    if done >= next_report:
                        next_report = done + PROGRESS_EVERY
                        yield Progress("join", done, total, part.index - 1, count)
                os.fsync(out)
            finally:
                os.close(out)
        if os.read(fd, 1):
            raise MediaPartError(f"part {part.index} ({source}) grew while being read")
    finally:
        os.close(fd)
    if digest.hexdigest() != part.sha256:
        raise DigestMismatchError(
            f"part {part.index} ({source}) changed after it was checked: it no longer matches "
            f"its signed digest; it holds {_describe(records, part)}",
            hint="Copy that part again and rerun join; the parts already applied are kept.",
        )


def _create_empty(files_fd: int, relpath: str, staging: Path) -> None:
    *dirs, leaf = relpath.split("/")
    dir_fd = _make_dirs(files_fd, dirs)
    try:
        info: os.stat_result | None
        try:
            info = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None:
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePathError(f"{relpath} in {staging} is not a plain file")
            os.unlink(leaf, dir_fd=dir_fd)  # left by an interrupted finish
        os.close(os.open(leaf, _CREATE_FLAGS, 0o644, dir_fd=dir_fd))
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def join_parts(
    parts_dirs: Sequence[Path],
    layout: MediaLayout,
    name: str,
    version: int,
    records: Sequence[FileRecord],
    metadata_src: Path,
    out_dir: Path,
) -> Generator[Event, None, Path]:
    """Check the set, rebuild the bundle at ``out_dir`` (must not exist), return it."""
    _check_identity(name, version)
    _check_records(records)
    parts = _layout_parts(layout, records)
    count = len(parts)
    total = sum(record.length for record in records)
    if os.path.lexists(out_dir):
        raise InputError(
            f"{out_dir} already exists",
            hint="join writes a new bundle directory: choose another path or remove it.",
        )
    parent = out_dir.parent
    if not parent.is_dir():
        raise InputError(f"{parent} does not exist; create it first")
    try:
        metadata_is_dir = stat.S_ISDIR(os.lstat(metadata_src).st_mode)
    except FileNotFoundError:
        metadata_is_dir = False
    if not metadata_is_dir:
        raise InputError(f"{metadata_src} is not a directory with the bundle metadata")
    staging = parent / f".{out_dir.name}.joining"
    key = _journal_key(layout, records, name, version)

    # Decide about the staging dir without touching it, so a failed check below
    # leaves the disk exactly as it was.
    state = _inspect_staging(staging, key, parts, records)
    applied = state if isinstance(state, int) else 0
    mapping = yield from check_parts(
        parts_dirs, layout, name, version, records, only=[p.index for p in parts[applied:]]
    )
    resume = parts[applied].offset if applied < count else total
    if _free_bytes(parent) < total - resume:
        raise InputError(f"not enough free space in {parent}: {total - resume} bytes are needed")

    if isinstance(state, str):
        yield Warned("join", f"discarding {staging}: {state}; starting over")
        _remove_staging(staging)
    if not isinstance(state, int):
        os.mkdir(staging, 0o700)
    root_fd = os.open(staging, _DIR_FLAGS)
    try:
        if not isinstance(state, int):
            _write_journal(root_fd, key, [])
        yield Started("join", total_bytes=total, total_items=count)
        if applied:
            yield Warned(
                "join",
                f"resuming an interrupted join: parts 1-{applied} are already applied, "
                f"continuing with part {applied + 1}",
            )
        _prepare_resume(root_fd, records, resume)
        files_fd = _make_dirs(root_fd, [FILES_DIR])
        try:
            buffer = bytearray(CHUNK)
            for part in parts[applied:]:
                yield from _apply_part(
                    files_fd, mapping[part.index], part, records, buffer, staging, total, count
                )
                _write_journal(root_fd, key, parts[: part.index])
                yield Progress(
                    "join",
                    part.offset + part.length,
                    total,
                    part.index,
                    count,
                    item=part.filename(name, version, count),
                )
            for record in records:
                if record.length == 0:
                    _create_empty(files_fd, record.path, staging)
        finally:
            os.close(files_fd)
        if os.path.lexists(staging / METADATA_DIR):
            shutil.rmtree(staging / METADATA_DIR)  # from an interrupted finish
        _copy_metadata(metadata_src, root_fd, METADATA_DIR)
        os.unlink(JOURNAL_NAME, dir_fd=root_fd)
        os.fchmod(root_fd, 0o755)
        os.fsync(root_fd)
    finally:
        os.close(root_fd)
    if os.path.lexists(out_dir):
        raise InputError(f"{out_dir} appeared while joining; the result is in {staging}")
    os.rename(staging, out_dir)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)
    yield Finished("join", f"joined {count} parts of {name} {version} into {out_dir}")
    return out_dir
