"""The path rules (bundles/FORMAT.md "Paths"): one case per class, on every entry point.

``check_relpath`` and ``check_no_collisions`` are the rules; the build (recipe sources),
the manifest reader (verify/install, also in test_adversarial.py) and media join
(part names, the records a part holds, the metadata copied from the medium) apply them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from appliance.bundle.format import check_no_collisions, check_relpath, fold_path, show_path
from appliance.bundle.media.join import join_parts
from appliance.cli.main import main
from appliance.errors import BundleBuildError, MediaPartError, UnsafePathError
from appliance.events import drain
from tests.unit.bundle.test_build import make_recipe, run, small_llama
from tests.unit.bundle.test_media import (  # noqa: F401  (fixtures)
    NAME,
    VERSION,
    Built,
    built,
    join,
    part_name,
    parts_dir,
)

# (case id, path, fragment of the rule in the message)
REFUSED: list[tuple[str, str, str]] = [
    ("empty", "", "empty path"),
    ("absolute", "/etc/passwd", "absolute path"),
    ("dot-dot", "a/../b", "'..' component"),
    ("dot", "a/./b", "'..' component"),
    ("empty-component", "a//b", "empty"),
    ("trailing-slash", "a/b/", "empty"),
    ("nul", "a\x00b", "control character"),
    ("c0-newline", "models/evil\nname", "control character"),
    ("c0-escape", "a\x1b[31mb", "control character"),
    ("del", "a\x7fb", "control character"),
    ("c1-csi", "a\x9bb", "control character"),
    ("c1-nel", "a\x85b", "U+0085 NEL"),
    ("line-separator", "a\u2028b", "line or paragraph separator"),
    ("paragraph-separator", "a\u2029b", "line or paragraph separator"),
    ("bidi-rlo", "evil\u202etxt.exe", "bidirectional"),
    ("bidi-lre", "a\u202ab", "bidirectional"),
    ("bidi-pdf", "a\u202cb", "bidirectional"),
    ("bidi-isolate-rli", "a\u2067b", "bidirectional"),
    ("bidi-isolate-pdi", "a\u2069b", "bidirectional"),
    ("bidi-lrm", "a\u200eb", "bidirectional"),
    ("bidi-rlm", "a\u200fb", "bidirectional"),
    ("bidi-alm", "a\u061cb", "bidirectional"),
    ("zero-width-space", "a\u200bb", "invisible"),
    ("zero-width-joiner", "a\u200db", "invisible"),
    ("bom", "\ufeffconfig.json", "invisible"),
    ("word-joiner", "a\u2060b", "invisible"),
    ("soft-hyphen", "a\u00adb", "invisible"),
    ("tag-character", "a\U000e0041b", "invisible"),
    ("variation-selector", "a\ufe0fb", "invisible"),
    ("hangul-filler", "a\u3164b", "invisible"),
    ("no-break-space", "model\u00a0v2.bin", "space other than U+0020"),
    ("ideographic-space", "a\u3000b", "space other than U+0020"),
    ("unassigned", "a\u0378b", "unassigned"),
    ("noncharacter", "a\ufffeb", "unassigned"),
    ("private-use", "a\ue000b", "private-use"),
    ("lone-surrogate", "a\udcffb", "lone surrogate"),
    ("backslash", "models\\..\\evil", "backslash"),
    ("colon", "a:b", "colon"),
    ("lt", "a<b", '<>"|?*'),
    ("gt", "a>b", '<>"|?*'),
    ("quote", 'a"b', '<>"|?*'),
    ("pipe", "a|b", '<>"|?*'),
    ("question-mark", "a?b", '<>"|?*'),
    ("asterisk", "a*b", '<>"|?*'),
    ("fullwidth-solidus", "a\uff0fb", "looks like a path separator"),
    ("division-slash", "a\u2215b", "looks like a path separator"),
    ("trailing-dot", "models/weights.", "ends in a dot or space"),
    ("trailing-space", "models /x", "ends in a dot or space"),
    ("reserved-con", "con", "Windows device name"),
    ("reserved-nul-ext", "models/NUL.txt", "Windows device name"),
    ("reserved-aux-two-ext", "Aux.tar.gz", "Windows device name"),
    ("reserved-prn", "PRN", "Windows device name"),
    ("reserved-com9", "com9.json", "Windows device name"),
    ("reserved-lpt1", "LPT1", "Windows device name"),
    ("reserved-com-superscript", "COM\u00b9", "Windows device name"),
    ("reserved-stem-space", "CON .txt", "Windows device name"),
    ("long-component", "models/" + "a" * 256, "longer than 255"),
    ("long-path", "/".join(["a" * 200] * 21), "longer than 4096"),
    ("not-nfc", "models/cafe\u0301.txt", "NFC"),
]

ALLOWED = [
    "models/demo/model.safetensors",
    "models/caf\u00e9/config.json",  # NFC non-ASCII is fine
    "models/\u4e2d\u6587/tokenizer.json",
    ".hidden/.env",
    "a b/c d.txt",  # U+0020 inside a name
    "console.txt",  # only the exact device names are reserved
    "com10",
    "lpt0.bin",
    "models/v1.0/x",
    "a" * 255,
]


@pytest.mark.parametrize(("case", "path", "rule"), REFUSED, ids=[c[0] for c in REFUSED])
def test_check_relpath_refuses(case: str, path: str, rule: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        check_relpath(path)
    message = caught.value.message
    assert rule in message, (case, message)
    # The message names the path, escaped: it shows code points and cannot itself mislead.
    assert message.isascii() and message.isprintable(), (case, ascii(message))
    if path and len(path) < 100:
        assert show_path(path) in message or show_path(path[:60]) in message, (case, message)


def test_messages_show_code_points() -> None:
    with pytest.raises(UnsafePathError, match=r"evil\\u202etxt\.exe.*contains '\\u202e'"):
        check_relpath("evil\u202etxt.exe")


@pytest.mark.parametrize("path", ALLOWED)
def test_check_relpath_allows_plain_names(path: str) -> None:
    assert check_relpath(path) == path


# (case id, two paths that are one name on some target filesystem)
COLLISIONS: list[tuple[str, list[str]]] = [
    ("ascii-case", ["models/README.md", "models/readme.md"]),
    ("directory-case", ["Models/a", "models/b/c", "models/a"]),
    ("nfc-nfd", ["caf\u00e9", "cafe\u0301"]),  # macOS: one name (NFD is refused alone too)
    ("full-case-folding", ["stra\u00dfe", "STRASSE"]),
    ("final-sigma", ["\u03bf\u03c3", "\u03bf\u03c2"]),
    ("dotless-i-upcase", ["\u0131d", "ID"]),  # NTFS/exFAT upcase: dotless i is I
    ("kelvin-sign", ["\u212a", "k"]),
    ("nfkc-ligature", ["\ufb01le.bin", "file.bin"]),
    ("nfkc-fullwidth", ["\uff41.bin", "a.bin"]),
]


@pytest.mark.parametrize(("case", "pair"), COLLISIONS, ids=[c[0] for c in COLLISIONS])
def test_collisions_are_refused(case: str, pair: list[str]) -> None:
    with pytest.raises(UnsafePathError, match="collide") as caught:
        check_no_collisions(pair)
    assert caught.value.message.isascii()


FILE_AND_DIRECTORY: list[tuple[str, list[str]]] = [
    ("exact", ["models/a", "models/a/b"]),
    ("case-folded", ["models/A", "models/a/b"]),
    ("nfkc-folded", ["models/\ufb01", "models/fi/x"]),
    ("folded-deeper", ["M/x", "m/x/y/z"]),
]


@pytest.mark.parametrize(
    ("case", "paths"), FILE_AND_DIRECTORY, ids=[c[0] for c in FILE_AND_DIRECTORY]
)
def test_file_used_as_directory_is_refused(case: str, paths: list[str]) -> None:
    with pytest.raises(UnsafePathError, match="listed as a file and as a directory"):
        check_no_collisions(paths)


def test_distinct_names_do_not_collide() -> None:
    check_no_collisions(["models/a", "models/b/a", "models/ab", "models/a.b", "i", "\u0130"])
    assert fold_path("A/B") == fold_path("a/b") != fold_path("a/c")


# --- build: a source directory holding such a name fails the build ---------------------------


@pytest.mark.parametrize(
    "name",
    ["evil\u202etxt.json", "x\u2028y.json", "zero\u200bwidth.json", "NUL.json", "trailing."],
)
def test_build_refuses_a_model_dir_with_an_unsafe_name(tmp_path: Path, name: str) -> None:
    model = small_llama(tmp_path)
    (model / name).write_text("{}")
    recipe = make_recipe(tmp_path, model={"local_dir": str(model), "licence": "Apache-2.0"})
    out = tmp_path / "bundle"
    with pytest.raises(BundleBuildError) as caught:
        run(recipe, out)
    assert caught.value.exit_code == 2
    assert ascii(name)[1:-1] in caught.value.message and caught.value.message.isascii()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def test_build_refuses_names_that_collide_when_folded(tmp_path: Path) -> None:
    model = small_llama(tmp_path)
    (model / "Config.json").write_text("{}")  # next to config.json
    recipe = make_recipe(tmp_path, model={"local_dir": str(model), "licence": "Apache-2.0"})
    with pytest.raises(BundleBuildError, match="collide"):
        run(recipe, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_build_cli_exits_2_on_an_unsafe_source_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = small_llama(tmp_path)
    (model / "a\u202egpj.json").write_text("{}")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "test",
                "version": 1,
                "expires": "30d",
                "channel": "beta",
                "model": {"local_dir": str(model), "licence": "Apache-2.0"},
            }
        )
    )
    code = main(["bundle", "build", "--recipe", str(recipe), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "\\u202e" in err and "\u202e" not in err and "bidirectional" in err
    assert not (tmp_path / "b").exists()


# --- media join: part names, the records a part holds, the metadata on the medium ----------


def test_join_refuses_records_with_unsafe_paths_before_writing(
    tmp_path: Path,
    built: Built,  # noqa: F811
    parts_dir: Path,  # noqa: F811
) -> None:
    for evil in ("a\u202eb.bin", "nul.bin", "x\u0085y"):
        records = [dataclasses.replace(built.records[0], path=evil), *built.records[1:]]
        with pytest.raises(UnsafePathError, match=r"contains|device name"):
            drain(
                join_parts(
                    [parts_dir],
                    built.layout,
                    NAME,
                    VERSION,
                    records,
                    parts_dir / "metadata",
                    tmp_path / "joined",
                )
            )
        assert not (tmp_path / "joined").exists()


def test_join_refuses_folded_collisions_in_records(
    tmp_path: Path,
    built: Built,  # noqa: F811
    parts_dir: Path,  # noqa: F811
) -> None:
    upper = dataclasses.replace(built.records[0], path=built.records[1].path.upper())
    with pytest.raises(UnsafePathError, match="collide"):
        join(Built(built.bundle, [upper, *built.records[1:]], built.layout), [parts_dir],
             tmp_path / "joined")  # fmt: skip
    assert not (tmp_path / "joined").exists()


def test_join_refuses_an_unsafe_name_in_the_media_metadata(
    tmp_path: Path,
    built: Built,  # noqa: F811
    parts_dir: Path,  # noqa: F811
) -> None:
    (parts_dir / "metadata" / "root" / "3.root\u2028.json").write_bytes(b"{}\n")
    with pytest.raises(UnsafePathError, match=r"\\u2028"):
        join(built, [parts_dir], tmp_path / "joined")
    assert not (tmp_path / "joined").exists()


def test_a_part_name_with_a_trailing_newline_is_not_a_part(
    tmp_path: Path,
    built: Built,  # noqa: F811
    parts_dir: Path,  # noqa: F811
) -> None:
    """``$`` matched before a final newline: such a file was taken for a part name."""
    os.rename(parts_dir / part_name(2), parts_dir / (part_name(2) + "\n"))
    with pytest.raises(MediaPartError) as caught:
        join(built, [parts_dir], tmp_path / "joined")
    message = caught.value.message
    assert f"part 2 ({part_name(2)}) is missing" in message
    assert part_name(2) + "\n" not in message
