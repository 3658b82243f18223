"""A two-host serving group on lab hosts: vLLM's CPU build, pipeline parallel 2 across them.

Profile cpu-vllm-group, the inventory naming the group (head ``-1``, worker ``-2``, on
eth0): `appliance deploy --site` lays the release on both, activates the group as one
(the worker's model server waits for the head's rendezvous; the head's API server answers
once both ranks joined), and serves through the gateway on the head. Then, in order:

- the runtime's own report: each member's journal says its rank in a world of 2 and its
  pipeline stage; `appliance status` shows the group serving, the worker joined;
- a worker killed (kill -9 of its vLLM processes) while serving: the gateway answers 503
  ``group_unavailable`` with the group watch's reason, `status` shows the group degraded;
  the worker's unit restarts it (``Restart=``), the head's watch restarts the head (a
  pipeline-parallel head whose worker died hangs with /health 200), the group re-forms
  and serves again through the gateway;
- release 2 activated on the whole group, then `appliance rollback` takes the whole
  group back to release 1, both members switched, the group serving.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.deploy import transport
from appliance.deploy.gateway_layer import GATEWAY_CERT
from appliance.lab import Lab, dev_site
from appliance.plan.inventory import load_inventory
from tests.integration import helpers
from tests.integration.helpers import VLLM_MODEL, appliance

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]
PROFILE = "cpu-vllm-group"
GROUP = "lab-pp2"


def _group_inventory(lab: Lab, path: Path) -> Path:
    """The lab's inventory with both hosts model servers (the head also the gateway) and the
    group named: head first, on eth0."""
    data = yaml.safe_load(lab.inventory.read_text())
    head, worker = data["hosts"]
    head["roles"] = ["model-server", "gateway"]
    worker["roles"] = ["model-server"]
    data["groups"] = [{"name": GROUP, "hosts": [head["name"], worker["name"]], "interface": "eth0"}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _deploy(work: Path, inventory: Path, bundle: str, site: dev_site.DevSite) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(appliance(
        "deploy", "--profile", PROFILE, "--bundle", bundle, "--trust", "keys/root.json",
        "--inventory", inventory, "--site", site.site_file, "--yes", "--json",
        cwd=work, timeout=2400,
    ).stdout)  # fmt: skip
    assert [h["status"] for h in result["hosts"]] == ["converged", "converged"], result
    return result


def _status(work: Path, inventory: Path, expect: int = 0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        appliance("status", "--inventory", inventory, "--json", cwd=work, expect=expect).stdout
    )
    return rows


class _Client:
    def __init__(self, url: str, cafile: Path, token: str) -> None:
        self.url, self.cafile, self.token = url, cafile, token

    def ask(self, timeout: float = 120) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/completions", verify=str(self.cafile), timeout=timeout,
            headers={"Authorization": f"Bearer {self.token}"},
            json={"model": VLLM_MODEL, "prompt": "The capital of France is", "max_tokens": 8,
                  "temperature": 0},
        )  # fmt: skip

    def wait(self, status: int, within: float) -> httpx.Response:
        """Ask until the gateway answers ``status`` (the last answer), for ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            try:
                answer = self.ask(timeout=20)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == status:
                return answer
            assert time.monotonic() < deadline, f"no {status} within {within} s; last: " + (
                "no answer" if answer is None else f"{answer.status_code} {answer.text[:300]}"
            )
            time.sleep(2)


def test_two_host_group_forms_serves_recovers_from_a_worker_kill_and_rolls_back(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    work = tmp_path
    helpers.build_demo_bundles(work, ())
    first = helpers.build_vllm_bundle(work, 5)
    second = helpers.build_vllm_bundle(work, 6)
    with make_lab("group", 2) as lab:
        head, worker = lab.hosts
        inventory = _group_inventory(lab, work / "group.yml")
        head_entry = load_inventory(inventory).hosts[0]
        site = dev_site.prepare(work / "site", lab, VLLM_MODEL)
        with dev_site.serve(site) as running:
            # --- formation: both members on release 5, as one group -----------------------
            started = time.monotonic()
            deployed = _deploy(work, inventory, first, site)
            formed_s = time.monotonic() - started
            print(f"group deploy (install + formation): {formed_s:.0f} s")
            by_host = {h["host"]: h for h in deployed["hosts"]}
            assert "as a worker of" in by_host[worker.name]["message"]
            # The runtime's own report: each rank in a world of two, one pipeline stage each.
            for host, rank in ((head, 0), (worker, 1)):
                journal = helpers.on(lab, host, "journalctl -u appliance-model -o cat --no-pager")
                assert f"rank {rank} in world size 2 is assigned as" in journal, journal[-3000:]
                assert f"PP rank {rank}" in journal
            rows = {r["host"]: r for r in _status(work, inventory)}
            assert rows[head.name]["group"]["state"] == "serving", rows
            assert rows[head.name]["group"]["joined"] == [worker.name]
            assert rows[worker.name]["group"]["role"] == "worker"
            assert rows[worker.name]["group"]["state"] == "serving"

            token = dev_site.token(running, site)
            cafile = work / "gateway.crt"
            cafile.write_text(transport.read_file(head_entry, GATEWAY_CERT))
            client = _Client(f"https://{head.address}:8443", cafile, token)
            answer = client.ask()
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["text"].strip()

            # --- a worker killed while serving -------------------------------------------
            helpers.on(
                lab, worker, "pkill -9 -f 'VLLM::Worke[r]'; pkill -9 -f -- '--headles[s]'; true"
            )
            refused = client.wait(503, within=60)
            error = refused.json()["error"]
            assert error["code"] == "group_unavailable", error
            assert worker.name in error["message"], error
            # Mid-recovery: the head is degraded, restarting or re-forming (status's exit code
            # then depends on which moment it catches: any state but serving is asserted).
            done = subprocess.run([sys.executable, "-m", "appliance", "status", "--inventory",
                                   str(inventory), "--json"], cwd=work, capture_output=True,
                                  text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
            assert done.returncode in (0, 5), done.stderr[-2000:]
            rows = {r["host"]: r for r in json.loads(done.stdout)}
            state = (rows[head.name]["group"] or {}).get("state")
            assert state in ("degraded", "starting", "down"), rows
            recovered_at = time.monotonic()
            client.wait(200, within=600)
            print(f"group served again {time.monotonic() - recovered_at:.0f} s after the 503")
            restarts = helpers.on(
                lab, worker, "systemctl show -p NRestarts --value appliance-model"
            )
            assert int(restarts) >= 1  # the worker's unit brought it back

            # --- release 6 on the whole group, then the group rolled back to 5 -----------
            _deploy(work, inventory, second, site)
            for host in (head, worker):
                assert (
                    helpers.on(lab, host, "readlink /opt/appliance/current").strip().endswith("/6")
                )
            rolled = appliance(
                "rollback", "--inventory", inventory, "--yes", cwd=work, timeout=1800
            )
            assert f"group {GROUP}: group rolled back from 6 to 5" in rolled.stdout, rolled.stdout
            for host in (head, worker):
                assert (
                    helpers.on(lab, host, "readlink /opt/appliance/current").strip().endswith("/5")
                )
            rows = {r["host"]: r for r in _status(work, inventory)}
            assert rows[head.name]["current"] == rows[worker.name]["current"] == 5
            assert rows[head.name]["group"]["state"] == "serving"
