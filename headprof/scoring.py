"""Head scores from captured answer-step attention (METHOD.md §2).

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

import glob
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from headprof import __version__
from headprof.artifacts import METHODS, SCORES_FORMAT, ScoreArtifact, load_scores, polarity_counted, save_scores
from headprof.capture import AttentionCapture
from headprof.errors import HeadprofError, HeadprofWarning
from headprof.metrics import CRITERIA
from headprof.models import LoadedModel
from headprof.probes import SPANS, EncodedProbe, Probe, copy_keys, encode_probe, needle_key, probes_sha256

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
        with AttentionCapture.rows(n_target, recorder):
            if prefix is None:
                model(input_ids=inputs, use_cache=False, logits_to_keep=1)  # scores need attention, not logits
            else:
                try:
                    model(input_ids=inputs[:, prefix.length :], cache=prefix.cache, use_cache=True, logits_to_keep=1)
                finally:
                    prefix.cache.crop(prefix.length - prefix.cache.get_seq_length())  # back to the shared tokens
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


# ---------------------------------------------------------------- many probes, resumable


def needle_hashes(probes: Sequence[Probe]) -> list[str]:
    """Short hashes of the distinct needle texts, so evaluation can refuse probes that share a needle."""
    return sorted({needle_key(p) for p in probes})


def run_key(
    loaded: LoadedModel, probe_set_sha256: str, config: ScoreConfig, extra: dict[str, Any] | None = None
) -> str:
    """What must match for a checkpoint to be resumed: headprof version and format, weights, probes, every
    scoring parameter, and the run's extra metadata (its shard)."""
    blob = json.dumps(
        [__version__, SCORES_FORMAT, loaded.info.to_dict(), probe_set_sha256, asdict(config), extra or {}],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _artifact(
    loaded: LoadedModel,
    results: Sequence[ProbeResult],
    indices: Sequence[int],
    config: ScoreConfig,
    meta: dict[str, Any],
) -> ScoreArtifact:
    info = loaded.info
    empty = torch.zeros(0, info.n_layers, info.n_heads)
    per_probe = {m: torch.stack([r.scores[m] for r in results]) if results else empty for m in config.methods}
    right = torch.tensor([r.right for r in results], dtype=torch.bool)
    groups = [r.group for r in results]
    kinds = [r.kind for r in results]
    meta = {
        "mode": config.mode,
        "methods": list(config.methods),
        "gqa_reduce": "sum",
        "params": {"span": config.span, "criterion": config.criterion, "threshold": config.threshold},
        "answers": [r.answer for r in results],
        "probe_indices": list(indices),
        **meta,
    }
    ids = [r.probe_id for r in results]
    counted = polarity_counted(right, kinds, groups, [r.position for r in results])
    return ScoreArtifact(info, ids, kinds, counted, per_probe, meta, groups, right)


def _load_checkpoint(
    path: Path | None, key: str, probes: Sequence[Probe], config: ScoreConfig
) -> dict[str, ProbeResult]:
    """Results of a checkpoint of this very run; any other checkpoint is set aside with a notice, never merged.

    Besides the run key, every row is checked against the probe set (id, kind, position) and the
    scores asked for, so a checkpoint edited, copied from another run or torn is not trusted.
    """
    if path is None or not path.is_file():
        return {}
    try:
        art = load_scores(path)
    except HeadprofError as exc:
        warnings.warn(f"ignoring the unreadable checkpoint {path}: {exc}", HeadprofWarning, stacklevel=2)
        return {}
    index = {p.id: (i, p.kind) for i, p in enumerate(probes)}
    rows = zip(art.probe_ids, art.probe_kinds, art.meta.get("probe_indices") or [None] * len(art.probe_ids))
    if (
        art.meta.get("run_key") != key
        or art.meta.get("version") != __version__
        or set(art.per_probe) != set(config.methods)
        or any(index.get(pid) != (pos, kind) for pid, kind, pos in rows)
        or "answers" not in art.meta
    ):
        warnings.warn(
            f"checkpoint {path} is from another run (version, model, probes or parameters differ): starting over",
            HeadprofWarning,
            stacklevel=2,
        )
        return {}
    return {
        pid: ProbeResult(
            pid,
            kind,
            bool(art.right[i]),
            {m: t[i] for m, t in art.per_probe.items()},
            art.meta["answers"][i],
            art.groups[i],
            art.positions[i],
        )
        for i, (pid, kind) in enumerate(zip(art.probe_ids, art.probe_kinds))
    }


def score_probes(
    loaded: LoadedModel,
    probes: Sequence[Probe],
    config: ScoreConfig = ScoreConfig(),
    *,
    select: Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
    on_probe: Callable[[ProbeResult], None] | None = None,
    extra_meta: dict[str, Any] | None = None,
    share_prefixes: bool = True,
    checkpoint_every: float = 30.0,
) -> ScoreArtifact:
    """Score the probes (or the `select`ed indices), resuming from and updating `checkpoint`.

    The checkpoint is rewritten at most every `checkpoint_every` seconds (it holds every result so far, so
    rewriting it after each probe costs time quadratic in the probe count), and always when the run stops
    early (Ctrl-C, an error): only a hard kill loses work, at most `checkpoint_every` seconds of it.

    The returned artifact lists probes in probe-set order whatever the resume history, so an
    interrupted and resumed run equals an uninterrupted one. `share_prefixes` (teacher mode): probes of
    one length and depth share the haystack before their needles (`probes.build_probes` builds them so),
    so their common first tokens run once per group (`SharedPrefix`) and each probe runs only the rest;
    the scores equal the per-probe path's (tests/test_scoring.py). Probes are then scored group by group,
    one group's prefix held at a time.
    """
    config.validate()
    indices = list(range(len(probes))) if select is None else sorted(select)
    probe_sha = probes_sha256(probes)
    meta = dict(
        extra_meta or {},
        run_key=run_key(loaded, probe_sha, config, extra_meta),
        probe_set_sha256=probe_sha,
        probe_set_size=len(probes),
        needle_sha256=needle_hashes(probes),
    )
    ckpt = Path(checkpoint) if checkpoint else None
    done = _load_checkpoint(ckpt, meta["run_key"], probes, config)
    # Check every probe of the set, not only ours: under torchrun all ranks must fail alike, not hang.
    encoded = {i: encode_probe(loaded.tokenizer, probe) for i, probe in enumerate(probes)}
    limit = loaded.info.max_context
    for i, enc in encoded.items():
        if limit and len(enc.prompt_ids) + len(enc.target_ids) > limit:
            raise HeadprofError(
                f"probe {probes[i].id} needs {len(enc.prompt_ids) + len(enc.target_ids)} tokens, "
                f"beyond the model's {limit}-token window"
            )
    results: dict[int, ProbeResult] = {}
    # Groups and their prefix lengths come from the whole probe set, so a shard, a rank or a resumed run
    # splits every probe where the full run does: the same arithmetic, bit-identical artifacts.
    prefixes = _prefix_lengths(probes, encoded, list(encoded)) if share_prefixes and config.mode == "teacher" else {}
    order = sorted(indices, key=lambda i: (prefixes.get(i, (None, 0))[0] or "", i))
    held: tuple[str, SharedPrefix] | None = None
    unsaved, saved_at = False, time.monotonic()

    def save_checkpoint() -> None:
        done_idx = sorted(results)
        save_scores(
            ckpt, _artifact(loaded, [results[j] for j in done_idx], done_idx, config, dict(meta, complete=False))
        )

    try:
        with AttentionCapture(loaded.model):
            for i in order:
                prefix = None
                if i in prefixes and probes[i].id not in done:
                    group, length = prefixes[i]
                    if held is None or held[0] != group:
                        held = None  # free the previous group's cache first
                        held = (group, shared_prefix(loaded, encoded[i].prompt_ids[:length]))
                    prefix = held[1]
                result = done.get(probes[i].id) or score_probe(loaded, encoded[i], config, prefix)
                results[i] = result
                if ckpt is not None and probes[i].id not in done:
                    unsaved = True
                    if time.monotonic() - saved_at >= checkpoint_every:
                        save_checkpoint()
                        unsaved, saved_at = False, time.monotonic()
                if on_probe:
                    on_probe(result)
    except BaseException:
        if unsaved:
            save_checkpoint()
        raise
    return _artifact(loaded, [results[i] for i in indices], indices, config, meta)


def _prefix_lengths(
    probes: Sequence[Probe], encoded: dict[int, EncodedProbe], members: Sequence[int], minimum: int = 32
) -> dict[int, tuple[str, int]]:
    """Probe index -> (group, tokens its group shares): the longest common token prefix of the probes of one
    length and depth among `members`, at least `minimum` tokens, leaving each probe at least one prompt token."""
    groups: dict[str, list[int]] = {}
    for i in members:
        groups.setdefault(f"{probes[i].length}@{probes[i].depth:g}", []).append(i)
    out: dict[int, tuple[str, int]] = {}
    for group, group_members in groups.items():
        if len(group_members) < 2:
            continue
        prompts = [encoded[i].prompt_ids for i in group_members]
        length = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for other in prompts[1:]:
            length = next((j for j in range(length) if other[j] != first[j]), length)
        if length >= minimum:
            out.update({i: (group, length) for i in group_members})
    return out


def remove_checkpoints(target: Path) -> None:
    """Delete the resumable checkpoints of every rank once the artifact is written."""
    for partial in target.parent.glob(glob.escape(target.name) + ".partial*"):  # `[` in a name is not a pattern
        partial.unlink(missing_ok=True)
