"""What a model is, read from its own files: never from its name.

``load_model_info(path)`` accepts a Hugging Face model directory (``config.json``,
optionally ``model.safetensors.index.json`` and ``*.safetensors``) or a GGUF file
(header parsed by ``appliance.model.gguf_header``, type tables from the ``gguf``
package) and returns a frozen ``ModelInfo``. The memory arithmetic that
the fit report needs (weights per precision, KV cache per token) lives here too,
next to the numbers it uses.

Invariant: every number in ``ModelInfo`` comes from the model's files; where a
number had to be derived under an assumption (e.g. MLP shape of an unknown
architecture) the assumption is listed in ``assumptions``.

Reading never loads tensor data: safetensors files are read up to their JSON
header, GGUF files up to their tensor directory (``appliance.model.gguf_header``).
Importing this module stays cheap: ``gguf`` (and with it numpy) is imported only
when a GGUF file is actually read. Every failure a user can cause (missing path,
unreadable file, malformed config, truncated download, wrong file) is raised as
``ModelFileError`` saying what was expected, what was found and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from appliance.errors import ModelFileError
from appliance.input_files import file_kind, open_input, parse_json, read_input
from appliance.model.gguf_header import GGUFArray, GGUFFormatError, GGUFHeader, read_gguf_header
from appliance.model.hf_config import (
    ConfigError,
    SafetensorsError,
    config_parameter_count,
    parse_config,
    pick_safetensors_files,
    read_safetensors_totals,
)

_T = TypeVar("_T")

ModelFormat = Literal["hf", "gguf"]

# Precisions the fit report reasons about. Bytes per parameter from
# serving-facts.md: bf16/fp16 2, fp8 ~1, int4 ~0.55 including scales.
Precision = Literal["bf16", "fp16", "fp8", "int4"]
BYTES_PER_PARAM: dict[Precision, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.55}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: str
    format: ModelFormat
    name: str  # directory or file name, for display only
    model_type: str  # config.json model_type, or GGUF general.architecture
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int | None  # max_position_embeddings / <arch>.context_length
    num_experts: int  # 1 for dense models
    parameter_count: int
    parameter_count_source: Literal["safetensors-index", "config", "gguf-tensors"]
    # Bytes of the weights as stored: GGUF tensor data, or safetensors index
    # total_size; None when only config.json is present.
    stored_weights_bytes: int | None
    checkpoint_dtype: str  # "bfloat16", "float16", "float32", or GGUF file type e.g. "Q4_K_M"
    # Pre-quantised checkpoint: "awq", "gptq", "fp8", "compressed-tensors", ... or
    # the GGUF file type; None for a full-precision HF checkpoint.
    quantization: str | None
    has_chat_template: bool
    assumptions: tuple[str, ...] = ()


def load_model_info(path: Path) -> ModelInfo:
    """Read a HF directory or GGUF file. Raises ``ModelFileError`` with a clear message."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:  # e.g. permission denied on a parent directory
        raise _io_error(path, exc) from exc
    if not exists:
        raise ModelFileError(
            f"Model path {path} does not exist.",
            hint=(
                "Expected a Hugging Face model directory (containing config.json) or a "
                f".gguf file. Check the path (relative paths start at {os.getcwd()})."
            ),
        )
    if is_dir:
        return _load_hf(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path} is neither a directory nor a regular file: found "
            f"{file_kind(path.stat().st_mode)}.",
            hint="Pass a Hugging Face model directory or a .gguf file.",
        )
    prefix = _read_prefix(path, 16)
    if not prefix:
        raise ModelFileError(
            f"{path} is empty (0 bytes); expected a GGUF file starting with 'GGUF'.",
            hint="The copy or download did not complete: fetch the file again.",
        )
    if prefix.startswith(b"GGUF"):
        return _load_gguf(path)
    raise ModelFileError(
        f"{path} is not a GGUF file: expected it to start with b'GGUF', "
        f"found {prefix!r} (hex {prefix[:8].hex(' ')} ...).",
        hint=_not_gguf_hint(path, prefix),
    )


