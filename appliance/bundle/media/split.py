"""Split: write a bundle as numbered part files plus a copy of its ``metadata/``.

Job
    ``split_bundle`` cuts the content stream of a built bundle at its signed
    layout (``Payload.media``) so it fits removable media with file-size limits;
    the parts are carried to the site with ``metadata/`` beside them.

Invariants
- A part is trusted only through its signed SHA-256: split hashes each part as
  it writes it and refuses to produce one that differs (a damaged source never
  yields a part set that looks fine).
- Split never leaves a complete-looking bad part: a part is written under a
  dot-name and renamed only once its digest matched; on failure it removes
  everything it wrote (``_Written.remove``).
- Bundle files are opened by descriptor without following links
  (``appliance.safe_fs``); memory stays flat (one reusable buffer).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bundle.format import FILES_DIR, METADATA_DIR, FileRecord, MediaPart
from appliance.bundle.media.parts import (
    CHUNK,
    PART_NAME,
    PROGRESS_EVERY,
    TEMP_SUFFIX,
    check_identity,
    check_records,
    copy_metadata,
    describe_part,
    free_bytes,
    layout_parts,
)
from appliance.bundle.payload import MediaLayout
from appliance.errors import (
    DigestMismatchError,
    FileSetError,
    InputError,
    MetadataError,
    SizeMismatchError,
    UnsafePathError,
)
from appliance.events import Event, Finished, Progress, Started
from appliance.safe_fs import (
    CREATE_FLAGS,
    DIR_FLAGS,
    LINK_ERRNOS,
    open_dirs,
    open_regular,
    unlink_quiet,
    write_all,
)

_REBUILD_HINT = (
    "The part digests are signed at build time, so a bundle can only be split at "
    "its signed layout. For another part size, rebuild and re-sign the bundle: "
    "`appliance bundle build ... --part-size SIZE`."
)


def _open_source(files_fd: int, relpath: str) -> int:
    *dirs, leaf = relpath.split("/")
    try:
        dir_fd = open_dirs(files_fd, dirs)
        if dir_fd is None:
            raise FileNotFoundError(relpath)
        try:
            return open_regular(leaf, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except FileNotFoundError:
        raise FileSetError(
            f"{FILES_DIR}/{relpath} is listed in the signed manifest but missing from the bundle"
        ) from None
    except OSError as exc:
        if exc.errno in LINK_ERRNOS:
            raise UnsafePathError(
                f"{FILES_DIR}/{relpath} is a link, special file or goes through one; "
                "a bundle holds only plain files"
            ) from exc
        raise


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
        if PART_NAME.match(name)
        or (
            name.startswith(".")
            and name.endswith(TEMP_SUFFIX)
            and PART_NAME.match(name[1 : -len(TEMP_SUFFIX)])
        )
    )


def _signed_parts(
    layout: MediaLayout,
    records: Sequence[FileRecord],
    name: str,
    version: int,
    part_size: int | None,
) -> list[MediaPart]:
    """The parts of the signed layout; a part size other than the signed one is refused."""
    if part_size is not None and part_size != layout.part_size:
        raise InputError(
            f"this bundle was built with parts of {layout.part_size} bytes; "
            f"a part size of {part_size} was asked for",
            hint=_REBUILD_HINT,
        )
    check_identity(name, version)
    check_records(records)
    return layout_parts(layout, records)


def _check_out_dir(bundle_dir: Path, out_dir: Path, total: int) -> None:
    """``out_dir`` lies outside the bundle, holds no parts or metadata, and has room."""
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
    if free_bytes(out_dir) < total:
        raise InputError(f"not enough free space in {out_dir}: {total} bytes are needed")


@dataclass
class _Written:
    """What split has created in ``out_dir`` so far: all of it goes if split fails."""

    out_dir: Path
    out_fd: int
    created_out: bool
    metadata_started: bool = False
    temp: str | None = None  # the part being written, under its dot-name
    parts: list[str] = field(default_factory=list)  # finished parts, under their names

    def remove(self) -> None:
        # All or nothing: the parts already written are good, but a half set next
        # to a failure message invites copying it; remove everything we created.
        if self.temp is not None:
            unlink_quiet(self.out_fd, self.temp)
        for filename in self.parts:
            unlink_quiet(self.out_fd, filename)
        if self.metadata_started:
            shutil.rmtree(self.out_dir / METADATA_DIR, ignore_errors=True)
        if self.created_out:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()


def _write_parts(
    written: _Written,
    chunks: Iterator[memoryview],
    parts: Sequence[MediaPart],
    names: Sequence[str],
    records: Sequence[FileRecord],
    total: int,
) -> Generator[Event, None, None]:
    """Cut the content stream into the signed parts, each checked before it is named."""
    out_fd, count = written.out_fd, len(parts)
    pending = memoryview(b"")
    done = 0
    next_report = PROGRESS_EVERY
    for part, filename in zip(parts, names, strict=True):
        written.temp = f".{filename}{TEMP_SUFFIX}"
        fd = os.open(written.temp, CREATE_FLAGS, 0o644, dir_fd=out_fd)
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
                write_all(fd, piece)
                pending = pending[len(piece) :]
                need -= len(piece)
                done += len(piece)
                if done >= next_report:
                    next_report = done + PROGRESS_EVERY
                    yield Progress("split", done, total, len(written.parts), count)
            os.fsync(fd)
        finally:
            os.close(fd)
        if digest.hexdigest() != part.sha256:
            raise DigestMismatchError(
                f"part {part.index} ({filename}) does not match its signed digest: the "
                f"source bundle is damaged in {describe_part(records, part)}",
                hint="No parts were kept. Verify the bundle (`appliance bundle verify`), "
                "re-copy or rebuild it, then split again.",
            )
        os.rename(written.temp, filename, src_dir_fd=out_fd, dst_dir_fd=out_fd)
        written.temp = None
        written.parts.append(filename)
        os.fsync(out_fd)
        yield Progress("split", done, total, len(written.parts), count, item=filename)
    # Also opens trailing empty files, so a missing one is caught here too.
    if pending or any(True for _ in chunks):
        raise MetadataError("the content stream is longer than the signed parts")


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
    parts = _signed_parts(layout, records, name, version, part_size)
    count = len(parts)
    total = sum(record.length for record in records)
    names = [part.filename(name, version, count) for part in parts]
    _check_out_dir(bundle_dir, out_dir, total)

    bundle_fd = os.open(bundle_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    created_out = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        out_fd = os.open(out_dir, DIR_FLAGS)
    except BaseException:
        os.close(bundle_fd)
        raise
    written = _Written(out_dir, out_fd, created_out)
    files_fd: int | None = None
    chunks: Iterator[memoryview] = iter(())
    try:
        yield Started("split", total_bytes=total, total_items=count)
        files_fd = open_dirs(bundle_fd, [FILES_DIR])
        if files_fd is None:
            if records:
                raise FileSetError(f"{bundle_dir} has no {FILES_DIR}/ directory")
            files_fd = os.dup(bundle_fd)  # nothing will be read from it
        # Checked absent above, so whatever is there after a failure is ours.
        written.metadata_started = True
        copy_metadata(bundle_dir / METADATA_DIR, out_fd, METADATA_DIR)
        chunks = _read_stream(files_fd, records, bytearray(CHUNK))
        yield from _write_parts(written, chunks, parts, names, records, total)
    except BaseException:
        written.remove()
        raise
    finally:
        if isinstance(chunks, Generator):
            chunks.close()
        if files_fd is not None:
            os.close(files_fd)
        os.close(out_fd)
        os.close(bundle_fd)
    yield Finished("split", f"wrote {count} parts of {name} {version} to {out_dir}")
    return [out_dir / filename for filename in written.parts]
