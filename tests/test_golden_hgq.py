"""HGQ quantizer, conventional groups and number formats of the golden model."""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from golden.formats import FP16, FP32, INT4, round_half_even_saturate, signed_width
from golden.hgq import HGQConfig, HGQTensor, quantize_hgq, quantize_per_tensor, search_hgq


def test_int4_range():
    assert (INT4.min, INT4.max) == (-8, 7)
    assert (INT4.product_min, INT4.product_max) == (-56, 64)


def test_float_formats():
    assert (FP16.width, FP16.bias, FP16.max_finite, FP16.min_subnormal) == (16, 15, 65504.0, 2.0 ** -24)
    assert (FP32.width, FP32.bias, FP32.significand_bits, FP32.min_normal) == (32, 127, 24, 2.0 ** -126)
    bits = np.array([0x0001, 0x3C00, 0x7BFF, 0x8000])
    assert np.array_equal(FP16.to_bits(FP16.from_bits(bits)), bits)


def test_round_half_even_ties():
    values = np.array([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 2.5, 6.5, 7.5, 100.0])
    assert round_half_even_saturate(values).tolist() == [-8, -8, -2, 0, 0, 2, 2, 6, 7, 7]


def test_signed_width():
    assert signed_width(-8, 7) == 4
    assert signed_width(-8, 8) == 5
    assert signed_width(-1025, 0) == 12


def test_config_defaults():
    cfg = HGQConfig()
    assert (cfg.coarse_group, cfg.fine_group, cfg.shift_bits, cfg.max_shift, cfg.fine_per_coarse) == (128, 16, 2, 3, 8)
    assert HGQConfig.conventional(16) == HGQConfig(16, 16, 0)
    assert HGQConfig.conventional(16).is_conventional


