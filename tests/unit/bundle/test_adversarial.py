"""Adversarial suite: every attack in trust.md against the real install path.

Each case makes a real bundle signed 2-of-3 with real Ed25519 keys, attacks it
(bytes on the medium, the manifest, the keys, the site's freshness state, the
paths), then runs ``appliance bundle install --json`` through the CLI entry
point. Every case must end in exit code 4, the specific error class and
message, no release directory, no staging leftovers, and no change to the
site's accepted versions.

Attacks on the manifest that must get past the signature check are re-signed
with the trusted keys (``resign``): that is the "a signer was fooled or
compromised" scenario, and it proves the deeper checks stand on their own.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from appliance.bundle.format import FILES_DIR, TARGETS_FILE
from appliance.bundle.keys import generate_key, load_signer
from appliance.bundle.manifest import sign_bundle
from appliance.bundle.site import contents
from appliance.bundle.trust import new_root, rotate_root, sign_metadata, to_bytes, write_atomic
from appliance.cli.main import main

from .conftest import SHARD, BundleFactory, Trust

MODEL = "models/demo/model.safetensors"
CONFIG = "models/demo/config.json"


@dataclass
class Ctx:
    tmp: Path
    trust: Trust
    make: BundleFactory
    releases: Path
    state: Path
    monkeypatch: pytest.MonkeyPatch

    def bundle(self, **kw: Any) -> Path:
        return self.make(**kw)

    def accept(self, version: int, **kw: Any) -> None:
        """Install a good bundle first, so the site state remembers it."""
        bundle = self.make(version=version, **kw)
        code = main(["bundle", "install", str(bundle), "--trust", str(self.trust.root_path),
                     "--state", str(self.state), "--dest", str(self.releases / f"pre-{version}"), "--json"])  # fmt: skip
        assert code == 0


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / TARGETS_FILE).read_text())
    return data


def resign(
    ctx: Ctx, bundle: Path, mutate: Callable[[dict[str, Any]], None], signers: int = 2
) -> Path:
    """Change the signed part, then sign it again with trusted keys (a fooled signer)."""
    data = manifest(bundle)
    mutate(data["signed"])
    md = Metadata.from_dict({"signed": data["signed"], "signatures": []})
    for signer in ctx.trust.signers[:signers]:
        md.sign(signer, append=True)
    (bundle / TARGETS_FILE).write_bytes(md.to_bytes(JSONSerializer(compact=False)))
    return bundle


def rewrite(bundle: Path, change: Callable[[str], str]) -> Path:
    path = bundle / TARGETS_FILE
    path.write_text(change(path.read_text()))
    return bundle


def add_target(signed: dict[str, Any], path: str, data: bytes = b"x") -> None:
    import hashlib

    signed["targets"][path] = {
        "length": len(data),
        "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
    }


# --- the cases: (name, attack, expected error class, message fragment) -------------------

Attack = Callable[[Ctx], Path]


def content_flip(offset: int) -> Attack:
    def attack(ctx: Ctx) -> Path:
        b = ctx.bundle()
        flip(b / FILES_DIR / MODEL, offset)
        return b

    return attack


def swap_shards(ctx: Ctx) -> Path:
    b = ctx.bundle()
    p = b / FILES_DIR / MODEL
    data = p.read_bytes()
    p.write_bytes(data[SHARD : 2 * SHARD] + data[:SHARD] + data[2 * SHARD :])
    return b


def swap_same_size_files(ctx: Ctx) -> Path:
    b = ctx.bundle(files={"a.bin": b"A" * 100, "b.bin": b"B" * 100})
    a, bb = b / FILES_DIR / "a.bin", b / FILES_DIR / "b.bin"
    da, db = a.read_bytes(), bb.read_bytes()
    a.write_bytes(db)
    bb.write_bytes(da)
    return b


def truncate(ctx: Ctx) -> Path:
    b = ctx.bundle()
    p = b / FILES_DIR / MODEL
    p.write_bytes(p.read_bytes()[:-1])
    return b


def extend(ctx: Ctx) -> Path:
    b = ctx.bundle()
    with open(b / FILES_DIR / MODEL, "ab") as f:
        f.write(b"\0")
    return b


def endless(ctx: Ctx) -> Path:
    b = ctx.bundle()
    with open(b / FILES_DIR / CONFIG, "ab") as f:
        f.truncate(os.path.getsize(b / FILES_DIR / CONFIG) + 50 * 1024 * 1024)  # sparse: cheap
    return b


def empty_file_grows(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR / "artifacts/empty/empty.txt").write_bytes(b"!")
    return b


def file_emptied(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR / CONFIG).write_bytes(b"")
    return b


def rename(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR / CONFIG).rename(b / FILES_DIR / "models/demo/config2.json")
    return b


def missing(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR / CONFIG).unlink()
    return b


def extra(rel: str) -> Attack:
    def attack(ctx: Ctx) -> Path:
        b = ctx.bundle()
        p = b / FILES_DIR / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"surprise")
        return b

    return attack


def extra_empty_dir(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR / "models/demo/hidden").mkdir()
    return b


def symlink_to(target: str) -> Attack:
    def attack(ctx: Ctx) -> Path:
        b = ctx.bundle()
        p = b / FILES_DIR / CONFIG
        p.unlink()
        p.symlink_to(target)
        return b

    return attack


def symlink_chain(ctx: Ctx) -> Path:
    b = ctx.bundle()
    files = b / FILES_DIR
    real = (files / CONFIG).read_bytes()
    (files / CONFIG).unlink()
    (ctx.tmp / "outside.json").write_bytes(real)
    (files / "models/demo/hop").symlink_to(ctx.tmp / "outside.json")
    (files / CONFIG).symlink_to("hop")
    return b


def symlinked_parent(ctx: Ctx) -> Path:
    b = ctx.bundle()
    files = b / FILES_DIR
    (files / "models").rename(ctx.tmp / "moved-models")
    (files / "models").symlink_to(ctx.tmp / "moved-models")
    return b


def files_dir_symlink(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR).rename(ctx.tmp / "moved-files")
    (b / FILES_DIR).symlink_to(ctx.tmp / "moved-files")
    return b


def hardlink(ctx: Ctx) -> Path:
    b = ctx.bundle()
    os.link(b / FILES_DIR / CONFIG, ctx.tmp / "second-name")
    return b


def fifo(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / FILES_DIR / CONFIG).unlink()
    os.mkfifo(b / FILES_DIR / CONFIG)
    return b


def device(ctx: Ctx) -> Path:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    b = ctx.bundle()
    (b / FILES_DIR / CONFIG).unlink()
    os.mknod(b / FILES_DIR / CONFIG, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    return b


def signed_path(path: str) -> Attack:
    def attack(ctx: Ctx) -> Path:
        return resign(ctx, ctx.bundle(), lambda s: add_target(s, path))

    return attack


def case_collision(ctx: Ctx) -> Path:
    def mutate(s: dict[str, Any]) -> None:
        add_target(s, "models/demo/README.md")
        add_target(s, "models/demo/readme.md")

    return resign(ctx, ctx.bundle(), mutate)


def colliding(*paths: str) -> Attack:
    def attack(ctx: Ctx) -> Path:
        def mutate(s: dict[str, Any]) -> None:
            for path in paths:
                add_target(s, path)

        return resign(ctx, ctx.bundle(), mutate)

    return attack


def digest_changed_unsigned(ctx: Ctx) -> Path:
    b = ctx.bundle()
    return rewrite(
        b,
        lambda t: t.replace(manifest(b)["signed"]["targets"][CONFIG]["hashes"]["sha256"], "0" * 64),
    )


def size_changed_unsigned(ctx: Ctx) -> Path:
    def mutate(text: str) -> str:
        data = json.loads(text)
        data["signed"]["targets"][CONFIG]["length"] += 1
        return json.dumps(data)

    return rewrite(ctx.bundle(), mutate)


def digest_changed_resigned(ctx: Ctx) -> Path:
    return resign(
        ctx, ctx.bundle(), lambda s: s["targets"][CONFIG]["hashes"].update(sha256="0" * 64)
    )


def duplicate_entry(ctx: Ctx) -> Path:
    b = ctx.bundle()
    entry = json.dumps(manifest(b)["signed"]["targets"][CONFIG])
    return rewrite(b, lambda t: t.replace('"targets": {', f'"targets": {{"{CONFIG}": {entry}, ', 1))


def duplicate_version_key(ctx: Ctx) -> Path:
    return rewrite(
        ctx.bundle(), lambda t: t.replace('"signed": {', '"signed": {"version": 99, ', 1)
    )


def oversized_manifest(ctx: Ctx) -> Path:
    b = ctx.bundle()
    with open(b / TARGETS_FILE, "ab") as f:
        f.truncate(65 * 1024 * 1024)
    return b


def huge_rotation(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / "metadata/root").mkdir()
    with open(b / "metadata/root/2.root.json", "wb") as f:
        f.truncate(2 * 1024 * 1024)
    return b


def signatures_from_other_bundle(ctx: Ctx) -> Path:
    a = ctx.bundle(name="alpha")
    b = ctx.bundle(name="beta")
    signatures = manifest(a)["signatures"]

    def mutate(text: str) -> str:
        data = json.loads(text)
        data["signatures"] = signatures
        return json.dumps(data)

    return rewrite(b, mutate)


def not_utf8(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / TARGETS_FILE).write_bytes((b / TARGETS_FILE).read_text().encode("utf-16"))
    return b


def empty_signatures(ctx: Ctx) -> Path:
    return ctx.bundle(sign_with=0)


def truncated_manifest(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / TARGETS_FILE).write_bytes((b / TARGETS_FILE).read_bytes()[:-40])
    return b


def root_as_manifest(ctx: Ctx) -> Path:
    b = ctx.bundle()
    (b / TARGETS_FILE).write_bytes(ctx.trust.root_path.read_bytes())
    return b


def unknown_signed_field(ctx: Ctx) -> Path:
    return resign(ctx, ctx.bundle(), lambda s: s.update(x_smuggled={"run": "this"}))


def payload_removed(ctx: Ctx) -> Path:
    return resign(ctx, ctx.bundle(), lambda s: s.pop("appliance"))


def shards_do_not_tile(ctx: Ctx) -> Path:
    return resign(ctx, ctx.bundle(), lambda s: s["targets"][MODEL]["shards"].pop())


def media_does_not_tile(ctx: Ctx) -> Path:
    return resign(ctx, ctx.bundle(), lambda s: s["appliance"]["media"]["parts"].pop())


def delegations(ctx: Ctx) -> Path:
    return resign(ctx, ctx.bundle(), lambda s: s.update(delegations={"keys": {}, "roles": []}))


def unknown_key(ctx: Ctx) -> Path:
    b = ctx.bundle(sign_with=0)
    stranger = generate_key(ctx.tmp / "stranger", "mallory")
    sign_bundle(b, load_signer(stranger.private_path))
    return b


def one_signature(ctx: Ctx) -> Path:
    return ctx.bundle(sign_with=1)


def same_key_twice(ctx: Ctx) -> Path:
    b = ctx.bundle(sign_with=1)

    def mutate(text: str) -> str:
        data = json.loads(text)
        data["signatures"] = data["signatures"] * 2
        return json.dumps(data)

    return rewrite(b, mutate)


def corrupted_signature(ctx: Ctx) -> Path:
    def mutate(text: str) -> str:
        data = json.loads(text)
        for sig in data["signatures"]:
            sig["sig"] = sig["sig"][:-2] + ("00" if sig["sig"][-2:] != "00" else "11")
        return json.dumps(data)

    return rewrite(ctx.bundle(), mutate)


def expired_manifest(ctx: Ctx) -> Path:
    return ctx.bundle(expires=datetime.now(UTC) - timedelta(minutes=1))


def expired_root(ctx: Ctx) -> Path:
    root = new_root(ctx.trust.keys, 2, datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
    for signer in ctx.trust.signers[:2]:
        sign_metadata(root, signer)
    write_atomic(ctx.trust.root_path, to_bytes(root))
    return ctx.bundle()


def rotation_signed_by_new_keys_only(ctx: Ctx) -> Path:
    b = ctx.bundle()
    from appliance.bundle.trust import load_trusted_root

    mallory = [generate_key(ctx.tmp / "m", n) for n in ("m1", "m2")]
    from appliance.bundle.keys import load_public_key

    v2 = rotate_root(load_trusted_root(ctx.trust.root_path), [load_public_key(m.public_path)[0] for m in mallory], 1,
                     datetime.now(UTC).replace(microsecond=0) + timedelta(days=30))  # fmt: skip
    sign_metadata(v2, load_signer(mallory[0].private_path))
    (b / "metadata/root").mkdir()
    write_atomic(b / "metadata/root/2.root.json", to_bytes(v2))
    return b


def rollback(ctx: Ctx) -> Path:
    ctx.accept(2)
    return ctx.bundle(version=1)


def same_version_other_content(ctx: Ctx) -> Path:
    ctx.accept(2)
    return ctx.bundle(version=2, files={"models/other.gguf": b"GGUF different"})


def absurd_jump(ctx: Ctx) -> Path:
    ctx.accept(1)
    return ctx.bundle(version=2_000_000)


# --- trust anchors, key identity, exact types --------------------------------------------


def _mallory_root(ctx: Ctx, version: int) -> Any:
    """A root the attacker made and signed with their own keys (no trusted signature)."""
    from appliance.bundle.keys import load_public_key

    pairs = [generate_key(ctx.tmp / "mallory", n) for n in ("m1", "m2")]
    root = new_root([load_public_key(p.public_path)[0] for p in pairs], 1,
                    datetime.now(UTC).replace(microsecond=0) + timedelta(days=30), version=version)  # fmt: skip
    for pair in pairs:
        sign_metadata(root, load_signer(pair.private_path))
    return root


def planted_state_root(ctx: Ctx) -> Path:
    """A root in the state, next version, self-signed by the attacker: it must not outrank --trust."""
    (ctx.state / "roots").mkdir(parents=True)
    write_atomic(ctx.state / "roots/2.root.json", to_bytes(_mallory_root(ctx, 2)))
    return ctx.bundle()


def old_form_state_root(ctx: Ctx) -> Path:
    """The old state form: one root.json of a higher version, no chain to check."""
    ctx.state.mkdir(parents=True)
    write_atomic(ctx.state / "root.json", to_bytes(_mallory_root(ctx, 9)))
    return ctx.bundle()


def _rotation_v2(ctx: Ctx) -> Any:
    from appliance.bundle.trust import load_trusted_root

    v2 = rotate_root(load_trusted_root(ctx.trust.root_path), ctx.trust.keys, 2,
                     datetime.now(UTC).replace(microsecond=0) + timedelta(days=60))  # fmt: skip
    for signer in ctx.trust.signers[:2]:
        sign_metadata(v2, signer)
    return v2


def _accept_with_rotation(ctx: Ctx) -> None:
    """A good bundle carrying rotation 2: the state keeps roots/2.root.json."""
    b = ctx.bundle(version=1)
    (b / "metadata/root").mkdir()
    write_atomic(b / "metadata/root/2.root.json", to_bytes(_rotation_v2(ctx)))
    code = main(["bundle", "install", str(b), "--trust", str(ctx.trust.root_path), "--state", str(ctx.state),
                 "--dest", str(ctx.releases / "pre-1"), "--json"])  # fmt: skip
    assert code == 0 and (ctx.state / "roots/2.root.json").exists()


def state_chain_gap(ctx: Ctx) -> Path:
    _accept_with_rotation(ctx)
    (ctx.state / "roots/2.root.json").rename(ctx.state / "roots/3.root.json")
    return ctx.bundle(version=2)


def state_chain_tampered(ctx: Ctx) -> Path:
    _accept_with_rotation(ctx)
    path = ctx.state / "roots/2.root.json"
    data = json.loads(path.read_text())
    data["signed"]["roles"]["targets"]["threshold"] = 1
    path.write_text(json.dumps(data))
    return ctx.bundle(version=2, sign_with=1)


def state_root_same_version_other_content(ctx: Ctx) -> Path:
    """The state keeps a root 1 that is not the anchor (version 1) the operator gives."""
    (ctx.state / "roots").mkdir(parents=True)
    write_atomic(ctx.state / "roots/1.root.json", to_bytes(_mallory_root(ctx, 1)))
    return ctx.bundle()


def _raw_resign(ctx: Ctx, bundle: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """Re-sign the signed part exactly as mutated (python-tuf would normalise or refuse it)."""
    from securesystemslib.formats import encode_canonical

    data = manifest(bundle)
    mutate(data["signed"])
    canonical = encode_canonical(data["signed"]).encode()  # type: ignore[union-attr]
    data["signatures"] = [s.sign(canonical).to_dict() for s in ctx.trust.signers[:2]]
    (bundle / TARGETS_FILE).write_text(json.dumps(data))
    return bundle


def typed(mutate: Callable[[dict[str, Any]], None]) -> Attack:
    def attack(ctx: Ctx) -> Path:
        return _raw_resign(ctx, ctx.bundle(), mutate)

    return attack


def version_float(ctx: Ctx) -> Path:
    """2.0 cannot be signed at all (canonical JSON); it must still be a clean refusal."""

    def mutate(text: str) -> str:
        data = json.loads(text)
        data["signed"]["version"] = 2.0
        return json.dumps(data)

    return rewrite(ctx.bundle(), mutate)


def rotation_lists_a_key_twice(ctx: Ctx) -> Path:
    """A carried rotation lists alice again in upper-case hex under another keyid."""
    from securesystemslib.formats import encode_canonical

    b = ctx.bundle()
    signed = json.loads(to_bytes(_rotation_v2(ctx)))["signed"]
    alice = ctx.trust.keys[0].keyid
    twin = json.loads(json.dumps(signed["keys"][alice]))
    twin["keyval"]["public"] = twin["keyval"]["public"].upper()
    signed["keys"]["a" * 64] = twin
    for role in signed["roles"].values():
        role["keyids"].append("a" * 64)
    canonical = encode_canonical(signed).encode()  # type: ignore[union-attr]
    sigs = [s.sign(canonical).to_dict() for s in ctx.trust.signers[:2]]
    (b / "metadata/root").mkdir()
    (b / "metadata/root/2.root.json").write_text(json.dumps({"signed": signed, "signatures": sigs}))
    return b


def signature_under_alias_keyid(ctx: Ctx) -> Path:
    """Alice's one signature listed again under a keyid the root does not know: still one."""
    b = ctx.bundle(sign_with=1)

    def mutate(text: str) -> str:
        data = json.loads(text)
        data["signatures"].append({"keyid": "a" * 64, "sig": data["signatures"][0]["sig"]})
        return json.dumps(data)

    return rewrite(b, mutate)


