"""Prove a wheel set resolves for its target without downloading it (connected side).

A CUDA vLLM wheel set runs to several GB. ``resolve_wheels(spec)`` asks pip
what it would install for the recipe's target Python and platforms, from the
recipe's indexes only (``sources.index_options``, ``sources._pip_env``: no
machine pip.conf), and reads pip's JSON installation report::

    pip install --dry-run --ignore-installed --only-binary=:all: --no-cache-dir
        --use-feature=fast-deps --python-version 3.11 --implementation cp --abi cp311
        --platform TAG ... --target TMP --report TMP/report.json [indexes] -- REQS

The result is the resolved pins and the torch build among them, checked by
the same rules as a built set (``torch_variant.torch_build``: a mix of torch
builds is refused).

Invariants:
- Metadata only. pip reads each wheel's metadata from the index (PEP 658
  ``.metadata`` files) or, where an index serves none, with HTTP range
  requests (``fast-deps``); pip older than ``MIN_PIP`` downloads every wheel
  in a dry run (pypa/pip#12603, fixed by pypa/pip#13482) and is refused.
- Bounded: pip runs with ``TMPDIR`` in a private directory whose allocated
  bytes are watched; past ``max_download_bytes`` pip is stopped and the
  resolve refused (an index that serves neither metadata files nor ranges
  would otherwise pull GBs). The report is read up to ``REPORT_MAX_BYTES``.
- Nothing is left behind: the temporary directory is removed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.connected.recipe import WheelsSpec
from appliance.bundle.connected.sources import _pip_env, canonical_name, index_options
from appliance.bundle.connected.torch_variant import WheelInfo, torch_build
from appliance.bundle.payload import TorchBuild
from appliance.errors import BundleBuildError

MIN_PIP = (25, 3)  # the first pip whose dry run does not download wheels it has metadata for
REPORT_MAX_BYTES = 16 * 1024 * 1024  # a vLLM CUDA report is ~1 MB
DOWNLOAD_MAX_BYTES = 512 * 1024 * 1024  # what pip may hold in its temporary directory
RESOLVE_TIMEOUT_S = 900
POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class ResolvedSet:
    """What pip would install for a wheel set's target."""

    pins: list[str]  # name==version, sorted by name
    torch: TorchBuild | None
    infos: list[WheelInfo]
    downloaded_bytes: int  # the most pip held in its temporary directory at once


def pip_resolve_command(spec: WheelsSpec, target: Path, report: Path, *, python: str) -> list[str]:
    """The dry-run command line; every value comes from the recipe (which refuses credentials)."""
    cmd = [
        python, "-m", "pip", "install", "--dry-run", "--ignore-installed",
        "--only-binary=:all:", "--no-cache-dir", "--use-feature=fast-deps",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--python-version", spec.python, "--implementation", "cp", "--abi", spec.abi,
    ]  # fmt: skip
    for platform in spec.platforms:
        cmd += ["--platform", platform]
    cmd += index_options(spec)
    cmd += ["--target", str(target), "--report", str(report), "--", *spec.requirements]
    return cmd


