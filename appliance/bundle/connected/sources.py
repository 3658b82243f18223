"""Fetch what a recipe names and say what to copy into the bundle (connected side only).

Each fetcher returns a ``Fetched``: the entry to record in the signed payload
(``ModelEntry``, ``AdapterEntry``, ``WheelSet`` for the model server's and for
the gateway's wheels, ``ArtifactEntry``), the files to copy as (source path,
path under ``files/``), and notes for the operator (what was excluded and why). Nothing is copied here: the build copies and
hashes every file once, in manifest order.

Invariants:
- Only regular files are bundled. Special files (FIFOs, devices, sockets) and
  symlinks to directories are refused; a symlink to a file is followed when
  reading only if its target stays inside the tree it belongs to (the model
  directory, or the HF cache repository for ``snapshots/`` -> ``blobs/`` links).
- Nothing is skipped silently: every exclusion is returned as a note.
- Model revisions are recorded as the commit actually read, not the ref asked for.
- Adapter provenance declared in a recipe must agree with the adapter's own
  ``adapter_config.json`` (rank, alpha, target modules, base model).
- Artifacts are refused unless their SHA-256 matches the recipe's pin; a refused
  or interrupted download leaves no file behind.
- No secret reaches a process argument: pip gets only recipe values (which
  refuse URLs with credentials); tokens stay in the environment/netrc of the
  tools that read them.
- A wheel set records where its wheels came from (build notes ``index-url``,
  ``extra-index-urls``, ``find-links``: pip reads the recipe's sources only) and
  the torch build among them; a set mixing torch builds is refused
  (``torch_variant``).

Layout under ``files/``: ``models/<name>/...`` (HF directory) or
``models/<file>.gguf``, ``adapters/<name>/...``, ``wheels/*.whl``,
``gateway-wheels/*.whl`` (the gateway's pinned closure and the appliance
wheel), ``artifacts/<name>/<filename>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import stat
import subprocess
import sys
import zipfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from pydantic import ValidationError

from appliance import __version__, package_data
from appliance.bundle.connected.recipe import (
    APPLIANCE_WHEEL,
    AdapterSpec,
    ArtifactSpec,
    GatewaySpec,
    InstallerSpec,
    ModelSpec,
    WheelsSpec,
)
from appliance.bundle.connected.torch_variant import read_wheel_info, torch_build
from appliance.bundle.format import describe_mode
from appliance.bundle.payload import (
    GATEWAY_WHEELS_DIR,
    INSTALLER_WHEELS_DIR,
    WHEELS_DIR,
    AdapterEntry,
    AdapterProvenance,
    ArtifactEntry,
    DatasetUse,
    ModelEntry,
    ModelSource,
    WheelSet,
)
from appliance.compliance.card import load_card, require_record
from appliance.compliance.record import TransparencyRecord
from appliance.errors import BundleBuildError
from appliance.input_files import open_input, parse_json, read_input

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SPDX = re.compile(r"(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*)")

if TYPE_CHECKING:
    import httpx  # imported when used: httpx 0.28 loads click and rich on import

E = TypeVar("E")

# Not model content: version-control and editor metadata, HF local_dir bookkeeping.
EXCLUDED_NAMES = {
    ".git": "version-control metadata",
    ".hg": "version-control metadata",
    ".svn": "version-control metadata",
    "__pycache__": "Python bytecode cache",
    ".DS_Store": "macOS folder metadata",
}
EXCLUDED_PATHS = {".cache/huggingface": "huggingface_hub download bookkeeping"}

ARTIFACT_MAX_BYTES = 64 * 1024**3  # a server that never stops sending must not fill the disk
DOWNLOAD_CHUNK = 1024 * 1024
PIP_TIMEOUT_S = 4 * 3600  # vLLM and its CUDA wheels are several GB
PYPI_INDEX = "https://pypi.org/simple"  # pip's index when the recipe sets no_index: false


@dataclass(frozen=True, slots=True)
class Fetched(Generic[E]):
    entry: E
    files: list[tuple[Path, str]]  # (where to read, path under files/)
    notes: list[str] = field(default_factory=list)


# --- walking a local tree -----------------------------------------------------------


def walk_tree(
    root: Path,
    dest_prefix: str,
    *,
    link_root: Path | None = None,
    exclude: bool = True,
) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every regular file under ``root`` as (path, ``dest_prefix/relative``), sorted; plus notes.

    Symlinks to files are followed when their target lies inside ``link_root``
    (default: ``root``). With ``exclude``, ``EXCLUDED_NAMES``/``EXCLUDED_PATHS``
    are left out and named in the notes.
    """
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        raise BundleBuildError(f"{root}: cannot read: {exc.strerror or exc}") from exc
    if not real_root.is_dir():
        raise BundleBuildError(f"{root} is not a directory")
    boundary = (link_root or root).resolve()
    files: list[tuple[Path, str]] = []
    notes: list[str] = []

    def visit(directory: Path, rel: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise BundleBuildError(f"{directory}: cannot list: {exc.strerror or exc}") from exc
        if not entries and rel:
            notes.append(f"{root}: empty directory {rel}/ is not bundled (bundles hold files only)")
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            reason = EXCLUDED_NAMES.get(entry.name) or EXCLUDED_PATHS.get(relpath)
            if exclude and reason is not None:
                notes.append(f"{root}: excluded {relpath} ({reason})")
                continue
            path = Path(entry.path)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                raise BundleBuildError(f"{path}: cannot read: {exc.strerror or exc}") from exc
            if stat.S_ISLNK(mode):
                _check_link(path, boundary)
                files.append((path, f"{dest_prefix}/{relpath}"))
            elif stat.S_ISDIR(mode):
                visit(path, relpath)
            elif stat.S_ISREG(mode):
                files.append((path, f"{dest_prefix}/{relpath}"))
            else:
                raise BundleBuildError(
                    f"{path} is {describe_mode(mode)}; a bundle holds regular files only",
                    hint="Remove it from the source directory.",
                )

    visit(real_root, "")
    if not files:
        raise BundleBuildError(f"{root} holds no files")
    return files, notes


def _check_link(path: Path, boundary: Path) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise BundleBuildError(
            f"{path} is a broken symlink or a symlink loop",
            hint="Copy the real file in place of the link (cp -L), or fetch the model again.",
        ) from exc
    if not target.is_relative_to(boundary):
        raise BundleBuildError(
            f"{path} is a symlink to {target}, outside {boundary}; links are followed only "
            "inside the source",
            hint="Copy the file into the source directory (cp -L) if it belongs in the bundle.",
        )
    mode = target.stat().st_mode
    if not stat.S_ISREG(mode):
        raise BundleBuildError(
            f"{path} is a symlink to {target}, which is {describe_mode(mode)}; "
            "only links to regular files are followed",
            hint="Replace the link with the files it points to.",
        )


def safe_name(text: str) -> str:
    """A payload ``Name`` made from a repo, directory or file name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:128]
    if not name:
        raise BundleBuildError(f"cannot make a bundle name from {text!r}; set model.name")
    return name


# --- models --------------------------------------------------------------------------


def fetch_model(spec: ModelSpec, *, hf_cache_dir: Path | None = None) -> Fetched[ModelEntry]:
    """Resolve the recipe's model source; ``hf_cache_dir`` overrides the HF cache for ``hub``."""
    if spec.hub is not None:
        snapshot, commit = hub_snapshot(
            spec.hub.repo_id, spec.hub.revision, cache_dir=hf_cache_dir, offline=False
        )
        source = ModelSource(
            kind="hf-hub",
            repo_id=spec.hub.repo_id,
            revision=spec.hub.revision,
            resolved_commit=commit,
        )
        return _hf_snapshot_model(spec, spec.hub.repo_id, snapshot, source)
    if spec.hf_cache is not None:
        snapshot, commit = hub_snapshot(
            spec.hf_cache.repo_id,
            spec.hf_cache.revision,
            cache_dir=spec.hf_cache.cache_dir,
            offline=True,
        )
        source = ModelSource(
            kind="hf-cache",
            repo_id=spec.hf_cache.repo_id,
            revision=spec.hf_cache.revision,
            resolved_commit=commit,
            original_path=str(snapshot),
        )
        return _hf_snapshot_model(spec, spec.hf_cache.repo_id, snapshot, source)
    if spec.local_dir is not None:
        name = spec.name or safe_name(spec.local_dir.name)
        files, notes = walk_tree(spec.local_dir, f"models/{name}")
        source = ModelSource(kind="local-dir", original_path=str(spec.local_dir))
        entry = ModelEntry(
            name=name, path=f"models/{name}", format="hf", source=source, licence=spec.licence
        )
        return Fetched(entry, files, notes)
    if spec.gguf is not None:
        return _gguf_model(spec, spec.gguf, ModelSource(kind="gguf", original_path=str(spec.gguf)))
    assert spec.gguf_package is not None  # ModelSpec guarantees exactly one source
    path, version = gguf_from_package(spec.gguf_package)
    # The package is recorded as a package URL (purl) so the payload says where it came from.
    source = ModelSource(
        kind="gguf",
        repo_id=f"pkg:pypi/{spec.gguf_package}",
        revision=version,
        original_path=str(path),
    )
    return _gguf_model(spec, path, source)


def _hf_snapshot_model(
    spec: ModelSpec, repo_id: str, snapshot: Path, source: ModelSource
) -> Fetched[ModelEntry]:
    name = spec.name or safe_name(repo_id.rsplit("/", 1)[-1])
    # snapshots/<commit>/x -> ../../blobs/<hash>: links may reach the repo folder, no further.
    files, notes = walk_tree(
        snapshot, f"models/{name}", link_root=snapshot.parent.parent, exclude=False
    )
    entry = ModelEntry(
        name=name, path=f"models/{name}", format="hf", source=source, licence=spec.licence
    )
    return Fetched(entry, files, notes)


def _gguf_model(spec: ModelSpec, path: Path, source: ModelSource) -> Fetched[ModelEntry]:
    try:
        mode = path.stat().st_mode  # follows a link: a GGUF in a cache may be one
    except OSError as exc:
        raise BundleBuildError(f"model file {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise BundleBuildError(f"model file {path} is {describe_mode(mode)}, expected a .gguf file")
    filename = path.name if path.suffix == ".gguf" else f"{path.stem}.gguf"
    name = spec.name or safe_name(path.stem)
    entry = ModelEntry(
        name=name,
        path=f"models/{filename}",
        format="gguf",
        source=source,
        licence=spec.licence,
    )
    return Fetched(entry, [(path, f"models/{filename}")])


def hub_snapshot(
    repo_id: str, revision: str, *, cache_dir: Path | None, offline: bool
) -> tuple[Path, str]:
    """``snapshot_download`` at ``revision``; returns (snapshot directory, commit read).

    ``offline`` reads the cache only (``local_files_only``), as ``hf_cache``
    sources do; otherwise the Hub is asked and the cache is the fallback
    huggingface_hub itself applies (``HF_HUB_OFFLINE=1``, no network). A token,
    if needed, comes from ``HF_TOKEN`` or the huggingface_hub login, never from
    the recipe.
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Older huggingface_hub releases lack IncompleteSnapshotError (they return partial
    # snapshots): then the tuple is empty and the clause catches nothing.
    incomplete: tuple[type[Exception], ...] = tuple(
        c for c in (getattr(hf_errors, "IncompleteSnapshotError", None),) if c is not None
    )

    where = f"{repo_id} at revision {revision}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except incomplete as exc:  # before LocalEntryNotFoundError: a subclass of it
        raise BundleBuildError(
            f"the cached snapshot of {where} is incomplete: {exc}",
            hint="Complete the download on a connected machine, then build again.",
        ) from exc
    except LocalEntryNotFoundError as exc:
        cache = cache_dir or "the Hugging Face cache (HF_HUB_CACHE)"
        raise BundleBuildError(
            f"{where} is not in {cache}",
            hint=(
                "Download it on a connected machine first (huggingface-cli download "
                f"{repo_id} --revision {revision}), or point hf_cache.cache_dir at the cache."
            ),
        ) from exc
    except RevisionNotFoundError as exc:
        raise BundleBuildError(f"revision {revision!r} does not exist in {repo_id}") from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise BundleBuildError(
            f"{repo_id} was not found or needs access rights ({type(exc).__name__})",
            hint="Check the repo id; for gated models accept the licence and set HF_TOKEN.",
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise BundleBuildError(f"cannot download {where}: {exc}") from exc
    snapshot = Path(str(folder))
    commit = snapshot.name
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise BundleBuildError(
            f"huggingface_hub returned {snapshot} for {where}; expected a snapshots/<commit> "
            "directory, so the commit read cannot be recorded"
        )
    if re.fullmatch(r"[0-9a-f]{40}", revision) and commit != revision:
        raise BundleBuildError(f"asked for commit {revision} of {repo_id}, got {commit}")
    return snapshot, commit


def module_name_of(package: str) -> str:
    """PyPI name -> import name by the usual convention (gemma3-270m-... -> gemma3_270m_...)."""
    return re.sub(r"[-.]+", "_", package).lower()


def gguf_from_package(package: str) -> tuple[Path, str]:
    """Import ``package``'s module and call its ``assemble()``; returns (gguf path, version).

    This runs the package's code: recipe authors choose packages they trust,
    as they would any build dependency.
    """
    try:
        version = importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError as exc:
        raise BundleBuildError(
            f"model package {package!r} is not installed",
            hint=f"Install it into the environment that runs the build: pip install {package}",
        ) from exc
    name = module_name_of(package)
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise BundleBuildError(f"model package {package!r}: cannot import {name}: {exc}") from exc
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        raise BundleBuildError(
            f"model package {package!r}: module {name} has no assemble() function"
        )
    try:
        result = assemble()
    except Exception as exc:  # third-party code: any failure is a failed source
        raise BundleBuildError(
            f"model package {package!r}: assemble() failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, str | os.PathLike):
        raise BundleBuildError(
            f"model package {package!r}: assemble() returned {type(result).__name__}, "
            "expected the path of a .gguf file"
        )
    path = Path(result)
    if path.suffix != ".gguf" or not path.is_file():
        raise BundleBuildError(
            f"model package {package!r}: assemble() returned {path}, which is not a .gguf file"
        )
    return path, version


# --- adapters ------------------------------------------------------------------------


def read_adapter_config(directory: Path) -> dict[str, Any]:
    path = directory / "adapter_config.json"
    if not os.path.lexists(path):
        raise BundleBuildError(
            f"{directory} has no adapter_config.json; expected a PEFT adapter directory"
        )
    data = read_input(path, "adapter config", limit="model-config", error=BundleBuildError)
    raw = parse_json(data, str(path), error=BundleBuildError)
    if not isinstance(raw, dict):
        raise BundleBuildError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    return raw


def provenance_conflicts(prov: AdapterProvenance, config: dict[str, Any]) -> list[str]:
    """Where the declared provenance contradicts adapter_config.json (empty: agrees)."""
    peft_type = config.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        return [f"peft_type is {peft_type!r}; only LoRA adapters can be served"]
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        return [f"adapter_config.json lacks {', '.join(missing)}; is this a LoRA adapter?"]
    conflicts = []
    if config["r"] != prov.rank:
        conflicts.append(f"rank: declared {prov.rank}, adapter_config.json r = {config['r']!r}")
    alpha = config["lora_alpha"]
    if not isinstance(alpha, int | float) or alpha != prov.alpha:
        conflicts.append(
            f"alpha: declared {prov.alpha}, adapter_config.json lora_alpha = {alpha!r}"
        )
    modules = config["target_modules"]
    found = sorted(modules) if isinstance(modules, list) else [modules]
    if found != sorted(prov.target_modules):
        conflicts.append(
            f"target_modules: declared {sorted(prov.target_modules)}, "
            f"adapter_config.json has {modules!r}"
        )
    base = config.get("base_model_name_or_path")
    if base is not None and base != prov.base_model and not _same_model(base, prov.base_model):
        conflicts.append(
            f"base model: declared {prov.base_model!r}, "
            f"adapter_config.json base_model_name_or_path = {base!r}"
        )
    revision = config.get("revision")
    if revision and prov.base_model_revision and revision != prov.base_model_revision:
        conflicts.append(
            f"base model revision: declared {prov.base_model_revision!r}, "
            f"adapter_config.json revision = {revision!r}"
        )
    return conflicts


def _same_model(path_or_id: str, name: str) -> bool:
    """A local training path ending in the model's name names that model (the lab's adapters
    are trained on a directory; the card names the model)."""
    return path_or_id.rstrip("/").rsplit("/", 1)[-1] == name.rstrip("/").rsplit("/", 1)[-1]


def provenance_from_card(
    name: str, config: dict[str, Any], record: TransparencyRecord, front: dict[str, Any]
) -> tuple[AdapterProvenance, list[str]]:
    """The adapter's provenance from its card and adapter_config.json, and what disagrees.

    Base model and revision from the card (1.2's dependency, else the front matter's
    ``base_model``/``base_model_revision``), rank/alpha/target modules from adapter_config.json
    (the file vLLM reads), checked against the card's Adapter section; the licence from the
    card's front matter; the base weights' digest from the front matter's
    ``base_model_digest`` (our extension) when given.
    """
    problems = []
    base = record.base_model
    front_base = front.get("base_model")
    if isinstance(front_base, list) and len(front_base) == 1:
        front_base = front_base[0]
    base_name = base.name if base is not None else front_base
    if not isinstance(base_name, str) or not base_name:
        problems.append("the card names no base model (1.2 Model dependencies or base_model)")
        base_name = str(config.get("base_model_name_or_path") or "unknown")
    revision = (
        base.revision if base is not None and base.revision else front.get("base_model_revision")
    )
    digest = front.get("base_model_digest")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        problems.append(f"base_model_digest must be 64 lowercase hex digits, found {digest!r}")
        digest = None
    facts = record.adapter
    for what, stated, key in (("rank", facts.rank, "r"), ("alpha", facts.alpha, "lora_alpha")):
        if stated is not None and config.get(key) != stated:
            problems.append(
                f"{what}: the card says {stated}, adapter_config.json {key} = {config.get(key)!r}"
            )
    modules = config.get("target_modules")
    if (
        facts.target_modules
        and isinstance(modules, list)
        and sorted(modules) != sorted(facts.target_modules)
    ):
        problems.append(
            f"target modules: the card says {sorted(facts.target_modules)}, adapter_config.json "
            f"has {sorted(modules)}"
        )
    licence = record.licence
    if licence is None or not _SPDX.fullmatch(licence):
        problems.append(
            f"licence: the card's `license` must be an SPDX id (or LicenseRef-...), found {licence!r}"
        )
        licence = "NOASSERTION"
    datasets = [
        DatasetUse(
            name=d.name,
            records=d.records,
            licence=d.licence if d.licence and _SPDX.fullmatch(d.licence) else None,
            url=d.url,
        )
        for d in record.sources.public_datasets
        if d.records is not None
    ]
    try:
        prov = AdapterProvenance(
            base_model=base_name,
            base_model_revision=revision if isinstance(revision, str) and revision else None,
            rank=int(config.get("r") or facts.rank or 0),
            alpha=int(config.get("lora_alpha") or facts.alpha or 0),
            target_modules=list(modules)
            if isinstance(modules, list)
            else list(facts.target_modules),
            licence=licence,
            datasets=datasets,
            base_model_digest=digest,
        )
    except ValidationError as exc:
        raise BundleBuildError(
            f"adapter {name!r}: its card and adapter_config.json do not give a usable provenance: "
            + "; ".join(str(e["msg"]) for e in exc.errors())
        ) from exc
    return prov, problems


def fetch_adapter(spec: AdapterSpec) -> Fetched[AdapterEntry]:
    config = read_adapter_config(spec.path)
    record = None
    problems: list[str] = []
    if spec.card is not None:
        imported = load_card(spec.card)
        record = require_record(imported, str(spec.card))
        derived, problems = provenance_from_card(spec.name, config, record, imported.front_matter)
        provenance = spec.provenance or derived
    else:
        assert spec.provenance is not None  # the recipe requires one or the other
        provenance = spec.provenance
    conflicts = problems + provenance_conflicts(provenance, config)
    if conflicts:
        raise BundleBuildError(
            f"adapter {spec.name!r} ({spec.path}): what the recipe or card declares contradicts "
            "adapter_config.json or is unusable:\n" + "\n".join(f"  - {c}" for c in conflicts),
            hint="Fix the card or recipe (or point it at the right adapter): the payload must tell the truth.",
        )
    files, notes = walk_tree(spec.path, f"adapters/{spec.name}")
    if config.get("base_model_name_or_path") is None:
        notes.append(
            f"adapter {spec.name!r}: adapter_config.json names no base model; the declared "
            f"{provenance.base_model!r} could not be checked"
        )
    entry = AdapterEntry(
        name=spec.name, path=f"adapters/{spec.name}", provenance=provenance, record=record
    )
    return Fetched(entry, files, notes)


# --- wheels --------------------------------------------------------------------------


def pip_download_command(spec: WheelsSpec, dest: Path, *, python: str) -> list[str]:
    """The pip command line; every value comes from the recipe (which refuses credentials)."""
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--python-version",
        spec.python,
        "--implementation",
        "cp",
        "--abi",
        spec.abi,
    ]
    for platform in spec.platforms:
        cmd += ["--platform", platform]
    cmd += index_options(spec)
    cmd += ["-d", str(dest), "--", *spec.requirements]
    return cmd


def index_options(spec: WheelsSpec) -> list[str]:
    """pip's options for where wheels come from: the recipe's, and nothing else (``_pip_env``)."""
    options = ["--no-index"] if spec.no_index else []
    for url in spec.extra_index_urls:
        options += ["--extra-index-url", url]
    for link in spec.find_links:
        options += ["--find-links", link]
    return options


def source_notes(spec: WheelsSpec) -> dict[str, str]:
    """Where the wheels came from, for the set's build notes (a reviewer reads the payload).

    ``index-url``: PyPI, or ``none`` with ``no_index``; ``extra-index-urls`` and
    ``find-links``: the recipe's, space-separated URLs (a local directory as its
    ``file://`` URL, so a space in a path cannot split it).
    """
    notes = {"index-url": "none (no_index: find-links only)" if spec.no_index else PYPI_INDEX}
    if spec.extra_index_urls:
        notes["extra-index-urls"] = " ".join(spec.extra_index_urls)
    if spec.find_links:
        notes["find-links"] = " ".join(
            link if "://" in link else Path(link).as_uri() for link in spec.find_links
        )
    return notes


def _pip_env() -> dict[str, str]:
    """The environment pip runs in: only the recipe decides where wheels come from.

    No machine pip.conf and no PIP_* from the environment (find-links or extra
    indexes there would change what is bundled).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return env | {
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CONFIG_FILE": os.devnull,
    }


def _run_pip(
    cmd: list[str], *, what: str, python: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, env=_pip_env(), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BundleBuildError(f"{what} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise BundleBuildError(f"cannot run {python} -m pip: {exc.strerror or exc}") from exc


def _tail(result: subprocess.CompletedProcess[str], lines: int = 12) -> str:
    return "\n".join((result.stderr or result.stdout).strip().splitlines()[-lines:])


def fetch_wheels(
    spec: WheelsSpec,
    dest: Path,
    *,
    prefix: str = WHEELS_DIR,
    python: str = sys.executable,
    timeout: float = PIP_TIMEOUT_S,
) -> Fetched[WheelSet]:
    """``pip download`` the requirements (and their dependencies) for the target into ``dest``.

    The wheels are recorded as ``<prefix>/<file name>`` under ``files/``
    (``wheels/`` for the model server, ``gateway-wheels/`` for the gateway),
    with where they came from in the build notes (``source_notes``) and the
    torch build among them (``torch_variant.torch_build``: a set mixing
    torch builds is refused).
    """
    dest.mkdir(parents=True, exist_ok=False)
    cmd = pip_download_command(spec, dest, python=python)
    result = _run_pip(cmd, what="pip download", python=python, timeout=timeout)
    before = set(dest.iterdir())
    if result.returncode == 0 and spec.no_deps:
        alone = spec.model_copy(update={"requirements": spec.no_deps})
        cmd = pip_download_command(alone, dest, python=python)
        cmd.insert(cmd.index("download") + 1, "--no-deps")
        result = _run_pip(cmd, what="pip download --no-deps", python=python, timeout=timeout)
    if result.returncode != 0:
        raise BundleBuildError(
            f"pip download failed (exit {result.returncode}) for python {spec.python}, "
            f"platforms {', '.join(spec.platforms)}:\n{_tail(result)}",
            hint=(
                "Only binary wheels are bundled (the target has no compiler or network). A "
                "package without a wheel for this platform must be built separately (e.g. "
                "llama-cpp-python with CMAKE_ARGS='-DGGML_NATIVE=OFF') and given via find_links."
            ),
        )
    found = sorted(dest.iterdir())
    odd = [p.name for p in found if p.suffix != ".whl" or not p.is_file() or p.is_symlink()]
    if odd:
        raise BundleBuildError(f"pip download left files that are not wheels: {', '.join(odd)}")
    if not found:
        raise BundleBuildError("pip download succeeded but produced no wheel")
    # One torch build or none (a CUDA torchvision beside a +cpu torch fails at import).
    torch = torch_build([read_wheel_info(p) for p in found])
    entry = WheelSet(
        python=spec.python,
        platforms=list(spec.platforms),
        requirements=list(spec.requirements),
        files=[f"{prefix}/{p.name}" for p in found],
        build_notes={**spec.build_notes, **source_notes(spec)},
        torch=torch,
        no_deps=[f"{prefix}/{p.name}" for p in found if p not in before],
    )
    return Fetched(entry, [(p, f"{prefix}/{p.name}") for p in found])


# --- the gateway's wheels ------------------------------------------------------------

PACKAGE_DIR = package_data.PACKAGE_DIR or Path("appliance")  # the package this code runs from
WHEEL_BUILD_TIMEOUT_S = 300
_PIN = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[0-9][^\s;#]*)"
)


def canonical_name(name: str) -> str:
    """A distribution name as PEP 503 compares them: PyJWT -> pyjwt, typing_extensions -> typing-extensions."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str, where: str) -> list[str]:
    """``name==version`` lines of a pinned requirements file; comments and blank lines skipped."""
    pins: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if match is None:
            raise BundleBuildError(
                f"{where}, line {number}: expected `name==version`, found {line!r}"
            )
        name = canonical_name(match["name"])
        if name in seen:
            raise BundleBuildError(f"{where}, line {number}: {match['name']} is pinned twice")
        seen.add(name)
        pins.append(line)
    if not pins:
        raise BundleBuildError(f"{where} pins nothing")
    return pins


def gateway_requirements() -> list[str]:
    """The gateway's pinned dependency closure, shipped in ``appliance/gateway/requirements.txt``."""
    from importlib import resources

    resource = resources.files("appliance.gateway") / "requirements.txt"
    try:
        text = resource.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleBuildError(
            f"cannot read the gateway's pinned requirements ({resource}): {exc}"
        ) from exc
    return parse_pins(text, "appliance/gateway/requirements.txt")


def source_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source checkout ``package_dir`` (the ``appliance`` package) lies in, or None.

    A checkout is the directory above the package holding appliance's own
    pyproject.toml; an installed appliance (site-packages) has none.
    """
    import tomllib

    root = package_dir.parent
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    name = project.get("project", {}).get("name")
    return root if name == "appliance" else None


def describe_checkout(checkout: Path) -> str:
    """``git describe`` of the checkout (``-dirty`` when it has uncommitted changes), or 'unknown'."""
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--tags", "--always", "--dirty"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    described = result.stdout.strip()
    return described if result.returncode == 0 and described else "unknown"


def build_appliance_wheel(
    checkout: Path,
    out: Path,
    *,
    python: str = sys.executable,
    timeout: float = WHEEL_BUILD_TIMEOUT_S,
) -> Path:
    """``pip wheel`` the checkout into the new directory ``out``: no index, no build isolation.

    The build backend (hatchling) must be installed where ``python`` runs (the
    dev extra has it), so no index is needed. Hatchling writes reproducible
    wheels (fixed timestamps, or SOURCE_DATE_EPOCH).
    """
    out.mkdir(parents=True, exist_ok=False)
    cmd = [
        python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "--no-input", "-w", str(out), str(checkout),
    ]  # fmt: skip
    result = _run_pip(cmd, what="pip wheel (the appliance wheel)", python=python, timeout=timeout)
    if result.returncode != 0:
        raise BundleBuildError(
            f"cannot build the appliance wheel from {checkout} (pip wheel exit "
            f"{result.returncode}):\n{_tail(result)}",
            hint=(
                "It is built without build isolation and without an index, so the build "
                "backend must be installed here: pip install 'hatchling>=1.24' (in the dev "
                "extra). Or give gateway.appliance_wheel: a built appliance wheel."
            ),
        )
    built = sorted(out.iterdir())
    if len(built) != 1 or not APPLIANCE_WHEEL.fullmatch(built[0].name):
        names = ", ".join(p.name for p in built) or "nothing"
        raise BundleBuildError(
            f"pip wheel of {checkout} produced {names}; expected one "
            "appliance-<version>-py3-none-any.whl"
        )
    return built[0]


def _read_appliance_wheel(path: Path, key: str) -> tuple[str, set[str]]:
    """(its version, the names it holds) of a wheel given as ``KEY.appliance_wheel``."""
    match = APPLIANCE_WHEEL.fullmatch(path.name)
    if match is None:  # the recipe refuses such names already
        raise BundleBuildError(
            f"{key}.appliance_wheel must be appliance-<version>-py3-none-any.whl; "
            f"found {path.name!r}"
        )
    if not path.is_file():
        raise BundleBuildError(
            f"{key}.appliance_wheel {path} does not exist or is not a file",
            hint="Build it with `pip wheel --no-deps -w DIR <appliance checkout>`, or leave "
            "appliance_wheel out to build it from the checkout this appliance runs from.",
        )
    try:
        with zipfile.ZipFile(path) as wheel:
            return match["version"], set(wheel.namelist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleBuildError(f"{key}.appliance_wheel {path} is not a wheel: {exc}") from exc


def check_appliance_wheel(path: Path) -> list[str]:
    """Refuse anything but a wheel of appliance holding the gateway; notes for the operator."""
    version, names = _read_appliance_wheel(path, "gateway")
    if "appliance/gateway/__main__.py" not in names:
        raise BundleBuildError(
            f"gateway.appliance_wheel {path} holds no appliance/gateway/__main__.py; "
            "expected a wheel of appliance with the gateway"
        )
    if version != __version__:
        return [
            f"gateway.appliance_wheel is appliance {version}, but the gateway's pinned "
            f"dependencies are those of appliance {__version__} (this build): check that they fit"
        ]
    return []


def appliance_wheel(
    spec: GatewaySpec,
    work: Path,
    *,
    package_dir: Path = PACKAGE_DIR,
    python: str = sys.executable,
    timeout: float = WHEEL_BUILD_TIMEOUT_S,
) -> tuple[Path, str, list[str]]:
    """(the appliance wheel, its build note for the payload, notes for the operator)."""
    if spec.appliance_wheel is not None:
        notes = check_appliance_wheel(spec.appliance_wheel)
        return spec.appliance_wheel, f"given: {spec.appliance_wheel.name}", notes
    checkout = source_checkout(package_dir)
    if checkout is None:
        raise BundleBuildError(
            "the gateway's virtualenv needs the appliance wheel: the recipe gives no "
            "gateway.appliance_wheel, so it would be built from the source checkout this "
            f"appliance runs from, but {package_dir} is not in one (expected appliance's "
            f"pyproject.toml at {package_dir.parent / 'pyproject.toml'}, found none)",
            hint=(
                "Set gateway.appliance_wheel to a built appliance-<version>-py3-none-any.whl "
                "(pip wheel --no-deps -w DIR <checkout>), or run the build from a source "
                "checkout (pip install -e <checkout>)."
            ),
        )
    wheel = build_appliance_wheel(checkout, work, python=python, timeout=timeout)
    return wheel, f"built from checkout at {describe_checkout(checkout)}", []


def _check_all_pinned(found: list[str], pins: list[str]) -> None:
    """Every wheel pip downloaded is one of the pins: the closure is complete and reproducible."""
    pinned = {canonical_name(pin.split("==", 1)[0]): pin.split("==", 1)[1] for pin in pins}
    extra = []
    for relpath in found:
        name, version = relpath.rsplit("/", 1)[-1].split("-")[:2]
        if pinned.get(canonical_name(name)) != version:
            extra.append(f"{name} {version}")
    if extra:
        raise BundleBuildError(
            "pip download brought wheels appliance/gateway/requirements.txt does not pin: "
            + ", ".join(extra),
            hint="The pins must be the gateway's whole dependency closure: pin these there "
            "(the versions the gateway is tested with) and rebuild.",
        )


def fetch_gateway(
    spec: GatewaySpec,
    dest: Path,
    *,
    requirements: Sequence[str] | None = None,
    package_dir: Path = PACKAGE_DIR,
    python: str = sys.executable,
    timeout: float = PIP_TIMEOUT_S,
) -> Fetched[WheelSet]:
    """The gateway's wheels: the pinned closure for the target plus the appliance wheel.

    ``requirements`` defaults to ``gateway_requirements()``. Everything is
    recorded under ``gateway-wheels/``; the appliance wheel is the one
    ``no_deps`` entry (its dependencies are the pins).
    """
    pins = list(requirements) if requirements is not None else gateway_requirements()
    # The appliance wheel first: a recipe that cannot have one costs no download.
    wheel, note, notes = appliance_wheel(
        spec, dest / "appliance", package_dir=package_dir, python=python
    )
    closure_spec = WheelsSpec(
        python=spec.python,
        platforms=list(spec.platforms),
        find_links=list(spec.find_links),
        no_index=spec.no_index,
        requirements=pins,
    )
    closure = fetch_wheels(
        closure_spec, dest / "closure", prefix=GATEWAY_WHEELS_DIR, python=python, timeout=timeout
    )
    _check_all_pinned(closure.entry.files, pins)
    relpath = f"{GATEWAY_WHEELS_DIR}/{wheel.name}"
    if relpath in closure.entry.files:
        raise BundleBuildError(f"pip download brought {wheel.name}, which is not pinned")
    entry = WheelSet(
        python=spec.python,
        platforms=list(spec.platforms),
        requirements=pins,
        files=sorted([*closure.entry.files, relpath]),
        no_deps=[relpath],
        build_notes={**closure.entry.build_notes, "appliance-wheel": note},
    )
    return Fetched(entry, [*closure.files, (wheel, relpath)], [*closure.notes, *notes])


# --- the appliance for the operator's machine (the installer set) ----------------------

# What a wheel must hold to be a whole appliance (not only its gateway): the CLI, the
# deploy's playbooks and templates, the built-in profiles (appliance/package_data.py).
INSTALLER_WHEEL_NEEDS = (
    "appliance/cli/main.py",
    "appliance/_data/playbooks/deploy.yml",
    "appliance/_data/playbooks/templates/appliance-model.service.j2",
    "appliance/_data/hardware_profiles/cpu-llamacpp.yaml",
)


def check_installer_wheel(path: Path) -> list[str]:
    """Refuse anything but a whole appliance wheel; notes for the operator."""
    version, names = _read_appliance_wheel(path, "installer")
    missing = [name for name in INSTALLER_WHEEL_NEEDS if name not in names]
    if missing:
        raise BundleBuildError(
            f"installer.appliance_wheel {path} is not a whole appliance: it lacks "
            f"{', '.join(missing)}",
            hint="Build the wheel from a checkout of this version (its templates, playbooks "
            "and profiles ship inside the package since appliance 0.1.0's packaging fix).",
        )
    if version != __version__:
        return [f"the installer carries appliance {version}; this build is appliance {__version__}"]
    return []


def fetch_installer(
    spec: InstallerSpec,
    dest: Path,
    *,
    package_dir: Path = PACKAGE_DIR,
    python: str = sys.executable,
    timeout: float = PIP_TIMEOUT_S,
) -> Fetched[WheelSet]:
    """The appliance wheel and its whole dependency closure for the operator's machine.

    pip resolves the closure from the wheel file itself (``pip download
    --only-binary=:all: <the wheel>``): the requirements are the wheel's own,
    and the appliance wheel can only be that file, never a same-named
    distribution from an index. Recorded under ``installer-wheels/`` with the
    one requirement ``appliance==<version>``: installing it is one
    ``pip install --no-index --find-links files/installer-wheels appliance==<version>``.
    """
    if spec.appliance_wheel is not None:
        notes = check_installer_wheel(spec.appliance_wheel)
        wheel, note = spec.appliance_wheel, f"given: {spec.appliance_wheel.name}"
    else:
        checkout = source_checkout(package_dir)
        if checkout is None:
            raise BundleBuildError(
                "the installer set needs the appliance wheel: the recipe gives no "
                "installer.appliance_wheel, so it would be built from the source checkout this "
                f"appliance runs from, but {package_dir} is not in one",
                hint="Set installer.appliance_wheel to a built appliance-<version>-py3-none-any"
                ".whl (the one this appliance was installed from will do).",
            )
        wheel = build_appliance_wheel(checkout, dest / "appliance", python=python)
        note, notes = f"built from checkout at {describe_checkout(checkout)}", []
        check_installer_wheel(wheel)
    version = wheel.name.split("-")[1]  # the name matched APPLIANCE_WHEEL above
    closure_spec = WheelsSpec(
        python=spec.python,
        platforms=list(spec.platforms),
        find_links=list(spec.find_links),
        no_index=spec.no_index,
        requirements=[str(wheel.absolute())],
    )
    closure = fetch_wheels(
        closure_spec, dest / "closure", prefix=INSTALLER_WHEELS_DIR, python=python,
        timeout=timeout,
    )  # fmt: skip
    relpath = f"{INSTALLER_WHEELS_DIR}/{wheel.name}"
    saved = {rel: src for src, rel in closure.files}
    if relpath not in saved or _sha256_of(saved[relpath]) != _sha256_of(wheel):
        raise BundleBuildError(
            f"pip download did not save {wheel.name} as given: the installer set would not "
            "hold the appliance wheel that was built or named"
        )
    entry = WheelSet(
        python=spec.python,
        platforms=list(spec.platforms),
        requirements=[f"appliance=={version}"],
        files=closure.entry.files,
        build_notes={**closure.entry.build_notes, "appliance-wheel": note},
    )
    return Fetched(entry, closure.files, [*closure.notes, *notes])


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(DOWNLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- artifacts -----------------------------------------------------------------------


def artifact_filename(spec: ArtifactSpec) -> str:
    if spec.filename is not None:
        return spec.filename
    name = unquote(urlsplit(spec.url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or "/" in name or name in (".", ".."):
        raise BundleBuildError(f"artifact {spec.name!r}: the URL names no file; set `filename`")
    return name


def _chunks_from(url: str, client: httpx.Client | None) -> Generator[bytes, None, None]:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BundleBuildError(f"{url}: a file URL must be local (file:///path)")
        path = Path(url2pathname(unquote(parts.path)))
        # A regular file only, opened without blocking: a FIFO or /dev/zero is never read.
        fd = open_input(path, f"artifact {url}", error=BundleBuildError)
        try:
            with open(fd, "rb") as reader:
                while chunk := reader.read(DOWNLOAD_CHUNK):
                    yield chunk
        except OSError as exc:
            raise BundleBuildError(f"cannot read {url}: {exc.strerror or exc}") from exc
        return
    if parts.scheme not in ("https", "http"):
        raise BundleBuildError(f"{url}: only https://, http:// and file:// URLs can be fetched")
    import httpx

    owned = client is None
    # trust_env: the connected side may sit behind a proxy configured in the environment.
    session = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=300.0))
    try:
        with session.stream("GET", url) as response:
            if response.status_code != 200:
                raise BundleBuildError(
                    f"download of {url} failed: HTTP {response.status_code} "
                    f"{response.reason_phrase}"
                )
            yield from response.iter_bytes(DOWNLOAD_CHUNK)
    except httpx.HTTPError as exc:
        raise BundleBuildError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if owned:
            session.close()


def download(
    url: str,
    dest: Path,
    expected_sha256: str,
    *,
    client: httpx.Client | None = None,
    max_bytes: int = ARTIFACT_MAX_BYTES,
) -> int:
    """Stream ``url`` into the new file ``dest``, hashing while writing; returns its length.

    Refused (and ``dest`` deleted): a digest other than ``expected_sha256``, more
    than ``max_bytes``, any read or HTTP error. Accepts https://, http:// and
    file:// (the recipe admits only https and file: the pin is what makes
    either safe, but plain http leaks what is fetched).
    """
    digest = hashlib.sha256()
    length = 0
    try:
        with dest.open("xb") as writer, contextlib.closing(_chunks_from(url, client)) as chunks:
            for chunk in chunks:
                length += len(chunk)
                if length > max_bytes:
                    raise BundleBuildError(
                        f"{url} sent more than {max_bytes} bytes; refusing to continue"
                    )
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        found = digest.hexdigest()
        if found != expected_sha256:
            raise BundleBuildError(
                f"SHA-256 mismatch for {url}: expected {expected_sha256}, found {found} "
                f"({length} bytes); the download was deleted",
                hint="Check the pinned digest against the publisher's checksum file.",
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return length


def fetch_artifact(
    spec: ArtifactSpec, work_dir: Path, *, client: httpx.Client | None = None
) -> Fetched[ArtifactEntry]:
    filename = artifact_filename(spec)
    target_dir = work_dir / spec.name
    target_dir.mkdir(parents=True, exist_ok=False)
    target = target_dir / filename
    download(spec.url, target, spec.sha256, client=client)
    relpath = f"artifacts/{spec.name}/{filename}"
    entry = ArtifactEntry(
        name=spec.name, path=relpath, url=spec.url, sha256=spec.sha256, licence=spec.licence
    )
    return Fetched(entry, [(target, relpath)])
