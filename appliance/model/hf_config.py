"""Hugging Face checkpoint facts: ``config.json`` fields, safetensors headers, and
the parameter count derived from the config when no weights are present.

Pure functions over already-read data, plus the safetensors readers:
``read_safetensors_index`` (one file's tensor entries) and ``read_safetensors_totals``
(sums over files) read only the 8-byte length and the JSON header (bounded), never the
tensor bytes; ``tensors_all_zero`` reads the bytes of the tensors it is given, by
offset, and stops at the first non-zero value (a LoRA adapter's ``lora_B``: the caller
bounds the file's size). Files are opened through ``input_files.open_input`` (regular
files only, never blocking) and headers parsed with the bounded
``input_files.parse_json``. Errors are raised as ``ConfigError`` / ``SafetensorsError``
carrying expected/found text; ``appliance.model.info`` turns them into ``ModelFileError``.

Invariant: every value either comes from the files or is listed in
``assumptions`` with the reason it had to be assumed.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from appliance.errors import ModelFileError
from appliance.input_files import open_input, parse_json

# MLP families. Gated (SwiGLU/GeGLU) MLPs have gate, up and down projections;
# Apertus uses xIELU on a plain up/down MLP (two matrices).
_GATED_PREFIXES = ("llama", "mistral", "ministral", "mixtral", "qwen", "gemma")
_NON_GATED = frozenset({"apertus"})

# Values the transformers config class fills in when config.json omits them.
# Gemma 3 multimodal configs routinely leave these out of ``text_config``.
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"vocab_size": 262_208, "max_position_embeddings": 131_072},
}
# tie_word_embeddings defaults to True in Gemma's config classes, False in the
# Llama/Mistral/Qwen ones.
_TIED_BY_DEFAULT_PREFIXES = ("gemma",)

# safetensors dtype -> bytes per element; also the checkpoint dtype name we report.
_ST_DTYPE_BYTES: dict[str, float] = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
_ST_DTYPE_NAMES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
# Upper bound from the safetensors spec: headers are at most 100 MB.
_ST_MAX_HEADER = 100_000_000


class ConfigError(ModelFileError):
    """config.json lacks a field or has a wrong value. ``field`` names it."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class SafetensorsError(ModelFileError):
    """A safetensors file has a corrupt or truncated header. ``path`` names it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(detail)
        self.path = path


@dataclass(frozen=True, slots=True)
class HFConfig:
    model_type: str  # top-level model_type (what the serving engine dispatches on)
    text_model_type: str  # model_type of the text model (decides the MLP shape)
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int | None
    moe_intermediate_size: int | None
    max_context: int | None
    num_experts: int
    tie_word_embeddings: bool
    qk_norm: bool
    attention_bias: bool
    checkpoint_dtype: str | None
    quant_method: str | None
    is_multimodal: bool
    assumptions: tuple[str, ...]


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _positive_int(cfg: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    if key not in cfg or cfg[key] is None:
        if required:
            raise ConfigError(key, f"required field {key!r} is missing")
        return None
    value = cfg[key]
    # bool is an int subclass: true/false is never a size.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"{key!r} must be a positive integer, found {_describe(value)}")
    return value


def _bool(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(key, f"{key!r} must be true or false, found {_describe(value)}")
    return value


def _merged_text_config(raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Flatten a multimodal config: text_config values win over top-level ones.

    Top-level keys still supply what text_config leaves out (torch_dtype,
    quantization_config, sometimes vocab_size / tie_word_embeddings).
    """
    text = raw.get("text_config")
    if text is None:
        return dict(raw), False
    if not isinstance(text, dict):
        raise ConfigError(
            "text_config", f"'text_config' must be an object, found {_describe(text)}"
        )
    merged = {k: v for k, v in raw.items() if k != "text_config"}
    merged.update(text)
    return merged, True


