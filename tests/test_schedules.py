"""sslkit.schedules.cosine_schedule against its closed form: a linear warm-up 0 -> base over the
warm-up steps, then base + (final - base) (1 - cos(pi t / T)) / 2 for t = 0..T."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sslkit.errors import SSLKitError
from sslkit.schedules import cosine_schedule


@pytest.mark.parametrize("epochs,steps,warmup", [(10, 7, 2), (5, 3, 0), (4, 10, 1.5), (3, 1, 1)])
def test_cosine_schedule_closed_form(epochs, steps, warmup):
    base, final = 0.3, 0.01
    lr = cosine_schedule(base, final, epochs, steps, warmup)
    total, w = epochs * steps, int(round(warmup * steps))
    assert lr.shape == (total,)
    for i in range(total):
        if i < w:
            expected = base * i / w
        else:
            t, span = i - w, max(total - w - 1, 1)
            expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * t / span))
        assert lr[i] == pytest.approx(expected, abs=1e-12), i


def test_warmup_starts_at_zero_and_reaches_base():
    base = 0.5
    lr = cosine_schedule(base, 0.0, epochs=10, steps_per_epoch=4, warmup_epochs=2)
    assert lr[0] == 0.0
    ramp = lr[:8]
    assert np.all(np.diff(ramp) > 0)  # strictly increasing warm-up
    np.testing.assert_allclose(np.diff(ramp), base / 8)  # linear with slope base / steps
    assert lr[8] == pytest.approx(base)  # first cosine step == base
    assert lr.max() == pytest.approx(base)


def test_ends_at_final_and_never_increases_after_warmup():
    lr = cosine_schedule(1.0, 0.1, epochs=6, steps_per_epoch=5, warmup_epochs=1)
    assert lr[-1] == pytest.approx(0.1)
    assert np.all(np.diff(lr[5:]) <= 0)
    assert lr.min() == pytest.approx(0.0)  # the warm-up's first value
    assert lr[5:].min() == pytest.approx(0.1)


def test_no_warmup_starts_at_base_and_is_symmetric():
    lr = cosine_schedule(2.0, 0.0, epochs=1, steps_per_epoch=11, warmup_epochs=0)
    assert lr[0] == pytest.approx(2.0)
    assert lr[5] == pytest.approx(1.0)  # the cosine's midpoint is (base + final) / 2
    np.testing.assert_allclose(lr + lr[::-1], 2.0, atol=1e-12)  # point symmetry about the middle


def test_final_above_base_increases():
    # e.g. an EMA momentum schedule 0.996 -> 1
    m = cosine_schedule(0.996, 1.0, epochs=3, steps_per_epoch=4)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0)
    assert np.all(np.diff(m) >= 0)


def test_warmup_longer_than_the_run_is_all_ramp():
    lr = cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=3, warmup_epochs=5)
    assert lr.shape == (6,)
    np.testing.assert_allclose(lr, np.arange(6) / 6)


@pytest.mark.parametrize("args,expected", [
    ((0.1, 0.0, -3, 10), "epochs must be a whole number >= 1 (got -3)"),  # numpy's own error
    ((0.1, 0.0, 2.5, 10), "epochs must be a whole number >= 1 (got 2.5)"),
    ((0.1, 0.0, 3, 0), "steps_per_epoch must be a whole number >= 1"),  # an empty schedule
    ((math.nan, 0.0, 3, 10), "base must be a finite number (got nan)"),  # all NaN
    ((0.1, math.inf, 3, 10), "final must be a finite number"),
    ((0.1, 0.0, 3, 10, -1), "warmup_epochs must be >= 0"),
    (("0.1", 0.0, 3, 10), "base must be a finite number (got '0.1')"),
])
def test_settings_out_of_range_are_one_line_errors(args, expected):
    with pytest.raises(SSLKitError) as info:
        cosine_schedule(*args)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_numpy_counts_and_values_are_taken():
    expected = cosine_schedule(0.1, 0.0, 3, 4, 1)
    got = cosine_schedule(np.float32(0.1), np.float64(0.0), np.int64(3), np.int32(4), 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
