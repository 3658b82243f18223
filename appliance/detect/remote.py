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
- ``@@clock``, ``@@net``, ``@@rdma`` and ``@@cc`` are optional too (None when absent).
  Their parsers are bounded: at most ``MAX_SECTION_CHARS`` of a section, ``MAX_INTERFACES``
  interfaces with ``MAX_ADDRESSES`` addresses each, ``MAX_RDMA_PORTS`` ports; anything
  past a bound, JSON that is not ``ip -j addr``'s shape, a number that is not one or an
  address that is not IPv4 raises ``RemoteFactsError`` naming the host and the section.
  An interface whose name no group could name (``INTERFACE_NAME``) is left out.
- The clock offset is recorded only when the caller passes ``clock_window`` (its
  ``time.time()`` before and after the SSH call): the host's time lies inside it, so the
  offset is the host's time minus the window's midpoint, give or take half the window.
- The GPU probe is the local probe's own code: the sources of
  ``detect/facts.py``, ``detect/nvml_probe.py`` and ``pynvml`` travel in the
  script (compressed) and run under the host's ``python3``; the host needs
  the NVIDIA driver, nothing of appliance.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
import zlib
from pathlib import Path
from typing import Any

from appliance.detect.cpu import parse_cpuinfo
from appliance.detect.facts import (
    PROBED_COMPILERS,
    ClockFacts,
    CpuFacts,
    DiskFacts,
    GpuReport,
    HostFacts,
    InterfaceFacts,
    MemoryFacts,
    OsFacts,
    RdmaPortFacts,
)
from appliance.detect.host import parse_os_release
from appliance.errors import RemoteFactsError

SECTIONS = ("hostname", "nproc", "cores", "meminfo", "uname", "python", "nvidia", "osrelease",
            "cpuinfo", "df", "gpu")  # fmt: skip
END = "end"
# Sections added later: output recorded before them still parses (the fact is None).
OPTIONAL_SECTIONS = ("shm", "libs", "clock", "net", "rdma", "cc")
MAX_SECTION_CHARS = 1 << 20  # `ip -j addr` of a host with 100 interfaces is about 60 KB
MAX_INTERFACES = 512
MAX_ADDRESSES = 64  # per interface
MAX_RDMA_PORTS = 256
# Linux interface names: at most 15 bytes (IFNAMSIZ 16), as the inventory's groups name them.
INTERFACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}")
_RDMA_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# System libraries an engine loads that no wheel carries (a site installs them from its OS
# media): vLLM's CPU build loads libnuma.so.1; vLLM on GPUs loads the driver's libcuda.so.1.
PROBED_LIBRARIES = ("libcuda.so.1", "libnuma.so.1")

NO_NVIDIA_DEVICE = GpuReport(
    status="no-nvidia-device",
    message="no NVIDIA device node on the host (/dev/nvidiactl missing)",
)

