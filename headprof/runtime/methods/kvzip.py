"""KVzip (Kim et al. 2025): query-agnostic compression scored by a context-reconstruction pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headprof.attention import attention_rows
from headprof.errors import HeadprofError
from headprof.runtime.methods.base import Method

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RECONSTRUCTION_PROMPT = "\n\nRepeat the previous context exactly.\n\n"


@dataclass(frozen=True)
class KVzipOptions:
    """`block`: reconstruction queries per step of the scoring; `prompt`: what asks the model to repeat."""

    block: int = 256
    prompt: str = RECONSTRUCTION_PROMPT


class KVzip(Method):
    """Kim et al. 2025: query-agnostic. After the context, a reconstruction pass (the context fed again)
    scores each KV entry by the most attention any reconstruction query gives it; one compressed cache
    then serves any question about the context."""

    name = "kvzip"
    Options = KVzipOptions
    options: KVzipOptions
    group_reduce = "max"
    query_agnostic = True

    def extra_pass(
        self, prompt_ids: torch.Tensor | None, tokenizer: PreTrainedTokenizerBase | None
    ) -> torch.Tensor | None:
        """The reconstruction pass: the repeat instruction (when a tokenizer is given), then the context again."""
        if prompt_ids is None:
            raise HeadprofError("kvzip needs input_ids (its reconstruction pass feeds the context tokens again)")
        if tokenizer is None:
            return prompt_ids
        lead = tokenizer(self.options.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        return torch.cat([lead.to(prompt_ids.device).expand(prompt_ids.shape[0], -1), prompt_ids], dim=1)

    def score(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
        """Max attention any reconstruction query gives each context position: `[B, Hq, T - n]`."""
        n_queries, block = query.shape[2], self.options.block
        context = keys.shape[2] - n_queries
        best = None
        for start in range(0, n_queries, block):
            stop = min(start + block, n_queries)
            rows = attention_rows(query[:, :, start:stop], keys[:, :, : context + stop], scaling)
            top = rows[..., :context].amax(dim=2)
            best = top if best is None else torch.maximum(best, top)
        return best
