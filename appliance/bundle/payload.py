"""The appliance payload: what a bundle is, signed inside ``targets.json``.

Strict pydantic models (unknown keys rejected; read from a manifest in strict mode, so
an integer field takes a JSON integer only). Stored under the ``appliance``
key of the targets metadata's signed part, so name, channel, model provenance,
adapter lineage and the media part digests are all covered by the signatures
(no mix and match between bundles). Licences are SPDX identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from appliance.compliance.findings import BaseIdentity
from appliance.compliance.record import TransparencyRecord

SpdxId = Annotated[
    str,
    Field(
        pattern=r"^(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*)$",
        description="SPDX licence identifier, e.g. Apache-2.0, or LicenseRef-<name> for others",
    ),
]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]

WHEELS_DIR = "wheels"  # under files/: the model server's wheels (Payload.wheels)
GATEWAY_WHEELS_DIR = "gateway-wheels"  # under files/: the gateway's wheels (Payload.gateway)
# under files/: the appliance for the operator's machine (Payload.installer)
INSTALLER_WHEELS_DIR = "installer-wheels"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetUse(_Strict):
    name: str
    records: Annotated[int, Field(ge=0)]
    licence: SpdxId | None = None
    url: str | None = None


class TrainingContentSummary(_Strict):
    """Fields of the EU AI Act public summary of training content (AI Office template, 2025)."""

    provider: str
    modalities: list[Literal["text", "image", "audio", "video", "other"]] = Field(min_length=1)
    training_data_size: str = Field(description="Order of magnitude, e.g. '1-10 million tokens'")
    publicly_available_datasets: list[str] = Field(default_factory=list)
    private_datasets: list[str] = Field(default_factory=list, description="licensed or in-house")
    web_crawled_data: str | None = Field(default=None, description="crawlers, period, main domains")
    user_data: str | None = None
    synthetic_data: str | None = None
    other_sources: str | None = None
    copyright_opt_out_measures: str = Field(
        description="how text-and-data-mining opt-outs were respected"
    )
    illegal_content_measures: str = Field(description="how illegal content was removed")


class AdapterProvenance(_Strict):
    """What an adapter was trained on and from, as its recipe or model card declares it.

    ``datasets`` and ``training_summary`` are the recipe's short form; an adapter built from a
    model card carries the full transparency record instead (``AdapterEntry.record``).
    ``base_model_digest``: ``weights_digest`` of the base model the adapter was trained on.
    """

    base_model: str
    base_model_revision: str | None = None
    rank: Annotated[int, Field(ge=1, le=1024)]
    # An integer, as PEFT declares lora_alpha; signed metadata is canonical JSON, which has no floats.
    alpha: Annotated[int, Field(ge=1)]
    target_modules: list[str] = Field(min_length=1)
    licence: SpdxId
    datasets: list[DatasetUse] = Field(default_factory=list)
    training_summary: TrainingContentSummary | None = None
    base_model_digest: Sha256Hex | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "training_summary", "base_model_digest")


class ModelSource(_Strict):
    kind: Literal["hf-hub", "hf-cache", "local-dir", "gguf"]
    repo_id: str | None = None
    revision: str | None = None  # as requested (branch, tag or commit)
    resolved_commit: str | None = None  # the commit actually bundled
    original_path: str | None = None  # where a local source was read from (informative)


class ModelEntry(_Strict):
    name: Name
    path: str  # under files/, a directory (HF) or a .gguf file
    format: Literal["hf", "gguf"]
    source: ModelSource
    licence: SpdxId | None = None
    parameter_count: int | None = None
    checkpoint_dtype: str | None = None


class AdapterEntry(_Strict):
    name: Name
    path: str
    provenance: AdapterProvenance
    # The adapter's EU AI Act public summary of training content, read from its model card
    # when the bundle was built (appliance.compliance.card).
    record: TransparencyRecord | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "record")


class ReusedFile(_Strict):
    """A file of the release in place that an adapter-only release takes over by digest."""

    path: str  # under files/, as in the base bundle
    length: Annotated[int, Field(ge=0)]
    sha256: Sha256Hex


class Reuse(_Strict):
    """What an adapter-only bundle does not carry: the base release's files it builds on.

    The bundle names its base (bundle name and version, the model's name and
    ``weights_digest``) and lists every file it takes over with its length and SHA-256,
    all signed. A site links each from the release in place and checks its digest; a
    file that is missing or differs stops the deploy (nothing is trusted by name).
    """

    bundle: Name
    version: Annotated[int, Field(ge=1)]
    model: Name
    model_digest: Sha256Hex
    files: list[ReusedFile] = Field(min_length=1)


class TorchBuild(_Strict):
    """Which build of PyTorch a wheel set holds, read from its torch wheel when the bundle is built.

    ``variant`` is the wheel's local version label (``cpu``, ``cu128``, ``rocm6.4``) or
    ``default`` for PyPI's own build (CUDA on Linux x86_64); ``cuda`` is the CUDA runtime
    the build needs (``"12.8"``), ``None`` for a CPU build. The site's preflight compares it
    with the NVIDIA driver's CUDA version.
    """

    version: str  # e.g. "2.13.0+cpu"
    variant: Annotated[str, Field(pattern=r"^[a-z0-9.]+$")]
    cuda: Annotated[str, Field(pattern=r"^\d+\.\d+$")] | None = None


class WheelSet(_Strict):
    """Wheels for one virtualenv on the target, installed without a network in two steps.

    First ``pip install --no-index --find-links files/<their directory> <requirements...>``,
    then ``pip install --no-index --no-deps files/<path>`` for each of ``no_deps``.
    """

    python: str  # e.g. "3.11"
    platforms: list[str] = Field(min_length=1)  # e.g. ["manylinux_2_17_x86_64"]
    requirements: list[str]
    files: list[str]  # paths under files/
    build_notes: dict[str, str] = Field(default_factory=dict)  # e.g. llama-cpp-python CMAKE_ARGS
    # Paths under files/ (a subset of files) installed with --no-deps after the requirements,
    # e.g. the appliance wheel in the gateway's set (its dependencies are the requirements).
    no_deps: list[str] = Field(default_factory=list)
    # The PyTorch build among the wheels (None when the set holds no torch): a model server's
    # set holds exactly one variant (a CUDA torchvision beside a +cpu torch fails at import).
    torch: TorchBuild | None = None

    @model_validator(mode="after")
    def _no_deps_are_files(self) -> WheelSet:
        stray = [path for path in self.no_deps if path not in self.files]
        if stray:
            raise ValueError(f"no_deps lists paths that are not in files: {', '.join(stray)}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "no_deps", "torch")


class ArtifactEntry(_Strict):
    name: Name
    path: str
    url: str
    sha256: Sha256Hex
    licence: SpdxId | None = None


class MediaLayout(_Strict):
    part_size: Annotated[int, Field(ge=64 * 1024)]
    parts: list[tuple[int, int, int, Sha256Hex]] = Field(
        description="(index, offset, length, sha256) of each part of the content stream"
    )


class Payload(_Strict):
    format: Literal[1] = 1  # FORMAT_VERSION
    name: Name
    channel: Name = "stable"
    created: str  # ISO 8601 UTC
    created_by: str  # "appliance 0.1.0"
    profiles: list[str] = Field(default_factory=list)
    model: ModelEntry | None = None
    adapters: list[AdapterEntry] = Field(default_factory=list)
    wheels: WheelSet | None = None
    # The gateway's own virtualenv (python -m appliance.gateway): its pinned dependency
    # closure plus the appliance wheel (no_deps), all under gateway-wheels/.
    gateway: WheelSet | None = None
    # The appliance itself for the operator's machine: its wheel and dependency closure,
    # all under installer-wheels/ (pip install --no-index --find-links ... appliance==V).
    installer: WheelSet | None = None
    artifacts: list[ArtifactEntry] = Field(default_factory=list)
    media: MediaLayout
    # An adapter-only bundle: the files of its base release it takes over instead of carrying.
    reuses: Reuse | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format_is_an_integer(cls, value: Any) -> Any:
        # Literal[1] also matches true and 1.0 (they compare equal to 1); a format is an integer.
        if type(value) is not int:
            raise ValueError(f"expected the integer 1, found {value!r}")
        return value

    @model_validator(mode="after")
    def _gateway_wheels_apart(self) -> Payload:
        for key, wheels, directory in (
            ("gateway", self.gateway, GATEWAY_WHEELS_DIR),
            ("installer", self.installer, INSTALLER_WHEELS_DIR),
        ):
            if wheels is None:
                continue
            outside = [p for p in wheels.files if not p.startswith(f"{directory}/")]
            if outside:
                raise ValueError(
                    f"{key} files must lie under {directory}/; found {', '.join(outside)}"
                )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "gateway", "installer", "reuses")


def _without_empty(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``data`` without the newer optional ``keys`` when they hold their empty default.

    A bundle that uses no gateway wheels then signs exactly the payload an older
    appliance wrote and reads (its schema refuses unknown keys, even null ones).
    """
    return {k: v for k, v in data.items() if not (k in keys and v in (None, []))}


WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def is_weight_file(path: str) -> bool:
    """Whether ``path`` holds model weights (what an adapter-only bundle does not carry)."""
    return path.endswith(WEIGHT_SUFFIXES)


def weights_digest(files: Iterable[tuple[str, str]]) -> str:
    """The identity of a model's weights: SHA-256 over ``"<sha256>  <path>\n"`` of each
    weight file, ``path`` relative to the model's directory (its file name for a GGUF), in
    path order. The same weights give the same digest whatever else the directory holds
    (a conversion stamp, a tokenizer edit): what an adapter was trained on is its weights.

    ``files``: (path relative to the model, sha256) of the model's files; the weight files
    among them are used.
    """
    import hashlib

    lines = sorted(f"{sha}  {path}\n" for path, sha in files if is_weight_file(path))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def model_identity(payload: Payload, records: Iterable[tuple[str, str]]) -> BaseIdentity | None:
    """The payload's model as the adapter and compliance checks identify it: name, Hub repo,
    revision (the resolved commit, else the one asked for), ``weights_digest`` over its
    files carried (``records``: path under files/ and sha256) or reused; None without one.
    A model without weight files still gets a digest (of nothing), which no adapter declares."""
    model = payload.model
    if model is None:
        return None
    return BaseIdentity(
        name=model.name,
        repo_id=model.source.repo_id,
        revision=model.source.resolved_commit or model.source.revision,
        digest=weights_digest(model_files(payload, records)),
    )


def model_files(payload: Payload, records: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(path relative to the model, sha256) of every file of the payload's model, carried
    (``records``: path under files/ and sha256) or reused."""
    model = payload.model
    if model is None:
        return []
    reused = [] if payload.reuses is None else [(f.path, f.sha256) for f in payload.reuses.files]
    out = []
    for path, sha in [*records, *reused]:
        if path == model.path:
            out.append((path.rsplit("/", 1)[-1], sha))
        elif path.startswith(model.path + "/"):
            out.append((path.removeprefix(model.path + "/"), sha))
    return out
