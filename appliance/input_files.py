"""The one way the tool reads a file it is given: regular files only, bounded, never blocking.

Every input file (an operator's facts, profile, recipe, inventory, site file,
key, trusted root; a bundle's metadata; a gateway's config) is read through
``read_input``. It refuses what is not a regular file before opening it for
reading (a FIFO is opened non-blocking, so a pipe without a writer can never
hang the tool; devices, sockets and directories are refused by their type),
refuses a file larger than its kind's bound before reading it, stops a read
that trickles past its deadline, and reports every problem as the caller's
error class (``InputError`` for operator input, exit 2; ``MetadataError`` for
bundle content, exit 4) with what was expected, what was found and what to do.

``open_input`` is the same check for a file read in part (a model's weight
headers: no size bound, the caller reads what it needs), ``read_opened`` reads
a descriptor it returned after the caller checked the opened file (the mode of
a secrets file), and ``input_directory`` refuses a FIFO or device given where a
directory is expected, by type, without opening it.

``parse_json`` is the one bounded JSON parser: size from the reader, nesting
depth bounded (never ``RecursionError``), duplicate keys refused, UTF-8 only,
no ``NaN``/``Infinity`` constants (not JSON).
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, InputError

KiB = 1024
MiB = 1024 * KiB

# Bounds per kind of file: far above any honest file of the kind, far below memory.
LIMITS: dict[str, int] = {
    "config": 1 * MiB,  # profiles, recipes, inventories, site and access files, gateway config
    "facts": 16 * MiB,  # a cluster's saved facts
    "key": 64 * KiB,  # a PEM private key or a public key JSON
    "root": 1 * MiB,  # trusted roots and rotations (bundles/FORMAT.md)
    "manifest": 64 * MiB,  # metadata/targets.json (bundles/FORMAT.md)
    "state": 16 * MiB,  # the site's accepted versions, journals
    "model-config": 16 * MiB,  # a model's config.json, tokenizer_config.json, index files
    "text": 1 * MiB,
    "audit-log": 256
    * MiB,  # a host's audit log, for `audit verify FILE` (~1 KiB a record)  # small text files (a passphrase file, a token, a requirements list)
}

MAX_JSON_DEPTH = 64  # no format of the tool nests deeper than ~10
READ_TIMEOUT_S = 60.0  # a regular file that delivers slower than this is refused
_CHUNK = 1 * MiB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    """'a directory', 'a named pipe (FIFO)', ... for a stat mode; 'a regular file' otherwise."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _limit(kind: str | int) -> int:
    return kind if isinstance(kind, int) else LIMITS[kind]


