"""What status shows of a model server, parsed from answers recorded from vLLM 0.32 (CPU build)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.deploy.activation import ReleaseCheck, parse_release_unit
from appliance.report.serving import (
    MAX_MODELS,
    parse_metrics,
    parse_models,
    parse_serving,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm"
VLLM = ReleaseCheck(8000, ("/health", "/v1/models"), "gemma-3-270m", 300, "vllm", 2048)


def _read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_recorded_vllm_answers_give_models_context_and_kv_use() -> None:
    busy = parse_serving(
        _read("models-0.32.0-cpu.json"), _read("metrics-0.32.0-cpu-busy.txt"), VLLM
    )
    assert busy.models == ("gemma-3-270m",) and busy.context_length == 2048
    assert busy.requests_running == 3 and busy.requests_waiting == 0
    assert busy.kv_cache_usage == pytest.approx(0.006595822645657723)
    idle = parse_serving(
        _read("models-0.32.0-cpu.json"), _read("metrics-0.32.0-cpu-idle.txt"), VLLM
    )
    assert idle.kv_cache_usage == 0.0 and idle.requests_running == 0


def test_llama_cpp_has_no_metrics_and_its_context_comes_from_the_unit() -> None:
    llama = ReleaseCheck(8080, ("/v1/models",), "demo", 120, "llamacpp", 4096)
    models = json.dumps({"object": "list", "data": [{"id": "demo", "object": "model"}]})
    got = parse_serving(models, _read("metrics-0.32.0-cpu-busy.txt"), llama)
    assert got.models == ("demo",) and got.context_length == 4096
    assert got.kv_cache_usage is None and got.requests_running is None


def test_metrics_of_several_engines_take_the_fullest_cache_and_sum_requests() -> None:
    text = "\n".join([
        '# HELP vllm:kv_cache_usage_perc KV-cache usage',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75',
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0',
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0',
        'vllm:num_requests_waiting{engine="1",model_name="m"} NaN',
    ])  # fmt: skip
    assert parse_metrics(text) == {"kv_cache_usage": 0.75, "running": 5.0}


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[1, 2]", '{"data": "x"}', '{"data": [{"id": 5}]}', "{" * 100_000],
)
def test_odd_model_answers_give_nothing_not_an_error(text: str) -> None:
    assert parse_models(text) == ((), None)


def test_model_answers_are_bounded() -> None:
    many = json.dumps({"data": [{"id": f"m{i}", "max_model_len": True} for i in range(1000)]})
    ids, length = parse_models(many)
    assert len(ids) == MAX_MODELS and length is None  # a bool is not a length


def test_the_unit_names_its_engine_and_context() -> None:
    unit = (
        "[Unit]\nX-Appliance-Engine=vllm\nX-Appliance-Served-Model=m\n[Service]\n"
        "ExecStart=/r/venv/bin/python -m vllm.entrypoints.launchers.api_server.entry --port 8000 "
        "--max-model-len 2048\n"
    )
    check = parse_release_unit(unit)
    assert check is not None and (check.engine, check.context) == ("vllm", 2048)
    odd = parse_release_unit(
        "X-Appliance-Engine=rm -rf\nExecStart=x --port 1 --n_ctx 99999999999\n"
    )
    assert odd is not None and (odd.engine, odd.context) == (None, None)
