"""Check every place a command will write to, before the command does any work.

A command that hashes gigabytes or contacts hosts and only then finds that its
``--out`` is on a read-only filesystem wastes the operator's time and leaves
them a traceback. Each writing command calls one of these checks first:

- ``new_directory``: a directory the command creates (must not exist yet);
- ``new_file``: a file the command creates (must not exist yet);
- ``replaced_file``: an existing regular file rewritten in place (temp file and
  rename in its directory);
- ``new_or_empty_directory``: a directory created, or an existing empty one
  replaced in one rename (``render --out``);
- ``writable_directory``: a directory written into, created (with its parents)
  if missing, such as the trust state (``--state``).

Invariants: a check creates nothing it does not remove (the writability probe
is a temp file made and unlinked in the directory itself, because root ignores
mode bits but not a read-only mount, so ``os.access`` would lie); a failure is
``OutputPathError`` (exit 2) naming the flag, what was expected, what was found
(the real reason: read-only filesystem, not a directory, permission, no space)
and what to do. A check is advice taken early, not a lock: the writers still
create with ``O_EXCL``/rename-no-replace and handle their own errors.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import OutputPathError
from appliance.input_files import file_kind

_REASONS = {
    errno.EROFS: "it is on a read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.ENOSPC: "no space is left on its filesystem",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.ENOTDIR: "a path component is not a directory",
    errno.ENOENT: "it does not exist",
}
_HINTS = {
    errno.EROFS: "Remount it read-write, or choose a location on a writable filesystem.",
    errno.EACCES: "Run as a user who may write there, or choose another location.",
    errno.EPERM: "Run as a user who may write there, or choose another location.",
    errno.ENOSPC: "Free some space there, or choose another location.",
    errno.EDQUOT: "Free some space there, or choose another location.",
}


def reason(exc: OSError) -> str:
    """The operator's words for an ``OSError`` (read-only, not a directory, ...)."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return exc.strerror or str(exc)


def hint_for(exc: OSError, default: str) -> str:
    return _HINTS.get(exc.errno or 0, default)


def _kind(path: Path) -> str | None:
    """What is at ``path`` (not following a final link), or None if nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent is a file: reported by the parent check
    except OSError as exc:  # e.g. a parent this user may not enter
        raise _Unreachable(path, exc) from exc
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file"
    return file_kind(mode)  # a named pipe (FIFO), a character device, ...


class _Unreachable(Exception):
    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(str(exc))
        self.path, self.exc = path, exc


def _reported(check: Callable[..., None]) -> Callable[..., None]:
    """A path that cannot even be looked at is refused like any other, never a traceback."""

    @functools.wraps(check)
    def wrapper(path: Path, flag: str, **kwargs: Any) -> None:
        try:
            check(path, flag, **kwargs)
        except _Unreachable as unreachable:
            raise _fail(flag, path, "a location this user can reach",
                        f"{unreachable.path} cannot be looked at: {reason(unreachable.exc)}",
                        hint_for(unreachable.exc, "Choose a location you may read and write."),
                        ) from unreachable.exc  # fmt: skip

    return wrapper


def _fail(flag: str, path: Path, expected: str, found: str, hint: str) -> OutputPathError:
    return OutputPathError(f"{flag} {path}: expected {expected}; found {found}", hint=hint)


def _probe(flag: str, path: Path, directory: Path, expected: str) -> None:
    """Create and remove a temp file in ``directory``: the only honest writability test."""
    try:
        fd, name = tempfile.mkstemp(prefix=".appliance-probe-", dir=directory)
    except OSError as exc:
        raise _fail(
            flag,
            path,
            expected,
            f"{directory} cannot be written: {reason(exc)}",
            hint_for(exc, "Choose a location you may write to."),
        ) from exc
    os.close(fd)
    os.unlink(name)


def _existing_parent(flag: str, path: Path, expected: str, *, create: bool) -> Path:
    """The directory that will hold ``path``: its parent, or with ``create`` the nearest
    existing ancestor (the missing ones are made). Refuses a file in the way."""
    parent = path.absolute().parent
    ancestor = parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():  # follows a link: a link to a directory is fine
        raise _fail(flag, path, expected, f"{ancestor} is {_kind(ancestor) or 'not a directory'}, not a directory",
                    "Choose a location under a directory, or move that file out of the way.")  # fmt: skip
    if ancestor != parent and not create:
        raise _fail(flag, path, expected, f"its parent directory {parent} does not exist",
                    f"Create {parent} first, or choose another location.")  # fmt: skip
    return ancestor


@_reported
def new_directory(path: Path, flag: str, *, create_parents: bool = False) -> None:
    """``path`` will be created as a new directory: nothing there, parent writable."""
    expected = "a new directory (nothing at that path yet)"
    found = _kind(path)
    if found is not None:
        raise _fail(flag, path, expected, f"{found} (it already exists)",
                    "Choose a new path, or remove what is there if it is no longer needed.")  # fmt: skip
    _probe(flag, path, _existing_parent(flag, path, expected, create=create_parents), expected)


@_reported
def new_file(path: Path, flag: str) -> None:
    """``path`` will be created as a new file: nothing there, parent writable."""
    expected = "a new file (nothing at that path yet)"
    found = _kind(path)
    if found is not None:
        raise _fail(flag, path, expected, f"{found} (it already exists)",
                    "Choose a new path; existing files are never overwritten.")  # fmt: skip
    _probe(flag, path, _existing_parent(flag, path, expected, create=False), expected)


@_reported
def replaced_file(path: Path, flag: str) -> None:
    """``path`` is an existing regular file rewritten in place (temp file, then rename)."""
    expected = "an existing file that can be rewritten"
    found = _kind(path)
    if found != "a file":
        raise _fail(flag, path, expected, found or "nothing at that path",
                    "Give the path of the existing regular file.")  # fmt: skip
    _probe(flag, path, _existing_parent(flag, path, expected, create=False), expected)


@_reported
def writable_directory(path: Path, flag: str, *, create: bool = True) -> None:
    """``path`` is a directory written into; with ``create``, a missing one (and its
    missing parents) is made later, so its nearest existing ancestor must be writable."""
    expected = "a writable directory" + (" (or a path where one can be created)" if create else "")
    found = _kind(path)
    if found is None and not os.path.lexists(path):
        if not create:
            raise _fail(flag, path, expected, "nothing at that path",
                        f"Create {path} first, or choose another location.")  # fmt: skip
        _probe(flag, path, _existing_parent(flag, path, expected, create=True), expected)
        return
    if not path.is_dir():
        raise _fail(flag, path, expected, f"{found}, not a directory",
                    "Give a directory, or move what is there out of the way.")  # fmt: skip
    _probe(flag, path, path, expected)


@_reported
def new_or_empty_directory(path: Path, flag: str) -> None:
    """``path`` is created, or (an empty directory) replaced by a rename in its parent."""
    expected = "a new or empty directory"
    if _kind(path) == "a directory":
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise _fail(flag, path, expected, f"it cannot be read: {reason(exc)}",
                        "Give a directory you may read and write.") from exc  # fmt: skip
        if names:
            found = (
                f"{len(names)} {'entry' if len(names) == 1 else 'entries'} ({', '.join(names[:3])})"
            )
            raise _fail(flag, path, expected, found,
                        "Choose a new or empty directory; nothing there is changed.")  # fmt: skip
        _probe(flag, path, _existing_parent(flag, path, expected, create=False), expected)
        return
    new_directory(path, flag)