def read_input(
    path: Path,
    what: str,
    *,
    limit: str | int = "config",
    error: type[ApplianceError] = InputError,
    follow_symlinks: bool = True,
    timeout: float = READ_TIMEOUT_S,
) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (a kind of ``LIMITS``).

    ``what`` names the file's job in messages ("inventory", "trusted root").
    ``follow_symlinks=False`` refuses a symbolic link itself (bundle content).
    """
    bound = _limit(limit)
    fd = open_input(path, what, limit=bound, error=error, follow_symlinks=follow_symlinks)
    try:
        return _read_fd(fd, path, what, bound, error, timeout)
    finally:
        os.close(fd)


def open_input(
    path: Path,
    what: str,
    *,
    limit: str | int | None = None,
    error: type[ApplianceError] = InputError,
    follow_symlinks: bool = True,
) -> int:
    """A read-only descriptor on ``path``, checked to be a regular file (of at most ``limit``
    bytes when given) before and after opening; never blocks. The caller closes it.

    For files read in part (a model's weight headers): ``read_input`` reads whole files.
    """
    try:
        before = os.stat(path) if follow_symlinks else os.lstat(path)
    except FileNotFoundError:
        raise error(
            f"{path}: cannot read {what}: it does not exist", hint="Check the path."
        ) from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(before.st_mode):
        raise error(
            f"{path}: expected the {what} as a regular file, found {file_kind(before.st_mode)}",
            hint="Give the path of the file itself (pipes, devices and directories are not read).",
        )
    bound = None if limit is None else _limit(limit)
    if bound is not None:
        _check_size(path, what, before.st_size, bound, error)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise error(
                f"{path}: the {what} was replaced while it was opened "
                f"(now {file_kind(opened.st_mode)}); refusing to read it",
                hint="Make sure nothing else writes to it, then run again.",
            )
        if bound is not None:
            _check_size(path, what, opened.st_size, bound, error)
    except BaseException:
        os.close(fd)
        raise
    return fd


def input_directory(path: Path, what: str, *, error: type[ApplianceError] = InputError) -> Path:
    """``path`` if it is a directory (following symbolic links); otherwise the caller's error
    naming what was found instead (a FIFO or device given for a directory is never opened)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise error(
            f"{path}: expected the {what} as a directory: it does not exist",
            hint="Check the path.",
        ) from None
    except OSError as exc:
        raise error(f"{path}: cannot use the {what}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(found.st_mode):
        raise error(
            f"{path}: expected the {what} as a directory, found {file_kind(found.st_mode)}",
            hint=f"Give the path of the {what} itself.",
        )
    return path


def read_opened(
    fd: int,
    path: Path,
    what: str,
    *,
    limit: str | int,
    error: type[ApplianceError] = InputError,
    timeout: float = READ_TIMEOUT_S,
) -> bytes:
    """The rest of a descriptor from ``open_input`` (bounded, with a deadline), for a caller that
    checks the opened file (its mode, its owner) before reading it. The caller closes it."""
    return _read_fd(fd, path, what, _limit(limit), error, timeout)


def _check_size(path: Path, what: str, size: int, bound: int, error: type[ApplianceError]) -> None:
    if size > bound:
        raise error(
            f"{path}: the {what} is larger than {bound} bytes ({size}); refusing to read it",
            hint=f"Is this the right file? A {what} is never that large.",
        )


def _read_fd(
    fd: int, path: Path, what: str, bound: int, error: type[ApplianceError], timeout: float
) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(_CHUNK, bound + 1 - total))
        except BlockingIOError:
            chunk = None
        except OSError as exc:
            raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
        if chunk == b"":
            break
        if chunk:
            chunks.append(chunk)
            total += len(chunk)
            if total > bound:
                raise error(
                    f"{path}: the {what} grew past {bound} bytes while it was read",
                    hint=f"Is this the right file? A {what} is never that large.",
                )
        elif chunk is None:
            time.sleep(0.01)
        if time.monotonic() > deadline:
            raise error(
                f"{path}: reading the {what} took longer than {timeout:.0f} s; gave up",
                hint="Copy the file to a local disk and give that copy.",
            )
    return b"".join(chunks)


def decode_utf8(data: bytes, path: Path | str, what: str, error: type[ApplianceError]) -> str:
    """UTF-8 text; a BOM-less UTF-16 file or a stray byte is the caller's error, not a traceback."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: the {what} is not UTF-8 text (bad byte at offset {exc.start})",
            hint="Save it as UTF-8.",
        ) from exc


def read_text_input(
    path: Path,
    what: str,
    *,
    limit: str | int = "config",
    error: type[ApplianceError] = InputError,
    follow_symlinks: bool = True,
) -> str:
    """``read_input`` decoded as UTF-8 (a leading BOM is dropped)."""
    data = read_input(path, what, limit=limit, error=error, follow_symlinks=follow_symlinks)
    return decode_utf8(data, path, what, error).removeprefix("\ufeff")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(
    data: bytes | str,
    what: str,
    *,
    error: type[ApplianceError] = InputError,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Strict, bounded JSON: UTF-8, no duplicate keys, no NaN/Infinity, at most ``max_depth`` deep.

    ``what`` leads every message ("bundle manifest metadata/targets.json").
    """

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:  # raised through json.loads as it is
                raise error(f"{what}: duplicate JSON key {key!r}; refusing an ambiguous document")
            out[key] = value
        return out

    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what}: not UTF-8 (bad byte at offset {exc.start})") from exc
    else:
        text = data
    try:
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels; refused") from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{what}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except ValueError as exc:  # parse_constant, or an integer too long to convert
        raise error(f"{what}: not valid JSON: {exc}") from exc
    if json_depth(value, max_depth) > max_depth:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels; refused")
    return value


def json_depth(value: Any, stop_after: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion; stops once past ``stop_after``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > stop_after:
                return deepest
        stack.extend((child, depth) for child in children if isinstance(child, (dict, list)))
    return deepest


def finite_number(value: Any) -> bool:
    """A JSON number that is an int or finite float, never a bool (``True`` is an int in Python)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
