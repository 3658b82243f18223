"""Open, create, replace and walk files without following links: the one safe-filesystem module.

Job
    The descriptor-based primitives every reader and writer of the tool's own
    files shares: the bundle's content checks, install and state
    (``bundle.site``), the media set's split, check and join (``bundle.media``),
    signing keys and trusted roots (``bundle.keys``, ``bundle.trust``), the
    site's secrets (``keycloak.site_secrets``), the gateway's certificate
    (``gateway.certs``) and the audit anchors (``deploy.audit_anchor``). Callers
    turn the ``OSError`` raised here into their own messages (what the file is
    to them, what to do about it); nothing here names a bundle, a key or a host.

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
- A file written whole is either created new (``create_new``: ``O_EXCL``, a name
  that exists is refused) or replaced atomically (``replace_atomically``: a new
  temporary beside it, dot-named and random, written and fsynced, then renamed
  over the target and the directory fsynced), so a reader sees the old bytes or
  the new ones, never a part; a failed write leaves no temporary behind. The
  mode is set at creation, never widened afterwards (secrets are 0600 from the
  first byte).
- Every descriptor opened here is closed on failure; the caller closes the one
  it gets back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

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


def create_new(path: Path, data: bytes, mode: int = 0o600, *, exact_mode: bool = False) -> None:
    """Create ``path`` holding ``data``; ``FileExistsError`` if the name exists (a link too).

    ``mode`` is given at creation (the umask may narrow it); ``exact_mode`` sets it
    whatever the umask (a certificate that clients must read). A write that fails
    removes the file it created.
    """
    fd = os.open(path, CREATE_FLAGS, mode)
    try:
        if exact_mode:
            os.fchmod(fd, mode)
        write_all(fd, memoryview(data))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def replace_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` whole: a new dot-named temporary beside it, then a rename.

    Readers see the old content or the new, never a part; the new file has ``mode``
    from its first byte; a failure leaves ``path`` as it was and no temporary.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    create_new(temporary, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, DIR_FLAGS)
    try:
        os.fsync(directory)  # the rename must survive a crash
    finally:
        os.close(directory)
