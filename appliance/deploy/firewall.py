"""Loading a release's nftables ruleset on a host so that it cannot lock the deployer out.

The ruleset is checked, loaded with a revert armed, and confirmed over a *new*
SSH connection before it is made permanent (``apply_firewall``).
"""

from __future__ import annotations

import time

from appliance.deploy import transport
from appliance.deploy.host_layout import NFT_BOOT_UNIT, RELEASE_ETC, RULESET_PATH, active_unit_path
from appliance.deploy.transport import SSH_TIMEOUT
from appliance.errors import DeploymentError
from appliance.plan.inventory import HostEntry

# Seconds after which a loaded ruleset reverts by itself unless a new SSH connection confirms it.
FIREWALL_REVERT_AFTER = 30


def apply_firewall(host: HostEntry, version: int) -> bool:
    """Load release ``version``'s nftables ruleset, if it has one, so that it cannot lock us out.

    The ruleset is checked (``nft -c``), a revert is armed, the ruleset is
    loaded, then a *new* SSH connection confirms it: if the ruleset cut SSH,
    that connection fails, the host reverts by itself within
    ``FIREWALL_REVERT_AFTER`` seconds, and this raises. Once confirmed, the
    boot unit is enabled so the host comes up with it. Returns whether the
    release has a ruleset (a release without one leaves the firewall as it is).
    """
    from appliance.netpolicy.nftables import apply_script, confirm_script

    etc = f"{RELEASE_ETC}/{version}"
    present = transport.run(
        host, f"[ -f {etc}/nftables.nft ] && echo yes; true", timeout=30
    ).strip()
    if present != "yes":
        return False
    staged = f"{RULESET_PATH}.new"
    transport.run(host, f"set -e\ncp {etc}/nftables.nft {staged}\n" + apply_script(staged, FIREWALL_REVERT_AFTER),
        timeout=60)  # fmt: skip
    try:
        transport.run(host, confirm_script(), timeout=SSH_TIMEOUT + 10)
    except DeploymentError as exc:
        # Give the host the time to put its previous ruleset back, so what follows (a rollback,
        # the audit record) can reach it again.
        time.sleep(FIREWALL_REVERT_AFTER + 5)
        raise DeploymentError(
            f"{host.name}: after loading release {version}'s firewall ruleset, a new SSH connection "
            f"failed ({exc.message.removeprefix(host.name + ': ')}); the host puts its previous "
            f"ruleset back by itself within {FIREWALL_REVERT_AFTER} s (it has by now)",
            hint="Check network.admin_cidrs in the site file: it must hold the address this "
            "deployer connects from.",
        ) from exc
    boot = active_unit_path(NFT_BOOT_UNIT)
    transport.run(host, f"""set -e
mv -f {staged} {RULESET_PATH}
if [ -f {etc}/{NFT_BOOT_UNIT} ]; then cp {etc}/{NFT_BOOT_UNIT} {boot}.tmp && mv -f {boot}.tmp {boot}; fi
systemctl daemon-reload
systemctl enable {NFT_BOOT_UNIT} >/dev/null 2>&1
""", timeout=60)  # fmt: skip
    return True
