"""Every output location is checked before work starts: exit 2, a message naming the flag,
what was expected and what was found, and nothing written, on every writing command.

Conditions: the parent is missing, the parent is a file, the location is on a read-only
mount (a real bind mount, root only), and something is already where a new file or
directory is expected. The bundle commands must refuse before hashing anything: the
hashing entry points are replaced by ones that fail the test if called, and
``bundle build`` is timed against a large sparse model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.media import join
from appliance.bundle.site import contents, verify
from appliance.cli.main import main
from tests.unit.bundle.conftest import BundleFactory, Trust
from tests.unit.mounts import needs_root, read_only, snapshot

Args = Callable[[Path], list[str]]


@pytest.fixture
def no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def hashed(*_: Any, **__: Any) -> Any:
        raise AssertionError("content was hashed before the output location was checked")

    monkeypatch.setattr(contents, "verify_contents", hashed)
    monkeypatch.setattr(verify, "install_files", hashed)
    monkeypatch.setattr(join, "check_parts", hashed)


@pytest.fixture
def commands(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> dict[str, tuple[str, Args]]:
    """name -> (what the location must be, argv for an output location)."""
    bundle = make_bundle()
    root = str(trust.root_path)
    pub = str(trust.key_paths[0]).replace(".key", ".pub.json")
    b = str(bundle)
    return {
        "keys generate --out": ("dir", lambda o: ["keys", "generate", "--out", str(o)]),
        "trust init --out": ("new", lambda o: ["trust", "init", "--key", pub, "--threshold", "1", "--out", str(o)]),
        "trust rotate --out": ("new", lambda o: ["trust", "rotate", "--from", root, "--key", pub, "--threshold", "1", "--out", str(o)]),
        "bundle build --out": ("new", lambda o: ["bundle", "build", "--model", b, "--name", "x", "--version", "1", "--out", str(o)]),
        "bundle install --dest": ("new", lambda o: ["bundle", "install", b, "--trust", root, "--dest", str(o)]),
        "bundle install --state": ("dir", lambda o: ["bundle", "install", b, "--trust", root, "--dest", str(tmp_path / "rel"), "--state", str(o)]),
        "bundle verify --state": ("dir", lambda o: ["bundle", "verify", b, "--trust", root, "--state", str(o)]),
        "bundle split --out": ("dir", lambda o: ["bundle", "split", b, "--out", str(o)]),
        "bundle join --out": ("new", lambda o: ["bundle", "join", b, "--trust", root, "--out", str(o)]),
        "render --out": ("new", lambda o: ["render", "--profile", "cpu-llamacpp", "--target", "host", "--out", str(o)]),
        "deploy --emit-ansible": ("new", lambda o: ["deploy", "--profile", "cpu-llamacpp", "--bundle", b, "--trust", root, "--inventory", str(tmp_path / "none.yaml"), "--emit-ansible", str(o)]),
        "deploy --state": ("dir", lambda o: ["deploy", "--profile", "cpu-llamacpp", "--bundle", b, "--trust", root, "--inventory", str(tmp_path / "none.yaml"), "--yes", "--state", str(o)]),
    }  # fmt: skip


COMMANDS = [
    "keys generate --out", "trust init --out", "trust rotate --out", "bundle build --out",
    "bundle install --dest", "bundle install --state", "bundle verify --state", "bundle split --out",
    "bundle join --out", "render --out", "deploy --emit-ansible", "deploy --state",
]  # fmt: skip


def _run(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = snapshot(tmp_path)
    started = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - started < 5
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "something was written"
    return err


@pytest.mark.usefixtures("no_hashing")
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("condition", ["missing parent", "parent is a file", "already there"])
def test_unusable_output_is_refused_first(
    command: str,
    condition: str,
    commands: dict[str, tuple[str, Args]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind, args = commands[command]
    flag = command.rsplit(maxsplit=1)[-1]
    (tmp_path / "afile").write_text("x\n")
    if condition == "missing parent":
        if kind == "dir":
            pytest.skip("a directory written into is created with its parents")
        out, found = tmp_path / "missing" / "out", "does not exist"
    elif condition == "parent is a file":
        out, found = tmp_path / "afile" / "out", "not a directory"
    else:
        out = tmp_path / "afile"
        found = "it already exists" if kind == "new" else "not a directory"
    err = _run(args(out), tmp_path, capsys)
    assert f"{flag} {out}: expected" in err and found in err, err


@needs_root
@pytest.mark.usefixtures("no_hashing")
@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output_is_refused_first(
    command: str,
    commands: dict[str, tuple[str, Args]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, args = commands[command]
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        err = _run(args(ro / "out"), tmp_path, capsys)
    assert "read-only filesystem" in err and "Remount" in err, err


@needs_root
@pytest.mark.usefixtures("no_hashing")
@pytest.mark.parametrize("command", ["trust sign", "bundle sign", "bundle add-signatures"])
def test_in_place_writers_refuse_a_read_only_target(
    command: str,
    make_bundle: BundleFactory,
    trust: Trust,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = make_bundle()
    key = str(trust.key_paths[2])
    argv = {
        "trust sign": ["trust", "sign", str(trust.root_path), "--key", key],
        "bundle sign": ["bundle", "sign", str(bundle), "--key", key],
        "bundle add-signatures": ["bundle", "add-signatures", str(bundle), str(bundle / "metadata/targets.json")],
    }[command]  # fmt: skip
    target = trust.root_path.parent if command == "trust sign" else bundle / "metadata"
    with read_only(target):
        err = _run(argv, tmp_path, capsys)
    assert "read-only filesystem" in err, err


@pytest.mark.parametrize("command", ["trust sign", "bundle sign"])
def test_in_place_writers_refuse_a_directory(
    command: str, trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b" / "metadata" / "targets.json").mkdir(parents=True)
    key = str(trust.key_paths[0])
    argv = {
        "trust sign": ["trust", "sign", str(tmp_path / "b"), "--key", key],
        "bundle sign": ["bundle", "sign", str(tmp_path / "b"), "--key", key],
    }[command]
    err = _run(argv, tmp_path, capsys)
    assert "expected an existing file" in err, err


@needs_root
def test_build_refuses_before_reading_a_large_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "big.gguf"
    with open(model, "wb") as handle:
        handle.truncate(64 * 2**30)  # 64 GiB, sparse: reading it would take minutes
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        argv = ["bundle", "build", "--model", str(model), "--name", "big", "--version", "1",
                "--out", str(ro / "bundle")]  # fmt: skip
        started = time.monotonic()
        assert main(argv) == 2
        assert time.monotonic() - started < 2
    assert "read-only filesystem" in capsys.readouterr().err


@needs_root
@pytest.mark.parametrize("where", ["unwritable", "unreachable"])
def test_permission_denied_for_a_non_root_user(where: str, tmp_path: Path) -> None:
    """Root ignores mode bits; ``nobody`` does not: the probe reports EACCES for it, and a
    parent it may not enter (pytest's 0700 tmp dir) is refused the same way."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="appliance-outputs-") as top_dir:
        top = Path(top_dir) if where == "unwritable" else tmp_path / "top"
        top.mkdir(mode=0o755, exist_ok=True)
        top.chmod(0o755)
        result = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
             "-m", "appliance", "keys", "generate", "--out", str(top / "keys")],
            capture_output=True, text=True, cwd="/", timeout=60, check=False,
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[3]), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        if "setpriv:" in result.stderr:
            pytest.skip(f"cannot switch to nobody here: {result.stderr[-300:]}")
        assert result.returncode == 2, result.stderr
        assert "permission denied" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert list(top.iterdir()) == []


