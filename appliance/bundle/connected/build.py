"""Build an unsigned bundle from a recipe (connected side).

``build_bundle(recipe, out_dir)`` is a generator of events that returns the
bundle directory. Steps: fetch every source (``appliance.bundle.connected.sources``),
check every destination path (``check_relpath``, ``check_no_collisions``)
before anything is copied, copy each file once in manifest order (sorted
paths) with ``copy_and_hash`` feeding one ``PartHasher``, so file digests,
shard digests and media part digests all come from the bytes written; then
build the ``Payload`` and write ``metadata/targets.json`` (unsigned:
``appliance bundle sign`` adds signatures). A recipe's ``gateway`` adds the
gateway's wheels (``sources.fetch_gateway``: the pinned closure of
``appliance/gateway/requirements.txt`` and the appliance wheel) under
``files/gateway-wheels/``; its ``installer`` adds the appliance wheel and its
dependency closure for the operator's machine (``sources.fetch_installer``)
under ``files/installer-wheels/``.

Invariants:
- ``out_dir`` must not exist. Everything is built in a hidden staging
  directory next to it and renamed into place only when complete; on any
  failure or interruption the staging directory is removed, so no
  bundle-looking directory is ever left at ``out_dir``.
- The manifest describes exactly the bytes in ``files/``: the records are the
  digests computed while writing those bytes, never the sources' digests.
- A pinned artifact digest is checked twice: when downloaded and on the copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from appliance import __version__
from appliance.bundle.connected.recipe import Recipe, check_profiles, format_size, parse_recipe
from appliance.bundle.connected.reuse import (
    carried_model_files,
    check_carried,
    read_base,
    reuse_of,
)
from appliance.bundle.connected.sources import (
    Fetched,
    fetch_adapter,
    fetch_artifact,
    fetch_gateway,
    fetch_installer,
    fetch_model,
    fetch_wheels,
)
from appliance.bundle.format import (
    FAT32_SAFE_PART_SIZE,
    FILES_DIR,
    FileRecord,
    check_no_collisions,
    check_relpath,
    show_path,
)
from appliance.bundle.hashing import PartHasher, copy_and_hash
from appliance.bundle.payload import (
    AdapterEntry,
    ArtifactEntry,
    MediaLayout,
    ModelEntry,
    Payload,
)
from appliance.errors import (
    BundleBuildError,
    Cancelled,
    InputError,
    ModelFileError,
    UnsafePathError,
)
from appliance.events import Event, Finished, Progress, Started, Warned

OPERATION = "build"
PROGRESS_EVERY_S = 0.25  # how often a long copy reports bytes


class ManifestWriter(Protocol):
    def __call__(
        self,
        bundle_dir: Path,
        *,
        payload: Payload,
        records: Sequence[FileRecord],
        version: int,
        expires: datetime,
    ) -> Path: ...


def recipe_from_args(
    model: Path,
    name: str,
    version: int,
    channel: str,
    expires: str,
    part_size: str | None,
    profiles: list[str],
    *,
    licence: str = "NOASSERTION",
) -> Recipe:
    """A recipe from ``appliance bundle build --model PATH ...`` flags.

    A directory is a Hugging Face model directory (``local_dir``), a ``.gguf``
    file a GGUF model. The licence is ``NOASSERTION`` (SPDX for "not stated")
    unless given. Raises ``InputError`` naming the flag's key.
    """
    model = Path(model).expanduser().absolute()
    if model.is_dir():
        source: dict[str, Any] = {"local_dir": str(model)}
    elif model.is_file() and model.suffix.lower() == ".gguf":
        source = {"gguf": str(model)}
    elif not model.exists():
        raise InputError(
            f"--model {model} does not exist",
            hint="Pass a Hugging Face model directory or a .gguf file.",
        )
    else:
        raise InputError(
            f"--model {model} is neither a directory nor a .gguf file",
            hint="Pass a Hugging Face model directory or a .gguf file.",
        )
    data: dict[str, Any] = {
        "name": name,
        "channel": channel,
        "version": version,
        "expires": expires,
        "profiles": list(profiles),
        "model": {**source, "licence": licence},
    }
    if part_size is not None:
        data["media"] = {"part_size": part_size}
    recipe = parse_recipe(data, base_dir=Path.cwd(), where="bundle build options")
    check_profiles(recipe, where="bundle build options")
    return recipe


def build_bundle(
    recipe: Recipe,
    out_dir: Path,
    *,
    now: datetime | None = None,
    write_manifest: ManifestWriter | None = None,
    hf_cache_dir: Path | None = None,
) -> Generator[Event, None, Path]:
    """Build the bundle ``recipe`` describes into the new directory ``out_dir``.

    ``write_manifest`` defaults to ``appliance.bundle.manifest.write_unsigned``;
    ``hf_cache_dir`` overrides the Hugging Face cache for ``hub`` sources.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    expires = recipe.expires_at(now)
    if expires <= now:
        raise BundleBuildError(
            f"the recipe's expiry {recipe.expires} ({expires.isoformat()}) is not after the "
            f"build time {now.isoformat()}",
            hint="Set expires to a later date or a duration such as 90d.",
        )
    if write_manifest is None:
        from appliance.bundle.manifest import write_unsigned

        write_manifest = write_unsigned
    out_dir = Path(out_dir).absolute()
    _check_out_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield Started(OPERATION)
        bundle = staging / "bundle"
        summary = yield from _build(
            recipe, bundle, staging / "downloads", now, expires, write_manifest, hf_cache_dir
        )
        _check_out_dir(out_dir)  # again: someone may have created it while we built
        os.rename(bundle, out_dir)
        yield Finished(
            OPERATION,
            f"built {out_dir}: {recipe.name} version {recipe.version} ({recipe.channel}), "
            f"{summary}; unsigned: sign it with `appliance bundle sign`",
        )
        return out_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        raise BundleBuildError(
            f"{out_dir} already exists; a bundle is built into a new directory",
            hint="Choose another --out, or remove the old one if it is no longer needed.",
        )
    if not out_dir.parent.is_dir():
        raise BundleBuildError(f"{out_dir.parent} does not exist or is not a directory")


