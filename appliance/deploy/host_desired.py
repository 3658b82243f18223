"""What a host must end up with (``HostDesired`` and its parts) and what an engine reports.

Frozen data only, built by ``deploy.render.desired_state`` from a verified
bundle (and extended by the gateway and Keycloak layers); the engines converge
a host to a ``HostDesired`` and see nothing else, the probe and the diff
(``deploy.probe``) compare a host against it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.deploy.host_layout import DIRECTORIES, UNIT_NAME, UNPACKED_MARKER
from appliance.plan.inventory import HostEntry


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    path: str  # absolute on the host
    # The verified local copy; None: taken over from the release in place (an adapter-only
    # bundle's reused file), linked there and checked by its signed digest like the others.
    source: Path | None
    length: int
    sha256: str

    @property
    def reused(self) -> bool:
        return self.source is None


@dataclass(frozen=True, slots=True)
class RenderedFile:
    path: str
    template: str
    content: str
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VenvSpec:
    path: str
    wheels_dir: str
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()  # wheel files installed after, without their dependencies
    # What the venv is built from (requirements and every wheel's SHA-256), written into it
    # (``VENV_MARKER``): an adapter-only release copies the release in place's venv when the
    # marker there is the same (and that release passes its integrity check).
    wheels_digest: str = ""
    # Whether the release takes its wheels over from the release in place (adapter-only).
    reusable: bool = False


@dataclass(frozen=True, slots=True)
class UnpackSpec:
    """A signed archive of the release, unpacked into the release while it is staged."""

    archive: str  # absolute path on the host, in the release
    path: str  # absolute path on the host, in the release


@dataclass(frozen=True, slots=True)
class DistSpec:
    """A signed archive of the release unpacked outside it, once, because its program writes
    into its own tree (Keycloak's ``kc.sh build``): root-owned but for ``writable`` (relative
    directories handed to ``owner``). Unpacked beside ``path`` and renamed into place with its
    marker, so a half-unpacked tree is never taken for a whole one."""

    archive: str
    path: str
    owner: str
    writable: tuple[str, ...]
    # Of ``writable``, those only ``owner`` may enter (0700): a secret file put there is never
    # readable by others, not even while an engine uploads it before setting its mode.
    private: tuple[str, ...] = ()

    @property
    def marker(self) -> str:
        return f"{self.path}/{UNPACKED_MARKER}"


@dataclass(frozen=True, slots=True)
class SystemUser:
    """A system user and its group of the same name, no login, no home created."""

    name: str
    home: str
    shell: str = "/usr/sbin/nologin"


@dataclass(frozen=True, slots=True)
class OwnedDir:
    path: str
    owner: str  # user and group
    mode: int


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A file holding secrets, uploaded from a private local file: never rendered, never in
    the engines' variables or logs; ``sha256`` (of secrets of 256 bits) tells nothing."""

    path: str
    source: Path  # 0600 on this machine (appliance.keycloak.site_secrets)
    sha256: str
    owner: str = "root"
    mode: int = 0o600


@dataclass(frozen=True)
class HostDesired:
    host: HostEntry
    version: int
    release_dir: str
    release_files: tuple[ReleaseFile, ...]
    rendered: tuple[RenderedFile, ...]
    venvs: tuple[VenvSpec, ...]
    # Services that must be enabled and running (each a rendered unit of the release), in start order.
    units: tuple[str, ...] = (UNIT_NAME,)
    # Units enabled for boot but never started by a deploy (the firewall loader).
    boot_units: tuple[str, ...] = ()
    firewall: RenderedFile | None = None  # the release's nftables ruleset (host rulesets)
    gateway_port: int | None = None  # the gateway's TLS port, when the release has one
    directories: tuple[str, ...] = DIRECTORIES
    template_vars: dict[str, Any] = field(default_factory=dict)
    unpacks: tuple[UnpackSpec, ...] = ()  # into the release while staged (the Java runtime)
    # Keycloak (deploy/keycloak_layer.py): its user, directories, distribution and secrets.
    users: tuple[SystemUser, ...] = ()
    owned_dirs: tuple[OwnedDir, ...] = ()
    dists: tuple[DistSpec, ...] = ()
    secret_files: tuple[SecretFile, ...] = ()
    keycloak_health: str | None = None  # Keycloak's readiness URL on the host's loopback
    # Where a Keycloak laid down here is reached and where its secrets are (paths, never values).
    keycloak: dict[str, str] | None = None

    @property
    def uploaded(self) -> tuple[ReleaseFile, ...]:
        """The release files sent from this machine (not those reused on the host)."""
        return tuple(f for f in self.release_files if f.source is not None)

    @property
    def reused(self) -> tuple[ReleaseFile, ...]:
        """The release files linked from the release in place (adapter-only bundles)."""
        return tuple(f for f in self.release_files if f.source is None)

    @property
    def current_target(self) -> str:
        return self.release_dir

    @property
    def unit(self) -> str:
        return UNIT_NAME

    @property
    def unit_file(self) -> RenderedFile:
        return self.unit_file_of(UNIT_NAME)

    def unit_file_of(self, unit: str) -> RenderedFile:
        return next(r for r in self.rendered if r.path.endswith("/" + unit))


@dataclass(frozen=True, slots=True)
class HostOutcome:
    """What an engine reports per host after converging."""

    name: str
    ok: bool
    changed: bool
    message: str