def parse_config(raw: Mapping[str, Any]) -> HFConfig:
    """Extract the fields the memory arithmetic needs from a parsed config.json."""
    assumptions: list[str] = []
    top_type = raw.get("model_type")
    if top_type is not None and not isinstance(top_type, str):
        raise ConfigError(
            "model_type", f"'model_type' must be a string, found {_describe(top_type)}"
        )
    cfg, multimodal = _merged_text_config(raw)
    text_type = cfg.get("model_type") if multimodal else top_type
    if not isinstance(text_type, str):
        text_type = top_type
    if top_type is None:
        assumptions.append("config.json has no model_type; architecture unknown")
    model_type = top_type or "unknown"
    text_model_type = text_type or "unknown"

    for key, value in _CLASS_DEFAULTS.get(text_model_type, {}).items():
        if key not in cfg:
            cfg[key] = value
            assumptions.append(
                f"{key} not in config.json; used the {text_model_type} default {value}"
            )

    layers = _positive_int(cfg, "num_hidden_layers", required=True)
    hidden = _positive_int(cfg, "hidden_size", required=True)
    heads = _positive_int(cfg, "num_attention_heads", required=True)
    vocab = _positive_int(cfg, "vocab_size", required=True)
    assert layers is not None and hidden is not None and heads is not None and vocab is not None
    kv_heads = _positive_int(cfg, "num_key_value_heads", required=False) or heads
    head_dim = _positive_int(cfg, "head_dim", required=False)
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                "head_dim",
                f"'head_dim' is missing and hidden_size {hidden} is not divisible by "
                f"num_attention_heads {heads}",
            )
        head_dim = hidden // heads
    if heads % kv_heads:
        raise ConfigError(
            "num_key_value_heads",
            f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}",
        )

    experts = 1
    for key in ("num_local_experts", "num_experts"):
        n = _positive_int(cfg, key, required=False)
        if n is not None:
            experts = n
            break

    tied_default = text_model_type.startswith(_TIED_BY_DEFAULT_PREFIXES)
    if "tie_word_embeddings" not in cfg:
        assumptions.append(
            f"tie_word_embeddings not in config.json; assumed {str(tied_default).lower()} "
            f"(transformers default for {text_model_type})"
        )

    dtype = cfg.get("torch_dtype", cfg.get("dtype"))
    if dtype is not None and not isinstance(dtype, str):
        raise ConfigError(
            "torch_dtype", f"'torch_dtype' must be a string, found {_describe(dtype)}"
        )

    quant_method: str | None = None
    qcfg = cfg.get("quantization_config")
    if qcfg is not None:
        if not isinstance(qcfg, dict):
            raise ConfigError(
                "quantization_config",
                f"'quantization_config' must be an object, found {_describe(qcfg)}",
            )
        method = qcfg.get("quant_method")
        if not isinstance(method, str) or not method:
            raise ConfigError(
                "quantization_config.quant_method",
                f"'quantization_config.quant_method' must be a non-empty string, "
                f"found {_describe(method)}",
            )
        quant_method = method.lower()

    return HFConfig(
        model_type=model_type,
        text_model_type=text_model_type,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=_positive_int(cfg, "intermediate_size", required=False),
        moe_intermediate_size=_positive_int(cfg, "moe_intermediate_size", required=False),
        max_context=_positive_int(cfg, "max_position_embeddings", required=False),
        num_experts=experts,
        tie_word_embeddings=_bool(cfg, "tie_word_embeddings", tied_default),
        qk_norm=_bool(cfg, "qk_norm", False),
        attention_bias=_bool(cfg, "attention_bias", text_model_type == "qwen2"),
        checkpoint_dtype=dtype,
        quant_method=quant_method,
        is_multimodal=multimodal,
        assumptions=tuple(assumptions),
    )


