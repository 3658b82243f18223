"""The lab: disconnected Debian hosts with systemd on this machine, for rehearsals and tests.

``lab_up`` boots hosts (systemd-nspawn, one network namespace each, one bridge
per lab, no route out) reachable over SSH from this machine only, and writes
an inventory the deploy reads; ``lab_down`` removes everything a lab made;
``lab_list`` shows the labs. Needs root and the packages of
``scripts/ensure-system-deps lab``. Module map: ``rootfs`` (cached image),
``network`` (addresses, bridge, namespaces), ``hosts`` (up/down/list),
``ssh`` (run a command on a host), ``state`` (where a lab keeps its files).
"""

from appliance.lab.errors import LabError, LabInputError, LabPrerequisiteError
from appliance.lab.hosts import LabHostInfo, LabInfo, lab_down, lab_list, lab_up
from appliance.lab.ssh import run_on
from appliance.lab.state import Lab, LabHost, LabPaths

__all__ = [
    "Lab",
    "LabError",
    "LabHost",
    "LabHostInfo",
    "LabInfo",
    "LabInputError",
    "LabPaths",
    "LabPrerequisiteError",
    "lab_down",
    "lab_list",
    "lab_up",
    "run_on",
]
