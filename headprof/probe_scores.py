"""One probe's head scores from captured answer-step attention (METHOD.md §2).

For every probe the model reads `prompt + answer`. At answer step t (token y_t being produced) each
head has an attention row a_t over the visible positions, and the scoring span is a token range of
the needle: by default each score's reference span (`reference`: retrieval on the answer inside the
answer sentence, the Retrieval-head code's `real_needle`; r2 on the whole answer sentence, HeadKV's
`real_needle`), or `answer` / `sentence` for both:
- retrieval (Wu et al.): the head copies if argmax a_t lies in the span on the token being produced
  (compared without a leading space marker, `probes.copy_keys`); probe score = copies / |span|.
- r2 (HeadKV): with k = |span|, add a_t[j] / |span| for every top-k position j inside the span,
  summed over the answer steps.
A head's score is the mean over counted probes. Both scores come from the same captured rows, so
asking for both costs no extra forward pass.

Modes: `teacher` feeds the probe's target (the answer sentence, tokenized as it follows the prompt)
after the prompt in one forward pass, and every probe counts. `generate` is HeadKV's R2 detection:
greedy decoding capped at the target's token count, rows of the model's own answer steps (an EOS step
is not an answer step), and a probe counts when the answer is right (token F1 > 0.5 against the target
sentence by default) and, for a reasoning needle, when the same needle asked the other way round
(older/younger, ...) at the same length and depth is answered right too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from headprof.artifacts import METHODS
from headprof.capture import AttentionCapture
from headprof.errors import HeadprofError
from headprof.metrics import CRITERIA
from headprof.models import LoadedModel
from headprof.probes import SPANS, EncodedProbe, copy_keys, needle_key

MODES = ("teacher", "generate")
# The scoring span of each score under `span="reference"`: the span its reference code scores.
# Retrieval_Head (retrieval_head_detection.py, nightdessert/Retrieval_Head@3ac171a): `real_needle`, the answer
# part of the needle; HeadKV R2 (retrieval_head_detection_r2.py, FYYFU/HeadKV@0862a09): `real_needle`, the whole
# answer sentence.
REFERENCE_SPANS = {"retrieval": "answer", "r2": "sentence"}
SPAN_CHOICES = ("reference", *SPANS)


@dataclass(frozen=True)
class ScoreConfig:
    """What to score and how answers are produced and counted (mode, scoring span, criterion, threshold)."""

    methods: tuple[str, ...] = METHODS
    mode: str = "teacher"
    span: str = "reference"
    criterion: str = "answer"
    threshold: float = 0.5

    def span_of(self, method: str) -> str:
        """The needle span (`answer` or `sentence`) that `method` is scored on."""
        return REFERENCE_SPANS[method] if self.span == "reference" else self.span

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise HeadprofError(f"unknown scoring method {', '.join(unknown) or '(none)'} (retrieval, r2, both)")
        if self.mode not in MODES:
            raise HeadprofError(f"unknown mode '{self.mode}' ({', '.join(MODES)})")
        if self.span not in SPAN_CHOICES:
            raise HeadprofError(f"unknown scoring span '{self.span}' ({', '.join(SPAN_CHOICES)})")
        if self.criterion not in CRITERIA:
            raise HeadprofError(f"unknown correctness criterion '{self.criterion}' ({', '.join(CRITERIA)})")


@dataclass
class ProbeResult:
    """One probe's head scores on the answer it was measured on, and whether that answer is right."""

    probe_id: str
    kind: str
    right: bool
    scores: dict[str, torch.Tensor]
    answer: str
    group: str
    position: str


# ---------------------------------------------------------------- the math


