"""A serving group member's own part of a release: the group watch and the port range.

``add_group_member`` extends a member's ``HostDesired`` (from ``render.desired_state``)
with, in the release's etc (kept per release, so a rollback brings the group's settings of
that release back):

- the group watch (``group_watch.py``: its source, laid down as is), its settings (JSON:
  role, rank, the head, the workers' group addresses, the master port, the model server's
  port and served name, the start timeout) and its unit;
- the members' ephemeral port range as a sysctl drop-in (``net.ipv4.ip_local_port_range``:
  the collective library's sockets take ports from it; the network policy allows exactly
  that range between members), applied at activation before the model server starts.

Pure: no host is read or written here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from appliance.deploy import group_watch
from appliance.deploy.host_desired import HostDesired, RenderedFile
from appliance.deploy.host_layout import (
    GROUP_SYSCTL,
    GROUP_WATCH_SCRIPT,
    GROUP_WATCH_SETTINGS,
    GROUP_WATCH_UNIT,
    UNIT_NAME,
    release_etc,
)
from appliance.deploy.render import render
from appliance.netpolicy.port_range_sysctl import group_sysctl
from appliance.plan.group import GroupNetwork


def watch_settings(
    group: GroupNetwork, host: str, *, model_port: int, served_model: str, start_timeout: int
) -> dict[str, object]:
    """The group watch's settings for member ``host`` (``group_watch.Settings.from_json``)."""

    def member(name: str) -> dict[str, object]:
        return {"host": name, "address": group.address_of(name), "rank": group.rank_of(name)}

    rank = group.rank_of(host)
    return {
        "role": "head" if rank == 0 else "worker",
        "group": group.name,
        "host": host,
        "rank": rank,
        "head": member(group.head),
        "workers": [member(name) for name in group.hosts[1:]],
        "master_port": group.master_port,
        "model_port": model_port,
        "served_model": served_model,
        "start_timeout": start_timeout,
    }


def add_group_member(
    desired: HostDesired, group: GroupNetwork, *, model_port: int, served_model: str
) -> HostDesired:
    """``desired`` (of member ``desired.host``) with the group watch and the port range."""
    name = desired.host.name
    etc = release_etc(desired.version)
    start_timeout = int(desired.template_vars.get("start_timeout", 600))
    settings = watch_settings(group, name, model_port=model_port, served_model=served_model,
                              start_timeout=start_timeout)  # fmt: skip
    group_watch.Settings.from_json(settings)  # what the watch will read must read back
    variables = desired.template_vars | {
        "group_name": group.name,
        "group_role": settings["role"],
        "group_rank": settings["rank"],
        "model_unit": UNIT_NAME,
        "watch_script": f"{etc}/{GROUP_WATCH_SCRIPT}",
        "watch_settings": f"{etc}/{GROUP_WATCH_SETTINGS}",
    }
    source = Path(group_watch.__file__).read_text(encoding="utf-8")
    rendered = (
        RenderedFile(f"{etc}/{GROUP_WATCH_SCRIPT}", "group_watch.py", source),
        RenderedFile(f"{etc}/{GROUP_WATCH_SETTINGS}", "group-watch.json",
                     json.dumps(settings, indent=2, sort_keys=True) + "\n"),
        RenderedFile(f"{etc}/{GROUP_WATCH_UNIT}", f"{GROUP_WATCH_UNIT}.j2",
                     render(f"{GROUP_WATCH_UNIT}.j2", variables)),
        RenderedFile(f"{etc}/{GROUP_SYSCTL}", "sysctl-group.conf", group_sysctl(group)),
    )  # fmt: skip
    return replace(desired, rendered=desired.rendered + rendered, template_vars=variables,
                   units=(*desired.units, GROUP_WATCH_UNIT))  # fmt: skip
