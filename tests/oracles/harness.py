"""Runs headprof's methods and the reference oracles on the same Q/K of one layer, for the fidelity tests and
`benchmarks/fidelity.py`: headprof through its public hooks (`plan_budgets`, `budgets_for`, `score`, `select`),
the oracle chosen by method and options (the reference's own rule by default, kvpress's for its options).

Nothing on the oracle side comes from headprof: HeadKV's budgets follow the reference's own rule
(`oracles.headkv.capacities`) from the same head scores, KVzip's prefix and opener are the caller's text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from headprof.artifacts import ScoreArtifact
from headprof.models.spec import ModelInfo
from headprof.runtime.budgets import plan_budgets
from headprof.runtime.methods import build_method

from oracles import adakv, headkv, kvpress
from oracles import kvcache_factory as kvcf

N_LAYERS = 30  # the embedded model's (SmolLM2-135M), whose Q/K the fixture holds: PyramidKV's schedule needs it
HEADKV_BETA = 1.2  # the beta both sides are given (headprof's default; the references take it as an argument)


def _info(q: torch.Tensor, k: torch.Tensor, scores: Any) -> ModelInfo:
    """The model a score artifact was made for, else one shaped like the tensors."""
    if scores is not None:
        return scores.model
    return ModelInfo("tensors", N_LAYERS, q.shape[1], k.shape[1], q.shape[-1], 8192, "")


def score_artifact(head_scores: torch.Tensor, n_kv_heads: int, head_dim: int) -> ScoreArtifact:
    """A one-probe score artifact holding `head_scores` `[L, Hq]` as its r2 scores (HeadKV on random tensors)."""
    n_layers, n_heads = head_scores.shape
    info = ModelInfo("tensors", n_layers, n_heads, n_kv_heads, head_dim, 8192, "")
    return ScoreArtifact(
        info, ["random@1@1"], ["retrieval"], torch.ones(1, dtype=torch.bool), {"r2": head_scores[None]}
    )


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
    rounding: str = "round"  # HeadKV's budgets on headprof's side: the reference's rounding (the default is exact)


def headprof_keep(case: Case, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """headprof's keep-mask `[B, S, T]` of the layer (queries `q` are the prompt's last ones)."""
    method = build_method(case.name, **case.options)
    info = _info(q, k, case.scores)
    plan = plan_budgets(
        method,
        info,
        case.budget,
        window=case.window,
        gqa=case.gqa,
        scores=case.scores,
        beta=HEADKV_BETA if case.name == "headkv" else None,
        rounding=case.rounding,
    )
    budgets = method.budgets_for(plan, k.shape[2])[case.layer]
    n_stored = budgets.numel()
    scores = method.score(q, k, q.shape[-1] ** -0.5, case.window, n_stored)
    selection = method.select(scores, budgets, case.window)
    keep = torch.zeros(q.shape[0] * n_stored, k.shape[2], dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(keep.shape[0]), selection.lengths)
    keep[rows, selection.positions] = True
    return keep.view(q.shape[0], n_stored, k.shape[2])


def oracle_keep(case: Case, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The reference's keep-mask for the same inputs (HeadKV's budgets by the reference's rule from the same head
    scores; in the KV-head layout from the group's summed scores, headprof's layout of METHOD.md §3)."""
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
        head_scores = case.scores.per_probe["r2"][case.scores.counted].mean(dim=0)  # [L, Hq], the input
        if per_kv:
            head_scores = head_scores.view(head_scores.shape[0], k.shape[1], -1).sum(dim=-1)
        caps = headkv.capacities(head_scores, budget, window, HEADKV_BETA)
        return headkv.headkv(q, k, budget, caps[layer], window, kernel, pooling, per_kv)
    raise ValueError(f"no oracle for {name}")


def jaccard_pair(case: Case, q: torch.Tensor, k: torch.Tensor) -> tuple[int, int]:
    """(|headprof & oracle|, |headprof | oracle|) of one layer's kept sets."""
    mine, theirs = headprof_keep(case, q, k), oracle_keep(case, q, k)
    return int((mine & theirs).sum()), int((mine | theirs).sum())


