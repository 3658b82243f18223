"""Signed offline bundles: format, keys and trust, build, sign, verify, install, media."""
