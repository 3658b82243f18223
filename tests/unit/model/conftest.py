"""Builders for model files used by the model-reading tests.

Everything is written into ``tmp_path`` by the tests themselves: tiny but valid
GGUF files (via ``gguf.GGUFWriter``), hand-made safetensors files (8-byte header
length + JSON header + zero bytes) and HF directories from the checked-in
config fixtures.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"

# A small llama-shaped model: 2 layers, hidden 64, 4 heads of 16, 2 KV heads.
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV = 2
TINY_FFN = 128
TINY_VOCAB = 32
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

ST_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "F8_E4M3": 1, "U8": 1}


def _tiny_tensors(vocab: int) -> dict[str, tuple[int, ...]]:
    """numpy shapes (outermost first) of a tiny llama."""
    h, kv_dim = TINY_HIDDEN, TINY_KV * (TINY_HIDDEN // TINY_HEADS)
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab, h),
        "output_norm.weight": (h,),
        "output.weight": (vocab, h),
    }
    for i in range(TINY_LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (h,),
            f"blk.{i}.attn_q.weight": (h, h),
            f"blk.{i}.attn_k.weight": (kv_dim, h),
            f"blk.{i}.attn_v.weight": (kv_dim, h),
            f"blk.{i}.attn_output.weight": (h, h),
            f"blk.{i}.ffn_norm.weight": (h,),
            f"blk.{i}.ffn_gate.weight": (TINY_FFN, h),
            f"blk.{i}.ffn_up.weight": (TINY_FFN, h),
            f"blk.{i}.ffn_down.weight": (h, TINY_FFN),
        }
    return shapes


GGUFBuilder = Callable[..., Path]


@pytest.fixture
def make_gguf(tmp_path: Path) -> GGUFBuilder:
    """Write a tiny llama GGUF; keyword arguments vary its metadata.

    ``head_count_kv`` may be an int or a per-layer list; ``omit`` names metadata
    keys to leave out; ``vocab_tokens`` False drops the token list; ``extra``
    adds (key, value) metadata; ``big_endian`` writes a big-endian file.
    2-D weights are stored as Q8_0, 1-D norms as F32, like a real Q8_0 file.
    """
    import gguf

    def build(
        name: str = "tiny.gguf",
        *,
        head_count_kv: int | Sequence[int] = TINY_KV,
        omit: Sequence[str] = (),
        vocab: int = TINY_VOCAB,
        vocab_tokens: bool = True,
        chat_template: str | None = CHAT_TEMPLATE,
        file_type: int | None = int(gguf.LlamaFileType.MOSTLY_Q8_0),
        extra: Sequence[tuple[str, Any]] = (),
        big_endian: bool = False,
    ) -> Path:
        path = tmp_path / name
        endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
        w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
        skip = set(omit)

        def put(key: str, fn: Callable[[], None]) -> None:
            if key not in skip:
                fn()

        put("llama.block_count", lambda: w.add_block_count(TINY_LAYERS))
        put("llama.embedding_length", lambda: w.add_embedding_length(TINY_HIDDEN))
        put("llama.feed_forward_length", lambda: w.add_feed_forward_length(TINY_FFN))
        put("llama.attention.head_count", lambda: w.add_head_count(TINY_HEADS))
        put("llama.attention.head_count_kv", lambda: w.add_head_count_kv(head_count_kv))
        put("llama.attention.key_length", lambda: w.add_key_length(TINY_HIDDEN // TINY_HEADS))
        put("llama.context_length", lambda: w.add_context_length(4096))
        w.add_name("tiny-llama")
        if file_type is not None:
            w.add_file_type(file_type)
        if vocab_tokens:
            w.add_tokenizer_model("llama")
            w.add_token_list([f"tok{i}" for i in range(vocab)])
        if chat_template is not None:
            w.add_chat_template(chat_template)
        for key, value in extra:
            if isinstance(value, str):
                w.add_string(key, value)
            else:
                w.add_uint32(key, value)
        for tname, shape in _tiny_tensors(vocab).items():
            data = np.zeros(shape, dtype=np.float32)
            if len(shape) == 2:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(tname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(tname, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    return build


def raw_gguf(path: Path, metadata: dict[str, str | int], *, version: int = 3) -> Path:
    """A header-only GGUF (no tensors) written byte by byte.

    GGUFWriter always writes general.architecture and refuses odd versions; the
    error tests need files it will not produce.
    """
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, 0, len(metadata)))
    for key, value in metadata.items():
        kb = key.encode()
        out += struct.pack("<Q", len(kb)) + kb
        if isinstance(value, str):
            vb = value.encode()
            out += struct.pack("<IQ", 8, len(vb)) + vb
        else:
            out += struct.pack("<II", 4, value)
    path.write_bytes(bytes(out))
    return path


def write_safetensors(
    path: Path,
    tensors: dict[str, tuple[str, Sequence[int]]],
    *,
    truncate: int = 0,
) -> Path:
    """Write a safetensors file by hand: u64 header length, JSON header, zero data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * ST_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    data = struct.pack("<Q", len(blob)) + blob + b"\0" * offset
    path.write_bytes(data[: len(data) - truncate] if truncate else data)
    return path


