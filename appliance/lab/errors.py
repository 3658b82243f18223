"""Errors of the lab, placed in the one error tree.

Usage problems the operator fixes before anything starts (not root, missing
packages, a bad name, a lab that already exists) exit 2; a build, boot or
teardown that fails once started exits 5.
"""

from __future__ import annotations

from appliance.errors import DeploymentError, InputError


class LabPrerequisiteError(InputError):
    """This machine cannot run a lab as it is: not root, a tool missing, no Debian mirror."""


class LabInputError(InputError):
    """A lab name, host count or address range is unusable, or the lab (does not) exist."""


class LabError(DeploymentError):
    """Building the root filesystem, wiring the network, booting or stopping a host failed."""
