"""Each screen on the in-memory core: what it shows, what it refuses, its dialogs, at 80x24."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, OptionList, ProgressBar, Static

from appliance.errors import ThresholdError
from tests.tui.conftest import (
    MISTRAL,
    ROOT,
    AppFactory,
    screen_text,
    settle,
    walk_to,
)
from tests.tui.fake_backend import FakeBackend
from tui.screens.deploy import CANCELLED
from tui.screens.dialogs import ConfirmDialog, ErrorDialog
from tui.screens.help import HelpScreen

pytestmark = [pytest.mark.tui, pytest.mark.anyio]
FACTS = ROOT / "tests/fixtures/facts"


# --- Hardware ----------------------------------------------------------------------------------


async def test_hardware_states_the_missing_gpu_plainly(make_app: AppFactory) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Hardware")
        text = screen_text(pilot)
        assert "cpu-avx2-01" in text and "AMD EPYC 7313P 16-Core Processor" in text
        assert "flags for llama.cpp: avx avx2 f16c fma sse3 ssse3" in text
        assert "!! NO USABLE GPU: No NVIDIA GPU on the PCI bus" in text
        assert "Disk  /opt/appliance:" in text


async def test_hardware_lists_every_gpu_and_the_topology(make_app: AppFactory) -> None:
    async with make_app(facts=FACTS / "h100x8.json").run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Hardware")
        gpus, topology = pilot.app.screen.query(DataTable)
        assert gpus.row_count == 8 and topology.row_count == 8
        assert "NVIDIA H100 80GB HBM3" in screen_text(pilot)
        assert "NV" in [str(c) for c in topology.get_row_at(0)]
        assert "GPU   OK " in screen_text(pilot)


async def test_hardware_explains_an_nvml_failure(make_app: AppFactory) -> None:
    async with make_app(facts=FACTS / "nvml-mismatch.json").run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Hardware")
        assert "!! NO USABLE GPU:" in screen_text(pilot)
        assert "driver" in screen_text(pilot).lower()


async def test_a_detection_error_is_a_dialog_and_blocks_next(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.fail["detect"] = ThresholdError("stand-in", hint="a hint")
    async with make_app().run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(pilot.app.screen, ErrorDialog)
        await pilot.press("enter")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert pilot.app.screen.STEP == "Hardware"  # type: ignore[attr-defined]


# --- Profile -----------------------------------------------------------------------------------


async def test_profile_shows_recommendation_evidence_rejections_and_fit(
    make_app: AppFactory,
) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        text = screen_text(pilot)
        assert "Recommended for this hardware: cpu-llamacpp" in text
        assert "Profile: cpu-llamacpp (chosen automatically)" in text
        assert "!! NO USABLE GPU: cpu-avx2-01" in text
        assert "Evidence (tests/fixtures/facts/cpu-avx2.json)" in text
        for rejected in ("h100-cluster", "a100-single", "rtx4090"):
            assert f"REJECTED {rejected}" in text
        assert text.count("cpu-avx2-01: no usable GPU (no-nvidia-device)") == 3
        assert "CHOSEN   cpu-llamacpp (preference 0)" in text
        assert "Model gemma-3-270m-q4_k_m.gguf (gguf, gemma3)" in text
        assert "verdict: FITS" in text


async def test_overriding_a_profile_that_does_not_fit_needs_confirmation_and_forces(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    app = make_app(model=Path(MISTRAL))  # an HF directory: llama.cpp cannot serve it
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        assert "verdict: DOES NOT FIT" in screen_text(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert "the model does not fit: llama.cpp serves GGUF files" in screen_text(pilot)
        await pilot.press("n")  # the safe answer: stay
        await settle(pilot)
        assert app.screen.STEP == "Profile" and app.session.force is False  # type: ignore[attr-defined]
        await pilot.press("ctrl+n")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert app.screen.STEP == "Bundle" and app.session.force is True  # type: ignore[attr-defined]
        await walk_to(pilot, "Done")
    assert fake.called("review") == [{"profile": "cpu-llamacpp", "force": True, "site": None}]
    assert fake.called("deploy") == [{"profile": "cpu-llamacpp", "force": True, "site": None}]


async def test_choosing_another_profile_replans_and_a_mismatch_is_confirmed(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        choices = app.screen.query_one("#candidates")
        choices.focus()
        await pilot.press("down", "down", "down", "enter")  # auto, h100, a100, rtx4090
        await settle(pilot)
        assert fake.called("plan")[-1] == {"requested": "rtx4090"}
        text = screen_text(pilot)
        assert "Profile: rtx4090 (chosen by you)" in text
        assert "Recommended for this hardware: cpu-llamacpp" in text
        assert "!! warning: profile rtx4090 was requested but does not match" in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.STEP == "Profile"  # type: ignore[attr-defined]


async def test_an_unreadable_model_is_a_dialog_with_the_cli_words(
    make_app: AppFactory, tmp_path: Path
) -> None:
    from appliance.errors import ApplianceError
    from appliance.model.info import load_model_info

    missing = tmp_path / "nothing-here"
    with pytest.raises(ApplianceError) as expected:
        load_model_info(missing)
    async with make_app(model=missing).run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        assert isinstance(pilot.app.screen, ErrorDialog)
        shown = str(pilot.app.screen.query_one("#error-text").render())
        assert shown.splitlines()[0] == f"error: {expected.value.message}"
        await pilot.press("enter")
        await settle(pilot)
        assert "No model given: no fit report." in screen_text(pilot)


# --- Bundle ------------------------------------------------------------------------------------


async def test_bundle_verification_shows_progress_signers_licences_and_provenance(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Bundle")
        await pilot.press("ctrl+n")  # Next verifies first
        await settle(pilot)
        bar = pilot.app.screen.query_one("#verify-bar", ProgressBar)
        assert bar.display and bar.percentage == 1.0
        text = screen_text(pilot)
        assert "224.1 KiB of 224.1 KiB, 4 of 4 files" in text
        assert "OK 4 files, 229430 bytes match the signed digests" in text
        assert "VERIFIED demo-cpu (stable) version 3: 4 files" in text
        for keyid in fake.verified.signers:
            assert keyid in text
        assert "expires 2099-01-01T00:00:00+00:00" in text
        assert "base gemma-3-270m-q4_k_m: licence LicenseRef-Gemma" in text
        # the demo adapter carries the recipe's short summary, no transparency record
        assert (
            "adapter helpdesk on gemma-3-270m-q4_k_m: provider Site IT department; licences"
            " Apache-2.0, LicenseRef-internal" in text
        )
        assert "LoRA r=16 alpha=32; trained on google/gemma-3-270m" in text
        assert "helpdesk-2025 (licence LicenseRef-internal, 12000 records)" in text
        assert "transparency record: NONE carried" in text
        assert "REFUSE record-missing: adapter 'helpdesk' carries no transparency record" in text
        assert fake.called("verify") == [
            {"bundle": Path("/media/usb/demo-cpu-3"), "trust": Path("/etc/appliance/root.json")}
        ]


def _with_carded_adapters(fake: FakeBackend) -> None:
    """The demo bundle with two adapters: one carrying the fixture card's record, one none."""
    import dataclasses

    from appliance.compliance.card import load_card

    record = load_card(ROOT / "tests/fixtures/cards/complete.md").record
    payload = fake.verified.payload
    (helpdesk,) = payload.adapters
    pirate = helpdesk.model_copy(update={"name": "pirate", "record": record})
    bare = helpdesk.model_copy(
        update={"provenance": helpdesk.provenance.model_copy(update={"training_summary": None})}
    )
    fake.verified = dataclasses.replace(
        fake.verified, payload=payload.model_copy(update={"adapters": [pirate, bare]})
    )


