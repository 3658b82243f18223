"""Trust anchors, key identity and exact types, with real Ed25519 keys and real bundles.

The operator's ``--trust`` is the anchor: a root kept in ``--state`` is used
only when it descends from the anchor through the kept chain of rotations,
each signed by the previous root's threshold and its own. Everything else a
state may hold (a planted root, a gap, a tampered step, another root of the
anchor's version, the old single ``root.json``) is refused with
``TrustAnchorError`` and a hint naming ``appliance trust reanchor``, which
is tested here too. A key is its decoded bytes, whatever the hex case or the
keyid; signed fields have exactly their types.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, Root

from appliance.bundle.format import ROOT_HISTORY_DIR, TARGETS_FILE
from appliance.bundle.keys import generate_key, load_public_key, load_signer
from appliance.bundle.manifest import sign_bundle
from appliance.bundle.site.state import ROOTS_DIR, TrustState
from appliance.bundle.site.verify import VerifiedBundle, VerifyOptions, verify_bundle
from appliance.bundle.trust import (
    apply_rotations,
    load_trusted_root,
    new_root,
    rotate_root,
    sign_metadata,
    to_bytes,
    write_atomic,
)
from appliance.cli.main import main
from appliance.errors import (
    InputError,
    MetadataError,
    ThresholdError,
    TrustAnchorError,
    UnknownKeyError,
    VerificationError,
)
from appliance.events import drain

from .conftest import BundleFactory, Trust

NEXT_YEAR = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)


# --- helpers ---------------------------------------------------------------------------


def new_keys(tmp: Path, *names: str) -> list[tuple[CryptoSigner, SSlibKey]]:
    out = []
    for name in names:
        pair = generate_key(tmp / "more-keys", name)
        out.append((load_signer(pair.private_path), load_public_key(pair.public_path)[0]))
    return out


def signed_root(
    keys: Sequence[SSlibKey],
    threshold: int,
    signers: Sequence[CryptoSigner],
    *,
    version: int = 1,
    expires: datetime = NEXT_YEAR,
) -> Metadata[Root]:
    root = new_root(keys, threshold, expires, version=version)
    for signer in signers:
        sign_metadata(root, signer)
    return root


def rotation(
    old: Metadata[Root],
    keys: Sequence[SSlibKey],
    threshold: int,
    signers: Sequence[CryptoSigner],
    expires: datetime = NEXT_YEAR,
) -> Metadata[Root]:
    new = rotate_root(old, keys, threshold, expires)
    for signer in signers:
        sign_metadata(new, signer)
    return new


def carry(bundle: Path, *roots: Metadata[Root]) -> Path:
    """Put rotations into a bundle the way `trust rotate` tells release engineers to."""
    (bundle / ROOT_HISTORY_DIR).mkdir(parents=True, exist_ok=True)
    for md in roots:
        write_atomic(bundle / ROOT_HISTORY_DIR / f"{md.signed.version}.root.json", to_bytes(md))
    return bundle


def bundle_signed_by(
    make_bundle: BundleFactory, signers: Sequence[CryptoSigner], **kw: Any
) -> Path:
    bundle = make_bundle(sign_with=0, **kw)
    for signer in signers:
        sign_bundle(bundle, signer)
    return bundle


def verify(bundle: Path, anchor: Path, state: Path | None) -> VerifiedBundle:
    return drain(verify_bundle(bundle, anchor, state, VerifyOptions()))


def raw_signed(signed: dict[str, Any], signers: Sequence[CryptoSigner]) -> bytes:
    """Sign a signed part as given, without python-tuf normalising (or refusing) it first."""
    canonical = encode_canonical(signed).encode()  # type: ignore[union-attr]
    signatures = [signer.sign(canonical).to_dict() for signer in signers]
    return json.dumps({"signed": signed, "signatures": signatures}, indent=1).encode()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def chain(tmp_path: Path, trust: Trust) -> dict[str, Any]:
    """A legitimate history: root 1 (alice, bob, carol; 2 of 3) -> 2 (bob, carol, dave; 2 of 3)
    -> 3 (dave, erin; 1 of 2). Each rotation signed by the old root threshold and its own."""
    (sd, dave), (se, erin) = new_keys(tmp_path, "dave", "erin")
    alice, bob, carol = trust.signers
    v1 = load_trusted_root(trust.root_path)
    v2 = rotation(v1, [trust.keys[1], trust.keys[2], dave], 2, [alice, bob, carol])
    v3 = rotation(v2, [dave, erin], 1, [bob, carol, sd])
    return {
        "v1": v1,
        "v2": v2,
        "v3": v3,
        "v2_signers": [bob, carol],
        "v3_signers": [sd],
        "erin": se,
    }


def grow_chain(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], state: Path
) -> None:
    """Bundles carry the rotations, one per bundle; the state keeps each after it verified."""
    b1 = carry(bundle_signed_by(make_bundle, chain["v2_signers"], version=1), chain["v2"])
    assert verify(b1, trust.root_path, state).root_version == 2
    b2 = carry(bundle_signed_by(make_bundle, chain["v3_signers"], version=2), chain["v3"])
    assert verify(b2, trust.root_path, state).root_version == 3
    assert sorted(p.name for p in (state / ROOTS_DIR).iterdir()) == ["2.root.json", "3.root.json"]


# --- the anchor and the kept chain -----------------------------------------------------


def test_legit_chain_is_kept_and_walked_from_the_anchor(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    # A later bundle carries no rotation: the chain kept in the state gets it from 1 to 3.
    b3 = bundle_signed_by(make_bundle, chain["v3_signers"], version=3)
    verified = verify(b3, trust.root_path, state)
    assert verified.root_version == 3 and verified.version == 3
    # The keys of root 1 no longer sign bundles for this site (alice is gone, bob is not in 3).
    old = bundle_signed_by(make_bundle, trust.signers[:2], version=4)
    with pytest.raises(UnknownKeyError, match="does not trust"):
        verify(old, trust.root_path, state)
    # The kept chain is exactly the rotations, byte for byte as carried.
    assert (state / ROOTS_DIR / "3.root.json").read_bytes() == to_bytes(chain["v3"])
    assert not (state / "root.json").exists()
    # Without the state, root 1 alone cannot verify the bundle signed under root 3.
    with pytest.raises(UnknownKeyError):
        verify(b3, trust.root_path, None)


def test_anchor_equal_to_a_kept_root_continues_the_chain(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    anchor2 = tmp_path / "site" / "root-v2.json"
    write_atomic(anchor2, to_bytes(chain["v2"]))
    b = bundle_signed_by(make_bundle, chain["v3_signers"], version=3)
    assert verify(b, anchor2, state).root_version == 3


def test_planted_state_root_from_attacker_keys_is_refused(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    (m1, k1), (m2, k2) = new_keys(tmp_path, "mallory1", "mallory2")
    state = tmp_path / "state"
    (state / ROOTS_DIR).mkdir(parents=True)
    # Self-signed by the attacker, the next version: it would have outranked the anchor.
    planted = signed_root([k1, k2], 1, [m1, m2], version=2)
    write_atomic(state / ROOTS_DIR / "2.root.json", to_bytes(planted))
    evil = bundle_signed_by(make_bundle, [m1])
    with pytest.raises(TrustAnchorError, match="does not descend from the anchor") as caught:
        verify(evil, trust.root_path, state)
    assert "current root (version 1)" in caught.value.message
    assert "appliance trust reanchor --state" in (caught.value.hint or "")
    # A much higher version alone is a gap, not a shortcut.
    (state / ROOTS_DIR / "2.root.json").rename(state / ROOTS_DIR / "9.root.json")
    with pytest.raises(
        TrustAnchorError, match=r"keeps root version\(s\) 9 .* version 2 is missing"
    ):
        verify(evil, trust.root_path, state)
    assert not (state / "accepted.json").exists()


def test_old_form_state_root_is_refused_with_the_same_guidance(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    (m1, k1), (_, k2) = new_keys(tmp_path, "mallory1", "mallory2")
    state = tmp_path / "state"
    state.mkdir()
    write_atomic(state / "root.json", to_bytes(signed_root([k1, k2], 1, [m1], version=9)))
    with pytest.raises(TrustAnchorError, match=r"old form \(root\.json") as caught:
        verify(make_bundle(), trust.root_path, state)
    assert "appliance trust reanchor" in (caught.value.hint or "")
    # Even a copy of the anchor itself: the old form has no chain to check.
    shutil.copy(trust.root_path, state / "root.json")
    with pytest.raises(TrustAnchorError, match="old form"):
        verify(make_bundle(), trust.root_path, state)


def test_gap_in_the_kept_chain_is_refused(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    (state / ROOTS_DIR / "2.root.json").unlink()
    b = bundle_signed_by(make_bundle, chain["v3_signers"], version=3)
    with pytest.raises(TrustAnchorError, match=r"keeps root version\(s\) 3 .*version 2 is missing"):
        verify(b, trust.root_path, state)


@pytest.mark.parametrize("how", ["threshold-raised", "signature-dropped", "not-json", "renamed"])
def test_tampered_chain_file_is_refused(
    how: str, make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    kept = state / ROOTS_DIR / "2.root.json"
    data = json.loads(kept.read_text())
    if how == "threshold-raised":
        data["signed"]["roles"]["targets"]["threshold"] = 1
        kept.write_text(json.dumps(data))
        expected = "does not match the signed content"
    elif how == "signature-dropped":
        data["signatures"] = data["signatures"][:1]
        kept.write_text(json.dumps(data))
        expected = "1 valid signature"
    elif how == "not-json":
        kept.write_bytes(b"{ garbled")
        expected = "not valid JSON"
    else:
        kept.rename(state / ROOTS_DIR / "2.json")
        expected = "expected only N.root.json"
    b = bundle_signed_by(make_bundle, chain["v3_signers"], version=3)
    with pytest.raises(TrustAnchorError, match=expected):
        verify(b, trust.root_path, state)


def test_kept_root_of_the_anchors_version_with_other_content_is_refused(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    # Another root 2, validly self-signed by its keys, that the state did not grow from.
    other = signed_root(trust.keys, 2, trust.signers[:2], version=2)
    anchor = tmp_path / "other-v2.json"
    write_atomic(anchor, to_bytes(other))
    b = bundle_signed_by(make_bundle, trust.signers[:2], version=3)
    with pytest.raises(TrustAnchorError, match="keeps a root of version 2 with other content"):
        verify(b, anchor, state)


def test_a_kept_file_declaring_another_version_is_refused(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    (state / ROOTS_DIR / "3.root.json").unlink()
    write_atomic(state / ROOTS_DIR / "3.root.json", to_bytes(chain["v2"]))
    with pytest.raises(TrustAnchorError, match="declares version 2, expected 3"):
        verify(
            bundle_signed_by(make_bundle, chain["v2_signers"], version=3), trust.root_path, state
        )


def test_failed_verification_keeps_no_rotation(
    make_bundle: BundleFactory, trust: Trust, chain: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    b1 = carry(bundle_signed_by(make_bundle, chain["v2_signers"][:1], version=1), chain["v2"])
    with pytest.raises(ThresholdError):
        verify(b1, trust.root_path, state)
    assert not (state / ROOTS_DIR).exists()


@pytest.mark.parametrize("entry", ["verify", "install", "join", "deploy"])
def test_planted_state_is_refused_on_every_entry_point(
    entry: str,
    make_bundle: BundleFactory,
    trust: Trust,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (m1, k1), (m2, k2) = new_keys(tmp_path, "mallory1", "mallory2")
    state = tmp_path / "state"
    (state / ROOTS_DIR).mkdir(parents=True)
    write_atomic(
        state / ROOTS_DIR / "2.root.json", to_bytes(signed_root([k1, k2], 1, [m1, m2], version=2))
    )
    before = tree(state)
    bundle = bundle_signed_by(make_bundle, [m1])
    common = ["--trust", str(trust.root_path), "--state", str(state), "--json"]
    if entry == "verify":
        argv = ["bundle", "verify", str(bundle), *common]
    elif entry == "install":
        argv = ["bundle", "install", str(bundle), "--dest", str(tmp_path / "release"), *common]
    elif entry == "join":
        argv = ["bundle", "join", str(bundle), "--out", str(tmp_path / "joined"), *common]
    else:
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(
            "schema_version: 1\nhosts:\n  - name: a\n    address: 10.0.0.1\n    roles: [model-server]\n"
        )
        argv = ["deploy", "--profile", "cpu-llamacpp", "--bundle", str(bundle), "--inventory",
                str(inventory), "--dry-run", *common]  # fmt: skip
    code, result, err = cli(capsys, *argv)
    assert code == 4, (result, err)
    assert result["error"] == "TrustAnchorError" and "does not descend" in result["message"]
    assert "appliance trust reanchor" in err
    assert tree(state) == before
    assert not (tmp_path / "release").exists() and not (tmp_path / "joined").exists()


# --- re-anchoring on purpose -----------------------------------------------------------


def test_reanchor_moves_kept_roots_aside_audits_and_the_new_anchor_verifies(
    make_bundle: BundleFactory,
    trust: Trust,
    chain: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    grow_chain(make_bundle, trust, chain, state)
    accepted = (state / "accepted.json").read_bytes()
    # After a key compromise the site starts over from a fresh root with new keys.
    (n1, k1), (n2, k2) = new_keys(tmp_path, "new1", "new2")
    fresh = tmp_path / "fresh-root.json"
    write_atomic(fresh, to_bytes(signed_root([k1, k2], 1, [n1])))
    b = bundle_signed_by(make_bundle, [n2], version=3)
    with pytest.raises(TrustAnchorError, match=r"keeps a root of version|does not descend"):
        verify(b, fresh, state)
    # Not without confirmation: a script must say --yes, and nothing moves.
    code, result, _ = cli(
        capsys, "trust", "reanchor", "--state", str(state), "--trust", str(fresh), "--json"
    )
    assert code == 2 and result["error"] == "InputError" and "--yes" in result["message"]
    assert (state / ROOTS_DIR).is_dir() and not (state / "audit.jsonl").exists()
    code, result, _ = cli(capsys, "trust", "reanchor", "--state", str(state), "--trust", str(fresh),
                          "--yes", "--json")  # fmt: skip
    assert code == 0, result
    assert result["reanchored"] is True and result["moved"] == ["roots"]
    assert result["previous_versions"] == [2, 3] and result["anchor_version"] == 1
    backup = Path(result["backup"])
    assert backup.parent == state and backup.name.startswith("reanchored-")
    assert sorted(p.name for p in (backup / ROOTS_DIR).iterdir()) == ["2.root.json", "3.root.json"]
    assert not (state / ROOTS_DIR).exists()
    assert (state / "accepted.json").read_bytes() == accepted  # rollback protection survives
    records = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert record["event"] == "reanchored" and record["anchor"] == str(fresh)
    assert record["anchor_version"] == 1 and record["previous_versions"] == [2, 3]
    assert record["backup"] == backup.name and record["operator"]
    assert record["anchor_digest"] == result["anchor_digest"]
    # The new anchor now verifies a bundle its keys signed (newer than the accepted 2).
    assert verify(b, fresh, state).version == 3
    assert json.loads((state / "accepted.json").read_text())["demo/stable"]["version"] == 3


def test_reanchor_moves_an_old_form_root_and_refuses_a_bad_anchor(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(trust.root_path, state / "root.json")
    # An unsigned anchor is refused (exit 4), nothing moves, nothing is recorded.
    unsigned = tmp_path / "unsigned.json"
    write_atomic(unsigned, to_bytes(new_root(trust.keys, 2, NEXT_YEAR)))
    code, result, _ = cli(capsys, "trust", "reanchor", "--state", str(state), "--trust", str(unsigned),
                          "--yes", "--json")  # fmt: skip
    assert code == 4 and result["error"] == "UnsignedError"
    assert (state / "root.json").exists() and not (state / "audit.jsonl").exists()
    # A state directory that does not exist is a mistyped path, not something to create.
    code, result, _ = cli(capsys, "trust", "reanchor", "--state", str(tmp_path / "nope"), "--trust",
                          str(trust.root_path), "--yes", "--json")  # fmt: skip
    assert code == 2 and not (tmp_path / "nope").exists()
    code, result, _ = cli(capsys, "trust", "reanchor", "--state", str(state), "--trust",
                          str(trust.root_path), "--yes", "--json")  # fmt: skip
    assert code == 0 and result["moved"] == ["root.json"]
    assert (Path(result["backup"]) / "root.json").exists()
    assert verify(make_bundle(), trust.root_path, state).root_version == 1


def test_two_reanchors_in_one_second_keep_both_backups(trust: Trust, tmp_path: Path) -> None:
    state = TrustState(tmp_path / "state")
    anchor = load_trusted_root(trust.root_path)
    for _ in range(2):
        (state.directory / ROOTS_DIR).mkdir(parents=True)
        write_atomic(state.directory / ROOTS_DIR / "2.root.json", b"{}")
        state.reanchor(anchor, str(trust.root_path), "tester")
    backups = sorted(p for p in state.directory.iterdir() if p.name.startswith("reanchored-"))
    assert len(backups) == 2 and all((b / ROOTS_DIR / "2.root.json").exists() for b in backups)


# --- key identity ----------------------------------------------------------------------


def _root_dict(trust: Trust) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(to_bytes(new_root(trust.keys, 2, NEXT_YEAR)))
    return data["signed"]


def _alias(signed: dict[str, Any], keyid: str, *, upper: bool) -> str:
    """List the key ``keyid`` a second time under another keyid (and hex spelling)."""
    key = copy.deepcopy(signed["keys"][keyid])
    if upper:
        key["keyval"]["public"] = key["keyval"]["public"].upper()
    alias = "a" * 64
    signed["keys"][alias] = key
    for role in signed["roles"].values():
        role["keyids"].append(alias)
    return alias


@pytest.mark.parametrize("upper", [True, False], ids=["upper-case-hex", "same-hex"])
def test_one_key_under_two_keyids_is_refused_in_a_root(
    upper: bool, trust: Trust, tmp_path: Path
) -> None:
    signed = _root_dict(trust)
    alice = trust.keys[0].keyid
    alias = _alias(signed, alice, upper=upper)
    # Alice alone, signing under both keyids, would meet the threshold of 2.
    data = json.loads(raw_signed(signed, [trust.signers[0]]))
    data["signatures"].append({"keyid": alias, "sig": data["signatures"][0]["sig"]})
    path = tmp_path / "root.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="same public key is listed under two keyids"):
        load_trusted_root(path)


def test_upper_case_hex_duplicate_is_refused_in_a_rotation(trust: Trust, tmp_path: Path) -> None:
    signed = _root_dict(trust)
    signed["version"] = 2
    _alias(signed, trust.keys[0].keyid, upper=True)
    history = tmp_path / "history"
    history.mkdir()
    (history / "2.root.json").write_bytes(raw_signed(signed, trust.signers))
    with pytest.raises(MetadataError, match="listed under two keyids"):
        apply_rotations(load_trusted_root(trust.root_path), history)


def test_trust_init_and_rotate_refuse_one_key_spelt_twice(
    trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = tmp_path / "keys" / "alice.pub.json"
    upper = tmp_path / "alice-upper.pub.json"
    data = json.loads(pub.read_text())
    data["keyval"]["public"] = data["keyval"]["public"].upper()
    upper.write_text(json.dumps(data))
    key_upper = load_public_key(upper)[0]  # its keyid still matches the decoded key
    with pytest.raises(InputError, match="same public key was given twice"):
        new_root([trust.keys[0], key_upper], 2, NEXT_YEAR)
    for argv in (
        ["trust", "init", "--threshold", "2", "--out", str(tmp_path / "r.json")],
        ["trust", "rotate", "--from", str(trust.root_path), "--threshold", "2", "--out", str(tmp_path / "r.json")],
    ):  # fmt: skip
        code, _, err = cli(capsys, *argv, "--key", str(pub), "--key", str(upper))
        assert code == 2 and "same public key was given twice" in err
        assert not (tmp_path / "r.json").exists()


def test_a_role_listing_one_keyid_twice_is_refused(trust: Trust, tmp_path: Path) -> None:
    signed = _root_dict(trust)
    alice = trust.keys[0].keyid
    signed["roles"]["targets"]["keyids"] = [alice, alice]
    path = tmp_path / "root.json"
    path.write_bytes(raw_signed(signed, trust.signers[:2]))
    with pytest.raises(MetadataError, match="Nonunique keyids"):
        load_trusted_root(path)


def test_a_role_naming_an_unknown_keyid_is_refused(trust: Trust, tmp_path: Path) -> None:
    signed = _root_dict(trust)
    signed["roles"]["targets"]["keyids"].append("e" * 64)
    path = tmp_path / "root.json"
    path.write_bytes(raw_signed(signed, trust.signers[:2]))
    with pytest.raises(MetadataError, match="not one of the root's keys"):
        load_trusted_root(path)


def test_one_keyid_twice_in_the_signatures_is_refused(trust: Trust, tmp_path: Path) -> None:
    signed = _root_dict(trust)
    data = json.loads(raw_signed(signed, trust.signers[:1]))
    data["signatures"] *= 2
    path = tmp_path / "root.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="Multiple signatures found for keyid"):
        load_trusted_root(path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda k: k.update(keytype="ecdsa", scheme="ecdsa-sha2-nistp256"), "only ed25519"),
        (lambda k: k["keyval"].update(public="ab" * 31), "64 hex digits"),
        (lambda k: k["keyval"].update(public="zz" * 32), "64 hex digits"),
        (lambda k: k["keyval"].update(private="00" * 32), "exactly one keyval field"),
    ],
    ids=["ecdsa", "31-bytes", "not-hex", "extra-keyval-field"],
)
def test_keys_appliance_does_not_make_are_refused(
    change: Any, expected: str, trust: Trust, tmp_path: Path
) -> None:
    signed = _root_dict(trust)
    change(signed["keys"][trust.keys[2].keyid])
    path = tmp_path / "root.json"
    path.write_bytes(raw_signed(signed, trust.signers[:2]))
    with pytest.raises(MetadataError, match=expected):
        load_trusted_root(path)


# --- exact types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "found"),
    [
        ("version", True, "boolean"),
        ("version", 2.0, "number with a fraction"),
        ("version", "2", "string"),
        ("expires", "2030-1-5T1:2:3Z", "not of the form YYYY-MM-DDTHH:MM:SSZ"),
        ("expires", "2030-02-30T00:00:00Z", "not a real date"),
        ("expires", "2030-01-05T00:00:00+00:00", "not of the form"),
        ("expires", 1893456000, "type integer, expected a string"),
        ("threshold", True, "boolean"),
        ("threshold", 2.0, "number with a fraction"),
        ("keyids", "abc", "type string, expected an array"),
        ("consistent_snapshot", 0, "type integer, expected a boolean"),
    ],
)
def test_root_fields_have_exact_types(
    field: str, value: Any, found: str, trust: Trust, tmp_path: Path
) -> None:
    signed = _root_dict(trust)
    if field in ("threshold", "keyids"):
        signed["roles"]["root"][field] = value
    else:
        signed[field] = value
    path = tmp_path / "root.json"
    try:
        path.write_bytes(raw_signed(signed, trust.signers[:2]))
    except Exception:  # a float cannot even be signed (canonical JSON): keep no signature
        path.write_text(json.dumps({"signed": signed, "signatures": []}))
    with pytest.raises(MetadataError, match=f"`signed\\.(roles\\.root\\.)?{field}`") as caught:
        load_trusted_root(path)
    assert found in caught.value.message


def _manifest_attack(bundle: Path, trust: Trust, mutate: Any) -> None:
    data = json.loads((bundle / TARGETS_FILE).read_text())
    mutate(data["signed"])
    try:
        raw = raw_signed(data["signed"], trust.signers[:2])
    except Exception:
        raw = json.dumps({"signed": data["signed"], "signatures": data["signatures"]}).encode()
    (bundle / TARGETS_FILE).write_bytes(raw)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: s.update(version=True), "`signed.version` has type boolean, expected an integer"),
        (lambda s: s.update(version=1.0), "`signed.version` has type number with a fraction"),
        (lambda s: s.update(version="1"), "`signed.version` has type string, expected an integer"),
        (lambda s: s.update(expires="2030-1-5T00:00:00Z"), "`signed.expires` is not of the form"),
        (
            lambda s: s["targets"]["models/demo/config.json"].update(length=True),
            "length` has type boolean, expected an integer",
        ),
        (
            lambda s: s["targets"]["models/demo/config.json"].update(length="24"),
            "length` has type string, expected an integer",
        ),
        (
            lambda s: s["appliance"]["media"].update(part_size=str(s["appliance"]["media"]["part_size"])),
            "`media.part_size` has the wrong type: expected an integer, found string",
        ),
        (
            lambda s: s["appliance"]["media"]["parts"][0].__setitem__(0, True),
            "`media.parts[0][0]` has the wrong type: expected an integer, found boolean",
        ),
        (lambda s: s["appliance"].update(format=True), "expected the integer 1, found True"),
        (
            lambda s: s["targets"]["models/demo/model.safetensors"].update(shard_size=65536.0),
            "shard_size` has type number with a fraction",
        ),
    ],
    ids=["version-true", "version-float", "version-string", "expires-malformed", "length-true",
         "length-string", "part-size-string", "part-index-true", "format-true", "shard-size-float"],
)  # fmt: skip
def test_manifest_fields_have_exact_types(
    mutate: Any, fragment: str, make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    bundle = make_bundle()
    _manifest_attack(bundle, trust, mutate)
    with pytest.raises(MetadataError) as caught:
        verify(bundle, trust.root_path, tmp_path / "state")
    assert fragment in caught.value.message, caught.value.message
    assert not (tmp_path / "state" / "accepted.json").exists()


def test_every_refusal_here_is_a_verification_error() -> None:
    assert issubclass(TrustAnchorError, VerificationError)
    assert TrustAnchorError("x").exit_code == 4
