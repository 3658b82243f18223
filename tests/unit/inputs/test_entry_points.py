"""Every entry point that reads a file refuses a hostile one cleanly: through the real CLI.

One parametrized test over (entry point x hostile input): a FIFO without a writer,
a directory, an endless character device (/dev/zero), an oversized (sparse) file,
nesting deeper than the parsers allow, a YAML alias expansion bomb, bytes that are
not UTF-8, and duplicate keys. Each case runs ``python -m appliance`` in a fresh
interpreter with a timeout (a hang fails the test) and asserts the exit code
(2 for operator input, 4 for bundle content), a message on stderr naming the file
and the problem, no traceback, and the ``--json`` error object where the command
has ``--json``. Kinds that do not apply to an entry point (an alias bomb in a PEM
key) are listed in ``NOT_APPLICABLE`` with the reason, so nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.bundle.keys import generate_key, load_public_key
from appliance.bundle.trust import new_root, to_bytes, write_atomic
from tests.unit.bundle.conftest import BundleFactory, Trust

ROOT = Path(__file__).resolve().parents[3]
FACTS = str(ROOT / "tests/fixtures/facts/h100x8.json")
INVENTORY = ROOT / "tests/fixtures/inventory/good.yaml"
MODEL = ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3"
TIMEOUT = 60  # a hang (a FIFO opened blocking, /dev/zero read to the end) fails the case

# Deep enough for RecursionError in an unbounded parser, small enough for every size bound.
DEEP_JSON = b"[" * 5_000 + b"]" * 5_000
DEEP_YAML = b"a: " + b"[" * 5_000 + b"]" * 5_000 + b"\n"
ALIAS_BOMB = (
    b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
        for i in range(8)
    )
    + b"top: *i\n"
)
NOT_UTF8 = b'{"a": "\xff\xfe\xc0"}\n'
DUP_JSON = b'{"keys": 1, "keys": 2}\n'
DUP_YAML = b"schema_version: 1\nschema_version: 1\n"

KINDS = ("fifo", "directory", "device", "oversized", "deep", "alias-bomb", "not-utf8", "duplicate")
# What each kind's message says (one of these phrases must be on stderr).
PROBLEM = {
    "fifo": ("named pipe (FIFO)",),
    "directory": ("a directory",),
    "device": ("character device",),
    "oversized": ("larger than",),
    "deep": ("deeper than", "nested too deeply"),
    "alias-bomb": ("alias expansion bomb",),
    "not-utf8": ("not UTF-8",),
    "duplicate": ("duplicate",),
}


def make_hostile(path: Path, kind: str, fmt: str) -> Path:
    """``path`` made into the hostile ``kind`` of input (contents in ``fmt``: json, yaml, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "oversized":
        with path.open("wb") as handle:
            handle.truncate(4 * 1024**3)  # sparse: 4 GiB claimed, nothing on disk
    elif kind == "deep":
        path.write_bytes(DEEP_YAML if fmt == "yaml" else DEEP_JSON)
    elif kind == "alias-bomb":
        path.write_bytes(ALIAS_BOMB)
    elif kind == "not-utf8":
        path.write_bytes(NOT_UTF8)
    elif kind == "duplicate":
        path.write_bytes(DUP_YAML if fmt == "yaml" else DUP_JSON)
    else:
        raise AssertionError(kind)
    return path


@dataclass(frozen=True)
class EntryPoint:
    """A command and the file of it that is made hostile."""

    fmt: str  # json, yaml, pem, text, lines
    code: int  # exit code for a refused file: 2 operator input, 4 bundle content
    # (tmp_path, the path to make hostile) -> argv; may write the other files it needs.
    argv: Callable[[Path, Path], list[str]]
    json_flag: bool = False  # the command has --json: the error comes as a JSON object too
    needs_bundle: bool = False
    # Bundle trust files are read without following links: /dev/zero behind a link is
    # refused as the link it is.
    no_links: bool = False
    # A file the command also rewrites in place is checked as an output first (exit 2):
    # a FIFO, directory or link there is refused before it is read.
    rewritten: bool = False


def _keys(tmp: Path) -> tuple[Path, Path, Path]:
    """A key pair and a one-key root signed by nobody yet (for trust sign)."""
    pair = generate_key(tmp / "own-keys", "alice")
    key = load_public_key(pair.public_path)[0]
    root = new_root([key], 1, datetime.now(UTC).replace(microsecond=0) + timedelta(days=30))
    root_path = tmp / "root.json"
    write_atomic(root_path, to_bytes(root))
    return pair.private_path, pair.public_path, root_path


def _model_dir(tmp: Path, hostile: Path) -> list[str]:
    return ["plan", "--facts", FACTS, "--model", str(hostile.parent), "--json"]


def _with_config(tmp: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_bytes((MODEL / "config.json").read_bytes())


def _beside_config(tmp: Path, hostile: Path) -> list[str]:
    _with_config(tmp, hostile.parent)
    return _model_dir(tmp, hostile)


def _profiles(tmp: Path, hostile: Path) -> list[str]:
    return ["plan", "--facts", FACTS, "--profiles-dir", str(hostile.parent), "--json"]


def _recipe(tmp: Path, hostile: Path) -> list[str]:
    return ["bundle", "build", "--recipe", str(hostile), "--out", str(tmp / "out"), "--json"]


def _artifact_set(tmp: Path, hostile: Path) -> list[str]:
    recipe = hostile.parent / "recipe.yaml"
    recipe.write_text(f"name: demo\nartifact_sets: [{hostile.name}]\n")
    return _recipe(tmp, recipe)


def _trust_init(tmp: Path, hostile: Path) -> list[str]:
    return ["trust", "init", "--key", str(hostile), "--threshold", "1", "--out", str(tmp / "r")]


def _trust_sign_key(tmp: Path, hostile: Path) -> list[str]:
    _, _, root = _keys(tmp)
    return ["trust", "sign", "--key", str(hostile), str(root)]


def _passphrase(tmp: Path, hostile: Path) -> list[str]:
    private, _, root = _keys(tmp)
    return ["trust", "sign", "--key", str(private), "--passphrase-file", str(hostile), str(root)]


def _keys_generate_passphrase(tmp: Path, hostile: Path) -> list[str]:
    out = tmp / "new-keys"
    return ["keys", "generate", "--out", str(out), "--passphrase-file", str(hostile), "--json"]


def _trust_show(tmp: Path, hostile: Path) -> list[str]:
    return ["trust", "show", str(hostile), "--json"]


def _trust_sign_root(tmp: Path, hostile: Path) -> list[str]:
    private, _, _ = _keys(tmp)
    return ["trust", "sign", "--key", str(private), str(hostile)]


def _deploy(tmp: Path, *extra: str, inventory: Path = INVENTORY) -> list[str]:
    return [
        "deploy", "--profile", "auto", "--bundle", str(tmp / "no-bundle"),
        "--trust", str(tmp / "no-root.json"), "--inventory", str(inventory),
        "--dry-run", "--json", *extra,
    ]  # fmt: skip


def _deploy_inventory(tmp: Path, hostile: Path) -> list[str]:
    return _deploy(tmp, inventory=hostile)


def _deploy_site(tmp: Path, hostile: Path) -> list[str]:
    return _deploy(tmp, "--site", str(hostile))


SITE_JWKS = """schema_version: 1
network: {site_cidrs: [10.231.0.0/24], admin_cidrs: [10.231.0.1/32]}
tokens:
  issuer: https://sso.site.example/realms/appliance
  jwks_file: NAME
"""
SITE_SSO = """schema_version: 1
network: {site_cidrs: [10.231.0.0/24], admin_cidrs: [10.231.0.1/32]}
tokens:
  issuer: https://10.231.0.2:8443/realms/appliance
  jwks_url: http://127.0.0.1:8180/realms/appliance/protocol/openid-connect/certs
sso:
  url: http://127.0.0.1:8180
  realm: appliance
  install: {access_file: NAME, secrets_dir: secrets}
"""


def _site_naming(template: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, hostile: Path) -> list[str]:
        site = hostile.parent / "site.yaml"
        site.write_text(template.replace("NAME", hostile.name))
        return _deploy(tmp, "--site", str(site))

    return argv


def _render_inventory(tmp: Path, hostile: Path) -> list[str]:
    return [
        "render", "--profile", "a100-single", "--target", "host", "--out", str(tmp / "rendered"),
        "--inventory", str(hostile), "--json",
    ]  # fmt: skip


def _audit_verify(tmp: Path, hostile: Path) -> list[str]:
    return ["audit", "verify", str(hostile)]


def _verify_trust(tmp: Path, hostile: Path) -> list[str]:
    return ["bundle", "verify", "--trust", str(hostile), str(tmp / "bundle"), "--json"]


def _verify_state(name: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, hostile: Path) -> list[str]:
        return [
            "bundle", "verify", "--trust", str(tmp / "site/root.json"),
            "--state", str(hostile.parent.parent if name == "kept" else hostile.parent),
            str(tmp / "bundle"), "--json",
        ]  # fmt: skip

    argv.__name__ = name
    return argv


ENTRY_POINTS: dict[str, tuple[str, EntryPoint]] = {
    # name: (the hostile file's name inside its own directory, the entry point)
    "plan --facts": ("facts.json", EntryPoint("json", 2, lambda t, h: ["plan", "--facts", str(h), "--json"], True)),
    "plan --model DIR (config.json)": ("model/config.json", EntryPoint("json", 2, _model_dir, True)),
    "plan --model DIR (index.json)": ("model/model.safetensors.index.json", EntryPoint("json", 2, _beside_config, True)),
    "plan --profiles-dir": ("profiles/x.yaml", EntryPoint("yaml", 2, _profiles, True)),
    "bundle build --recipe": ("recipe.yaml", EntryPoint("yaml", 2, _recipe, True)),
    "bundle build (artifact set)": ("set.yaml", EntryPoint("yaml", 2, _artifact_set, True)),
    "trust init --key": ("alice.pub.json", EntryPoint("json", 2, _trust_init)),
    "trust sign --key": ("alice.key", EntryPoint("pem", 2, _trust_sign_key)),
    "trust sign --passphrase-file": ("pass.txt", EntryPoint("text", 2, _passphrase)),
    "keys generate --passphrase-file": ("pass.txt", EntryPoint("text", 2, _keys_generate_passphrase, True)),
    "trust show ROOT": ("root.json", EntryPoint("json", 4, _trust_show, True, no_links=True)),
    "trust sign ROOT": ("root.json", EntryPoint("json", 4, _trust_sign_root, no_links=True, rewritten=True)),
    "bundle verify --trust": ("anchor/root.json", EntryPoint("json", 4, _verify_trust, True, True, True)),
    "bundle verify --state (a kept root)": ("state/roots/2.root.json", EntryPoint("json", 4, _verify_state("kept"), True, True, True)),
    "bundle verify --state (accepted.json)": ("state/accepted.json", EntryPoint("json", 4, _verify_state("accepted"), True, True, True)),
    "deploy --inventory": ("inventory.yaml", EntryPoint("yaml", 2, _deploy_inventory, True)),
    "deploy --site": ("site.yaml", EntryPoint("yaml", 2, _deploy_site, True)),
    "deploy --site (tokens.jwks_file)": ("site/jwks.json", EntryPoint("json", 2, _site_naming(SITE_JWKS), True)),
    "deploy --site (access file)": ("site/access.yaml", EntryPoint("yaml", 2, _site_naming(SITE_SSO), True)),
    "render --inventory": ("inventory.yaml", EntryPoint("yaml", 2, _render_inventory, True)),
    "audit verify FILE": ("audit.jsonl", EntryPoint("lines", 2, _audit_verify)),
}  # fmt: skip

# Kinds that cannot apply to an entry point, and why (listed, never skipped silently).
NOT_APPLICABLE: dict[tuple[str, str], str] = {}
for _name, (_, _entry) in ENTRY_POINTS.items():
    if _entry.fmt != "yaml":
        NOT_APPLICABLE[(_name, "alias-bomb")] = f"{_entry.fmt} has no aliases"
    if _entry.fmt in ("pem", "text"):
        NOT_APPLICABLE[(_name, "deep")] = f"{_entry.fmt} has no nesting"
        NOT_APPLICABLE[(_name, "duplicate")] = f"{_entry.fmt} has no keys"
    if _entry.fmt == "pem":
        NOT_APPLICABLE[(_name, "not-utf8")] = "a PEM key is bytes; a bad one is 'not a PEM key'"
    if _entry.fmt == "lines":
        # audit verify reports records it cannot parse as problems of the chain (exit 4 below).
        NOT_APPLICABLE[(_name, "deep")] = "a line's nesting is a chain problem: see below"
        NOT_APPLICABLE[(_name, "duplicate")] = "a line's duplicate key is a chain problem"
# A model's tokenizer files only inform the chat template; an index file is refused.

CASES = [
    pytest.param(name, kind, id=f"{name} x {kind}")
    for name in ENTRY_POINTS
    for kind in KINDS
    if (name, kind) not in NOT_APPLICABLE
]


def run_cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *argv], capture_output=True, text=True, cwd=ROOT,
        timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "APPLIANCE_NO_TUI": "1"},
    )  # fmt: skip


