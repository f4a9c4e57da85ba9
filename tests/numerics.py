"""Measuring decode logits in low precision: a method's compressed cache against the full cache, and the floor that
low precision itself sets (used by test_precision.py and benchmarks/bf16.py, benchmarks/families.py).

In bf16 or fp16 a decode step's attention output is defined only to its last bit: any change in the order of
float32 sums flips some roundings, and the flips travel through the layers to the logits. The floor is the full
cache's own distance to the same prompt pass followed by float32 decode attention (`exact_attention`). The
model's attention (SDPA, or eager) sits at the floor from that reference; a method exact to float32 sits within
the same floor of it, so within twice the floor of the full cache (triangle inequality): the bound tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headprof.attention import exact_attention
from headprof.models.registry import attention_switched, model_attention, pop_logit_options, register_attention
from headprof.runtime import compressed

EXACT_DECODE = "numerics_exact_decode"


def _exact_decode(module: torch.nn.Module, query, key, value, mask, **kwargs: Any):
    """The model's own attention for the prompt pass; float32 attention on the one-token decode steps."""
    scaling, extras = pop_logit_options(query, kwargs)
    if query.shape[2] > 1:
        return model_attention(module, query, key, value, mask, scaling, extras, **kwargs), None
    return exact_attention(query, key, value, scaling, mask=mask, extras=extras), None


register_attention(EXACT_DECODE, _exact_decode)


def greedy(model, ids: torch.Tensor, new: int):
    """Greedy generation with its raw logits."""
    with torch.no_grad():
        return model.generate(
            ids,
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
        )


def forced_logits(model, ids: torch.Tensor, answer: list[int]) -> torch.Tensor:
    """Float32 logits `[n, vocab]` predicting each answer token, the answer fed back one token at a time."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        logits = [out.logits[0, -1].float()]
        for token in answer[:-1]:
            out = model(torch.tensor([[token]], device=ids.device), cache=out.cache, use_cache=True)
            logits.append(out.logits[0, -1].float())
    return torch.stack(logits)


@dataclass(frozen=True)
class Comparison:
    """A method's logits against the full cache's: max and mean |difference| over the answer steps and the
    vocabulary; whether its greedy tokens are the full cache's, and if not, whether they first differ where
    the full cache's two best logits are within twice the floor of each other (a tie at this precision)."""

    worst: float
    mean: float
    same_tokens: bool
    at_a_tie: bool = False


def low_precision_errors(
    model, ids: torch.Tensor, methods: list[tuple[str, str]], new: int = 4, **press_options: Any
) -> tuple[float, dict[str, Comparison]]:
    """The floor (module docstring) and, for each `(method, gqa)` with budgets covering the prompt, how its
    logits compare with the full cache's on the same steps (teacher-forced on the full cache's answer when
    the greedy tokens differ)."""
    full = greedy(model, ids, new)
    reference = torch.stack(full.logits)[:, 0].float()
    answer = full.sequences[0, ids.shape[1] :].tolist()
    with attention_switched(model, EXACT_DECODE):
        floor = float((forced_logits(model, ids, answer) - reference).abs().max())
    results = {}
    for method, gqa in methods:
        with compressed(model, method, 20 * ids.shape[1], gqa=gqa, **press_options):
            run = greedy(model, ids, new)
            same = torch.equal(run.sequences, full.sequences)
            mine = torch.stack(run.logits)[:, 0].float() if same else forced_logits(model, ids, answer)
        tie = False
        if not same:
            step = int((run.sequences[0, ids.shape[1] :] != full.sequences[0, ids.shape[1] :]).nonzero()[0])
            best = reference[step].topk(2).values
            tie = float(best[0] - best[1]) <= 2 * floor
        diff = (mine - reference).abs()
        results[f"{method}-{gqa}"] = Comparison(float(diff.max()), float(diff.mean()), same, tie)
    return floor, results
