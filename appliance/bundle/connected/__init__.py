"""The connected side of a bundle, run on a connected machine: the recipe (strict YAML), the
sources it names (model, adapters, wheels, the gateway's wheels, artifacts) and the build
into a staging directory that ``appliance.bundle.manifest`` then signs.

Nothing here runs at the site: verification and installation live in
``appliance.bundle.site``, and both sides share the format in ``appliance.bundle``.
"""
