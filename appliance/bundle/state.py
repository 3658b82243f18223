"""What a site has accepted: the last bundle per name/channel, and its current trusted root.

The state directory (``--state``, on a host ``/var/lib/appliance/trust``) holds
``accepted.json`` (per ``name/channel``: version, content digest, when),
``root.json`` (the newest trusted root after rotations) and ``audit.jsonl``
(downgrades accepted with ``--allow-downgrade``). Writes are atomic and taken
under an exclusive lock, and only after a bundle verified completely. A state
file that cannot be read is a verification failure: freshness must never
silently reset.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root

from appliance.bundle.format import MAX_ROOT_BYTES
from appliance.bundle.trust import parse_root, read_bounded, strict_json, to_bytes, write_atomic
from appliance.errors import MetadataError

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
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
        accepted = Accepted(version, digest, datetime.now(UTC).isoformat(timespec="seconds"))
        data = self._load()
        data[f"{name}/{channel}"] = asdict(accepted)
        if root is not None:
            write_atomic(self.directory / ROOT, to_bytes(root), 0o644)
        write_atomic(
            self.directory / ACCEPTED,
            (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
            0o644,
        )
        return accepted

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