def _build(
    recipe: Recipe,
    bundle: Path,
    downloads: Path,
    now: datetime,
    expires: datetime,
    write_manifest: ManifestWriter,
    hf_cache_dir: Path | None,
) -> Generator[Event, None, str]:
    """Fetch, copy and hash, write the manifest into ``bundle``; returns a summary."""
    steps = (
        1
        + len(recipe.adapters)
        + (recipe.wheels is not None)
        + (recipe.gateway is not None)
        + (recipe.installer is not None)
        + len(recipe.artifacts)
    )
    done = 0

    def fetched(what: str, result: Fetched[Any]) -> Generator[Event, None, None]:
        nonlocal done
        done += 1
        for note in result.notes:
            yield Warned(OPERATION, note)
        yield Progress("fetch", 0, None, done, steps, item=what)

    base = None
    if recipe.reuse is not None:
        base = read_base(recipe.reuse.bundle, name=recipe.name, version=recipe.version)
        assert base.payload.model is not None  # read_base refuses a base without one
        model: Fetched[ModelEntry] = Fetched(base.payload.model, carried_model_files(base))
    else:
        assert recipe.model is not None  # the recipe requires model or reuse
        model = fetch_model(recipe.model, hf_cache_dir=hf_cache_dir)
    yield from fetched(f"model {model.entry.name}", model)
    adapters: list[Fetched[AdapterEntry]] = []
    for spec in recipe.adapters:
        adapter = fetch_adapter(spec)
        adapters.append(adapter)
        yield from fetched(f"adapter {spec.name}", adapter)
        trained_on = adapter.entry.provenance.base_model
        names = {model.entry.name, model.entry.source.repo_id} - {None}
        if not any(n == trained_on or trained_on.rstrip("/").endswith("/" + str(n)) for n in names):
            yield Warned(
                OPERATION,
                f"adapter {spec.name!r} was trained on {trained_on!r}, but the bundle's model "
                f"is {model.entry.source.repo_id or model.entry.name!r}",
            )
    wheels = None
    if recipe.wheels is not None:
        wheels = fetch_wheels(recipe.wheels, downloads / "wheels")
        yield from fetched(f"{len(wheels.files)} wheels", wheels)
    gateway = None
    if recipe.gateway is not None:
        gateway = fetch_gateway(recipe.gateway, downloads / "gateway")
        yield from fetched(f"{len(gateway.files)} gateway wheels", gateway)
    installer = None
    if recipe.installer is not None:
        installer = fetch_installer(recipe.installer, downloads / "installer")
        yield from fetched(f"{len(installer.files)} installer wheels", installer)
    artifacts: list[Fetched[ArtifactEntry]] = []
    for art in recipe.artifacts:
        artifact = fetch_artifact(art, downloads / "artifacts")
        artifacts.append(artifact)
        yield from fetched(f"artifact {art.name}", artifact)

    wheel_sets = [w for w in (wheels, gateway, installer) if w is not None]
    plan = _plan([model, *adapters, *wheel_sets, *artifacts])
    sizes = [_size_of(src) for src, _ in plan]
    total = sum(sizes)
    part_size = recipe.media.part_size
    if part_size > FAT32_SAFE_PART_SIZE and total > FAT32_SAFE_PART_SIZE:
        yield Warned(
            OPERATION,
            f"media parts of {format_size(part_size)} do not fit on FAT32 media (files must "
            f"stay below 4 GiB); use exFAT/ext4 media or a smaller media.part_size",
        )

    yield Started("copy", total_bytes=total, total_items=len(plan))
    files_root = bundle / FILES_DIR
    hasher = PartHasher(part_size)
    records = yield from _copy_all(plan, files_root, hasher, total)
    parts = hasher.finish()

    pinned = {a.entry.path: a.entry.sha256 for a in artifacts}
    for record in records:
        if record.path in pinned and record.sha256 != pinned[record.path]:
            raise BundleBuildError(
                f"{record.path} changed after download: expected {pinned[record.path]}, "
                f"copied {record.sha256}"
            )

    reuses = None
    if base is not None:
        check_carried(base, records)
        reuses = reuse_of(base, {r.path for r in records})
        model_entry = model.entry  # the base's, with its parameter count and dtype
    else:
        model_entry, warning = _with_model_info(model.entry, files_root)
        if warning is not None:
            yield Warned(OPERATION, warning)
    payload = Payload(
        name=recipe.name,
        channel=recipe.channel,
        created=now.isoformat().replace("+00:00", "Z"),
        created_by=f"appliance {__version__}",
        profiles=list(recipe.profiles),
        model=model_entry,
        adapters=[a.entry for a in adapters],
        wheels=base.payload.wheels if base else None if wheels is None else wheels.entry,
        gateway=base.payload.gateway if base else None if gateway is None else gateway.entry,
        installer=(
            base.payload.installer if base else None if installer is None else installer.entry
        ),
        artifacts=list(base.payload.artifacts) if base else [a.entry for a in artifacts],
        reuses=reuses,
        media=MediaLayout(
            part_size=part_size,
            parts=[(p.index, p.offset, p.length, p.sha256) for p in parts],
        ),
    )
    write_manifest(
        bundle, payload=payload, records=records, version=recipe.version, expires=expires
    )
    summary = f"{len(records)} files, {format_size(total)}, {len(parts)} media part(s)"
    if reuses is not None:
        kept = sum(f.length for f in reuses.files)
        summary += (
            f"; reuses {len(reuses.files)} files ({format_size(kept)}) of {reuses.bundle} "
            f"version {reuses.version} by digest"
        )
    return summary


