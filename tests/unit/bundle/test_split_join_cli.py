"""Split and join through the CLI: parts on several media in any order, a bad part named."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from appliance.cli.main import main

from .conftest import BundleFactory, Trust


def test_split_join_verify(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(version=7)
    assert main(["bundle", "split", str(bundle), "--out", str(tmp_path / "split")]) == 0
    parts = sorted((tmp_path / "split").glob("demo-7.part*"))
    assert len(parts) >= 3  # the 196 KiB of content in 96 KiB parts
    # Two media, parts shuffled between them, metadata/ on each.
    media = [tmp_path / "usb1", tmp_path / "usb2"]
    for medium in media:
        shutil.copytree(tmp_path / "split" / "metadata", medium / "metadata")
    random.Random(3).shuffle(parts)
    for i, part in enumerate(parts):
        shutil.copy(part, media[i % 2] / part.name)
    out = tmp_path / "joined"
    assert (
        main(
            ["bundle", "join", *map(str, media), "--out", str(out), "--trust", str(trust.root_path)]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["bundle", "verify", str(out), "--trust", str(trust.root_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 7


def test_a_flipped_byte_in_a_part_names_the_part_and_its_files(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(version=7)
    assert main(["bundle", "split", str(bundle), "--out", str(tmp_path / "split")]) == 0
    part = sorted((tmp_path / "split").glob("demo-7.part*"))[1]
    data = bytearray(part.read_bytes())
    data[1000] ^= 0x10
    part.write_bytes(bytes(data))
    capsys.readouterr()
    code = main(["bundle", "join", str(tmp_path / "split"), "--out", str(tmp_path / "joined"),
                 "--trust", str(trust.root_path), "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 4 and result["error"] == "MediaPartError"
    assert part.name in result["message"] and "model.safetensors" in result["message"]
    assert not (tmp_path / "joined").exists()


def test_another_part_size_needs_a_rebuild(
    make_bundle: BundleFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle()
    code = main(["bundle", "split", str(bundle), "--out", str(tmp_path / "s"), "--part-size", "1M"])
    assert code == 2
    assert "--part-size" in capsys.readouterr().err


def test_join_checks_signatures_before_trusting_the_layout(
    make_bundle: BundleFactory, trust: Trust, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(sign_with=1)
    assert main(["bundle", "split", str(bundle), "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    code = main(
        [
            "bundle",
            "join",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "j"),
            "--trust",
            str(trust.root_path),
            "--json",
        ]
    )
    assert code == 4 and json.loads(capsys.readouterr().out)["error"] == "ThresholdError"
