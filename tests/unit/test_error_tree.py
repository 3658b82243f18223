"""Every exception class the product defines belongs to the one error tree (``appliance.errors``).

A class outside the tree would reach the command line without an exit code of its own;
inside it, front ends never map errors by hand. The walk imports every module of
``appliance`` and ``tui`` and looks at each exception class defined there. The few
private classes that stay outside are named below, each with why.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import appliance
import tui
from appliance.errors import ApplianceError

# module.Class -> why it stays outside the tree. Delete an entry when its class goes.
OUTSIDE_THE_TREE = {
    # Carries an OSError from a stat deep inside a path check up to `_reported`, the one
    # place that knows the flag and words the OutputPathError; never leaves the module.
    "appliance.output_paths._Unreachable": "private control flow",
}


def all_modules() -> list[str]:
    names = []
    for package in (appliance, tui):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # appliance.__main__ runs the CLI
                names.append(info.name)
    return sorted(names)


def defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in [*all_modules(), "appliance.gateway.__main__"]:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_the_walk_sees_the_whole_package() -> None:
    names = all_modules()
    assert {"appliance.gateway.reasons", "appliance.model.gguf_header", "tui.app"} <= set(names)
    found = defined_exceptions()
    assert {"appliance.errors.InputError", "appliance.gateway.reasons.RefusedError"} <= set(found)


@pytest.mark.parametrize("name", sorted(defined_exceptions()))
def test_every_exception_derives_from_the_root(name: str) -> None:
    cls = defined_exceptions()[name]
    if name in OUTSIDE_THE_TREE:
        assert not issubclass(cls, ApplianceError), f"{name} joined the tree: drop its entry"
        return
    assert issubclass(cls, ApplianceError), (
        f"{name} derives from {[b.__name__ for b in cls.__mro__[1:]]}, not ApplianceError: "
        "give it a parent in appliance/errors.py's tree (the exit code comes from there)"
    )


def test_the_allow_list_names_classes_that_exist() -> None:
    assert set(OUTSIDE_THE_TREE) <= set(defined_exceptions())
