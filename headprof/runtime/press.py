"""The entry point: `with compressed(model, method=..., ...): model.generate(...)`.

Inside the block the model uses the "headprof" attention function, and every forward that starts
without a cache (or with an empty one) gets a fresh `CompressedCache`: the prompt is attended
exactly and compressed once at its end; decoding appends. This goes through public hooks only
(AttentionInterface, the Cache API, `nn.Module` forward pre/post hooks); no modeling file is
patched. Works through `generate` (greedy, sampling) and through a manual forward loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache

from headprof.allocation import AllocConfig, allocate
from headprof.artifacts import AllocArtifact, ScoreArtifact, check_model
from headprof.errors import HeadprofError
from headprof.models.fingerprint import weights_fingerprint
from headprof.models.spec import ModelInfo, check_supported, info_from_config
from headprof.runtime.cache import ATTENTION_IMPL, CompressedCache, LayerPlan
from headprof.runtime.methods import METHODS, MethodOptions

RECONSTRUCTION_PROMPT = "\n\nRepeat the previous context exactly.\n\n"


@dataclass
class PressStats:
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    compress_seconds: float = 0.0
    compressed: bool = False


class Press:
    """A KV-compression method bound to a model, with its per-layer, per-head budgets.

    Budgets: `allocation` (an `alloc-*.safetensors` artifact; its layout and window are used), or
    `scores` + `budget` (HeadKV allocation on the fly), or the method's own policy at `budget`
    (uniform; PyramidKV's pyramid). `gqa="kv"` stores one selection per KV head (memory-honest);
    `gqa="query"` stores per query head, repeating shared KV heads (the HeadKV paper's layout).
    """

    def __init__(self, model: Any, method: str = "snapkv", budget: int = 128, *,
                 allocation: AllocArtifact | None = None, scores: ScoreArtifact | None = None,
                 gqa: str = "kv", window: int = 32, beta: float | None = None, temp: float = 1.0,
                 score_method: str = "r2", tokenizer: Any = None, options: MethodOptions = MethodOptions(),
                 info: ModelInfo | None = None):
        if method not in METHODS:
            raise HeadprofError(f"unknown method '{method}' ({', '.join(sorted(METHODS))})")
        check_supported(model.config, getattr(model, "name_or_path", "") or type(model).__name__)
        self.model = model
        self.method = METHODS[method](options)
        self.tokenizer = tokenizer
        self.info = info or info_from_config(model.config, getattr(model, "name_or_path", ""),
                                             weights_fingerprint(model))
        self.stats = PressStats()
        self.window = window
        self.budgets = self._budgets(budget, allocation, scores, gqa, beta, temp, score_method)
        self._hooks: list[Any] = []
        self._previous_impl: str | None = None
        self._started = 0.0
        self._busy = False

    def _budgets(self, budget: int, allocation: AllocArtifact | None, scores: ScoreArtifact | None, gqa: str,
                 beta: float | None, temp: float, score_method: str) -> torch.Tensor | None:
        if not self.method.compresses:
            return None
        info = self.info
        if allocation is not None:
            check_model(allocation.model, info, "allocation")
            self.window = int(allocation.meta.get("window", self.window))
            return allocation.budgets.long()
        policy = self.method.policy
        config = AllocConfig(budget, policy, self.window, beta, temp, gqa)
        config.validate()
        if policy == "headkv":
            if scores is None:
                raise HeadprofError("headkv needs an allocation artifact (--alloc) or a score artifact (--scores)")
            check_model(scores.model, info, "score artifact")
            return allocate(scores.scores(score_method), config, info.n_kv_heads)
        return allocate(torch.zeros(info.n_layers, info.n_heads), config, info.n_kv_heads)

    # ---------------------------------------------------------- caches

    def new_cache(self) -> Cache:
        if not self.method.compresses:
            return DynamicCache(config=self.model.config)
        plans = [LayerPlan(self.method, self.budgets[i], self.window) for i in range(self.info.n_layers)]
        return CompressedCache(plans)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> Cache:
        """Run (and compress) a prompt; the returned cache continues in `generate(..., cache=...)`."""
        cache = self.new_cache()
        with self:
            self.model(input_ids=input_ids.to(self.model.device), cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    # ---------------------------------------------------------- context manager and hooks

    def __enter__(self) -> Press:
        if self._hooks:  # re-entered (prefill inside a with-block)
            self._hooks.append(None)
            return self
        if self.method.compresses:
            self._previous_impl = self.model.config._attn_implementation
            self.model.set_attn_implementation(ATTENTION_IMPL)
        self._hooks = [self.model.register_forward_pre_hook(self._before, with_kwargs=True),
                       self.model.register_forward_hook(self._after, with_kwargs=True)]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks and self._hooks[-1] is None:
            self._hooks.pop()
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._previous_impl is not None:
            self.model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None

    def _before(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._busy or kwargs.get("use_cache") is False:
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or (not isinstance(cache, CompressedCache) and cache.get_seq_length() == 0):
            cache = self.new_cache()
            kwargs.pop("past_key_values", None)
            kwargs["cache"] = cache
        if cache.get_seq_length() == 0:
            ids = kwargs.get("input_ids", args[0] if args else None)
            tokens = ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1]
            if tokens == 0:
                raise HeadprofError("empty prompt: nothing to compress")
            mask = kwargs.get("attention_mask")
            if self.method.compresses and mask is not None and mask.ndim == 2 and not bool(mask.all()):
                raise HeadprofError("padded batches are not supported with a compressed cache: "
                                    "batch prompts of equal length, or run them one by one")
            self.stats = PressStats(prompt_tokens=tokens)
            if isinstance(cache, CompressedCache):
                cache.prompt_ids = ids
            self._sync()
            self._started = time.perf_counter()
        return args, kwargs

    def _after(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self._busy or self._started == 0.0:
            return
        cache = getattr(output, "cache", None)
        if isinstance(cache, CompressedCache) and cache.phase == "dense":
            self._reconstruct(cache)
        self._sync()
        self.stats.prefill_seconds = time.perf_counter() - self._started
        self._started = 0.0
        if isinstance(cache, CompressedCache):
            self.stats.compress_seconds = cache.stats.compress_seconds
            self.stats.compressed = cache.stats.compressed_heads > 0

    def _reconstruct(self, cache: CompressedCache) -> None:
        """KVzip: feed the context again, score entries by reconstruction attention, then compress."""
        prefix = cache.get_seq_length()
        ids = cache.prompt_ids
        if ids is None:
            raise HeadprofError("kvzip needs input_ids (its reconstruction pass feeds the context tokens again)")
        if self.tokenizer is not None:
            lead = self.tokenizer(RECONSTRUCTION_PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
            ids = torch.cat([lead.to(ids.device).expand(ids.shape[0], -1), ids], dim=1)
        for layer in cache.layers:
            layer.phase, layer.prefix = "scoring", prefix
        self._busy = True
        try:
            self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            self._busy = False
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, :prefix], layer.values[:, :, :prefix]
            layer.seen = prefix
            layer.compress(None, 1.0, scores=layer.reconstruction_scores)
            layer.reconstruction_scores = None

    def _sync(self) -> None:
        if torch.cuda.is_available() and self.model.device.type == "cuda":
            torch.cuda.synchronize()


def compressed(model: Any, method: str = "snapkv", budget: int = 128, **kwargs: Any) -> Press:
    """`with compressed(model, method="headkv", allocation=alloc): model.generate(...)` — see `Press`."""
    return Press(model, method, budget, **kwargs)


def cache_bytes(cache: Cache) -> dict[str, int]:
    """Stored KV bytes of any cache (ours, or transformers' DynamicCache for the full baseline)."""
    if isinstance(cache, CompressedCache):
        return cache.kv_bytes()
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    allocated = sum(t.untyped_storage().nbytes() for t in tensors)
    needed = sum(t.numel() * t.element_size() for t in tensors)
    return {"kv_bytes": allocated, "kv_bytes_needed": needed, "padding_bytes": allocated - needed, "index_bytes": 0}
