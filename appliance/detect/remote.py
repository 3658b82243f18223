"""Facts of a remote host: one shell command to run there and a pure parser of its output.

pyinfra's ``FactBase`` shape: ``facts_script()`` is what the deploy sends over
SSH (``sh -s``, one call per host); ``parse_facts_output(text, host)`` turns
what it printed into ``HostFacts``. The SSH call itself stays in deploy.

Invariants:
- The parser is pure (text in, frozen data out) and goes through the same
  parsers local detection uses: ``detect.cpu.parse_cpuinfo``,
  ``detect.host.parse_os_release`` and, for a GPU host, the ``GpuReport``
  that ``detect.nvml_probe.probe_gpus`` built *on that host*, read back with
  the facts file's strict validation (``detect.facts_file``).
- The script prints one ``@@name`` line before each section and ``@@end``
  last. Output missing a section or the end marker (cut off), a number that
  is not one, or a GPU report that does not validate raises
  ``RemoteFactsError`` naming the host and the section; never a traceback.
- A host with no ``/dev/nvidiactl`` gets the same ``GpuReport`` as before
  remote NVML existed, and its ``@@gpu`` section stays empty: the probe
  program is run only where the device node is.
- ``@@shm`` (the size of /dev/shm) is optional: output recorded before it existed
  parses, with ``shm_total_bytes`` None; a line that is not df's is None too.
- The GPU probe is the local probe's own code: the sources of
  ``detect/facts.py``, ``detect/nvml_probe.py`` and ``pynvml`` travel in the
  script (compressed) and run under the host's ``python3``; the host needs
  the NVIDIA driver, nothing of appliance.
"""

from __future__ import annotations

import base64
import functools
import zlib
from pathlib import Path

from appliance.detect.cpu import parse_cpuinfo
from appliance.detect.facts import CpuFacts, DiskFacts, GpuReport, HostFacts, MemoryFacts, OsFacts
from appliance.detect.host import parse_os_release
from appliance.errors import RemoteFactsError

SECTIONS = ("hostname", "nproc", "cores", "meminfo", "uname", "python", "nvidia", "osrelease",
            "cpuinfo", "df", "gpu")  # fmt: skip
END = "end"
# Sections added later: output recorded before them still parses (the fact is None).
OPTIONAL_SECTIONS = ("shm", "libs")
# System libraries an engine loads that no wheel carries (a site installs them from its OS
# media): vLLM's CPU build loads libnuma.so.1; vLLM on GPUs loads the driver's libcuda.so.1.
PROBED_LIBRARIES = ("libcuda.so.1", "libnuma.so.1")

NO_NVIDIA_DEVICE = GpuReport(
    status="no-nvidia-device",
    message="no NVIDIA device node on the host (/dev/nvidiactl missing)",
)

_SCRIPT = r"""echo "@@hostname"; hostname
echo "@@nproc"; nproc
echo "@@cores"; (lscpu -p=CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l) || echo 0
echo "@@meminfo"; cat /proc/meminfo
echo "@@uname"; uname -sr; uname -m
echo "@@python"; python3 -c 'import platform; print(platform.python_version())'
echo "@@nvidia"; ls /dev/nvidiactl 2>/dev/null || true
echo "@@osrelease"; cat /etc/os-release 2>/dev/null
echo "@@cpuinfo"; cat /proc/cpuinfo
echo "@@df"; echo '@PATH@'; d='@PATH@'; while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "$d"; df -P -B1 "$d" | tail -n 1
echo "@@shm"; df -P -B1 /dev/shm 2>/dev/null | tail -n 1
echo "@@libs"; { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -o -E 'lib(cuda|numa)\.so\.1 ' | sort -u
echo "@@gpu"; if [ -e /dev/nvidiactl ]; then python3 - <<'APPLIANCE_GPU_PROBE'
@PROBE@
APPLIANCE_GPU_PROBE
fi
echo "@@end"
"""

# Run by the host's python3: the shipped modules are registered under their own names (the
# probe's dataclasses and its `from appliance.detect.facts import ...` resolve as at home),
# then the probe runs and its report is printed as one line of JSON. Whatever goes wrong
# still prints a report (status "error"), never a traceback on stdout.
_PROBE_PROGRAM = """\
import base64, dataclasses, json, sys, types, zlib
try:
    for name, source in {modules}:
        module = types.ModuleType(name)
        if not source:
            module.__path__ = []
        sys.modules[name] = module
        if source:
            exec(compile(zlib.decompress(base64.b64decode(source)), name, "exec"), module.__dict__)
    from appliance.detect.nvml_probe import probe_gpus
    report = dataclasses.asdict(probe_gpus())
except Exception as exc:
    report = {{"status": "error", "message": "the GPU probe failed on the host: %s: %s"
               % (type(exc).__name__, exc)}}
print(json.dumps(report, sort_keys=True))
"""


def _packed(path: Path) -> str:
    return base64.b64encode(zlib.compress(path.read_bytes(), 9)).decode("ascii")


@functools.cache
def gpu_probe_program() -> str:
    """The Python program the script runs on a host with an NVIDIA device node.

    Built once per process: the same sources go to every host of a deploy (reading and
    compressing ``pynvml`` again for each host was repeated work)."""
    import pynvml

    from appliance.detect import facts, nvml_probe

    modules = [("appliance", ""), ("appliance.detect", ""),
               ("appliance.detect.facts", _packed(Path(facts.__file__))),
               ("pynvml", _packed(Path(pynvml.__file__))),
               ("appliance.detect.nvml_probe", _packed(Path(nvml_probe.__file__)))]  # fmt: skip
    return _PROBE_PROGRAM.format(modules=repr(modules))


