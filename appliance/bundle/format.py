"""Bundle format v1: layout, limits, path rules, file records, the signed payload.

The authoritative description is ``bundles/FORMAT.md``. In short::

    BUNDLE/
      metadata/targets.json      TUF targets metadata: version, expiry, every file
                                 (length, sha256, shard digests) and the appliance
                                 payload (name, channel, model, adapters, media parts)
      metadata/root/N.root.json  optional: trusted-root rotations, N = 2, 3, ...
      files/...                  the content, exactly the files the manifest lists

Everything a verifier relies on is inside ``targets.json``'s signed part. The
path rules here are shared by build, verify, install and media join, so every
stage refuses the same names.
"""

from __future__ import annotations

import re
import stat
import unicodedata
from dataclasses import dataclass

from appliance.errors import UnsafePathError

FORMAT_VERSION = 1
METADATA_DIR = "metadata"
TARGETS_FILE = "metadata/targets.json"
ROOT_HISTORY_DIR = "metadata/root"
FILES_DIR = "files"
PAYLOAD_KEY = "appliance"  # the signed, appliance-specific part of targets.json

SHARD_SIZE = 64 * 1024 * 1024  # digest granularity for parallel verify and damage location
# FAT32 refuses files of 4 GiB or more: the default part is 1 MiB below that.
FAT32_SAFE_PART_SIZE = 4 * 1024**3 - 1024**2

# Bounds that stop "endless data" before any parsing or hashing.
MAX_METADATA_BYTES = 64 * 1024 * 1024
MAX_ROOT_BYTES = 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_FILES = 1_000_000
MAX_VERSION = 2**31 - 1
MAX_VERSION_JUMP = 1000  # beyond this a version needs --allow-version-jump

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\:]")


def describe_mode(mode: int) -> str:
    """What kind of file ``st_mode`` says this is, for messages ("a FIFO", "a symbolic link")."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe, canonical relative POSIX path; else raise.

    Refused: empty, absolute, ``.``/``..`` components, empty components
    (``a//b``, trailing ``/``), backslashes, colons, control characters,
    components over 255 bytes, paths over 4096 bytes, names that are not NFC.
    """
    if not path:
        raise UnsafePathError("an empty path is not allowed in a bundle")
    if path.startswith("/"):
        raise UnsafePathError(f"absolute path {path!r} is not allowed in a bundle")
    if _FORBIDDEN_CHARS.search(path):
        raise UnsafePathError(f"path {path!r} contains a backslash, colon or control character")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"path {path[:60]!r}... is longer than {MAX_PATH_BYTES} bytes")
    if unicodedata.normalize("NFC", path) != path:
        raise UnsafePathError(f"path {path!r} is not in Unicode NFC form")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"path {path!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafePathError(
                f"path {path!r} has a component longer than {MAX_NAME_BYTES} bytes"
            )
    return path


def check_no_collisions(paths: list[str]) -> None:
    """Refuse names that collide on case-insensitive or normalising filesystems, and
    a file that is also used as a directory."""
    seen: dict[str, str] = {}
    as_files = set(paths)
    for path in paths:
        folded = unicodedata.normalize("NFKC", path).casefold()
        other = seen.setdefault(folded, path)
        if other != path:
            raise UnsafePathError(
                f"paths {other!r} and {path!r} collide on case-insensitive filesystems"
            )
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in as_files:
                raise UnsafePathError(
                    f"{parent!r} is listed as a file and as a directory of {path!r}"
                )


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file of the bundle, as signed.

    ``shards`` holds the SHA-256 of each ``shard_size`` slice when the file
    spans more than one shard; for a file of one shard or less it is empty and
    ``sha256`` (the whole file) is what is checked.
    """

    path: str  # relative to files/, checked by check_relpath
    length: int
    sha256: str
    shard_size: int = SHARD_SIZE
    shards: tuple[str, ...] = ()

    def shard_ranges(self) -> list[tuple[int, int, str]]:
        """(offset, length, expected sha256) for every piece that is checked."""
        if not self.shards:
            return [(0, self.length, self.sha256)]
        return [
            (i * self.shard_size, min(self.shard_size, self.length - i * self.shard_size), digest)
            for i, digest in enumerate(self.shards)
        ]


def expected_shard_count(length: int, shard_size: int) -> int:
    """Shard digests a file of ``length`` must carry (0: the whole-file digest suffices)."""
    return 0 if length <= shard_size else -(-length // shard_size)


@dataclass(frozen=True, slots=True)
class MediaPart:
    """One part of a split set: a slice of the content stream (files in manifest order)."""

    index: int  # 1-based
    offset: int  # in the stream
    length: int
    sha256: str

    def filename(self, name: str, version: int, count: int) -> str:
        width = max(3, len(str(count)))
        return f"{name}-{version}.part{self.index:0{width}d}-of-{count:0{width}d}"
