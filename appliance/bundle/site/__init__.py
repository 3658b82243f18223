"""The site side of a bundle, run on the disconnected host: verification (trusted root,
signed manifest, exact file set, content hashes), the site's accepted versions and kept
roots, and the installation of a verified bundle's files.

``verify.verify_bundle`` is the only constructor of ``VerifiedBundle``; nothing here
builds or signs a bundle (``appliance.bundle.connected.build``), and both sides share the format
in ``appliance.bundle``.
"""