def assert_refused(
    result: subprocess.CompletedProcess[str], code: int, hostile: Path, phrases: tuple[str, ...]
) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    assert str(hostile) in result.stderr or hostile.name in result.stderr, result.stderr
    assert any(phrase in result.stderr for phrase in phrases), result.stderr


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_a_hostile_input_file_is_refused_cleanly(
    name: str, kind: str, tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    relative, entry = ENTRY_POINTS[name]
    if entry.needs_bundle:
        make_bundle(directory=tmp_path / "bundle")
    hostile = tmp_path / "in" / relative
    hostile.parent.mkdir(parents=True, exist_ok=True)
    argv = entry.argv(tmp_path, hostile)
    make_hostile(hostile, kind, entry.fmt)
    result = run_cli(argv)
    phrases = ("symbolic link",) if kind == "device" and entry.no_links else PROBLEM[kind]
    code = 2 if entry.rewritten and kind in ("fifo", "directory", "device") else entry.code
    assert_refused(result, code, hostile, phrases)
    if entry.json_flag and "--json" in argv:
        error = json.loads(result.stdout)
        assert error["ok"] is False and error["exit_code"] == code
        assert any(phrase in error["message"] for phrase in phrases)


def test_not_applicable_pairs_name_real_entry_points_and_kinds() -> None:
    for name, kind in NOT_APPLICABLE:
        assert name in ENTRY_POINTS and kind in KINDS


# --- model files that are not JSON: GGUF headers, safetensors headers -----------------


def _gguf(*, tensors: int = 0, kvs: int = 1, key_len: int = 4) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs)
    return head + struct.pack("<Q", key_len)


