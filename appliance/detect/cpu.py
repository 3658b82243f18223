"""Pure parser for ``/proc/cpuinfo``: CPU model name and the flags llama.cpp cares about.

Invariants: no IO here (the caller reads the file); the result is deterministic
for a given text; flags are reported only when *every* processor block lists
them (a hybrid CPU must not advertise an instruction some cores lack), are
renamed to the names llama.cpp uses (``pni`` -> ``sse3``, ``asimddp`` ->
``dotprod``) and are sorted.
"""

from __future__ import annotations

# Kernel flag name -> name we report. Only instructions that change which
# llama.cpp build runs (or how fast) are kept; the full list is noise.
_X86_FLAGS: dict[str, str] = {
    "pni": "sse3",  # the kernel calls SSE3 "pni" (Prescott New Instructions)
    "sse3": "sse3",
    "ssse3": "ssse3",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}
_ARM_FLAGS: dict[str, str] = {
    "asimd": "asimd",
    "sve": "sve",
    "sve2": "sve2",
    "i8mm": "i8mm",
    "asimddp": "dotprod",  # the kernel's name for the SDOT/UDOT extension
    "dotprod": "dotprod",
}
_KEPT = _X86_FLAGS | _ARM_FLAGS

# aarch64 cpuinfo has no model name; (implementer, part) identifies the core.
_ARM_PARTS: dict[tuple[str, str], str] = {
    ("0x41", "0xd0c"): "ARM Neoverse-N1",
    ("0x41", "0xd40"): "ARM Neoverse-V1",
    ("0x41", "0xd49"): "ARM Neoverse-N2",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",
    ("0x41", "0xd84"): "ARM Neoverse-V3",
    ("0x41", "0xd8e"): "ARM Neoverse-N3",
    ("0x41", "0xd08"): "ARM Cortex-A72",
    ("0x41", "0xd0b"): "ARM Cortex-A76",
}

UNKNOWN_MODEL = "unknown"


def _blocks(text: str) -> list[dict[str, str]]:
    """Split cpuinfo into per-processor key/value blocks (blank-line separated)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            # First occurrence wins: some kernels repeat keys in a trailer block.
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _model(blocks: list[dict[str, str]]) -> str:
    for block in blocks:
        name = block.get("model name") or block.get("cpu model")
        if name:
            return " ".join(name.split())
    for block in blocks:
        implementer, part = block.get("cpu implementer"), block.get("cpu part")
        if implementer and part:
            key = (implementer.lower(), part.lower())
            return _ARM_PARTS.get(key, f"ARM implementer {key[0]} part {key[1]}")
    for block in blocks:
        # Old 32-bit ARM kernels put the SoC name under "Hardware" or "Processor".
        name = block.get("hardware") or block.get("processor")
        if name and not name.isdigit():
            return name
    return UNKNOWN_MODEL


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """Return ``(model, flags)`` from the text of ``/proc/cpuinfo``.

    ``model`` is ``"unknown"`` when the text names no CPU; ``flags`` holds only
    the llama.cpp-relevant flags present on every processor, sorted.
    """
    blocks = _blocks(text)
    common: set[str] | None = None
    for block in blocks:
        raw = block.get("flags") or block.get("features")
        if raw is None:
            continue
        names = {_KEPT[f] for f in raw.split() if f in _KEPT}
        common = names if common is None else common & names
    return _model(blocks), tuple(sorted(common or ()))