def kvzip_masks(
    model,
    tokenizer,
    ids: list[int],
    budget: int,
    method,
    prefix_text: str,
    opener_text: str,
    reference: str = "threshold",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """KVzip on the model: headprof's kept context `[L, S, C]`, the authors' (their scoring run with
    transformers alone, their selection rule at the same count), and the prefix length.

    `method`: a KVzip method object (its chunk size and selection are used); `prefix_text` and `opener_text`:
    the template prefix `ids` start with and the assistant-turn opener, as the caller reads them from the
    authors' template (never from headprof); `reference`: the global rule compared with, the authors'
    `threshold` or an exact `topk` (the option's).
    """
    from headprof.runtime import compressed

    from oracles import kvzip

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    prefix = len(encode(prefix_text))
    assert ids[:prefix] == encode(prefix_text), "the prompt must start with the template prefix"
    cache = compressed(model, method, budget, tokenizer=tokenizer).prefill(torch.tensor([ids]))
    mine = torch.zeros(len(cache.layers), cache.layers[0].n_stored, len(ids), dtype=torch.bool)
    for layer in range(len(cache.layers)):
        for head_index, positions in enumerate(cache.kept_positions(layer)):
            mine[layer, head_index, positions] = True
    options = method.options
    scores = kvzip.reference_scores(model, ids, prefix, encode(opener_text), encode, size=options.chunk_size)
    free = min(budget, len(ids)) - prefix  # per head: the budget counts the always-kept prefix
    if options.selection == "global" and reference == "threshold":  # int(n r) - 1 above a strict threshold
        expected = kvzip.threshold_keep(scores, (mine.shape[0] * mine.shape[1] * free + 1.5) / scores.numel())
    elif options.selection == "global":  # exactly n: the best n, ties aside
        expected = kvzip.top_keep(scores, mine.shape[0] * mine.shape[1] * free)
    else:
        expected = kvzip.uniform_keep(scores, (free + 0.5) / scores.shape[-1])
    assert bool(mine[..., :prefix].all()), "the template prefix must be kept"
    return mine[..., prefix:], expected[:, 0], prefix


# ---------------------------------------------------------------- the shapes users run


def random_qk(seed: int, dtype: torch.dtype, dim: int = 128, total: int = 700, n_heads: int = 8, n_kv: int = 2):
    """Queries `[1, Hq, T, d]` and keys `[1, Hkv, T, d]` drawn in float32 and cast to `dtype` (Llama-3-8B's head
    dim and GQA group of 4 by default), with random head scores `[L, Hq]` for HeadKV's budgets."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, n_heads, total, dim, generator=generator)
    k = torch.randn(1, n_kv, total, dim, generator=generator)
    head_scores = torch.rand(N_LAYERS, n_heads, generator=generator) ** 3
    return q.to(dtype), k.to(dtype), score_artifact(head_scores, n_kv, dim)


def random_jaccard(
    name: str,
    dtype: torch.dtype,
    seed: int,
    gqa: str = "kv",
    budget: int = 128,
    window: int = 8,
    rounding: str = "round",
    **options: Any,
) -> float:
    """Jaccard of headprof's and the reference's kept sets on `random_qk(seed, dtype)` (one layer, chosen by
    the seed; H2O reads every query, the others the last `window`)."""
    q, k, scores = random_qk(seed, dtype)
    if name != "h2o":
        q = q[:, :, -window:]
    case = Case(name, budget, window, seed % N_LAYERS, gqa, scores, options, rounding)
    both, either = jaccard_pair(case, q, k)
    return both / either


def kvzip_random(
    dtype: torch.dtype, seed: int, reference: str = "threshold", budget: int = 128, dim: int = 128, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """KVzip's scoring and global selection on random tensors: 4 layers of one reconstruction pass over a
    context of 400 positions after an 8-token prefix (its `n` queries over the prefill keys and its own).

    Returns headprof's kept context `[L, Hkv, C]` (KVzip with `options`) and the reference's: the authors'
    `threshold` rule or an exact `topk` (the option's) over the authors' scores."""
    from headprof.runtime.methods.kvzip import KVzip, KVzipOptions, ReconstructionPass

    from oracles import kvzip

    generator = torch.Generator().manual_seed(seed)
    prefix, context, n, n_heads, n_kv, n_layers = 8, 400, 430, 8, 2, 4
    total = prefix + context
    method = KVzip(KVzipOptions(**options))
    extra = ReconstructionPass(torch.zeros(1, n, dtype=torch.long), prefix, total, prefix)
    mine, theirs = [], []
    for _ in range(n_layers):
        q = torch.randn(1, n_heads, n, dim, generator=generator).to(dtype)
        k = torch.randn(1, n_kv, total + n, dim, generator=generator).to(dtype)
        scores = torch.full((1, n_kv, total), float("inf"), dtype=dtype)
        scores[..., prefix:] = method.score_pass(extra, q, k, dim**-0.5, n_kv)
        mine.append(scores)
        theirs.append(kvzip.score(q, k, prefix, prefix, total))
    selections = method.select_layers(mine, torch.full((n_layers, n_kv), budget), 8)
    keep = torch.zeros(n_layers, n_kv, total, dtype=torch.bool)
    for layer, selection in enumerate(selections):
        rows = torch.repeat_interleave(torch.arange(n_kv), selection.lengths)
        keep[layer, rows, selection.positions] = True
    scores_ref = torch.stack(theirs)  # [L, B, Hkv, C]
    free = n_layers * n_kv * (budget - prefix)
    if reference == "threshold":
        expected = kvzip.threshold_keep(scores_ref, (free + 1.5) / scores_ref.numel())
    else:
        expected = kvzip.top_keep(scores_ref, free)
    return keep[..., prefix:], expected[:, 0]
