"""Verify-before-write install: copy the signed files into a new release directory.

``install_files`` copies every record from the bundle's ``files/`` into a
private staging directory next to ``dest``, hashing exactly the buffer it then
writes, and moves the staging directory to ``dest`` in one rename only after
every piece matched its signed digest.

Invariants (trust.md guarantees 5 and 6):
- Nothing is written outside the staging directory
  ``dest.parent/.<dest.name>.staging-<random>`` (mode 0700, same filesystem as
  ``dest``) until the final rename; record paths are checked and staged files
  are created with ``O_EXCL | O_NOFOLLOW``, so no name can escape or be reused.
- The bytes installed are the bytes hashed: sources are opened without
  following links and checked on the descriptor, each chunk is hashed and then
  written from the same buffer, and a source that is shorter or longer than
  signed is refused (reading stops one byte past the signed end).
- Only regular files (0444) and directories (0555) are created; the result is
  read-only and fsync-ed before the rename.
- All or nothing: on any exception, KeyboardInterrupt and an abandoned
  generator included, the staging directory is removed and ``dest`` does not
  appear; ``dest`` is never replaced if it appeared meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Generator, Sequence
from functools import partial
from pathlib import Path

from appliance.bundle.format import FileRecord
from appliance.bundle.site.contents import (
    PROGRESS_INTERVAL,
    Batch,
    OpenFile,
    buffer_size,
    digest_error,
    hash_range,
    open_record,
    open_root,
    plan_batches,
    refuse_growth,
    resolve_workers,
    run_bounded,
    thread_buffer,
    validate_records,
)
from appliance.errors import DeploymentError, InputError
from appliance.events import Event, Finished, Progress, Started, Throttle
from appliance.safe_fs import CREATE_FLAGS, DIR_FLAGS

FILE_MODE = 0o444
DIR_MODE = 0o555


def _write_error(path: str, exc: OSError) -> DeploymentError:
    return DeploymentError(
        f"writing {path} into the staging directory failed: {exc.strerror}",
        hint="Check free space and permissions on the destination filesystem.",
    )


def _pwrite_all(fd: int, path: str, chunk: memoryview, position: int) -> None:
    try:
        while chunk:
            written = os.pwrite(fd, chunk, position)
            chunk = chunk[written:]
            position += written
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _install_batch(batch: Batch, buffer_bytes: int) -> list[bool]:
    """Copy each piece, hashing exactly the bytes written; finish (fsync, 0444, close)
    a file after its last piece. Returns, per piece, whether it finished its file."""
    buffer = thread_buffer(buffer_bytes)
    results: list[bool] = []
    for piece in batch:
        staged = piece.file
        staged.ensure_open()
        record = staged.record
        sink = partial(_pwrite_all, staged.dst_fd, record.path)
        found = hash_range(staged.src_fd, record.path, piece.offset, piece.length, buffer, sink)
        mismatch = piece.mismatch(found)
        if mismatch is not None:
            raise digest_error([mismatch], stopped=False)
        if piece.is_last:
            refuse_growth(staged.src_fd, record)
        last = staged.piece_done()
        if last:
            try:
                os.fsync(staged.dst_fd)
                os.fchmod(staged.dst_fd, FILE_MODE)
            except OSError as exc:
                raise _write_error(record.path, exc) from exc
            staged.close()
        results.append(last)
    return results


class _Stager:
    """Creates the staging tree: directories in the generator's thread (in manifest
    order), files in the worker that first copies into them."""

    def __init__(self, src_fd: int, staging: Path) -> None:
        self.src_fd = src_fd
        self.staging = staging
        self.dirs: set[str] = set()  # relative directories created under staging

    def make_file(self, index: int, record: FileRecord) -> OpenFile:
        parts = record.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if rel not in self.dirs:
                # Paths passed check_relpath and the staging dir is private (0700):
                # every component here was created by this loop.
                try:
                    os.mkdir(self.staging / rel, 0o700)
                except OSError as exc:
                    raise _write_error(rel, exc) from exc
                self.dirs.add(rel)
        return OpenFile(index, record, self.open)

    def open(self, record: FileRecord) -> tuple[int, int]:
        """The checked source and a new staged file (never an existing one)."""
        src = open_record(self.src_fd, record)
        try:
            dst = os.open(self.staging / record.path, CREATE_FLAGS, 0o600)
        except OSError as exc:
            os.close(src)
            raise _write_error(record.path, exc) from exc
        return src, dst

    def seal_dirs(self) -> None:
        """fsync and make read-only every directory, deepest first, then the root."""
        order = sorted(self.dirs, key=lambda d: d.count("/"), reverse=True)
        for rel in [*order, ""]:
            path = self.staging / rel if rel else self.staging
            try:
                fd = os.open(path, DIR_FLAGS)
                try:
                    os.fsync(fd)
                    os.fchmod(fd, DIR_MODE)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _write_error(rel or ".", exc) from exc


def _remove_tree(path: Path) -> None:
    """Remove a tree this module created, read-only directories included."""
    if not os.path.lexists(path):
        return
    for dirpath, _dirs, _files in os.walk(path):  # os.walk does not follow links
        os.chmod(dirpath, 0o700)
    shutil.rmtree(path)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically, failing if ``dst`` exists (even as an
    empty directory, which a plain rename would silently replace)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        rc = renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise InputError(f"{dst} appeared during the install; it was left untouched")
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks the flag
            raise DeploymentError(f"moving the release into {dst} failed: {os.strerror(err)}")
    # Fallback without the flag: a small race remains between this check and the rename.
    if os.path.lexists(dst):
        raise InputError(f"{dst} appeared during the install; it was left untouched")
    os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_files(
    src_files_dir: Path,
    records: Sequence[FileRecord],
    dest: Path,
    *,
    workers: int | None = None,
) -> Generator[Event, None, Path]:
    """Copy the signed files into the new directory ``dest``, verifying while copying.

    ``dest`` must not exist and its parent must. Yields ``Started``, throttled
    ``Progress`` and ``Finished``; returns ``dest``. Raises the specific
    ``VerificationError`` (``DigestMismatchError`` naming file and shard,
    ``SizeMismatchError``, ``UnsafePathError``, ``FileSetError``),
    ``InputError`` for a bad ``dest`` and ``DeploymentError`` when writing
    fails; in every failure nothing is left behind.
    """
    validate_records(records)
    threads = resolve_workers(workers)
    dest = Path(dest)
    if os.path.lexists(dest):
        raise InputError(
            f"{dest} already exists; an install never overwrites",
            hint="Choose a new release directory.",
        )
    if not dest.parent.is_dir():
        raise InputError(f"the parent directory {dest.parent} does not exist")
    total_bytes = sum(r.length for r in records)
    yield Started("install", total_bytes=total_bytes, total_items=len(records))

    src_fd = open_root(src_files_dir)
    registry: set[OpenFile] = set()
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
        stager = _Stager(src_fd, staging)
        batches = plan_batches(records, stager.make_file, registry)
        runner = run_bounded(
            partial(_install_batch, buffer_bytes=buffer_size(threads)), batches, threads
        )
        done_bytes = done_files = 0
        throttle = Throttle(PROGRESS_INTERVAL)
        try:
            for batch, results in runner:
                for piece, file_done in zip(batch, results, strict=True):
                    done_bytes += piece.length
                    if file_done:
                        done_files += 1
                        registry.discard(piece.file)
                if throttle.due():
                    yield Progress(
                        "install",
                        done_bytes,
                        total_bytes,
                        done_files,
                        len(records),
                        batch[-1].file.record.path,
                    )
        finally:
            runner.close()
        yield Progress("install", total_bytes, total_bytes, len(records), len(records))
        stager.seal_dirs()
        rename_noreplace(staging, dest)
        staging = None  # it is dest now
        try:
            _fsync_dir(dest.parent)
        except OSError as exc:
            _remove_tree(dest)  # all or nothing: an unrecorded rename is not an install
            raise _write_error(str(dest.parent), exc) from exc
    except BaseException as failure:
        if staging is not None:
            try:
                _remove_tree(staging)
            except OSError as exc:  # keep the original error; say what is left
                failure.add_note(f"could not remove the staging directory {staging}: {exc}")
        raise
    finally:
        for opened in registry:
            opened.close()
        os.close(src_fd)
    yield Finished("install", f"{len(records)} files, {total_bytes} bytes installed into {dest}")
    return dest
