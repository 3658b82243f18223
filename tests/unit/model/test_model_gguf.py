"""Reading GGUF headers: metadata mapping into ModelInfo, and agreement of the
stdlib header reader with ``gguf.GGUFReader`` on files written by ``GGUFWriter``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest

from appliance.model.gguf_header import GGUFArray, read_gguf_header
from appliance.model.info import kv_cache_bytes_per_token, load_model_info

# conftest's tiny llama: 2 layers, hidden 64, 4 heads x 16, ffn 128, vocab 32.
H, L, FFN, V = 64, 2, 128, 32
Q8_BLOCK, Q8_BYTES = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]


def tiny_counts(vocab: int = V, kv_dim: int = 32) -> tuple[int, int]:
    """(parameters, stored bytes) of the tiny llama: 2-D tensors Q8_0, 1-D F32."""
    matrices = (
        [vocab * H, vocab * H] + L * [H * H, kv_dim * H, kv_dim * H, H * H] + L * 3 * [FFN * H]
    )
    norms = [H] + L * [H, H]
    params = sum(matrices) + sum(norms)
    stored = sum(n * Q8_BYTES // Q8_BLOCK for n in matrices) + 4 * sum(norms)
    return params, stored


def test_llama_metadata_is_mapped(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf()
    m = load_model_info(path)
    assert (m.format, m.name, m.path) == ("gguf", "tiny.gguf", str(path))
    assert m.model_type == "llama"
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (2, 64, 4)
    assert (m.num_kv_heads, m.head_dim) == (2, 16)
    assert (m.vocab_size, m.max_context, m.num_experts) == (32, 4096, 1)
    assert m.checkpoint_dtype == m.quantization == "Q8_0"
    assert m.has_chat_template is True
    params, stored = tiny_counts()
    assert m.parameter_count == params
    assert m.parameter_count_source == "gguf-tensors"
    assert m.stored_weights_bytes == stored
    assert m.assumptions == ()
    assert kv_cache_bytes_per_token(m) == 2 * 2 * 2 * 16 * 2


def test_per_layer_kv_heads_take_the_maximum(make_gguf: Callable[..., Path]) -> None:
    m = load_model_info(make_gguf(head_count_kv=[1, 2]))
    assert m.num_kv_heads == 2


def test_missing_key_length_derives_head_dim(make_gguf: Callable[..., Path]) -> None:
    m = load_model_info(make_gguf(omit=["llama.attention.key_length"]))
    assert m.head_dim == 64 // 4
    assert any("key_length missing" in a for a in m.assumptions)


def test_optional_keys_default(make_gguf: Callable[..., Path]) -> None:
    m = load_model_info(
        make_gguf(
            omit=["llama.attention.head_count_kv", "llama.context_length"], chat_template=None
        )
    )
    assert m.num_kv_heads == 4  # = head_count
    assert m.max_context is None
    assert m.has_chat_template is False


def test_expert_count_is_read(make_gguf: Callable[..., Path]) -> None:
    m = load_model_info(make_gguf(extra=[("llama.expert_count", 8)]))
    assert m.num_experts == 8


def test_vocab_from_vocab_size_key_then_embedding_shape(make_gguf: Callable[..., Path]) -> None:
    m = load_model_info(make_gguf("a.gguf", vocab_tokens=False, extra=[("llama.vocab_size", 32)]))
    assert m.vocab_size == 32
    # Neither tokens nor vocab_size: token_embd.weight is [hidden, vocab] in GGUF.
    m = load_model_info(make_gguf("b.gguf", vocab_tokens=False, vocab=48))
    assert m.vocab_size == 48


def test_large_token_list_is_counted_not_decoded(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf(vocab=5000)  # above the 4096-item decode limit
    tokens = read_gguf_header(path).metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, GGUFArray)
    assert (tokens.count, tokens.values) == (5000, None)
    assert load_model_info(path).vocab_size == 5000


def test_missing_file_type_reports_dominant_tensor_type(make_gguf: Callable[..., Path]) -> None:
    m = load_model_info(make_gguf(file_type=None))
    assert m.checkpoint_dtype == "Q8_0"
    assert any("general.file_type missing" in a for a in m.assumptions)


@pytest.mark.parametrize(
    ("ftype", "name"),
    [(gguf.LlamaFileType.ALL_F32, "F32"), (gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q4_K_M")],
)
def test_file_type_names(make_gguf: Callable[..., Path], ftype: int, name: str) -> None:
    assert load_model_info(make_gguf(file_type=int(ftype))).quantization == name


def test_big_endian_file_is_read(make_gguf: Callable[..., Path]) -> None:
    little = load_model_info(make_gguf("le.gguf"))
    big = load_model_info(make_gguf("be.gguf", big_endian=True))
    assert read_gguf_header(Path(big.path)).byte_order == ">"
    fields = ("num_layers", "hidden_size", "num_kv_heads", "head_dim", "vocab_size")
    assert [getattr(big, f) for f in fields] == [getattr(little, f) for f in fields]
    assert big.parameter_count == little.parameter_count


def _reader_value(field: Any) -> Any:
    value = field.contents()
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("kv", [2, [1, 2]], ids=["scalar-kv", "per-layer-kv"])
def test_header_reader_agrees_with_gguf_reader(make_gguf: Callable[..., Path], kv: Any) -> None:
    path = make_gguf(head_count_kv=kv)
    ours = read_gguf_header(path)
    ref = gguf.GGUFReader(path)

    ref_md = {k: _reader_value(f) for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    our_md = {k: (v.values if isinstance(v, GGUFArray) else v) for k, v in ours.metadata.items()}
    assert our_md.keys() == ref_md.keys()
    for key, value in ref_md.items():
        if isinstance(value, float):
            assert our_md[key] == pytest.approx(value)
        else:
            assert our_md[key] == value, key

    assert ours.data_offset == ref.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    assert [t.n_elements for t in ours.tensors] == [int(t.n_elements) for t in ref.tensors]
    assert [ours.data_offset + t.offset for t in ours.tensors] == [
        int(t.data_offset) for t in ref.tensors
    ]
    assert [t.ggml_type for t in ours.tensors] == [int(t.tensor_type) for t in ref.tensors]
    m = load_model_info(path)
    assert m.stored_weights_bytes == sum(int(t.n_bytes) for t in ref.tensors)
    assert m.parameter_count == sum(int(t.n_elements) for t in ref.tensors)
