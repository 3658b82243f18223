"""The engine registry: one name per engine, looked up by name, the CLI's choices from it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from appliance.cli.main import main
from appliance.deploy import converge as converge_module
from appliance.deploy import engines
from appliance.deploy.engines import ansible as ansible_engine
from appliance.deploy.host_desired import HostDesired, HostOutcome
from appliance.errors import InputError
from appliance.events import Event


def test_each_engine_is_registered_under_its_own_name() -> None:
    assert list(engines.ENGINES) == ["pyinfra", "ansible"]
    assert all(e.name == name for name, e in engines.ENGINES.items())
    assert engines.engine(engines.DEFAULT) is engines.ENGINES["pyinfra"]


def test_an_unknown_engine_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InputError, match="unknown engine 'chef'") as caught:
        engines.engine("chef")
    assert caught.value.hint == "Choose one of: pyinfra, ansible."


def test_the_command_line_offers_the_registered_engines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["deploy", "--profile", "p", "--bundle", "b", "--trust", "t", "--inventory", "i",
              "--engine", "chef"])  # fmt: skip
    assert "invalid choice: 'chef' (choose from 'pyinfra', 'ansible')" in capsys.readouterr().err


def test_the_deploy_converges_with_the_engine_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    def converge(
        plans: Sequence[HostDesired],
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[HostOutcome]:
        return [HostOutcome("h1", True, True, "converged by ansible")]

    monkeypatch.setattr(ansible_engine, "converge", converge)
    gen = converge_module.converge_hosts("ansible", [], threading.Event())
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == {"h1": (True, "converged by ansible")}
