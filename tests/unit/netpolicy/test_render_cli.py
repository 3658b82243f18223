"""``appliance render`` as scripts see it: files written whole, exit codes, stderr, ``--json``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures"


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "render", *map(str, args)], capture_output=True,
        text=True, cwd=cwd, timeout=60, stdin=subprocess.DEVNULL, check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def assert_clean_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name)


def test_host_with_inventory_writes_one_ruleset_per_host(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    result = run("--profile", "h100-cluster", "--target", "host", "--out", out, "--inventory",
                 FIXTURES / "three-hosts.yaml", "--site-cidr", "10.20.0.0/16",
                 "--admin-cidr", "10.20.5.0/24")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "nftables/host-edge-1.nft", "nftables/host-gpu-1.nft", "nftables/host-gpu-2.nft",
        "policy.txt",
    ]  # fmt: skip
    assert "nothing was changed on any host" in result.stdout
    policy = (out / "policy.txt").read_text()
    assert "model-server  -> model-server  any/tcp" in policy
    assert "gpu-2                10.20.2.12       ssh 2222  model-server" in policy
    assert leftovers(tmp_path) == []


def test_host_with_a_group_says_where_its_addresses_came_from(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    result = run("--profile", "h100-cluster", "--target", "host", "--out", out, "--inventory",
                 FIXTURES / "group-hosts.yaml", "--site-cidr", "10.20.0.0/16",
                 "--admin-cidr", "10.20.5.0/24")  # fmt: skip
    assert result.returncode == 0, result.stderr
    policy = (out / "policy.txt").read_text()
    assert "group:pp      -> group:pp:head 29501/tcp" in policy
    assert "group:pp      -> group:pp      40000-44095/tcp" in policy
    assert "any/tcp" not in policy  # the group's ports replace the any-port peer flow
    assert "serving group pp: gpu-1 10.20.2.11 (head), gpu-2 10.20.2.12, gpu-3 10.20.2.13" in policy
    assert "group addresses from the inventory" in policy
    head = (out / "nftables/host-gpu-1.nft").read_text()
    assert 'iifname "eth1" ip saddr @group_pp_v4 tcp dport 29501 accept' in head


def test_k8s_with_a_group_renders_its_policies(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    result = run("--profile", "h100-cluster", "--target", "k8s", "--out", out, "--inventory",
                 FIXTURES / "group-hosts.yaml", "--site-cidr", "10.20.0.0/16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifests = (out / "manifests/10-networkpolicies.yaml").read_text()
    assert "name: allow-group-pp" in manifests and "name: allow-head-of-group-pp" in manifests
    assert "endPort: 44095" in manifests


def test_k8s_json_lists_what_was_written(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    out.mkdir()  # an empty directory is fine
    result = run("--profile", "cpu-llamacpp", "--target", "k8s", "--out", out,
                 "--site-cidr", "10.20.0.0/16", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert sorted(data) == ["directory", "files", "profile", "target"]
    assert (data["profile"], data["target"], data["directory"]) == ("cpu-llamacpp", "k8s", str(out))
    assert [f["path"] for f in data["files"]] == [
        "analysis/stand-in-workloads.yaml", "manifests/00-namespace.yaml",
        "manifests/10-networkpolicies.yaml", "policy.txt",
    ]  # fmt: skip
    for entry in data["files"]:
        content = (out / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["bytes"] == len(content)


def test_a_non_empty_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("--profile", "cpu-llamacpp", "--target", "k8s", "--out", out, "--site-cidr",
                 "10.20.0.0/16")  # fmt: skip
    assert_clean_failure(result, "expected a new or empty directory; found 1 entry (keep.txt)",
                         "Choose a new or empty directory")  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == []


BAD = {
    "no site network": (
        ["--profile", "cpu-llamacpp", "--target", "host", "--admin-cidr", "10.0.0.0/24"],
        ["expected at least one --site-cidr", "Add --site-cidr CIDR"],
    ),
    "no admin network": (
        ["--profile", "cpu-llamacpp", "--target", "host", "--site-cidr", "10.20.0.0/16"],
        ["expected an admin network (--admin-cidr)", "lock them out"],
    ),
    "multi-node without inventory": (
        ["--profile", "h100-cluster", "--target", "host", "--site-cidr", "10.20.0.0/16",
         "--admin-cidr", "10.20.5.0/24"],
        ["expected an inventory naming those hosts", "Add --inventory FILE"],
    ),
    "inventory without groups with k8s": (
        ["--profile", "cpu-llamacpp", "--target", "k8s", "--site-cidr", "10.20.0.0/16",
         "--inventory", str(FIXTURES / "three-hosts.yaml")],
        ["with --target k8s: expected serving groups", "found none", "Drop --inventory"],
    ),
    "admin network with k8s": (
        ["--profile", "cpu-llamacpp", "--target", "k8s", "--site-cidr", "10.20.0.0/16",
         "--admin-cidr", "10.20.5.0/24"],
        ["--admin-cidr applies to --target host"],
    ),
    "group with a single-node profile": (
        ["--profile", "cpu-llamacpp", "--target", "host", "--site-cidr", "10.20.0.0/16",
         "--admin-cidr", "10.20.5.0/24", "--inventory", str(FIXTURES / "group-hosts.yaml")],
        ["profile cpu-llamacpp serves on one node", "expected a multi-node profile"],
    ),
    "group member outside the site": (
        ["--profile", "h100-cluster", "--target", "host", "--site-cidr", "10.20.1.0/24",
         "--site-cidr", "10.20.5.0/24", "--admin-cidr", "10.20.5.0/24",
         "--inventory", str(FIXTURES / "group-hosts.yaml")],
        ["inventory host gpu-1: expected an address inside the site", "found 10.20.2.11"],
    ),
    "unknown profile": (
        ["--profile", "h100-clustr", "--target", "k8s", "--site-cidr", "10.20.0.0/16"],
        ["unknown profile 'h100-clustr'", "Did you mean 'h100-cluster'?"],
    ),
    "bad cidr": (
        ["--profile", "cpu-llamacpp", "--target", "k8s", "--site-cidr", "10.20.0.1/16"],
        ["--site-cidr '10.20.0.1/16': expected a network in CIDR form", "host bits"],
    ),
    "host by name in the inventory": (
        ["--profile", "cpu-llamacpp", "--target", "host", "--site-cidr", "10.20.0.0/16",
         "--admin-cidr", "10.20.5.0/24", "--inventory", str(FIXTURES / "dns-name.yaml")],
        ["inventory host edge-1: expected an IP address"],
    ),
    "missing inventory": (
        ["--profile", "cpu-llamacpp", "--target", "host", "--site-cidr", "10.20.0.0/16",
         "--admin-cidr", "10.20.5.0/24", "--inventory", "/nonexistent/inventory.yml"],
        ["/nonexistent/inventory.yml"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_what_to_do_and_writes_nothing(tmp_path: Path, case: str) -> None:
    args, fragments = BAD[case]
    out = tmp_path / "out"
    assert_clean_failure(run(*args, "--out", out), *fragments)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_bad_input_with_json_prints_the_error_object(tmp_path: Path) -> None:
    result = run("--profile", "cpu-llamacpp", "--target", "host", "--out", tmp_path / "x",
                 "--site-cidr", "10.20.0.0/16", "--json")  # fmt: skip
    assert result.returncode == ExitCode.USAGE
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["error"] == "NetworkPolicyError" and data["exit_code"] == 2


def test_missing_parent_directory(tmp_path: Path) -> None:
    result = run("--profile", "cpu-llamacpp", "--target", "k8s", "--out",
                 tmp_path / "no" / "such" / "dir", "--site-cidr", "10.20.0.0/16")  # fmt: skip
    assert_clean_failure(result, "its parent directory", "does not exist", "Create ")


def test_unwritable_parent_leaves_nothing() -> None:
    # As root a mode does not stop writes: run as `nobody` in a root-owned 0755 directory.
    with tempfile.TemporaryDirectory(prefix="appliance-render-") as top:
        parent = Path(top)
        parent.chmod(0o755)
        result = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
             "-m", "appliance", "render", "--profile", "cpu-llamacpp", "--target", "k8s", "--out",
             str(parent / "out"), "--site-cidr", "10.20.0.0/16"],
            capture_output=True, text=True, cwd="/", timeout=60, check=False,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        if "setpriv" in result.stderr or os.geteuid() != 0:
            pytest.skip(f"cannot switch to nobody here: {result.stderr[-300:]}")
        # Refused before rendering (output_paths probes the parent), not after.
        assert_clean_failure(result, "cannot be written: permission denied")
        assert list(parent.iterdir()) == []


def test_help_names_the_targets() -> None:
    result = run("--help")
    assert result.returncode == 0
    for word in (
        "--target {host,k8s}",
        "--site-cidr CIDR",
        "--admin-cidr CIDR",
        "--inventory FILE",
    ):
        assert word in result.stdout