SSO_SITE = """schema_version: 1
network: {site_cidrs: [10.231.0.0/24], admin_cidrs: [10.231.0.1/32]}
tokens:
  issuer: https://10.231.0.2:8443/realms/appliance
  jwks_url: http://127.0.0.1:8180/realms/appliance/protocol/openid-connect/certs
sso:
  url: http://127.0.0.1:8180
  realm: appliance
  install: {access_file: access.yaml, secrets_dir: SECRETS}
"""


@needs_root
@pytest.mark.usefixtures("no_hashing")
@pytest.mark.parametrize("condition", ["read-only", "a file in the way"])
def test_deploy_refuses_an_unusable_secrets_dir_first(
    condition: str,
    tmp_path: Path,
    make_bundle: BundleFactory,
    trust: Trust,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Keycloak's client secrets are made on this machine before any host is contacted: the
    site's secrets directory is checked before the bundle is hashed."""
    bundle = make_bundle()
    site_dir = tmp_path / "site-files"
    site_dir.mkdir()
    (site_dir / "access.yaml").write_text(
        "schema_version: 1\nrealm: appliance\n"
        "callers: [{client_id: bot, description: bot, models: [gemma]}]\n"
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    secrets = ro / "secrets" if condition == "read-only" else site_dir / "access.yaml"
    (site_dir / "site.yaml").write_text(SSO_SITE.replace("SECRETS", str(secrets)))
    inventory = Path(__file__).resolve().parents[2] / "fixtures/inventory/good.yaml"
    argv = ["deploy", "--profile", "cpu-llamacpp", "--bundle", str(bundle), "--trust",
            str(trust.root_path), "--inventory", str(inventory), "--site",
            str(site_dir / "site.yaml"), "--dry-run"]  # fmt: skip
    if condition == "read-only":
        with read_only(ro):
            err = _run(argv, tmp_path, capsys)
        assert "read-only filesystem" in err, err
    else:
        err = _run(argv, tmp_path, capsys)
        assert "not a directory" in err, err
    assert f"sso.install.secrets_dir {secrets}: expected" in err, err
