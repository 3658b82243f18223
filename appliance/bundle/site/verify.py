"""Bundle verification: ordered, all-or-nothing, and the only way to a ``VerifiedBundle``.

Order (each step runs only if every earlier one passed; nothing is recorded
before the last one passes):

1. trusted root: the operator's anchor (``--trust``), strictly parsed and
   signed by its own threshold, then walked forward through the chain of
   rotations the state keeps (``roots/N.root.json``), each signed by the
   previous root's and its own threshold; a kept root that does not descend
   from the anchor is refused (``TrustAnchorError``), never preferred;
2. root rotations carried by the bundle (``metadata/root/N.root.json``), each
   signed by the previous and its own threshold; the final root not expired;
3. the manifest: bounded, strict, signed by the root's targets threshold
   (unsigned, unknown key, bad signature and too few signatures are distinct
   errors);
4. expiry of the manifest by the local clock;
5. payload and file records well formed (paths, shards, media layout);
6. freshness against the state: rollback refused unless ``allow_downgrade``
   (audited), same version with other content refused, implausible version
   jumps refused unless ``allow_version_jump``;
7. exact file set, no links or special files, sizes;
8. SHA-256 of every shard, in parallel;
9. only then: the state keeps the roots the bundle rotated to (oldest first)
   and records the accepted version. The record is prepared beside the state
   first; an install commits it right after the release's rename and removes
   the release if the commit fails, so the accepted version is recorded if and
   only if the release is in place (``deferred_acceptance`` lets a deploy do
   the same after its hosts).

``VerifiedBundle`` can only be built here (a private token guards its
constructor), so code that deploys must have gone through ``verify_bundle``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tuf.api.metadata import Metadata, Root

from appliance.bundle.format import (
    FILES_DIR,
    MAX_VERSION_JUMP,
    METADATA_DIR,
    ROOT_HISTORY_DIR,
    TARGETS_FILE,
    FileRecord,
)
from appliance.bundle.manifest import (
    bundle_contents,
    content_digest,
    parse_targets,
    read_targets_bytes,
    targets_path,
)
from appliance.bundle.payload import Payload
from appliance.bundle.site import contents
from appliance.bundle.site.install import install_files, rename_noreplace
from appliance.bundle.site.state import Accepted, PendingRecord, TrustState
from appliance.bundle.trust import (
    check_not_expired,
    check_signatures,
    load_trusted_root,
    walk_rotations,
    write_atomic,
)
from appliance.errors import (
    FileSetError,
    InputError,
    RollbackError,
    SameVersionConflictError,
    StateWriteError,
    VersionJumpError,
)
from appliance.events import Event, Finished, Started, Warned

_TOKEN = object()


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    allow_downgrade: bool = False
    allow_version_jump: bool = False
    now: datetime | None = None
    workers: int | None = None


@dataclass(frozen=True)
class VerifiedBundle:
    directory: Path
    name: str
    channel: str
    version: int
    expires: datetime
    content_digest: str
    signers: tuple[str, ...]
    root_version: int
    payload: Payload
    records: tuple[FileRecord, ...]
    previous_version: int | None
    # The exact bytes of ``metadata/targets.json`` that passed verification: what a
    # consumer reads the manifest from, never the file again (it may have changed since).
    manifest_bytes: bytes = field(repr=False)
    _token: object = field(repr=False, compare=False, default=None)
    # What step 9 needs when the caller records the acceptance later (a deploy).
    _checked: Checked | None = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError(
                "a VerifiedBundle is only made by appliance.bundle.site.verify.verify_bundle"
            )

    @property
    def files_dir(self) -> Path:
        return self.directory / FILES_DIR


def _trusted_root(trust_path: Path, state: TrustState | None) -> Metadata[Root]:
    """The anchor, walked forward through the chain the state keeps; never a kept root that
    does not descend from the anchor (``TrustAnchorError``)."""
    anchor = load_trusted_root(trust_path)
    if state is None:
        return anchor
    newest, _walked = state.root_from(anchor, str(trust_path))
    return newest


@dataclass(frozen=True, slots=True)
class Checked:
    """Everything established before the content is hashed (steps 1-7)."""

    root_md: Metadata[Root]
    rotated: bool
    manifest_bytes: bytes  # exactly what was verified; an install writes these bytes
    version: int
    expires: datetime
    payload: Payload
    records: list[FileRecord]
    digest: str
    signers: list[str]
    previous: Accepted | None
    state: TrustState | None
    # The roots the bundle rotated to past the state's chain, oldest first: kept at step 9.
    rotations: tuple[Metadata[Root], ...] = ()


def check_signed_manifest(
    bundle_dir: Path,
    trust_path: Path,
    state_dir: Path | None,
    options: VerifyOptions = VerifyOptions(),
) -> Generator[Event, None, Checked]:
    """Steps 1-6: trust, rotations, the signed manifest, expiry, freshness. No file is read
    besides ``metadata/``, so a split set (metadata + parts) can be checked before joining."""
    state = TrustState(state_dir) if state_dir is not None else None
    # 1-2: the root of trust, rotated forward by what the bundle carries.
    trusted = _trusted_root(trust_path, state)
    rotations = walk_rotations(trusted, bundle_dir / ROOT_HISTORY_DIR)
    rotated = [md.signed.version for md in rotations]
    root_md = rotations[-1] if rotations else trusted
    root = root_md.signed
    check_not_expired(root.expires, f"the trusted root (version {root.version})", options.now)
    if rotated:
        yield Warned(
            "verify", f"trusted root rotated to version {root.version} (applied {rotated})"
        )
    # 3-5: the manifest.
    raw = read_targets_bytes(bundle_dir)
    md = parse_targets(raw, f"bundle manifest {targets_path(bundle_dir)}")
    signers = check_signatures(root, "targets", md, "the bundle manifest")
    check_not_expired(md.signed.expires, f"bundle version {md.signed.version}", options.now)
    payload, records = bundle_contents(md)
    digest = content_digest(md)
    version = md.signed.version
    # 6: freshness.
    previous = state.accepted(payload.name, payload.channel) if state is not None else None
    if previous is not None:
        yield from _check_freshness(payload, version, digest, previous, options)
    return Checked(
        root_md,
        bool(rotated),
        raw,
        version,
        md.signed.expires,
        payload,
        records,
        digest,
        signers,
        previous,
        state,
        tuple(rotations),
    )


def _check_metadata(
    bundle_dir: Path, trust_path: Path, state_dir: Path | None, options: VerifyOptions
) -> Generator[Event, None, Checked]:
    """Steps 1-7: the signed manifest, then the exact file set and sizes."""
    if not (bundle_dir / FILES_DIR).is_dir() or (bundle_dir / FILES_DIR).is_symlink():
        raise FileSetError(
            f"{bundle_dir} has no files/ directory; is it a bundle (or a split set: use `bundle join`)?"
        )
    checked = yield from check_signed_manifest(bundle_dir, trust_path, state_dir, options)
    contents.check_file_set(bundle_dir / FILES_DIR, checked.records)
    return checked


def _check_freshness(
    payload: Payload, version: int, digest: str, previous: Accepted, options: VerifyOptions
) -> Generator[Event, None, None]:
    where = f"{payload.name}/{payload.channel}"
    if version < previous.version:
        if not options.allow_downgrade:
            raise RollbackError(
                f"{where} version {version} is older than version {previous.version} accepted here on "
                f"{previous.accepted_at}; refusing a rollback",
                hint="If the downgrade is intended, re-run with --allow-downgrade (it is recorded in the audit log).",
            )
        yield Warned(
            "verify", f"downgrade from {previous.version} to {version} allowed by --allow-downgrade"
        )
    elif version == previous.version and digest != previous.content_digest:
        raise SameVersionConflictError(
            f"{where} version {version} was accepted before with different content "
            f"({previous.content_digest[:16]}... then, {digest[:16]}... now); a version number names one content",
            hint="Ask the release engineers for a bundle with a new version number.",
        )
    elif version > previous.version + MAX_VERSION_JUMP and not options.allow_version_jump:
        raise VersionJumpError(
            f"{where} jumps from version {previous.version} to {version}; more than {MAX_VERSION_JUMP} ahead "
            "would lock out later updates if it was a mistake",
            hint="If intended, re-run with --allow-version-jump.",
        )


@contextmanager
def _state_update(checked: Checked) -> Iterator[PendingRecord | None]:
    """Step 9, prepared: under the state's lock, the record written beside the state
    (nothing replaced yet). The caller commits it once the bundle is in place; leaving
    without a commit (an error, an interrupt) removes every trace of it."""
    payload, previous, state = checked.payload, checked.previous, checked.state
    if state is None:
        yield None
        return
    audit = None
    if previous is not None and checked.version < previous.version:
        audit = {
            "event": "downgrade-accepted",
            "bundle": payload.name,
            "channel": payload.channel,
            "from": previous.version,
            "to": checked.version,
            "content_digest": checked.digest,
        }
    with state.locked():
        pending = state.prepare(
            payload.name,
            payload.channel,
            checked.version,
            checked.digest,
            checked.rotations,
            audit,
        )
        try:
            yield pending
        finally:
            pending.abort()  # nothing left to undo after a commit


def _proof(checked: Checked, directory: Path, *, deferred: bool = False) -> VerifiedBundle:
    """The ``VerifiedBundle`` for ``directory``; ``deferred``: step 9 is the caller's."""
    payload, previous = checked.payload, checked.previous
    return VerifiedBundle(
        directory=directory,
        name=payload.name,
        channel=payload.channel,
        version=checked.version,
        expires=checked.expires,
        content_digest=checked.digest,
        signers=tuple(checked.signers),
        root_version=checked.root_md.signed.version,
        payload=payload,
        records=tuple(checked.records),
        previous_version=previous.version if previous is not None else None,
        manifest_bytes=checked.manifest_bytes,
        _token=_TOKEN,
        _checked=checked if deferred else None,
    )


