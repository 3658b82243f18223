"""The deploy's preflight gate: which failed rows refuse a deploy, and what a dry run says.

Rows are plain ``Preflight`` values (the checks themselves are tested on recorded facts in
tests/unit/plan/test_preflight.py).
"""

from __future__ import annotations

import pytest

from appliance.deploy.preflight_gate import refuse_preflights, warnings
from appliance.errors import PreflightError
from appliance.plan.preflight import Preflight

DISK = Preflight("disk", "gpu-1", "fail", "1.00 GiB free on /opt, 9.00 GiB needed",
                 "free space >= what the release needs", "free space on /opt")  # fmt: skip
MIG = Preflight("mig", "gpu-2", "fail", "MIG enabled on GPU 0", "MIG disabled",
                "nvidia-smi -i 0 -mig 0")  # fmt: skip
SHM = Preflight("shm", "gpu-2", "fail", "/dev/shm 64 MiB", "/dev/shm >= 2 GiB",
                "enlarge it", forceable=True)  # fmt: skip
PASS = Preflight("fit", "gpu-1", "pass", "17.0 GiB needed", "fits")


def test_the_disk_row_alone_is_left_to_the_deploys_disk_space_error() -> None:
    refuse_preflights([DISK, PASS], force=False)  # no PreflightError: DiskSpaceError follows


def test_other_failures_refuse_with_every_failed_row_of_every_host_the_disk_included() -> None:
    with pytest.raises(PreflightError) as caught:
        refuse_preflights([DISK, PASS, MIG, SHM], force=False)
    message = caught.value.message
    assert message.startswith("3 preflight check(s) failed, refused before any host was changed")
    assert "gpu-1: disk: found 1.00 GiB free" in message
    assert (
        "gpu-2: mig: found MIG enabled on GPU 0; expected MIG disabled; nvidia-smi -i 0 -mig 0"
        in message
    )
    assert "gpu-2: shm: found /dev/shm 64 MiB" in message
    assert caught.value.exit_code == 3


def test_force_accepts_shm_but_not_mig() -> None:
    refuse_preflights([SHM, PASS], force=True)
    with pytest.raises(PreflightError, match="1 preflight check") as caught:
        refuse_preflights([SHM, MIG], force=True)
    assert "--force does not override" in str(caught.value)


def test_a_dry_run_says_each_refusal_but_the_disks_which_it_already_says() -> None:
    said = warnings([DISK, MIG, SHM, PASS], force=False)
    assert said == [
        "a deploy would be refused: gpu-2: preflight mig: found MIG enabled on GPU 0; "
        "expected MIG disabled; nvidia-smi -i 0 -mig 0",
        "a deploy would be refused: gpu-2: preflight shm: found /dev/shm 64 MiB; "
        "expected /dev/shm >= 2 GiB; enlarge it",
    ]
    assert len(warnings([DISK, MIG, SHM], force=True)) == 1
