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
- callers pass only what may be recorded: no token, no key, no secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from appliance.audit import GENESIS, chain_record
from appliance.errors import InputError
from appliance.gateway.clock import Clock

log = logging.getLogger("appliance.gateway")

FILE_MODE = 0o640
_TAIL_BLOCK = 64 * 1024


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
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self._fd = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            raise AuditLogError(
                f"{path}: cannot open the audit log for appending: {exc.strerror or exc}",
                hint="The directory must exist and be writable by the gateway's user.",
            ) from exc
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
