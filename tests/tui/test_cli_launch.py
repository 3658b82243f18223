"""`appliance tui` hands its options to the app, and the trust state to the real core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tui.app
from appliance.cli.main import main
from tui.backend import CoreBackend

pytestmark = pytest.mark.tui


def test_tui_options_reach_the_app_and_the_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: dict[str, Any] = {}

    class FakeApp:  # stands in for the Textual app: records what it was built with
        exit_code = 0

        def run(self, **kwargs: Any) -> None:
            built["run"] = kwargs

    def fake_build_app(backend: Any, *, options: Any) -> FakeApp:
        built["backend"], built["options"] = backend, options
        return FakeApp()

    monkeypatch.setattr(tui.app, "build_app", fake_build_app)
    code = main(["tui", "--bundle", "b", "--trust", "t.json", "--inventory", "i.yml",
                 "--state", str(tmp_path / "state"), "--profiles-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    backend = built["backend"]
    assert isinstance(backend, CoreBackend)
    assert backend.state == tmp_path / "state" and backend.profiles_dir == tmp_path
    options = built["options"]
    assert (options.bundle, options.trust, options.inventory) == (
        Path("b"),
        Path("t.json"),
        Path("i.yml"),
    )
