"""Join: rebuild a bundle directory from a checked media set, resumably.

Job
    ``join_parts`` checks the whole set (``check.check_parts``), then writes the
    content stream back into the bundle's files and copies ``metadata/`` beside
    them.

Invariants
- Join checks the whole set first, then hashes each part again while applying
  it: the bytes used are the bytes hashed.
- Join writes only inside ``.<out>.joining`` next to ``out_dir`` and, last,
  renames that to ``out_dir``. Every record path passes ``check_relpath``,
  files are created with O_EXCL|O_NOFOLLOW and directories are walked by file
  descriptor without following links (``appliance.safe_fs``), so
  nothing lands outside the staging dir.
- Join is resumable: a journal in the staging dir lists the parts fully applied
  (data fsynced) with their digests; a rerun continues after them. A journal or
  staging tree that does not match the current layout is discarded.
- Memory stays flat: data flows through one reusable buffer.
- A joined directory is not trusted by itself: the verifier checks it against
  the signed manifest like any other bundle before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Generator, Sequence
from pathlib import Path

from appliance.bundle.format import FILES_DIR, METADATA_DIR, FileRecord, MediaPart
from appliance.bundle.media.check import check_parts
from appliance.bundle.media.parts import (
    CHUNK,
    PROGRESS_EVERY,
    check_identity,
    check_records,
    copy_metadata,
    describe_part,
    free_bytes,
    layout_parts,
    stream_segments,
)
from appliance.bundle.payload import MediaLayout
from appliance.errors import (
    DigestMismatchError,
    InputError,
    MediaPartError,
    UnsafePathError,
)
from appliance.events import Event, Finished, Progress, Started, Warned
from appliance.input_files import parse_json
from appliance.safe_fs import (
    CREATE_FLAGS,
    DIR_FLAGS,
    READ_FLAGS,
    lstat_beneath,
    make_dirs,
    open_dirs,
    open_regular,
    unlink_quiet,
    write_all,
)

JOURNAL_NAME = "join-journal.json"
JOURNAL_FORMAT = 1
MAX_JOURNAL_BYTES = 16 * 1024 * 1024


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
    unlink_quiet(root_fd, temp)
    fd = os.open(temp, CREATE_FLAGS, 0o600, dir_fd=root_fd)
    try:
        view = memoryview(data)
        while view:  # not write_all: tests patch that one to interrupt part data
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, JOURNAL_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
    os.fsync(root_fd)


def _read_journal(root_fd: int, key: str, parts: Sequence[MediaPart]) -> int | str:
    """Parts already applied per the journal, or why the staging dir cannot be resumed."""
    try:
        fd = open_regular(JOURNAL_NAME, dir_fd=root_fd)
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
    root_fd = os.open(staging, DIR_FLAGS)
    try:
        applied = _read_journal(root_fd, key, parts)
        if isinstance(applied, str):
            return applied
        resume = parts[applied - 1].offset + parts[applied - 1].length if applied else 0
        files_fd = open_dirs(root_fd, [FILES_DIR])
        if files_fd is None:
            return 0 if resume == 0 else "its files/ directory is missing"
        try:
            start = 0
            for record in records:
                stop = start + record.length
                if record.length:
                    try:
                        found = lstat_beneath(files_fd, record.path)
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
    files_fd = make_dirs(root_fd, [FILES_DIR])
    try:
        start = 0
        for record in records:
            stop = start + record.length
            if record.length and stop > resume:
                *dirs, leaf = record.path.split("/")
                dir_fd = open_dirs(files_fd, dirs)
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
                            unlink_quiet(dir_fd, leaf)
                    finally:
                        os.close(dir_fd)
            start = stop
    finally:
        os.close(files_fd)


def _open_target(files_fd: int, relpath: str, file_offset: int, staging: Path) -> int:
    """A staging file positioned at ``file_offset``: created (O_EXCL) when it is 0."""
    *dirs, leaf = relpath.split("/")
    dir_fd = make_dirs(files_fd, dirs)
    try:
        if file_offset == 0:
            fd = os.open(leaf, CREATE_FLAGS, 0o644, dir_fd=dir_fd)
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
        fd = os.open(source, READ_FLAGS)
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
                    write_all(out, view[:n])
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
            f"its signed digest; it holds {describe_part(records, part)}",
            hint="Copy that part again and rerun join; the parts already applied are kept.",
        )


def _create_empty(files_fd: int, relpath: str, staging: Path) -> None:
    *dirs, leaf = relpath.split("/")
    dir_fd = make_dirs(files_fd, dirs)
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
        os.close(os.open(leaf, CREATE_FLAGS, 0o644, dir_fd=dir_fd))
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check_destination(out_dir: Path, metadata_src: Path) -> Path:
    """``out_dir`` must not exist, its parent must; ``metadata_src`` is a directory.

    Returns the parent, where the staging dir goes.
    """
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
    return parent


def _apply_parts(
    root_fd: int,
    parts: Sequence[MediaPart],
    applied: int,
    mapping: dict[int, Path],
    records: Sequence[FileRecord],
    staging: Path,
    key: str,
    name: str,
    version: int,
    total: int,
) -> Generator[Event, None, None]:
    """Apply the parts after the first ``applied``, journalling each; then the empty files."""
    count = len(parts)
    files_fd = make_dirs(root_fd, [FILES_DIR])
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


def _finish_staging(root_fd: int, staging: Path, metadata_src: Path) -> None:
    """Copy the metadata in, drop the journal, make the staging dir a bundle dir."""
    if os.path.lexists(staging / METADATA_DIR):
        shutil.rmtree(staging / METADATA_DIR)  # from an interrupted finish
    copy_metadata(metadata_src, root_fd, METADATA_DIR)
    os.unlink(JOURNAL_NAME, dir_fd=root_fd)
    os.fchmod(root_fd, 0o755)
    os.fsync(root_fd)


def _publish(staging: Path, out_dir: Path, parent: Path) -> None:
    """Rename the finished staging dir to ``out_dir`` (never over something that appeared)."""
    if os.path.lexists(out_dir):
        raise InputError(f"{out_dir} appeared while joining; the result is in {staging}")
    os.rename(staging, out_dir)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)


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
    check_identity(name, version)
    check_records(records)
    parts = layout_parts(layout, records)
    count = len(parts)
    total = sum(record.length for record in records)
    parent = _check_destination(out_dir, metadata_src)
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
    if free_bytes(parent) < total - resume:
        raise InputError(f"not enough free space in {parent}: {total - resume} bytes are needed")

    if isinstance(state, str):
        yield Warned("join", f"discarding {staging}: {state}; starting over")
        _remove_staging(staging)
    if not isinstance(state, int):
        os.mkdir(staging, 0o700)
    root_fd = os.open(staging, DIR_FLAGS)
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
        yield from _apply_parts(
            root_fd, parts, applied, mapping, records, staging, key, name, version, total
        )
        _finish_staging(root_fd, staging, metadata_src)
    finally:
        os.close(root_fd)
    _publish(staging, out_dir, parent)
    yield Finished("join", f"joined {count} parts of {name} {version} into {out_dir}")
    return out_dir
