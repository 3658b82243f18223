"""Bundle test fixtures: real Ed25519 keys, a real trusted root, bundles made the way the build makes them.

``make_bundle`` writes files/ with ``copy_and_hash`` and one ``PartHasher``
(the build's own primitives) and an unsigned manifest with ``write_unsigned``;
it does not go through sources or recipes, so each test controls every byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, SSlibKey

from appliance.bundle.format import FILES_DIR
from appliance.bundle.hashing import PartHasher, copy_and_hash
from appliance.bundle.keys import generate_key, load_public_key, load_signer
from appliance.bundle.manifest import sign_bundle, write_unsigned
from appliance.bundle.payload import MediaLayout, Payload
from appliance.bundle.trust import new_root, sign_metadata, to_bytes, write_atomic

SHARD = 64 * 1024  # small shards so multi-shard paths run in milliseconds
PART = 96 * 1024


@dataclass
class Trust:
    signers: list[CryptoSigner]
    keys: list[SSlibKey]
    root_path: Path
    key_paths: list[Path]


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    """Three signers, a site root requiring 2 of them for bundles."""
    pairs = [generate_key(tmp_path / "keys", n) for n in ("alice", "bob", "carol")]
    signers = [load_signer(p.private_path) for p in pairs]
    keys = [load_public_key(p.public_path)[0] for p in pairs]
    root = new_root(keys, 2, datetime.now(UTC).replace(microsecond=0) + timedelta(days=365))
    for signer in signers[:2]:
        sign_metadata(root, signer)
    path = tmp_path / "site" / "root.json"
    path.parent.mkdir()
    write_atomic(path, to_bytes(root))
    return Trust(signers, keys, path, [p.private_path for p in pairs])


def default_files() -> dict[str, bytes]:
    # 3 shards + a few bytes, no two shards alike (a swap of equal shards would prove nothing)
    big = random.Random(7).randbytes(3 * SHARD + 4)
    return {
        "models/demo/config.json": b'{"model_type": "llama"}\n',
        "models/demo/model.safetensors": big,
        "wheels/demo-1.0-py3-none-any.whl": b"PK\x03\x04wheel",
        "artifacts/empty/empty.txt": b"",
    }


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, trust: Trust) -> BundleFactory:
    counter = iter(range(1000))

    def make(
        *,
        files: dict[str, bytes] | None = None,
        name: str = "demo",
        channel: str = "stable",
        version: int = 1,
        expires: datetime | None = None,
        sign_with: int = 2,
        directory: Path | None = None,
    ) -> Path:
        bundle = directory or tmp_path / f"bundle-{next(counter)}"
        content = default_files() if files is None else files
        staging = tmp_path / f"src-{next(counter)}"
        (bundle / FILES_DIR).mkdir(parents=True)
        parts = PartHasher(PART)
        records = []
        for rel in sorted(content):
            src = staging / rel
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(content[rel])
            dst = bundle / FILES_DIR / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            records.append(copy_and_hash(src, dst, rel, shard_size=SHARD, parts=parts))
        media = MediaLayout(
            part_size=PART, parts=[(p.index, p.offset, p.length, p.sha256) for p in parts.finish()]
        )
        payload = Payload(name=name, channel=channel, created="2026-11-22T00:00:00+00:00",
                          created_by="tests", media=media)  # fmt: skip
        when = expires or datetime.now(UTC) + timedelta(days=30)
        write_unsigned(bundle, payload=payload, records=records, version=version, expires=when)
        for signer in trust.signers[:sign_with]:
            sign_bundle(bundle, signer)
        return bundle

    return make
