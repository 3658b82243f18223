"""The sysctl drop-in that pins a serving group member's ephemeral ports to the group's range.

vLLM's multi-node runtime fixes one port by flag (the head's master port);
its message queues and the collective library's sockets (gloo, NCCL) bind or
connect on kernel-ephemeral ports, and no option pins them. So each member's
``net.ipv4.ip_local_port_range`` (which governs IPv6 too) is set to the group's
``port_range``, the range the network policy opens between members only.

``group_sysctl(group)`` is the file's text, for the deploy to lay down at
``SYSCTL_PATH`` on every member (then ``sysctl -p SYSCTL_PATH`` or
``systemctl restart systemd-sysctl``). Pure text; nothing here touches a host.

Invariants: the range is the group's, first < last, and the master port lies
outside it (``GroupEntry`` validates both; checked again here). The setting
is per network namespace: a pod sets it in its own securityContext instead
(a "safe" sysctl in Kubernetes).
"""

from __future__ import annotations

from appliance.netpolicy.model import NetworkPolicyError
from appliance.plan.group import GroupNetwork

PORT_RANGE_SYSCTL = "net.ipv4.ip_local_port_range"
SYSCTL_PATH = "/etc/sysctl.d/60-appliance-group-ports.conf"


def port_range_value(group: GroupNetwork) -> str:
    """``40000 44095``: the sysctl's value (first and last port, inclusive)."""
    first, last = group.port_range
    if not 1024 <= first < last <= 65535 or first <= group.master_port <= last:
        raise NetworkPolicyError(
            f"serving group {group.name}: expected a port range within 1024-65535 (first < last) "
            f"that leaves out the master port {group.master_port}, found {first}-{last}",
            hint="Fix the group's port_range (or master_port) in the inventory.",
        )
    return f"{first} {last}"


def group_sysctl(group: GroupNetwork) -> str:
    """The drop-in's text for a member of ``group`` (the same on every member)."""
    value = port_range_value(group)
    first, last = group.port_range
    return (
        f"# appliance: serving group {group.name} ({', '.join(group.hosts)}; head {group.head}) "
        f"on {group.interface}\n"
        "# The runtime's message queues and the collective library's sockets take kernel-ephemeral\n"
        f"# ports; this pins them to {first}-{last}, which the firewall opens between the group's\n"
        f"# members only (master port {group.master_port} apart). Every outgoing connection of\n"
        "# this host takes its source port from this range too.\n"
        f"{PORT_RANGE_SYSCTL} = {value}\n"
    )
