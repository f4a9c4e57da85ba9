"""The entry point: `with compressed(model, method=..., ...): model.generate(...)`.

Inside the block the model uses the "headprof" attention function, and every forward that starts
without a cache (or with an empty one) gets a fresh `CompressedCache`: the prompt is attended
exactly and compressed once at its end; decoding appends. A method with extra passes (KVzip's chunked
reconstruction) keeps the prompt dense; the press runs each pass on the same cache (cut back to the prompt
after each, so every pass starts at the prompt's length) with each layer handing its attention inputs to
the method's `pass_attention` (its scores, and the pass's attention output where it computed it on the way),
then the method selects across all layers. This goes through public hooks only
(AttentionInterface, the Cache API, `nn.Module` forward pre/post hooks); no modeling file is
patched. Works through `generate` (greedy, sampling; a left-padded batch of different prompts: each prompt
prefilled and compressed alone, then all decoded together) and through a manual forward loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache

from headprof.errors import HeadprofError
from headprof.models.fingerprint import weights_fingerprint
from headprof.models.registry import model_name, switch_attention
from headprof.models.spec import ModelInfo, check_supported, info_from_config
from headprof.runtime.budgets import BudgetSource, with_votes
from headprof.runtime.cache import ATTENTION_IMPL, CompressedCache, LayerPlan, cache_bytes
from headprof.runtime.methods import build_method
from headprof.runtime.methods.base import ExtraPass, Method
from headprof.runtime.plan import BudgetPlan

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_ATTACHED: weakref.WeakSet = weakref.WeakSet()  # models a press is attached to now: one at a time


@dataclass
class PressStats:
    """What the last prompt cost: its length, prefill and compression seconds, whether anything was dropped."""

    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    compress_seconds: float = 0.0
    compressed: bool = False


class Press:
    """A KV-compression method bound to a model, with its per-layer, per-head budgets (see `BudgetSource`);
    made by `build_press`.

    `tokenizer` is used by methods whose extra passes add text (KVzip's repeat prompts and chat template).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        method: Method,
        plan: BudgetPlan,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        plan_for: Callable[[int], BudgetPlan] | None = None,
    ):
        check_supported(model.config, model_name(model), runtime=True)
        if method.compresses and plan.budgets is None:
            raise HeadprofError(f"{method.name} needs budgets (a BudgetSource)")
        self.info = info_from_config(model.config, model_name(model))
        if plan.budgets is not None and plan.budgets.shape[0] != self.info.n_layers:
            raise HeadprofError(f"budgets for {plan.budgets.shape[0]} layers, but the model has {self.info.n_layers}")
        self.model = model
        self.method = method
        self.plan = plan
        self.tokenizer = tokenizer
        self.plan_for = plan_for  # budgets that follow each prompt's length (`compression_ratio`)
        if tokenizer is None and method.needs_tokenizer:  # said now, not at the first generate
            raise HeadprofError(
                f"{method.name} needs the model's tokenizer (its extra passes are text): pass tokenizer= when "
                "building the press"
            )
        self.stats = PressStats()
        self._hooks: list[Any] = []
        self._previous_impl: str | None = None
        self._started = 0.0
        self._passes: list[ExtraPass] | None = None  # the pending extra passes of the current prompt
        self._in_extra_pass = False
        self._batched: tuple[torch.Tensor, CompressedCache] | None = None  # a padded batch's logits and cache
        self.batch_stats: list[PressStats] = []  # each row's, after a padded batch (`_prefill_rows`)
        self.batch_bytes: list[int] = []  # each row's compressed prompt's kv_bytes, after a padded batch

    @property
    def budgets(self) -> torch.Tensor | None:
        """Budgets `[L, S]`, window included (None for the full cache)."""
        return self.plan.budgets

    @property
    def active(self) -> bool:
        """Whether the press is attached to its model (inside `with press:`)."""
        return bool(self._hooks)

    # ---------------------------------------------------------- caches

    def new_cache(self) -> Cache:
        """An empty cache for one prompt: ours when compressing, transformers' DynamicCache otherwise."""
        if not self.method.compresses:
            return DynamicCache(config=self.model.config)
        windowed = set(self.info.window_layers)
        cache = CompressedCache(
            [
                LayerPlan(self.method, budgets, self.plan.window, self.info.sliding_window if i in windowed else 0)
                for i, budgets in enumerate(self.plan.budgets)
            ]
        )
        cache.attention_config = self.model.config  # refused by the model's own attention (outside the press)
        return cache

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> Cache:
        """Run (and compress) a prompt; the returned cache continues in `generate(..., cache=...)`."""
        cache = self.new_cache()
        with contextlib.ExitStack() as stack:
            if not self.active:
                stack.enter_context(self)
            self.model(input_ids=input_ids.to(self.model.device), cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    # ---------------------------------------------------------- context manager and hooks

    def __enter__(self) -> Press:
        if self.active:
            raise HeadprofError("this press is already active (one `with press:` at a time)")
        if self.model in _ATTACHED:
            raise HeadprofError(
                "another press is already attached to this model: leave its `with` block first (presses do not nest)"
            )
        if self.method.compresses:
            self._previous_impl = switch_attention(self.model, ATTENTION_IMPL)  # may refuse the family
        _ATTACHED.add(self.model)
        self._hooks = [
            self.model.register_forward_pre_hook(self._before, with_kwargs=True),
            self.model.register_forward_hook(self._after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks:
            _ATTACHED.discard(self.model)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._previous_impl is not None:
            self.model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None

    def _before(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._in_extra_pass or kwargs.get("use_cache") is False:
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._refuse_unsupported(kwargs, cache)
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
                return args, self._prefill_rows(ids, mask, kwargs)
            self.batch_stats, self.batch_bytes = [], []
            self.stats = PressStats(prompt_tokens=tokens)
            self._passes = self.begin_prompt(cache, ids, tokens) if isinstance(cache, CompressedCache) else None
            self._sync()
            self._started = time.perf_counter()
        return args, kwargs

    def _after(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        if self._batched is not None:  # a left-padded batch: its rows' logits and caches replace the stand-in's
            output["logits"], output["cache"] = self._batched
            self._batched = None
            return output
        if self._in_extra_pass or self._started == 0.0:
            return None
        cache = getattr(output, "cache", None)
        if self._passes is not None and isinstance(cache, CompressedCache):
            self._run_extra_passes(cache, self._passes)
        self._passes = None
        self._sync()
        prefill_seconds = time.perf_counter() - self._started
        self._started = 0.0
        self.stats = prompt_stats(cache, self.stats.prompt_tokens, prefill_seconds)
        return None

    def _prefill_rows(self, ids: torch.Tensor | None, mask: torch.Tensor, kwargs: dict) -> dict:
        """A left-padded batch's first forward: each row's prompt (its padding dropped) is prefilled and
        compressed alone, as it would be unbatched, and the caches are stacked into one whose rows decode
        together (`CompressedCache.stack_prompts`; transformers' positions from the mask continue each row from
        its own length). The forward itself runs one stand-in token on a throwaway cache; `_after` hands
        `generate` the rows' last logits and the stacked cache instead of its output."""
        if ids is None:
            raise HeadprofError("a padded batch under a compressed cache needs input_ids, not inputs_embeds")
        if self.method.evicts:
            raise HeadprofError(f"{self.method.name} evicts while decoding: run its prompts one by one, unpadded")
        real = mask.bool()
        if bool((real[:, :-1] & ~real[:, 1:]).any()) or not bool(real[:, -1].all()):
            raise HeadprofError("padded batches under a compressed cache must be left-padded (padding_side='left')")
        logits, caches, stats, sizes = [], [], [], []
        for row, keep in zip(ids, real):
            output = self.model(input_ids=row[keep][None], use_cache=True, logits_to_keep=1)
            logits.append(output.logits[:, -1:])
            caches.append(output.cache)
            stats.append(self.stats)
            sizes.append(cache_bytes(output.cache)["kv_bytes"])
        stacked = CompressedCache.stack_prompts(caches, ids.shape[1])
        stacked.attention_config = self.model.config
        self._batched = (torch.cat(logits), stacked)
        self.batch_stats, self.batch_bytes = stats, sizes
        totals = [sum(getattr(s, name) for s in stats) for name in ("prompt_tokens", "prefill_seconds")]
        self.stats = PressStats(*totals, sum(s.compress_seconds for s in stats), any(s.compressed for s in stats))
        positions = kwargs.get("position_ids")
        stand_in = {"input_ids": ids[:, -1:], "use_cache": True, "logits_to_keep": 1}
        positions = {} if positions is None else {"position_ids": positions[:, -1:]}
        return {**stand_in, **positions, "cache": DynamicCache(config=self.model.config)}

    def _refuse_unsupported(self, kwargs: dict, cache: Cache | None) -> None:
        """What a compressed cache cannot honour is refused in words, never silently replaced or left empty."""
        if not self.method.compresses:
            return
        if kwargs.get("output_attentions"):
            raise HeadprofError(
                "output_attentions=True is not available under a compressed cache: headprof's attention does not "
                "return attention weights (capture them with headprof.capture.AttentionCapture, without a press)"
            )
        if cache is not None and type(cache) not in (DynamicCache, CompressedCache):
            raise HeadprofError(
                f"a {type(cache).__name__} (cache_implementation=...) cannot be compressed: the press brings its own "
                "cache; leave cache_implementation unset and pass no cache, or one from press.prefill"
            )

    def check_positions(self, tokens: int, passes: list[ExtraPass]) -> None:
        """Refuse extra passes that would run past the positions the model was trained for."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = max((extra.ids.shape[1] for extra in passes), default=0)
        if limit and tokens + longest > limit:
            raise HeadprofError(
                f"{self.method.name}: the prompt's {tokens} tokens + its longest extra pass of {longest} need "
                f"positions up to {tokens + longest}, beyond the model's {limit} (shorten the context)"
            )

    # ---------------------------------------------------------- one prompt's lifecycle
    # begin_prompt -> the prompt's forward (each layer scores its own queries and compresses, or, with extra
    # passes, stays dense) -> pass_scores + compress_all -> prompt_stats. `runtime/sweep.py` observes a prompt once
    # and runs the last steps for many presses: `score_prompt` per layer, then `compress_from` per press.

    def prompt_budgets(self, tokens: int) -> torch.Tensor:
        """Budgets `[L, S]` for a prompt of `tokens` tokens (a compression ratio's, PyramidKV's schedule)."""
        return self.method.budgets_for(self.plan_for(tokens) if self.plan_for else self.plan, tokens)

    def begin_prompt(self, cache: CompressedCache, ids: torch.Tensor | None, tokens: int) -> list[ExtraPass] | None:
        """Set a new prompt's budgets on `cache`; a method with extra passes gets them (checked against the
        model's positions) and the cache keeps the prompt dense for them."""
        cache.set_budgets(self.prompt_budgets(tokens))
        passes = self.method.extra_passes(ids, self.tokenizer)
        if passes is not None:
            self.check_positions(tokens, passes)
            cache.defer()
        return passes

    def score_prompt(self, query: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
        """A layer's scores `[B, S, T]` from the prompt's own queries, as the layer computes them when it
        compresses itself (`CompressedLayer.compress`)."""
        return self.method.score(query, keys, scaling, self.plan.window, int(self.plan.budgets.shape[1]))

    @property
    def scoring(self) -> tuple[object, int, int]:
        """Presses with equal keys score a prompt alike (`Method.score_key`, window, stored heads), whatever
        their budgets: one computation of the scores serves them all."""
        return self.method.score_key, self.plan.window, int(self.plan.budgets.shape[1])

    def compress_from(
        self, dense: CompressedCache, tokens: int, scores: dict[int, torch.Tensor], prefill_seconds: float
    ) -> tuple[CompressedCache, PressStats]:
        """This press's cache for a prompt observed once elsewhere: the first `tokens` of the dense prompt in
        `dense`, compressed at this press's budgets from `scores` (`[B, S, T]` per budgeted layer)."""
        cache = self.new_cache()
        cache.set_budgets(self.prompt_budgets(tokens))
        cache.adopt(dense, tokens)
        cache.compress_all(scores)
        return cache, prompt_stats(cache, tokens, prefill_seconds)

    def _run_extra_passes(self, cache: CompressedCache, passes: list[ExtraPass]) -> None:
        """Score the prompt with every pass, then compress all layers at once."""
        cache.compress_all(self.pass_scores(cache, passes))

    def pass_scores(self, cache: CompressedCache, passes: list[ExtraPass]) -> dict[int, torch.Tensor]:
        """Feed each pass on top of the dense prompt in `cache` (kept dense: it is cut back to the prompt after
        each pass); its queries score their span. Returns scores `[B, S, N]` per budgeted layer."""
        prefix = cache.get_seq_length()
        batch = passes[0].ids.shape[0] if passes else 1
        device = cache.layers[0].keys.device
        scores = {
            layer.index: torch.full((batch, layer.n_stored, prefix), float("inf"), device=device)
            for layer in cache.budgeted
        }  # positions no pass scores stay +inf: always kept; sliding-window layers are not budgeted
        current: list[ExtraPass] = []

        def observe(index: int, query: Tensor, keys: Tensor, values: Tensor | None, scaling: float) -> Tensor | None:
            extra = current[0]
            scored, output = self.method.pass_attention(
                extra, query, keys, values, scaling, cache.layers[index].n_stored
            )
            scores[index][..., extra.start : extra.end] = scored
            return output

        cache.observe(observe)
        self._in_extra_pass = True
        try:
            with contextlib.ExitStack() as stack:
                if not self.active:
                    stack.enter_context(self)
                for extra in passes:
                    current[:] = [extra]
                    self.model(input_ids=extra.ids.to(device), cache=cache, use_cache=True, logits_to_keep=1)
                    cache.truncate(prefix)
        finally:
            self._in_extra_pass = False
            cache.observe(None)
        return scores

    def _sync(self) -> None:
        if torch.cuda.is_available() and self.model.device.type == "cuda":
            torch.cuda.synchronize()


def prompt_stats(cache: Cache | None, tokens: int, prefill_seconds: float) -> PressStats:
    """What a prompt cost, once its cache is compressed (or kept whole)."""
    if not isinstance(cache, CompressedCache):
        return PressStats(tokens, prefill_seconds)
    return PressStats(tokens, prefill_seconds, cache.stats.compress_seconds, cache.stats.compressed_heads > 0)


def build_press(
    model: PreTrainedModel,
    method: str | Method = "snapkv",
    source: BudgetSource | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    info: ModelInfo | None = None,
) -> Press:
    """The one way a press is made (`compressed`, `headprof run`, `evaluate`, ablation): a method by name (with
    its `options`, see `build_method`) or as an object, and budgets from `source` (default: `BudgetSource()`)."""
    if isinstance(method, Method):
        if options:
            raise HeadprofError("options go with a method name: a Method object brings its own")
    else:
        method = build_method(method, **(options or {}))
    source = source or BudgetSource()
    info = info or info_from_config(model.config, model_name(model), weights_fingerprint(model))
    plan_for = source.plan_for(method, info)  # a compression ratio's range is checked before any budget
    plan = source.plan(method, info)
    return Press(model, with_votes(method, plan.votes), plan, tokenizer=tokenizer, plan_for=plan_for)


def compressed(
    model: PreTrainedModel,
    method: str | Method = "snapkv",
    budget: int = 128,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    info: ModelInfo | None = None,
    **settings: Any,
) -> Press:
    """`with compressed(model, "headkv", allocation=alloc): model.generate(...)`: a `Press` from a method name
    (or object), `budget` and the other fields of `BudgetSource` (`allocation=`, `scores=`, `gqa=`, `window=`,
    `compression_ratio=`, ...), and the method's options (`kernel=`, `pooling=`, `sinks=`, ...): every other
    keyword. See `build_press`."""
    fields = {field.name for field in dataclasses.fields(BudgetSource)}
    source = BudgetSource(budget, **{key: value for key, value in settings.items() if key in fields})
    options = {key: value for key, value in settings.items() if key not in fields}
    return build_press(model, method, source, options=options, tokenizer=tokenizer, info=info)
