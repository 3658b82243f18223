"""Setup for the detection tests: a fake file root (``tests.fakes`` imports via pytest's pythonpath).

Everything runs from fixtures: ``tests/fixtures/nvml`` (NVML answers through
``FakePynvml``), ``tests/fixtures/cpuinfo`` and sysfs/proc trees written into
``tmp_path``. No GPU, root or network is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A file root with proc/cpuinfo (Ryzen 9 5950X) and etc/os-release (Ubuntu 24.04)."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    cpuinfo = (ROOT / "tests/fixtures/cpuinfo/ryzen-9-5950x.txt").read_text("utf-8")
    (root / "proc" / "cpuinfo").write_text(cpuinfo)
    (root / "etc" / "os-release").write_text(
        'NAME="Ubuntu"\nVERSION="24.04.1 LTS (Noble Numbat)"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n'
    )
    return root
