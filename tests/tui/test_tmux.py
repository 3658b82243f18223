"""The real ``appliance tui`` in a real terminal (a tmux pane), driven by keys, read from the screen.

No fake here: the installed entry point, the real core, a bundle built, signed
and verified by the real CLI, a saved facts file, and an inventory whose only
host is this machine's loopback on a closed port (the SSH check fails without
leaving the machine). The walk goes as far as a lab-free machine allows:
Hardware -> Profile -> Bundle (verified) -> Targets (SSH FAIL, Next refused),
plus help and quit. tmux runs detached on its own socket, so the test also runs
with no controlling terminal and no stdin (CI).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.tui

ROOT = Path(__file__).resolve().parents[2]
TMUX = shutil.which("tmux")


def appliance(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "appliance", *map(str, args)], cwd=cwd, check=True,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signed bundle of a small local model, its trusted root, and an inventory of one host."""
    work = tmp_path_factory.mktemp("tmux")
    model = work / "local-model"
    model.mkdir()
    shutil.copy(ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3/config.json", model)
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    appliance("keys", "generate", "--out", "keys", cwd=work)
    appliance("bundle", "build", "--model", model, "--name", "local", "--version", "1",
              "--licence", "Apache-2.0", "--out", "local-1", cwd=work)  # fmt: skip
    appliance("bundle", "sign", "local-1", "--key", "keys/signer.key", cwd=work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is: nothing listens there
    inventory = work / "inventory.yml"
    inventory.write_text(json.dumps({"schema_version": 1, "hosts": [
        {"name": "here", "address": "127.0.0.1", "ssh": {"port": port}, "roles": ["model-server"]}]}))  # fmt: skip
    return {"bundle": work / "local-1", "trust": work / "keys/root.json", "inventory": inventory}


class Pane:
    """One detached tmux session on a private socket: send keys, read the screen."""

    def __init__(self, socket_path: Path, command: str) -> None:
        self.base = [str(TMUX), "-S", str(socket_path)]
        env = {**os.environ, "TERM": os.environ.get("TERM") or "xterm-256color"}
        self.tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command, env=env)

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True, check=True,
                                stdin=subprocess.DEVNULL, env=env, timeout=30)  # fmt: skip
        return result.stdout

    def alive(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "tui"], capture_output=True,
                              stdin=subprocess.DEVNULL, check=False).returncode == 0  # fmt: skip

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "tui")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait_for(self, *texts: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen() if self.alive() else "(the app exited)"
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"never saw {texts!r}; the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False,
                       stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture
def pane(tmp_path: Path, site: dict[str, Path]) -> Iterator[Pane]:
    if TMUX is None:
        pytest.skip("tmux is not installed: run `scripts/ensure-system-deps tui` (make tui does)")
    command = shlex.join([
        sys.executable, "-m", "appliance", "tui",
        "--facts", str(ROOT / "tests/fixtures/facts/cpu-avx2.json"),
        "--model", str(ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3"),
        "--bundle", str(site["bundle"]), "--trust", str(site["trust"]),
        "--inventory", str(site["inventory"]),
    ])  # fmt: skip
    # tmux's own socket in tmp: short path (sockets are limited to ~100 bytes), nobody else's server.
    sock = Path("/tmp") / f"appliance-tui-{os.getpid()}-{tmp_path.name[-12:]}"
    pane = Pane(sock, f"cd {shlex.quote(str(ROOT))} && {command}")
    try:
        yield pane
    finally:
        pane.close()
        sock.unlink(missing_ok=True)


def test_the_installer_in_a_real_terminal(pane: Pane) -> None:
    # 1. Hardware, from the saved facts.
    pane.wait_for("[Hardware]", "cpu-avx2-01", "NO USABLE GPU", "^n Next")
    # Help, then back.
    pane.keys("F1")
    pane.wait_for("Help", "Keys", "ctrl+n")
    pane.keys("Escape")
    pane.wait_for("[Hardware]", "OK: facts read")
    # 2. Profile: the recommendation, the rejections, and the model's fit (an HF directory
    # under llama.cpp does not fit: overriding asks first, and No stays).
    pane.keys("C-n")
    pane.wait_for("[Profile]", "Recommended for this hardware: cpu-llamacpp", "does not fit")
    pane.keys("C-n")
    pane.wait_for("Override: cpu-llamacpp does not fit", "No (n)", "Override (y)")
    pane.keys("y")
    # 3. Bundle: Next verifies with the real core.
    pane.wait_for("[Bundle]", "Verify")
    pane.keys("C-n")
    pane.wait_for("VERIFIED local (stable) version 1", "licence Apache-2.0", "3 of 3 files")
    # 4. Targets: the inventory's host refuses SSH; Next is refused.
    pane.keys("C-n")
    screen = pane.wait_for("[Targets]", "here", "127.0.0.1", "FAIL")
    assert "refused" in screen.lower()
    pane.keys("C-n")
    pane.wait_for("fix SSH to here")
    # Back works, and quit ends the program.
    pane.keys("Escape")
    pane.wait_for("[Bundle]", "VERIFIED local")
    pane.keys("C-q")
    deadline = time.monotonic() + 20
    while pane.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pane.alive(), "the app did not exit on ctrl+q"
