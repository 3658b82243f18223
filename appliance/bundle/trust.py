"""The site's trusted root: who may sign bundles, and how many of them must.

A trusted root is TUF root metadata (python-tuf Metadata API). Appliance uses
two of its roles: ``root`` (who may change the root itself: rotation) and
``targets`` (who may sign bundles); TUF also requires ``snapshot`` and
``timestamp``, which get the same keys and are not used (bundles are offline:
see bundles/FORMAT.md). Invariants enforced when a root is loaded:

- strict JSON (duplicate keys refused), bounded size, ``_type`` root, every
  signed field of exactly its type (``signed_types.py``: a version is an
  integer, not ``true`` or ``2.0``; an expiry is ``YYYY-MM-DDTHH:MM:SSZ``);
- every key an Ed25519 key (the only kind appliance makes or accepts) whose
  public value is exactly 32 bytes of hex; a key's identity is those decoded
  bytes, not the spelling of its hex nor its keyid, and no key is listed
  twice (one key must never count twice towards a threshold); every keyid a
  role names is one of the root's keys, each at most once;
- 1 <= threshold <= number of keys of the role;
- signed by its own root threshold.

Rotation (TUF 5.3.4): root version N+1 is accepted only if signed by the
root threshold of root N and by its own (``check_rotation``). The same step
is used for rotations a bundle carries and for the chain the site's state
keeps (``site/state.py``), so a kept root is only ever reached from the anchor.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from securesystemslib.signer import Signer, SSlibKey
from tuf.api.metadata import Key, Metadata, Root, Targets
from tuf.api.serialization import DeserializationError, SerializationError
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

from appliance.bundle.format import MAX_ROOT_BYTES
from appliance.bundle.signed_types import check_signed_types
from appliance.errors import (
    ApplianceError,
    BadSignatureError,
    InputError,
    MetadataError,
    RootRotationError,
    ThresholdError,
    UnknownKeyError,
    UnsignedError,
    VerificationError,
)
from appliance.input_files import parse_json, read_input
from appliance.safe_fs import replace_atomically

ROLES = ("root", "targets", "snapshot", "timestamp")
S = TypeVar("S", Root, Targets)  # the metadata kinds appliance reads
_ED25519_HEX = re.compile(r"^[0-9a-fA-F]{64}\Z")


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def new_root(
    keys: Sequence[SSlibKey], threshold: int, expires: datetime, *, version: int = 1
) -> Metadata[Root]:
    seen: dict[bytes, str] = {}
    keyids: set[str] = set()
    for key in keys:
        identity = key_identity(key, "a public key", InputError)
        if identity in seen:
            raise InputError(
                f"the same public key was given twice (keyids {seen[identity][:12]}... and "
                f"{key.keyid[:12]}..., one key however its hex is written); every signer needs their own key"
            )
        if key.keyid in keyids:
            raise InputError(
                f"two different public keys were given with the same keyid {key.keyid[:12]}...; "
                "check the public key files"
            )
        seen[identity] = key.keyid
        keyids.add(key.keyid)
    if not 1 <= threshold <= len(keys):
        raise InputError(
            f"threshold {threshold} is impossible with {len(keys)} key(s): use 1 to {len(keys)}"
        )
    root = Root(version=version, expires=expires, consistent_snapshot=False)
    for key in keys:
        for role in ROLES:
            root.add_key(key, role)
    for role in ROLES:
        root.roles[role].threshold = threshold
    return Metadata(root)


def rotate_root(
    old: Metadata[Root], keys: Sequence[SSlibKey], threshold: int, expires: datetime
) -> Metadata[Root]:
    """Root version N+1 with new keys/threshold; it must then be signed by old AND new signers."""
    return new_root(keys, threshold, expires, version=old.signed.version + 1)


def sign_metadata(md: Metadata[Any], signer: Signer) -> None:
    """Add (or replace) this signer's signature."""
    md.sign(signer, append=True)