def weights_bytes(model: ModelInfo, precision: Precision) -> int:
    """Bytes of weights if served at ``precision`` (parameter_count x bytes per parameter)."""
    try:
        per_param = BYTES_PER_PARAM[precision]
    except KeyError:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(BYTES_PER_PARAM)}"
        ) from None
    return round(model.parameter_count * per_param)


def kv_cache_bytes_per_token(model: ModelInfo, dtype_bytes: float = 2.0) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x dtype_bytes."""
    return round(2 * model.num_layers * model.num_kv_heads * model.head_dim * dtype_bytes)


# --- shared helpers -----------------------------------------------------------


def _size_text(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)"


def _io_error(path: Path, exc: OSError) -> ModelFileError:
    if isinstance(exc, PermissionError):
        return ModelFileError(
            f"Permission denied reading {path}.",
            hint=(
                "Make the model files readable by the user running appliance "
                "(e.g. chmod -R a+rX on the model directory), or run as a user who can read them."
            ),
        )
    reason = exc.strerror or str(exc)
    return ModelFileError(
        f"Cannot read {path}: {reason}.",
        hint="Check that the file is on a mounted, readable filesystem and copy it again if needed.",
    )


def _read_prefix(path: Path, n: int) -> bytes:
    fd = _os_worded(open_input, path, "model file", error=ModelFileError)
    try:
        return os.read(fd, n)
    except OSError as exc:
        raise _io_error(path, exc) from exc
    finally:
        os.close(fd)


def _not_gguf_hint(path: Path, prefix: bytes) -> str:
    if path.suffix in {".json", ".safetensors", ".bin", ".pt"} or prefix.lstrip()[:1] == b"{":
        return (
            "This looks like one file of a Hugging Face checkpoint: pass the directory "
            f"that contains it ({path.parent}) instead."
        )
    return (
        "Pass a Hugging Face model directory (with config.json) or a .gguf file. If this "
        "should be a GGUF file, it is damaged or was saved as an HTML error page: download it again."
    )


def _read_json(path: Path, what: str) -> Any:
    """A model's JSON file, read and parsed through the one bounded reader and parser."""
    data = _os_worded(read_input, path, what, limit="model-config", error=ModelFileError)
    try:
        return parse_json(data, str(path), error=ModelFileError)
    except ModelFileError as exc:
        exc.hint = f"Restore {what} from the original model repository (it may be truncated)."
        raise


def _os_worded(read: Callable[..., _T], path: Path, *args: Any, **kwargs: Any) -> _T:
    """``read(path, ...)`` (an ``input_files`` reader) with an operating system error worded
    for model files (permission denied says how to fix the modes)."""
    try:
        return read(path, *args, **kwargs)
    except ModelFileError as exc:
        if isinstance(exc.__cause__, OSError):
            raise _io_error(path, exc.__cause__) from exc.__cause__
        raise


# --- Hugging Face directories ----------------------------------------------------


