"""Open, create and walk files beneath a directory descriptor without following links.

Job
    The one set of descriptor-based primitives that the bundle's readers and
    writers share: the site's content checks and install (``site.contents``,
    ``site.install``, ``site.state``) and the media set's split, check and join.
    Callers turn the ``OSError`` raised here into their own messages (what the
    file is to them, what to do about it); nothing here names a bundle.

Invariants
- Nothing follows a symbolic link: every directory is opened one component at a
  time relative to its parent's descriptor with ``O_DIRECTORY | O_NOFOLLOW``,
  and files are opened with ``O_NOFOLLOW`` (a link fails with ``ELOOP``, a file
  where a directory is expected with ``ENOTDIR``).
- Opening for reading never blocks: ``O_NONBLOCK`` (a FIFO planted under a
  file's name does not wait for a writer) and ``O_NOCTTY``; ``open_regular``
  then refuses anything ``fstat`` does not show as a regular file.
- Files are created with ``O_EXCL | O_NOFOLLOW``: no existing name is reused,
  none leads outside the directory it was created in.
- Every descriptor opened here is closed on failure; the caller closes the one
  it gets back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

# O_NONBLOCK: opening a FIFO for reading must not hang waiting for a writer; it is
# refused right after by the S_ISREG check (and is a no-op for regular files).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What opening through a link, through a file taken for a directory, or a special
# file (``open_regular``) fails with.
LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)


def write_all(fd: int, view: memoryview) -> None:
    """Write every byte of ``view`` (``os.write`` may write less than asked)."""
    while view:
        view = view[os.write(fd, view) :]


def open_dirs(root_fd: int, components: Sequence[str]) -> int | None:
    """Open root/components... without following links; None if one is missing."""
    fd = os.dup(root_fd)
    try:
        for component in components:
            try:
                child = os.open(component, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root_fd: int, components: Sequence[str]) -> int:
    """Open root/components..., creating missing directories; never follows links."""
    fd = os.dup(root_fd)
    try:
        for component in components:
            try:
                os.mkdir(component, 0o755, dir_fd=fd)
                os.fsync(fd)  # the new entry must survive a crash the journal outlives
            except FileExistsError:
                pass
            child = os.open(component, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_beneath(root_fd: int, relpath: str) -> os.stat_result | None:
    """``lstat`` of ``relpath`` under ``root_fd`` (no component followed); None if missing."""
    *dirs, leaf = relpath.split("/")
    dir_fd = open_dirs(root_fd, dirs)
    if dir_fd is None:
        return None
    try:
        return os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dir_fd)


def open_regular(name: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open a regular file for reading; links and special files are refused (OSError).

    ``name`` is relative to ``dir_fd`` when given; the descriptor returned blocks.
    """
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EMLINK, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def unlink_quiet(dir_fd: int, name: str) -> None:
    """Remove ``name`` from ``dir_fd`` if it is there; errors are ignored."""
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