def config_parameter_count(cfg: HFConfig) -> tuple[int, tuple[str, ...]]:
    """Parameters of the text decoder computed from its shape.

    Counts embeddings (and an untied LM head), attention projections, MLP (per
    expert, plus the router for MoE) and RMSNorm weights. Returns the count and
    the assumptions made. Raises ``ConfigError`` if intermediate_size is missing.
    """
    assumptions: list[str] = []
    h, hd = cfg.hidden_size, cfg.head_dim
    inter = cfg.intermediate_size
    if cfg.num_experts > 1 and cfg.moe_intermediate_size is not None:
        inter = cfg.moe_intermediate_size
    if inter is None:
        raise ConfigError(
            "intermediate_size",
            "required field 'intermediate_size' is missing (needed to count parameters "
            "when no *.safetensors weights are present)",
        )

    t = cfg.text_model_type
    if t in _NON_GATED:
        mlp_matrices = 2
    elif t.startswith(_GATED_PREFIXES):
        mlp_matrices = 3
    else:
        mlp_matrices = 3
        assumptions.append(
            f"unknown model_type {t!r}: assumed a gated MLP (gate, up, down) like Llama"
        )

    embeddings = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    q_o = 2 * h * cfg.num_attention_heads * hd
    k_v = 2 * h * cfg.num_kv_heads * hd
    bias = (cfg.num_attention_heads + 2 * cfg.num_kv_heads) * hd if cfg.attention_bias else 0
    mlp = mlp_matrices * h * inter * cfg.num_experts
    router = h * cfg.num_experts if cfg.num_experts > 1 else 0
    norms = 2 * h + (2 * hd if cfg.qk_norm else 0)
    per_layer = q_o + k_v + bias + mlp + router + norms
    total = embeddings + cfg.num_layers * per_layer + h  # + final norm
    if cfg.is_multimodal:
        assumptions.append(
            "parameters counted from text_config only; the vision encoder and projector "
            "are not included"
        )
    return total, tuple(assumptions)


@dataclass(frozen=True, slots=True)
class SafetensorsTotals:
    parameter_count: int
    stored_bytes: int
    dominant_dtype: str | None  # checkpoint dtype name holding the most bytes


def pick_safetensors_files(directory: Path, index: Mapping[str, Any] | None) -> list[Path]:
    """The weight files that make up the checkpoint, without duplicates.

    Mistral repositories ship ``consolidated.safetensors`` (mistral-format) next
    to the HF shards holding the same weights; counting both doubles the model.
    The index's weight_map is authoritative when present.
    """
    if index is not None:
        weight_map = index.get("weight_map")
        if isinstance(weight_map, dict) and weight_map:
            names = sorted({str(v) for v in weight_map.values()})
            return [directory / n for n in names]
    # Broken symlinks stay in the list so the caller reports them as missing, and
    # FIFOs, devices and directories so that it refuses them (never skips them).
    files = sorted(directory.glob("*.safetensors"))
    hf_files = [p for p in files if not p.name.startswith("consolidated")]
    return hf_files or files


def read_safetensors_totals(files: Sequence[Path]) -> SafetensorsTotals:
    """Sum element counts and stored bytes over the headers of ``files``.

    Reads only each file's 8-byte header length and JSON header. Raises
    ``SafetensorsError`` for a corrupt/truncated file; ``OSError`` passes through.
    """
    params = 0
    stored = 0
    by_dtype: dict[str, int] = {}
    for path in files:
        p, s, d = _read_one_header(path)
        params += p
        stored += s
        for k, v in d.items():
            by_dtype[k] = by_dtype.get(k, 0) + v
    dominant = max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else None
    return SafetensorsTotals(
        parameter_count=params,
        stored_bytes=stored,
        dominant_dtype=_ST_DTYPE_NAMES.get(dominant, dominant.lower()) if dominant else None,
    )


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a safetensors header; ``begin``/``end`` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class SafetensorsIndex:
    """A safetensors file's header, checked against the file's size (no tensor bytes read)."""

    path: Path
    file_size: int
    tensors: tuple[TensorEntry, ...]


