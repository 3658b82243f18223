"""What a site has accepted: the last bundle per name/channel, and its current trusted root.

The state directory (``--state``, on a host ``/var/lib/appliance/trust``) holds
``accepted.json`` (per ``name/channel``: version, content digest, when),
``root.json`` (the newest trusted root after rotations) and ``audit.jsonl``
(downgrades accepted with ``--allow-downgrade``). Writes are taken under an
exclusive lock, and only after a bundle verified completely. A state file that
cannot be read is a verification failure: freshness must never silently reset.

All or nothing: a record is prepared first (every new file written to a temp
file beside its target and fsync-ed, the audit line appended), then committed
by renames (``root.json``, then ``accepted.json``). A failure while preparing
removes the temp files and the audit line; a failure while committing puts the
old ``root.json`` back. Either way the state is byte-identical to before and
``StateWriteError`` says why, so a caller that put a release in place (install,
deploy) can take it back: the accepted version is recorded if and only if the
release is in place.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root

from appliance.bundle.format import MAX_ROOT_BYTES
from appliance.bundle.trust import parse_root, read_bounded, strict_json, to_bytes, write_atomic
from appliance.errors import MetadataError, StateWriteError

ACCEPTED = "accepted.json"
ROOT = "root.json"
AUDIT = "audit.jsonl"
LOCK = ".lock"


@dataclass(frozen=True, slots=True)
class Accepted:
    version: int
    content_digest: str
    accepted_at: str


class TrustState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._write_error(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def root(self) -> Metadata[Root] | None:
        path = self.directory / ROOT
        if not path.exists():
            return None
        return parse_root(read_bounded(path, MAX_ROOT_BYTES, "state root"), f"state root {path}")

    def accepted(self, name: str, channel: str) -> Accepted | None:
        entry = self._load().get(f"{name}/{channel}")
        if entry is None:
            return None
        try:
            return Accepted(
                int(entry["version"]), str(entry["content_digest"]), str(entry["accepted_at"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(
                f"state file {self.directory / ACCEPTED} has a malformed entry for {name}/{channel}"
            ) from exc

    def _load(self) -> dict[str, Any]:
        path = self.directory / ACCEPTED
        if not path.exists():
            return {}
        data = strict_json(read_bounded(path, MAX_ROOT_BYTES, "state file"), f"state file {path}")
        if not isinstance(data, dict):
            raise MetadataError(f"state file {path} is not a JSON object; restore it from backup")
        return data

    def record(
        self, name: str, channel: str, version: int, digest: str, root: Metadata[Root] | None
    ) -> Accepted:
        """Prepare and commit at once (see ``prepare``); the caller holds ``locked()``."""
        pending = self.prepare(name, channel, version, digest, root)
        return pending.commit()

    def prepare(
        self,
        name: str,
        channel: str,
        version: int,
        digest: str,
        root: Metadata[Root] | None,
        audit: dict[str, Any] | None = None,
    ) -> PendingRecord:
        """Write everything a record needs beside its targets; replace nothing yet.
        The caller holds ``locked()`` until it commits or aborts."""
        accepted = Accepted(version, digest, datetime.now(UTC).isoformat(timespec="seconds"))
        data = self._load()
        data[f"{name}/{channel}"] = asdict(accepted)
        pending = PendingRecord(self, accepted)
        try:
            if root is not None:
                pending.stage(ROOT, to_bytes(root))
            pending.stage(ACCEPTED, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
            if audit is not None:
                pending.audit_size = _size_or_none(self.directory / AUDIT)
                pending.audited = True
                self.audit(audit)
        except BaseException as exc:
            pending.abort()
            if isinstance(exc, OSError):
                raise self._write_error(exc) from exc
            raise
        return pending

    def _write_error(self, exc: OSError) -> StateWriteError:
        from appliance.output_paths import hint_for, reason

        return StateWriteError(
            f"--state {self.directory}: the trust state could not be written ({reason(exc)}); "
            "it was left as it was",
            hint=hint_for(exc, "Check the state directory (a writable directory) and try again."),
        )

    def audit(self, record: dict[str, Any]) -> None:
        line = json.dumps(
            {"at": datetime.now(UTC).isoformat(timespec="seconds"), **record}, sort_keys=True
        )
        fd = os.open(
            self.directory / AUDIT, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _size_or_none(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


class PendingRecord:
    """A prepared state record: temp files written, nothing replaced until ``commit``."""

    def __init__(self, state: TrustState, accepted: Accepted) -> None:
        self.state = state
        self.accepted = accepted
        self.staged: list[tuple[Path, Path]] = []  # (temp, target) in commit order
        self.audited = False  # an audit line was appended (removed again by ``abort``)
        self.audit_size: int | None = None  # the audit log's size before it (None: no log)

    def stage(self, target_name: str, data: bytes) -> None:
        target = self.state.directory / target_name
        temp = target.with_name(f".{target_name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644)
        self.staged.append((temp, target))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def commit(self) -> Accepted:
        """Rename the temp files into place; on failure put back what was replaced."""
        replaced: list[tuple[Path, bytes | None]] = []
        try:
            for temp, target in self.staged:
                old = target.read_bytes() if target.exists() else None
                os.replace(temp, target)
                replaced.append((target, old))
            _fsync_dir(self.state.directory)
        except BaseException as exc:
            for target, old in reversed(replaced):
                if old is None:
                    target.unlink(missing_ok=True)
                else:
                    write_atomic(target, old, 0o644)
            self.abort()
            if isinstance(exc, OSError):
                raise self.state._write_error(exc) from exc
            raise
        self.staged, self.audited = [], False
        return self.accepted

    def abort(self) -> None:
        """Remove the temp files and the audit line; the state is as it was."""
        for temp, _ in self.staged:
            temp.unlink(missing_ok=True)
        self.staged = []
        if self.audited:
            path = self.state.directory / AUDIT
            if self.audit_size is None:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, self.audit_size)
            self.audited = False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
