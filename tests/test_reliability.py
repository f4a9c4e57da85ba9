"""Split-half agreement and bootstrap intervals on small hand-made per-probe rows (pure arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headprof.errors import HeadprofError
from headprof.reliability import bootstrap_heads, needle_units, reliability_report, split_half


def _rows(n_needles: int, per_needle: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, list[str], list[str]]:
    """Probes of `n_needles` needles (half reasoning) whose rows are one shared head profile plus noise."""
    gen = torch.Generator().manual_seed(seed)
    profile = torch.linspace(0, 1, 12).view(3, 4)
    rows, kinds, groups = [], [], []
    for needle in range(n_needles):
        for _ in range(per_needle):
            rows.append(profile + noise * torch.randn(3, 4, generator=gen))
            kinds.append("reasoning" if needle % 2 else "retrieval")
            groups.append(f"n{needle}")
    return torch.stack(rows), kinds, groups


def test_needle_units_sum_counted_probes_per_needle_and_kind():
    rows = torch.arange(5 * 2 * 2, dtype=torch.float32).view(5, 2, 2)
    counted = torch.tensor([True, True, False, True, True])
    units = needle_units(rows, counted, ["reasoning"] * 3 + ["retrieval"] * 2, ["a", "a", "b", "r", "s"])
    # needle b has no counted probe: dropped; a's two polarities are one unit
    assert units.kinds == ["reasoning", "retrieval", "retrieval"]
    assert units.counts.tolist() == [2, 1, 1]
    torch.testing.assert_close(units.sums[0], (rows[0] + rows[1]).flatten().double())
    assert units.by_kind == {"reasoning": [0], "retrieval": [1, 2]}
    with pytest.raises(HeadprofError, match="disagree"):
        needle_units(rows, counted, ["retrieval"] * 4, ["a"] * 5)


def test_split_halves_are_needle_balanced_and_agree_when_the_needles_agree():
    rows, kinds, groups = _rows(9, 2, noise=0.0)
    units = needle_units(rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups)
    halves = split_half(units, n_splits=50, seed=1, k=3)
    assert len(halves.spearman) == 50 and halves.n_needles == {"reasoning": 4, "retrieval": 5}
    assert all(rho == pytest.approx(1.0) for rho in halves.spearman) and set(halves.overlap) == {1.0}
    summary = halves.summary()
    assert summary["splits"] == 50 and summary["spearman_p5"] == pytest.approx(1.0)


def test_split_half_spread_grows_with_needle_noise_and_is_seeded():
    def p5(noise: float) -> float:
        rows, kinds, groups = _rows(20, 1, noise=noise)
        units = needle_units(rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups)
        return split_half(units, n_splits=200, seed=0, k=3).summary()["spearman_p5"]

    assert p5(0.05) > p5(0.5) > p5(5.0)
    rows, kinds, groups = _rows(20, 1, noise=0.5)
    units = needle_units(rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups)
    assert split_half(units, 20, seed=3).spearman == split_half(units, 20, seed=3).spearman
    assert split_half(units, 20, seed=3).spearman != split_half(units, 20, seed=4).spearman


def test_every_split_halves_each_kind():
    """Two kinds with opposite head profiles: only a split that halves each kind gives two equal means."""
    profile = torch.linspace(0, 1, 12).view(3, 4)
    rows = torch.stack([profile] * 4 + [profile.flip(-1).flip(-2) * 3] * 4)
    kinds, groups = ["retrieval"] * 4 + ["reasoning"] * 4, [f"n{i}" for i in range(8)]
    units = needle_units(rows, torch.ones(8, dtype=torch.bool), kinds, groups)
    halves = split_half(units, n_splits=100, seed=0, k=3)
    assert halves.spearman == pytest.approx([1.0] * 100) and set(halves.overlap) == {1.0}
    # the same rows split without regard to kind disagree (check the construction can fail)
    lopsided = units.sums[[0, 1, 2, 4]].mean(0).numpy(), units.sums[[3, 5, 6, 7]].mean(0).numpy()
    rho = np.corrcoef(np.argsort(np.argsort(lopsided[0])), np.argsort(np.argsort(lopsided[1])))[0, 1]
    assert rho < 0.5


def test_split_half_needs_two_needles_per_kind():
    rows, kinds, groups = _rows(3, 1, noise=0.1)  # one reasoning needle
    units = needle_units(rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups)
    with pytest.raises(HeadprofError, match="at least two needles"):
        split_half(units)
    report = reliability_report(rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups, n_boot=20)
    assert report["split_half"] is None and "at least two needles" in report["reason"]
    # resampling one needle returns it every time: the interval would leave its kind's variance out
    assert report["top_heads"] == [] and "reasoning: one" in report["bootstrap_reason"]


def test_bootstrap_intervals_bracket_the_score_and_narrow_with_agreeing_needles():
    rows, kinds, groups = _rows(12, 1, noise=0.3)
    units = needle_units(rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups)
    best = int(torch.argmax(units.sums.sum(0)))
    wide = bootstrap_heads(units, [best, 0], n_heads=4, n_boot=400, seed=0, k=3)
    for interval in wide:
        assert interval.low <= interval.score <= interval.high
        assert interval.score == pytest.approx(float(rows.mean(0).flatten()[interval.layer * 4 + interval.head]))
    assert (wide[0].layer, wide[0].head) == divmod(best, 4)
    assert wide[0].top_share > 0.9 and wide[1].top_share == 0.0  # the profile's best head vs its worst
    calm_rows, _, _ = _rows(12, 1, noise=0.03)
    calm = bootstrap_heads(
        needle_units(calm_rows, torch.ones(len(kinds), dtype=torch.bool), kinds, groups), [best], 4, 400, 0, k=3
    )
    assert calm[0].high - calm[0].low < (wide[0].high - wide[0].low) / 5
    with pytest.raises(HeadprofError, match="level"):
        bootstrap_heads(units, [0], 4, n_boot=10, level=1.5)