@contextmanager
def deferred_acceptance(verified: VerifiedBundle) -> Iterator[PendingRecord | None]:
    """Step 9 for a bundle verified with ``record=False``: the state record is prepared
    (state writable, space found) on entry; the caller commits it once the release is
    in place, or leaves without committing and the state stays as it was."""
    if verified._checked is None:
        raise ValueError("deferred_acceptance needs a bundle verified with record=False")
    with _state_update(verified._checked) as pending:
        yield pending


def _summary(checked: Checked, what: str) -> str:
    root = checked.root_md.signed
    summary = (
        f"{checked.payload.name} {checked.payload.channel} version {checked.version}: {len(checked.records)} files "
        f"{what}, signed by {len(checked.signers)} of threshold {root.roles['targets'].threshold}"
    )
    reuses = checked.payload.reuses
    if reuses is not None:
        # An adapter-only bundle: what it names but does not carry is checked on each host.
        summary += (
            f"; adapter-only: reuses {len(reuses.files)} files "
            f"({sum(f.length for f in reuses.files)} bytes) of {reuses.bundle} version "
            f"{reuses.version} by their signed digests, checked on each host against the "
            "release in place"
        )
    return summary


def verify_bundle(
    bundle_dir: Path,
    trust_path: Path,
    state_dir: Path | None = None,
    options: VerifyOptions = VerifyOptions(),
    *,
    record: bool = True,
) -> Generator[Event, None, VerifiedBundle]:
    """Verify a bundle in place (steps 1-9). ``record=False``: the state is only read;
    the caller records the acceptance with ``deferred_acceptance`` (a deploy, after
    its hosts serve the release)."""
    if state_dir is not None and record:
        from appliance.output_paths import writable_directory

        writable_directory(state_dir, "--state")  # before hashing, not after
    yield Started("verify")
    checked = yield from _check_metadata(bundle_dir, trust_path, state_dir, options)
    yield from contents.verify_contents(
        bundle_dir / FILES_DIR, checked.records, workers=options.workers
    )
    if record:
        try:
            with _state_update(checked) as pending:
                if pending is not None:
                    pending.commit()
        except StateWriteError as exc:
            raise StateWriteError(
                f"{exc.message}: bundle version {checked.version} verified but was NOT recorded "
                "as accepted",
                hint=exc.hint,
            ) from exc
    verified = _proof(checked, bundle_dir, deferred=not record)
    yield Finished("verify", _summary(checked, "verified"))
    return verified


