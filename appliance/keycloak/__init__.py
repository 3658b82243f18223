"""Keycloak for the appliance: the realm generated from the plan, site secrets, the unit.

Module map: ``access`` (the site's access file: callers and what each may
call), ``realm`` (the realm import from the plan; secrets added on site by
``render_realm_import``), ``schema`` (the strict model of the realm subset the
appliance emits: the structural check, since Keycloak does not run here),
``site_secrets`` (client secrets and the bootstrap admin, generated on site,
0600, never printed), ``service`` (host layout, the bundle's Keycloak and Java
artifacts, the rendered unit and environment file). docs/keycloak.md tells the
whole story, including what is not verified on this machine.
"""
