"""Real filesystem failures for tests: a read-only bind mount (EROFS) and a tiny tmpfs (ENOSPC).

Both need root (the tests that use them skip otherwise) and are unmounted when the
test ends, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """``directory`` (existing, with whatever it holds) seen through a read-only bind mount."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(directory)], check=True, capture_output=True
        )
        yield directory
    finally:
        _umount(directory)


@contextmanager
def tiny_tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted on ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        _umount(directory)


def fill(filesystem: Path) -> None:
    """Use every free byte of ``filesystem`` (a file ``filler`` in it)."""
    fd = os.open(filesystem / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under ``directory``: file bytes, None for a directory."""
    if not directory.exists():
        return {}
    found: dict[str, bytes | None] = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        found[rel] = None if path.is_dir() else path.read_bytes()
    return found
