"""Host-side integrity, the pure pieces: the audit tail check, the host state check, the
switch intent's reconcile, the install record and its check (run for real with python3 on a
release laid out in a temporary directory), the probe and diff of a tampered release, and the
disk-space preflight from recorded probe output."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.audit import GENESIS, chain_record
from appliance.deploy import audit_log, host_check, transport
from appliance.deploy.host_desired import HostDesired, ReleaseFile
from appliance.deploy.host_layout import RELEASES
from appliance.deploy.integrity import (
    MAX_PROBLEMS,
    RECORD_FILE,
    check_command,
    parse_integrity,
    record_command,
)
from appliance.deploy.probe import (
    HEADROOM,
    diff,
    disk_shortfall,
    parse_probe,
    probe_script,
    release_damage,
    space_needed,
)
from appliance.deploy.run import space_message
from appliance.deploy.staging import staging_command
from appliance.errors import DeploymentError, HostStateError
from appliance.exitcodes import ExitCode
from tests.unit.bundle.conftest import BundleFactory, Trust
from tests.unit.deploy.test_desired import desired


def records(n: int) -> list[str]:
    out, previous = [], GENESIS
    for i in range(n):
        entry = chain_record({"event": "deploy", "n": i}, previous)
        previous = entry["hash"]
        out.append(json.dumps(entry, sort_keys=True))
    return out


# --- the audit log's tail -----------------------------------------------------------------


def test_a_sound_tail_gives_the_hash_to_chain_from() -> None:
    lines = records(3)
    assert audit_log.audit_tail_hash("h", "") == GENESIS
    assert audit_log.audit_tail_hash("h", "\n".join(lines[-2:])) == json.loads(lines[-1])["hash"]
    assert audit_log.audit_tail_hash("h", lines[0]) == json.loads(lines[0])["hash"]


@pytest.mark.parametrize(
    ("tail", "said"),
    [
        (lambda ls: f"{ls[-1]}\nthis is not json", "is not an audit record"),
        (lambda ls: f"{ls[-1]}\n[1, 2]", "is not an audit record"),
        (lambda ls: f'{ls[-1]}\n{{"hash": 1, "prev": "x"}}', "is not an audit record"),
        (lambda ls: f"{ls[-1]}\n" + "[" * 100_000 + "]" * 100_000, "is not an audit record"),
        (lambda ls: ls[-1].replace('"n": 2', '"n": 7'), "was edited"),
        (lambda ls: f"{ls[0]}\n{ls[2]}", "not chained to the line before"),
        (lambda ls: f"@@nonewline\n{ls[-1]}", "incomplete"),
        (lambda ls: "@@notfile", "not a regular file"),
    ],
)
def test_a_damaged_tail_is_refused_with_how_to_repair(tail, said) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HostStateError) as caught:
        audit_log.audit_tail_hash("lab-1", tail(records(3)))
    assert said in caught.value.message and "refusing to change anything" in caught.value.message
    assert caught.value.hint and audit_log.AUDIT_LOG in caught.value.hint
    assert caught.value.exit_code == ExitCode.DEPLOYMENT_FAILED  # exit 5
    assert isinstance(caught.value, DeploymentError)


# --- the host's state ---------------------------------------------------------------------


def state_output(audit: str = "", current: str = "", notdir: str = "", intent: str = "") -> str:
    return f"@@audit\n{audit}\n@@current\n{current}\n@@notdir\n{notdir}\n@@intent\n{intent}\n"


def test_the_host_state_is_read_and_checked() -> None:
    lines = records(2)
    state = host_check.check_host_state("h", state_output("\n".join(lines), f"link {RELEASES}/3"))
    assert state == host_check.HostState(json.loads(lines[-1])["hash"], f"{RELEASES}/3", None)
    fresh = host_check.check_host_state("h", state_output())
    assert fresh == host_check.HostState(GENESIS, None, None)


def test_the_read_only_scripts_succeed_on_a_host_without_any_appliance_state() -> None:
    # Read-only: they only read /var/log/appliance, /var/lib/appliance, /opt/appliance here.
    for script in (host_check.STATE_SCRIPT, audit_log.AUDIT_TAIL_SCRIPT):
        result = sh(script)
        assert result.returncode == 0, (script, result.stderr)
    if not Path(audit_log.AUDIT_LOG).exists() and not Path("/opt/appliance").exists():
        assert host_check.check_host_state(
            "h", sh(host_check.STATE_SCRIPT).stdout
        ) == host_check.HostState(GENESIS, None, None)


@pytest.mark.parametrize(
    ("output", "said", "hint"),
    [
        (state_output(current="other"), "is not a link to a release", "mv /opt/appliance/current"),
        (state_output(current="link /tmp/x"), "is not a link to a release", "mv"),
        (state_output(current=f"link {RELEASES}/../3"), "is not a link to a release", "mv"),
        (state_output(notdir="/var/lib/appliance/journal"), "is not a directory", "mv"),
        (state_output(intent="{half"), "is damaged", f"rm {host_check.INTENT}"),
        (state_output(intent='{"to": 3, "record": {}}'), "is damaged", "rm"),
        (state_output(intent="[" * 100_000 + "]" * 100_000), "is damaged", "rm"),
        (state_output(audit="garbage"), "is not an audit record", "sed -i"),
        ("@@audit\n", "could not be read", None),
    ],
)
def test_a_damaged_host_state_is_refused(output: str, said: str, hint: str | None) -> None:
    with pytest.raises(HostStateError) as caught:
        host_check.check_host_state("lab-1", output)
    assert said in caught.value.message
    if hint is not None:
        assert caught.value.hint is not None and hint in caught.value.hint


def test_a_pending_switch_is_reconciled_by_where_current_points() -> None:
    intent = {"to": f"{RELEASES}/2", "from": f"{RELEASES}/1",
              "record": {"event": "rollback", "to": 2, "result": "ok"}}  # fmt: skip
    state = host_check.check_host_state(
        "h", state_output(current=f"link {RELEASES}/2", intent=json.dumps(intent))
    )
    assert state.intent == intent
    done = host_check.reconcile_record(intent, state.current)
    assert done["result"] == "ok" and done["reconciled"] is True and done["event"] == "rollback"
    assert "had been switched" in done["note"]
    undone = host_check.reconcile_record(intent, f"{RELEASES}/1")
    assert undone["result"] == "interrupted" and "was not switched" in undone["note"]
    assert host_check.reconcile_record(intent, None)["result"] == "interrupted"


# --- the install record and its check (real python3, a real directory) -------------------


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def lay_down(d: HostDesired, root: Path) -> HostDesired:
    """The release of ``d`` laid out under ``root`` (files, targets.json, a small venv), its
    install record written as the staging step writes it; ``d`` pointed there."""
    release = root / "releases" / str(d.version)
    files = []
    for f in d.release_files:
        rel = f.path.removeprefix(d.release_dir + "/")
        (release / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, release / rel)
        files.append(dataclasses.replace(f, path=f"{release}/{rel}"))
    lib = release / "venv/lib/python3/site-packages/llama_cpp"
    lib.mkdir(parents=True)
    (lib / "server.py").write_text("def serve():\n    return 'ok'\n")
    (release / "venv/bin").mkdir(parents=True)
    os.symlink("/usr/bin/python3", release / "venv/bin/python")
    nothing = dataclasses.replace(d, venvs=(), unpacks=())
    assert sh(staging_command(nothing, str(release))).returncode == 0  # the record alone
    assert (release / RECORD_FILE).exists()
    return dataclasses.replace(d, release_dir=str(release), release_files=tuple(files))


def check(release: Path, *, full: bool = False) -> tuple[str, ...]:
    result = sh(check_command([str(release)], full=full))
    assert result.returncode == 0, result.stderr
    return parse_integrity(result.stdout)[str(release)]


def test_an_intact_release_checks_clean_and_every_change_is_found(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    _, d = desired(make_bundle, trust)
    release = Path(lay_down(d, tmp_path).release_dir)
    assert check(release) == () and check(release, full=True) == ()
    code = release / "venv/lib/python3/site-packages/llama_cpp/server.py"
    stat = code.stat()
    # An edit of the same size, its mtime put back: the small file's digest still finds it.
    code.write_text(code.read_text().replace("'ok'", "'no'"))
    os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check(release) == (
        f"venv/lib/python3/site-packages/llama_cpp/server.py: content changed "
        f"(sha256 {__import__('hashlib').sha256(code.read_bytes()).hexdigest()[:12]}...)",
    )
    (code.parent / "evil.pth").write_text("import os\n")
    (release / "venv/bin/python").unlink()
    os.symlink("/tmp/python", release / "venv/bin/python")
    model = next(release.glob("files/**/*.gguf"), None) or next(release.glob("files/*/*"))
    model.unlink()
    problems = check(release)
    assert any("evil.pth: added" in p for p in problems)
    assert any("venv/bin/python: link target changed" in p for p in problems)
    rel = str(model.relative_to(release))
    assert f"{rel}: missing" in problems
    (release / RECORD_FILE).unlink()
    assert "no install record" in check(release)[0]


def signed(release: Path, **targets: bytes) -> None:
    """A ``metadata/targets.json`` naming ``targets`` (path under files/ -> content)."""
    import hashlib

    (release / "metadata").mkdir(parents=True)
    entries = {p: {"length": len(b), "hashes": {"sha256": hashlib.sha256(b).hexdigest()}}
               for p, b in targets.items()}  # fmt: skip
    (release / "metadata/targets.json").write_text(json.dumps({"signed": {"targets": entries}}))


def test_a_big_file_edited_in_place_with_its_mtime_put_back_needs_the_full_check(
    tmp_path: Path,
) -> None:
    release = tmp_path / "r"
    (release / "files").mkdir(parents=True)
    big = release / "files/model.gguf"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    signed(release, **{"model.gguf": big.read_bytes()})
    assert sh(record_command(str(release))).returncode == 0
    stat = big.stat()
    with big.open("r+b") as f:
        f.seek(1000)
        f.write(b"X")
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check(release) == ()  # quick: size and mtime only for big files (documented)
    assert check(release, full=True)[0].startswith("files/model.gguf: content changed")
    big.write_bytes(b"\0" * 10)
    assert check(release) == ("files/model.gguf: size 10, was 2097152",)


def test_problems_are_capped_and_parse_keeps_releases_apart(tmp_path: Path) -> None:
    release = tmp_path / "r"
    signed(release)
    assert sh(record_command(str(release))).returncode == 0
    for i in range(MAX_PROBLEMS + 5):
        (release / f"added-{i}").write_text("x")
    problems = check(release)
    assert len(problems) == MAX_PROBLEMS + 1 and problems[-1] == "... and 5 more"
    parsed = parse_integrity("integrity\t/a\tok\nintegrity\t/b\tx: missing\nnoise\nintegrity\t/c\n")
    assert parsed == {"/a": (), "/b": ("x: missing",)}


# --- the probe and the diff of a tampered release ------------------------------------------


def test_the_probe_and_diff_see_a_tampered_release(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path
) -> None:
    _, d = desired(make_bundle, trust)
    laid = lay_down(d, tmp_path)

    def probe() -> dict[str, object]:
        result = sh(probe_script(laid))
        assert result.returncode == 0, result.stderr
        return parse_probe(result.stdout)

    intact = probe()
    assert intact["release"] is True and release_damage(laid, intact) is None
    assert "reinstall" not in {c.kind for c in diff(laid, intact)}
    code = Path(laid.release_dir) / "venv/lib/python3/site-packages/llama_cpp/server.py"
    code.write_text(code.read_text() + "import os; os.system('id')\n")
    tampered = probe()
    [change] = [c for c in diff(laid, tampered) if c.kind == "reinstall"]
    assert change.target == laid.release_dir
    assert "venv/lib/python3/site-packages/llama_cpp/server.py" in change.detail
    assert change.detail.startswith(f"release {laid.version} differs from what was installed")
    # A bundle file changed is a reinstall too (never a put-file into a read-only release alone).
    assert release_damage(laid, {**intact, "files": {}}) is not None
    # A release the check could not run on is not taken as intact.
    assert "could not be checked" in str(release_damage(laid, {**intact, "integrity": {}}))
    assert release_damage(laid, {**tampered, "release": False}) is None  # not there: staged anew


# --- disk space before the upload ---------------------------------------------------------


def disk_probe(free: int, mount: str = "/opt/appliance/releases") -> str:
    return f"disk\t{mount}\ttmpfs\t1048576\t0\t{free}\t0%\t{mount}\n"


def test_disk_space_is_parsed_and_a_shortfall_named(
    make_bundle: BundleFactory, trust: Trust
) -> None:
    _, d = desired(make_bundle, trust)
    files = sum(f.length for f in d.release_files)
    actual = parse_probe(disk_probe(1024))
    assert actual["disk"] == {"path": "/opt/appliance/releases", "filesystem": "tmpfs",
                              "free": 1024, "mount": "/opt/appliance/releases"}  # fmt: skip
    assert space_needed(d, actual) == files + HEADROOM
    shortfall = disk_shortfall(d, actual)
    assert shortfall is not None and (shortfall.needed, shortfall.free) == (files + HEADROOM, 1024)
    text = space_message("lab-1", shortfall)
    assert "/opt/appliance/releases (tmpfs)" in text
    assert f"{files + HEADROOM} bytes needed" in text and "1024 bytes free" in text
    assert disk_shortfall(d, parse_probe(disk_probe(files + HEADROOM))) is None
    # Bytes already staged by an interrupted run are not counted twice.
    staged = parse_probe(disk_probe(HEADROOM + 10) + f"staged\t-\t{files}\n")
    assert space_needed(d, staged) == HEADROOM and disk_shortfall(d, staged) is None
    # A mount point with blanks; an intact release in place needs nothing.
    assert parse_probe(disk_probe(5, "/mnt/my disk"))["disk"]["mount"] == "/mnt/my disk"
    in_place = {**actual, "release": True, "integrity": {d.release_dir: ()},
                "files": {f.path: f.sha256 for f in d.release_files}}  # fmt: skip
    assert space_needed(d, in_place) == 0 and disk_shortfall(d, in_place) is None


def test_venvs_count_a_few_times_their_wheels(make_bundle: BundleFactory, trust: Trust) -> None:
    from appliance.deploy.host_desired import VenvSpec
    from appliance.deploy.probe import VENV_FACTOR

    _, d = desired(make_bundle, trust)
    wheel = ReleaseFile(f"{d.release_dir}/files/wheels/x.whl", Path("/x"), 1000, "0" * 64)
    with_venv = dataclasses.replace(
        d,
        release_files=(*d.release_files, wheel),
        venvs=(VenvSpec(f"{d.release_dir}/venv", f"{d.release_dir}/files/wheels", ("x",)),),
    )
    wheels = sum(f.length for f in with_venv.release_files if "/files/wheels/" in f.path)
    assert space_needed(with_venv, {}) == space_needed(d, {}) + 1000 + VENV_FACTOR * wheels


# --- cancellation is journaled -------------------------------------------------------------


def test_sigterm_is_told_apart_from_ctrl_c_and_journaled_as_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    from appliance.deploy import converge
    from appliance.errors import Cancelled
    from appliance.plan.inventory import HostEntry

    with pytest.raises(KeyboardInterrupt), converge.sigterm_as_interrupt() as seen:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between bytecodes
            pass
    assert seen.sigterm is True
    with converge.sigterm_as_interrupt() as quiet:
        pass
    assert quiet.sigterm is False

    sent: list[str] = []  # a fake of the SSH runner: records the scripts it would run
    monkeypatch.setattr(transport, "run", lambda host, script, **kw: sent.append(script) or "")
    host = HostEntry(name="lab-1", address="10.0.0.2", roles=["model-server"])
    for exc, signals, by in [
        (KeyboardInterrupt(), seen, "SIGTERM"),
        (KeyboardInterrupt(), quiet, "interrupted (Ctrl-C)"),
        (Cancelled("x"), quiet, "cancelled by the operator"),
    ]:
        sent.clear()
        converge.journal_cancelled([host], "d1", "converge", exc, signals)
        [script] = sent
        assert "/var/lib/appliance/journal/d1.jsonl" in script
        line = json.loads(script.split("printf '%s\\n' ")[1].split(" >> ")[0].strip("'"))
        assert (line["step"], line["status"], line["by"]) == ("converge", "cancelled", by)
