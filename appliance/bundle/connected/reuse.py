"""Adapter-only bundles: what they take over from their base bundle instead of carrying it.

A recipe with ``reuse: {bundle: DIR}`` names the signed bundle whose release the
sites have in place. The new bundle carries its adapters and the base model's
small files (config, tokenizer: what planning reads on the operator's machine);
everything else of the base (the model's weight files, the wheels, the artifacts,
and what the base itself reused) is listed in ``Payload.reuses`` with its length
and SHA-256 from the base's signed records, and taken over on each host from the
release in place, by digest (``appliance.deploy.staging.reuse_command``).

Invariants:
- the base's manifest is read and validated (``bundle_contents``); each small file
  carried again is hashed while copied and must equal the base's signed digest;
- the new bundle keeps the base's name and a higher version (it is the next
  release of the same bundle: a site's rollback protection and release directories
  follow the version);
- a base whose model is a GGUF file is refused (adapters are served by vLLM only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.format import FileRecord
from appliance.bundle.manifest import bundle_contents, read_targets
from appliance.bundle.payload import (
    Payload,
    Reuse,
    ReusedFile,
    is_weight_file,
    model_files,
    weights_digest,
)
from appliance.errors import ApplianceError, BundleBuildError

FILES_DIR = "files"


@dataclass(frozen=True, slots=True)
class BaseBundle:
    directory: Path
    payload: Payload
    records: tuple[FileRecord, ...]
    version: int

    @property
    def model_digest(self) -> str:
        return weights_digest(model_files(self.payload, ((r.path, r.sha256) for r in self.records)))


def read_base(directory: Path, *, name: str, version: int) -> BaseBundle:
    """The base bundle of an adapter-only recipe named ``name`` at ``version``, checked."""
    try:
        md = read_targets(directory)
        payload, records = bundle_contents(md)
    except ApplianceError as exc:
        raise BundleBuildError(
            f"reuse.bundle {directory}: not a readable bundle: {exc.message}",
            hint="Name the directory of the signed bundle the sites have in place.",
        ) from exc
    base_version = md.signed.version
    if payload.name != name:
        raise BundleBuildError(
            f"reuse.bundle {directory} is bundle {payload.name!r}, the recipe builds {name!r}: "
            "an adapter-only bundle is the next release of its base bundle",
            hint=f"Name the recipe {payload.name!r}.",
        )
    if version <= base_version:
        raise BundleBuildError(
            f"reuse.bundle {directory} is version {base_version}; the adapter-only bundle must "
            f"have a higher version, found {version}",
            hint=f"Set version: {base_version + 1} (or higher).",
        )
    model = payload.model
    if model is None or model.format != "hf":
        found = "no model" if model is None else f"a {model.format.upper()} model"
        raise BundleBuildError(
            f"reuse.bundle {directory} carries {found}; adapters are served by vLLM from a "
            "Hugging Face model directory",
            hint="Build the adapters into a bundle whose model is a Hugging Face directory.",
        )
    return BaseBundle(directory, payload, tuple(records), base_version)


def carried_model_files(base: BaseBundle) -> list[tuple[Path, str]]:
    """(source, path under files/) of the base model's small files, carried again."""
    model = base.payload.model
    assert model is not None  # read_base refuses a base without one
    return [
        (base.directory / FILES_DIR / r.path, r.path)
        for r in base.records
        if r.path.startswith(model.path + "/") and not is_weight_file(r.path)
    ]


def reuse_of(base: BaseBundle, carried: set[str]) -> Reuse:
    """What the new bundle takes over: every base file it does not carry (the base's
    adapters excepted: the new bundle's adapter set replaces them), and what the base reused."""
    model = base.payload.model
    assert model is not None
    adapters = tuple(f"{a.path}/" for a in base.payload.adapters)
    files = [
        ReusedFile(path=r.path, length=r.length, sha256=r.sha256)
        for r in base.records
        if r.path not in carried and not r.path.startswith(adapters)
    ]
    if base.payload.reuses is not None:
        files += [f for f in base.payload.reuses.files if f.path not in carried]
    return Reuse(
        bundle=base.payload.name,
        version=base.version,
        model=model.name,
        model_digest=base.model_digest,
        files=sorted(files, key=lambda f: f.path),
    )


def check_carried(base: BaseBundle, records: list[FileRecord]) -> None:
    """Each small file carried again is byte for byte the base's signed file."""
    signed = {r.path: r.sha256 for r in base.records}
    changed = [r.path for r in records if r.path in signed and signed[r.path] != r.sha256]
    if changed:
        raise BundleBuildError(
            f"the base bundle's files changed on disk since it was signed: {', '.join(changed)}",
            hint="Verify the base bundle (appliance bundle verify) and copy it again.",
        )
