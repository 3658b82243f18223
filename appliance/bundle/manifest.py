"""The signed manifest (``metadata/targets.json``): write, read strictly, sign.

TUF targets metadata: ``version`` is the bundle version, ``expires`` its
expiry, ``targets`` every file (length, ``sha256``, and for files larger than
one shard ``shard_size`` + ``shards``), and the appliance payload under the
``appliance`` key of the signed part. Reading is strict and bounded: duplicate
JSON keys, unknown fields, delegations, unsafe or colliding paths, shard lists
that do not tile the file, and media layouts that do not tile the content
stream are all refused before anything else looks at the bundle. Types are
exact: the TUF fields by ``signed_types.py`` (version and lengths integers,
expiry ``YYYY-MM-DDTHH:MM:SSZ``), ``shard_size`` here, the payload by its
schema validated strictly (an integer is a JSON integer, never ``true``,
``"2"`` or ``2.0``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import SerializationError
from tuf.api.serialization.json import CanonicalJSONSerializer

from appliance.bundle.format import (
    MAX_FILES,
    MAX_METADATA_BYTES,
    MAX_VERSION,
    PAYLOAD_KEY,
    TARGETS_FILE,
    FileRecord,
    check_no_collisions,
    check_relpath,
    expected_shard_count,
)
from appliance.bundle.payload import Payload
from appliance.bundle.trust import (
    describe_cause,
    parse_metadata,
    read_bounded,
    sign_metadata,
    to_bytes,
    write_atomic,
)
from appliance.errors import MetadataError, UnsafePathError
from appliance.schema_errors import format_validation_error

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
MIN_SHARD_SIZE = 64 * 1024
MAX_SHARD_SIZE = 4 * 1024**3


def targets_path(bundle_dir: Path) -> Path:
    return bundle_dir / TARGETS_FILE


def write_unsigned(
    bundle_dir: Path,
    *,
    payload: Payload,
    records: Sequence[FileRecord],
    version: int,
    expires: datetime,
) -> Path:
    """Write ``metadata/targets.json`` without signatures (``appliance bundle sign`` adds them)."""
    targets = Targets(
        version=version,
        expires=expires.replace(microsecond=0),
        unrecognized_fields={PAYLOAD_KEY: payload.model_dump(mode="json")},
    )
    for record in sorted(records, key=lambda r: r.path):
        custom: dict[str, Any] = {}
        if record.shards:
            custom = {"shard_size": record.shard_size, "shards": list(record.shards)}
        targets.targets[record.path] = TargetFile(
            length=record.length,
            hashes={"sha256": record.sha256},
            path=record.path,
            unrecognized_fields=custom,
        )
    md = Metadata(targets)
    bundle_contents(md)  # never write what the reader would refuse
    content_digest(md)  # ... or what could not be signed (canonical JSON: no floats)
    path = targets_path(bundle_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, to_bytes(md))
    return path


def read_targets(bundle_dir: Path) -> Metadata[Targets]:
    return parse_targets(
        read_targets_bytes(bundle_dir), f"bundle manifest {targets_path(bundle_dir)}"
    )


def read_targets_bytes(bundle_dir: Path) -> bytes:
    return read_bounded(targets_path(bundle_dir), MAX_METADATA_BYTES, "bundle manifest")


def parse_targets(data: bytes, what: str) -> Metadata[Targets]:
    return parse_metadata(data, what, Targets)


def content_digest(md: Metadata[Targets]) -> str:
    """SHA-256 of the canonical signed part: the bundle's content identity (signatures excluded)."""
    try:
        canonical = CanonicalJSONSerializer().serialize(md.signed)
    except SerializationError as exc:
        raise MetadataError(
            f"the manifest cannot be put in canonical JSON for signing: {describe_cause(exc)}"
        ) from exc
    return hashlib.sha256(canonical).hexdigest()


def bundle_contents(md: Metadata[Targets]) -> tuple[Payload, list[FileRecord]]:
    """Validate the signed part and return the payload and the file records (sorted by path)."""
    signed = md.signed
    if not 1 <= signed.version <= MAX_VERSION:
        raise MetadataError(f"bundle version {signed.version} is outside 1..{MAX_VERSION}")
    if signed.delegations is not None:
        raise MetadataError(
            "the manifest has delegations; appliance bundles are signed by the top-level targets role only"
        )
    extra = set(signed.unrecognized_fields) - {PAYLOAD_KEY}
    if extra:
        raise MetadataError(f"the manifest has unknown signed fields: {', '.join(sorted(extra))}")
    if PAYLOAD_KEY not in signed.unrecognized_fields:
        raise MetadataError("the manifest has no appliance payload (name, channel, media layout)")
    try:
        # Strict, from JSON: an integer field takes a JSON integer only (not true, "2" or 2.0).
        payload = Payload.model_validate_json(
            json.dumps(signed.unrecognized_fields[PAYLOAD_KEY]), strict=True
        )
    except ValidationError as exc:
        raise MetadataError(
            f"the manifest's appliance payload is invalid:\n{format_validation_error(exc, Payload)}"
        ) from exc
    if len(signed.targets) > MAX_FILES:
        raise MetadataError(
            f"the manifest lists {len(signed.targets)} files; the limit is {MAX_FILES}"
        )
    records = [_record(path, target) for path, target in sorted(signed.targets.items())]
    check_no_collisions([r.path for r in records])
    _check_media(payload, records)
    _check_wheel_files(payload, records)
    return payload, records