GGUF_CASES = {
    # A header claiming a 2**40-byte key on a sparse file: refused by its bound, not read.
    "huge string": (_gguf(key_len=2**40), "more than any model has"),
    # 10**12 metadata entries of zeros on a sparse file: refused before looping on them.
    "huge metadata count": (_gguf(kvs=10**12), "more than any model has"),
    "huge tensor count": (_gguf(tensors=10**12), "more than any model has"),
}


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_a_hostile_gguf_header_is_refused_quickly(case: str, tmp_path: Path) -> None:
    header, phrase = GGUF_CASES[case]
    path = tmp_path / "model.gguf"
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(2**41)  # sparse: the claimed sizes "fit" in the file
    result = run_cli(["plan", "--facts", FACTS, "--model", str(path), "--json"])
    assert_refused(result, 2, path, (phrase,))


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_gguf_path_that_is_not_a_regular_file_is_refused(kind: str, tmp_path: Path) -> None:
    path = make_hostile(tmp_path / "model.gguf", kind, "gguf")
    result = run_cli(["plan", "--facts", FACTS, "--model", str(path), "--json"])
    phrase = "Hugging Face model directory" if kind == "directory" else PROBLEM[kind][0]
    assert_refused(result, 2, path, (phrase,))


SAFETENSORS_CASES = {
    "header length of gigabytes": (struct.pack("<Q", 2**40), "header length field says"),
    "deeply nested header": (struct.pack("<Q", len(DEEP_JSON)) + DEEP_JSON, "deeper than"),
    "duplicate keys in header": (struct.pack("<Q", len(DUP_JSON)) + DUP_JSON, "duplicate"),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_a_hostile_safetensors_header_is_refused(case: str, tmp_path: Path) -> None:
    data, phrase = SAFETENSORS_CASES[case]
    directory = tmp_path / "model"
    _with_config(tmp_path, directory)
    path = directory / "model.safetensors"
    with path.open("wb") as handle:
        handle.write(data)
        handle.truncate(2**41)  # sparse
    result = run_cli(["plan", "--facts", FACTS, "--model", str(directory), "--json"])
    assert_refused(result, 2, path, (phrase,))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_weight_file_that_is_not_regular_is_refused(kind: str, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    _with_config(tmp_path, directory)
    path = make_hostile(directory / "model.safetensors", kind, "bin")
    result = run_cli(["plan", "--facts", FACTS, "--model", str(directory), "--json"])
    assert_refused(result, 2, path, (PROBLEM[kind][0],))


def test_a_hostile_beside_config_config_never_hangs_and_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    _with_config(tmp_path, directory)
    os.mkfifo(directory / "tokenizer_config.json")
    result = run_cli(["plan", "--facts", FACTS, "--model", str(directory), "--json"])
    assert "Traceback" not in result.stderr
    assert "tokenizer_config.json" in result.stdout  # an assumption, listed in the plan


# --- directories given as input ----------------------------------------------------------


DIRECTORY_INPUTS: dict[str, Callable[[Path, Path], list[str]]] = {
    "plan --model DIR": lambda t, h: ["plan", "--facts", FACTS, "--model", str(h), "--json"],
    "plan --profiles-dir": lambda t, h: ["plan", "--facts", FACTS, "--profiles-dir", str(h), "--json"],
    "bundle verify BUNDLE": lambda t, h: ["bundle", "verify", "--trust", str(t / "site/root.json"), str(h), "--json"],
    "bundle join PARTS": lambda t, h: ["bundle", "join", "--trust", str(t / "site/root.json"), "--out", str(t / "joined"), str(h), "--json"],
}  # fmt: skip


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("name", sorted(DIRECTORY_INPUTS))
def test_a_fifo_or_device_given_for_a_directory_is_refused(
    name: str, kind: str, tmp_path: Path, trust: Trust
) -> None:
    hostile = make_hostile(tmp_path / "in" / "dir", kind, "dir")
    result = run_cli(DIRECTORY_INPUTS[name](tmp_path, hostile))
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode in (2, 4), output
    assert str(hostile) in result.stderr, result.stderr


# --- bundle join with a FIFO among the parts ---------------------------------------------


def test_join_refuses_a_fifo_among_the_parts_without_blocking(
    tmp_path: Path, make_bundle: BundleFactory, trust: Trust
) -> None:
    bundle = make_bundle(directory=tmp_path / "bundle")
    parts = tmp_path / "parts"
    split = run_cli(["bundle", "split", "--out", str(parts), "--part-size", "96KiB", str(bundle)])
    assert split.returncode == 0, split.stderr
    media = sorted(p for p in parts.rglob("*") if p.is_file() and ".part" in p.name)
    assert len(media) > 1, sorted(parts.rglob("*"))
    victim = media[1]
    victim.unlink()
    os.mkfifo(victim)
    result = run_cli(
        ["bundle", "join", "--trust", str(trust.root_path), "--out", str(tmp_path / "joined"),
         *sorted({str(p.parent) for p in media}), "--json"]
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 4, output
    assert victim.name in result.stderr and "special file" in result.stderr
    assert not (tmp_path / "joined").exists()


# --- an audit log's hostile records are problems of the chain, never a crash ---------------


@pytest.mark.parametrize("line", [DEEP_JSON, DUP_JSON.strip()], ids=["deep", "duplicate"])
def test_audit_verify_reports_a_hostile_record_as_a_problem(line: bytes, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(line + b"\n")
    result = run_cli(["audit", "verify", str(log)])
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 4, output
    assert "line 1" in output
