"""The Ansible engine without a host: generated variables and inventory, outcomes, rendering parity.

Parity: ``playbooks/render.yml`` (the very tasks ``deploy.yml`` imports) runs on
localhost through ``ansible-playbook`` with the generated host_vars, rendered
paths pointed into a temporary directory; every file must be byte-identical to
``appliance.deploy.render.render``. Nothing connects anywhere (connection=local).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.site.verify import verify_bundle
from appliance.deploy.engines.ansible import (
    PLAYBOOK,
    dump_host_vars,
    host_outcome,
    host_vars,
    write_run_files,
)
from appliance.deploy.host_desired import HostDesired, RenderedFile, VenvSpec
from appliance.deploy.integrity import record_command
from appliance.deploy.render import desired_state, render
from appliance.deploy.staging import checklist, staging_command, staging_commands
from appliance.errors import DeploymentError
from appliance.events import drain
from appliance.plan.engine_args import NodeCommand
from appliance.plan.inventory import HostEntry, SshSettings
from tests.unit.bundle.conftest import BundleFactory, Trust

BIN = Path(sys.executable).parent
PLAYBOOKS = PLAYBOOK.parent
COMMAND = NodeCommand(
    host="lab-1",
    role="single",
    argv=("/opt/appliance/current/venv/bin/python", "-m", "llama_cpp.server", "--model",
          "/opt/appliance/current/files/models/demo.gguf", "--host", "127.0.0.1", "--port", "8080"),
    env={"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"},
)  # fmt: skip


def host(name: str = "lab-1", address: str = "10.231.0.2", tmp: Path | None = None) -> HostEntry:
    ssh = SshSettings()
    if tmp is not None:
        ssh = SshSettings(key=tmp / "id_ed25519", known_hosts=tmp / "known_hosts")
    return HostEntry(name=name, address=address, ssh=ssh, roles=["model-server"])


@pytest.fixture
def plan(make_bundle: BundleFactory, trust: Trust) -> HostDesired:
    verified = drain(verify_bundle(make_bundle(version=3), trust.root_path))
    return desired_state(verified, COMMAND, host(), engine="llamacpp")


def with_venv(d: HostDesired) -> HostDesired:
    venv = VenvSpec(
        f"{d.release_dir}/venv", f"{d.release_dir}/files/wheels", ("demo==1.0", "extra[x]>=2")
    )
    return dataclasses.replace(d, venvs=(venv,))


def ansible(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env |= {"ANSIBLE_HOME": str(cwd / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(cwd / "tmp"),
            "ANSIBLE_REMOTE_TMP": str(cwd / "tmp"), "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180, check=False)  # fmt: skip


# --- variables and inventory (pure) -----------------------------------------------------


def test_host_vars_describe_the_release_the_pyinfra_engine_lays_down(plan: HostDesired) -> None:
    d = with_venv(plan)
    v = host_vars(d)
    staging = "/opt/appliance/releases/.staging-3"
    assert v["appliance_release_dir"] == "/opt/appliance/releases/3"
    assert v["appliance_staging_dir"] == staging
    assert v["appliance_directories"] == list(plan.directories)
    files = v["appliance_release_files"]
    assert [(f["dest"], f["sha256"]) for f in files] == [
        (f.path.removeprefix(plan.release_dir + "/"), f.sha256) for f in plan.release_files
    ]
    assert all(Path(f["src"]).is_absolute() and Path(f["src"]).is_file() for f in files)
    assert "metadata/targets.json" in {f["dest"] for f in files}
    # mkdir -p of every staged file's directory: each parent up to the staging directory
    assert v["appliance_staging_directories"] == sorted(
        {staging, f"{staging}/files", f"{staging}/files/models", f"{staging}/files/models/demo",
         f"{staging}/files/wheels", f"{staging}/files/artifacts", f"{staging}/files/artifacts/empty",
         f"{staging}/metadata"}
    )  # fmt: skip
    assert v["appliance_checksums"] == checklist(plan)  # the very bytes pyinfra writes
    assert v["appliance_staging_command"] == staging_command(d, staging)  # what pyinfra runs
    assert staging_commands(d, staging) == [
        f"rm -rf {staging}/venv && python3 -m venv {staging}/venv && PIP_NO_INDEX=1 "
        f"{staging}/venv/bin/pip install --quiet --no-index --find-links {staging}/files/wheels "
        "demo==1.0 'extra[x]>=2'"
    ]
    assert v["appliance_rendered"] == [
        {"path": r.path, "template": r.template, "mode": "0644", "sha256": r.sha256}
        for r in plan.rendered
    ]
    for name, value in plan.template_vars.items():  # top-level, for the templates
        assert v[name] == value
    # Nothing to build: the staging step still writes the install record (deploy/integrity.py).
    assert host_vars(plan)["appliance_staging_command"] == record_command(
        f"/opt/appliance/releases/.staging-{plan.version}"
    )


def test_host_vars_file_is_data_never_a_template(plan: HostDesired, tmp_path: Path) -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import is_trusted_as_template

    d = with_venv(plan)
    d = dataclasses.replace(d, template_vars={**d.template_vars, "content_digest": "0644",
                                              "model_name": "{{ lookup('pipe', 'id') }}"})  # fmt: skip
    path = tmp_path / "lab-1.yml"
    path.write_text(dump_host_vars(d))
    # Loaded the way Ansible loads inventory host_vars (trusted as templates) ...
    loaded = DataLoader().load_from_file(str(path), trusted_as_template=True)
    # ... the values are the plan's, with their types ("0644" stays a string) ...
    assert json.loads(json.dumps(loaded)) == json.loads(json.dumps(host_vars(d)))
    assert loaded["content_digest"] == "0644" and loaded["appliance_version"] == 3

    def strings(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [s for item in value.values() for s in strings(item)]
        if isinstance(value, list):
            return [s for item in value for s in strings(item)]
        return [value] if isinstance(value, str) else []

    # ... and none of them is a template.
    found = strings(loaded)
    assert len(found) > 20 and not any(is_trusted_as_template(s) for s in found)


@pytest.mark.parametrize(
    "name", ["ansible_host", "appliance_version", "hostvars", "item", "template_path", "hosts"]
)
def test_template_variables_cannot_shadow_ansible_or_playbook_variables(
    plan: HostDesired, name: str
) -> None:
    bad = dataclasses.replace(plan, template_vars={**plan.template_vars, name: "x"})
    with pytest.raises(DeploymentError, match=name):
        host_vars(bad)


def test_run_files_inventory_config_and_host_vars(plan: HostDesired, tmp_path: Path) -> None:
    a = dataclasses.replace(plan, host=host("lab-1", "10.231.0.2", tmp_path))
    b = dataclasses.replace(plan, host=host("lab-2", "10.231.0.3", tmp_path))
    files = write_run_files([a, b], tmp_path / "run")
    ini = files.inventory.read_text()
    assert (
        f"lab-1 ansible_host=10.231.0.2 ansible_user=root ansible_port=22 "
        f"ansible_ssh_private_key_file={tmp_path}/id_ed25519 "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={tmp_path}/known_hosts -o StrictHostKeyChecking=yes'"
    ) in ini
    assert "[model_server]\nlab-1\nlab-2\n" in ini
    assert files.host_vars == {
        "lab-1": files.inventory.parent / "host_vars/lab-1.yml",
        "lab-2": files.inventory.parent / "host_vars/lab-2.yml",
    }
    config = files.config.read_text()
    for line in ("host_key_checking = True", "gathering = explicit", "forks = 2",
                 "pipelining = True", f"control_path_dir = {tmp_path}/run/cp"):  # fmt: skip
        assert line + "\n" in config
    # Ansible itself reads them back: host_vars next to the inventory, values intact.
    listed = ansible(BIN / "ansible-inventory", "-i", files.inventory, "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    hostvars = json.loads(listed.stdout)["_meta"]["hostvars"]
    unsafe = {
        "__ansible_unsafe": plan.template_vars["exec_start"]
    }  # how it lists data, not templates
    assert hostvars["lab-2"]["exec_start"] == unsafe
    assert hostvars["lab-2"]["appliance_release_dir"] == {"__ansible_unsafe": plan.release_dir}


def test_a_host_without_the_model_server_role_is_refused(plan: HostDesired, tmp_path: Path) -> None:
    gateway = HostEntry(name="gw", address="10.231.0.9", roles=["gateway"])
    with pytest.raises(DeploymentError, match="model-server hosts only"):
        write_run_files([dataclasses.replace(plan, host=gateway)], tmp_path)


def test_outcomes_from_the_run_stats() -> None:
    stats = {"processed": {"a": 1, "b": 1, "c": 1, "d": 1}, "changed": {"a": 3},
             "failures": {"b": 1}, "dark": {"c": 1}}  # fmt: skip
    failures = {"b": "Stage the release files (files/x): No space left on device", "c": "timeout"}
    got = {n: host_outcome(n, stats, failures, False, "not run") for n in "abcde"}
    assert (got["a"].ok, got["a"].changed, got["a"].message) == (True, True, "converged")
    assert (got["d"].ok, got["d"].changed, got["d"].message) == (True, False, "already converged")
    assert (got["b"].ok, got["b"].message) == (False, failures["b"])
    assert (got["c"].ok, got["c"].message) == (False, "unreachable: timeout")
    assert (got["e"].ok, got["e"].message) == (False, "not run")  # the play never reached it
    assert not host_outcome("a", stats, failures, True, "").ok


# --- rendering parity: Ansible's own templating, the playbook's own tasks ---------------

CASES: dict[str, dict[str, Any]] = {
    "plan": {},
    "jinja-in-values": {
        "bundle_name": "{{ lookup('env', 'HOME') }}",
        "model_name": "{% raw %}x",
        "env_lines": "A={{ b }}\nC=%s $0 \\n \\\\",
    },
    "unicode": {"model_name": "Gemma 3 — 270M «q4»", "env_lines": "LANG=C.UTF-8\nX=ü"},
    "one-line-env": {"env_lines": "ONLY=1"},
    # The vLLM unit (the same template, its vLLM-only lines): what the cpu-vllm and GPU
    # profiles lay down, rendered by Ansible's templating as by the pyinfra engine's.
    "vllm": {
        "engine": "vllm",
        "exec_start": "/opt/appliance/releases/3/venv/bin/python -m "
        "vllm.entrypoints.launchers.api_server.entry --model /opt/appliance/releases/3/files/"
        "models/gemma --served-model-name gemma --host 127.0.0.1 --port 8000",
        "env_lines": "HF_HUB_OFFLINE=1\nVLLM_CPU_KVCACHE_SPACE=1",
        "served_model": "gemma",
        "health_paths": "/health /v1/models",
        "start_timeout": 315,
        "stop_timeout": 60,
    },
}


RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=(\d+)", re.M)
CHANGED = re.compile(r"^\S+\s+: ok=\d+\s+changed=(\d+)", re.M)


def run_render(plans: list[HostDesired], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    files = write_run_files(plans, tmp_path / "run")
    play = tmp_path / "render-play.yml"
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.import_tasks: {PLAYBOOKS / 'render.yml'}\n"
    )
    return ansible(BIN / "ansible-playbook", "-i", files.inventory, play, "-e", "ansible_connection=local",
                   "-e", f"ansible_python_interpreter={sys.executable}", cwd=tmp_path)  # fmt: skip


def case_plan(plan: HostDesired, index: int, name: str, tmp_path: Path) -> HostDesired:
    variables = {**plan.template_vars, **CASES.get(name, {})}
    rendered = tuple(
        RenderedFile(str(tmp_path / name / "etc" / Path(r.path).name), r.template,
                     render(r.template, variables))
        for r in plan.rendered
    )  # fmt: skip
    return dataclasses.replace(
        plan, host=host(name, f"10.231.0.{index + 2}"), rendered=rendered, template_vars=variables
    )


def test_ansible_renders_the_shared_templates_byte_for_byte(
    plan: HostDesired, tmp_path: Path
) -> None:
    plans = [case_plan(plan, i, name, tmp_path) for i, name in enumerate(CASES)]
    # One more host whose plan expects other bytes: Ansible's rendering must be refused there.
    p = case_plan(plan, len(plans), "refused", tmp_path)
    wrong = dataclasses.replace(p.rendered[0], content=p.rendered[0].content + "# not this\n")
    refused = dataclasses.replace(p, rendered=(wrong, *p.rendered[1:]))
    result = run_render([*plans, refused], tmp_path)
    recap = {m[0]: m[1:] for m in RECAP.findall(result.stdout)}
    assert recap == {p.host.name: ("0",) for p in plans} | {"refused": ("1",)}, result.stdout[
        -3000:
    ]
    assert "failed to validate" in result.stdout
    assert not Path(wrong.path).exists()  # the refused rendering was never put in place
    assert len(plans[0].rendered) == 2
    for p in plans:
        for r in p.rendered:
            data = Path(r.path).read_bytes()
            assert data == r.content.encode(), (p.host.name, r.template)
            assert hashlib.sha256(data).hexdigest() == r.sha256
            assert oct(Path(r.path).stat().st_mode & 0o777) == oct(r.mode)
    assert "{{ lookup('env', 'HOME') }}" in Path(plans[1].rendered[0].path).read_text()
    vllm_unit = Path(plans[list(CASES).index("vllm")].rendered[0].path).read_text()
    assert "LimitMEMLOCK=infinity" in vllm_unit and "X-Appliance-Start-Timeout=315" in vllm_unit
    # A second run finds everything in place: nothing changes.
    again = run_render(plans, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert set(CHANGED.findall(again.stdout)) == {"0"}, again.stdout[-3000:]


def test_converge_reports_an_unreachable_host_and_leaves_signals_alone(
    plan: HostDesired, free_loopback_port: int
) -> None:
    from appliance.deploy.engines.ansible import converge

    nobody = HostEntry(name="nobody", address="127.0.0.1", ssh=SshSettings(port=free_loopback_port),
                       roles=["model-server"])  # fmt: skip
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    [outcome] = converge([dataclasses.replace(plan, host=nobody)])
    assert (outcome.name, outcome.ok, outcome.changed) == ("nobody", False, False)
    assert outcome.message.startswith("unreachable: "), outcome.message
    assert "Connection refused" in outcome.message
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


@pytest.fixture
def free_loopback_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
