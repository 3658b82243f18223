"""parse_cpuinfo on recorded /proc/cpuinfo texts (x86 and aarch64)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.detect.cpu import parse_cpuinfo

CPUINFO = Path(__file__).resolve().parents[2] / "fixtures" / "cpuinfo"

SPR = (
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx",
    "avx2",
    "avx512_bf16",
    "avx512_vnni",
    "avx512bw",
    "avx512f",
    "avx512vl",
    "avx_vnni",
    "f16c",
    "fma",
    "sse3",
    "ssse3",
)
ZEN3 = ("avx", "avx2", "f16c", "fma", "sse3", "ssse3")


@pytest.mark.parametrize(
    ("name", "model", "flags"),
    [
        ("xeon-platinum-8480plus.txt", "Intel(R) Xeon(R) Platinum 8480+", SPR),
        ("xeon-platinum-8462yplus.txt", "Intel(R) Xeon(R) Platinum 8462Y+", SPR),
        ("epyc-7313p.txt", "AMD EPYC 7313P 16-Core Processor", ZEN3),
        ("ryzen-9-5950x.txt", "AMD Ryzen 9 5950X 16-Core Processor", ZEN3),
        ("neoverse-v1.txt", "ARM Neoverse-V1", ("asimd", "dotprod", "i8mm", "sve")),
    ],
)
def test_recorded_cpuinfo(name: str, model: str, flags: tuple[str, ...]) -> None:
    assert parse_cpuinfo((CPUINFO / name).read_text("utf-8")) == (model, flags)


def test_flags_are_sorted_and_filtered() -> None:
    _, flags = parse_cpuinfo("model name\t: X\nflags\t\t: sse2 avx2 fpu avx sha_ni\n")
    assert flags == ("avx", "avx2")


def test_sse3_is_reported_under_its_kernel_name_pni() -> None:
    assert parse_cpuinfo("flags : pni ssse3\n")[1] == ("sse3", "ssse3")


def test_vmx_flags_line_is_not_mistaken_for_flags() -> None:
    text = "model name : X\nflags : avx\nvmx flags : avx2 fma\n"
    assert parse_cpuinfo(text)[1] == ("avx",)


def test_only_flags_every_core_has_are_kept() -> None:
    # A hybrid part where one core lacks AVX-512 must not advertise it.
    text = (
        "processor : 0\nmodel name : Hybrid\nflags : avx avx2 avx512f\n\n"
        "processor : 1\nmodel name : Hybrid\nflags : avx avx2\n"
    )
    assert parse_cpuinfo(text) == ("Hybrid", ("avx", "avx2"))


def test_aarch64_without_model_name_uses_implementer_and_part() -> None:
    text = "processor\t: 0\nFeatures\t: fp asimd sve2 asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd4f\n"
    assert parse_cpuinfo(text) == ("ARM Neoverse-V2", ("asimd", "dotprod", "sve2"))


def test_unknown_arm_part_is_named_by_its_ids() -> None:
    text = "processor : 0\nFeatures : fp asimd\nCPU implementer : 0xc0\nCPU part : 0xac3\n"
    assert parse_cpuinfo(text) == ("ARM implementer 0xc0 part 0xac3", ("asimd",))


def test_model_name_whitespace_is_normalised() -> None:
    assert parse_cpuinfo("model name : Intel(R)  Xeon(R)   CPU\n")[0] == "Intel(R) Xeon(R) CPU"


@pytest.mark.parametrize("text", ["", "\n\n", "garbage without colons\n"])
def test_empty_or_unrecognised_text(text: str) -> None:
    assert parse_cpuinfo(text) == ("unknown", ())
