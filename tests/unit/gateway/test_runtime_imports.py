"""What the gateway's virtualenv on a host needs: exactly the packages docs/gateway.md lists.

A subprocess builds the real app, its uvicorn config (TLS loaded) and its
upstream client, with Rich and Pygments made unimportable (httpx loads them
only when present; the gateway's venv does not have them), then reports every
top-level module loaded. Anything outside the list (Textual, pyinfra, Ansible,
TUF, huggingface_hub, other appliance packages) would make the gateway venv
heavier than its job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.gateway.conftest import Site

ROOT = Path(__file__).resolve().parents[3]

# Import name -> the wheel docs/gateway.md lists for it.
NEEDED = {
    "appliance": "appliance", "starlette": "starlette", "anyio": "anyio", "idna": "idna",
    "typing_extensions": "typing-extensions", "sniffio": "sniffio", "uvicorn": "uvicorn",
    "h11": "h11", "click": "click", "httpx": "httpx", "httpcore": "httpcore",
    "certifi": "certifi", "jwt": "PyJWT", "cryptography": "cryptography", "_cffi_backend": "cffi",
    "pycparser": "pycparser", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types", "typing_inspection": "typing-inspection",
    "yaml": "PyYAML", "_yaml": "PyYAML",
}  # fmt: skip
OPTIONAL = {"bcrypt"}  # cryptography's SSH key support tries it; absent is fine
APPLIANCE_MODULES = {
    "appliance", "appliance.audit", "appliance.errors", "appliance.exitcodes",
    "appliance.input_files", "appliance.safe_fs", "appliance.schema_errors", "appliance.yaml_files",
}  # fmt: skip

SCRIPT = """
import importlib.abc, json, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("rich", "pygments", "markdown_it", "mdurl"):
            raise ImportError(name)
sys.meta_path.insert(0, Absent())
from pathlib import Path
from appliance.gateway.__main__ import main
from appliance.gateway.app import create_app
from appliance.gateway.certs import generate_self_signed
from appliance.gateway.config import load_config
from appliance.gateway.server import check_tls_files, uvicorn_config
config = load_config(Path(sys.argv[1]))
generate_self_signed(config.tls.cert_file, config.tls.key_file, ["localhost"])
check_tls_files(config)
app = create_app(config)
uvicorn_config(config, app).load()
import uvicorn.protocols.http.h11_impl, uvicorn.lifespan.on, uvicorn.loops.asyncio
import httpx
httpx.Client(verify=True).close()
# What httpcore asks on every request it sends upstream (it imports sniffio to answer).
import asyncio, httpcore._synchronization
async def which(): return httpcore._synchronization.current_async_library()
assert asyncio.run(which()) == "asyncio" and sys.modules.get("sniffio") is not None
print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))
"""


def test_the_gateway_loads_only_its_listed_packages(site: Site) -> None:
    import yaml

    config = site.root / "gateway.yaml"
    config.write_text(yaml.safe_dump(site.config_dict()))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    third_party = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names)
    internal = {
        m for m in third_party if (m.startswith("_") and m not in NEEDED) or m == "cython_runtime"
    }
    extra = third_party - set(NEEDED) - OPTIONAL - internal
    assert not extra, f"the gateway loads packages docs/gateway.md does not list: {sorted(extra)}"
    core = {
        m for m in loaded if m.startswith("appliance") and not m.startswith("appliance.gateway")
    }
    assert core <= APPLIANCE_MODULES, (
        f"the gateway loads other appliance modules: {core - APPLIANCE_MODULES}"
    )


def test_the_doc_lists_every_wheel() -> None:
    doc = (ROOT / "docs" / "gateway.md").read_text()
    missing = [wheel for wheel in set(NEEDED.values()) - {"appliance"} if wheel not in doc]
    assert not missing, f"docs/gateway.md does not list {missing}"
