"""Adapters read from their model cards, and adapter-only bundles that reuse their base."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.connected.build import build_bundle
from appliance.bundle.connected.recipe import Recipe, parse_recipe
from appliance.bundle.manifest import bundle_contents, read_targets
from appliance.bundle.payload import model_files, weights_digest
from appliance.errors import BundleBuildError, InputError
from appliance.events import drain
from tests.unit.bundle.test_build import NOW, small_llama
from tests.unit.bundle.test_sources import make_adapter

ROOT = Path(__file__).resolve().parents[3]
CARD = ROOT / "tests/fixtures/cards/complete.md"


def _recipe(tmp: Path, **data: Any) -> Recipe:
    base: dict[str, Any] = {"name": "lab", "version": 1, "expires": "30d"}
    return parse_recipe(base | data, base_dir=tmp, where="test recipe")


def _build(recipe: Recipe, out: Path) -> tuple[Any, list[Any]]:
    drain(build_bundle(recipe, out, now=NOW), lambda e: None)
    payload, records = bundle_contents(read_targets(out))
    return payload, records


def _carded_adapter(tmp: Path, name: str, **config: Any) -> Path:
    directory = make_adapter(tmp / name, **({
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "base_model_name_or_path": "google/gemma-3-270m",
    } | config))  # fmt: skip
    (directory / "README.md").write_text(CARD.read_text())
    return directory


def _adapters(tmp: Path, *names: str) -> list[dict[str, Any]]:
    out = []
    for name in names:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        directory = _carded_adapter(tmp, name)
        out.append({"name": name, "path": str(directory), "card": str(directory / "README.md")})
    return out


def test_an_adapter_with_a_card_carries_its_record_and_provenance_from_it(tmp_path: Path) -> None:
    payload, _ = _build(
        _recipe(tmp_path, model={"local_dir": str(small_llama(tmp_path)), "licence": "MIT"},
                adapters=_adapters(tmp_path, "pirate")),
        tmp_path / "out",
    )  # fmt: skip
    (adapter,) = payload.adapters
    assert adapter.record is not None
    assert adapter.record.provider.name == "Example Lab GmbH"
    prov = adapter.provenance
    assert prov.base_model == "google/gemma-3-270m"
    assert prov.base_model_revision == "9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1"
    assert (prov.rank, prov.alpha, prov.licence) == (16, 32, "Apache-2.0")
    assert prov.training_summary is None


def test_a_card_contradicting_adapter_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    directory = _carded_adapter(tmp_path, "x", r=8)  # the card says rank 16
    recipe = _recipe(
        tmp_path, model={"local_dir": str(small_llama(tmp_path)), "licence": "MIT"},
        adapters=[{"name": "x", "path": str(directory), "card": str(directory / "README.md")}],
    )  # fmt: skip
    with pytest.raises(BundleBuildError) as caught:
        _build(recipe, tmp_path / "out")
    assert "rank: the card says 16, adapter_config.json r = 8" in caught.value.message
    assert not (tmp_path / "out").exists()


def test_adapter_only_bundle_reuses_its_base_by_digest_and_carries_only_the_adapters(
    tmp_path: Path,
) -> None:
    model = small_llama(tmp_path)
    base_payload, base_records = _build(
        _recipe(tmp_path, model={"local_dir": str(model), "licence": "MIT"},
                adapters=_adapters(tmp_path / "src1", "pirate")),
        tmp_path / "v1",
    )  # fmt: skip
    payload, records = _build(
        _recipe(tmp_path, version=2, reuse={"bundle": str(tmp_path / "v1")},
                adapters=_adapters(tmp_path / "src2", "pirate", "poet")),
        tmp_path / "v2",
    )  # fmt: skip
    carried = {r.path for r in records}
    assert {a.name for a in payload.adapters} == {"pirate", "poet"}
    # the model's small files are carried (planning reads config.json), its weights are not
    assert "models/small-llama/config.json" in carried
    assert not any(p.endswith((".safetensors", ".bin")) for p in carried if p.startswith("models/"))
    reuses = payload.reuses
    assert reuses is not None and (reuses.bundle, reuses.version) == ("lab", 1)
    reused = {f.path: f.sha256 for f in reuses.files}
    base = {r.path: r.sha256 for r in base_records}
    assert (
        reused["models/small-llama/model.safetensors"]
        == base["models/small-llama/model.safetensors"]
    )
    # the base's own adapters are replaced, not reused; nothing is both carried and reused
    assert not any(p.startswith("adapters/") for p in reused) and not carried & reused.keys()
    assert set(reused) | carried >= set(base) - {p for p in base if p.startswith("adapters/")}
    # the digest names the weights the adapters were trained on, the same from either bundle
    weights = [
        (name, hashlib.sha256(model.joinpath(name).read_bytes()).hexdigest())
        for name in ("model.safetensors", "extra.bin", "config.json")  # config: not a weight
    ]
    assert weights_digest(weights) == reuses.model_digest
    assert weights_digest(weights[:2]) == reuses.model_digest != weights_digest(weights[:1])
    both = model_files(payload, ((r.path, r.sha256) for r in records))
    assert weights_digest(both) == weights_digest(
        model_files(base_payload, ((r.path, r.sha256) for r in base_records))
    )
    assert payload.model == base_payload.model and payload.wheels == base_payload.wheels
    assert sum(r.length for r in records) < sum(f.length for f in reuses.files)


def test_adapter_only_bundle_must_continue_its_base(tmp_path: Path) -> None:
    model = small_llama(tmp_path)
    _build(_recipe(tmp_path, model={"local_dir": str(model), "licence": "MIT"}), tmp_path / "v1")
    for data, expected in (
        ({"version": 1}, "must have a higher version, found 1"),
        ({"version": 2, "name": "other"}, "is bundle 'lab', the recipe builds 'other'"),
    ):
        recipe = _recipe(tmp_path, reuse={"bundle": str(tmp_path / "v1")},
                         adapters=_adapters(tmp_path / data.get("name", "n"), "a"), **data)  # fmt: skip
        with pytest.raises(BundleBuildError, match=expected):
            _build(recipe, tmp_path / "v2")
    # a base whose small files changed since it was signed is refused
    config = tmp_path / "v1/files/models/small-llama/config.json"
    config.chmod(0o644)
    config.write_text(json.dumps({"changed": True}))
    recipe = _recipe(tmp_path, version=2, reuse={"bundle": str(tmp_path / "v1")},
                     adapters=_adapters(tmp_path / "c", "a"))  # fmt: skip
    with pytest.raises(BundleBuildError, match="changed on disk since it was signed"):
        _build(recipe, tmp_path / "v2")


def test_adapter_only_recipe_takes_nothing_else(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="takes model from its base bundle"):
        _recipe(tmp_path, reuse={"bundle": "x"}, model={"local_dir": "m", "licence": "MIT"},
                adapters=_adapters(tmp_path, "a"))  # fmt: skip
    with pytest.raises(InputError, match="must carry at least one adapter"):
        _recipe(tmp_path, reuse={"bundle": "x"})
