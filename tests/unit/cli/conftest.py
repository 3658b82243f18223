"""The bundle fixtures (real keys, a real trusted root, real bundles) for the CLI tests."""

from tests.unit.bundle.conftest import make_bundle, trust

__all__ = ["make_bundle", "trust"]
