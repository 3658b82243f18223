"""What a host's model server serves right now: its models, context length and KV-cache use.

Read on the host's loopback over SSH (the model server listens nowhere else): the
OpenAI-compatible ``/v1/models`` (both engines) and, for vLLM, its Prometheus
``/metrics`` (``vllm:kv_cache_usage_perc``, ``vllm:num_requests_running``,
``vllm:num_requests_waiting``). Pure parsers over the text, bounded (1 MiB per
answer, 64 models, 20,000 metric lines); an answer that is not what the engine
writes gives ``None`` fields, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from appliance.deploy import transport
from appliance.deploy.activation import ReleaseCheck
from appliance.plan.inventory import HostEntry

MAX_ANSWER = 1 << 20
MAX_MODELS = 64
MAX_METRIC_LINES = 20_000
_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$")
SEPARATOR = "@@appliance-metrics@@"


@dataclass(frozen=True, slots=True)
class Serving:
    models: tuple[str, ...]  # ids from /v1/models
    context_length: int | None  # the served model's max_model_len (vLLM) or the unit's n_ctx
    kv_cache_usage: float | None = None  # 0..1, vLLM only (the highest of its engines)
    requests_running: int | None = None
    requests_waiting: int | None = None


def parse_models(text: str) -> tuple[tuple[str, ...], int | None]:
    """Model ids and the first model's ``max_model_len`` from a ``/v1/models`` answer."""
    try:
        data = json.loads(text[:MAX_ANSWER]).get("data")
    except (ValueError, AttributeError):
        return (), None
    if not isinstance(data, list):
        return (), None
    models = [m for m in data[:MAX_MODELS] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    length = models[0].get("max_model_len") if models else None
    ids = tuple(str(m["id"])[:256] for m in models)
    return ids, length if isinstance(length, int) and not isinstance(length, bool) else None


def parse_metrics(text: str) -> dict[str, float]:
    """vLLM's gauges: KV-cache use as the highest of its engines, requests summed."""
    found: dict[str, list[float]] = {}
    for line in text[:MAX_ANSWER].splitlines()[:MAX_METRIC_LINES]:
        match = _METRIC.match(line.strip())
        if match is None or match[2] == "NaN":
            continue
        try:
            found.setdefault(match[1], []).append(float(match[2]))
        except ValueError:
            continue
    result: dict[str, float] = {}
    if found.get("vllm:kv_cache_usage_perc"):
        result["kv_cache_usage"] = max(found["vllm:kv_cache_usage_perc"])
    for name, key in (("vllm:num_requests_running", "running"),
                      ("vllm:num_requests_waiting", "waiting")):  # fmt: skip
        if found.get(name):
            result[key] = sum(found[name])
    return result


def parse_serving(models_text: str, metrics_text: str, check: ReleaseCheck) -> Serving:
    ids, length = parse_models(models_text)
    metrics = parse_metrics(metrics_text) if check.engine == "vllm" else {}
    running, waiting = metrics.get("running"), metrics.get("waiting")
    return Serving(
        models=ids,
        context_length=length if length is not None else check.context,
        kv_cache_usage=metrics.get("kv_cache_usage"),
        requests_running=int(running) if running is not None else None,
        requests_waiting=int(waiting) if waiting is not None else None,
    )


def serving(host: HostEntry, check: ReleaseCheck) -> Serving:
    """Ask the model server on ``host``'s loopback (one SSH call, 5 s per answer)."""
    paths = ["/v1/models"] + (["/metrics"] if check.engine == "vllm" else [])
    script = (
        "python3 - <<'APPLIANCE_SERVING'\n"
        "import sys, urllib.request\n"
        f"for i, path in enumerate({paths!r}):\n"
        "    if i:\n"
        f"        print({SEPARATOR!r})\n"
        "    try:\n"
        f"        with urllib.request.urlopen('http://127.0.0.1:{check.port}' + path, timeout=5) as r:\n"
        f"            sys.stdout.write(r.read({MAX_ANSWER}).decode('utf-8', 'replace'))\n"
        "    except Exception:\n"
        "        pass\n"
        "    print()\n"
        "APPLIANCE_SERVING\n"
    )
    text = transport.run(host, script, timeout=30)
    models_text, _, metrics_text = text.partition(SEPARATOR)
    return parse_serving(models_text, metrics_text, check)
