"""appliance.input_files and appliance.yaml_files: regular files only, bounded, never blocking."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from appliance.errors import InputError, MetadataError
from appliance.input_files import json_depth, parse_json, read_input, read_text_input
from appliance.yaml_files import MAX_YAML_NODES, load_yaml


def test_a_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert read_input(path, "thing") == b"abc"


def test_a_fifo_without_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_input(fifo, "recipe")
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], InputError)
    assert "named pipe (FIFO)" in str(result[0])


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: p.symlink_to("/dev/null"), "a character device"),
    ],
)
def test_what_is_not_a_regular_file_is_named(tmp_path: Path, make, found: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x"
    make(path)
    with pytest.raises(InputError, match=found):
        read_input(path, "inventory")


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        with pytest.raises(InputError, match="a socket"):
            read_input(path, "site file")
    finally:
        server.close()


def test_a_link_is_refused_where_links_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("{}")
    (tmp_path / "link").symlink_to("real")
    with pytest.raises(MetadataError, match="a symbolic link"):
        read_input(tmp_path / "link", "manifest", error=MetadataError, follow_symlinks=False)
    assert read_input(tmp_path / "link", "site file") == b"{}"


def test_size_is_bounded_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match="larger than 100 bytes"):
        read_input(path, "key", limit=100)


def test_missing_and_unreadable_say_so(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read facts file: it does not exist"):
        read_input(tmp_path / "nope", "facts file")


def test_text_must_be_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes("\ufeffhé".encode() + b"\xff")
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_text_input(path, "site file")
    path.write_bytes("\ufeffhé".encode())
    assert read_text_input(path, "site file") == "hé"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64"),
        ("[" * 65 + "]" * 65, "nested deeper than 64"),
        ('{"a": 1, "a": 2}', "duplicate JSON key 'a'"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ("1" * 5000, "not valid JSON"),
        ('{"a": ', "not valid JSON at line 1"),
    ],
)
def test_json_is_strict_and_bounded(text: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_json(text, "manifest", error=MetadataError)


def test_json_at_the_depth_bound_is_accepted() -> None:
    assert json_depth(parse_json("[" * 64 + "]" * 64, "x")) == 64
    with pytest.raises(InputError, match="not UTF-8"):
        parse_json(b'"\xff"', "x")


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(InputError, match=f"past {MAX_YAML_NODES} nodes"):
        load_yaml(_yaml(tmp_path, "\n".join(lines)), "recipe")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [*a]\n", "refers to a node that contains it"),
        ("[" * 5000 + "]" * 5000, "nested deeper than 64"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_yaml_hostile_shapes_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_yaml(_yaml(tmp_path, text), "recipe")


def test_yaml_small_aliases_still_work(tmp_path: Path) -> None:
    data = load_yaml(_yaml(tmp_path, "p: &p [a, b]\nq: *p\n"), "recipe")
    assert data == {"p": ["a", "b"], "q": ["a", "b"]}
