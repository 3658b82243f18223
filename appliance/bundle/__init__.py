"""Signed offline bundles: format, keys and trust, build, sign, verify, install, media.

- ``connected/``: the connected side (recipe, sources, the build into a staging dir).
- ``site/``: the disconnected site (verify, the exact file set and hashes, the
  accepted-version state, install); ``site.verify`` alone makes a ``VerifiedBundle``.
- ``media/``: a bundle as parts on removable media (split on the connected side,
  check and join on the site).
- Here, what both sides share: ``format`` (layout, limits, path rules),
  ``payload`` (the signed appliance payload), ``manifest`` (``metadata/targets.json``),
  ``keys``, ``trust`` (trusted roots), ``signed_types``, ``hashing`` (hash while
  copying) and ``safe_fs`` (opening without following links).
"""
