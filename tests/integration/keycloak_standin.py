"""A STAND-IN Keycloak distribution and Java runtime for the lab tests: NOT Keycloak, NOT Java.

Keycloak's distribution and a Java 21 runtime cannot be fetched on the
development machine, and the real Keycloak is not pinned yet (docs/keycloak.md).
What the deploy does with them can still run for real on lab hosts: the signed
artifacts in the bundle, the system user, the runtime unpacked into the
release, the distribution unpacked under /var/lib, the realm import and the
admin file sent 0600, the unit that builds once and imports on a realm change,
the readiness check, and the gateway relaying to it. So the tests put two
archives with the same names and layout in the bundle (artifacts ``keycloak``
and ``java-runtime``):

- ``STAND-IN-java-runtime.tar.gz``: ``bin/java`` answers ``-version`` (and says
  it is a stand-in) and refuses anything else;
- ``STAND-IN-keycloak-dist.tar.gz``: ``bin/kc.sh`` checks what the unit gives
  it (``$JAVA_HOME/bin/java`` from the release, the build-time options in its
  environment, the realm file, ``start --optimized`` only after a build) and
  logs each call to ``data/stand-in-calls.log``; ``start`` serves the imported
  realm with the lab's development issuer (``appliance.lab.dev_issuer``, lab
  realms only) from the release's gateway venv on Keycloak's HTTP address, and
  readiness on the management port.

Built here, by the tests, never shipped: no recipe under ``bundles/`` names them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

JAVA = """#!/bin/sh
# STAND-IN for a Java runtime (appliance lab tests only): NOT Java.
case "${1:-}" in
  -version|--version) echo 'openjdk version "21" (appliance lab STAND-IN, not Java)' >&2; exit 0 ;;
esac
echo "stand-in Java runtime: cannot run $*" >&2
exit 1
"""

READINESS = r"""
import http.server, sys, urllib.request
host, port, management = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 404
        if self.path == "/health/ready":
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/health/ready", timeout=2) as r:
                    status = 200 if r.status == 200 else 503
            except Exception:
                status = 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((host, management), Ready).serve_forever()
"""

KC_SH = f"""#!/bin/sh
# STAND-IN for Keycloak's bin/kc.sh (appliance lab tests only): NOT Keycloak.
# Serves the imported realm with appliance.lab.dev_issuer (lab realms only).
set -eu
home=$(cd "$(dirname "$0")/.." && pwd)
"$JAVA_HOME/bin/java" -version 2>/dev/null
[ "${{KC_DB:-}}" = dev-file ] || {{ echo "stand-in kc.sh: KC_DB is not dev-file" >&2; exit 2; }}
command=$1; shift
echo "$command $*" >> "$home/data/stand-in-calls.log"
case $command in
build)
  touch "$home/lib/quarkus/stand-in-build"
  ;;
import)
  file=""
  while [ $# -gt 0 ]; do case $1 in --file) file=$2; shift ;; esac; shift; done
  install -m 600 "$file" "$home/data/stand-in-realm.json"
  ;;
start)
  [ -e "$home/lib/quarkus/stand-in-build" ] || {{ echo "stand-in kc.sh: start before build" >&2; exit 3; }}
  for a; do case $a in
    --hostname=*) hostname=${{a#*=}} ;; --http-host=*) host=${{a#*=}} ;; --http-port=*) port=${{a#*=}} ;;
  esac; done
  python="${{JAVA_HOME%/runtime/java}}/gateway-venv/bin/python"
  "$python" -c '{READINESS.replace("'", "")}' "$host" "$port" "$KC_HTTP_MANAGEMENT_PORT" &
  exec "$python" -m appliance.lab.dev_issuer --realm "$home/data/stand-in-realm.json" \\
    --listen "$host:$port" --state "$home/data/stand-in-issuer" --hostname "$hostname"
  ;;
*)
  echo "stand-in kc.sh: unknown command $command" >&2; exit 2
  ;;
esac
"""

NOTE = "A STAND-IN for tests of the appliance's deploy. Not Keycloak, not Java.\n"


def _archive(path: Path, top: str, files: dict[str, tuple[str, int]]) -> str:
    """A reproducible .tar.gz (fixed times and owners); its sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in sorted({f"{top}/{name}".rsplit("/", 1)[0] for name in files}):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, (text, mode) in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    data = gzip.compress(buffer.getvalue(), mtime=0)  # no time in the header: the same digest
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build(directory: Path) -> str:
    """Write both archives into ``directory``; the recipe's ``artifacts:`` for them (YAML)."""
    directory.mkdir(parents=True, exist_ok=True)
    java = directory / "STAND-IN-java-runtime.tar.gz"
    dist = directory / "STAND-IN-keycloak-dist.tar.gz"
    java_sha = _archive(
        java, "stand-in-jre-21", {"bin/java": (JAVA, 0o755), "STAND-IN.txt": (NOTE, 0o644)}
    )
    dist_sha = _archive(
        dist,
        "keycloak-stand-in",
        {
            "bin/kc.sh": (KC_SH, 0o755),
            "conf/keycloak.conf": ("", 0o644),
            "STAND-IN.txt": (NOTE, 0o644),
        },
    )
    return (
        "artifacts:\n"
        f"  - {{name: java-runtime, url: 'file://{java}', sha256: {java_sha}, licence: LicenseRef-Stand-In}}\n"
        f"  - {{name: keycloak, url: 'file://{dist}', sha256: {dist_sha}, licence: LicenseRef-Stand-In}}\n"
    )
