"""Errors of the Keycloak part: all are ``InputError`` (exit 2), the operator can fix them.

Messages never carry a client secret or the admin password: they name the
file that holds it instead.
"""

from __future__ import annotations

from appliance.errors import InputError


class AccessConfigError(InputError):
    """The site's access file (which caller clients exist, which roles each gets) is invalid."""


class RealmError(InputError):
    """A realm (generated or read back) breaks the structure or the rules of the appliance."""


class SiteSecretsError(InputError):
    """A site secrets file is missing, unreadable, malformed or readable by others."""


class KeycloakArtifactError(InputError):
    """The bundle does not carry the Keycloak distribution or the Java runtime it needs."""


class KeycloakSettingsError(InputError):
    """Keycloak's host settings (public URL, listen address, ports) are unusable."""
