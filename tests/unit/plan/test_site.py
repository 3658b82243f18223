"""The site plan: each model-server host's part and command, from all hosts' facts and roles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.detect.facts import HostFacts
from appliance.errors import DoesNotFitError, GroupRefusedError, ProfileError
from appliance.model.info import ModelInfo
from appliance.plan.inventory import GroupEntry, HostEntry, Inventory, Role
from appliance.plan.profiles import Profile
from appliance.plan.report import build_plan
from appliance.plan.selection import resolve_profile
from appliance.plan.site import plan_site

from .conftest import facts, model

MISTRAL = "mistral-7b-instruct-v0.3"


def gguf() -> ModelInfo:
    """Mistral 7B as the Q4_K_M GGUF file a CPU host serves."""
    return dataclasses.replace(model(MISTRAL), format="gguf", name="mistral-7b-q4_k_m.gguf",
                               checkpoint_dtype="Q4_K_M")  # fmt: skip


def inventory(*hosts: tuple[str, list[Role]]) -> Inventory:
    return Inventory(
        schema_version=1,
        hosts=[
            HostEntry(name=n, address=f"10.0.0.{i}", roles=r) for i, (n, r) in enumerate(hosts, 2)
        ],
    )


def named(fixture: str, *names: str) -> dict[str, HostFacts]:
    """The fixture's hosts under the inventory's names (as the deploy reads them over SSH)."""
    hosts = facts(fixture)
    return {n: dataclasses.replace(h, hostname=n) for n, h in zip(names, hosts, strict=True)}


SERVING: list[Role] = ["model-server", "gateway"]


def test_one_host_serves_alone_with_the_plan_it_always_had(profiles: dict[str, Profile]) -> None:
    cpu = profiles["cpu-llamacpp"]
    site = plan_site(profiles, cpu, named("cpu-avx512", "a"), inventory(("a", SERVING)),
                     gguf(), gateway=True, keycloak=True)  # fmt: skip
    (part,) = site.parts
    assert (part.host, part.serves, part.gateway, part.keycloak) == ("a", "single", True, True)
    alone = build_plan(profiles, (named("cpu-avx512", "a")["a"],), facts_source="ssh a",
                       requested="cpu-llamacpp", model=gguf())  # fmt: skip
    assert part.plan == alone and part.command == alone.commands[0]
    assert site.groups == (("a",),) and site.part("a") is part


def test_without_a_site_file_no_gateway_nor_keycloak(profiles: dict[str, Profile]) -> None:
    site = plan_site(profiles, "auto", named("cpu-avx2", "a"), inventory(("a", ["model-server"])),
                     gguf())  # fmt: skip
    (part,) = site.parts
    assert (part.serves, part.gateway, part.keycloak) == ("single", False, False)
    assert part.plan.selection.profile.name == "cpu-llamacpp"


def test_several_model_servers_are_planned_each_from_its_own_facts(
    profiles: dict[str, Profile],
) -> None:
    hosts = named("cpu-avx2", "a") | named("cpu-avx512", "b")
    inv = inventory(("a", SERVING), ("gw", ["gateway"]), ("b", SERVING), ("kc", ["keycloak"]))
    site = plan_site(profiles, profiles["cpu-llamacpp"], hosts, inv, gguf(),
                     gateway=True, keycloak=True)  # fmt: skip
    assert [p.host for p in site.parts] == ["a", "b"]  # other roles alone get no part
    assert site.groups == (("a",), ("b",))
    for part in site.parts:
        assert part.serves == "single" and part.gateway and part.command.host == part.host
        assert [h.hostname for h in part.plan.hosts] == [part.host]
    # Its own facts: the threads follow each host's cores.
    threads = [p.command.argv[p.command.argv.index("--n_threads") + 1] for p in site.parts]
    assert threads == [str(hosts["a"].cpu.physical_cores), str(hosts["b"].cpu.physical_cores)]
    # One realm signs the site's tokens: Keycloak on the first serving host only.
    assert [p.keycloak for p in site.parts] == [True, False]


def test_a_host_left_out_of_the_facts_gets_no_part(profiles: dict[str, Profile]) -> None:
    inv = inventory(("a", SERVING), ("b", SERVING))
    site = plan_site(profiles, "auto", named("cpu-avx2", "b"), inv, gguf())
    assert [p.host for p in site.parts] == ["b"]


@pytest.mark.parametrize("requested", ["h100-cluster", "auto"])
def test_a_multi_node_profile_gives_a_head_and_a_worker(
    profiles: dict[str, Profile], requested: str
) -> None:
    hosts = named("h100x8-2nodes", "dgx-a", "dgx-b")
    inv = inventory(("dgx-a", SERVING), ("dgx-b", SERVING))
    site = plan_site(profiles, resolve_profile(profiles, requested), hosts, inv,
                     model("apertus-70b-instruct-2509"), gateway=True, keycloak=True)  # fmt: skip
    head, worker = site.parts
    assert (head.host, head.serves, worker.host, worker.serves) == (
        "dgx-a",
        "head",
        "dgx-b",
        "worker",
    )
    assert head.plan is worker.plan and site.groups == (("dgx-a", "dgx-b"),)
    assert head.plan.selection.profile.name == "h100-cluster"
    # vLLM's own multi-node launcher: `vllm serve` on both, the worker headless.
    assert head.command.argv[1] == worker.command.argv[1] == "-c"
    assert head.command.argv[3] == worker.command.argv[3] == "serve"
    assert head.command.argv[head.command.argv.index("--pipeline-parallel-size") + 1] == "2"
    assert "--headless" in worker.command.argv and "--headless" not in head.command.argv
    # Only the head listens: the gateway and Keycloak go there, not on the worker.
    assert (head.gateway, head.keycloak, worker.gateway, worker.keycloak) == (
        True,
        True,
        False,
        False,
    )


def test_a_multi_node_profile_on_one_host_serves_it_alone(profiles: dict[str, Profile]) -> None:
    hosts = named("h100x8", "dgx-a")
    site = plan_site(profiles, profiles["h100-cluster"], hosts, inventory(("dgx-a", SERVING)),
                     model("apertus-70b-instruct-2509"))  # fmt: skip
    (part,) = site.parts
    assert part.serves == "single"


def test_auto_on_hosts_no_profile_takes_together_plans_each_alone(
    profiles: dict[str, Profile],
) -> None:
    # An RTX 4090 workstation and an A100 server: no profile takes both, each gets its own.
    hosts = named("rtx4090", "ws") | named("a100-80gb", "a100")
    inv = inventory(("ws", SERVING), ("a100", SERVING))
    site = plan_site(profiles, "auto", hosts, inv, model(MISTRAL))
    assert [(p.host, p.serves) for p in site.parts] == [("ws", "single"), ("a100", "single")]
    assert [p.plan.selection.profile.name for p in site.parts] == ["rtx4090", "a100-single"]


def test_a_host_that_does_not_fit_is_refused_by_name(profiles: dict[str, Profile]) -> None:
    inv = inventory(("a", SERVING), ("b", SERVING))
    hosts = named("cpu-avx2", "a") | named("cpu-avx512", "b")
    with pytest.raises(DoesNotFitError, match=r"^a: the bundle's model does not fit profile "
                       r"cpu-llamacpp: ") as caught:  # fmt: skip
        plan_site(
            profiles, profiles["cpu-llamacpp"], hosts, inv, model("mixtral-8x22b-instruct-v0.1")
        )
    assert caught.value.hint and "--force" in caught.value.hint


def test_a_gpu_profile_on_a_cpu_host_has_no_command_even_when_forced(
    profiles: dict[str, Profile],
) -> None:
    hosts = named("cpu-avx2", "a")
    inv = inventory(("a", SERVING))
    with pytest.raises(DoesNotFitError, match="does not fit profile rtx4090"):
        plan_site(profiles, profiles["rtx4090"], hosts, inv, model(MISTRAL))
    with pytest.raises(
        DoesNotFitError, match=r"^a: no engine command could be planned for profile rtx4090$"
    ):
        plan_site(profiles, profiles["rtx4090"], hosts, inv, model(MISTRAL), force=True)


def test_forced_misfit_is_planned(profiles: dict[str, Profile]) -> None:
    hosts = named("cpu-avx2", "a")
    site = plan_site(profiles, profiles["cpu-llamacpp"], hosts, inventory(("a", SERVING)),
                     model("mixtral-8x22b-instruct-v0.1"), force=True)  # fmt: skip
    (part,) = site.parts
    assert not part.plan.fits and part.serves == "single"


def test_the_profile_is_resolved_once_and_an_unknown_one_refused(
    profiles: dict[str, Profile],
) -> None:
    assert resolve_profile(profiles, "auto") == "auto"
    assert resolve_profile(profiles, "cpu-llamacpp") is profiles["cpu-llamacpp"]
    with pytest.raises(ProfileError, match="unknown profile 'cpu-llama'") as caught:
        resolve_profile(profiles, "cpu-llama")
    assert caught.value.hint and "Did you mean 'cpu-llamacpp'?" in caught.value.hint


def test_adapters_are_checked_against_each_groups_profile_and_served_by_it(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    from appliance.compliance.findings import BaseIdentity
    from appliance.errors import AdapterRefusedError
    from appliance.plan.engine_args import argv_adapters
    from tests.unit.plan.test_adapters import GEMMA, make_adapter

    adapters = [make_adapter(tmp_path, "alpha"), make_adapter(tmp_path, "bravo")]
    identity = BaseIdentity("gemma-3-270m")
    hosts, inv = named("cpu-avx512", "a"), inventory(("a", SERVING))
    site = plan_site(profiles, profiles["cpu-vllm"], hosts, inv, GEMMA, adapters=adapters,
                     identity=identity)  # fmt: skip
    argv = site.part("a").command.argv
    assert argv_adapters(argv) == ("alpha", "bravo")
    assert argv[argv.index("--max-lora-rank") + 1 :][:5] == ("16", "--max-loras", "2",
                                                            "--max-cpu-loras", "2")  # fmt: skip
    # The same adapters on a llama.cpp profile: refused at plan time, naming each adapter.
    with pytest.raises(AdapterRefusedError) as refused:
        plan_site(profiles, profiles["cpu-llamacpp"], hosts, inv, gguf(), adapters=adapters,
                  identity=identity)  # fmt: skip
    assert refused.value.exit_code == 3
    assert "adapter 'alpha'" in refused.value.message and "adapter 'bravo'" in refused.value.message


# --- groups the inventory names --------------------------------------------------


def grouped_inventory(*hosts: tuple[str, list[Role]], groups: list[GroupEntry]) -> Inventory:
    return inventory(*hosts).model_copy(update={"groups": groups})


def test_an_inventory_group_plans_head_and_workers_on_the_groups_network(
    profiles: dict[str, Profile],
) -> None:
    from tests.unit.plan.test_group_preflight import member

    hosts = {"dgx-a": member(0), "dgx-b": member(1), "dgx-c": member(2)}
    entry = GroupEntry(name="llm", hosts=["dgx-b", "dgx-a"], interface="ens1f0", master_port=29600)
    inv = grouped_inventory(("dgx-a", SERVING), ("gw", ["gateway"]), ("dgx-b", SERVING),
                            ("dgx-c", SERVING), groups=[entry])  # fmt: skip
    site = plan_site(profiles, "auto", hosts, inv, model("apertus-70b-instruct-2509"),
                     gateway=True)  # fmt: skip
    assert [p.host for p in site.parts] == ["dgx-a", "dgx-b", "dgx-c"]  # inventory order
    a, b, c = site.parts
    # The inventory's head (dgx-b) leads, though the inventory lists dgx-a first.
    assert (b.serves, a.serves) == ("head", "worker") and site.groups[0] == ("dgx-b", "dgx-a")
    assert a.group is b.group and a.group is not None
    assert (a.group.head, a.group.head_address) == ("dgx-b", "10.10.0.11")
    assert a.group.addresses == ("10.10.0.11", "10.10.0.10")
    assert (a.grouping, b.grouping) == ("inventory", "inventory")
    assert a.plan is b.plan and a.plan.selection.profile.name == "h100-cluster"
    # The engine commands got the network: each member's own address, the head's to meet at.
    assert (a.command.env["VLLM_HOST_IP"], b.command.env["VLLM_HOST_IP"]) == (
        "10.10.0.10", "10.10.0.11")  # fmt: skip
    assert "10.10.0.11" in a.command.argv and "--headless" in a.command.argv
    # A host in no group is planned alone, from its own facts.
    assert (c.serves, c.group, c.grouping) == ("single", None, "alone")
    assert [h.hostname for h in c.plan.hosts] == ["dgx-c"] and site.groups[1:] == (("dgx-c",),)
    assert [p.gateway for p in site.parts] == [False, True, True]


def test_without_inventory_groups_the_implicit_group_is_visible(
    profiles: dict[str, Profile],
) -> None:
    hosts = named("h100x8-2nodes", "dgx-a", "dgx-b")
    inv = inventory(("dgx-a", SERVING), ("dgx-b", SERVING))
    site = plan_site(profiles, profiles["h100-cluster"], hosts, inv,
                     model("apertus-70b-instruct-2509"))  # fmt: skip
    assert [(p.serves, p.group, p.grouping) for p in site.parts] == [
        ("head", None, "implicit"), ("worker", None, "implicit")]  # fmt: skip


def test_an_inventory_group_whose_members_disagree_is_refused_before_any_plan(
    profiles: dict[str, Profile],
) -> None:
    from tests.unit.plan.test_group_preflight import member, with_interface

    hosts = {"dgx-a": member(0), "dgx-b": member(1, interfaces=with_interface(1, mtu=1500),
                                                   rdma_ports=())}  # fmt: skip
    entry = GroupEntry(name="llm", hosts=["dgx-a", "dgx-b"], interface="ens1f0")
    inv = grouped_inventory(("dgx-a", SERVING), ("dgx-b", SERVING), groups=[entry])
    apertus = model("apertus-70b-instruct-2509")
    for force in (False, True):  # an MTU mismatch is not forceable
        with pytest.raises(GroupRefusedError) as caught:
            plan_site(profiles, profiles["h100-cluster"], hosts, inv, apertus, force=force)
        assert "2 problem(s)" in str(caught.value) and "different MTUs" in str(caught.value)
        assert "dgx-b has no RDMA device" in str(caught.value)
    # RDMA alone is: --force plans the group (NCCL over sockets, slower).
    hosts["dgx-b"] = member(1, rdma_ports=())
    with pytest.raises(GroupRefusedError, match="no RDMA device"):
        plan_site(profiles, profiles["h100-cluster"], hosts, inv, apertus)
    site = plan_site(profiles, profiles["h100-cluster"], hosts, inv, apertus, force=True)
    assert [p.serves for p in site.parts] == ["head", "worker"]


def test_an_inventory_group_with_a_member_without_facts_is_refused(
    profiles: dict[str, Profile],
) -> None:
    from tests.unit.plan.test_group_preflight import member

    entry = GroupEntry(name="llm", hosts=["dgx-a", "dgx-b"], interface="ens1f0")
    inv = grouped_inventory(("dgx-a", SERVING), ("dgx-b", SERVING), groups=[entry])
    with pytest.raises(GroupRefusedError, match="no facts for dgx-b") as caught:
        plan_site(profiles, "auto", {"dgx-a": member(0)}, inv, model("apertus-70b-instruct-2509"),
                  force=True)  # fmt: skip
    assert caught.value.exit_code == 3


def test_an_inventory_group_on_a_single_node_profile_is_refused(
    profiles: dict[str, Profile],
) -> None:
    from tests.unit.plan.test_group_preflight import member

    hosts = {"dgx-a": member(0), "dgx-b": member(1)}
    entry = GroupEntry(name="llm", hosts=["dgx-a", "dgx-b"], interface="ens1f0")
    inv = grouped_inventory(("dgx-a", SERVING), ("dgx-b", SERVING), groups=[entry])
    with pytest.raises(GroupRefusedError) as caught:
        plan_site(profiles, profiles["a100-single"], hosts, inv, model(MISTRAL), force=True)
    assert str(caught.value).startswith(
        "group llm (dgx-a, dgx-b): profile a100-single serves on at most 1 host(s), the group has 2"
    )


def test_adapters_on_a_cpu_pipeline_group_are_refused_with_the_reason(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    """vLLM 0.32's CPU build turns compilation off with LoRA, and its pipeline stages serve
    only compiled (measured on lab hosts): adapters on cpu-vllm-group are refused, every one."""
    from appliance.compliance.findings import BaseIdentity
    from appliance.errors import AdapterRefusedError
    from tests.unit.plan.test_adapters import GEMMA, make_adapter

    adapters = [make_adapter(tmp_path, "alpha"), make_adapter(tmp_path, "bravo")]
    hosts = named("cpu-avx2-2nodes", "a", "b")
    inv = inventory(("a", SERVING), ("b", ["model-server"]))
    with pytest.raises(AdapterRefusedError) as refused:
        plan_site(profiles, profiles["cpu-vllm-group"], hosts, inv, GEMMA, adapters=adapters,
                  identity=BaseIdentity("gemma-3-270m"))  # fmt: skip
    assert refused.value.exit_code == 3
    assert [r.adapter for r in refused.value.refusals] == ["alpha", "bravo"]
    assert "pipeline parallel 2 on vLLM's CPU build" in refused.value.refusals[0].reason
    assert "profile cpu-vllm" in refused.value.refusals[0].hint
    # Without adapters the same group is planned.
    site = plan_site(profiles, profiles["cpu-vllm-group"], hosts, inv, GEMMA)
    assert [p.serves for p in site.parts] == ["head", "worker"]
