"""The issue's done-when, through the real `appliance` entry point in subprocesses.

Real Ed25519 keys, a 2-of-3 trusted root, the real Gemma 3 270M GGUF from its
PyPI package (~250 MB, 4 shards) and a local model directory, split into
parts across two "media", joined, verified; an older version replayed is
refused; a flipped byte is refused naming the file (and the part).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def appliance(*args: str | Path, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == expect, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def flip(path: Path, offset: int) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    for name in ("alice", "bob", "carol"):
        appliance("keys", "generate", "--out", "keys", "--name", name, cwd=work)
    appliance("trust", "init", "--key", "keys/alice.pub.json", "--key", "keys/bob.pub.json",
              "--key", "keys/carol.pub.json", "--threshold", "2", "--out", "site-root.json", cwd=work)  # fmt: skip
    appliance("trust", "sign", "site-root.json", "--key", "keys/alice.key", cwd=work)
    appliance("trust", "sign", "site-root.json", "--key", "keys/carol.key", cwd=work)
    return work


def demo_recipe(work: Path, version: int) -> Path:
    text = (ROOT / "bundles/demo.yaml").read_text()
    text = text.replace("version: 1\n", f"version: {version}\n").replace(
        "part_size: 700M", "part_size: 100M"
    )
    path = work / f"demo-{version}.yaml"
    path.write_text(text)
    return path


def test_gemma_bundle_2_of_3_split_join_verify_replay_and_flip(site: Path) -> None:
    work = site
    appliance("bundle", "build", "--recipe", demo_recipe(work, 1), "--out", "demo-1", cwd=work)
    # One signature is not enough; the second signer completes the threshold.
    appliance("bundle", "sign", "demo-1", "--key", "keys/bob.key", cwd=work)
    failed = appliance(
        "bundle", "verify", "demo-1", "--trust", "site-root.json", "--json", cwd=work, expect=4
    )
    assert json.loads(failed.stdout)["error"] == "ThresholdError"
    appliance("bundle", "sign", "demo-1", "--key", "keys/carol.key", cwd=work)
    inspect = json.loads(appliance("bundle", "inspect", "demo-1", "--json", cwd=work).stdout)
    assert inspect["model"]["licence"] == "LicenseRef-Gemma" and len(inspect["signatures"]) == 2
    assert inspect["media"]["parts"] == 3
    # Split, carry on two media in mixed order, join on site, verify with state.
    appliance("bundle", "split", "demo-1", "--out", "split-1", cwd=work)
    parts = sorted((work / "split-1").glob("demo-1.part*"))
    assert [p.name for p in parts] == [f"demo-1.part00{i}-of-003" for i in (1, 2, 3)]
    for medium, chosen in (("usb-a", parts[::2]), ("usb-b", parts[1::2])):
        shutil.copytree(work / "split-1/metadata", work / medium / "metadata")
        for part in chosen:
            shutil.copy(part, work / medium / part.name)
    appliance(
        "bundle",
        "join",
        "usb-b",
        "usb-a",
        "--trust",
        "site-root.json",
        "--out",
        "joined-1",
        cwd=work,
    )
    v1 = json.loads(appliance("bundle", "verify", "joined-1", "--trust", "site-root.json",
                              "--state", "state", "--json", cwd=work).stdout)  # fmt: skip
    assert v1["version"] == 1 and len(v1["signers"]) == 2
    # Version 2 accepted; replaying version 1 is refused.
    appliance("bundle", "build", "--recipe", demo_recipe(work, 2), "--out", "demo-2", cwd=work)
    for key in ("alice", "carol"):
        appliance("bundle", "sign", "demo-2", "--key", f"keys/{key}.key", cwd=work)
    appliance(
        "bundle", "verify", "demo-2", "--trust", "site-root.json", "--state", "state", cwd=work
    )
    replay = appliance("bundle", "verify", "joined-1", "--trust", "site-root.json", "--state", "state", "--json",
                       cwd=work, expect=4)  # fmt: skip
    assert json.loads(replay.stdout)["error"] == "RollbackError"
    # One flipped byte in the model: refused, naming the file and the shard.
    shutil.copytree(work / "demo-2", work / "demo-2-flipped")
    gguf = next((work / "demo-2-flipped/files/models").glob("*.gguf"))
    flip(gguf, 150_000_000)
    flipped = appliance(
        "bundle",
        "verify",
        "demo-2-flipped",
        "--trust",
        "site-root.json",
        "--json",
        cwd=work,
        expect=4,
    )
    error = json.loads(flipped.stdout)
    assert error["error"] == "DigestMismatchError"
    assert f"models/{gguf.name} shard 3 of 4" in error["message"]
    assert "VERIFIED" not in flipped.stdout + flipped.stderr
    # One flipped byte in a part: join names the part and the file inside it.
    flip(work / "usb-a/demo-1.part003-of-003", 1000)
    bad = appliance("bundle", "join", "usb-a", "usb-b", "--trust", "site-root.json", "--out", "joined-again",
                    "--json", cwd=work, expect=4)  # fmt: skip
    message = json.loads(bad.stdout)["message"]
    assert "demo-1.part003-of-003" in message and gguf.name in message
    assert not (work / "joined-again").exists()


def test_local_directory_bundle_and_the_simple_one_key_path(site: Path) -> None:
    work = site
    model = work / "local-model"
    model.mkdir()
    shutil.copy(
        ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3/config.json", model / "config.json"
    )
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    # The simple path: one generated key signs, its root.json verifies.
    appliance("keys", "generate", "--out", "solo", cwd=work)
    appliance("bundle", "build", "--model", model, "--name", "local", "--version", "1", "--licence", "Apache-2.0",
              "--out", "local-1", cwd=work)  # fmt: skip
    appliance("bundle", "sign", "local-1", "--key", "solo/signer.key", cwd=work)
    result = json.loads(
        appliance(
            "bundle", "verify", "local-1", "--trust", "solo/root.json", "--json", cwd=work
        ).stdout
    )
    assert result["files"] == 3
    # The 2-of-3 site does not trust the solo key.
    refused = appliance(
        "bundle", "verify", "local-1", "--trust", "site-root.json", "--json", cwd=work, expect=4
    )
    assert json.loads(refused.stdout)["error"] == "UnknownKeyError"


def test_a_bundle_with_an_adapter_can_be_signed_and_verified(site: Path) -> None:
    """Adapter provenance is signed too: canonical JSON must accept every payload field."""
    from tests.unit.bundle.test_sources import PROVENANCE, make_adapter

    work = site
    model = work / "base-model"
    model.mkdir(exist_ok=True)
    shutil.copy(
        ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3/config.json", model / "config.json"
    )
    adapter = make_adapter(work, base_model_name_or_path="mistralai/Mistral-7B-Instruct-v0.3")
    provenance = {**PROVENANCE, "base_model": "mistralai/Mistral-7B-Instruct-v0.3"}
    recipe = {
        "name": "with-adapter", "version": 1, "expires": "30d", "profiles": [],
        "model": {"local_dir": str(model), "licence": "Apache-2.0"},
        "adapters": [{"name": "support", "path": str(adapter), "provenance": provenance}],
    }  # fmt: skip
    (work / "adapter.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    appliance("bundle", "build", "--recipe", "adapter.yaml", "--out", "with-adapter", cwd=work)
    for key in ("alice", "bob"):
        appliance("bundle", "sign", "with-adapter", "--key", f"keys/{key}.key", cwd=work)
    result = appliance(
        "bundle", "verify", "with-adapter", "--trust", "site-root.json", "--json", cwd=work
    )
    assert json.loads(result.stdout)["name"] == "with-adapter"