def _load_hf(directory: Path) -> ModelInfo:
    config_path = directory / "config.json"
    if not os.path.lexists(config_path):
        raise _missing_config_error(directory)
    raw = _read_json(config_path, "config.json")
    if not isinstance(raw, dict):
        raise ModelFileError(
            f"{config_path} must contain a JSON object, found a {type(raw).__name__}.",
            hint="Restore config.json from the original model repository.",
        )
    try:
        cfg = parse_config(raw)
    except ConfigError as exc:
        raise ModelFileError(
            f"{config_path}: {exc}.",
            hint=(
                f"appliance needs {exc.field!r} to size the model; restore config.json from "
                "the original model repository."
            ),
        ) from exc

    assumptions = list(cfg.assumptions)
    index_path = directory / "model.safetensors.index.json"
    index = _read_index(index_path) if os.path.lexists(index_path) else None
    files = pick_safetensors_files(directory, index)
    for weight in files:
        # A FIFO or device named like a shard is refused, never skipped (and never opened).
        if weight.exists() and not weight.is_file():
            raise ModelFileError(
                f"{weight}: expected a safetensors weight file, found "
                f"{file_kind(weight.stat().st_mode)}.",
                hint="Copy the weight files themselves into the model directory.",
            )
    present = [p for p in files if p.is_file()]
    if present and len(present) < len(files):
        # Part of the weights: a partial copy, or HF-cache symlinks whose blobs
        # were not copied. Sizing from the rest would silently undercount.
        missing = [p.name for p in files if not p.is_file()]
        listed = f"{index_path.name} lists" if index is not None else "it has"
        raise ModelFileError(
            f"{directory} is incomplete: {listed} {len(files)} weight files but "
            f"{len(missing)} are missing or broken links ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}).",
            hint="Copy the missing shards from the original download (follow symlinks: cp -L).",
        )

    stored: int | None = None
    dominant_dtype: str | None = None
    params: int | None = None
    source: Literal["safetensors-index", "config"] = "config"
    if present:
        try:
            totals = read_safetensors_totals(present)
        except SafetensorsError as exc:
            raise ModelFileError(
                f"{exc.path} is not a readable safetensors file: {exc}.",
                hint="Copy or download this weight file again.",
            ) from exc
        except OSError as exc:
            raise _io_error(Path(getattr(exc, "filename", None) or directory), exc) from exc
        stored = totals.stored_bytes
        dominant_dtype = totals.dominant_dtype
        if cfg.quant_method is None:
            params, source = totals.parameter_count, "safetensors-index"
        else:
            # Quantised tensors are packed (e.g. eight 4-bit values per int32 in
            # AWQ/GPTQ), so element counts undercount parameters several-fold.
            assumptions.append(
                f"parameter count from config.json: the {cfg.quant_method} checkpoint stores "
                "packed tensors whose element counts are not parameter counts"
            )
    else:
        if index is not None:
            stored = _index_total_size(index, index_path)
        assumptions.append(
            "no *.safetensors files present; parameter count computed from config.json"
        )
    if params is None:
        try:
            params, extra = config_parameter_count(cfg)
        except ConfigError as exc:
            raise ModelFileError(
                f"{config_path}: {exc}.",
                hint="Add the weight files (*.safetensors) next to config.json, or restore "
                "config.json from the original repository.",
            ) from exc
        assumptions.extend(extra)

    checkpoint_dtype = cfg.checkpoint_dtype or dominant_dtype
    if checkpoint_dtype is None:
        checkpoint_dtype = "unknown"
        assumptions.append("config.json has no torch_dtype/dtype and no weights to infer it from")
    elif cfg.checkpoint_dtype is None:
        assumptions.append(f"checkpoint dtype {checkpoint_dtype} inferred from the safetensors")

    return ModelInfo(
        path=str(directory),
        format="hf",
        name=directory.resolve().name or str(directory),
        model_type=cfg.model_type,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        vocab_size=cfg.vocab_size,
        max_context=cfg.max_context,
        num_experts=cfg.num_experts,
        parameter_count=params,
        parameter_count_source=source,
        stored_weights_bytes=stored,
        checkpoint_dtype=checkpoint_dtype,
        quantization=cfg.quant_method,
        has_chat_template=_hf_has_chat_template(directory, assumptions),
        assumptions=tuple(assumptions),
    )


def _missing_config_error(directory: Path) -> ModelFileError:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    except OSError as exc:
        return _io_error(directory, exc)
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
    found = f"it contains: {shown}" if names else "it is empty"
    ggufs = [n for n in names if n.endswith(".gguf")]
    if ggufs:
        hint = f"For a GGUF model pass the file itself, e.g. {directory / ggufs[0]}."
    else:
        hint = (
            "Download the complete model repository (config.json, tokenizer files and "
            "*.safetensors) into this directory."
        )
    return ModelFileError(
        f"{directory} is not a Hugging Face model directory: expected config.json, {found}.",
        hint=hint,
    )


def _read_index(index_path: Path) -> dict[str, Any]:
    index = _read_json(index_path, index_path.name)
    if not isinstance(index, dict):
        raise ModelFileError(
            f"{index_path} must contain a JSON object, found a {type(index).__name__}.",
            hint=f"Restore {index_path.name} from the original model repository.",
        )
    return index


def _index_total_size(index: dict[str, Any], index_path: Path) -> int | None:
    metadata = index.get("metadata")
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    if total is None:
        return None
    # Some exporters write total_size as a float (e.g. 14483464192.0).
    if isinstance(total, float) and total.is_integer():
        total = int(total)
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        raise ModelFileError(
            f"{index_path}: metadata.total_size must be a positive integer, found {total!r}.",
            hint=f"Restore {index_path.name} from the original model repository.",
        )
    return total


