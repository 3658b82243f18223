"""Read the header of a GGUF file: metadata and tensor directory, never tensor data.

Why not ``gguf.GGUFReader``: it builds numpy views for every element of every
metadata array, so the 262k-entry vocabulary of a small Gemma 3 file takes 11-14 s
on two cores. This reader walks the same bytes with ``struct`` over an ``mmap``,
skips large arrays (keeping only their length) and reads the same header in well
under a second. It needs only the stdlib and ``appliance.input_files`` (the file is
opened as a regular file only, never blocking); the GGML type tables (bytes per block) come
from the ``gguf`` package in the caller, so new quantisation types need no change
here. Tests cross-check this reader against ``GGUFReader`` on generated files.

Invariants: only header bytes are touched (tensor data pages are never read);
every read is bounds-checked, so a truncated or corrupt file raises
``GGUFFormatError`` and never ``struct.error`` / ``IndexError``; counts read from
the file are checked against the bytes left before looping on them, and counts
and string lengths against fixed bounds (a sparse file cannot make it spin or
allocate gigabytes).

Format (GGUF v2/v3, little- or big-endian): magic ``GGUF``, u32 version, u64 tensor
count, u64 metadata count, metadata key/value pairs, tensor infos (name, dims,
ggml type, offset), padding to ``general.alignment``, tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from appliance.errors import ModelFileError
from appliance.input_files import open_input

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Arrays longer than this keep only their length: the header needs counts of
# vocabularies and scores, never their contents, and decoding them is the cost.
_MAX_DECODED_ARRAY = 4096

# Bounds on what a header may claim, far above any real model (a vocabulary has
# ~10^5 tokens, a chat template ~10^5 bytes, a model ~10^4 tensors) and far below
# what would exhaust memory or spin for hours on a large sparse file of zeros.
_MAX_STRING = 16 * 1024 * 1024
_MAX_METADATA = 65_536
_MAX_TENSORS = 1_000_000
_MAX_ARRAY = 16_000_000

# GGUF metadata value type ids (gguf spec; mirrors gguf.GGUFValueType).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = 0, 1, 2, 3, 4, 5, 6, 7
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = 8, 9, 10, 11, 12
_SCALAR_FORMATS: dict[int, str] = {
    _UINT8: "B",
    _INT8: "b",
    _UINT16: "H",
    _INT16: "h",
    _UINT32: "I",
    _INT32: "i",
    _FLOAT32: "f",
    _BOOL: "?",
    _UINT64: "Q",
    _INT64: "q",
    _FLOAT64: "d",
}

Scalar = int | float | bool | str


@dataclass(frozen=True, slots=True)
class GGUFArray:
    """A metadata array. ``values`` is None when the array was too long to decode."""

    item_type: int
    count: int
    values: tuple[Scalar, ...] | None


MetaValue = Scalar | GGUFArray


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] (innermost) first
    ggml_type: int
    offset: int  # relative to the start of the tensor data section

    @property
    def n_elements(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    version: int
    metadata: dict[str, MetaValue]
    tensors: tuple[GGUFTensorInfo, ...]
    data_offset: int  # absolute file offset where tensor data starts
    file_size: int
    byte_order: str  # "<" or ">"


class GGUFFormatError(ModelFileError):
    """The file is not GGUF, or its header is truncated or corrupt.

    ``kind`` is "magic", "version", "truncated" or "corrupt" so callers can word
    their own message; ``str()`` has the detail.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class _Cursor:
    """Bounds-checked sequential reader over the mapped header bytes."""

    def __init__(self, buf: mmap.mmap, size: int, byte_order: str) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.bo = byte_order

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(
                "truncated",
                f"file ends at byte {self.size} while reading {what} "
                f"(needed {n} bytes at offset {self.pos})",
            )

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        st = struct.Struct(self.bo + fmt)
        self.need(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        return int(self.scalar("I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("Q", what))

    def string(self, what: str, *, strict: bool = True) -> str:
        length = self.u64(f"length of {what}")
        _bounded(length, _MAX_STRING, f"length of {what}")
        self.need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8", errors="strict" if strict else "replace")
        except UnicodeDecodeError as exc:
            raise GGUFFormatError("corrupt", f"{what} is not valid UTF-8") from exc

    def skip_string(self, what: str) -> None:
        length = self.u64(f"length of {what}")
        self.need(length, what)
        self.pos += length


def _bounded(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise GGUFFormatError("corrupt", f"{what} is {count}, more than any model has ({limit})")


def _read_value(cur: _Cursor, vtype: int, key: str) -> MetaValue:
    if vtype == _STRING:
        # Values (chat templates, names) are free text: replace bad bytes rather
        # than reject the whole model over one character.
        return cur.string(f"value of {key!r}", strict=False)
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is not None:
        return cur.scalar(fmt, f"value of {key!r}")
    if vtype == _ARRAY:
        item_type = cur.u32(f"array type of {key!r}")
        count = cur.u64(f"array length of {key!r}")
        _bounded(count, _MAX_ARRAY, f"array length of {key!r}")
        return _read_array(cur, item_type, count, key)
    raise GGUFFormatError("corrupt", f"metadata key {key!r} has unknown value type {vtype}")


def _read_array(cur: _Cursor, item_type: int, count: int, key: str) -> GGUFArray:
    what = f"array {key!r}"
    if item_type == _STRING:
        # Each string needs at least its 8-byte length: a larger count cannot fit.
        cur.need(count * 8, what)
        if count > _MAX_DECODED_ARRAY:
            for _ in range(count):
                cur.skip_string(what)
            return GGUFArray(item_type, count, None)
        return GGUFArray(
            item_type, count, tuple(cur.string(what, strict=False) for _ in range(count))
        )
    fmt = _SCALAR_FORMATS.get(item_type)
    if fmt is None:
        # Nested arrays exist in the spec but no model key uses them.
        raise GGUFFormatError("corrupt", f"{what} has unsupported item type {item_type}")
    st = struct.Struct(f"{cur.bo}{count}{fmt}") if count <= _MAX_DECODED_ARRAY else None
    item_size = struct.calcsize(cur.bo + fmt)
    cur.need(count * item_size, what)
    if st is None:
        cur.pos += count * item_size
        return GGUFArray(item_type, count, None)
    values = st.unpack_from(cur.buf, cur.pos)
    cur.pos += count * item_size
    return GGUFArray(item_type, count, tuple(values))


def _read_tensor_info(cur: _Cursor, index: int) -> GGUFTensorInfo:
    name = cur.string(f"name of tensor #{index}")
    n_dims = cur.u32(f"dimension count of tensor {name!r}")
    if not 1 <= n_dims <= 8:
        raise GGUFFormatError("corrupt", f"tensor {name!r} claims {n_dims} dimensions")
    shape = tuple(cur.u64(f"shape of tensor {name!r}") for _ in range(n_dims))
    ggml_type = cur.u32(f"type of tensor {name!r}")
    offset = cur.u64(f"data offset of tensor {name!r}")
    return GGUFTensorInfo(name, shape, ggml_type, offset)


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path``.

    Raises ``GGUFFormatError`` for a non-GGUF, truncated or corrupt file and lets
    ``OSError`` (missing file, permission denied) through for the caller to word.
    """
    # Regular files only, opened without blocking: a FIFO or device is never read.
    fd = open_input(path, "GGUF file", error=ModelFileError)
    with open(fd, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        first = fh.read(8)
        if len(first) < 4 or first[:4] != GGUF_MAGIC:
            raise GGUFFormatError("magic", f"first bytes are {first!r}")
        if size < 24:
            raise GGUFFormatError("truncated", f"header needs 24 bytes, file has {size}")
        # mmap instead of read(): only the pages the header walk touches are
        # loaded, so a multi-GB file costs its header size, not its size.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, size)


def _parse(buf: mmap.mmap, size: int) -> GGUFHeader:
    (version_le,) = struct.unpack_from("<I", buf, 4)
    # A file written on a big-endian host has its version bytes swapped; the
    # low 16 bits are zero in that case (same test as gguf.GGUFReader).
    byte_order = ">" if version_le & 0xFFFF == 0 else "<"
    cur = _Cursor(buf, size, byte_order)
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFFormatError(
            "version",
            f"GGUF version {version}; supported versions are "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}",
        )
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("metadata count")
    _bounded(tensor_count, _MAX_TENSORS, "tensor count")
    _bounded(kv_count, _MAX_METADATA, "metadata count")
    # Each key/value needs >= 12 bytes and each tensor info >= 24: reject
    # impossible counts before looping on them.
    cur.need(kv_count * 12 + tensor_count * 24, "metadata and tensor directory")

    metadata: dict[str, MetaValue] = {}
    for i in range(kv_count):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"value type of {key!r}")
        if key in metadata:
            raise GGUFFormatError("corrupt", f"metadata key {key!r} appears twice")
        metadata[key] = _read_value(cur, vtype, key)

    tensors = tuple(_read_tensor_info(cur, i) for i in range(tensor_count))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise GGUFFormatError(
            "corrupt", f"general.alignment is {alignment!r}, expected a power of two"
        )
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(
        version=version,
        metadata=metadata,
        tensors=tensors,
        data_offset=data_offset,
        file_size=size,
        byte_order=byte_order,
    )
