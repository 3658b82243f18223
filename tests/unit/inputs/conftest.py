"""The bundle tests' fixtures (real keys, a real root, real bundles) for the entry-point tests."""

from tests.unit.bundle.conftest import make_bundle, trust

__all__ = ["make_bundle", "trust"]