def _hf_has_chat_template(directory: Path, assumptions: list[str]) -> bool:
    # transformers >= 4.43 may store the template in its own file.
    if (directory / "chat_template.jinja").is_file() or (
        directory / "chat_template.json"
    ).is_file():
        return True
    tok_path = directory / "tokenizer_config.json"
    if not os.path.lexists(tok_path):
        return False
    try:
        tok = _read_json(tok_path, "tokenizer_config.json")
    except ModelFileError:
        # The chat template only informs the serving recipe; an unreadable
        # tokenizer config must not stop the memory fit.
        assumptions.append("tokenizer_config.json unreadable; assumed no chat template")
        return False
    return isinstance(tok, dict) and bool(tok.get("chat_template"))


# --- GGUF files ----------------------------------------------------------------------


def _load_gguf(path: Path) -> ModelInfo:
    try:
        header = read_gguf_header(path)
    except GGUFFormatError as exc:
        raise _gguf_format_error(path, exc) from exc
    except OSError as exc:
        raise _io_error(path, exc) from exc
    except (ValueError, IndexError, OverflowError) as exc:  # defensive: never a traceback
        raise _gguf_format_error(path, GGUFFormatError("corrupt", str(exc))) from exc

    md = header.metadata
    assumptions: list[str] = []
    if md.get("general.type") == "adapter":
        raise ModelFileError(
            f"{path} is a GGUF LoRA adapter (general.type = 'adapter'), not a model.",
            hint="Pass the base model's GGUF file; adapters are configured separately.",
        )
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _gguf_missing_keys(path, ["general.architecture"], header)

    required = {
        "layers": f"{arch}.block_count",
        "hidden": f"{arch}.embedding_length",
        "heads": f"{arch}.attention.head_count",
    }
    values: dict[str, int] = {}
    missing: list[str] = []
    for name, key in required.items():
        v = _md_int(path, md, key)
        if v is None:
            missing.append(key)
        else:
            values[name] = v
    if missing:
        raise _gguf_missing_keys(path, missing, header)
    layers, hidden, heads = values["layers"], values["hidden"], values["heads"]
    kv_heads = _md_int(path, md, f"{arch}.attention.head_count_kv") or heads
    head_dim = _md_int(path, md, f"{arch}.attention.key_length")
    if head_dim is None:
        head_dim = hidden // heads
        assumptions.append(
            f"{arch}.attention.key_length missing; head_dim = embedding_length / head_count"
        )
    max_context = _md_int(path, md, f"{arch}.context_length")
    experts = _md_int(path, md, f"{arch}.expert_count") or 1
    vocab = _gguf_vocab_size(path, header, arch)

    import gguf  # deferred: ~150 ms and numpy, needed only for GGUF type tables

    stored = 0
    data_end = header.data_offset
    for t in header.tensors:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
        except (ValueError, KeyError) as exc:
            raise ModelFileError(
                f"{path}: tensor {t.name!r} has GGML type id {t.ggml_type}, which the installed "
                "gguf package does not know.",
                hint="The file is corrupt, or newer than this gguf package: upgrade appliance.",
            ) from exc
        n_bytes = t.n_elements * type_size // block
        stored += n_bytes
        data_end = max(data_end, header.data_offset + t.offset + n_bytes)
    if data_end > header.file_size:
        raise ModelFileError(
            f"{path} is truncated: its tensor data should end at byte {data_end:,} but the file "
            f"has {_size_text(header.file_size)}.",
            hint="The copy or download did not complete: fetch the file again and check its sha256.",
        )

    file_type_name = _gguf_file_type(path, md, header, gguf, assumptions)
    split_count = _md_int(path, md, "split.count")
    if split_count is not None and split_count > 1:
        assumptions.append(
            f"file is shard 1 of {split_count}: parameter count and sizes cover this shard only"
        )
    template = md.get("tokenizer.chat_template")

    return ModelInfo(
        path=str(path),
        format="gguf",
        name=path.name,
        model_type=arch,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_context=max_context,
        num_experts=experts,
        parameter_count=sum(t.n_elements for t in header.tensors),
        parameter_count_source="gguf-tensors",
        stored_weights_bytes=stored,
        checkpoint_dtype=file_type_name,
        quantization=file_type_name,
        has_chat_template=isinstance(template, str) and bool(template.strip()),
        assumptions=tuple(assumptions),
    )