def step_stats(rows: torch.Tensor, span: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head and answer step: argmax position, and the r2 mass (top-|span| positions inside the span) / |span|.

    rows `[H, n, T]` attention probabilities; returns (`[H, n]` long, `[H, n]` float).
    """
    start, end = span
    k = min(end - start, rows.shape[-1])
    values, index = rows.topk(k, dim=-1)
    inside = (index >= start) & (index < end)
    mass = (values * inside).sum(-1) / (end - start)
    return index[..., 0], mass


def retrieval_scores(
    argmax: torch.Tensor, answer_keys: torch.Tensor, context_keys: torch.Tensor, span: tuple[int, int]
) -> torch.Tensor:
    """Copy score per head: steps whose argmax lies in the span on the token being produced, / |span|.

    argmax `[..., n]` positions; answer_keys `[n]` the tokens y_t and context_keys the tokens at the positions
    argmax indexes, both as comparable ids (`probes.copy_keys` mapped to integers).
    """
    start, end = span
    in_span = (argmax >= start) & (argmax < end)
    copied = context_keys[argmax.clamp(max=context_keys.numel() - 1)] == answer_keys
    return (in_span & copied).sum(-1).float() / (end - start)


def r2_scores(mass: torch.Tensor) -> torch.Tensor:
    """HeadKV retrieval-reasoning score per head: the per-step masses summed over answer steps."""
    return mass.sum(-1)


class _Recorder:
    """Collects per-layer step statistics as attention rows arrive (one call per layer per forward): the argmax
    position, and the r2 mass on `span` (the r2 score's span)."""

    def __init__(self, n_layers: int, n_heads: int, n_steps: int, span: tuple[int, int]):
        self.span = span
        self.argmax = torch.zeros(n_layers, n_heads, n_steps, dtype=torch.long)
        self.mass = torch.zeros(n_layers, n_heads, n_steps)
        self.filled = [0] * n_layers

    def __call__(self, layer: int, rows: torch.Tensor) -> None:
        argmax, mass = step_stats(rows[0], self.span)
        start = self.filled[layer]
        stop = min(start + argmax.shape[-1], self.argmax.shape[-1])
        self.argmax[layer, :, start:stop] = argmax[:, : stop - start].cpu()
        self.mass[layer, :, start:stop] = mass[:, : stop - start].cpu()
        self.filled[layer] = stop

    def check_every_layer(self, model_id: str) -> None:
        """Refuse scores with a hole: a family whose switch to headprof's attention took effect may still run
        some layers' attention outside the registry, and their heads would score 0 as if they had been tried."""
        missing = [layer for layer, filled in enumerate(self.filled) if filled == 0]
        if missing:
            raise HeadprofError(
                f"model '{model_id}': the attention of layers {missing[:8]} never reached headprof's attention "
                "function (it bypasses transformers' attention-function registry); its heads cannot be scored"
            )


# ---------------------------------------------------------------- one probe


def _probe_scores(
    recorder: _Recorder, enc: EncodedProbe, answer_keys: list[str], config: ScoreConfig
) -> dict[str, torch.Tensor]:
    n, prompt_keys, methods = len(answer_keys), enc.prompt_keys, config.methods
    out: dict[str, torch.Tensor] = {}
    if "retrieval" in methods:
        table = {key: i for i, key in enumerate(dict.fromkeys(prompt_keys + answer_keys))}
        out["retrieval"] = retrieval_scores(
            recorder.argmax[..., :n],
            torch.tensor([table[k] for k in answer_keys]),
            torch.tensor([table[k] for k in prompt_keys + answer_keys]),
            enc.span(config.span_of("retrieval")),
        )
    if "r2" in methods:
        out["r2"] = r2_scores(recorder.mass[..., :n])
    return out


# Tokens of a probe's suffix (after its shared prefix) run per forward; the packaged reference's 1024-token probes
# never reach it, so their scores are those of one forward.
SUFFIX_CHUNK = 2048


@dataclass
class SharedPrefix:
    """The KV cache of the first `length` prompt tokens that several probes share (the haystack before the
    needle, for probes of one length and depth), computed once; each probe extends it, then crops it back."""

    length: int
    cache: DynamicCache


@torch.no_grad()
def shared_prefix(loaded: LoadedModel, ids: Sequence[int]) -> SharedPrefix:
    """Run `ids` once and keep their KV (a cache that keeps every position, so sliding-window layers' rows
    still index the whole prompt). Inside an `AttentionCapture` block nothing is captured: no rows are asked."""
    cache = DynamicCache()
    loaded.model(
        input_ids=torch.tensor([list(ids)], device=loaded.device), cache=cache, use_cache=True, logits_to_keep=1
    )
    return SharedPrefix(len(ids), cache)


@torch.no_grad()
def score_probe(
    loaded: LoadedModel, enc: EncodedProbe, config: ScoreConfig, prefix: SharedPrefix | None = None
) -> ProbeResult:
    """Score one probe; the model must be inside an `AttentionCapture` block. With `prefix` (teacher mode;
    its tokens must start the prompt), only the tokens after it run: the captured rows are the same."""
    info, model, device, tokenizer = loaded.info, loaded.model, loaded.device, loaded.tokenizer
    probe, n_target = enc.probe, len(enc.target_ids)
    recorder = _Recorder(info.n_layers, info.n_heads, n_target, enc.span(config.span_of("r2")))
    if config.mode == "teacher":
        answer_ids = enc.target_ids
        inputs = torch.tensor([enc.prompt_ids + answer_ids[:-1]], device=device)
        if prefix is None:
            with AttentionCapture.rows(n_target, recorder):
                model(input_ids=inputs, use_cache=False, logits_to_keep=1)  # scores need attention, not logits
        else:
            _run_suffix(model, prefix, inputs[:, prefix.length :], n_target, recorder)
        answer_keys, right = enc.target_keys, True
        answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
    else:
        inputs = torch.tensor([enc.prompt_ids], device=device)
        with AttentionCapture.rows(1, recorder):
            # HeadKV's decode stops when the output has as many tokens as the target
            # (retrieval_head_detection_r2.py `decode`, FYYFU/HeadKV@0862a09)
            generated = model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                # a cache that keeps every position, so that a sliding-window layer's rows index the whole
                # sequence (its window reaches the capture as the mask)
                cache=DynamicCache(),
                do_sample=False,
                max_new_tokens=n_target,
                pad_token_id=_eos_ids(loaded)[0],
                temperature=None,
                top_p=None,
                top_k=None,
            )
        answer_ids = _strip_eos(generated[0, inputs.shape[1] :].tolist(), _eos_ids(loaded))
        answer_keys = copy_keys(tokenizer, answer_ids)
        criterion = CRITERIA[config.criterion]
        reference = probe.target.strip() if criterion.reference == "sentence" else probe.answer
        answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
        right = bool(answer_ids) and criterion.metric(answer, reference) > config.threshold
    recorder.check_every_layer(info.model_id)
    if answer_ids:
        scores = _probe_scores(recorder, enc, answer_keys, config)
    else:  # the model ended its answer at once: no answer step to score
        scores = {m: torch.zeros(info.n_layers, info.n_heads) for m in config.methods}
    return ProbeResult(probe.id, probe.kind, right, scores, answer, needle_key(probe), probe.position)


def _run_suffix(
    model: torch.nn.Module, prefix: SharedPrefix, suffix: torch.Tensor, n_rows: int, recorder: _Recorder
) -> None:
    """A probe's tokens after its shared prefix, on top of the prefix's cache, at most `SUFFIX_CHUNK` tokens per
    forward. A cached forward of n tokens over T keys makes transformers build an explicit `[n, T]` mask (at
    n = T = 32k about 1 GB, and SDPA cannot take its flash kernel with one): chunks bound it to
    `[SUFFIX_CHUNK, T]`, so scoring memory stays linear in T. Only the last piece (at least the `n_rows` rows
    captured) runs under the capture; the cache is cut back to the shared tokens after, whatever happens."""
    last = max(suffix.shape[1] - max(SUFFIX_CHUNK, n_rows), 0)  # where the captured last piece starts
    try:
        for start in range(0, last, SUFFIX_CHUNK):
            piece = suffix[:, start : min(start + SUFFIX_CHUNK, last)]
            model(input_ids=piece, cache=prefix.cache, use_cache=True, logits_to_keep=1)
        with AttentionCapture.rows(n_rows, recorder):
            model(input_ids=suffix[:, last:], cache=prefix.cache, use_cache=True, logits_to_keep=1)
    finally:
        prefix.cache.crop(prefix.length - prefix.cache.get_seq_length())


def _eos_ids(loaded: LoadedModel) -> list[int]:
    ids = loaded.model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    extra = loaded.tokenizer.eos_token_id
    return [i for i in ids if i is not None] + ([extra] if extra is not None and extra not in ids else [])


def _strip_eos(ids: list[int], eos: list[int]) -> list[int]:
    """The answer without its end: the step that produced EOS is not an answer step."""
    for pos, tok in enumerate(ids):
        if tok in eos:
            return ids[:pos]
    return ids
