"""Check: find the parts of one media set across several directories and check them.

Job
    ``check_parts`` looks in every directory given (one per medium, any order),
    hashes each part found against its signed SHA-256 and names every missing,
    damaged, stray or foreign part at once, with the files a damaged part holds.

Invariants
- A part is trusted only through its signed SHA-256; a part found twice with
  different content is refused, whichever copy is good.
- Links, directories and special files named like parts are reported, never
  read; parts are opened without following links and without blocking.
- All problems are collected before one ``MediaPartError`` lists them.
- At most ``MAX_CHECK_THREADS`` readers (parts often share one medium), each
  with one reusable buffer; a consumer that stops early stops the readers.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Collection, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.format import FileRecord, MediaPart
from appliance.bundle.media.parts import (
    PART_NAME,
    TEMP_SUFFIX,
    check_identity,
    describe_part,
    layout_parts,
)
from appliance.bundle.payload import MediaLayout
from appliance.errors import InputError, MediaPartError
from appliance.events import Event, Finished, Progress, Started, Warned
from appliance.input_files import input_directory
from appliance.safe_fs import open_regular

CHECK_CHUNK = 1024 * 1024  # per checking thread
MAX_CHECK_THREADS = 4  # parts often share one medium: more readers only add seeks


@dataclass
class _Candidate:
    path: Path
    size: int
    digest: str | None = None
    error: str | None = None


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _hash_file(path: Path, counter: _Counter, cancel: threading.Event) -> tuple[str, int]:
    fd = open_regular(path)
    try:
        buffer = bytearray(CHECK_CHUNK)
        view = memoryview(buffer)
        digest = hashlib.sha256()
        length = 0
        while n := os.readv(fd, [view]):
            if cancel.is_set():
                raise OSError(errno.ECANCELED, "cancelled")
            digest.update(view[:n])
            length += n
            counter.add(n)
        return digest.hexdigest(), length
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _SetNames:
    """The names of one media set: which part each file name stands for."""

    name: str
    version: int
    count: int
    expected: dict[str, int]  # part file name -> index
    first: str
    last: str

    @classmethod
    def of(cls, parts: Sequence[MediaPart], name: str, version: int) -> _SetNames:
        count = len(parts)
        return cls(
            name,
            version,
            count,
            {part.filename(name, version, count): part.index for part in parts},
            parts[0].filename(name, version, count),
            parts[-1].filename(name, version, count),
        )


def _find_candidates(
    parts_dirs: Sequence[Path], names: _SetNames, wanted: set[int], problems: list[str]
) -> Generator[Event, None, dict[int, list[_Candidate]]]:
    """Every plain file that is a wanted part of this set; the others go to ``problems``."""
    name, version, count = names.name, names.version, names.count
    found: dict[int, list[_Candidate]] = {}
    seen: set[tuple[int, int]] = set()
    for directory in parts_dirs:
        input_directory(directory, "parts directory")
        try:
            entries = sorted(os.listdir(directory))
        except OSError as exc:
            raise InputError(
                f"parts directory {directory} cannot be listed: {exc.strerror or exc}"
            ) from exc
        for entry in entries:
            path = directory / entry
            match = PART_NAME.match(entry)
            if match is None:
                if entry.startswith(".") and entry.endswith(TEMP_SUFFIX):
                    yield Warned("check-parts", f"ignoring {path}: an unfinished part")
                continue
            if (match["name"], int(match["version"])) != (name, version):
                problems.append(
                    f"{path} belongs to bundle {match['name']} version {match['version']}, "
                    f"not {name} version {version}: move it away from this set"
                )
                continue
            index = names.expected.get(entry)
            if index is None:
                problems.append(
                    f"{path} is named like a part of {name} {version}, but this set has "
                    f"{count} parts ({names.first} to {names.last}): remove it"
                )
                continue
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                problems.append(
                    f"part {index}: {path} is a link, directory or special file; "
                    "replace it with a copy of the part"
                )
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue  # the same file reached twice (a directory given twice)
            seen.add((info.st_dev, info.st_ino))
            if index in wanted:
                found.setdefault(index, []).append(_Candidate(path, info.st_size))
    return found


def _hash_candidates(tasks: Sequence[_Candidate]) -> Generator[Event, None, None]:
    """Hash ``tasks`` in parallel into their ``digest`` (or ``error``), reporting progress."""
    total = sum(candidate.size for candidate in tasks)
    yield Started("check-parts", total_bytes=total, total_items=len(tasks))
    counter = _Counter()
    cancel = threading.Event()
    workers = max(1, min(MAX_CHECK_THREADS, os.cpu_count() or 1, len(tasks)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-part") as pool:
        futures: dict[Future[tuple[str, int]], _Candidate] = {
            pool.submit(_hash_file, candidate.path, counter, cancel): candidate
            for candidate in tasks
        }
        pending = set(futures)
        checked = 0
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    candidate = futures[future]
                    checked += 1
                    try:
                        candidate.digest, length = future.result()
                    except OSError as exc:
                        candidate.error = f"cannot be read ({exc.strerror})"
                        continue
                    if length != candidate.size:
                        candidate.error = "changed while being read (still being copied?)"
                yield Progress("check-parts", counter.value, total, checked, len(tasks))
        except BaseException:
            cancel.set()  # the consumer gave up: stop the readers quickly
            raise


def _status(candidate: _Candidate, part: MediaPart) -> str | None:
    """What is wrong with one hashed copy of ``part``; None when it matches."""
    if candidate.error is not None:
        return candidate.error
    if candidate.size != part.length:
        return (
            f"has {candidate.size} bytes, expected {part.length} "
            "(truncated or extended: copy it again)"
        )
    if candidate.digest != part.sha256:
        return "does not match its signed SHA-256 (damaged: copy it again)"
    return None


def _judge(
    found: dict[int, list[_Candidate]],
    by_index: dict[int, MediaPart],
    records: Sequence[FileRecord],
    problems: list[str],
) -> dict[int, Path]:
    """index -> path of each intact part; what is wrong with the others goes to ``problems``."""
    mapping: dict[int, Path] = {}
    for index in sorted(found):
        part = by_index[index]
        candidates = found[index]
        if len({(c.size, c.digest, c.error) for c in candidates}) > 1:
            details = "; ".join(
                f"{c.path} ({_status(c, part) or 'matches the signed digest'})" for c in candidates
            )
            problems.append(
                f"part {index} was found in {len(candidates)} places with different "
                f"content: {details}. Keep only a good copy"
            )
            continue
        candidate = candidates[0]
        problem = _status(candidate, part)
        if problem is None:
            mapping[index] = candidate.path
        elif candidate.error is None and candidate.size == part.length:
            problems.append(
                f"part {index} ({candidate.path}) is damaged: its SHA-256 does not match "
                f"the signed digest; it holds {describe_part(records, part)}"
            )
        else:
            problems.append(f"part {index} ({candidate.path}) {problem}")
    return mapping


def check_parts(
    parts_dirs: Sequence[Path],
    layout: MediaLayout,
    name: str,
    version: int,
    records: Sequence[FileRecord],
    *,
    only: Collection[int] | None = None,
) -> Generator[Event, None, dict[int, Path]]:
    """Find and check the parts of ``name``-``version`` in ``parts_dirs``; index -> path.

    Collects every problem before raising one ``MediaPartError`` that lists them
    all. ``only`` limits which parts must be present and are hashed (join uses it
    to skip parts a resumed join already applied); stray and foreign files are
    reported either way.
    """
    check_identity(name, version)
    parts = layout_parts(layout, records)
    names = _SetNames.of(parts, name, version)
    by_index = {part.index: part for part in parts}
    wanted = set(by_index) if only is None else set(only) & set(by_index)

    problems: list[str] = []
    found = yield from _find_candidates(parts_dirs, names, wanted, problems)
    for index in sorted(wanted - set(found)):
        problems.append(
            f"part {index} ({by_index[index].filename(name, version, names.count)}) is "
            "missing: copy it from its medium"
        )

    yield from _hash_candidates(
        [
            candidate
            for index, candidates in found.items()
            for candidate in candidates
            if candidate.size == by_index[index].length
        ]
    )
    mapping = _judge(found, by_index, records, problems)
    if problems:
        raise MediaPartError(
            f"the media set of {name} {version} has {len(problems)} problem(s):\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            hint="Re-copy only the parts named above from their media (each part is "
            "checked on its own), move stray or foreign files away, then run again.",
        )
    yield Finished("check-parts", f"{len(mapping)} parts of {name} {version} are intact")
    return mapping
