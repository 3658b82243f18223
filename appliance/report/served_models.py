"""What the release in place serves on a model-server host: its base and adapters with their
provider, licences, data sources and findings (``appliance models``).

Read-only on the host: the release's signed manifest (``current/metadata/targets.json``)
is read over SSH and parsed with the bundle manifest functions; its payload gives the
rows (``appliance.bundle.payload_inventory``), each adapter's record checked under the
site policy. The host's copy of the manifest is NOT verified again against the trust
root here (it was verified when the release was deployed; ``appliance status --verify``
checks the release's files against it and shows the health). An unreachable host, or
one whose manifest cannot be read, is a row that says so, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.bundle.format import MAX_METADATA_BYTES, METADATA_DIR
from appliance.bundle.manifest import bundle_contents, parse_targets
from appliance.bundle.payload_inventory import ReuseSummary, payload_inventory, reuse_summary
from appliance.compliance.inventory import ModelRow
from appliance.compliance.policy import SitePolicy
from appliance.deploy import transport
from appliance.deploy.activation import current_version
from appliance.deploy.host_layout import CURRENT
from appliance.errors import ApplianceError, DeploymentError
from appliance.plan.inventory import HostEntry

MANIFEST = f"{CURRENT}/{METADATA_DIR}/targets.json"
NOT_REVERIFIED = (
    "read from the host's copy of the release's signed manifest, not verified again against"
    " the trust root here; `appliance status` shows the release's health and integrity"
)


@dataclass(frozen=True)
class ServedModels:
    """One host: reachable or not, the release in place (None: none), its bundle and rows."""

    host: str
    reachable: bool
    release: int | None = None
    bundle: str = ""
    bundle_version: int | None = None
    rows: tuple[ModelRow, ...] = ()
    reuse: ReuseSummary | None = None
    message: str = ""

    @property
    def failed(self) -> bool:
        """Unreachable, or a release whose manifest could not be read."""
        return not self.reachable or bool(self.message and self.release is not None)


def served_models(host: HostEntry, policy: SitePolicy) -> ServedModels:
    """The models the release in place on ``host`` serves, checked under ``policy``."""
    try:
        release = current_version(host)
    except DeploymentError as exc:
        return ServedModels(host.name, False, message=exc.message)
    if release is None:
        return ServedModels(host.name, True, message="no release in place")
    try:
        text = transport.read_file(host, MANIFEST, limit=MAX_METADATA_BYTES)
        md = parse_targets(text.encode(), f"{host.name}:{MANIFEST}")
        payload, records = bundle_contents(md)
    except ApplianceError as exc:  # SSH failed meanwhile, or the manifest is missing/invalid
        return ServedModels(
            host.name, True, release, message=f"{MANIFEST} cannot be read: {exc.message}"
        )
    return ServedModels(
        host.name,
        True,
        release,
        bundle=payload.name,
        bundle_version=md.signed.version,
        rows=payload_inventory(payload, records, policy),
        reuse=reuse_summary(payload, records),
    )
