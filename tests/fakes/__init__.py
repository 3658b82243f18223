"""In-memory stand-ins for host IO, used by unit tests and fixture generation.

``fake_pynvml.FakePynvml`` replays recorded NVML answers; ``fixed_probe``
returns a ``HostProbe`` with fixed psutil/os numbers. Both are FAKES: nothing
here touches the real machine.
"""

from __future__ import annotations

from appliance.detect.host import HostProbe

GiB = 1024**3
DEFAULT_EXISTING = frozenset({"/", "/opt", "/var", "/var/lib", "/var/log"})


def fixed_probe(
    *,
    logical: int | None = 32,
    physical: int | None = 16,
    ram: int = 128 * GiB,
    available: int = 120 * GiB,
    existing: frozenset[str] = DEFAULT_EXISTING,
    disk: tuple[int, int] = (2000 * GiB, 1500 * GiB),
    failing_disks: frozenset[str] = frozenset(),
    hostname: str = "ws-test",
) -> HostProbe:
    """A FAKE HostProbe with fixed numbers; paths in ``failing_disks`` raise OSError."""

    def disk_usage(path: str) -> tuple[int, int]:
        if path in failing_disks:
            raise PermissionError(13, "Permission denied", path)
        return disk

    return HostProbe(
        cpu_count=lambda is_logical: logical if is_logical else physical,
        memory=lambda: (ram, available),
        disk_usage=disk_usage,
        path_exists=lambda path: path in existing,
        hostname=lambda: hostname,
        system=lambda: "Linux",
        kernel=lambda: "6.8.0-45-generic",
        machine=lambda: "x86_64",
        python_version=lambda: "3.11.9",
    )