def pip_version(python: str, *, timeout: float = 60) -> tuple[int, ...]:
    """The version of ``python -m pip``, as numbers."""
    try:
        result = subprocess.run(
            [python, "-m", "pip", "--version"],
            capture_output=True, text=True, env=_pip_env(), timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleBuildError(f"cannot run {python} -m pip --version: {exc}") from exc
    match = re.match(r"pip (\d+)\.(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise BundleBuildError(
            f"{python} -m pip --version failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-300:]}"
        )
    return int(match[1]), int(match[2])


def _allocated_bytes(root: Path) -> int:
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                continue  # pip removed it meanwhile
    return total


def _run_bounded(
    cmd: list[str], tmp: Path, *, timeout: float, max_bytes: int
) -> tuple[int, str, int]:
    """Run pip with TMPDIR=tmp; (exit code, its output's tail, most bytes held in tmp)."""
    env = _pip_env() | {"TMPDIR": str(tmp)}
    log = tmp.parent / "pip.log"
    deadline = time.monotonic() + timeout
    peak = 0
    with log.open("w+b") as output:
        try:
            process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise BundleBuildError(f"cannot run {cmd[0]} -m pip: {exc.strerror or exc}") from exc
        try:
            while process.poll() is None:
                peak = max(peak, _allocated_bytes(tmp))
                if peak > max_bytes:
                    raise BundleBuildError(
                        f"pip's dry run held {peak} bytes of downloads (more than "
                        f"{max_bytes}): an index serves whole wheels instead of their metadata; "
                        "stopped it",
                        hint="Use indexes that serve PEP 658 metadata files or answer HTTP range "
                        "requests (PyPI does both), or build the set for real.",
                    )
                if time.monotonic() > deadline:
                    raise BundleBuildError(f"pip's dry run did not finish within {timeout:.0f} s")
                time.sleep(POLL_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output.seek(0)
        text = output.read().decode("utf-8", "replace")
    tail = "\n".join(text.strip().splitlines()[-12:])
    return process.returncode, tail, peak


def parse_report(data: bytes, where: str) -> list[WheelInfo]:
    """The distributions of pip's installation report (``--report``), as ``WheelInfo``."""
    try:
        report = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleBuildError(f"{where}: not valid JSON: {exc}") from exc
    install = report.get("install") if isinstance(report, dict) else None
    if not isinstance(install, list):
        raise BundleBuildError(f"{where}: expected pip's report with an `install` list")
    infos = []
    for index, item in enumerate(install):
        meta: Any = item.get("metadata") if isinstance(item, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        version = meta.get("version") if isinstance(meta, dict) else None
        requires = meta.get("requires_dist", []) if isinstance(meta, dict) else None
        if not (
            isinstance(name, str)
            and isinstance(version, str)
            and isinstance(requires, list)
            and all(isinstance(r, str) for r in requires)
        ):
            raise BundleBuildError(
                f"{where}: install[{index}] lacks metadata name, version or requires_dist"
            )
        infos.append(WheelInfo(name, version, tuple(requires), source="pip report"))
    return sorted(infos, key=lambda i: canonical_name(i.name))


def resolve_wheels(
    spec: WheelsSpec,
    *,
    python: str = sys.executable,
    timeout: float = RESOLVE_TIMEOUT_S,
    max_download_bytes: int = DOWNLOAD_MAX_BYTES,
) -> ResolvedSet:
    """What pip would install for ``spec``'s target, without downloading the wheels."""
    version = pip_version(python)
    if version < MIN_PIP:
        found = ".".join(map(str, version))
        need = ".".join(map(str, MIN_PIP))
        raise BundleBuildError(
            f"{python} -m pip is pip {found}; resolving without downloading needs pip {need} "
            f"or newer (older pips download every wheel in a dry run: GBs for a CUDA set)",
            hint=f"{python} -m pip install 'pip>={need}'",
        )
    with tempfile.TemporaryDirectory(prefix="appliance-resolve-") as work:
        tmp = Path(work) / "tmp"
        tmp.mkdir()
        report = Path(work) / "report.json"
        cmd = pip_resolve_command(spec, Path(work) / "target", report, python=python)
        code, tail, peak = _run_bounded(cmd, tmp, timeout=timeout, max_bytes=max_download_bytes)
        if code != 0:
            raise BundleBuildError(
                f"the wheel set does not resolve for python {spec.python}, platforms "
                f"{', '.join(spec.platforms)} (pip exit {code}):\n{tail}",
                hint="pip does not widen a manylinux_2_X tag to older ones: list every tag the "
                "target accepts (manylinux_2_X_x86_64 for each X up to the target's glibc); "
                "a torch variant outside PyPI needs its index in extra_index_urls.",
            )
        try:
            size = report.stat().st_size
            if size > REPORT_MAX_BYTES:
                raise BundleBuildError(
                    f"pip's report is {size} bytes; refusing more than {REPORT_MAX_BYTES}"
                )
            data = report.read_bytes()
        except OSError as exc:
            raise BundleBuildError(f"pip wrote no readable report: {exc}") from exc
    infos = parse_report(data, "pip's installation report")
    pins = [f"{i.name}=={i.version}" for i in infos]
    return ResolvedSet(pins=pins, torch=torch_build(infos), infos=infos, downloaded_bytes=peak)
