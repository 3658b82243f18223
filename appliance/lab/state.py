"""Where a lab keeps its state, and the lab record (``lab.json``) itself.

Per lab ``NAME``:

- ``/run/appliance/lab/NAME/`` (small, gone at reboot with the namespaces it
  describes): ``lab.json``, the lab's SSH key pair (private key 0600),
  ``known_hosts``, ``inventory.yml``, ``ansible-inventory.ini``, one boot log
  per host under ``logs/``.
- ``/var/lib/appliance/lab/NAME/HOST/``: each host's disk, an overlay
  (``upper``, ``work``, mounted at ``root``) on the cached image. On disk, not
  in /run, because a deployment writes hundreds of megabytes onto a host.

Invariants: ``lab.json`` is written before anything is created and rewritten
(atomically) as hosts start, so teardown can find everything a half-created
lab made; the record is plain data, read back without trusting its names or
paths (``load_lab`` recomputes them from the lab name and index, the same
way ``appliance.lab.network.plan_network`` made them).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance.errors import InputError
from appliance.input_files import parse_json, read_input
from appliance.lab.errors import LabError

STATE_ROOT = Path("/run/appliance/lab")
DISK_ROOT = Path("/var/lib/appliance/lab")
Status = Literal["creating", "up"]


@dataclass(frozen=True, slots=True)
class LabPaths:
    """The roots a lab lives under (tests and unusual machines may move them)."""

    state_root: Path = STATE_ROOT
    disk_root: Path = DISK_ROOT

    def state_dir(self, name: str) -> Path:
        return self.state_root / name

    def disk_dir(self, name: str) -> Path:
        return self.disk_root / name


@dataclass(frozen=True, slots=True)
class LabHost:
    name: str
    address: str
    netns: str
    veth: str
    disk: Path  # overlay directory: upper/, work/, root/ (the mounted tree nspawn boots)
    log: Path
    pid: int | None = None  # systemd-nspawn, leader of its own session


@dataclass(frozen=True, slots=True)
class Lab:
    name: str
    status: Status
    index: int
    subnet: str
    bridge: str
    gateway: str
    rootfs: str
    state_dir: Path
    key: Path
    known_hosts: Path
    inventory: Path
    ansible_inventory: Path
    created: str
    hosts: tuple[LabHost, ...] = field(default_factory=tuple)

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(
            f"lab {self.name} has no host {name!r}; it has {', '.join(h.name for h in self.hosts)}"
        )


def lab_files(paths: LabPaths, name: str) -> dict[str, Path]:
    state = paths.state_dir(name)
    return {
        "state_dir": state,
        "key": state / "id_ed25519",
        "known_hosts": state / "known_hosts",
        "inventory": state / "inventory.yml",
        "ansible_inventory": state / "ansible-inventory.ini",
    }


def lab_to_json(lab: Lab) -> dict[str, Any]:
    data = asdict(lab)
    data["hosts"] = [asdict(h) for h in lab.hosts]
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))  # Paths as strings
    return result


def lab_from_json(data: dict[str, Any], paths: LabPaths) -> Lab:
    """The record as a ``Lab``; names and paths are recomputed from the lab name and index.

    Teardown deletes what these name, so a damaged record must not be able to
    point it at the machine's own interfaces or directories.
    """
    name = str(data["name"])
    index = int(data["index"])
    hosts = tuple(
        LabHost(
            name=f"{name}-{n}",
            address=str(h["address"]),
            netns=f"applab-{name}-{n}",
            veth=f"applab{index}h{n}",
            disk=paths.disk_dir(name) / f"{name}-{n}",
            log=paths.state_dir(name) / "logs" / f"{name}-{n}.log",
            pid=int(h["pid"]) if h.get("pid") is not None else None,
        )
        for n, h in enumerate(data["hosts"], start=1)
    )
    files = lab_files(paths, name)
    return Lab(
        name=name,
        status="up" if data.get("status") == "up" else "creating",
        index=index,
        subnet=str(data["subnet"]),
        bridge=f"applab{index}",
        gateway=str(data["gateway"]),
        rootfs=str(data["rootfs"]),
        created=str(data.get("created", "")),
        hosts=hosts,
        **files,
    )


def save_lab(lab: Lab) -> None:
    """Write ``lab.json`` atomically (a reader sees the old or the new record, never half)."""
    lab.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = lab.state_dir / "lab.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(lab_to_json(lab), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, target)


def load_lab(paths: LabPaths, name: str) -> Lab | None:
    """The lab's record, or None if there is none (or it is unreadable)."""
    try:
        record = read_input(paths.state_dir(name) / "lab.json", "lab record", limit="state")
        return lab_from_json(parse_json(record, "lab record"), paths)
    except (InputError, ValueError, KeyError, TypeError):
        return None


def lab_names(paths: LabPaths) -> list[str]:
    """Labs with a state or disk directory (a record may be missing after a crash)."""
    names: set[str] = set()
    for root in (paths.state_root, paths.disk_root):
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(names)
