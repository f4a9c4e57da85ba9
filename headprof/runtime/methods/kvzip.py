"""KVzip (Kim et al. 2025): query-agnostic compression scored by chunked context reconstruction.

As the authors run it (snu-mllab/KVzip, `model/wrapper.py` `self_task` and `scoring`, `attention/score.py`):
- the prompt is [template prefix | context]; only the context is repeated, in chunks of 2000 tokens;
- chunk 0's pass is `FIRST_PROMPT`, the assistant-turn opener, the chunk; chunk i's is `NEXT_PROMPT`, the
  last 8 token ids of chunk i-1, the opener, the chunk; every pass runs on the full prefill cache, at
  positions from the prefill length N on;
- a context position's score is the most attention any query of its chunk's pass gives it (max over the
  GQA group too), the softmax taken over the prefix, the own chunk and the pass's own tokens only;
- the template prefix is always kept (no pass scores it), and so is everything after the context;
- selection: one budget across all layers and heads (default; the authors' strict threshold: every entry
  scoring above the (n+1)-th best, so entries tied with it are dropped), or the same count in every head.

The assistant-turn opener is the authors' (`model/template.py`) for the families they hard-code, recognised
by their chat template's marker (Llama 3: with its leading "\n\n"; Qwen/ChatML, with Qwen3's empty think
block when the template renders one; Gemma 3); for other families, whose template the authors lack, the
text the tokenizer's chat template puts after a user message (as kvpress derives it), and for a tokenizer
without a template the authors' fallback `PLAIN_SUFFIX` (its prefix then is the BOS token when the prompt
starts with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headprof.attention import grouped_logits, grouped_values
from headprof.errors import HeadprofError
from headprof.runtime.methods.base import SCALES, ExtraPass, Method, logit_scale
from headprof.runtime.selection import Selection, above_threshold, global_top_k, reduce_groups

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FIRST_PROMPT = "\n\nRepeat the previous context exactly."
NEXT_PROMPT = "\n\nRepeat the part of the previous context exactly, starting with "  # trailing space: the authors'
PLAIN_SUFFIX = "\n\nAnswer: "  # the authors' fallback template (model/template.py)
# the authors' hard-coded openers (model/template.py), by a marker of the family's chat template
AUTHORS_OPENERS = (
    ("<|start_header_id|>", "\n\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),  # Llama 3
    ("<|im_start|>", "<|im_end|>\n<|im_start|>assistant\n"),  # Qwen (ChatML)
    ("<start_of_turn>", "<end_of_turn>\n<start_of_turn>model\n"),  # Gemma 3
)
QWEN3_THINK = "<think>\n\n</think>\n\n"  # the authors append it for Qwen3 (thinking off)
SELECTIONS = ("global", "uniform")
CUTOFFS = ("threshold", "topk")
OPENERS = ("authors", "template")
_MARKER = "headprof-kvzip-context"


@dataclass(frozen=True)
class KVzipOptions:
    """`chunk_size`: context tokens per reconstruction pass (2000); `hint_tokens`: tokens of the previous chunk
    quoted in the next prompt (8); `selection`: `global` (one budget across layers and heads: the authors'
    default) or `uniform` (the same count in every head); `cutoff` (global selection): `threshold` (the
    authors' `score > threshold`, the threshold being the (n+1)-th best score for n entries: ties with it are
    dropped, so fewer than n may be kept) or `topk` (exactly n, `torch.topk` picking among ties, as kvpress);
    `opener`: the assistant-turn opener of the repeat passes, `authors` (their hard-coded one per family)
    or `template` (derived from the chat template for every family); `scale`: the logits' factor, the model's
    `scaling` or `head-dim` (the authors' `math.sqrt(head_dim)`; see `logit_scale`); `recent_window`: also
    keep the last w prompt tokens in every head, inside the budget (the authors keep none); `block`: pass
    queries per scoring step (memory `[B, Hq, block, prefix + chunk + pass]`; a pass of at most `block` tokens
    is one matmul, as the authors compute it, more blocks agree up to float rounding); `first_prompt` /
    `next_prompt`: the repeat instructions; `reserve`: entries per head held back from the budget for the tokens
    that follow the compressed context (its question), so that once they are in, the cache holds the budget (the
    bytes of uniform B, as a query-aware method compressing the whole prompt); 0, the authors', budgets the
    context alone and the question comes on top."""

    chunk_size: int = 2000
    hint_tokens: int = 8
    selection: str = "global"
    cutoff: str = "threshold"
    opener: str = "authors"
    scale: str = "model"
    recent_window: bool = False
    block: int = 256
    first_prompt: str = FIRST_PROMPT
    next_prompt: str = NEXT_PROMPT
    reserve: int = 0

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.hint_tokens < 0 or self.block < 1 or self.reserve < 0:
            raise HeadprofError("kvzip chunk_size and block must be >= 1, hint_tokens and reserve >= 0")
        if self.selection not in SELECTIONS:
            raise HeadprofError(f"unknown kvzip selection '{self.selection}' ({', '.join(SELECTIONS)})")
        if self.cutoff not in CUTOFFS:
            raise HeadprofError(f"unknown kvzip cutoff '{self.cutoff}' ({', '.join(CUTOFFS)})")
        if self.opener not in OPENERS:
            raise HeadprofError(f"unknown kvzip opener '{self.opener}' ({', '.join(OPENERS)})")
        if self.scale not in SCALES:
            raise HeadprofError(f"unknown scale '{self.scale}' ({', '.join(SCALES)})")


@dataclass(frozen=True)
class ReconstructionPass(ExtraPass):
    """One chunk's pass; `prefix` template tokens before the context are visible to it and never scored."""

    prefix: int = 0


def authors_opener(template_opener: str) -> str | None:
    """The authors' opener for the family whose chat template renders `template_opener` after a user message;
    None for a family they do not hard-code."""
    for marker, opener in AUTHORS_OPENERS:
        if marker in template_opener:
            think = marker == "<|im_start|>" and template_opener.endswith(QWEN3_THINK)
            return opener + QWEN3_THINK if think else opener
    return None


def chat_frame(tokenizer: PreTrainedTokenizerBase, opener: str = "authors") -> tuple[list[int], list[int]]:
    """(template tokens before a user message's content, the assistant-turn opener after it); `opener` as
    `KVzipOptions.opener`."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _MARKER}], add_generation_prompt=True, tokenize=False, enable_thinking=False
        )
        if _MARKER in text:
            before, after = text.split(_MARKER, 1)
            if opener == "authors":
                after = authors_opener(after) or after
            encode = tokenizer.encode
            return encode(before, add_special_tokens=False), encode(after, add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos, tokenizer.encode(PLAIN_SUFFIX, add_special_tokens=False)


class KVzip(Method):
    """Kim et al. 2025: query-agnostic. After the context, chunked reconstruction passes score each context
    entry by the most attention its chunk's repeat gives it; one compressed cache then serves any question."""

    name = "kvzip"
    Options = KVzipOptions
    options: KVzipOptions
    query_agnostic = True
    needs_tokenizer = True

    def extra_passes(
        self, prompt_ids: torch.Tensor | None, tokenizer: PreTrainedTokenizerBase | None
    ) -> list[ExtraPass] | None:
        """One `ReconstructionPass` per context chunk (none for a prompt that is all template)."""
        if prompt_ids is None:
            raise HeadprofError("kvzip needs input_ids (its reconstruction passes feed the context tokens again)")
        if tokenizer is None:
            raise HeadprofError("kvzip needs the model's tokenizer (its reconstruction prompts are text)")
        head, suffix = chat_frame(tokenizer, self.options.opener)
        batch, total = prompt_ids.shape
        device = prompt_ids.device
        expected = torch.tensor(head, dtype=prompt_ids.dtype, device=device)
        matches = bool(head) and total >= len(head) and bool(prompt_ids[:, : len(head)].eq(expected).all())
        prefix = len(head) if matches else 0

        def tokens(ids: list[int]) -> torch.Tensor:
            return torch.tensor(ids, dtype=prompt_ids.dtype, device=device).expand(batch, -1)

        first = tokens(tokenizer.encode(self.options.first_prompt, add_special_tokens=False))
        after = tokens(tokenizer.encode(self.options.next_prompt, add_special_tokens=False))
        size, hint = self.options.chunk_size, self.options.hint_tokens
        passes: list[ExtraPass] = []
        for start in range(prefix, total, size):
            stop = min(start + size, total)
            if start == prefix:
                lead = first
            else:
                previous = prompt_ids[:, max(start - hint, start - size) : start] if hint else prompt_ids[:, :0]
                lead = torch.cat([after, previous], dim=1)
            ids = torch.cat([lead, tokens(suffix), prompt_ids[:, start:stop]], dim=1)
            passes.append(ReconstructionPass(ids, start, stop, prefix))
        return passes

    def score_pass(
        self, extra: ExtraPass, query: torch.Tensor, keys: torch.Tensor, scaling: float, n_stored: int
    ) -> torch.Tensor:
        """Max attention of the pass's queries on each position of its chunk, the softmax over the prefix, the
        chunk and the pass's tokens only; cast to the model dtype (the authors' scores are in it)."""
        return self.pass_attention(extra, query, keys, None, scaling, n_stored)[0]

    def pass_attention(
        self,
        extra: ExtraPass,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None,
        scaling: float,
        n_stored: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`score_pass`'s scores, and the pass's attention output from the same softmax where that softmax is the
        model's attention: float32 (the logits are then SDPA's up to rounding), the model's scale, and one chunk
        holding the whole context (the softmax covers every key the queries see). Otherwise no output."""
        if not isinstance(extra, ReconstructionPass):
            raise HeadprofError(f"kvzip scores its own reconstruction passes, not a {type(extra).__name__}")
        n_queries, block = query.shape[2], self.options.block
        model_scale = scaling
        scaling = logit_scale(self.options.scale, scaling, query.shape[-1])
        span = extra.end - extra.start
        sub = torch.cat(
            [keys[:, :, : extra.prefix], keys[:, :, extra.start : extra.end], keys[:, :, -n_queries:]], dim=2
        )
        context = extra.prefix + span
        attending = (
            values is not None
            and query.dtype == torch.float32
            and scaling == model_scale
            and sub.shape[2] == keys.shape[2]
        )
        best, outputs = None, []
        for start in range(0, n_queries, block):
            stop = min(start + block, n_queries)
            logits = grouped_logits(
                query[:, :, start:stop], sub[:, :, : context + stop], scaling, model_dtype_logits=True
            )
            # every query sees the whole context; only the pass's own tokens are causal: masked there alone
            causal = (
                torch.arange(stop, device=query.device)[None, :]
                <= torch.arange(start, stop, device=query.device)[:, None]
            )
            logits[..., context:].masked_fill_(~causal, float("-inf"))
            probs = logits.softmax(dim=-1)
            top = probs[..., extra.prefix : context].amax(dim=2)
            best = top if best is None else torch.maximum(best, top)
            if attending:
                outputs.append(grouped_values(probs, values[:, :, : probs.shape[-1]]))
        output = torch.cat(outputs, dim=2).transpose(1, 2) if attending else None
        return reduce_groups(best.to(keys.dtype), n_stored, "max"), output

    def select_layers(self, scores: list[torch.Tensor], budgets: torch.Tensor, window: int) -> list[Selection]:
        """Keep the unscored prefix, optionally the last w positions, and the best context entries: of
        `sum_i max(min(b_i, N) - reserve, 0)` minus what is protected (the template prefix counts against the
        budget), across all layers and heads (`global`: by `cutoff`), or per head (`uniform`: `torch.topk`, as
        the authors' `_threshold_uniform`)."""
        batch, n_stored, total = scores[0].shape
        stacked = torch.stack(scores, dim=1)  # [B, L, S, N]
        scored = (~torch.isinf(stacked[0, 0, 0])).nonzero().squeeze(1)
        start = int(scored[0]) if scored.numel() else total
        stop = total - min(window, total - start) if self.options.recent_window else total
        keep = torch.ones_like(stacked, dtype=torch.bool)
        keep[..., start:stop] = False
        candidates = stacked[..., start:stop]
        limits = (budgets.to(stacked.device).long().clamp(max=total) - self.options.reserve).clamp(min=0)  # [L, S]
        if self.options.selection == "global":
            free = int(limits.sum()) - keep[0].sum().item()
            if self.options.cutoff == "threshold":
                keep[..., start:stop] = above_threshold(candidates, free)
            else:
                keep[..., start:stop] = global_top_k(candidates, free)
        else:
            free = (limits - (total - (stop - start))).clamp(min=0)  # [L, S]
            flat = candidates.reshape(-1, stop - start)
            chosen = torch.zeros_like(flat, dtype=torch.bool)
            counts = free[None].expand(batch, -1, -1).reshape(-1)
            for count in counts.unique().tolist():
                rows = (counts == count).nonzero().squeeze(1)
                if count > 0:
                    chosen[rows[:, None], flat[rows].topk(count, dim=-1).indices] = True
            keep[..., start:stop] = chosen.view_as(candidates)
        return [Selection.from_mask(keep[:, layer]) for layer in range(keep.shape[1])]
