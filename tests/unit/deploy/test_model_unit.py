"""The model-server unit: one template for both engines, and how a kept unit is checked."""

from __future__ import annotations

from appliance.bundle.site.verify import verify_bundle
from appliance.deploy.activation import ReleaseCheck, parse_release_unit
from appliance.deploy.host_layout import RELEASES
from appliance.deploy.render import desired_state
from appliance.events import drain
from appliance.plan.engine_args import NodeCommand, start_timeout
from appliance.plan.inventory import HostEntry
from tests.unit.bundle.conftest import BundleFactory, Trust

HOST = HostEntry(name="lab-1", address="10.231.0.2", roles=["model-server"])
VLLM = NodeCommand(
    host="lab-1",
    role="single",
    argv=("/opt/appliance/current/venv/bin/python", "-m", "vllm.entrypoints.launchers.api_server.entry",
          "--model", "/opt/appliance/current/files/models/gemma", "--served-model-name", "gemma",
          "--host", "127.0.0.1", "--port", "8000", "--max-model-len", "2048"),
    env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
)  # fmt: skip
LLAMA = NodeCommand(
    host="lab-1",
    role="single",
    argv=("/opt/appliance/current/venv/bin/python", "-m", "llama_cpp.server", "--model",
          "/opt/appliance/current/files/models/demo.gguf", "--model_alias", "demo",
          "--host", "127.0.0.1", "--port", "8080"),
    env={"HF_HUB_OFFLINE": "1"},
)  # fmt: skip


def _units(make_bundle: BundleFactory, trust: Trust) -> tuple[str, str]:
    verified = drain(verify_bundle(make_bundle(version=3), trust.root_path))
    vllm = desired_state(verified, VLLM, HOST, engine="vllm").unit_file.content
    llama = desired_state(verified, LLAMA, HOST, engine="llamacpp").unit_file.content
    return vllm, llama


def test_one_template_serves_both_engines(make_bundle: BundleFactory, trust: Trust) -> None:
    vllm, llama = _units(make_bundle, trust)
    assert (
        f"ExecStart={RELEASES}/3/venv/bin/python -m vllm.entrypoints.launchers.api_server.entry "
        f"--model {RELEASES}/3/files/models/gemma" in vllm
    )
    for unit in (vllm, llama):  # the same hardened service, its own dynamic user
        for line in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                     "CapabilityBoundingSet=", "KillMode=mixed", "Restart=on-failure"):  # fmt: skip
            assert f"\n{line}\n" in unit, (line, unit)
    assert "LimitMEMLOCK=infinity" in vllm and "LimitMEMLOCK" not in llama
    assert "TimeoutStopSec=60" in vllm and "TimeoutStopSec=30" in llama


def test_a_rendered_unit_says_how_it_is_checked(make_bundle: BundleFactory, trust: Trust) -> None:
    vllm, llama = _units(make_bundle, trust)
    check = parse_release_unit(vllm)
    assert check is not None
    assert (check.port, check.paths, check.model) == (8000, ("/health", "/v1/models"), "gemma")
    assert check.start_timeout == 300  # the test bundle's model is tiny
    assert parse_release_unit(llama) == ReleaseCheck(8080, ("/v1/models",), "demo", 120, "llamacpp")
    assert (check.engine, check.context) == ("vllm", 2048)


def test_a_unit_from_before_the_checks_gets_the_old_check() -> None:
    old = "[Service]\nExecStart=/x/venv/bin/python -m llama_cpp.server --port 8080\n"
    assert parse_release_unit(old) == ReleaseCheck(8080, ("/v1/models",), None, 180)


def test_odd_units_are_not_trusted() -> None:
    assert parse_release_unit("") is None
    assert parse_release_unit("ExecStart=/bin/x --port 'unbalanced\n") is None
    capped = parse_release_unit("ExecStart=x --port 1\nX-Appliance-Start-Timeout=999999999\n")
    assert capped is not None and capped.start_timeout == 3600
    junk = parse_release_unit(
        "ExecStart=x --port 1\nX-Appliance-Health=; rm -rf / http://evil\nX-Appliance-Start-Timeout=-5\n"
    )
    # only paths are kept (appended to the loopback URL); a negative timeout is not a number
    assert junk == ReleaseCheck(1, ("/",), None, 180)


def test_start_timeout_grows_with_the_model() -> None:
    small, large = start_timeout("vllm", 536 << 20), start_timeout("vllm", 140 * 10**9)
    assert 300 <= small < 320
    assert large > 1800 and large <= 3600
    assert start_timeout("llamacpp", 253 << 20) < small