def _gguf_format_error(path: Path, exc: GGUFFormatError) -> ModelFileError:
    try:
        size = _size_text(path.stat().st_size)
    except OSError:
        size = "unknown"
    if exc.kind == "magic":
        return ModelFileError(f"{path} is not a GGUF file ({exc}).", hint=_not_gguf_hint(path, b""))
    if exc.kind == "version":
        return ModelFileError(
            f"{path} uses an unsupported format: {exc}.",
            hint="Convert the model again with a current llama.cpp (GGUF v3).",
        )
    return ModelFileError(
        f"{path} is truncated or corrupt: {exc}. File size: {size}.",
        hint="Copy or download the file again and compare its sha256 with the published one.",
    )


def _gguf_missing_keys(path: Path, keys: list[str], header: GGUFHeader) -> ModelFileError:
    present = sorted(k for k in header.metadata if not k.startswith("tokenizer."))
    shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
    return ModelFileError(
        f"{path} lacks required GGUF metadata: {', '.join(keys)}. Keys present: {shown or 'none'}.",
        hint=(
            "Expected a model GGUF as written by llama.cpp's converter; this file may be a "
            "vocabulary-only GGUF or damaged. Convert the model again with a current llama.cpp."
        ),
    )


def _md_int(path: Path, md: dict[str, Any], key: str) -> int | None:
    """An integer metadata value; per-layer arrays give their maximum (None if absent)."""
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, GGUFArray):
        items = value.values
        # Per-layer values (e.g. head_count_kv of models mixing attention types):
        # the largest layer decides the memory need.
        if items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            value = max(int(i) for i in items)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelFileError(
            f"{path}: GGUF metadata {key!r} must be a positive integer, found {value!r}.",
            hint="The file is damaged or was written by a broken converter: convert it again.",
        )
    return value


def _gguf_vocab_size(path: Path, header: GGUFHeader, arch: str) -> int:
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, GGUFArray) and tokens.count > 0:
        return tokens.count
    vocab = _md_int(path, header.metadata, f"{arch}.vocab_size")
    if vocab is not None:
        return vocab
    for t in header.tensors:
        # token_embd is [embedding_length, vocab] in GGUF (innermost dimension first).
        if t.name == "token_embd.weight" and len(t.shape) == 2:
            return t.shape[1]
    raise _gguf_missing_keys(path, ["tokenizer.ggml.tokens", f"{arch}.vocab_size"], header)


def _gguf_file_type(
    path: Path, md: dict[str, Any], header: GGUFHeader, gguf: Any, assumptions: list[str]
) -> str:
    ft = _md_int_or_zero(path, md, "general.file_type")
    if ft is not None:
        try:
            name = str(gguf.LlamaFileType(ft).name)
        except ValueError:
            assumptions.append(f"general.file_type {ft} is unknown to the installed gguf package")
            return f"FILE_TYPE_{ft}"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # Older converters omit file_type: name the tensor type holding most bytes.
    by_type: dict[int, int] = {}
    for t in header.tensors:
        by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.n_elements
    if not by_type:
        assumptions.append("general.file_type missing and the file has no tensors")
        return "unknown"
    dominant = max(by_type, key=lambda k: by_type[k])
    name = str(gguf.GGMLQuantizationType(dominant).name)
    assumptions.append(f"general.file_type missing; reported the dominant tensor type {name}")
    return name


def _md_int_or_zero(path: Path, md: dict[str, Any], key: str) -> int | None:
    # general.file_type 0 (ALL_F32) is valid, unlike the sizes _md_int checks.
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelFileError(
            f"{path}: GGUF metadata {key!r} must be a non-negative integer, found {value!r}.",
            hint="The file is damaged or was written by a broken converter: convert it again.",
        )
    return value
