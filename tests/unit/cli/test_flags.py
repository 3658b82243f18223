"""No flag is silently ignored: a flag either does what it says in every combination the
parser accepts, or the combination is refused with exit 2 naming the flag.

Found and fixed (each case below fails on the code before the fix):
- ``bundle build --recipe`` ignored --version, --expires, --name, --channel, --profile,
  --licence and --part-size: --version and --expires now override the recipe (said on
  stderr), the flags describing the content are refused;
- ``keys generate --expires`` did nothing when --out already held a root.json;
- ``deploy --emit-ansible`` ignored --engine, --dry-run and --yes; ``deploy --dry-run``
  ignored --yes;
- ``--allow-downgrade`` / ``--allow-version-jump`` did nothing without ``--state``
  (bundle verify, bundle install, deploy);
- ``deploy --dry-run --state`` wrote the state although a dry run changes nothing
  (now the state is only read; tested in tests/unit/bundle/test_install_state.py for
  the deferred record itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle.manifest import read_targets
from appliance.cli.main import main
from tests.unit.bundle.conftest import BundleFactory, Trust

SMALL_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}  # fmt: skip


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMALL_CONFIG))
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: demo\nversion: 3\nexpires: 30d\nmodel:\n  local_dir: {model}\n  licence: MIT\n"
    )
    return path


def test_build_version_overrides_the_recipe_and_says_so(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    argv = ["bundle", "build", "--recipe", str(recipe), "--version", "7", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert read_targets(out).signed.version == 7
    assert "--version 7 overrides the recipe's version 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag",
    [["--name", "x"], ["--channel", "beta"], ["--profile", "cpu-llamacpp"], ["--licence", "MIT"],
     ["--part-size", "1M"], ["--model", "m.gguf"]],
)  # fmt: skip
def test_build_refuses_content_flags_with_a_recipe(
    flag: list[str], recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    assert main(["bundle", "build", "--recipe", str(recipe), *flag, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} cannot be combined with --recipe" in err, err
    assert not out.exists()


def test_build_refuses_a_malformed_expires_override(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "bundle",
        "build",
        "--recipe",
        str(recipe),
        "--expires",
        "soon",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "b").exists()


def test_keys_generate_refuses_expires_it_cannot_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path), "--name", "a"]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["keys", "generate", "--out", str(tmp_path), "--name", "b", "--expires", "2y"]) == 2
    assert "--expires" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no key b written


@pytest.mark.parametrize(
    "extra", [["--engine", "pyinfra"], ["--engine", "ansible"], ["--dry-run"], ["--yes"]]
)
def test_emit_ansible_refuses_flags_it_ignores(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["deploy", "--profile", "cpu-llamacpp", "--bundle", "b", "--trust", "r",
            "--inventory", "i", "--emit-ansible", str(tmp_path / "out"), *extra]  # fmt: skip
    assert main(argv) == 2
    assert f"{extra[0]} cannot be combined with --emit-ansible" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_yes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "--profile", "cpu-llamacpp", "--bundle", "b", "--trust", "r",
            "--inventory", "i", "--dry-run", "--yes"]  # fmt: skip
    assert main(argv) == 2
    assert "--yes confirms changes, and --dry-run makes none" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--allow-downgrade", "--allow-version-jump"])
@pytest.mark.parametrize("command", ["verify", "install", "deploy"])
def test_freshness_flags_need_a_state(
    flag: str,
    command: str,
    make_bundle: BundleFactory,
    trust: Trust,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, root = str(make_bundle()), str(trust.root_path)
    argv = {
        "verify": ["bundle", "verify", bundle, "--trust", root],
        "install": ["bundle", "install", bundle, "--trust", root, "--dest", str(tmp_path / "rel")],
        "deploy": ["deploy", "--profile", "cpu-llamacpp", "--bundle", bundle, "--trust", root,
                   "--inventory", str(tmp_path / "i.yaml"), "--dry-run"],
    }[command]  # fmt: skip
    if command == "deploy" and flag == "--allow-version-jump":
        with pytest.raises(SystemExit):  # deploy does not accept it at all
            main([*argv, flag])
        return
    assert main([*argv, flag]) == 2
    assert f"{flag} only applies with --state" in capsys.readouterr().err
    assert not (tmp_path / "rel").exists()