def facts_script(install_path: str) -> str:
    """The shell script (``sh -s``) whose output ``parse_facts_output`` reads; the free space
    reported is that of ``install_path`` (or of its nearest existing ancestor)."""
    if not install_path.startswith("/") or "'" in install_path:
        raise ValueError(f"expected an absolute path without quotes, got {install_path!r}")
    return _SCRIPT.replace("@PATH@", install_path).replace("@PROBE@", gpu_probe_program())


def split_sections(text: str, host: str) -> dict[str, list[str]]:
    """The script's output by section; refused when a section or the end marker is missing."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            sections[current] = []
        elif current:
            sections[current].append(line)
    if END not in sections:
        raise RemoteFactsError(
            f"{host}: the facts script's output ends before its last section (@@{END}): "
            "the connection or the host's shell stopped it",
            hint="Check that the host answers over SSH (`appliance status`), then deploy again.",
        )
    missing = [name for name in SECTIONS if name not in sections]
    if missing:
        raise RemoteFactsError(
            f"{host}: the facts script's output has no section {', '.join('@@' + m for m in missing)}",
            hint="The host's shell did not run the whole script; check the login shell and "
            "profile of the SSH user, then deploy again.",
        )
    return sections


def _number(host: str, section: str, value: str) -> int:
    if not value.strip().isdigit():
        raise RemoteFactsError(
            f"{host}: the facts script's @@{section} section holds {value.strip()[:40]!r}, "
            "expected a whole number"
        )
    return int(value)


def _memory(host: str, lines: list[str]) -> MemoryFacts:
    meminfo = {
        k.strip(): v.split()[0] for k, _, v in (ln.partition(":") for ln in lines) if v.strip()
    }
    total, available = (
        _number(host, "meminfo", meminfo.get(key, "0")) * 1024
        for key in ("MemTotal", "MemAvailable")
    )
    return MemoryFacts(total, available)


def _disks(lines: list[str]) -> tuple[DiskFacts, ...]:
    """The install path's filesystem from the facts script's ``df -P`` line (nothing if
    unreadable): the path asked about, where it was measured, then the line."""
    if len(lines) < 3:
        return ()
    fields = lines[2].split()
    if len(fields) < 6 or not fields[1].isdigit() or not fields[3].isdigit():
        return ()
    return (DiskFacts(lines[0], lines[1], int(fields[1]), int(fields[3])),)


def parse_shm(lines: list[str]) -> int | None:
    """Size in bytes of /dev/shm from the ``df -P -B1 /dev/shm`` line, None when there is
    none or the line is not df's (bounded: one line, digits only, at most 20 of them)."""
    if len(lines) != 1:
        return None
    fields = lines[0].split()
    if len(fields) < 6 or not fields[1].isdigit() or len(fields[1]) > 20:
        return None
    return int(fields[1])


def parse_libraries(lines: list[str], recorded: bool) -> tuple[str, ...] | None:
    """Which of ``PROBED_LIBRARIES`` the ``@@libs`` section names (None: the section was not
    in the output: facts from before it); anything else in it is ignored."""
    if not recorded:
        return None
    return tuple(sorted({line.strip() for line in lines[:16]} & set(PROBED_LIBRARIES)))


def parse_gpu_report(text: str, host: str) -> GpuReport:
    """The host's ``GpuReport`` from the probe's JSON, validated as strictly as a facts file."""
    from pydantic import TypeAdapter, ValidationError

    from appliance.schema_errors import describe_errors

    try:
        return TypeAdapter(GpuReport).validate_json(text)
    except ValidationError as exc:
        problems = describe_errors(exc, GpuReport, "gpu")
        if not text.strip().startswith("{") or any("Invalid JSON" in p for p in problems):
            problems = [f"not JSON: {text.strip()[:80]!r}"]
        raise RemoteFactsError(
            f"{host}: the GPU report of the facts script (@@gpu) does not match the facts "
            f"schema: {'; '.join(problems[:3])}"
        ) from None


def _gpu(host: str, sections: dict[str, list[str]]) -> GpuReport:
    if not sections["nvidia"]:
        return NO_NVIDIA_DEVICE
    text = "\n".join(sections["gpu"]).strip()
    if not text:
        return GpuReport(
            status="error",
            message="an NVIDIA device is present but the GPU probe printed nothing on the host: "
            "check that python3 runs there",
        )
    return parse_gpu_report(text, host)


def parse_facts_output(text: str, host: str) -> HostFacts:
    """``HostFacts`` of ``host`` (the inventory's name) from the output of ``facts_script()``."""
    sections = split_sections(text, host)
    model, flags = parse_cpuinfo("\n".join(sections["cpuinfo"]))
    logical = _number(host, "nproc", (sections["nproc"] or ["1"])[0])
    cores = _number(host, "cores", (sections["cores"] or ["0"])[0] or "0") or logical
    uname = sections["uname"]
    system, _, kernel = (uname or ["Linux unknown"])[0].partition(" ")
    machine = (uname or ["", "unknown"])[-1]
    return HostFacts(
        hostname=host,
        collected_at="",
        os=OsFacts(
            system,
            parse_os_release("\n".join(sections["osrelease"])),
            kernel,
            (sections["python"] or ["unknown"])[0],
        ),
        cpu=CpuFacts(model, machine, cores, logical, flags),
        memory=_memory(host, sections["meminfo"]),
        disks=_disks(sections["df"]),
        shm_total_bytes=parse_shm(sections.get("shm", [])),
        shared_libraries=parse_libraries(sections.get("libs", []), "libs" in sections),
        gpu=_gpu(host, sections),
    )