def swapped_after_check(ctx: Ctx) -> Path:
    """The medium changes between the file-set check and the copy: the copy hashes what it writes."""
    b = ctx.bundle()
    original = contents.check_file_set

    def check_then_swap(files_dir: Path, records: Any) -> None:
        original(files_dir, records)
        flip(files_dir / MODEL, 5)

    ctx.monkeypatch.setattr(contents, "check_file_set", check_then_swap)
    return b


CASES: list[tuple[str, Attack, str, str]] = [
    # content
    ("flip-first-byte", content_flip(0), "DigestMismatchError", MODEL),
    ("flip-middle", content_flip(SHARD + SHARD // 2), "DigestMismatchError", MODEL),
    ("flip-last-byte", content_flip(3 * SHARD + 3), "DigestMismatchError", MODEL),
    ("flip-before-shard-boundary", content_flip(SHARD - 1), "DigestMismatchError", MODEL),
    ("flip-after-shard-boundary", content_flip(SHARD), "DigestMismatchError", MODEL),
    ("swapped-shards", swap_shards, "DigestMismatchError", MODEL),
    ("swapped-same-size-files", swap_same_size_files, "DigestMismatchError", "a.bin"),
    ("truncated", truncate, "SizeMismatchError", MODEL),
    ("extended", extend, "SizeMismatchError", MODEL),
    ("empty-file-grows", empty_file_grows, "SizeMismatchError", "empty.txt"),
    ("file-emptied", file_emptied, "SizeMismatchError", CONFIG),
    ("renamed", rename, "FileSetError", "config2.json"),
    ("missing", missing, "FileSetError", CONFIG),
    ("extra-file", extra("extra.bin"), "FileSetError", "extra.bin"),
    ("extra-nested-dotfile", extra("models/demo/.hidden/.env"), "FileSetError", ".env"),
    ("extra-empty-dir", extra_empty_dir, "FileSetError", "hidden"),
    # metadata
    (
        "digest-changed",
        digest_changed_unsigned,
        "BadSignatureError",
        "does not match the signed content",
    ),
    (
        "size-changed",
        size_changed_unsigned,
        "BadSignatureError",
        "does not match the signed content",
    ),
    ("digest-changed-and-resigned", digest_changed_resigned, "DigestMismatchError", CONFIG),
    ("duplicate-entry", duplicate_entry, "MetadataError", "duplicate JSON key"),
    ("duplicate-json-key", duplicate_version_key, "MetadataError", "duplicate JSON key 'version'"),
    ("oversized-manifest", oversized_manifest, "MetadataError", "larger than"),
    ("oversized-root-rotation", huge_rotation, "MetadataError", "larger than"),
    (
        "signatures-of-another-bundle",
        signatures_from_other_bundle,
        "BadSignatureError",
        "does not match",
    ),
    ("not-utf8", not_utf8, "MetadataError", "not UTF-8"),
    ("no-signatures", empty_signatures, "UnsignedError", "is not signed"),
    ("truncated-manifest", truncated_manifest, "MetadataError", "not valid JSON"),
    ("root-passed-as-manifest", root_as_manifest, "MetadataError", "expected targets"),
    ("unknown-signed-field", unknown_signed_field, "MetadataError", "x_smuggled"),
    ("payload-removed", payload_removed, "MetadataError", "no appliance payload"),
    ("shards-do-not-tile", shards_do_not_tile, "MetadataError", "do not tile"),
    ("media-parts-do-not-tile", media_does_not_tile, "MetadataError", "media parts cover"),
    ("delegations", delegations, "MetadataError", "delegations"),
    # keys
    ("unknown-key", unknown_key, "UnknownKeyError", "does not trust"),
    ("below-threshold", one_signature, "ThresholdError", "1 valid signature"),
    (
        "one-key-counted-twice",
        same_key_twice,
        "MetadataError",
        "Multiple signatures found for keyid",
    ),
    ("corrupted-signatures", corrupted_signature, "BadSignatureError", "does not match"),
    ("expired-manifest", expired_manifest, "ExpiredError", "expired on"),
    ("expired-trusted-root", expired_root, "ExpiredError", "trusted root"),
    (
        "rotation-not-signed-by-old-root",
        rotation_signed_by_new_keys_only,
        "RootRotationError",
        "current root",
    ),
    (
        "key-listed-twice-in-rotation",
        rotation_lists_a_key_twice,
        "MetadataError",
        "listed under two keyids",
    ),
    (
        "signature-under-alias-keyid",
        signature_under_alias_keyid,
        "ThresholdError",
        "1 valid signature",
    ),
    # trust anchors: the state never outranks --trust
    (
        "planted-state-root",
        planted_state_root,
        "TrustAnchorError",
        "does not descend from the anchor",
    ),
    ("old-form-state-root", old_form_state_root, "TrustAnchorError", "old form (root.json"),
    ("state-chain-gap", state_chain_gap, "TrustAnchorError", "version 2 is missing"),
    (
        "state-chain-tampered",
        state_chain_tampered,
        "TrustAnchorError",
        "does not match the signed content",
    ),
    (
        "state-root-same-version-other-content",
        state_root_same_version_other_content,
        "TrustAnchorError",
        "keeps a root of version 1 with other content",
    ),
    # exact types in signed metadata
    (
        "version-true",
        typed(lambda s: s.update(version=True)),
        "MetadataError",
        "`signed.version` has type boolean, expected an integer",
    ),
    (
        "version-float",
        version_float,
        "MetadataError",
        "`signed.version` has type number with a fraction",
    ),
    (
        "version-string",
        typed(lambda s: s.update(version="2")),
        "MetadataError",
        "`signed.version` has type string, expected an integer",
    ),
    (
        "expires-malformed",
        typed(lambda s: s.update(expires="2099-1-1T00:00:00Z")),
        "MetadataError",
        "`signed.expires` is not of the form YYYY-MM-DDTHH:MM:SSZ",
    ),
    (
        "length-true",
        typed(lambda s: s["targets"][CONFIG].update(length=True)),
        "MetadataError",
        "length` has type boolean, expected an integer",
    ),
    (
        "part-size-string",
        typed(lambda s: s["appliance"]["media"].update(part_size="98304")),
        "MetadataError",
        "`media.part_size` has the wrong type: expected an integer, found string",
    ),
    # freshness
    ("rollback", rollback, "RollbackError", "older than version 2"),
    (
        "same-version-other-content",
        same_version_other_content,
        "SameVersionConflictError",
        "different content",
    ),
    ("absurd-version-jump", absurd_jump, "VersionJumpError", "jumps from version 1"),
    # paths
    ("dot-dot", signed_path("../escape"), "UnsafePathError", "'..'"),
    ("dot-dot-inside", signed_path("models/../../escape"), "UnsafePathError", "'..'"),
    ("absolute", signed_path("/etc/cron.d/evil"), "UnsafePathError", "absolute path"),
    ("backslash", signed_path("models\\..\\evil"), "UnsafePathError", "backslash"),
    ("control-char", signed_path("models/evil\nname"), "UnsafePathError", "control character"),
    ("over-long-name", signed_path("models/" + "a" * 256), "UnsafePathError", "longer than 255"),
    ("not-nfc", signed_path("models/cafe\u0301.txt"), "UnsafePathError", "NFC"),
    ("case-collision", case_collision, "UnsafePathError", "collide"),
    # every class of bundles/FORMAT.md "Paths"; messages show code points, never the raw character
    ("c1-control", signed_path("models/a\x9bb"), "UnsafePathError", "'\\x9b': a control"),
    ("nel", signed_path("models/a\x85b"), "UnsafePathError", "U+0085 NEL"),
    ("del", signed_path("models/a\x7fb"), "UnsafePathError", "control character"),
    ("line-separator", signed_path("models/a\u2028b"), "UnsafePathError", "'\\u2028': a line"),
    ("paragraph-separator", signed_path("models/a\u2029b"), "UnsafePathError", "paragraph"),
    (
        "bidi-override",
        signed_path("models/evil\u202etxt.exe"),
        "UnsafePathError",
        "'\\u202e': a bidi",
    ),
    ("bidi-isolate", signed_path("models/a\u2066b"), "UnsafePathError", "bidirectional"),
    ("bidi-mark", signed_path("models/a\u200fb"), "UnsafePathError", "bidirectional"),
    ("arabic-letter-mark", signed_path("models/a\u061cb"), "UnsafePathError", "bidirectional"),
    ("zero-width", signed_path("models/a\u200bb"), "UnsafePathError", "invisible"),
    ("bom-in-name", signed_path("models/\ufeffx"), "UnsafePathError", "invisible"),
    ("unassigned", signed_path("models/a\u0378b"), "UnsafePathError", "unassigned"),
    ("private-use", signed_path("models/a\ue000b"), "UnsafePathError", "private-use"),
    ("windows-char", signed_path("models/a?b"), "UnsafePathError", '<>"|?*'),
    ("trailing-dot", signed_path("models/weights."), "UnsafePathError", "ends in a dot"),
    ("windows-device", signed_path("models/aux.json"), "UnsafePathError", "Windows device name"),
    (
        "accented-case",
        colliding("models/caf\u00e9", "models/CAF\u00c9"),
        "UnsafePathError",
        "collide",
    ),
    (
        "full-case-fold",
        colliding("models/stra\u00dfe", "models/STRASSE"),
        "UnsafePathError",
        "collide",
    ),
    ("nfkc-fold", colliding("models/\ufb01le", "models/file"), "UnsafePathError", "collide"),
    (
        "file-and-folded-dir",
        colliding("models/Demo"),
        "UnsafePathError",
        "as a file and as a directory",
    ),
    ("symlink-escaping", symlink_to("/etc/passwd"), "UnsafePathError", "symbolic link"),
    ("symlink-inside", symlink_to("model.safetensors"), "UnsafePathError", "symbolic link"),
    ("symlink-chain", symlink_chain, "UnsafePathError", "symbolic link"),
    ("symlinked-parent-dir", symlinked_parent, "UnsafePathError", "symbolic link"),
    ("files-dir-is-symlink", files_dir_symlink, "FileSetError", "no files/ directory"),
    ("hardlink", hardlink, "UnsafePathError", "link"),
    ("fifo", fifo, "UnsafePathError", "FIFO"),
    ("device-node", device, "UnsafePathError", "device"),
    # endless data, check-then-use
    ("larger-than-declared", endless, "SizeMismatchError", CONFIG),
    ("swapped-after-check", swapped_after_check, "DigestMismatchError", MODEL),
]


def snapshot(directory: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
        if directory.exists()
        else []
    )


@pytest.mark.parametrize(("name", "attack", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_attack_is_refused(
    name: str,
    attack: Attack,
    error: str,
    fragment: str,
    tmp_path: Path,
    trust: Trust,
    make_bundle: BundleFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    ctx = Ctx(tmp_path, trust, make_bundle, releases, tmp_path / "state", monkeypatch)
    bundle = attack(ctx)
    releases_before, state_before = snapshot(releases), snapshot(ctx.state)
    accepted_before = (
        (ctx.state / "accepted.json").read_bytes()
        if (ctx.state / "accepted.json").exists()
        else None
    )
    capsys.readouterr()
    dest = releases / "new"
    code = main(["bundle", "install", str(bundle), "--trust", str(trust.root_path), "--state", str(ctx.state),
                 "--dest", str(dest), "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 4, (name, out, err)
    result = json.loads(out)
    assert result["ok"] is False and result["error"] == error, (name, result)
    assert fragment in result["message"], (name, result["message"])
    assert "INSTALLED" not in out + err and "VERIFIED" not in out + err
    # Nothing written outside staging: no release, no leftover staging dir, state untouched.
    assert not dest.exists()
    assert snapshot(releases) == releases_before
    assert snapshot(ctx.state) == state_before or snapshot(ctx.state) == [*state_before, ".lock"]
    after = (
        (ctx.state / "accepted.json").read_bytes()
        if (ctx.state / "accepted.json").exists()
        else None
    )
    assert after == accepted_before


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 40
