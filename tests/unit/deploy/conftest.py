from tests.unit.bundle.conftest import make_bundle, trust  # noqa: F401 - fixtures shared with the bundle tests
