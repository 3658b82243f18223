"""`appliance status` for serving groups: each member's line from its group watch, and a group
whose members run different releases called out (pure helpers of the command)."""

from __future__ import annotations

from appliance.cli.deploy_cmds import group_line, split_groups
from appliance.plan.inventory import GroupEntry, HostEntry, Inventory

INVENTORY = Inventory(
    schema_version=1,
    hosts=[HostEntry(name=n, address=f"10.0.0.{i}", roles=["model-server"])
           for i, n in enumerate(("a", "b", "c"), 2)],
    groups=[GroupEntry(name="pair", hosts=["a", "b"], interface="eth0")],
)  # fmt: skip


def test_a_group_on_one_release_is_not_split_one_on_two_is() -> None:
    assert split_groups(INVENTORY, {"a": 5, "b": 5, "c": 4}) == []
    (line,) = split_groups(INVENTORY, {"a": 6, "b": 5, "c": 4})
    assert line.startswith("group pair: SPLIT") and "a on 6, b on 5" in line
    assert "roll the group back" in line
    # A member with nothing installed is split from one that serves.
    assert split_groups(INVENTORY, {"a": 5, "b": None}) != []


def test_the_heads_line_names_who_joined_and_who_did_not() -> None:
    head = {"group": "pair", "role": "head", "rank": 0, "state": "degraded",
            "reason": "b (rank 1, 10.0.0.3) left the group; restarting the group",
            "joined": [], "missing": ["b"]}  # fmt: skip
    assert group_line(head) == (
        "group pair: head rank 0, DEGRADED: b (rank 1, 10.0.0.3) left the group; restarting the "
        "group (joined: none; not joined: b)"
    )
    worker = {"group": "pair", "role": "worker", "rank": 1, "state": "serving",
              "reason": "joined the head a (rank 0, 10.0.0.2)", "joined": [], "missing": []}  # fmt: skip
    assert (
        group_line(worker)
        == "group pair: worker rank 1, SERVING: joined the head a (rank 0, 10.0.0.2)"
    )
