"""Two hosts in one deploy: one fails, the other is not disturbed; the summary names both."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from appliance.lab.state import Lab
from tests.integration.helpers import appliance, build_demo_bundles, chat, on

pytestmark = pytest.mark.integration


def test_one_failing_host_does_not_disturb_the_other(
    make_lab: Callable[[str, int], AbstractContextManager[Lab]], tmp_path: Path
) -> None:
    build_demo_bundles(tmp_path)
    with make_lab("many", 2) as lab:
        good, bad = lab.hosts
        inventory = tmp_path / "two.yml"
        inventory.write_text(
            lab.inventory.read_text().replace("roles: [gateway, keycloak]", "roles: [model-server]")
        )
        # Sabotage one host: where the releases directory must go, there is a file.
        on(lab, bad, "mkdir -p /opt/appliance && touch /opt/appliance/releases")
        result = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", "demo-1", "--trust", "keys/root.json",
                           "--inventory", inventory, "--yes", "--json", cwd=tmp_path, expect=5)  # fmt: skip
        hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
        assert hosts[good.name]["status"] == "converged", hosts
        assert hosts[bad.name]["status"] == "failed" and hosts[bad.name]["message"], hosts
        assert chat(lab, good)["usage"]["completion_tokens"] > 0  # type: ignore[index]
        assert on(lab, bad, "test -e /opt/appliance/current && echo yes || echo no").strip() == "no"
        # The failure is on record on the failed host too, and no lock is left behind on either.
        record = json.loads(on(lab, bad, "tail -n 1 /var/log/appliance/audit.jsonl"))
        assert record["result"] == "failed"
        for host in (good, bad):
            assert (
                on(lab, host, "ls /var/lib/appliance/deploy.lock 2>/dev/null; true").strip() == ""
            )