def read_safetensors_index(path: Path, *, max_header: int = _ST_MAX_HEADER) -> SafetensorsIndex:
    """The tensors a safetensors file declares, every entry checked (dtype size x shape equals
    its byte span, data inside the file). Reads only the 8-byte length and the JSON header
    (at most ``max_header`` bytes). A FIFO or device is refused without being opened for a
    blocking read. Raises ``SafetensorsError`` (corrupt, truncated) or ``ModelFileError``
    (not a regular file, unreadable)."""
    # Regular files only, opened without blocking: a FIFO or device is never read.
    fd = open_input(path, "safetensors file", error=ModelFileError)
    with open(fd, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(
                path, f"file is {size} bytes, shorter than the 8-byte header length"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > max_header or 8 + header_len > size:
            raise SafetensorsError(
                path,
                f"header length field says {header_len} bytes but the file has {size} bytes "
                f"and headers are at most {max_header} bytes "
                "(truncated download, or not a safetensors file)",
            )
        raw = fh.read(header_len)
    try:
        header = parse_json(raw, "header", error=ModelFileError)
    except ModelFileError as exc:
        detail = exc.message.removeprefix("header: ")
        raise SafetensorsError(path, f"header is not valid JSON ({detail})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(path, "header is not a JSON object")

    base = 8 + header_len
    entries: list[TensorEntry] = []
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(
                path, f"tensor {name!r} entry lacks dtype/shape/data_offsets"
            ) from exc
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise SafetensorsError(path, f"tensor {name!r} has a negative shape or offset")
        n = prod(shape)
        nbytes = end - begin
        expected = _ST_DTYPE_BYTES.get(str(dtype))
        if expected is not None and nbytes != int(n * expected):
            raise SafetensorsError(
                path,
                f"tensor {name!r} is {dtype} {shape} ({int(n * expected)} bytes) but its "
                f"data_offsets span {nbytes} bytes",
            )
        data_end = max(data_end, end)
        entries.append(TensorEntry(name, str(dtype), tuple(shape), base + begin, base + end))
    if base + data_end > size:
        raise SafetensorsError(
            path,
            f"tensor data should end at byte {base + data_end} but the file has "
            f"{size} bytes (truncated download?)",
        )
    return SafetensorsIndex(path=path, file_size=size, tensors=tuple(entries))


def _read_one_header(path: Path) -> tuple[int, int, dict[str, int]]:
    index = read_safetensors_index(path)
    params = 0
    stored = 0
    by_dtype: dict[str, int] = {}
    for t in index.tensors:
        nbytes = t.end - t.begin
        params += prod(t.shape)
        stored += nbytes
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + nbytes
    return params, stored, by_dtype


# Floating-point dtypes: element size in bytes. A value is zero when every byte but the
# sign bit (the top bit of the last, most significant, little-endian byte) is zero.
_ST_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_CLEAR_SIGN = bytes(b & 0x7F for b in range(256))
_ZERO_CHUNK = 1 << 20


def tensors_all_zero(index: SafetensorsIndex, tensors: Sequence[TensorEntry]) -> bool:
    """Whether every value of ``tensors`` (floating point, entries of ``index``) is zero
    (+0.0 or -0.0). Reads their bytes by offset in 1 MiB chunks and stops at the first
    non-zero value, so a trained tensor costs one chunk; the caller bounds the file's size.
    Raises ``ValueError`` for a non-float dtype, ``ModelFileError`` if the file changed."""
    for t in tensors:
        if t.dtype not in _ST_FLOAT_BYTES:
            raise ValueError(f"tensor {t.name!r} is {t.dtype}, not a floating-point tensor")
    fd = open_input(index.path, "safetensors file", error=ModelFileError)
    with open(fd, "rb") as fh:
        if fh.seek(0, 2) != index.file_size:
            raise ModelFileError(f"{index.path} changed while it was being read")
        for t in tensors:
            width = _ST_FLOAT_BYTES[t.dtype]
            fh.seek(t.begin)
            left = t.end - t.begin
            while left > 0:
                # Whole elements per chunk, so the sign byte's position stays aligned.
                chunk = fh.read(min(left, _ZERO_CHUNK - _ZERO_CHUNK % width))
                if not chunk:
                    raise ModelFileError(f"{index.path} ended early while it was being read")
                left -= len(chunk)
                if chunk.count(0) == len(chunk):
                    continue
                signs = chunk[width - 1 :: width].translate(_CLEAR_SIGN)
                rest = b"".join(chunk[i::width] for i in range(width - 1))
                if signs.count(0) != len(signs) or rest.count(0) != len(rest):
                    return False
    return True