_SCRIPT = r"""echo "@@hostname"; hostname
echo "@@clock"; date +%s.%N
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
echo "@@net"; { command -v ip >/dev/null 2>&1 && ip -j addr 2>/dev/null; } || for d in /sys/class/net/*; do [ -r "$d/mtu" ] && echo "${d##*/} $(cat "$d/mtu" 2>/dev/null) $(cat "$d/operstate" 2>/dev/null)"; done
echo "@@rdma"; for p in /sys/class/infiniband/*/ports/*; do [ -r "$p/state" ] || continue; d=${p%/ports/*}; echo "port|${d##*/}|${p##*/}|$(cat "$p/state" 2>/dev/null)|$(cat "$p/link_layer" 2>/dev/null)"; done
for n in /sys/class/infiniband/*/device/net/*; do [ -e "$n" ] || continue; d=${n%/device/net/*}; echo "net|${d##*/}|${n##*/}"; done
if [ -d /sys/module/nvidia_peermem ]; then echo "peermem|yes"; else echo "peermem|no"; fi
echo "@@cc"; for c in clang clang++ g++ gcc; do command -v "$c" >/dev/null 2>&1 && echo "$c"; done
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


def _refuse(host: str, section: str, what: str) -> RemoteFactsError:
    return RemoteFactsError(
        f"{host}: the facts script's @@{section} section {what}",
        hint="The host printed what no Linux host prints there; check what runs as `ip`, "
        "`date` or in /sys on it, then deploy again.",
    )


def _section_text(host: str, section: str, lines: list[str]) -> str:
    text = "\n".join(lines).strip()
    if len(text) > MAX_SECTION_CHARS:
        raise _refuse(host, section, f"holds {len(text)} characters, more than {MAX_SECTION_CHARS}")
    return text


def parse_clock(
    lines: list[str], host: str, window: tuple[float, float] | None
) -> ClockFacts | None:
    """The host's clock against the deployer's, from ``date +%s.%N`` and the deployer's window
    (``time.time()`` before and after the call); None without a window or a ``@@clock`` line.
    A ``date`` without ``%N`` (seconds only) widens the uncertainty by half a second."""
    if window is None or not lines:
        return None
    before, after = window
    if not before <= after:
        raise ValueError(f"clock_window {window!r}: expected (before, after) with before <= after")
    match = re.fullmatch(r"(\d{1,12})(?:\.(\S{0,12}))?", lines[0].strip())
    if match is None:
        raise _refuse(
            host, "clock", f"holds {lines[0].strip()[:40]!r}, expected seconds since 1970"
        )
    seconds, fraction = match.groups()
    resolution = 0.0
    if fraction and fraction.isdigit():
        host_time = float(f"{seconds}.{fraction}")
    else:  # %N not understood: whole seconds, truncated
        host_time, resolution = int(seconds) + 0.5, 0.5
    middle, half = (before + after) / 2, (after - before) / 2
    return ClockFacts(
        offset_ms=round((host_time - middle) * 1000),
        uncertainty_ms=int((half + resolution) * 1000 + 0.999),
    )


def _ip_interface(host: str, item: Any) -> InterfaceFacts | None:
    if not isinstance(item, dict):
        raise _refuse(
            host, "net", "holds a JSON entry that is not an object (expected `ip -j addr`)"
        )
    name, mtu, state, infos = (item.get(k) for k in ("ifname", "mtu", "operstate", "addr_info"))
    if not isinstance(name, str) or not INTERFACE_NAME.fullmatch(name):
        return None
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 0 < mtu <= 1 << 20:
        raise _refuse(
            host, "net", f"gives {name} the MTU {str(mtu)[:20]!r}, expected a whole number"
        )
    if not isinstance(state, str) or not re.fullmatch(r"[A-Za-z_]{1,20}", state):
        raise _refuse(host, "net", f"gives {name} the state {str(state)[:20]!r}")
    if infos is None:
        infos = []
    if not isinstance(infos, list) or len(infos) > MAX_ADDRESSES:
        raise _refuse(host, "net", f"gives {name} more than {MAX_ADDRESSES} addresses or no list")
    addresses: list[str] = []
    for info in infos:
        if not isinstance(info, dict):
            raise _refuse(host, "net", f"gives {name} an address that is not an object")
        if info.get("family") != "inet":
            continue
        local, prefix = info.get("local"), info.get("prefixlen")
        try:
            if (
                not isinstance(local, str)
                or not isinstance(prefix, int)
                or isinstance(prefix, bool)
            ):
                raise ValueError
            addresses.append(str(ipaddress.IPv4Interface(f"{local}/{prefix}")))
        except ValueError:
            raise _refuse(host, "net", f"gives {name} the IPv4 address {str(local)[:40]!r}/"
                          f"{str(prefix)[:8]}") from None  # fmt: skip
    return InterfaceFacts(name, mtu, state.lower(), tuple(addresses))


def _sys_interface(host: str, line: str) -> InterfaceFacts | None:
    fields = line.split()
    if len(fields) != 3 or not INTERFACE_NAME.fullmatch(fields[0]):
        return None if len(fields) == 3 else _unreadable_line(host, line)
    name, mtu, state = fields
    if not mtu.isdigit() or len(mtu) > 7 or not re.fullmatch(r"[A-Za-z_]{1,20}", state):
        raise _refuse(host, "net", f"holds {line[:60]!r}, expected NAME MTU OPERSTATE")
    return InterfaceFacts(name, int(mtu), state.lower(), None)


def _unreadable_line(host: str, line: str) -> InterfaceFacts | None:
    if not line.strip():
        return None
    raise _refuse(host, "net", f"holds {line[:60]!r}, expected NAME MTU OPERSTATE")


def parse_interfaces(
    lines: list[str], host: str, recorded: bool
) -> tuple[InterfaceFacts, ...] | None:
    """The host's interfaces from ``ip -j addr`` (JSON) or, without iproute2, the
    ``NAME MTU OPERSTATE`` lines read from /sys/class/net (no addresses: ``ipv4`` None)."""
    if not recorded:
        return None
    text = _section_text(host, "net", lines)
    found: list[InterfaceFacts | None]
    if text.startswith("["):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise _refuse(host, "net", f"is not JSON: {text[:60]!r}") from None
        if not isinstance(data, list):
            raise _refuse(host, "net", "is JSON but not a list of interfaces")
        if len(data) > MAX_INTERFACES:
            raise _refuse(host, "net", f"lists {len(data)} interfaces, more than {MAX_INTERFACES}")
        found = [_ip_interface(host, item) for item in data]
    else:
        rows = text.splitlines()
        if len(rows) > MAX_INTERFACES:
            raise _refuse(host, "net", f"lists {len(rows)} interfaces, more than {MAX_INTERFACES}")
        found = [_sys_interface(host, row) for row in rows]
    return tuple(f for f in found if f is not None)


def parse_rdma(
    lines: list[str], host: str, recorded: bool
) -> tuple[tuple[RdmaPortFacts, ...] | None, bool | None]:
    """RDMA ports (``port|DEV|PORT|N: STATE|LINK_LAYER`` lines, their netdevs from
    ``net|DEV|IFNAME``) and whether nvidia_peermem is loaded (``peermem|yes``)."""
    if not recorded:
        return None, None
    rows = _section_text(host, "rdma", lines).splitlines()
    if len(rows) > 2 * MAX_RDMA_PORTS + 1:
        raise _refuse(host, "rdma", f"has {len(rows)} lines, more than {2 * MAX_RDMA_PORTS + 1}")
    ports: list[tuple[str, int, str, str]] = []
    netdevs: dict[str, list[str]] = {}
    peermem: bool | None = None
    for row in rows:
        fields = row.strip().split("|")
        if fields[0] == "port" and len(fields) == 5:
            _, device, port, state, layer = fields
            word = state.partition(":")[2].strip() if ":" in state else state.strip()
            if (not _RDMA_NAME.fullmatch(device) or not port.isdigit() or len(port) > 4
                    or not re.fullmatch(r"[A-Z_]{1,20}", word)):  # fmt: skip
                raise _refuse(
                    host, "rdma", f"holds {row[:80]!r}, expected port|DEVICE|N|N: STATE|LAYER"
                )
            layer = layer.strip() if re.fullmatch(r"[A-Za-z]{1,20}", layer.strip()) else "unknown"
            ports.append((device, int(port), word, layer))
        elif fields[0] == "net" and len(fields) == 3 and _RDMA_NAME.fullmatch(fields[1]):
            if INTERFACE_NAME.fullmatch(fields[2]):
                netdevs.setdefault(fields[1], []).append(fields[2])
        elif fields[0] == "peermem" and len(fields) == 2 and fields[1] in ("yes", "no"):
            peermem = fields[1] == "yes"
        elif row.strip():
            raise _refuse(
                host, "rdma", f"holds {row[:80]!r}, expected port|, net| or peermem| lines"
            )
    return (
        tuple(
            RdmaPortFacts(d, p, s, layer, tuple(sorted(netdevs.get(d, []))))
            for d, p, s, layer in ports
        ),
        peermem,
    )


def parse_compilers(lines: list[str], recorded: bool) -> tuple[str, ...] | None:
    """Which of ``PROBED_COMPILERS`` the ``@@cc`` section names (None: not recorded)."""
    if not recorded:
        return None
    return tuple(sorted({line.strip() for line in lines[:16]} & set(PROBED_COMPILERS)))


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


def parse_facts_output(
    text: str, host: str, *, clock_window: tuple[float, float] | None = None
) -> HostFacts:
    """``HostFacts`` of ``host`` (the inventory's name) from the output of ``facts_script()``;
    ``clock_window``: the deployer's ``time.time()`` before and after the call that printed
    it (the host's clock offset is recorded only with it)."""
    sections = split_sections(text, host)
    rdma_ports, peermem = parse_rdma(sections.get("rdma", []), host, "rdma" in sections)
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
        interfaces=parse_interfaces(sections.get("net", []), host, "net" in sections),
        rdma_ports=rdma_ports,
        nvidia_peermem=peermem,
        compilers=parse_compilers(sections.get("cc", []), "cc" in sections),
        clock=parse_clock(sections.get("clock", []), host, clock_window),
        gpu=_gpu(host, sections),
    )
