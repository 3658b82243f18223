"""The gateway's audit log: one hash-chained JSON line per call, the format of ``appliance.audit``.

Invariants:
- each line is ``appliance.audit.chain_record`` over the previous line's hash,
  so ``appliance audit verify FILE`` finds edited, removed or reordered calls;
  a restarted gateway continues the chain from the file's last record;
- the file is append-only (``O_APPEND``, one ``write`` per line), mode 0640,
  never followed through a symlink, and held under an exclusive ``flock`` so a
  second gateway cannot interleave its own chain into it;
- lines reach the disk with ``fsync`` in batches (every ``fsync_batch`` records
  or ``fsync_interval_s``, whichever comes first), in a worker thread;
- a file whose last line is damaged is refused at start (fail closed): the
  operator checks it and moves it aside;
- callers pass only what may be recorded: no token, no key, no secret;
- what a request or a token controls is cut with ``clip`` (a bound on the bytes it takes
  once JSON-escaped), so no request can write more than a small constant to the log;
- the path must be a regular file (or absent): a FIFO there is refused, never waited on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from appliance.audit import GENESIS, chain_record
from appliance.errors import InputError
from appliance.gateway.clock import Clock
from appliance.input_files import file_kind

log = logging.getLogger("appliance.gateway")

FILE_MODE = 0o640
_TAIL_BLOCK = 64 * 1024
# A last line longer than this is damage, not a record (records are bounded: ``clip``).
MAX_LINE_BYTES = 64 * 1024 * 1024
CLIPPED = "..."


def _escaped_size(char: str) -> int:
    """Bytes ``json.dumps`` (ensure_ascii) writes for ``char``."""
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return 2 if char in '"\\' else 1
    if code in (0x08, 0x09, 0x0A, 0x0C, 0x0D):
        return 2
    return 12 if code > 0xFFFF else 6


def clip(value: str | None, limit: int) -> str | None:
    """``value`` cut so that it takes at most ``limit`` bytes in the record, marked ``...``."""
    if value is None:
        return None
    if 2 * len(value) <= limit and value.isascii() and value.isprintable():
        return value  # the common case: short printable ASCII
    budget = limit - len(CLIPPED)
    used = 0
    for index, char in enumerate(value):
        used += _escaped_size(char)
        if used > limit or (used > budget and index + 1 < len(value)):
            return value[:index] + CLIPPED
    return value


class AuditLogError(InputError):
    """The gateway's audit log cannot be opened, is locked by another process, or is damaged."""


def last_hash(fd: int, path: Path) -> str:
    """The ``hash`` of the file's last record (``GENESIS`` for an empty file)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return GENESIS
    tail = b""
    position = size
    while position > 0:  # read backwards until the last line is whole
        step = min(_TAIL_BLOCK, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        if b"\n" in tail[:-1]:
            break
        if len(tail) > MAX_LINE_BYTES:
            raise AuditLogError(
                f"{path}: the last line is longer than {MAX_LINE_BYTES} bytes: not a record",
                hint=f"Check the file with `appliance audit verify {path}`, then move it aside; the gateway starts a new chain.",
            )
    if not tail.endswith(b"\n"):
        raise AuditLogError(
            f"{path}: the last record is incomplete (no newline at the end)",
            hint=f"Check the file with `appliance audit verify {path}`, then move it aside; the gateway starts a new chain.",
        )
    line = tail[:-1].rsplit(b"\n", 1)[-1]
    try:
        record = json.loads(line)
        previous = record["hash"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditLogError(
            f"{path}: the last line is not an audit record",
            hint=f"Check the file with `appliance audit verify {path}`, then move it aside; the gateway starts a new chain.",
        ) from exc
    if not isinstance(previous, str) or len(previous) != 64:
        raise AuditLogError(f"{path}: the last record's hash is malformed")
    return previous


class AuditLog:
    def __init__(
        self, path: Path, clock: Clock, *, fsync_interval_s: float = 1.0, fsync_batch: int = 64
    ) -> None:
        self.path = path
        self.clock = clock
        self.fsync_interval_s = fsync_interval_s
        self.fsync_batch = fsync_batch
        # O_NONBLOCK: a FIFO put at the path must not block the start (it is refused below).
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self._fd = os.open(path, flags | os.O_NONBLOCK, FILE_MODE)
        except OSError as exc:
            raise AuditLogError(
                f"{path}: cannot open the audit log for appending: {exc.strerror or exc}",
                hint="The directory must exist and be writable by the gateway's user;"
                " the path must be a regular file.",
            ) from exc
        mode = os.fstat(self._fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(self._fd)
            raise AuditLogError(
                f"{path}: expected the audit log as a regular file, found {file_kind(mode)}",
                hint="Give the path of a regular file (or of none: the gateway creates it).",
            )
        os.set_blocking(self._fd, True)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise AuditLogError(
                f"{path}: another process holds the audit log (a second gateway?)",
                hint="One gateway process per audit log: the chain must not interleave.",
            ) from exc
        try:
            os.fchmod(self._fd, FILE_MODE)
            read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                self._previous = last_hash(read_fd, path)
            finally:
                os.close(read_fd)
        except OSError as exc:
            os.close(self._fd)
            raise AuditLogError(f"{path}: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(self._fd)
            raise
        self._pending = 0
        self._last_sync = clock.monotonic()
        self._syncing = False
        self.records = 0

    @property
    def last_hash(self) -> str:
        return self._previous

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one chained record (``at`` added); returns it as written."""
        at = datetime.fromtimestamp(self.clock.time(), UTC).isoformat(timespec="milliseconds")
        entry = chain_record({"at": at, **record}, self._previous)
        data = (json.dumps(entry, sort_keys=True) + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk; the chain on disk is now damaged
            raise AuditLogError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        self._previous = entry["hash"]
        self._pending += 1
        self.records += 1
        return entry

    @property
    def sync_due(self) -> bool:
        if not self._pending or self._syncing:
            return False
        elapsed = self.clock.monotonic() - self._last_sync
        return self._pending >= self.fsync_batch or elapsed >= self.fsync_interval_s

    async def sync(self) -> None:
        """fsync in a worker thread; concurrent callers do not queue a second one."""
        if self._syncing or not self._pending:
            return
        self._syncing = True
        pending = self._pending
        try:
            await anyio.to_thread.run_sync(os.fsync, self._fd)
            self._pending -= pending
            self._last_sync = self.clock.monotonic()
        finally:
            self._syncing = False

    async def sync_periodically(self) -> None:
        """Run for the server's life: nothing stays unsynced longer than the interval."""
        while True:
            await anyio.sleep(self.fsync_interval_s)
            try:
                await self.sync()
            except OSError as exc:
                log.error("audit log fsync failed: %s", exc)

    def close(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)  # also releases the flock
        self._fd = -1
