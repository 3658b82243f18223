"""Every way a model path can be wrong ends in ``ModelFileError`` whose message says
what was expected, what was found and what to do: never a traceback."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ApplianceError, InputError, ModelFileError
from appliance.exitcodes import ExitCode
from appliance.model.info import load_model_info

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
MISTRAL_CFG = json.loads((FIXTURES / "mistral-7b-instruct-v0.3" / "config.json").read_text())


def load_error(path: Path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        load_model_info(path)
    return info.value


def test_error_is_a_usage_error() -> None:
    # The CLI maps it to the usage exit code without special-casing.
    assert issubclass(ModelFileError, InputError)
    assert issubclass(ModelFileError, ApplianceError)
    assert ModelFileError.exit_code == ExitCode.USAGE


# --- paths ---------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope")
    assert "does not exist" in err.message
    assert str(tmp_path / "nope") in err.message
    assert err.hint is not None and "config.json" in err.hint and ".gguf" in err.hint


def test_directory_without_config_lists_contents(tmp_path: Path) -> None:
    for name in ("tokenizer.json", "README.md"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    err = load_error(tmp_path)
    assert "expected config.json" in err.message
    assert "README.md, sub/, tokenizer.json" in err.message
    assert err.hint is not None and "Download the complete model repository" in err.hint


def test_directory_without_config_lists_briefly(tmp_path: Path) -> None:
    for i in range(15):
        (tmp_path / f"f{i:02d}.txt").write_text("x")
    err = load_error(tmp_path)
    assert "f09.txt, ... (5 more)" in err.message
    assert "f10.txt" not in err.message


def test_empty_directory(tmp_path: Path) -> None:
    assert "it is empty" in load_error(tmp_path).message


def test_directory_holding_a_gguf_points_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    err = load_error(tmp_path)
    assert err.hint is not None and str(tmp_path / "model-Q4_K_M.gguf") in err.hint


# --- config.json -----------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.json").write_text(text)
    return tmp_path


def test_config_not_json_gives_line_and_column(tmp_path: Path) -> None:
    err = load_error(write_config(tmp_path, '{\n  "hidden_size": 4096,\n  "vocab_size": }\n'))
    assert "not valid JSON" in err.message
    assert "line 3, column 17" in err.message
    assert err.hint is not None and "Restore config.json" in err.hint
    assert isinstance(err.__cause__, json.JSONDecodeError)


def test_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    assert "not UTF-8" in load_error(tmp_path).message


def test_config_not_an_object(tmp_path: Path) -> None:
    err = load_error(write_config(tmp_path, "[1, 2]"))
    assert "must contain a JSON object, found a list" in err.message


@pytest.mark.parametrize(
    "field", ["num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size"]
)
def test_config_missing_required_field(tmp_path: Path, field: str) -> None:
    cfg = {k: v for k, v in MISTRAL_CFG.items() if k != field}
    err = load_error(write_config(tmp_path, json.dumps(cfg)))
    assert f"required field '{field}' is missing" in err.message
    assert str(tmp_path / "config.json") in err.message
    assert err.hint is not None and field in err.hint


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("4096", "'4096' (str)"),
        (0, "0 (int)"),
        (-8, "-8 (int)"),
        (True, "True (bool)"),
        (40.5, "40.5 (float)"),
    ],
)
def test_config_field_with_wrong_value(tmp_path: Path, value: Any, shown: str) -> None:
    cfg = MISTRAL_CFG | {"num_hidden_layers": value}
    err = load_error(write_config(tmp_path, json.dumps(cfg)))
    assert f"'num_hidden_layers' must be a positive integer, found {shown}" in err.message


def test_config_heads_not_divisible_by_kv_heads(tmp_path: Path) -> None:
    err = load_error(write_config(tmp_path, json.dumps(MISTRAL_CFG | {"num_key_value_heads": 5})))
    assert "num_attention_heads 32 is not a multiple of num_key_value_heads 5" in err.message


def test_config_without_intermediate_size_and_no_weights(tmp_path: Path) -> None:
    cfg = {k: v for k, v in MISTRAL_CFG.items() if k != "intermediate_size"}
    err = load_error(write_config(tmp_path, json.dumps(cfg)))
    assert "'intermediate_size' is missing" in err.message
    assert err.hint is not None and "*.safetensors" in err.hint


def test_config_bad_quantization_config(tmp_path: Path) -> None:
    cfg = MISTRAL_CFG | {"quantization_config": {"bits": 4}}
    err = load_error(write_config(tmp_path, json.dumps(cfg)))
    assert "'quantization_config.quant_method' must be a non-empty string" in err.message


def test_config_wrong_type_for_flag(tmp_path: Path) -> None:
    cfg = MISTRAL_CFG | {"tie_word_embeddings": "no"}
    err = load_error(write_config(tmp_path, json.dumps(cfg)))
    assert "'tie_word_embeddings' must be true or false, found 'no' (str)" in err.message


def test_index_not_json(tmp_path: Path) -> None:
    write_config(tmp_path, json.dumps(MISTRAL_CFG))
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": ')
    err = load_error(tmp_path)
    assert "model.safetensors.index.json: not valid JSON" in err.message


def test_index_lists_missing_shards(
    small_llama_dir: Callable[..., Path], make_safetensors: Callable[..., Path]
) -> None:
    d = small_llama_dir(weights=False)
    make_safetensors(d / "model-00001-of-00002.safetensors", {"a": ("BF16", (4,))})
    index = {
        "metadata": {"total_size": 16},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    err = load_error(d)
    assert "incomplete" in err.message
    assert "model-00002-of-00002.safetensors" in err.message
    assert err.hint is not None and "missing shards" in err.hint


# --- safetensors -------------------------------------------------------------------


def test_truncated_safetensors(
    small_llama_dir: Callable[..., Path],
    make_safetensors: Callable[..., Path],
    small_llama_tensor_map: Callable[..., Any],
) -> None:
    d = small_llama_dir(weights=False)
    make_safetensors(d / "model.safetensors", small_llama_tensor_map(), truncate=100)
    err = load_error(d)
    assert "model.safetensors is not a readable safetensors file" in err.message
    assert "truncated download" in err.message


def test_safetensors_header_not_json(small_llama_dir: Callable[..., Path]) -> None:
    d = small_llama_dir(weights=False)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{oops")
    assert "header is not valid JSON" in load_error(d).message


def test_safetensors_header_length_beyond_file(small_llama_dir: Callable[..., Path]) -> None:
    d = small_llama_dir(weights=False)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    assert "header length field says 1000000 bytes" in load_error(d).message


def test_safetensors_offsets_disagree_with_shape(small_llama_dir: Callable[..., Path]) -> None:
    d = small_llama_dir(weights=False)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 4]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    assert "BF16 [4] (8 bytes) but its data_offsets span 4 bytes" in load_error(d).message


# --- files that are not GGUF ---------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"")
    err = load_error(path)
    assert "is empty (0 bytes)" in err.message
    assert err.hint is not None and "fetch the file again" in err.hint


def test_bad_magic_shows_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04rest of a zip")
    err = load_error(path)
    assert "is not a GGUF file" in err.message
    assert "expected it to start with b'GGUF'" in err.message
    assert "found b'PK\\x03\\x04rest of a zi'" in err.message
    assert "hex 50 4b 03 04 72 65 73 74" in err.message


def test_html_error_page_saved_as_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<!DOCTYPE html><html>404</html>")
    err = load_error(path)
    assert "found b'<!DOCTYPE html><'" in err.message
    assert err.hint is not None and "HTML error page" in err.hint


def test_config_json_passed_as_file_points_to_its_directory() -> None:
    err = load_error(FIXTURES / "mistral-7b-instruct-v0.3" / "config.json")
    assert err.hint is not None
    assert (
        f"pass the directory that contains it ({FIXTURES / 'mistral-7b-instruct-v0.3'})" in err.hint
    )


# --- corrupt GGUF ------------------------------------------------------------------


def test_gguf_truncated_mid_header(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf()
    data = path.read_bytes()
    path.write_bytes(data[:200])
    err = load_error(path)
    assert "is truncated or corrupt" in err.message
    assert "File size: 200 bytes" in err.message
    assert err.hint is not None and "sha256" in err.hint


def test_gguf_truncated_tensor_data(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf()
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    err = load_error(path)
    assert "is truncated: its tensor data should end at byte" in err.message
    assert f"{len(data):,}" in err.message
    assert f"has {len(data) - 1000:,} bytes" in err.message


def test_gguf_missing_block_count(make_gguf: Callable[..., Path]) -> None:
    err = load_error(make_gguf(omit=["llama.block_count"]))
    assert "lacks required GGUF metadata: llama.block_count" in err.message
    assert "llama.embedding_length" in err.message  # the keys it does have
    assert err.hint is not None and "llama.cpp" in err.hint


def test_gguf_missing_several_keys_named_together(make_gguf: Callable[..., Path]) -> None:
    err = load_error(make_gguf(omit=["llama.block_count", "llama.attention.head_count"]))
    assert "llama.block_count, llama.attention.head_count" in err.message


def test_gguf_without_architecture(make_raw_gguf: Callable[..., Path]) -> None:
    err = load_error(make_raw_gguf("vocab.gguf", {"general.name": "vocab only"}))
    assert "lacks required GGUF metadata: general.architecture" in err.message
    assert "general.name" in err.message


def test_gguf_adapter_is_not_a_model(make_raw_gguf: Callable[..., Path]) -> None:
    path = make_raw_gguf("lora.gguf", {"general.architecture": "llama", "general.type": "adapter"})
    err = load_error(path)
    assert "LoRA adapter" in err.message


def test_gguf_unsupported_version(make_raw_gguf: Callable[..., Path]) -> None:
    err = load_error(make_raw_gguf("v1.gguf", {"general.architecture": "llama"}, version=1))
    assert "GGUF version 1; supported versions are 2, 3" in err.message


def test_gguf_wrong_metadata_type(make_raw_gguf: Callable[..., Path]) -> None:
    path = make_raw_gguf(
        "bad.gguf",
        {
            "general.architecture": "llama",
            "llama.block_count": "thirty-two",
            "llama.embedding_length": 64,
            "llama.attention.head_count": 4,
        },
    )
    err = load_error(path)
    assert "'llama.block_count' must be a positive integer, found 'thirty-two'" in err.message


def test_gguf_impossible_counts(make_raw_gguf: Callable[..., Path]) -> None:
    path = make_raw_gguf("x.gguf", {"general.architecture": "llama"})
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, 16, 2**60)  # metadata count
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in load_error(path).message


def test_every_truncation_point_gives_a_clean_error(make_gguf: Callable[..., Path]) -> None:
    # "No traceback ever": cut a valid file at every offset of its header.
    full = make_gguf("full.gguf").read_bytes()
    path = make_gguf("cut.gguf")
    from appliance.model.gguf_header import read_gguf_header

    header_end = read_gguf_header(path).data_offset
    for cut in range(1, header_end + 64):
        path.write_bytes(full[:cut])
        with pytest.raises(ModelFileError):
            load_model_info(path)


def test_random_corruption_gives_a_clean_error_or_a_result(
    make_gguf: Callable[..., Path],
) -> None:
    path = make_gguf()
    full = path.read_bytes()
    from appliance.model.gguf_header import read_gguf_header

    header_end = read_gguf_header(path).data_offset
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        data = bytearray(full)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, header_end)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            load_model_info(path)
            outcomes["ok"] += 1
        except ModelFileError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0  # the corruption is actually detected sometimes


# --- permissions -------------------------------------------------------------------


def test_permission_denied_on_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests often run as root, where chmod 000 does not deny: simulate the OS error.
    d = write_config(tmp_path, json.dumps(MISTRAL_CFG))
    real = os.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path).name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    err = load_error(d)
    assert f"Permission denied reading {d / 'config.json'}" in err.message
    assert err.hint is not None and "chmod" in err.hint
    assert isinstance(err.__cause__, PermissionError)


def test_permission_denied_on_gguf(
    make_gguf: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_gguf()

    real = os.open

    def deny(name: Any, *args: Any, **kwargs: Any) -> int:
        if Path(name) == path:
            raise PermissionError(13, "Permission denied", str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    err = load_error(path)
    assert f"Permission denied reading {path}" in err.message


def test_permission_denied_for_real(make_gguf: Callable[..., Path]) -> None:
    """A real EACCES, not a patched one. Root ignores file modes, so as root the
    reader runs in a child process as the unprivileged user ``nobody``."""
    public = Path(tempfile.mkdtemp(prefix="appliance-perm-"))
    try:
        public.chmod(0o755)
        path = public / "model.gguf"
        path.write_bytes(make_gguf().read_bytes())
        path.chmod(0)
        # Imports happen first (the interpreter may live under a 0700 home), then
        # the child gives up root before it reads the file.
        code = (
            "import os, sys; sys.path.insert(0, '.'); from pathlib import Path\n"
            "from appliance.model.info import load_model_info\n"
            "from appliance.errors import ModelFileError\n"
            "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
            "try: load_model_info(Path(sys.argv[1]))\n"
            "except ModelFileError as e: print(e.message)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parents[3], check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"Permission denied reading {path}" in result.stdout
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_other_os_errors_are_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = write_config(tmp_path, json.dumps(MISTRAL_CFG))

    def fail(fd: int, n: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "read", fail)
    err = load_error(d)
    assert "Cannot read" in err.message and "Input/output error" in err.message


def test_broken_weight_symlink_is_reported(
    small_llama_dir: Callable[..., Path],
    make_safetensors: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # An HF cache snapshot copied without its blobs: symlinks point nowhere.
    d = small_llama_dir()
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model-00002-of-00002.safetensors").symlink_to(tmp_path / "blobs" / "missing")
    err = load_error(d)
    assert "it has 2 weight files but 1 are missing or broken links" in err.message
    assert "model-00002-of-00002.safetensors" in err.message