@pytest.mark.parametrize("kwargs, message", [
    ({"coarse_group": 100, "fine_group": 16},
     "coarse_group must be a multiple of fine_group (16), not 100"),
    ({"fine_group": 0}, "fine_group must be a positive integer, not 0"),
    ({"coarse_group": -128}, "coarse_group must be a positive integer, not -128"),
    ({"shift_bits": 5}, "shift_bits must be an integer from 0 to 4, not 5"),
    ({"shift_bits": -1}, "shift_bits must be an integer from 0 to 4, not -1"),
    ({"fine_group": 16.0}, "fine_group must be a positive integer, not 16.0"),
])
def test_config_invalid(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        HGQConfig(**kwargs)


def test_quantize_known_group():
    # Coarse amax 7 gives scale 1; a fine group with amax 0.5 gets shift 3
    # (0.5 * 8 <= 7 < 0.5 * 16 would need shift 4, capped at smax = 3).
    x = np.r_[np.full(16, 7.0), np.full(16, 0.5), np.linspace(-3.5, 3.5, 16), np.zeros(16)][None]
    q = quantize_hgq(x, HGQConfig(64, 16, 2))
    assert q.scales.tolist() == [[1.0]]
    assert q.shifts.tolist() == [[0, 3, 1, 3]]
    assert q.codes[0, :16].tolist() == [7] * 16
    assert q.codes[0, 16:32].tolist() == [4] * 16
    assert q.codes[0, 48:].tolist() == [0] * 16
    assert q.codes[0, 32:48].tolist() == round_half_even_saturate(np.linspace(-3.5, 3.5, 16) * 2).tolist()


def test_quantize_all_zero_group():
    x = np.zeros((2, 128))
    x[1, 5] = 3.0
    q = quantize_hgq(x)
    assert q.scales[0, 0] == 0
    assert not np.signbit(q.scales[0, 0])
    assert np.all(q.codes[0] == 0)
    assert q.shifts[0].tolist() == [3] * 8
    assert q.shifts[1].tolist() == [0] + [3] * 7


def test_quantize_minus_eight_everywhere():
    # -8 * S with S = 8/7 rounded to FP16; the codes saturate at -8 only through rounding.
    x = np.full((1, 128), -8.0)
    q = quantize_hgq(x)
    assert q.scales[0, 0] == np.float16(8.0 / 7.0)
    assert np.all(q.codes == -7)
    y = np.full((1, 128), -8.0)
    y[0, 0] = 7.0  # amax 8 keeps the scale 8/7; -8 / (8/7) = -7
    assert np.all(quantize_hgq(y).codes[0, 1:] == -7)


def test_quantize_single_huge_outlier():
    x = np.full((1, 128), 0.01)
    x[0, 77] = 1e4
    q = quantize_hgq(x)
    assert q.scales[0, 0] == np.float16(1e4 / 7)
    assert q.codes[0, 77] == 7
    # Every other fine group shifts by the maximum, and its values still round to 0.
    assert q.shifts[0].tolist() == [3, 3, 3, 3, 0, 3, 3, 3]
    assert np.count_nonzero(q.codes) == 1


def test_quantize_fp16_scale_limits():
    largest = np.full((1, 128), 65504.0 * 7)
    assert quantize_hgq(largest).scales[0, 0] == np.float16(65504)
    tiny = np.full((1, 128), 7 * 2.0 ** -24)
    q = quantize_hgq(tiny)
    assert q.scales[0, 0] == np.float16(2.0 ** -24)
    assert np.all(q.codes == 7)
    vanishing = np.full((1, 128), 1e-9)
    q = quantize_hgq(vanishing)
    assert q.scales[0, 0] == 0
    assert np.all(q.codes == 0)


def test_quantize_scale_overflow_message():
    x = np.zeros((2, 256))
    x[1, 200] = 1e6
    message = ("x coarse scale amax/7 = 142857 (row 1, coarse group 1) exceeds the FP16 maximum 65504; "
               "scale the tensor down before quantizing")
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        quantize_hgq(x)


@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 128)), "x must be a non-empty 2-D array, not shape (0, 128)"),
    (np.zeros(128), "x must be a non-empty 2-D array, not shape (128,)"),
    (np.zeros((2, 100)), "x row length K must be a multiple of coarse_group (128), not 100; "
                         "pad the input channels with zeros up to 128"),
])
def test_quantize_invalid_shape(array, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        quantize_hgq(array)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_non_finite(bad):
    x = np.zeros((3, 128))
    x[2, 9] = bad
    message = f"x must be finite, but x[2, 9] is {bad} (1 non-finite values in all)"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        quantize_hgq(x)


def test_tensor_rejects_bad_fields():
    cfg = HGQConfig(32, 16, 2)
    codes = np.zeros((1, 32), np.int8)
    scales = np.ones((1, 1), np.float16)
    shifts = np.zeros((1, 2), np.uint8)
    with pytest.raises(ValueError, match=re.escape("codes must lie in [-8, 7], not [0, 8]")):
        HGQTensor(codes + np.int8(8) * (np.arange(32) == 3), scales, shifts, cfg)
    with pytest.raises(ValueError, match=re.escape("shifts must lie in [0, 3], not [0, 4]")):
        HGQTensor(codes, scales, shifts + np.uint8(4) * (np.arange(2) == 1), cfg)
    with pytest.raises(ValueError, match=re.escape("scales must have shape (1, 1), not (1, 2)")):
        HGQTensor(codes, np.ones((1, 2), np.float16), shifts, cfg)
    with pytest.raises(ValueError, match=re.escape("scales must be finite and non-negative (+0 included)")):
        HGQTensor(codes, -scales, shifts, cfg)


def test_per_tensor_baseline():
    x = np.array([[7.0, -3.5, 1.0, 0.0]])
    assert quantize_per_tensor(x).tolist() == [[7.0, -4.0, 1.0, 0.0]]
    assert np.all(quantize_per_tensor(np.zeros((2, 2))) == 0)


configs = st.sampled_from([HGQConfig(), HGQConfig(64, 16, 2), HGQConfig(32, 8, 3), HGQConfig(64, 32, 1),
                           HGQConfig.conventional(16), HGQConfig.conventional(64)])
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def matrices(draw):
    cfg = draw(configs)
    rows = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    x = draw(hnp.arrays(np.float64, (rows, groups * cfg.coarse_group), elements=finite))
    return cfg, x


@settings(max_examples=150, deadline=None)
@given(matrices())
def test_hgq_properties(case):
    cfg, x = case
    q = quantize_hgq(x, cfg)
    # Codes and shifts stay in range, and every coarse scale is fp16(amax / 7).
    assert q.codes.min() >= -8
    assert q.codes.max() <= 7
    assert q.shifts.max() <= cfg.max_shift
    amax = np.abs(x).reshape(x.shape[0], -1, cfg.coarse_group).max(axis=2)
    assert np.array_equal(q.scales, (amax / 7).astype(np.float16))
    # Each code is the nearest-even rounding of x over its element scale, saturated.
    scale = q.element_scales()
    expected = np.where(scale > 0, np.clip(np.rint(x / np.where(scale > 0, scale, 1)), -8, 7), 0)
    assert np.array_equal(q.codes, expected)
    # Error bound: half a step, plus saturation caused by the FP16 rounding of
    # the scale: relative 2**-11 for normal scales, absolute 2**-25 for
    # subnormal ones, which also covers scales that underflow to zero.
    error = np.abs(q.dequantize() - x)
    assert np.all(error <= 0.5 * scale + np.repeat(amax, cfg.coarse_group, axis=1) * 2.0 ** -10 + 2.0 ** -22)
    # The largest fine group of a non-zero coarse group never shifts.
    fine = np.abs(x).reshape(x.shape[0], -1, cfg.fine_per_coarse, cfg.fine_group).max(axis=3)
    top = fine.argmax(axis=2)
    shifts = q.shifts.reshape(x.shape[0], -1, cfg.fine_per_coarse)
    chosen = np.take_along_axis(shifts, top[..., None], axis=2)[..., 0]
    assert np.all(chosen[amax > 0] == 0)


@settings(max_examples=100, deadline=None)
@given(matrices(), st.floats(0.25, 4.0))
def test_hgq_scale_equivariance(case, power):
    """Scaling the input by a power of two scales the FP16 scales and keeps the codes."""
    cfg, x = case
    factor = 2.0 ** round(np.log2(power))
    q, q2 = quantize_hgq(x, cfg), quantize_hgq(x * factor, cfg)
    # A scale that underflows to 0 in one tensor may round to a subnormal in
    # the other, so zero scales count only where both tensors have them.
    normal = np.all(np.where(q.scales == 0, q2.scales == 0,
                             q.scales.astype(np.float64) >= FP16.min_normal * 4))
    if normal:
        assert np.array_equal(q.codes, q2.codes)
        assert np.array_equal(q.shifts, q2.shifts)


def _weighted_error(q, x, weights):
    return float(np.sum((q.dequantize() - x) ** 2 * weights))


@settings(max_examples=60, deadline=None)
@given(matrices(), st.integers(0, 2 ** 32 - 1))
def test_search_hgq_never_worse_than_amax_rule(case, seed):
    """The searched tensor has a valid format and at most the amax rule's weighted error."""
    cfg, x = case
    weights = np.random.default_rng(seed).uniform(0.0, 3.0, x.shape[1])
    searched, plain = search_hgq(x, cfg, channel_weights=weights), quantize_hgq(x, cfg)
    HGQTensor(searched.codes, searched.scales, searched.shifts, cfg)
    assert _weighted_error(searched, x, weights) <= _weighted_error(plain, x, weights)


def test_search_hgq_clips_an_outlier():
    """One outlier in a group of small values: a smaller coarse scale that clips it has less error."""
    cfg = HGQConfig(coarse_group=32, fine_group=16, shift_bits=2)
    x = np.r_[np.full(31, 1.0), 9.0][None]
    plain, searched = quantize_hgq(x, cfg), search_hgq(x, cfg)
    assert float(plain.scales[0, 0]) == float(np.float16(9.0 / 7))
    assert float(searched.scales[0, 0]) < float(plain.scales[0, 0])
    assert _weighted_error(searched, x, 1.0) < _weighted_error(plain, x, 1.0)


def test_search_hgq_zero_groups_keep_the_rule():
    cfg = HGQConfig(coarse_group=32, fine_group=16, shift_bits=2)
    x = np.zeros((2, 64))
    x[1, 32:] = np.linspace(-1.0, 1.0, 32)
    searched, plain = search_hgq(x, cfg), quantize_hgq(x, cfg)
    assert np.array_equal(searched.shifts[0], plain.shifts[0])
    assert np.array_equal(searched.scales[0], plain.scales[0])
    assert not np.any(searched.codes[0])


def test_search_hgq_many_rows_match_row_by_row():
    """Rows are searched in blocks; the blocks give the same tensor as one row at a time."""
    cfg = HGQConfig(coarse_group=32, fine_group=16, shift_bits=2)
    x = np.random.default_rng(5).standard_normal((300, 64)) ** 3
    whole = search_hgq(x, cfg)
    for row in (0, 255, 256, 299):
        single = search_hgq(x[row:row + 1], cfg)
        assert np.array_equal(whole.codes[row], single.codes[0])
        assert np.array_equal(whole.scales[row], single.scales[0])
        assert np.array_equal(whole.shifts[row], single.shifts[0])


@pytest.mark.parametrize("options, message", [
    ({"channel_weights": np.ones(31)}, r"channel_weights must have shape \(32,\) like the columns of x, not \(31,\)"),
    ({"channel_weights": np.r_[-1.0, np.ones(31)]}, "channel_weights must be finite and non-negative"),
    ({"channel_weights": np.r_[np.nan, np.ones(31)]}, "channel_weights must be finite and non-negative"),
    ({"ratios": ()}, r"ratios must be a non-empty sequence of numbers in \(0, 1\], not \(\)"),
    ({"ratios": (1.0, 1.5)}, r"ratios must be a non-empty sequence of numbers in \(0, 1\], not \(1.0, 1.5\)"),
    ({"ratios": (0.0,)}, r"ratios must be a non-empty sequence"),
])
def test_search_hgq_invalid(options, message):
    with pytest.raises(ValueError, match=message):
        search_hgq(np.ones((1, 32)), HGQConfig(coarse_group=32, fine_group=16, shift_bits=2), **options)
