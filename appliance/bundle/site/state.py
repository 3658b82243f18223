"""What a site has accepted: the last bundle per name/channel, and the roots it rotated to.

The state directory (``--state``, on a host ``/var/lib/appliance/trust``) holds
``accepted.json`` (per ``name/channel``: version, content digest, when),
``roots/N.root.json`` (every root version N this site accepted past its anchor
through rotations carried by bundles) and ``audit.jsonl`` (downgrades accepted
with ``--allow-downgrade``, re-anchorings). Writes are atomic and taken under an
exclusive lock, and only after a bundle verified completely. A state file that
cannot be read is a verification failure: freshness must never silently reset.

The operator's root (``--trust``) is the anchor; the state never outranks it.
``root_from(anchor)`` walks the kept chain forward from the anchor's version,
each step checked like a rotation in a bundle (signed by the previous root's
root threshold and its own). A kept root of the anchor's version with other
content, a kept root past the anchor that the walk cannot reach (a gap), a
step that fails its signatures, a stray file in ``roots/``, or a state in the
old form (one ``root.json``, no chain) are refused with ``TrustAnchorError``,
whose hint names the way to re-anchor a site on purpose: ``reanchor`` (``appliance
trust reanchor``) moves the kept roots into a dated backup directory inside the
state and appends an audit record; accepted versions stay (rollback protection
survives a re-anchoring).

All or nothing: a record is prepared first (every new file written to a temp
file beside its target and fsync-ed, the audit line appended), then committed
by renames (the kept roots oldest first, then ``accepted.json``). A failure
while preparing removes the temp files and the audit line; a failure while
committing removes the roots it had added. Either way the state is
byte-identical to before and ``StateWriteError`` says why, so a caller that
put a release in place (install, deploy) can take it back: the accepted
version is recorded if and only if the release is in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root

from appliance.bundle.format import MAX_ROOT_BYTES
from appliance.bundle.trust import (
    check_rotation,
    parse_root,
    read_bounded,
    signed_digest,
    strict_json,
    to_bytes,
    write_atomic,
)
from appliance.errors import MetadataError, StateWriteError, TrustAnchorError, VerificationError
from appliance.safe_fs import CREATE_FLAGS

ACCEPTED = "accepted.json"
LEGACY_ROOT = "root.json"  # the old form: one newest root, no chain; refused, re-anchor to move it
ROOTS_DIR = "roots"
AUDIT = "audit.jsonl"
LOCK = ".lock"
BACKUP_PREFIX = "reanchored-"
MAX_KEPT_ROOTS = 1000
_KEPT_NAME = re.compile(r"^([1-9][0-9]{0,9})\.root\.json\Z")


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

    def reanchor_hint(self, anchor_path: str = "ROOT") -> str:
        return (
            f"If {anchor_path} is the root this site must trust from now on (for example after a "
            f"key compromise), re-anchor on purpose: `appliance trust reanchor --state {self.directory} "
            f"--trust {anchor_path}` moves the kept roots into {self.directory}/{BACKUP_PREFIX}<time>/ "
            "and writes an audit record. Otherwise pass the root this state was built from."
        )

    def kept_roots(self, anchor_path: str = "ROOT") -> dict[int, Path]:
        """The kept roots by version (``roots/N.root.json``); nothing else may be there."""
        hint = self.reanchor_hint(anchor_path)
        legacy = self.directory / LEGACY_ROOT
        if legacy.exists() or legacy.is_symlink():
            raise TrustAnchorError(
                f"the state {self.directory} keeps a trusted root in the old form ({LEGACY_ROOT}, "
                f"without the chain of rotations from an anchor); expected {ROOTS_DIR}/N.root.json "
                "for each rotation, so it cannot be checked against the root given with --trust",
                hint=hint,
            )
        roots = self.directory / ROOTS_DIR
        if not roots.exists() and not roots.is_symlink():
            return {}
        if roots.is_symlink() or not roots.is_dir():
            raise TrustAnchorError(
                f"{roots} is not a directory (found {'a symbolic link' if roots.is_symlink() else 'a file'})",
                hint=hint,
            )
        found: dict[int, Path] = {}
        with os.scandir(roots) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # a write_atomic temporary left by a crash: never a kept root
                match = _KEPT_NAME.match(entry.name)
                if match is None:
                    raise TrustAnchorError(
                        f"{roots} holds {entry.name!r}; expected only N.root.json files (N = 1, 2, ...)",
                        hint=hint,
                    )
                found[int(match[1])] = Path(entry.path)
                if len(found) > MAX_KEPT_ROOTS:
                    raise TrustAnchorError(
                        f"{roots} holds more than {MAX_KEPT_ROOTS} roots", hint=hint
                    )
        return found

    def _load_kept(self, path: Path, version: int, hint: str) -> Metadata[Root]:
        what = f"kept root {path}"
        try:
            md = parse_root(read_bounded(path, MAX_ROOT_BYTES, "kept root"), what)
        except VerificationError as exc:
            raise TrustAnchorError(exc.message, hint=hint) from exc
        if md.signed.version != version:
            raise TrustAnchorError(
                f"{what} declares version {md.signed.version}, expected {version} (its file name)",
                hint=hint,
            )
        return md

    def root_from(
        self, anchor: Metadata[Root], anchor_path: str = "ROOT"
    ) -> tuple[Metadata[Root], list[int]]:
        """The newest root reachable from ``anchor`` through the kept chain, and the versions walked.

        ``TrustAnchorError`` if a kept root of the anchor's version differs from it, a step
        fails ``check_rotation``, or a kept root past the anchor is left unreached."""
        hint = self.reanchor_hint(anchor_path)
        kept = self.kept_roots(anchor_path)
        start = anchor.signed.version
        if start in kept:
            same = self._load_kept(kept[start], start, hint)
            if signed_digest(same) != signed_digest(anchor):
                raise TrustAnchorError(
                    f"the state {self.directory} keeps a root of version {start} with other content "
                    f"({signed_digest(same)[:16]}...) than the anchor {anchor_path} "
                    f"({signed_digest(anchor)[:16]}...); the state did not grow from this anchor",
                    hint=hint,
                )
        current, walked = anchor, []
        while (path := kept.get(current.signed.version + 1)) is not None:
            version = current.signed.version + 1
            new = self._load_kept(path, version, hint)
            try:
                check_rotation(current, new, f"kept root {path}")
            except VerificationError as exc:
                raise TrustAnchorError(
                    f"the chain kept in {self.directory} does not descend from the anchor "
                    f"{anchor_path} (version {start}): {exc.message}",
                    hint=hint,
                ) from exc
            current = new
            walked.append(version)
        unreached = sorted(v for v in kept if v > current.signed.version)
        if unreached:
            raise TrustAnchorError(
                f"the state {self.directory} keeps root version(s) {', '.join(map(str, unreached))} "
                f"that do not chain from the anchor {anchor_path} (version {start}): version "
                f"{current.signed.version + 1} is missing",
                hint=hint,
            )
        return current, walked

    def _roots_to_keep(self, roots: Sequence[Metadata[Root]]) -> list[Metadata[Root]]:
        """Of the rotated roots, oldest first, those not kept yet; one kept meanwhile with
        other content is refused."""
        new: list[Metadata[Root]] = []
        for md in sorted(roots, key=lambda m: m.signed.version):
            path = self.directory / ROOTS_DIR / f"{md.signed.version}.root.json"
            if path.exists() or path.is_symlink():
                kept = self._load_kept(path, md.signed.version, self.reanchor_hint())
                if signed_digest(kept) == signed_digest(md):
                    continue
                raise TrustAnchorError(
                    f"{path} was kept meanwhile with other content than the root version "
                    f"{md.signed.version} this verification applied; verify again"
                )
            new.append(md)
        return new

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
        self,
        name: str,
        channel: str,
        version: int,
        digest: str,
        roots: Sequence[Metadata[Root]] = (),
    ) -> Accepted:
        """Prepare and commit at once (see ``prepare``); the caller holds ``locked()``."""
        pending = self.prepare(name, channel, version, digest, roots)
        return pending.commit()

    def prepare(
        self,
        name: str,
        channel: str,
        version: int,
        digest: str,
        roots: Sequence[Metadata[Root]] = (),
        audit: dict[str, Any] | None = None,
    ) -> PendingRecord:
        """Write everything a record needs beside its targets; replace nothing yet.
        ``roots``: the rotated roots to keep (each already checked as a rotation from the
        one before). The caller holds ``locked()`` until it commits or aborts."""
        accepted = Accepted(version, digest, datetime.now(UTC).isoformat(timespec="seconds"))
        data = self._load()
        data[f"{name}/{channel}"] = asdict(accepted)
        pending = PendingRecord(self, accepted)
        try:
            for md in self._roots_to_keep(roots):
                pending.stage(f"{ROOTS_DIR}/{md.signed.version}.root.json", to_bytes(md))
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

    def reanchor(self, anchor: Metadata[Root], anchor_path: str, operator: str) -> Reanchored:
        """Start the site over from ``anchor`` on purpose: the kept roots (and an old-form
        ``root.json``) move into ``reanchored-<UTC time>/`` inside the state, accepted versions
        stay, and an audit record says who did it, from which anchor, and what moved."""
        with self.locked():
            names = [
                name
                for name in (LEGACY_ROOT, ROOTS_DIR)
                if (self.directory / name).exists() or (self.directory / name).is_symlink()
            ]
            versions = self._kept_versions()
            backup = None
            if names:
                backup = self._new_backup_dir()
                for name in names:
                    os.rename(self.directory / name, backup / name)
                _fsync_dir(self.directory)
            result = Reanchored(
                anchor_version=anchor.signed.version,
                anchor_digest=signed_digest(anchor),
                moved=tuple(names),
                backup=backup,
                previous_versions=tuple(versions),
            )
            self.audit(
                {
                    "event": "reanchored",
                    "operator": operator,
                    "anchor": anchor_path,
                    "anchor_version": result.anchor_version,
                    "anchor_digest": result.anchor_digest,
                    "anchor_root_keyids": sorted(anchor.signed.roles["root"].keyids),
                    "anchor_targets_keyids": sorted(anchor.signed.roles["targets"].keyids),
                    "moved": list(names),
                    "previous_versions": list(versions),
                    "backup": None if backup is None else backup.name,
                }
            )
        return result

    def _kept_versions(self) -> list[int]:
        """Versions named by the kept roots, read from the names only (they may be damaged)."""
        roots = self.directory / ROOTS_DIR
        if roots.is_symlink() or not roots.is_dir():
            return []
        with os.scandir(roots) as entries:
            return sorted(
                int(match[1])
                for entry in entries
                if (match := _KEPT_NAME.match(entry.name)) is not None
            )

    def _new_backup_dir(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(1, 100):
            path = self.directory / f"{BACKUP_PREFIX}{stamp}{'' if attempt == 1 else f'-{attempt}'}"
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            return path
        raise TrustAnchorError(
            f"cannot make a backup directory in {self.directory}: too many exist for {stamp}"
        )


@dataclass(frozen=True, slots=True)
class Reanchored:
    anchor_version: int
    anchor_digest: str
    moved: tuple[str, ...]  # names moved out of the state directory
    backup: Path | None  # where they are now
    previous_versions: tuple[int, ...]  # versions of the kept roots moved aside


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
        self.made_dirs: list[Path] = []  # directories made for staged files (removed by ``abort``)

    def stage(self, target_name: str, data: bytes) -> None:
        target = self.state.directory / target_name
        if not target.parent.is_dir():
            target.parent.mkdir(mode=0o700)
            self.made_dirs.append(target.parent)
        temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(temp, CREATE_FLAGS, 0o644)
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
            for directory in {target.parent for _, target in self.staged}:
                _fsync_dir(directory)
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
        self.staged, self.audited, self.made_dirs = [], False, []
        return self.accepted

    def abort(self) -> None:
        """Remove the temp files and the audit line; the state is as it was."""
        for temp, _ in self.staged:
            temp.unlink(missing_ok=True)
        self.staged = []
        for directory in reversed(self.made_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        self.made_dirs = []
        if self.audited:
            path = self.state.directory / AUDIT
            if self.audit_size is None:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, self.audit_size)
            self.audited = False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