@pytest.fixture
def hf_dir(tmp_path: Path) -> Callable[..., Path]:
    """Copy a checked-in config fixture (or write a given config) into a fresh dir."""

    def build(
        fixture: str | None = None,
        *,
        config: dict[str, Any] | None = None,
        name: str = "model",
    ) -> Path:
        d = tmp_path / name
        d.mkdir()
        if fixture is not None:
            shutil.copy(FIXTURES / fixture / "config.json", d / "config.json")
        if config is not None:
            (d / "config.json").write_text(json.dumps(config, indent=2))
        return d

    return build


# A llama-style config matching the safetensors written by small_llama_tensors().
SMALL_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 32,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def small_llama_tensors(dtype: str = "BF16") -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF tensor names and shapes of SMALL_LLAMA_CONFIG."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": (dtype, (32, 64)),
        "model.norm.weight": (dtype, (64,)),
        "lm_head.weight": (dtype, (32, 64)),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (dtype, (64,)),
            p + "post_attention_layernorm.weight": (dtype, (64,)),
            p + "self_attn.q_proj.weight": (dtype, (64, 64)),
            p + "self_attn.k_proj.weight": (dtype, (32, 64)),
            p + "self_attn.v_proj.weight": (dtype, (32, 64)),
            p + "self_attn.o_proj.weight": (dtype, (64, 64)),
            p + "mlp.gate_proj.weight": (dtype, (128, 64)),
            p + "mlp.up_proj.weight": (dtype, (128, 64)),
            p + "mlp.down_proj.weight": (dtype, (64, 128)),
        }
    return out


@pytest.fixture
def make_raw_gguf(tmp_path: Path) -> Callable[..., Path]:
    def build(name: str, metadata: dict[str, str | int], *, version: int = 3) -> Path:
        return raw_gguf(tmp_path / name, metadata, version=version)

    return build


@pytest.fixture
def make_safetensors() -> Callable[..., Path]:
    return write_safetensors


@pytest.fixture
def small_llama_dir(tmp_path: Path) -> Callable[..., Path]:
    """A HF dir with SMALL_LLAMA_CONFIG (overridable) and a real model.safetensors."""

    def build(
        name: str = "small-llama",
        *,
        config: dict[str, Any] | None = None,
        dtype: str = "BF16",
        weights: bool = True,
    ) -> Path:
        d = tmp_path / name
        d.mkdir()
        cfg = dict(SMALL_LLAMA_CONFIG) if config is None else config
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        if weights:
            write_safetensors(d / "model.safetensors", small_llama_tensors(dtype))
        return d

    return build


@pytest.fixture
def small_llama_tensor_map() -> Callable[..., dict[str, tuple[str, tuple[int, ...]]]]:
    return small_llama_tensors


@pytest.fixture
def small_llama_config() -> dict[str, Any]:
    return dict(SMALL_LLAMA_CONFIG)
