"""`appliance tui` hands its options to the app, and the trust state to the real core.

A bad site file (``--site``) stops before the app starts, as the CLI's error exit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import appliance.deploy.run
import tui.app
from appliance.cli.main import main
from appliance.deploy.site import SiteFileError, load_site
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
                 "--state", str(tmp_path / "state"), "--profiles-dir", str(tmp_path),
                 "--site", "site.yaml"])  # fmt: skip
    assert code == 0
    backend = built["backend"]
    assert isinstance(backend, CoreBackend)
    assert backend.state == tmp_path / "state" and backend.profiles_dir == tmp_path
    options = built["options"]
    assert (options.bundle, options.trust, options.inventory, options.site) == (
        Path("b"),
        Path("t.json"),
        Path("i.yml"),
        Path("site.yaml"),
    )


def test_a_missing_site_file_is_the_cli_error_exit_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SiteFileError) as raised:
        load_site(Path("missing.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "tui", "--site", "missing.yaml"], capture_output=True,
        text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    hint = f"appliance: {raised.value.hint}\n" if raised.value.hint else ""
    assert result.stderr == f"appliance: error: {raised.value.message}\n{hint}"
    assert "missing.yaml: cannot read site file" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_bad_site_file_stops_before_the_app_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[bool] = []
    monkeypatch.setattr(tui.app.ApplianceApp, "run", lambda self, **kw: ran.append(True))
    site = tmp_path / "site.yaml"
    site.write_text("schema_version: 1\nnetwork: {site_cidrs: [10.0.0.0/8], admin_cidrs: []}\n")
    assert main(["tui", "--site", str(site)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"appliance: error: {site}: invalid site file:")
    assert "appliance: The format is documented in appliance/deploy/site.py" in err
    assert ran == []  # no terminal was taken over


@pytest.mark.parametrize("method", ["review", "deploy"])
def test_the_core_backend_hands_the_site_to_the_deploy(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    seen: list[dict[str, Any]] = []

    def fake_deploy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return iter(())

    monkeypatch.setattr(appliance.deploy.run, "deploy", fake_deploy)
    backend = CoreBackend()
    backend._profiles = {}
    site: Any = object()
    extra = {"cancel": None} if method == "deploy" else {}
    getattr(backend, method)(None, None, profile="p", force=False, site=site, **extra)
    assert seen[0]["site"] is site and seen[0]["engine"] == "pyinfra"
    assert seen[0]["dry_run"] is (method == "review")
