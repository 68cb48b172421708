"""The golden residual product: accumulator widths, worst cases and an independent reference."""

import re

import numpy as np
import pytest
import softfloatpy as sf
from hypothesis import given, settings, strategies as st

from golden.formats import FP32
from golden.hgq import HGQConfig, HGQTensor, quantize_hgq
from golden.residual import (accumulator_ranges, accumulator_widths, align_and_accumulate, coarse_sums,
                             fine_partial_sums, residual_matmul)


def softfloat32(value):
    """Return ``value`` (an FP32 encoding) as a SoftFloat Float32."""
    return sf.Float32.from_bytes(int(value).to_bytes(4, "big"))


def softfloat_bits(value):
    return int.from_bytes(value.to_bytes(), "big")


def reference_output(xq, wq, t, n):
    """Compute one output with Python integers and SoftFloat, step by step as documented."""
    cfg = xq.config
    smax = cfg.max_shift
    y = softfloat32(0)
    for c in range(xq.shape[1] // cfg.coarse_group):
        coarse_sum = 0
        for j in range(c * cfg.fine_per_coarse, (c + 1) * cfg.fine_per_coarse):
            ks = range(j * cfg.fine_group, (j + 1) * cfg.fine_group)
            partial = sum(int(xq.codes[t, k]) * int(wq.codes[n, k]) for k in ks)
            coarse_sum += partial << (2 * smax - int(xq.shifts[t, j]) - int(wq.shifts[n, j]))
        scale = sf.f32_mul(softfloat32(FP32.to_bits(np.float32(xq.scales[t, c]))),
                           softfloat32(FP32.to_bits(np.float32(wq.scales[n, c]))))
        scale = sf.f32_mul(scale, softfloat32(FP32.to_bits(np.float32(2.0 ** (-2 * smax)))))
        product = sf.f32_mul(sf.i64_to_f32(sf.Int64.from_int(coarse_sum)), scale)
        y = sf.f32_add(y, product)
    return softfloat_bits(y)


def random_tensor(rng, rows, k, cfg, scale_exponents=(-8, 4)):
    codes = rng.integers(-8, 8, (rows, k)).astype(np.int8)
    shifts = rng.integers(0, cfg.max_shift + 1, (rows, k // cfg.fine_group)).astype(np.uint8)
    scales = np.ldexp(rng.uniform(1, 2, (rows, k // cfg.coarse_group)),
                      rng.integers(*scale_exponents, (rows, k // cfg.coarse_group))).astype(np.float16)
    return HGQTensor(codes, scales, shifts, cfg)


def test_default_widths():
    assert accumulator_widths() == accumulator_widths(HGQConfig(128, 16, 2))
    widths = accumulator_widths()
    assert (widths.partial_sum, widths.aligned, widths.coarse_sum) == (12, 18, 21)
    assert accumulator_widths(HGQConfig.conventional(16)).coarse_sum == 12


@pytest.mark.parametrize("cfg", [HGQConfig(), HGQConfig(64, 16, 2), HGQConfig(32, 8, 3),
                                 HGQConfig(256, 16, 4), HGQConfig.conventional(16)])
def test_worst_case_fits_widths(cfg):
    """All codes -8 and all shifts 0 reach the largest sums; they fit the derived widths exactly."""
    k = cfg.coarse_group
    worst = HGQTensor(np.full((1, k), -8, np.int8), np.ones((1, 1), np.float16),
                      np.zeros((1, k // cfg.fine_group), np.uint8), cfg)
    partial = fine_partial_sums(worst, worst)
    coarse = align_and_accumulate(partial, worst.shifts, worst.shifts, cfg)
    widths = accumulator_widths(cfg)
    ranges = accumulator_ranges(cfg)
    assert partial.max() == ranges[0][1] < 1 << (widths.partial_sum - 1)
    assert coarse.max() == ranges[2][1] < 1 << (widths.coarse_sum - 1)
    # One bit less would overflow.
    assert ranges[2][1] >= 1 << (widths.coarse_sum - 2)
    # The minimum sums (-8 x 7 everywhere) fit as well.
    seven = HGQTensor(np.full((1, k), 7, np.int8), worst.scales, worst.shifts, cfg)
    low = align_and_accumulate(fine_partial_sums(worst, seven), worst.shifts, worst.shifts, cfg)
    assert low.min() == ranges[2][0] >= -(1 << (widths.coarse_sum - 1))


@pytest.mark.parametrize("cfg", [HGQConfig(), HGQConfig(64, 16, 2), HGQConfig.conventional(16)])
def test_matches_softfloat_reference(cfg):
    rng = np.random.default_rng(7)
    # Three coarse groups, so that the order of the FP32 additions matters.
    xq = random_tensor(rng, 3, 3 * cfg.coarse_group, cfg)
    wq = random_tensor(rng, 4, 3 * cfg.coarse_group, cfg)
    y = FP32.to_bits(residual_matmul(xq, wq))
    for t in range(3):
        for n in range(4):
            assert y[t, n] == reference_output(xq, wq, t, n), f"output ({t}, {n})"


def test_fp16_scale_extremes_match_reference():
    cfg = HGQConfig(32, 16, 2)
    rng = np.random.default_rng(3)
    xq = random_tensor(rng, 2, 64, cfg)
    wq = random_tensor(rng, 2, 64, cfg)
    extremes = np.array([[65504, 2.0 ** -24], [2.0 ** -14, 0]], np.float16)
    xq = HGQTensor(xq.codes, extremes, xq.shifts, cfg)
    wq = HGQTensor(wq.codes, extremes[::-1].copy(), wq.shifts, cfg)
    y = FP32.to_bits(residual_matmul(xq, wq))
    for t in range(2):
        for n in range(2):
            assert y[t, n] == reference_output(xq, wq, t, n), f"output ({t}, {n})"


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([HGQConfig(), HGQConfig(32, 8, 3), HGQConfig.conventional(16)]))
def test_random_matches_reference(seed, cfg):
    rng = np.random.default_rng(seed)
    xq = random_tensor(rng, 1, cfg.coarse_group * 3, cfg, (-24, 16))
    wq = random_tensor(rng, 2, cfg.coarse_group * 3, cfg, (-24, 16))
    y = FP32.to_bits(residual_matmul(xq, wq))
    assert y[0, 0] == reference_output(xq, wq, 0, 0)
    assert y[0, 1] == reference_output(xq, wq, 0, 1)


def test_close_to_dequantized_product():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 256)), rng.standard_normal((16, 256))
    xq, wq = quantize_hgq(x), quantize_hgq(w)
    exact = xq.dequantize() @ wq.dequantize().T
    assert np.allclose(residual_matmul(xq, wq), exact, rtol=1e-6, atol=1e-5)


def test_operands_must_share_config():
    x = quantize_hgq(np.ones((1, 128)))
    w = quantize_hgq(np.ones((1, 128)), HGQConfig(128, 32, 2))
    message = (f"xq and wq must share one HGQConfig, not {x.config} and {w.config}")
    with pytest.raises(ValueError, match=re.escape(message)):
        residual_matmul(x, w)
    with pytest.raises(ValueError, match=re.escape("xq and wq must have the same K, not 128 and 256")):
        residual_matmul(x, quantize_hgq(np.ones((1, 256))))


def per_fine_group_sums(xq, wq):
    return align_and_accumulate(fine_partial_sums(xq, wq), xq.shifts, wq.shifts, xq.config)


# float32 products (default and conventional), float64 (4 shift bits), and a
# coarse group so long that neither float type is exact.
@pytest.mark.parametrize("cfg", [HGQConfig(), HGQConfig.conventional(16), HGQConfig(64, 16, 4),
                                 HGQConfig(2**18, 16, 4)], ids=["default", "conventional", "float64", "integer"])
def test_blas_coarse_sums_equal_fine_group_sums(cfg):
    rng = np.random.default_rng(3)
    k = max(cfg.coarse_group, 256)
    xq, wq = random_tensor(rng, 3, k, cfg), random_tensor(rng, 5, k, cfg)
    assert np.array_equal(coarse_sums(xq, wq), per_fine_group_sums(xq, wq))


@pytest.mark.parametrize("cfg", [HGQConfig(), HGQConfig(64, 16, 4)], ids=["default", "float64"])
def test_blas_coarse_sums_at_the_bound(cfg):
    # All codes -8 with all shifts 0 reach the largest coarse sum, where the
    # float32 (float64) product is exact only just.
    k = 2 * cfg.coarse_group
    shifts = np.zeros((2, k // cfg.fine_group), dtype=np.uint8)
    scales = np.ones((2, k // cfg.coarse_group), dtype=np.float16)
    worst = HGQTensor(np.full((2, k), -8, dtype=np.int8), scales, shifts, cfg)
    expected = cfg.coarse_group * (8 << cfg.max_shift) ** 2
    assert np.all(coarse_sums(worst, worst) == expected)
    assert np.array_equal(coarse_sums(worst, worst), per_fine_group_sums(worst, worst))
    assert np.array_equal(residual_matmul(worst, worst).view(np.uint32),
                          np.full((2, 2), np.float32(2 * expected * 2.0 ** (-2 * cfg.max_shift))).view(np.uint32))