async def test_bundle_step_lists_each_adapter_with_provider_licences_sources_and_findings(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    _with_carded_adapters(fake)
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Bundle")
        await pilot.press("ctrl+n")
        await settle(pilot)
        text = screen_text(pilot)
    assert "adapters' findings under the default site policy (intended use commercial" in text
    assert "base gemma-3-270m-q4_k_m: licence LicenseRef-Gemma" in text
    assert (
        "adapter pirate on gemma-3-270m-q4_k_m: provider Example Lab GmbH; licences Apache-2.0,"
        " CC-BY-SA-4.0, CC0-1.0" in text
    )
    assert (
        "2.1 public datasets: wiki-subset (licence CC-BY-SA-4.0, 12000 records), pirate-phrases"
        " (licence CC0-1.0, records: merged into wiki-subset)" in text
    )
    assert "2.3 crawled data: not used" in text and "2.5 synthetic data: used" in text
    # the card names google/gemma-3-270m; the bundle's model is the GGUF's own name
    assert "REFUSE base-model-mismatch: the record says the adapter was trained on" in text
    assert "WARN licence-not-permissive: public dataset 'wiki-subset' (2.1)" in text
    # the adapter without a record is listed, with its finding, not skipped
    assert "adapter helpdesk on gemma-3-270m-q4_k_m: provider not stated" in text
    assert "REFUSE record-missing: adapter 'helpdesk' carries no transparency record" in text


async def test_done_step_lists_what_was_deployed(make_app: AppFactory, fake: FakeBackend) -> None:
    _with_carded_adapters(fake)
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Done")
        text = screen_text(pilot)
    assert "Deployed: bundle demo-cpu version 3" in text
    assert "base gemma-3-270m-q4_k_m: licence LicenseRef-Gemma" in text
    assert "adapter pirate on gemma-3-270m-q4_k_m: provider Example Lab GmbH" in text
    assert "findings: 2 (1 refused, 1 warned, 0 ignored under the site policy)" in text
    assert (
        "adapter helpdesk on gemma-3-270m-q4_k_m: provider not stated; licences Apache-2.0,"
        " LicenseRef-internal; transparency record: NONE" in text
    )


async def test_a_verification_failure_is_the_cli_message_and_nothing_goes_on(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.fail["verify"] = ThresholdError(
        "the bundle manifest has 1 valid signature(s) from trusted keys; the threshold is 2",
        hint="Collect more signatures with `appliance bundle sign`.",
    )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Bundle")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ErrorDialog)
        assert "ThresholdError (exit 4)" in screen_text(pilot)
        assert str(app.screen.query_one("#error-text").render()) == (
            "error: the bundle manifest has 1 valid signature(s) from trusted keys; the threshold is 2\n"
            "Collect more signatures with `appliance bundle sign`."
        )
        await pilot.press("enter")
        await settle(pilot)
        assert "NOT VERIFIED" in screen_text(pilot)
        assert app.session.verified is None
        del fake.fail["verify"]
        await pilot.press("ctrl+n")  # verify again: now it passes
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == "Targets"  # type: ignore[attr-defined]


async def test_changing_a_path_after_verification_asks_for_it_again(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Bundle")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.session.verified is not None
        app.screen.query_one("#bundle-path", Input).value = "/media/usb/other"
        await settle(pilot)
        assert app.session.verified is None
        assert "Changed: verify again." in screen_text(pilot)


# --- Targets -----------------------------------------------------------------------------------


async def test_targets_from_a_lab_with_reachability_per_host(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.unreachable = {"rehearsal-2": "Connection timed out"}
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Targets")
        assert "rehearsal  up  10.231.7.0/24  2 host(s)" in screen_text(pilot)
        app.screen.query_one("#labs").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen.query_one("#inventory-path", Input).value == (
            "/run/appliance/lab/rehearsal/inventory.yml"
        )
        text = screen_text(pilot)
        assert "rehearsal-1 10.231.7.2:22 model-server OK" in text
        assert "rehearsal-2 10.231.7.3:22 model-server FAIL" in text
        assert "FAIL rehearsal-2: ssh root@10.231.7.3:22: Connection timed out" in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == "Targets"  # type: ignore[attr-defined]
        assert "fix SSH to rehearsal-2" in str(app.screen.query_one("#status").render())


async def test_a_bad_inventory_file_is_the_core_error(make_app: AppFactory, tmp_path: Path) -> None:
    from appliance.errors import ApplianceError
    from appliance.plan.inventory import load_inventory

    bad = tmp_path / "inventory.yml"
    bad.write_text("schema_version: 1\nhosts: []\nextra: 1\n")
    with pytest.raises(ApplianceError) as expected:
        load_inventory(bad)
    app = make_app(inventory=bad)
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Targets")
        assert isinstance(app.screen, ErrorDialog)
        assert str(app.screen.query_one("#error-text").render()).startswith(
            f"error: {expected.value.message}"
        )


# --- Plan review -------------------------------------------------------------------------------


async def test_review_shows_the_dry_run_per_host_and_deploy_is_confirmed(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Plan")
        text = screen_text(pilot)
        assert "profile cpu-llamacpp, bundle demo-cpu version 3, 2 model server(s)" in text
        assert text.count("18 change(s)") == 2
        assert "/opt/appliance/releases/3/files/models/gemma-3-270m-q4_k_m.gguf" in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert "Deploy demo-cpu version 3 to 2 host(s)?" in screen_text(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert app.screen.STEP == "Plan" and not fake.called("deploy")  # type: ignore[attr-defined]


async def test_a_model_that_does_not_fit_on_the_hosts_stops_the_review(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    from appliance.errors import DoesNotFitError

    fake.fail["review"] = DoesNotFitError(
        "rehearsal-1: the bundle's model does not fit profile cpu-llamacpp: x",
        hint="Run `appliance plan` against this host's facts, or pass --force.",
    )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Targets")
        app.screen.query_one("#labs").focus()
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ErrorDialog)
        assert "DoesNotFitError (exit 3)" in screen_text(pilot)


async def choose_profile(pilot: Pilot[Any], name: str) -> None:
    """On the Profile step, choose ``name`` in the list (as a click or enter on it does)."""
    choices = pilot.app.screen.query_one("#candidates", OptionList)
    choices.focus()
    choices.highlighted = [
        choices.get_option_at_index(i).id for i in range(choices.option_count)
    ].index(name)
    await pilot.press("enter")
    await settle(pilot)


async def test_a_cpu_vllm_review_shows_each_hosts_vllm_command_and_preflights(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.bundle_model = fake.models[MISTRAL]  # an HF directory, as vLLM serves
    app = make_app(model=Path(MISTRAL))
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        await choose_profile(pilot, "cpu-vllm")
        assert fake.called("plan")[-1] == {"requested": "cpu-vllm"}
        await walk_to(pilot, "Plan")
        text = screen_text(pilot)
        assert "profile cpu-vllm, bundle demo-cpu version 3, 2 model server(s)" in text
        for host in ("rehearsal-1", "rehearsal-2"):
            assert f"Engine command (vLLM, single) on {host}:" in text
        assert "-m vllm.entrypoints.launchers.api_server.entry \\" in text
        assert "--model /opt/appliance/current/files/models/mistral-7b-instruct-v0.3 \\" in text
        assert "--max-model-len 2048 \\" in text
        assert "HF_HUB_OFFLINE=1" in text and "VLLM_NO_USAGE_STATS=1" in text
        # Every check of every host, with its verdict word; the fixture's facts predate the
        # shared-library record, so the libraries row warns (never a silent pass).
        text = " ".join(text.split())  # the table's columns are padded: compare words
        assert text.count("SKIP driver-cuda vLLM runs on the CPU (device: cpu)") == 2
        assert text.count("PASS shm /dev/shm 32768 MiB") == 2
        assert text.count("WARN libraries shared libraries not recorded (old facts)") == 2
        assert "what to do: check `ldconfig -p | grep libnuma.so.1` on the host" in text
        assert "preflights: 6 passed, 2 warning(s), 8 skipped" in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)  # warnings do not block the deploy


async def test_a_failed_preflight_is_shown_and_blocks_the_deploy(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    import dataclasses

    from appliance.detect.facts_file import load_facts

    # rehearsal-2 has no libnuma.so.1: vLLM's CPU build dies at start without it.
    facts = load_facts(fake.facts)[0]
    fake.host_facts["rehearsal-2"] = dataclasses.replace(
        facts, shared_libraries=("libc.so.6", "libstdc++.so.6")
    )
    fake.bundle_model = fake.models[MISTRAL]
    app = make_app(model=Path(MISTRAL))
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        await choose_profile(pilot, "cpu-vllm")
        await walk_to(pilot, "Plan")
        text = screen_text(pilot)
        assert (
            "FAIL 1 preflight check(s) failed: rehearsal-2 libraries. The deploy is blocked" in text
        )
        assert "FAIL libraries no libnuma.so.1 on the host" in " ".join(text.split())
        assert "what to do: install libnuma1 on Debian/Ubuntu" in text
        status = str(app.screen.query_one("#status", Static).render())
        assert "deploy blocked: 1 preflight check(s) failed (rehearsal-2 libraries)" in status
        await pilot.press("ctrl+n")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, ErrorDialog) and not isinstance(dialog, ConfirmDialog)
        text = screen_text(pilot)
        assert "PreflightError (exit 3)" in text
        assert "rehearsal-2: libraries: found no libnuma.so.1 on the host" in text
        assert "--force does not override" in text
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen.STEP == "Plan"  # type: ignore[attr-defined]
        assert len(fake.called("review")) == 1
        # libnuma1 installed on the host: the next Next asks the hosts again, the deploy is offered.
        fake.host_facts["rehearsal-2"] = dataclasses.replace(
            facts, shared_libraries=("libc.so.6", "libnuma.so.1")
        )
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert len(fake.called("review")) == 2 and app.screen.STEP == "Plan"  # type: ignore[attr-defined]
        text = " ".join(screen_text(pilot).split())
        assert "PASS libraries libnuma.so.1 present" in text and "FAIL libraries" not in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
    assert not fake.called("deploy")


# --- Deploy ------------------------------------------------------------------------------------


async def test_deploy_shows_each_host_and_every_event(make_app: AppFactory) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Deploy")
        text = screen_text(pilot)
        assert "converge: rehearsal-1: 18/18 start appliance-model.service" in text
        assert "deploy: rehearsal-2: converged" in text
        assert "deploy: 2 of 2 host(s) serving release 3" in text
        assert text.count("OK serving release 3 on 127.0.0.1:8080") == 2
        assert not pilot.app.screen.query_one("#next", Button).disabled


async def test_cancel_during_deploy_asks_then_stops_at_a_safe_point(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.slow_deploy = True
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Plan")
        await pilot.press("ctrl+n")
        await settle(pilot)
        await pilot.press("y")
        await pilot.pause()
        assert fake.deploy_waiting.wait(5)
        assert app.screen.STEP == "Deploy"  # type: ignore[attr-defined]
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # keep deploying
        await pilot.pause()
        assert fake.cancel_event is not None and not fake.cancel_event.is_set()
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        assert fake.cancel_event.is_set()
        text = screen_text(pilot)
        assert CANCELLED in str(app.screen.query_one("#status").render())
        assert CANCELLED in text and "CANCELLED stopped at a safe point" in text
        assert "deploy cancelled by the operator" in text
        assert app.session.results is None
        await pilot.press("ctrl+q")
        await settle(pilot)
    assert app.return_value == 130


async def test_quitting_during_a_deploy_cancels_it_first(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.slow_deploy = True
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Plan")
        await pilot.press("ctrl+n")
        await settle(pilot)
        await pilot.press("y")
        assert fake.deploy_waiting.wait(5)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)  # not gone: asks first
        await pilot.press("y")
        await settle(pilot)
    assert fake.cancel_event is not None and fake.cancel_event.is_set()
    assert app.return_value == 130


# --- Help, keys, size --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["f1", "question_mark"])
async def test_help_opens_and_closes(make_app: AppFactory, key: str) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Hardware")
        await pilot.press(key)
        await pilot.pause()
        assert isinstance(pilot.app.screen, HelpScreen)
        text = screen_text(pilot)
        assert "ctrl+n" in text and "escape" in text and "Hardware" in text
        await pilot.press("escape")
        await pilot.pause()
        assert pilot.app.screen.STEP == "Hardware"  # type: ignore[attr-defined]


async def test_f1_opens_help_even_while_typing(make_app: AppFactory) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Bundle")
        field = pilot.app.screen.query_one("#bundle-path", Input)
        field.focus()
        await pilot.press("?")  # typed into the field, not a shortcut there
        assert field.value.endswith("?")
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(pilot.app.screen, HelpScreen)
        assert "verify" in screen_text(pilot).lower()


@pytest.mark.parametrize(
    "step", ["Hardware", "Profile", "Bundle", "Targets", "Plan", "Deploy", "Done"]
)
async def test_every_screen_is_usable_at_80x24(make_app: AppFactory, step: str) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, step)
        screen = pilot.app.screen
        whole = screen.region
        essential = ["#stepbar", "#nav", "#back", "#next", "#status", "Footer"]
        essential += {
            "Profile": ["#candidates", "#model-path"],
            "Bundle": ["#bundle-path", "#trust-path", "#verify"],
            "Targets": ["#inventory-path", "#load", "#labs", "#hosts"],
            "Deploy": ["#host-rows", "#log"],
        }.get(step, [])
        for selector in essential:
            widget = screen.query_one(selector)
            if widget.focusable:  # inside a scrolling body: focus brings it into view
                widget.focus()
                await pilot.pause()
            region = widget.region
            assert region.area > 0, f"{step}: {selector} is not shown"
            assert whole.contains_region(region), f"{step}: {selector} at {region} is clipped"
