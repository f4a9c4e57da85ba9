"""Figure helpers: the Wilson interval on known values, byte tick labels, fixed method styles, and both
accuracy figures drawn from small hand-made data."""

from __future__ import annotations

import math

import pytest
import torch

from headprof import plots
from headprof.evaluation import accuracy_points
from headprof.intervals import bootstrap_interval, wilson_interval
from headprof.runtime import METHODS


def test_bootstrap_interval_of_a_mean():
    # constant scores: no spread; the same values and seed: the same interval
    assert bootstrap_interval([0.5] * 7) == (0.5, 0.5)
    values = [1.0] * 12 + [0.0] * 4 + [0.5] * 4  # mean 0.7, sd of the mean about 0.09
    low, high = bootstrap_interval(values)
    assert (low, high) == bootstrap_interval(values) and low < 0.7 < high
    assert 0.45 < low < 0.6 and 0.8 < high < 0.9  # about mean -/+ 1.96 standard errors
    assert bootstrap_interval(values * 4)[1] - bootstrap_interval(values * 4)[0] < (high - low) * 0.7
    assert bootstrap_interval([]) == (0.0, 1.0)


def test_wilson_interval_known_values():
    # 5/10: the textbook example, (0.2366, 0.7634), symmetric around 0.5.
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.236593, abs=1e-6) and high == pytest.approx(0.763407, abs=1e-6)
    # 0/n and n/n have the closed form z^2 / (n + z^2) for the far end, and stay inside [0, 1].
    z2 = 1.959964**2
    assert wilson_interval(0, 32) == (0.0, pytest.approx(z2 / (32 + z2)))
    assert wilson_interval(32, 32) == (pytest.approx(32 / (32 + z2)), 1.0)
    # 20/32: centre (p + z^2/2n) / (1 + z^2/n), pulled towards 1/2 from 0.625.
    low, high = wilson_interval(20, 32)
    assert (low + high) / 2 == pytest.approx((0.625 + z2 / 64) / (1 + z2 / 32)) and low < 0.625 < high
    assert high - low == pytest.approx(2 * 1.959964 / (1 + z2 / 32) * math.sqrt(0.625 * 0.375 / 32 + z2 / 4096))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_accuracy_points_carry_budget_and_interval():
    rows = [
        {"method": "full", "budget": None, "accuracy": 0.5, "kv_bytes": 4096, "n": 10},
        {"method": "snapkv", "budget": 64, "accuracy": 0.0, "kv_bytes": 1024, "n": 10},
    ]
    points = accuracy_points(rows)
    assert points["full"][0].interval == pytest.approx(wilson_interval(5, 10))
    snap = points["snapkv"][0]
    assert (snap.kv_bytes, snap.accuracy, snap.budget) == (1024, 0.0, 64) and snap.interval[0] == 0.0


def test_byte_ticks_and_method_styles():
    assert [plots.format_bytes(v) for v in (512, 2048, 4 * 2**20, 1.5 * 2**30, 65.98 * 2**20)] == [
        "512 B",
        "2 KiB",
        "4 MiB",
        "1.5 GiB",
        "66 MiB",
    ]
    styles = [plots.method_style(m) for m in METHODS]
    assert len({colour for colour, _ in styles}) == len({marker for _, marker in styles}) == len(METHODS)
    assert plots.method_style("not-a-method") == ("#7F7F7F", "h")


def test_figures_draw_from_small_data(tmp_path):
    point = plots.AccuracyPoint
    curves = {
        "snapkv": [point(2**20, 0.25, 64, (0.1, 0.5)), point(2**21, 0.5, 128, (0.3, 0.7))],
        "headkv": [point(2**20, 0.25, 64, (0.1, 0.5))],  # same spot, same budget: one label
        "mystery": [point(3 * 2**20, 0.75, 256)],
    }
    plots.accuracy_vs_bytes(curves, point(2**23, 0.8, None, (0.6, 0.9)), tmp_path / "acc.png", "t", "bars: test")
    grids = {"full": torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "snapkv B=64": torch.zeros(2, 2)}
    plots.needle_grids(grids, [1024, 2048], [25.0, 75.0], tmp_path / "needles.png", "t")
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("acc.png", "needles.png"))
