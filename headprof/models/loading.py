"""Loading a model and its tokenizer for `--model`: device and dtype checks, GGUF via the dequantized cache,
hub ids through the local HF cache first; every failure is one line naming what was tried."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headprof.errors import HeadprofError
from headprof.models.fingerprint import weights_fingerprint
from headprof.models.gguf import local_weights
from headprof.models.hub import HubMiss, from_pretrained
from headprof.models.spec import (
    ALIASES,
    DEFAULT_MODEL,
    ModelInfo,
    ModelSpec,
    check_supported,
    first_line,
    info_from_config,
    known_info,
    resolve_model,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    """A model ready to score or generate, with the spec it came from and the numbers artifacts check."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    info: ModelInfo

    @property
    def device(self) -> torch.device:
        """Where the inputs go (the embedding's device, also under a `device_map`)."""
        return self.model.get_input_embeddings().weight.device


def quiet_transformers() -> None:
    """Silence transformers' warnings and progress bars: the CLI's stderr carries only its own progress and notices."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def model_info(name: str) -> ModelInfo:
    """Architecture numbers without loading weights: known table, cached dequantized config, or AutoConfig."""
    spec = resolve_model(name)
    known = known_info(spec)
    if known is not None:
        return known
    from transformers import AutoConfig

    try:
        weights = local_weights(spec)
        config = from_pretrained(AutoConfig.from_pretrained, weights.path, trust_remote_code=False, **weights.kwargs)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line for the user
        raise HeadprofError(f"cannot read the config of '{name}' ({spec.path}): {first_line(exc)}") from None
    return info_from_config(config, spec.model_id)


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 elsewhere (CPU bf16 matmuls are slow and less exact)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise HeadprofError(f"unknown dtype '{dtype}' (float32, bfloat16, float16, auto)") from None


def check_device(device: str) -> str:
    """'auto' -> cuda if present else cpu; anything torch can't use is an error before any loading."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise HeadprofError(f"unknown device '{device}' (cpu, cuda, cuda:N, auto)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise HeadprofError(
            f"device '{device}' is not available on this machine ({torch.cuda.device_count()} CUDA devices)"
        )
    if parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise HeadprofError(f"unsupported device '{device}' (cpu, cuda, cuda:N, auto)")
    return device


def _check_fast(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise HeadprofError(f"model '{name}' has no fast tokenizer: headprof needs offset mappings to locate needles")


def load_model(
    name: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", device_map: str | None = None
) -> LoadedModel:
    """Load model + tokenizer (SDPA attention where the family supports it); every failure is one line naming
    what was tried."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = resolve_model(name)
    device = check_device(device)
    weights = local_weights(spec)
    # transformers picks SDPA, or eager for the families SDPA would get wrong (Gemma 2, GPT-OSS)
    kwargs: dict[str, Any] = {"dtype": pick_dtype(dtype, device), "trust_remote_code": False, **weights.kwargs}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = from_pretrained(
            AutoTokenizer.from_pretrained, weights.path, trust_remote_code=False, **weights.kwargs
        )
        model = from_pretrained(AutoModelForCausalLM.from_pretrained, weights.path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        tried = f"alias {name} -> {spec.path}" if name in ALIASES else spec.path
        hint = f" ({exc.reason})" if isinstance(exc, HubMiss) else ""
        raise HeadprofError(f"cannot load model '{name}' (tried {tried}){hint}: {first_line(exc)}") from None
    if not device_map:
        model.to(device)
    model.eval()
    _check_fast(tokenizer, name)
    check_supported(model.config, name)
    info = info_from_config(model.config, spec.model_id, weights_fingerprint(model))
    return LoadedModel(model, tokenizer, spec, info)


def load_tokenizer(name: str = DEFAULT_MODEL) -> tuple[PreTrainedTokenizerBase, ModelInfo]:
    """Tokenizer and architecture numbers only (probe building measures lengths with the model's tokenizer)."""
    from transformers import AutoTokenizer

    spec = resolve_model(name)
    weights = local_weights(spec)
    try:
        tokenizer = from_pretrained(
            AutoTokenizer.from_pretrained, weights.path, trust_remote_code=False, **weights.kwargs
        )
    except Exception as exc:  # noqa: BLE001
        raise HeadprofError(f"cannot load the tokenizer of '{name}' ({spec.path}): {first_line(exc)}") from None
    _check_fast(tokenizer, name)
    return tokenizer, model_info(name)