def install_bundle(
    bundle_dir: Path,
    trust_path: Path,
    dest: Path,
    state_dir: Path | None = None,
    options: VerifyOptions = VerifyOptions(),
) -> Generator[Event, None, VerifiedBundle]:
    """Verify-before-write: steps 1-7 on the medium, then copy into staging while hashing
    (step 8 on the bytes actually written), rename into ``dest``, and only then step 9.
    The result describes the installed, read-only copy at ``dest``.

    All or nothing, the state included: the state record is prepared before the
    rename and committed right after it; if it cannot be written the release is
    removed again, so ``dest`` exists if and only if the state records it."""
    from appliance.output_paths import new_directory, writable_directory

    new_directory(dest, "--dest")  # before any hashing
    if state_dir is not None:
        writable_directory(state_dir, "--state")
    yield Started("install")
    checked = yield from _check_metadata(bundle_dir, trust_path, state_dir, options)
    if dest.exists() or dest.is_symlink():
        raise InputError(
            f"{dest} already exists; a release directory is written once and never changed"
        )
    # The whole release is staged next to dest and appears in one rename.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.release-", dir=dest.parent))
    try:
        metadata = staging / METADATA_DIR
        metadata.mkdir()
        write_atomic(metadata / Path(TARGETS_FILE).name, checked.manifest_bytes, 0o444)
        yield from install_files(
            bundle_dir / FILES_DIR, checked.records, staging / FILES_DIR, workers=options.workers
        )
        metadata.chmod(0o555)
        staging.chmod(0o555)
        with _state_update(checked) as pending:
            rename_noreplace(staging, dest)  # dest may have appeared meanwhile: never replace it
            try:
                if pending is not None:
                    pending.commit()
            except BaseException:
                _remove_tree(dest)  # not recorded: not installed
                raise
    except StateWriteError as exc:
        _remove_tree(staging)
        raise StateWriteError(
            f"{exc.message}: nothing was installed ({dest} was not left behind)", hint=exc.hint
        ) from exc
    except BaseException:
        _remove_tree(staging)
        raise
    verified = _proof(checked, dest)
    yield Finished("install", _summary(checked, f"installed into {dest}"))
    return verified


def _remove_tree(path: Path) -> None:
    """Remove a staging tree even though it was made read-only."""
    if not path.exists():
        return
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
    path.chmod(0o700)
    shutil.rmtree(path)