def to_bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False)) + b"\n"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` replaced whole (``safe_fs.replace_atomically``); ``mode`` from the first byte."""
    replace_atomically(path, data, mode)


def strict_json(data: bytes, what: str) -> Any:
    """Bounded, strict JSON of bundle or trust metadata (duplicate keys, non-UTF-8, depth: refused)."""
    return parse_json(data, what, error=MetadataError)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A regular file (never a link, pipe or device) of at most ``limit`` bytes, or ``MetadataError``."""
    return read_input(path, what, limit=limit, error=MetadataError, follow_symlinks=False)


def describe_cause(exc: BaseException) -> str:
    """python-tuf wraps the real reason (e.g. a keyid signing twice) in a generic error."""
    cause = exc.__cause__ or exc.__context__
    return f"{exc}: {cause}" if cause is not None and str(cause) not in str(exc) else str(exc)


def parse_metadata(data: bytes, what: str, kind: type[S]) -> Metadata[S]:
    """Strictly parsed TUF metadata of one type (``Root``, ``Targets``); ``MetadataError`` otherwise."""
    check_signed_types(strict_json(data, what), what)
    try:
        md = cast("Metadata[S]", Metadata.from_bytes(data))
    except (DeserializationError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MetadataError(
            f"{what}: not valid {kind.type} metadata: {describe_cause(exc)}"
        ) from exc
    if not isinstance(md.signed, kind):
        raise MetadataError(f"{what}: expected {kind.type} metadata, found {md.signed.type!r}")
    return md


def parse_root(data: bytes, what: str) -> Metadata[Root]:
    md = parse_metadata(data, what, Root)
    _check_distinct_keys(md.signed, what)
    for role in ("root", "targets"):
        spec = md.signed.roles[role]
        if not 1 <= spec.threshold <= len(spec.keyids):
            raise MetadataError(
                f"{what}: role {role} has threshold {spec.threshold} with {len(spec.keyids)} key(s)"
            )
    return md


def key_identity(key: Key, what: str, error: type[ApplianceError] = MetadataError) -> bytes:
    """What makes two keys the same key: the decoded public key, whatever its spelling or keyid.

    Only Ed25519 is accepted (``keys.py`` makes and loads nothing else), as 64 hex digits of
    either case; anything else is refused with ``error``, so no other encoding can hide a
    duplicate."""
    if key.keytype != "ed25519" or key.scheme != "ed25519":
        raise error(
            f"{what}: key {key.keyid[:12]}... is {key.keytype}/{key.scheme}; "
            "appliance accepts only ed25519/ed25519 keys"
        )
    public = key.keyval.get("public")
    if (
        set(key.keyval) != {"public"}
        or not isinstance(public, str)
        or not _ED25519_HEX.match(public)
    ):
        raise error(
            f"{what}: key {key.keyid[:12]}... must have exactly one keyval field `public` holding "
            "32 bytes as 64 hex digits"
        )
    return bytes.fromhex(public)


def _check_distinct_keys(root: Root, what: str) -> None:
    seen: dict[bytes, str] = {}
    for keyid, key in root.keys.items():
        other = seen.setdefault(key_identity(key, what), keyid)
        if other != keyid:
            raise MetadataError(
                f"{what}: the same public key is listed under two keyids ({other[:12]}..., {keyid[:12]}...); "
                "one key could count twice towards a threshold"
            )
    for name, role in root.roles.items():
        unknown = [keyid for keyid in role.keyids if keyid not in root.keys]
        if unknown:
            raise MetadataError(
                f"{what}: role {name} names keyid {unknown[0][:12]}..., which is not one of the root's keys"
            )


def check_signatures(root: Root, role: str, md: Metadata[Any], what: str) -> list[str]:
    """Keyids of the valid signatures; raise the specific error when below the threshold."""
    signatures = md.signatures
    if not signatures:
        raise UnsignedError(
            f"{what} is not signed", hint="Sign it with `appliance bundle sign DIR --key KEY`."
        )
    spec = root.roles[role]
    trusted = [k for k in signatures if k in spec.keyids]
    if not trusted:
        shown = ", ".join(k[:12] + "..." for k in signatures)
        raise UnknownKeyError(
            f"{what} is signed only by key(s) this site does not trust for {role}: {shown}",
            hint="Check the trusted root (--trust) lists the signers' public keys.",
        )
    try:
        payload = CanonicalJSONSerializer().serialize(md.signed)
    except SerializationError as exc:
        raise MetadataError(
            f"{what} cannot be put in canonical JSON, so it cannot have been signed: {describe_cause(exc)}"
        ) from exc
    result = root.get_verification_result(role, payload, signatures)
    valid = sorted(result.signed)
    if result.verified:
        return valid
    bad = [k for k in trusted if k not in result.signed]
    if bad:
        raise BadSignatureError(
            f"{what}: the signature by trusted key {bad[0][:12]}... does not match the signed content; "
            "the metadata was changed after signing, or the signature belongs to other metadata"
        )
    raise ThresholdError(
        f"{what} has {len(valid)} valid signature(s) from trusted keys; {spec.threshold} are required",
        hint="Have more of the trusted signers run `appliance bundle sign`.",
    )


def load_trusted_root(path: Path, *, what: str | None = None) -> Metadata[Root]:
    """A root the site trusts: strictly parsed and signed by its own root threshold."""
    label = what or f"trusted root {path}"
    md = parse_root(read_bounded(path, MAX_ROOT_BYTES, "trusted root"), label)
    try:
        check_signatures(md.signed, "root", md, label)
    except VerificationError as exc:
        raise type(exc)(
            f"{exc.message} (a trusted root must be signed by its own root threshold)",
            hint=exc.hint,
        ) from exc
    return md


def signed_digest(md: Metadata[Any]) -> str:
    """SHA-256 of the canonical signed part: two roots are the same root iff these are equal."""
    return hashlib.sha256(CanonicalJSONSerializer().serialize(md.signed)).hexdigest()


def check_rotation(current: Metadata[Root], new: Metadata[Root], label: str) -> None:
    """One step of TUF 5.3.4: ``new`` is version current+1, signed by the root threshold of
    ``current`` AND by its own; ``RootRotationError`` otherwise."""
    version = current.signed.version + 1
    if new.signed.version != version:
        raise RootRotationError(
            f"{label} declares version {new.signed.version}, expected {version}"
        )
    for signer_root, whose in (
        (current.signed, f"the current root (version {current.signed.version})"),
        (new.signed, "itself"),
    ):
        try:
            check_signatures(signer_root, "root", new, label)
        except VerificationError as exc:
            raise RootRotationError(
                f"{label} is not signed by the threshold of {whose}: {exc.message}"
            ) from exc


def walk_rotations(trusted: Metadata[Root], history_dir: Path) -> list[Metadata[Root]]:
    """The roots ``history_dir/N.root.json`` for N = trusted+1, +2, ... up to the first one
    missing, each checked by ``check_rotation`` against the one before."""
    applied: list[Metadata[Root]] = []
    current = trusted
    while True:
        path = history_dir / f"{current.signed.version + 1}.root.json"
        if not path.exists():
            return applied
        label = f"root rotation {path.name}"
        new = parse_root(read_bounded(path, MAX_ROOT_BYTES, "root rotation"), label)
        check_rotation(current, new, label)
        applied.append(new)
        current = new


def apply_rotations(trusted: Metadata[Root], history_dir: Path) -> tuple[Metadata[Root], list[int]]:
    """Walk ``history_dir/N.root.json`` for N = trusted+1, +2, ...; each must be signed by the
    previous root's threshold and its own. Returns the newest root and the versions applied."""
    applied = walk_rotations(trusted, history_dir)
    return (applied[-1] if applied else trusted), [md.signed.version for md in applied]


def check_not_expired(expires: datetime, what: str, now: datetime | None = None) -> None:
    from appliance.errors import ExpiredError

    moment = now or _utc_now()
    if expires <= moment:
        raise ExpiredError(
            f"{what} expired on {expires.isoformat()} (local clock: {moment.isoformat()})",
            hint="Ask the release engineers for a fresh one; check this host's clock if that is wrong.",
        )


def parse_duration(text: str) -> timedelta:
    """'90d', '12w', '1y', '36h' -> timedelta."""
    units = {"h": 1 / 24, "d": 1, "w": 7, "y": 365}
    if len(text) >= 2 and text[-1] in units and text[:-1].isdigit() and int(text[:-1]) > 0:
        return timedelta(days=int(text[:-1]) * units[text[-1]])
    raise InputError(f"expected a duration such as 90d, 12w, 1y or 36h, found {text!r}")
