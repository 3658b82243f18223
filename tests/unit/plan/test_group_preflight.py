"""The group preflight on recorded facts: three H100 hosts that agree, then each way one of
them can disagree (GPU count or model, driver, CUDA, interface, MTU, clock, RDMA, compiler).

The hosts are the recorded ``h100x8`` facts (``tests/fixtures/facts``) with the network,
RDMA, compiler and clock facts the remote facts script records set on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from appliance.detect.facts import ClockFacts, HostFacts, InterfaceFacts, RdmaPortFacts
from appliance.errors import DoesNotFitError, GroupRefusedError
from appliance.exitcodes import ExitCode
from appliance.plan.group_preflight import (
    CLOCK_BOUND_MS,
    check_group,
    group_network,
    group_problems,
    refuse_group,
)
from appliance.plan.inventory import GroupEntry
from appliance.plan.profiles import Profile

from .conftest import facts

HOSTS = ("dgx-a", "dgx-b", "dgx-c")
ENTRY = GroupEntry(name="llm", hosts=list(HOSTS), interface="ens1f0")


def ib_port(state: str = "ACTIVE") -> RdmaPortFacts:
    return RdmaPortFacts("mlx5_0", 1, state, "InfiniBand", ("ens1f0",))


def member(index: int, **changes: object) -> HostFacts:
    base = facts("h100x8")[0]
    host = dataclasses.replace(
        base,
        hostname=HOSTS[index],
        interfaces=(
            InterfaceFacts("lo", 65536, "unknown", ("127.0.0.1/8",)),
            InterfaceFacts("eno1", 1500, "up", (f"192.0.2.{10 + index}/24",)),
            InterfaceFacts("ens1f0", 9000, "up", (f"10.10.0.{10 + index}/24", "10.10.0.99/24")),
        ),
        rdma_ports=(ib_port(),),
        nvidia_peermem=True,
        compilers=("g++", "gcc"),
        clock=ClockFacts(offset_ms=0, uncertainty_ms=40),
    )
    return dataclasses.replace(host, **changes)  # type: ignore[arg-type]


def group(**worker_changes: object) -> dict[str, HostFacts]:
    """The three hosts, the last one (``dgx-c``) with ``worker_changes``."""
    return {"dgx-a": member(0), "dgx-b": member(1), "dgx-c": member(2, **worker_changes)}


def with_interface(index: int, **changes: object) -> tuple[InterfaceFacts, ...]:
    interfaces = member(index).interfaces
    assert interfaces is not None
    return tuple(
        dataclasses.replace(i, **changes) if i.name == "ens1f0" else i  # type: ignore[arg-type]
        for i in interfaces
    )


def gpus(index: int, **changes: object) -> object:
    report = member(index).gpu
    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def test_three_hosts_that_agree_pass_and_meet_on_the_groups_interface(
    profiles: dict[str, Profile],
) -> None:
    hosts = group()
    assert check_group(ENTRY, hosts, profiles["h100-cluster"]) == []
    network = group_network(ENTRY, hosts)
    assert (network.name, network.hosts, network.interface) == ("llm", HOSTS, "ens1f0")
    # The first (primary) IPv4 address of the interface, without its prefix.
    assert network.addresses == ("10.10.0.10", "10.10.0.11", "10.10.0.12")
    assert (network.head, network.head_address) == ("dgx-a", "10.10.0.10")
    assert (network.master_port, network.port_range) == (29501, (40000, 44095))
    assert network.rank_of("dgx-c") == 2


def test_the_head_is_the_first_host_the_inventory_names(profiles: dict[str, Profile]) -> None:
    entry = GroupEntry(name="llm", hosts=["dgx-c", "dgx-a"], interface="ens1f0")
    network = group_network(entry, group())
    assert (network.head, network.addresses) == ("dgx-c", ("10.10.0.12", "10.10.0.10"))


def _fewer_gpus() -> dict[str, object]:
    report = member(2).gpu
    return {"gpu": dataclasses.replace(report, gpus=report.gpus[:4])}


def _other_model() -> dict[str, object]:
    report = member(2).gpu
    renamed = tuple(dataclasses.replace(g, name="NVIDIA H100 PCIe") for g in report.gpus)
    return {"gpu": dataclasses.replace(report, gpus=renamed)}


# (worker changes, the check, words the sentence must hold besides the hosts)
DISAGREEMENTS: dict[str, tuple[Callable[[], dict[str, object]], str, tuple[str, ...]]] = {
    "gpu-count": (_fewer_gpus, "gpu", ("different GPU counts", "dgx-a, dgx-b: 8 GPU(s)",
                                       "dgx-c: 4 GPU(s)")),
    "gpu-model": (_other_model, "gpu", ("different GPU models", "8x NVIDIA H100 80GB HBM3",
                                        "dgx-c: 8x NVIDIA H100 PCIe")),
    "driver": (lambda: {"gpu": gpus(2, driver_version="535.161.08")}, "driver",
               ("dgx-a, dgx-b: 550.54.15", "dgx-c: 535.161.08", "same driver")),
    "cuda": (lambda: {"gpu": gpus(2, cuda_driver_version="12.2")}, "cuda",
             ("CUDA", "dgx-a, dgx-b: 12.4", "dgx-c: 12.2")),
    "mtu": (lambda: {"interfaces": with_interface(2, mtu=1500)}, "mtu",
            ("ens1f0 has different MTUs", "dgx-a, dgx-b: 9000", "dgx-c: 1500", "same MTU")),
    "interface-missing": (lambda: {"interfaces": member(2).interfaces[:2]},  # type: ignore[index]
                          "interface", ("dgx-c has no interface 'ens1f0'", "it has: lo, eno1")),
    "interface-down": (lambda: {"interfaces": with_interface(2, operstate="down")}, "interface",
                       ("dgx-c: interface ens1f0 is down", "ip link set ens1f0 up")),
    "interface-no-ipv4": (lambda: {"interfaces": with_interface(2, ipv4=())}, "interface",
                          ("dgx-c: interface ens1f0 has no IPv4 address",)),
    "interface-addresses-unknown": (lambda: {"interfaces": with_interface(2, ipv4=None)},
                                    "interface", ("addresses of ens1f0 are unknown", "iproute2")),
    "interfaces-not-recorded": (lambda: {"interfaces": None}, "interface",
                                ("dgx-c: its facts do not list network interfaces",)),
    "clock-beyond-bound": (lambda: {"clock": ClockFacts(offset_ms=-5000, uncertainty_ms=40)},
                           "clock", ("clock of dgx-c is 5000 ms behind the head dgx-a",
                                     "± 80 ms", f"bound {CLOCK_BOUND_MS} ms", "chrony")),
    "rdma-absent": (lambda: {"rdma_ports": ()}, "rdma",
                    ("dgx-c has no RDMA device", "h100-cluster requires one", "sockets")),
    "rdma-down": (lambda: {"rdma_ports": (ib_port("DOWN"), dataclasses.replace(
        ib_port("INIT"), device="mlx5_1"))}, "rdma",
        ("dgx-c: no RDMA port is ACTIVE (mlx5_0/1 DOWN, mlx5_1/1 INIT)",)),
    "rdma-not-recorded": (lambda: {"rdma_ports": None}, "rdma",
                          ("dgx-c: its facts do not list RDMA devices",)),
    "no-c-compiler": (lambda: {"compilers": ()}, "compiler",
                      ("dgx-c has no C compiler on PATH (clang or gcc)", "enforce_eager")),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_each_disagreement_is_one_problem_naming_the_host_and_values(
    profiles: dict[str, Profile], case: str
) -> None:
    changes, check, words = DISAGREEMENTS[case]
    problems = group_problems(ENTRY, group(**changes()), profiles["h100-cluster"])
    assert [p.check for p in problems] == [check], [p.text for p in problems]
    (text,) = check_group(ENTRY, group(**changes()), profiles["h100-cluster"])
    assert text.startswith("group llm: ") and "dgx-c" in text
    for word in words:
        assert word in text


def test_a_clock_offset_within_the_measurements_uncertainty_is_not_refused(
    profiles: dict[str, Profile],
) -> None:
    # 1.8 s apart, but each offset is only known to +-500 ms: 1000 + 1000 ms of slack.
    hosts = group(clock=ClockFacts(offset_ms=1800, uncertainty_ms=500))
    hosts["dgx-a"] = dataclasses.replace(hosts["dgx-a"], clock=ClockFacts(0, 500))
    assert check_group(ENTRY, hosts, profiles["h100-cluster"]) == []
    # The same 1.8 s measured precisely: refused, the worker named ahead of the head.
    hosts["dgx-a"] = dataclasses.replace(hosts["dgx-a"], clock=ClockFacts(0, 100))
    hosts["dgx-c"] = dataclasses.replace(hosts["dgx-c"], clock=ClockFacts(1800, 100))
    (text,) = check_group(ENTRY, hosts, profiles["h100-cluster"])
    assert "dgx-c is 1800 ms ahead of the head dgx-a's" in text
    # A looser bound passes it; clocks not recorded (older facts) are not checked.
    assert check_group(ENTRY, hosts, profiles["h100-cluster"], clock_bound_ms=2000) == []
    assert check_group(ENTRY, group(clock=None), profiles["h100-cluster"]) == []


def test_rdma_is_checked_only_where_the_profile_requires_it(profiles: dict[str, Profile]) -> None:
    cluster = profiles["h100-cluster"]
    assert cluster.match.gpu is not None and cluster.match.gpu.rdma == "required"
    optional = cluster.model_copy(
        update={"match": cluster.match.model_copy(
            update={"gpu": cluster.match.gpu.model_copy(update={"rdma": "optional"})})}
    )  # fmt: skip
    assert check_group(ENTRY, group(rdma_ports=()), optional) == []
    assert profiles["a100-single"].match.gpu is not None
    assert profiles["a100-single"].match.gpu.rdma == "optional"  # the default


def test_compilers_are_checked_only_for_compiled_vllm_and_when_recorded(
    profiles: dict[str, Profile],
) -> None:
    cluster = profiles["h100-cluster"]
    eager = cluster.model_copy(
        update={"engine": cluster.engine.model_copy(update={"enforce_eager": True})}
    )
    assert check_group(ENTRY, group(compilers=()), eager) == []
    assert check_group(ENTRY, group(compilers=None), cluster) == []  # not recorded
    # CUDA vLLM needs a C compiler (Triton); clang alone is one.
    assert check_group(ENTRY, group(compilers=("clang",)), cluster) == []
    # vLLM's CPU build compiled (PP across nodes needs it) compiles C++ too (inductor: g++).
    cpu_eager = profiles["cpu-vllm"]
    assert check_group(ENTRY, group(compilers=()), cpu_eager) == []  # the shipped one is eager
    cpu = cpu_eager.model_copy(
        update={"engine": cpu_eager.engine.model_copy(update={"enforce_eager": False})}
    )
    (text,) = check_group(ENTRY, group(compilers=("gcc",)), cpu)
    assert "dgx-c has no C++ compiler on PATH (g++)" in text
    # GPU checks do not apply to a CPU profile: different GPUs pass there.
    assert check_group(ENTRY, group(**_fewer_gpus()), cpu) == []


def test_a_member_without_facts_refuses_the_group(profiles: dict[str, Profile]) -> None:
    hosts = group()
    del hosts["dgx-b"]
    (problem,) = group_problems(ENTRY, hosts, profiles["h100-cluster"])
    assert problem.check == "facts" and not problem.forceable
    assert "no facts for dgx-b" in problem.text
    with pytest.raises(GroupRefusedError, match="no facts for dgx-b"):
        group_network(ENTRY, hosts)


def test_group_network_refuses_naming_every_host_and_the_interface() -> None:
    hosts = group(interfaces=with_interface(2, operstate="lowerlayerdown"))
    hosts["dgx-b"] = dataclasses.replace(hosts["dgx-b"], interfaces=with_interface(1, ipv4=()))
    with pytest.raises(GroupRefusedError) as caught:
        group_network(ENTRY, hosts)
    message = str(caught.value)
    assert message.startswith(
        "group llm (dgx-a, dgx-b, dgx-c; head dgx-a) cannot serve: 2 problem(s)"
    )
    assert "dgx-b: interface ens1f0 has no IPv4 address" in message
    assert "dgx-c: interface ens1f0 is lowerlayerdown, expected up" in message
    assert caught.value.exit_code == ExitCode.DOES_NOT_FIT
    assert isinstance(caught.value, DoesNotFitError)


def test_force_passes_only_clock_and_rdma_problems(profiles: dict[str, Profile]) -> None:
    cluster = profiles["h100-cluster"]
    slow = group_problems(ENTRY, group(rdma_ports=(), clock=ClockFacts(9000, 10)), cluster)
    assert sorted(p.check for p in slow) == ["clock", "rdma"]
    refuse_group(ENTRY, slow, force=True)  # passes
    with pytest.raises(GroupRefusedError) as caught:
        refuse_group(ENTRY, slow, force=False)
    assert caught.value.hint is not None and "--force" in caught.value.hint
    mtu = group_problems(ENTRY, group(interfaces=with_interface(2, mtu=1500)), cluster)
    with pytest.raises(GroupRefusedError) as caught:
        refuse_group(ENTRY, [*slow, *mtu], force=True)
    assert caught.value.hint is not None and "--force does not pass them" in caught.value.hint
    assert "3 problem(s)" in str(caught.value)
    refuse_group(ENTRY, [], force=False)  # nothing to refuse
