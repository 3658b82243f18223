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

# --- path rules ---------------------------------------------------------------------------
# One set of rules for build, verify, install and media join (bundles/FORMAT.md, "Paths").
# Targets considered: ext4/xfs/btrfs (where the bundle is unpacked), ext4 with casefold,
# exFAT, NTFS and FAT32 (removable media, also through Linux's exfat/ntfs3/vfat drivers),
# APFS and HFS+ (an operator's laptop). A name must survive all of them unchanged and
# distinct, and must read the same to a person as to the filesystem.

# Characters no target keeps in a name (NTFS, exFAT, FAT32 refuse them; the Linux drivers
# refuse or remap them), and the backslash, a path separator on those filesystems.
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*\\')
# Look like a path separator to a reader; U+FF0F and U+FE68 even become '/' and '\\' under NFKC.
_SLASH_LOOKALIKES = frozenset("\u2044\u2215\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c")
_LINE_SEPARATORS = frozenset("\u2028\u2029")
# Bidirectional embeddings, overrides, isolates and marks: they reorder or hide how a
# name is displayed ("evil\u202etxt.exe" reads as "evilexe.txt").
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Default-ignorable code points outside category Cf (which is refused as a whole): they
# render as nothing, and HFS+/APFS ignore several of them when comparing names.
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u3164\uffa0"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
    + "".join(chr(c) for c in range(0xE0100, 0xE01F0))
)
# Windows device names: refused as a name's stem ("nul", "Con.txt", "COM1.tar.gz", "COM\u00b9"),
# whatever the case or extension; NTFS and FAT32 media cannot hold such a file.
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {
        f"{dev}{n}"
        for dev in ("COM", "LPT")
        for n in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "\u00b9", "\u00b2", "\u00b3")
    }
)


def show_path(path: str) -> str:
    """``path`` quoted with every non-ASCII or non-printable code point escaped (``\\u202e``),
    so a message that names a hostile path cannot itself mislead."""
    return ascii(path)


def _refused_character(char: str) -> str | None:
    """The rule a single code point breaks, or None if it may appear in a bundle path."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:  # C0, DEL, C1 (which includes U+0085 NEL)
        return "a control character (C0, DEL or C1, U+0085 NEL included)"
    if char in _LINE_SEPARATORS:
        return "a line or paragraph separator (U+2028/U+2029)"
    if char in _BIDI_CONTROLS:
        return "a bidirectional control (override, embedding, isolate or mark)"
    if char in _WINDOWS_FORBIDDEN:
        return 'a backslash, colon or one of <>"|?* (NTFS, exFAT and FAT32 refuse them)'
    if char in _SLASH_LOOKALIKES:
        return "a character that looks like a path separator"
    if 0xD800 <= code <= 0xDFFF:
        return "a lone surrogate (not valid Unicode; it has no UTF-8 form)"
    category = unicodedata.category(char)
    if category == "Cf" or char in _INVISIBLE:
        return "an invisible format character (zero-width, joiner, BOM, tag or filler)"
    if category in ("Zs", "Zl", "Zp") and char != " ":
        return "a space other than U+0020 (it looks like one but is another name)"
    if category == "Cn":
        return (
            "an unassigned code point or noncharacter (its case folding and normalisation "
            "are not defined yet, so collisions cannot be ruled out)"
        )
    if category == "Co":
        return "a private-use character (no agreed meaning or glyph: it cannot be read)"
    return None


def _check_component(path: str, part: str) -> None:
    if part in ("", ".", ".."):
        raise UnsafePathError(f"path {show_path(path)} has an empty, '.' or '..' component")
    if len(part.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafePathError(
            f"path {show_path(path)} has a component longer than {MAX_NAME_BYTES} bytes"
        )
    if part[-1] in ". ":
        raise UnsafePathError(
            f"path {show_path(path)}: component {show_path(part)} ends in a dot or space, "
            "which Windows, NTFS and exFAT drop (the name would change on the medium)"
        )
    stem = part.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        raise UnsafePathError(
            f"path {show_path(path)}: component {show_path(part)} is a Windows device name "
            "(CON, PRN, AUX, NUL, COM1-9, LPT1-9), which NTFS and FAT32 media cannot hold"
        )


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

    Every rule of bundles/FORMAT.md "Paths" is checked here and nowhere else;
    the ``UnsafePathError`` names the path (escaped, see ``show_path``) and the rule.
    """
    if not path:
        raise UnsafePathError("an empty path is not allowed in a bundle")
    for char in path:
        rule = _refused_character(char)
        if rule is not None:
            raise UnsafePathError(
                f"path {show_path(path)} contains {show_path(char)}: {rule}",
                hint="rename the file; bundle paths are plain, visible names that every "
                "target filesystem keeps as they are (bundles/FORMAT.md, Paths)",
            )
    if path.startswith("/"):
        raise UnsafePathError(f"absolute path {show_path(path)} is not allowed in a bundle")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafePathError(
            f"path {show_path(path[:60])}... is longer than {MAX_PATH_BYTES} bytes"
        )
    if unicodedata.normalize("NFC", path) != path:
        raise UnsafePathError(
            f"path {show_path(path)} is not in Unicode NFC form "
            f"(NFC: {show_path(unicodedata.normalize('NFC', path))})"
        )
    for part in path.split("/"):
        _check_component(path, part)
    return path


def fold_path(path: str) -> str:
    """The key under which two names are the same name on some target filesystem.

    Per component: NFKC (covers NFC/NFD of APFS and HFS+, and compatibility forms that
    read the same: U+FB01 'fi', fullwidth letters), then upper case (NTFS and exFAT
    compare through an upcase table: dotless i U+0131 is 'I' there), then full case folding
    (ext4 casefold, APFS: 'straße' is 'STRASSE'), then NFKC again.
    """
    return "/".join(
        unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", part).upper().casefold())
        for part in path.split("/")
    )


def check_no_collisions(paths: list[str]) -> None:
    """Refuse two names that are one name on some target filesystem (``fold_path``), and a
    file that is also used as a directory, exactly or after folding."""
    seen: dict[str, str] = {}
    for path in paths:
        other = seen.setdefault(fold_path(path), path)
        if other != path:
            raise UnsafePathError(
                f"paths {show_path(other)} and {show_path(path)} collide on case-insensitive "
                "filesystems and normalising ones (NTFS, exFAT, FAT32, APFS, HFS+, ext4 "
                "casefold): they are one name there"
            )
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            as_file = seen.get(fold_path(parent))
            if as_file is not None:
                how = (
                    "" if as_file == parent else f" (as {show_path(parent)}, the same name folded)"
                )
                raise UnsafePathError(
                    f"{show_path(as_file)} is listed as a file and as a directory of "
                    f"{show_path(path)}{how}"
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