def _record(path: str, target: TargetFile) -> FileRecord:
    try:
        check_relpath(path)
    except UnsafePathError as exc:
        raise UnsafePathError(f"the manifest lists an unsafe path: {exc.message}") from exc
    if set(target.hashes) != {"sha256"} or not _HEX64.match(target.hashes["sha256"]):
        raise MetadataError(
            f"{path}: expected exactly one lowercase hex sha256 digest, found {target.hashes!r}"
        )
    custom = dict(target.unrecognized_fields)
    shard_size = custom.pop("shard_size", None)
    shards = custom.pop("shards", None)
    if custom:
        raise MetadataError(f"{path}: unknown fields {', '.join(sorted(custom))}")
    if (shard_size is None) != (shards is None):
        raise MetadataError(f"{path}: shard_size and shards must be given together")
    if shard_size is None or shards is None:
        if target.length > MAX_SHARD_SIZE:
            raise MetadataError(
                f"{path}: {target.length} bytes without shard digests (the limit is {MAX_SHARD_SIZE})"
            )
        return FileRecord(path=path, length=target.length, sha256=target.hashes["sha256"])
    if (
        not isinstance(shard_size, int)
        or isinstance(shard_size, bool)
        or not MIN_SHARD_SIZE <= shard_size <= MAX_SHARD_SIZE
    ):
        raise MetadataError(
            f"{path}: shard_size must be an integer from {MIN_SHARD_SIZE} to {MAX_SHARD_SIZE}"
        )
    if not isinstance(shards, list) or not all(
        isinstance(s, str) and _HEX64.match(s) for s in shards
    ):
        raise MetadataError(f"{path}: shards must be a list of lowercase hex sha256 digests")
    expected = expected_shard_count(target.length, shard_size)
    if len(shards) != expected or expected < 2:
        raise MetadataError(
            f"{path}: {len(shards)} shard digest(s) do not tile {target.length} bytes in shards of "
            f"{shard_size} (expected {expected}, and shards only for files larger than one shard)"
        )
    return FileRecord(path, target.length, target.hashes["sha256"], shard_size, tuple(shards))


def _check_wheel_files(payload: Payload, records: list[FileRecord]) -> None:
    """Every wheel a wheel set names is a signed file, carried or reused from the base release
    (adapter-only bundles): a deploy installs from these paths. A reused file is not also
    carried."""
    listed = {r.path for r in records}
    reused = set() if payload.reuses is None else {f.path for f in payload.reuses.files}
    if both := sorted(listed & reused):
        raise MetadataError(
            "the payload reuses files the manifest also carries: " + ", ".join(both[:5])
        )
    listed |= reused
    for key, wheels in (
        ("wheels", payload.wheels),
        ("gateway", payload.gateway),
        ("installer", payload.installer),
    ):
        if wheels is None:
            continue
        missing = [path for path in wheels.files if path not in listed]
        if missing:
            raise MetadataError(
                f"the payload's {key} names files the manifest does not list: " + ", ".join(missing)
            )


def _check_media(payload: Payload, records: list[FileRecord]) -> None:
    total = sum(r.length for r in records)
    media = payload.media
    offset = 0
    for position, (index, start, length, _digest) in enumerate(media.parts, start=1):
        last = position == len(media.parts)
        if (
            index != position
            or start != offset
            or length < 0
            or length > media.part_size
            or (not last and length != media.part_size)
        ):
            raise MetadataError(
                f"media part {index} (offset {start}, {length} bytes) does not tile the content stream"
            )
        offset += length
    if offset != total or not media.parts:
        raise MetadataError(f"the media parts cover {offset} bytes, the files hold {total}")


def sign_bundle(bundle_dir: Path, signer: Signer) -> str:
    """Add (or renew) one signature to the manifest; returns the signer's keyid."""
    md = read_targets(bundle_dir)
    bundle_contents(md)  # never sign malformed metadata
    sign_metadata(md, signer)
    write_atomic(targets_path(bundle_dir), to_bytes(md))
    return signer.public_key.keyid


def add_signatures(bundle_dir: Path, others: Sequence[Path]) -> list[str]:
    """Merge signatures made independently on other copies of this bundle's manifest.

    Each other manifest must have exactly the same signed content (same content
    digest); its signatures are added (a keyid already present is kept as is).
    Returns the keyids added. Validity against the trusted root is for verify.
    """
    md = read_targets(bundle_dir)
    bundle_contents(md)
    mine = content_digest(md)
    added: list[str] = []
    for other_path in others:
        what = f"manifest {other_path}"
        other = parse_targets(read_bounded(other_path, MAX_METADATA_BYTES, "manifest"), what)
        theirs = content_digest(other)
        if theirs != mine:
            raise MetadataError(
                f"{what} signs other content ({theirs[:16]}...) than {targets_path(bundle_dir)} ({mine[:16]}...); "
                "only signatures over the same bundle can be merged"
            )
        for keyid, signature in other.signatures.items():
            if keyid not in md.signatures:
                md.signatures[keyid] = signature
                added.append(keyid)
    write_atomic(targets_path(bundle_dir), to_bytes(md))
    return added
