"""Integer steps of the online quantizer (golden.quantizer) against the float64 HGQ definition."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden.formats import FP16, FP32, INT4, round_half_even_saturate
from golden.hgq import HGQConfig, quantize_hgq
from golden.quantizer import (
    MAGNITUDE_BITS,
    coarse_scale_magnitudes,
    element_codes,
    encode_fp16_magnitudes,
    fine_shifts,
    fp16_bits_of,
    fp16_magnitudes,
    quantize_hgq_fp16,
    quantizer_steps,
)
from sim.quantizer import edge_values, make_quantizer_input

CONFIGS = {
    "default": HGQConfig(),
    "conventional-g16": HGQConfig.conventional(16),
    "gc32-gf8-sb4": HGQConfig(32, 8, 4),
    "gc48-gf24-sb1": HGQConfig(48, 24, 1),
}

FINITE_POSITIVE = np.arange(FP16.exp_max << FP16.frac_bits)
TINY = FP16.min_subnormal


def assert_same_quantization(x, config):
    """Check that the integer quantizer equals quantize_hgq on the FP16 values ``x``."""
    reference = quantize_hgq(np.asarray(x, dtype=np.float64), config)
    got = quantize_hgq_fp16(x, config)
    assert np.array_equal(got.codes, reference.codes)
    assert np.array_equal(got.shifts, reference.shifts)
    assert np.array_equal(FP16.to_bits(got.scales), FP16.to_bits(reference.scales))


def test_magnitude_bits():
    assert MAGNITUDE_BITS == 40
    _, magnitudes = fp16_magnitudes([0x7BFF])
    assert int(magnitudes[0]).bit_length() == MAGNITUDE_BITS


def test_magnitudes_of_every_encoding():
    bits = np.r_[FINITE_POSITIVE, FINITE_POSITIVE | 0x8000]
    signs, magnitudes = fp16_magnitudes(bits)
    values = FP16.from_bits(bits).astype(np.float64)
    assert np.array_equal(magnitudes, np.abs(values) * 2.0 ** 24)
    assert np.array_equal(signs, np.signbit(values))
    assert np.array_equal(encode_fp16_magnitudes(magnitudes), bits & 0x7FFF)


@pytest.mark.parametrize("bits, message", [
    ([0x3C00, 0x7C00], "FP16 encodings must be finite, but the encoding at index (1,) is 0x7c00 (NaN or Inf)"),
    ([[0xFE00]], "FP16 encodings must be finite, but the encoding at index (0, 0) is 0xfe00 (NaN or Inf)"),
    ([0x10000], "FP16 encodings must lie in [0, 65535], not [65536, 65536]"),
])
def test_magnitudes_reject_invalid(bits, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        fp16_magnitudes(bits)


@pytest.mark.parametrize("magnitude, message", [
    (2049, "magnitude 2049 is not a finite FP16 value times 2**24"),
    (65520 << 24, f"magnitude {65520 << 24} is not a finite FP16 value times 2**24"),
    (-1, "magnitudes must be non-negative, not -1"),
])
def test_encode_rejects_off_grid(magnitude, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        encode_fp16_magnitudes([magnitude])


@pytest.mark.parametrize("divisor", [7, 3, 2, 1])
def test_coarse_scale_every_amax(divisor):
    """Every finite FP16 amax: the integer scale equals float64 division rounded to FP16."""
    _, amax = fp16_magnitudes(FINITE_POSITIVE)
    scale = coarse_scale_magnitudes(amax, divisor)
    reference = (FP16.from_bits(FINITE_POSITIVE).astype(np.float64) / divisor).astype(np.float16)
    assert np.array_equal(encode_fp16_magnitudes(scale), FP16.to_bits(reference))


def test_coarse_scale_zero_below_half_subnormal():
    # amax / 7 < 0.5 * 2**-24 exactly when amax <= 3 * 2**-24.
    assert coarse_scale_magnitudes([0, 1, 2, 3, 4, 10, 11], 7).tolist() == [0, 0, 0, 0, 1, 1, 2]


def test_coarse_scale_ties_to_even():
    # With divisor 2, odd subnormal amax values fall on ties.
    assert coarse_scale_magnitudes([1, 3, 5, 7], 2).tolist() == [0, 2, 2, 4]
    # Above 2**11 the grid step is 2: 2049 rounds to 2048 and 2051 to 2052.
    assert coarse_scale_magnitudes([2 * 2049, 2 * 2051], 2).tolist() == [2048, 2052]


def test_coarse_scale_largest():
    _, amax = fp16_magnitudes([0x7BFF])
    scale = coarse_scale_magnitudes(amax, 7)
    assert FP16.from_bits(encode_fp16_magnitudes(scale))[0] == np.float16(65504 / 7)
    assert FP16.from_bits(encode_fp16_magnitudes(scale))[0] == 9360.0


def test_fine_shifts_known_values():
    shifts = fine_shifts([100], [[100, 50, 49, 12, 0, 13]], 3)
    assert shifts.tolist() == [[0, 1, 1, 3, 3, 2]]
    assert fine_shifts([100], [[12, 0]], 0).tolist() == [[0, 0]]


def test_fine_shifts_largest_magnitudes():
    # 65504 << 15 still fits in int64.
    _, largest = fp16_magnitudes([0x7BFF])
    assert fine_shifts(largest, [[largest[0], 1, 0]], 15).tolist() == [[0, 15, 15]]


def test_element_codes_ties_and_saturation():
    magnitudes = np.arange(20)
    expected = round_half_even_saturate(magnitudes / 2.0)
    for sign in (False, True):
        codes = element_codes(sign, magnitudes, 0, 2, INT4)
        reference = round_half_even_saturate((-1 if sign else 1) * magnitudes / 2.0)
        assert codes.tolist() == reference.tolist()
    assert expected[15] == 7  # 7.5 rounds to 8, then saturates.
    assert element_codes(True, 17, 0, 2, INT4) == -8  # -8.5 rounds to -8.
    assert element_codes(True, 15, 0, 2, INT4) == -8  # -7.5 rounds to -8.


def test_element_codes_with_shift():
    # x * 2**s / S = 3 * 4 / 8 = 1.5, a tie that rounds to 2.
    assert element_codes(False, 3, 2, 8, INT4) == 2
    assert element_codes(False, 5, 2, 8, INT4) == 2  # 2.5 rounds to 2.


def test_element_codes_zero_scale():
    assert element_codes(False, np.array([0, 1, 3]), 0, 0, INT4).tolist() == [0, 0, 0]


def test_steps_of_known_group():
    config = HGQConfig(32, 16, 2)
    x = np.r_[np.full(16, 7.0), np.full(16, -0.5)][None].astype(np.float16)
    steps = quantizer_steps(FP16.to_bits(x), config)
    assert steps.coarse_amax.tolist() == [[7 << 24]]
    assert steps.fine_amax.tolist() == [[7 << 24, 1 << 23]]
    assert steps.scale_magnitudes.tolist() == [[1 << 24]]
    assert steps.scale_bits.tolist() == [[0x3C00]]
    assert steps.shifts.tolist() == [[0, 3]]
    assert steps.codes[0, [0, 16]].tolist() == [7, -4]
    assert steps.signs[0, 16]


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_steps_agree_with_float_values(config):
    bits = make_quantizer_input("random", config, seed=3)
    steps = quantizer_steps(bits, config)
    values = np.abs(FP16.from_bits(bits).astype(np.float64))
    rows = bits.shape[0]
    assert np.array_equal(steps.magnitudes, values * 2.0 ** 24)
    assert np.array_equal(steps.coarse_amax, values.reshape(rows, -1, config.coarse_group).max(axis=2) * 2.0 ** 24)
    assert np.array_equal(steps.fine_amax, values.reshape(rows, -1, config.fine_group).max(axis=2) * 2.0 ** 24)
    assert np.array_equal(steps.scale_magnitudes, FP16.from_bits(steps.scale_bits).astype(np.float64) * 2.0 ** 24)


def finite_fp16_rows(config):
    """Hypothesis strategy: rows of random FP16 bit patterns, NaN and Inf filtered out."""
    return st.integers(1, 3).flatmap(lambda rows: st.integers(1, 2).flatmap(
        lambda groups: hnp.arrays(np.uint16, (rows, groups * config.coarse_group),
                                  elements=st.integers(0, 0xFFFF).filter(lambda b: (b >> 10) & 0x1F != 0x1F))))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_random_bit_patterns_match(config):
    @settings(max_examples=40, deadline=None)
    @given(finite_fp16_rows(config))
    def check(bits):
        assert_same_quantization(FP16.from_bits(bits), config)

    check()


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float16, (2, 64), elements=st.floats(-2.0 ** -13, 2.0 ** -13, width=16)))
def test_small_values_match(x):
    """Subnormal and near-subnormal groups, where scales round to +0 or to a few ulps."""
    assert_same_quantization(x, HGQConfig(64, 16, 2))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_edge_rows_match(config):
    bits = edge_values(config, np.random.default_rng(0))
    assert_same_quantization(FP16.from_bits(bits), config)


def test_edge_rows_known_results():
    config = HGQConfig()
    steps = quantizer_steps(edge_values(config, np.random.default_rng(0)), config)
    zeros, ties, minus_eight, outlier, subnormals, extremes, zero_scale, _ = range(8)

    assert steps.scale_bits[zeros].tolist() == [0, 0]
    assert steps.shifts[zeros].tolist() == [config.max_shift] * 16
    assert not steps.codes[zeros].any()

    # Scale 1 and values k + 0.5: ties to even.
    assert steps.scale_bits[ties, 0] == 0x3C00
    assert steps.codes[ties, 1:8].tolist() == [0, 2, 2, 4, 4, 6, 6]
    assert steps.codes[ties, 8:15].tolist() == [0, -2, -2, -4, -4, -6, -6]
    # A fine group with amax 1.75 shifts by 2, so (k + 0.5) / 4 ties too.
    assert steps.shifts[ties, 1] == 2
    assert steps.codes[ties, 17:24].tolist() == [0, 2, 2, 4, 4, 6, 6]

    assert np.all(steps.codes[minus_eight, :128] == -8)
    assert steps.codes[minus_eight, 128:133].tolist() == [7, -8, 7, -8, -4]

    assert FP16.from_bits(steps.scale_bits[outlier]).tolist() == [9360.0, 9360.0]
    assert steps.codes[outlier].min() == -7
    assert steps.codes[outlier].max() == 7
    assert np.count_nonzero(steps.codes[outlier]) == 2

    assert np.all(steps.scale_bits[subnormals] < 0x0400)

    assert FP16.from_bits(steps.scale_bits[extremes, :1]).tolist() == [9360.0]
    assert steps.scale_bits[zero_scale].tolist() == [0, 0]
    assert not steps.codes[zero_scale].any()


def test_minilm_activations_match():
    from golden.minilm import capture_linear_layers
    x = capture_linear_layers()["layer0.ffn_in"].x.astype(np.float16)
    assert np.abs(x.astype(np.float64)).max() > 20
    assert_same_quantization(x, HGQConfig())
    assert_same_quantization(x, HGQConfig.conventional(16))


def test_fp16_bits_of_float64_values():
    assert fp16_bits_of(np.array([[1.0, -2.0 ** -24]])).tolist() == [[0x3C00, 0x8001]]


@pytest.mark.parametrize("x, message", [
    (np.array([[0.1, 1.0]]), "x must contain FP16 values, but x[0, 0] = 0.1 is not an FP16 value. Round with .astype(np.float16) first"),
    (np.array([[1.0, 7e4]]), "x must contain FP16 values, but x[0, 1] = 70000.0 is not an FP16 value. Round with .astype(np.float16) first"),
    (np.array([[1.0, np.nan]], np.float16), "x must be finite, but x[0, 1] is nan (1 non-finite values in all)"),
    (np.array([1.0], np.float16), "x must be a non-empty 2-D array, not shape (1,)"),
])
def test_quantize_rejects_invalid_input(x, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        quantize_hgq_fp16(x)


def test_quantize_rejects_bad_length():
    with pytest.raises(ValueError, match=re.escape("x row length K must be a multiple of coarse_group (128), not 96")):
        quantize_hgq_fp16(np.zeros((1, 96), np.float16))


def test_quantize_rejects_other_scale_format():
    config = HGQConfig(16, 16, 0, scale=FP32)
    with pytest.raises(ValueError, match=re.escape("config.scale must be FP16, not fp32") + "$"):
        quantize_hgq_fp16(np.zeros((1, 16), np.float16), config)
