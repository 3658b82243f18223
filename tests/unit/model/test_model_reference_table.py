"""The memory arithmetic reproduces the reference table of serving-facts.md.

Each row is read from a published config.json (tests/fixtures/models/<name>),
never from the model's name: parameters within 1% of the table, weights in GiB
within 2% for bf16/fp8/int4, KV cache per token exact in KiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.model.info import (
    ModelInfo,
    kv_cache_bytes_per_token,
    load_model_info,
    weights_bytes,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
GIB = 2**30


@dataclass(frozen=True)
class Row:
    fixture: str
    layers: int
    params_b: float
    kv_kib: int
    bf16_gib: float
    fp8_gib: float
    int4_gib: float


# serving-facts.md, "Memory fit" (kv_heads 8, head_dim 128 for all).
TABLE = [
    Row("mistral-7b-instruct-v0.3", 32, 7.25, 128, 13.5, 6.8, 3.7),
    Row("mixtral-8x7b-instruct-v0.1", 32, 46.7, 128, 87, 43.5, 24),
    Row("mixtral-8x22b-instruct-v0.1", 56, 141, 224, 263, 131, 72),
    Row("devstral-small-2505", 40, 23.6, 160, 44, 22, 12),
    Row("apertus-70b-instruct-2509", 80, 70.6, 320, 131, 66, 36),
]


@pytest.fixture(params=TABLE, ids=lambda r: r.fixture)
def row_and_model(request: pytest.FixtureRequest) -> tuple[Row, ModelInfo]:
    row: Row = request.param
    return row, load_model_info(FIXTURES / row.fixture)


def test_shape_matches_table(row_and_model: tuple[Row, ModelInfo]) -> None:
    row, model = row_and_model
    assert model.format == "hf"
    assert model.num_layers == row.layers
    assert model.num_kv_heads == 8
    assert model.head_dim == 128


def test_parameters_within_one_percent(row_and_model: tuple[Row, ModelInfo]) -> None:
    row, model = row_and_model
    assert model.parameter_count == pytest.approx(row.params_b * 1e9, rel=0.01)
    # Config-only fixtures: the count is derived and says so.
    assert model.parameter_count_source == "config"
    assert model.stored_weights_bytes is None


def test_kv_cache_per_token_exact(row_and_model: tuple[Row, ModelInfo]) -> None:
    row, model = row_and_model
    assert kv_cache_bytes_per_token(model) == row.kv_kib * 1024
    # fp8 KV cache is half of bf16.
    assert kv_cache_bytes_per_token(model, 1.0) == row.kv_kib * 512


@pytest.mark.parametrize(
    ("precision", "attr"), [("bf16", "bf16_gib"), ("fp8", "fp8_gib"), ("int4", "int4_gib")]
)
def test_weights_within_two_percent(
    row_and_model: tuple[Row, ModelInfo], precision: str, attr: str
) -> None:
    row, model = row_and_model
    gib = weights_bytes(model, precision) / GIB  # type: ignore[arg-type]
    assert gib == pytest.approx(getattr(row, attr), rel=0.02)


def test_exact_counts_pin_the_formula() -> None:
    # Hand-computed from the configs: pins every term of the formula so a
    # change to one term cannot hide inside the 1% tolerance.
    expected = {
        # 2*32768*4096 + 32*(2*4096*4096 + 2*4096*1024 + 3*4096*14336 + 2*4096) + 4096
        "mistral-7b-instruct-v0.3": 7_248_023_552,
        # experts: 8 * 3*4096*14336 per layer, router 4096*8
        "mixtral-8x7b-instruct-v0.1": 46_702_792_704,
        "mixtral-8x22b-instruct-v0.1": 140_630_071_296,
        # head_dim 128 given explicitly (hidden/heads would be 160)
        "devstral-small-2505": 23_572_403_200,
        # non-gated MLP (2 matrices) and q/k norms of head_dim
        "apertus-70b-instruct-2509": 70_599_864_320,
    }
    got = {name: load_model_info(FIXTURES / name).parameter_count for name in expected}
    assert got == expected
