"""Keys and the trusted root: file modes, passphrases, thresholds, rotation, malformed roots."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.bundle.keys import generate_key, load_public_key, load_signer
from appliance.bundle.trust import (
    apply_rotations,
    load_trusted_root,
    new_root,
    parse_duration,
    rotate_root,
    sign_metadata,
    to_bytes,
    write_atomic,
)
from appliance.errors import (
    BadSignatureError,
    InputError,
    KeyFileError,
    MetadataError,
    RootRotationError,
    ThresholdError,
    UnsignedError,
)

NEXT_YEAR = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)


def keys(tmp_path: Path, *names: str):  # type: ignore[no-untyped-def]
    out = []
    for name in names:
        pair = generate_key(tmp_path / "keys", name)
        out.append((load_signer(pair.private_path), load_public_key(pair.public_path)[0]))
    return out


def test_generated_private_key_is_0600_and_public_key_matches(tmp_path: Path) -> None:
    pair = generate_key(tmp_path / "k", "alice")
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    key, name = load_public_key(pair.public_path)
    assert key.keyid == pair.keyid and name == "alice"
    assert load_signer(pair.private_path).public_key.keyid == pair.keyid
    assert b"PRIVATE KEY" in pair.private_path.read_bytes()
    assert "PRIVATE" not in pair.public_path.read_text()


def test_keys_are_never_overwritten(tmp_path: Path) -> None:
    generate_key(tmp_path, "alice")
    with pytest.raises(InputError, match="already exists"):
        generate_key(tmp_path, "alice")


def test_passphrase_protected_key(tmp_path: Path) -> None:
    pair = generate_key(tmp_path, "bob", b"correct horse")
    assert b"ENCRYPTED" in pair.private_path.read_bytes()
    with pytest.raises(KeyFileError, match="is encrypted: a passphrase is needed"):
        load_signer(pair.private_path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_signer(pair.private_path, b"battery staple")
    assert load_signer(pair.private_path, b"correct horse").public_key.keyid == pair.keyid


def test_a_readable_private_key_is_refused(tmp_path: Path) -> None:
    pair = generate_key(tmp_path, "carol")
    pair.private_path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_signer(pair.private_path)


def test_a_tampered_public_key_file_is_refused(tmp_path: Path) -> None:
    pair = generate_key(tmp_path, "dave")
    data = json.loads(pair.public_path.read_text())
    data["keyval"]["public"] = "00" * 32
    pair.public_path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match="does not match the key"):
        load_public_key(pair.public_path)


def test_root_rules(tmp_path: Path) -> None:
    ((_, a), (_, b)) = keys(tmp_path, "a", "b")
    with pytest.raises(InputError, match="same public key was given twice"):
        new_root([a, a], 1, NEXT_YEAR)
    with pytest.raises(InputError, match="threshold 3 is impossible with 2 key"):
        new_root([a, b], 3, NEXT_YEAR)
    with pytest.raises(InputError, match="threshold 0 is impossible"):
        new_root([a, b], 0, NEXT_YEAR)


def _write(md, path: Path) -> Path:  # type: ignore[no-untyped-def]
    write_atomic(path, to_bytes(md))
    return path


def test_trusted_root_signatures(tmp_path: Path) -> None:
    (sa, a), (sb, b), (_, c) = keys(tmp_path, "a", "b", "c")
    root = new_root([a, b, c], 2, NEXT_YEAR)
    path = _write(root, tmp_path / "root.json")
    with pytest.raises(UnsignedError, match="is not signed"):
        load_trusted_root(path)
    sign_metadata(root, sa)
    _write(root, path)
    with pytest.raises(ThresholdError, match="1 valid signature"):
        load_trusted_root(path)
    sign_metadata(root, sb)
    _write(root, path)
    assert load_trusted_root(path).signed.roles["targets"].threshold == 2
    # Change a byte of the signed part after signing.
    data = json.loads(path.read_text())
    data["signed"]["roles"]["targets"]["threshold"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(BadSignatureError, match="does not match the signed content"):
        load_trusted_root(path)


def test_malformed_roots(tmp_path: Path) -> None:
    (sa, a), (_, b) = keys(tmp_path, "a", "b")
    root = new_root([a, b], 1, NEXT_YEAR)
    sign_metadata(root, sa)
    good = to_bytes(root)
    cases = {
        "dup-key.json": good.replace(b'"signed": {', b'"signed": {"version": 9, ', 1),
        "not-json.json": b"{ nope",
        "huge.json": b" " * (1024 * 1024 + 1),
        "not-utf8.json": b"\xff\xfe{}",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MetadataError):
            load_trusted_root(tmp_path / name)
    # The same public key under two keyids: one signer could meet a threshold of 2.
    data = json.loads(good)
    keyid = next(iter(data["signed"]["keys"]))
    data["signed"]["keys"]["f" * 64] = data["signed"]["keys"][keyid]
    data["signed"]["roles"]["targets"]["keyids"].append("f" * 64)
    (tmp_path / "twice.json").write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="listed under two keyids"):
        load_trusted_root(tmp_path / "twice.json")


def test_rotation_needs_old_and_new_thresholds(tmp_path: Path) -> None:
    (sa, a), (sb, b), (sc, c) = keys(tmp_path, "a", "b", "c")
    v1 = new_root([a], 1, NEXT_YEAR)
    sign_metadata(v1, sa)
    history = tmp_path / "history"
    history.mkdir()
    for signers, ok in (([sb, sc], False), ([sa], False), ([sa, sb], False), ([sa, sb, sc], True)):
        v2 = rotate_root(v1, [b, c], 2, NEXT_YEAR)
        for signer in signers:
            sign_metadata(v2, signer)
        _write(v2, history / "2.root.json")
        if ok:
            newest, applied = apply_rotations(v1, history)
            assert applied == [2] and newest.signed.roles["targets"].threshold == 2
        else:
            with pytest.raises(
                RootRotationError, match=r"2\.root\.json is not signed by the threshold"
            ):
                apply_rotations(v1, history)


def test_rotation_file_must_carry_its_version(tmp_path: Path) -> None:
    ((sa, a),) = keys(tmp_path, "a")
    v1 = new_root([a], 1, NEXT_YEAR)
    sign_metadata(v1, sa)
    v3 = new_root([a], 1, NEXT_YEAR, version=3)
    sign_metadata(v3, sa)
    (tmp_path / "h").mkdir()
    _write(v3, tmp_path / "h" / "2.root.json")
    with pytest.raises(RootRotationError, match="declares version 3, expected 2"):
        apply_rotations(v1, tmp_path / "h")


@pytest.mark.parametrize(("text", "days"), [("90d", 90), ("2w", 14), ("1y", 365), ("36h", 1.5)])
def test_parse_duration(text: str, days: float) -> None:
    assert parse_duration(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "d", "0d", "-1d", "1m", "1.5d", "forever"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InputError, match="expected a duration"):
        parse_duration(text)
