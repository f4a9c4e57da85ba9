"""Runs headprof's methods and the reference oracles on the same Q/K of one layer, for the fidelity tests and
`benchmarks/fidelity.py`: headprof through its public hooks (`plan_budgets`, `budgets_for`, `score`, `select`),
the oracle chosen by method and options (the reference's own rule by default, kvpress's for its options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from headprof.models.spec import ModelInfo
from headprof.runtime.budgets import plan_budgets
from headprof.runtime.methods import build_method

from oracles import adakv, headkv, kvpress
from oracles import kvcache_factory as kvcf

N_LAYERS = 30  # the embedded model's (SmolLM2-135M), whose Q/K the fixture holds: PyramidKV's schedule needs it


def _info(q: torch.Tensor, k: torch.Tensor, scores: Any) -> ModelInfo:
    """The model a score artifact was made for, else one shaped like the tensors."""
    return scores.model if scores is not None else ModelInfo("tensors", N_LAYERS, q.shape[1], k.shape[1], 64, 8192, "")


@dataclass(frozen=True)
class Case:
    """One comparison: a method at a budget and window, one layer, a GQA layout, the method's options.

    `scores`: the score artifact HeadKV's budgets come from (its model then gives the shape)."""

    name: str
    budget: int
    window: int
    layer: int = 0
    gqa: str = "kv"
    scores: Any = None
    options: dict[str, Any] = field(default_factory=dict)


def headprof_keep(case: Case, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """headprof's keep-mask `[B, S, T]` of the layer (queries `q` are the prompt's last ones)."""
    method = build_method(case.name, **case.options)
    info = _info(q, k, case.scores)
    plan = plan_budgets(method, info, case.budget, window=case.window, gqa=case.gqa, scores=case.scores)
    budgets = method.budgets_for(plan, k.shape[2])[case.layer]
    n_stored = budgets.numel()
    scores = method.score(q, k, q.shape[-1] ** -0.5, case.window, n_stored)
    selection = method.select(scores, budgets, case.window)
    keep = torch.zeros(q.shape[0] * n_stored, k.shape[2], dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(keep.shape[0]), selection.lengths)
    keep[rows, selection.positions] = True
    return keep.view(q.shape[0], n_stored, k.shape[2])


def oracle_keep(case: Case, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The reference's keep-mask for the same inputs (for HeadKV, the budgets come from headprof's allocation:
    the selection is what is compared)."""
    name, budget, window, layer, options = case.name, case.budget, case.window, case.layer, case.options
    per_kv = case.gqa == "kv"
    kernel, pooling = options.get("kernel", 7), options.get("pooling", "max")
    if options.get("gqa_order") == "pool-mean":
        if name == "snapkv":
            return kvpress.snapkv(q, k, budget, window, kernel, pooling)
        raise ValueError(f"no kvpress-order oracle for {name}")
    if name == "snapkv":
        return kvcf.snapkv(q, k, budget, window, kernel, pooling, per_kv)
    if name == "pyramidkv":
        return kvcf.pyramidkv(q, k, budget, window, N_LAYERS, layer, kernel, pooling, per_kv)
    if name == "h2o":
        return kvcf.h2o(q, k, budget, window, per_kv)
    if name == "streamingllm":
        heads = k.shape[1] if per_kv else q.shape[1]
        return kvcf.streamingllm(q.shape[0], heads, k.shape[2], budget, options.get("sinks", 4))
    if name == "adakv":
        alpha = options.get("floor", 0.2)
        if options.get("floor_rule") == "kvpress":
            if k.shape[2] < budget:
                return torch.ones(q.shape[0], k.shape[1] if per_kv else q.shape[1], k.shape[2], dtype=torch.bool)
            scores = kvcf.window_scores(q, k, window, kernel, pooling, per_kv, reduce="mean")
            return kvpress.adakv_safeguard(scores, budget, window, alpha)
        return adakv.adakv(q, k, budget, window, kernel, pooling, per_kv, alpha, options.get("normalize", False))
    if name == "headkv":
        method = build_method("headkv")
        plan = plan_budgets(method, case.scores.model, budget, window=window, gqa=case.gqa, scores=case.scores)
        return headkv.headkv(q, k, budget, plan.budgets[layer] - window, window, kernel, pooling, per_kv)
    raise ValueError(f"no oracle for {name}")


def jaccard_pair(case: Case, q: torch.Tensor, k: torch.Tensor) -> tuple[int, int]:
    """(|headprof & oracle|, |headprof | oracle|) of one layer's kept sets."""
    mine, theirs = headprof_keep(case, q, k), oracle_keep(case, q, k)
    return int((mine & theirs).sum()), int((mine | theirs).sum())


def kvzip_masks(model, tokenizer, ids: list[int], budget: int, method=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """KVzip on the model: headprof's kept context `[L, S, C]`, the authors' (their scoring run with
    transformers alone, their selection rule at the same count), and the prefix length.

    `method`: a KVzip method object (default options otherwise); its chunk size and selection are used.
    """
    from headprof.runtime import compressed
    from headprof.runtime.methods.kvzip import KVzip, chat_frame

    from oracles import kvzip

    method = method or KVzip()
    head, suffix = chat_frame(tokenizer)
    cache = compressed(model, method, budget, tokenizer=tokenizer).prefill(torch.tensor([ids]))
    mine = torch.zeros(len(cache.layers), cache.layers[0].n_stored, len(ids), dtype=torch.bool)
    for layer in range(len(cache.layers)):
        for head_index, positions in enumerate(cache.kept_positions(layer)):
            mine[layer, head_index, positions] = True
    reference = kvzip.reference_scores(
        model,
        ids,
        len(head),
        suffix,
        lambda text: tokenizer.encode(text, add_special_tokens=False),
        size=method.options.chunk_size,
    )
    free = min(budget, len(ids)) - len(head)  # per head: the budget counts the always-kept prefix
    if method.options.selection == "global":  # the authors keep int(n r) - 1 above a strict threshold
        expected = kvzip.threshold_keep(reference, (mine.shape[0] * mine.shape[1] * free + 1.5) / reference.numel())
    else:
        expected = kvzip.uniform_keep(reference, (free + 0.5) / reference.shape[-1])
    assert bool(mine[..., : len(head)].all()), "the template prefix must be kept"
    return mine[..., len(head) :], expected[:, 0], len(head)
