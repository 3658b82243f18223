"""Where the appliance lives on a host: the paths and unit names every deploy step shares.

The layout both engines lay down, the probe reads and the lifecycle commands
(status, rollback, uninstall) walk: the release tree under ``/opt/appliance``,
``current`` pointing at one release, per-release units and environment files
kept under ``/etc/appliance/releases/<v>`` for rollback, and the active copies
of a release's units in ``/etc/systemd/system``. Nothing here reads or writes
a host.
"""

from __future__ import annotations

ROOT = "/opt/appliance"
RELEASES = f"{ROOT}/releases"
CURRENT = f"{ROOT}/current"
ETC = "/etc/appliance"
STATE = "/var/lib/appliance"
LOG = "/var/log/appliance"
UNIT_NAME = "appliance-model.service"
SYSTEMD_DIR = "/etc/systemd/system"
UNIT_PATH = f"{SYSTEMD_DIR}/{UNIT_NAME}"  # the active unit: a copy of one release's unit
# The firewall: the active ruleset (a copy of one release's) and the unit loading it at boot.
RULESET_PATH = f"{ETC}/nftables.nft"  # = appliance.netpolicy.nftables.RULESET_PATH
NFT_TABLE = "inet appliance"
NFT_BOOT_UNIT = "appliance-nftables.service"
GATEWAY_UNIT = "appliance-gateway.service"  # with --site (deploy/gateway_layer.py)
# On a member of a multi-node serving group (deploy/group_layer.py): the group watch, and the
# members' ephemeral port range (the collective library's sockets) as a sysctl drop-in.
GROUP_WATCH_UNIT = "appliance-group-watch.service"
GROUP_WATCH_SCRIPT = "group-watch.py"  # in the release's etc, with its settings
GROUP_WATCH_SETTINGS = "group-watch.json"
GROUP_SYSCTL = "sysctl-group.conf"  # in the release's etc; active copy in /etc/sysctl.d
SYSCTL_PATH = "/etc/sysctl.d/60-appliance-group-ports.conf"  # = netpolicy.port_range_sysctl's
GROUP_STATE_FILE = "/run/appliance/group-state.json"  # = group_watch.STATE_FILE
# With sso.install in the site file (deploy/keycloak_layer.py):
KEYCLOAK_UNIT = "appliance-keycloak.service"
JAVA_ARTIFACT = "java-runtime"  # a bundle artifact unpacked into every release that carries it
JAVA_DIR = "runtime/java"  # in the release: JAVA_HOME of the services that need Java
# Written last into a distribution unpacked outside a release (DistSpec):
UNPACKED_MARKER = ".appliance-unpacked"
RELEASE_ETC = f"{ETC}/releases"  # per release: its unit and environment, kept for rollback
DIRECTORIES = (ROOT, RELEASES, ETC, RELEASE_ETC, STATE, LOG)
GATEWAY_VENV = "gateway-venv"  # in the release, from the bundle's gateway wheels


def active_unit_path(unit: str) -> str:
    """Where the active copy of one release's ``unit`` is."""
    return f"{SYSTEMD_DIR}/{unit}"


def release_etc(version: int) -> str:
    return f"{RELEASE_ETC}/{version}"