def _plan(fetches: Sequence[Fetched[Any]]) -> list[tuple[Path, str]]:
    """All files in manifest order, every destination path checked before anything is copied."""
    plan = sorted(
        (item for fetch in fetches for item in fetch.files), key=lambda item: item[1]
    )  # str order == UTF-8 byte order: the order the manifest and media join use
    seen: dict[str, Path] = {}
    for src, rel in plan:
        try:
            check_relpath(rel)
        except UnsafePathError as exc:
            # src holds the hostile name too: shown escaped, like the rule's message.
            raise BundleBuildError(
                f"cannot bundle {show_path(str(src))}: {exc.message}", hint=exc.hint
            ) from exc
        if rel in seen:
            raise BundleBuildError(f"two sources map to {rel}: {seen[rel]} and {src}")
        seen[rel] = src
    try:
        check_no_collisions([rel for _, rel in plan])
    except UnsafePathError as exc:
        raise BundleBuildError(f"cannot bundle these sources: {exc.message}") from exc
    return plan


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise BundleBuildError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _copy_all(
    plan: list[tuple[Path, str]], files_root: Path, hasher: PartHasher, total: int
) -> Generator[Event, None, list[FileRecord]]:
    """Copy in a worker thread so a multi-GB file still reports progress every 0.25 s."""
    cancel = threading.Event()
    copied = 0

    def on_bytes(n: int) -> None:
        nonlocal copied
        if cancel.is_set():
            raise Cancelled("the bundle build was stopped while copying")
        copied += n

    records: list[FileRecord] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle-copy") as pool:
        for index, (src, rel) in enumerate(plan, start=1):
            dst = files_root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            future: Future[FileRecord] = pool.submit(
                copy_and_hash, src, dst, rel, parts=hasher, on_bytes=on_bytes
            )
            try:
                while True:
                    try:
                        record = future.result(timeout=PROGRESS_EVERY_S)
                        break
                    except FutureTimeout:
                        yield Progress("copy", copied, total, index - 1, len(plan), item=rel)
            except OSError as exc:
                raise BundleBuildError(
                    f"cannot copy {src} to the bundle: {exc.strerror or exc}"
                ) from exc
            finally:
                # A consumer that stops iterating (GeneratorExit) must not leave the thread
                # writing into a directory that is about to be removed.
                if not future.done():
                    cancel.set()
                    wait([future])
            records.append(record)
            yield Progress("copy", copied, total, index, len(plan), item=rel)
    return records


def _with_model_info(entry: ModelEntry, files_root: Path) -> tuple[ModelEntry, str | None]:
    """Parameter count and checkpoint dtype, read from the bundled copy when it is readable."""
    from appliance.model.info import load_model_info

    try:
        info = load_model_info(files_root / entry.path)
    except ModelFileError as exc:
        return entry, (
            f"model {entry.name}: parameter count and dtype not recorded ({exc.message})"
        )
    update = {"parameter_count": info.parameter_count, "checkpoint_dtype": info.checkpoint_dtype}
    return entry.model_copy(update=update), None
