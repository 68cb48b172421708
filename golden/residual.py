"""The residual product as the residual matrix core (RMC) computes it.

For activations X (T x K) and weights W (N x K), both HGQ-quantized with the
same configuration, ``Y[t, n]`` is formed in three steps:

1. Partial sums: ``P[t, n, j] = sum q_x[t, k] * q_w[n, k]`` over the k of
   fine group j. Exact integers.
2. Alignment: ``A[t, n, c] = sum P[t, n, j] << (2*smax - s_x[t, j] - s_w[n, j])``
   over the fine groups j of coarse group c. Exact integers.
3. Coarse scaling, in FP32 with round to nearest even at every step, over the
   coarse groups in ascending order starting from ``y = +0``:
   ``y = y + fp32(A) * (fp32(S_x) * fp32(S_w) * 2**-(2*smax))``.
   The scale product is exact in FP32 (two 11-bit significands, exponents
   within the FP32 normal range), so the only roundings are the INT-to-FP
   conversion, the multiply and the add.

Every integer width comes from :func:`accumulator_widths`, and none of the
sums can overflow it.
"""

from dataclasses import dataclass

import numpy as np

from .formats import FP32, signed_width
from .hgq import HGQConfig, HGQTensor

__all__ = [
    "AccumulatorWidths", "accumulator_widths", "fine_partial_sums",
    "align_and_accumulate", "coarse_sums", "scale_products", "coarse_scale_accumulate",
    "residual_matmul",
]

# Every integer of magnitude up to 2**24 (2**53) is exact in float32 (float64).
_FLOAT32_EXACT = 2**24
_FLOAT64_EXACT = 2**53


@dataclass(frozen=True)
class AccumulatorWidths:
    """Signed integer widths (bits) of the residual datapath.

    Attributes
    ----------
    partial_sum : int
        A fine-group partial sum ``P``.
    aligned : int
        ``P`` after the alignment shift.
    coarse_sum : int
        The sum ``A`` of the aligned partial sums of one coarse group.
    """

    partial_sum: int
    aligned: int
    coarse_sum: int


def _ranges(config):
    element = config.element
    lo, hi = config.fine_group * element.product_min, config.fine_group * element.product_max
    shift = 2 * config.max_shift
    partial = (lo, hi)
    aligned = (lo << shift, hi << shift)
    coarse = (aligned[0] * config.fine_per_coarse, aligned[1] * config.fine_per_coarse)
    return partial, aligned, coarse


def accumulator_widths(config=HGQConfig()):
    """Derive the integer widths of the residual datapath from ``config``.

    The bounds are tight: all codes -8 and all shifts 0 reach the largest
    positive value of every stage.

    >>> accumulator_widths(HGQConfig(128, 16, 2))
    AccumulatorWidths(partial_sum=12, aligned=18, coarse_sum=21)
    """
    return AccumulatorWidths(*(signed_width(lo, hi) for lo, hi in _ranges(config)))


def accumulator_ranges(config=HGQConfig()):
    """Return the (min, max) reachable by each stage, in the order of :class:`AccumulatorWidths`."""
    return _ranges(config)


def _check_operands(xq, wq):
    if not isinstance(xq, HGQTensor) or not isinstance(wq, HGQTensor):
        raise TypeError("xq and wq must be HGQTensor objects from quantize_hgq")
    if xq.config != wq.config:
        raise ValueError(f"xq and wq must share one HGQConfig, not {xq.config} and {wq.config}")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq and wq must have the same K, not {xq.shape[1]} and {wq.shape[1]}")


def fine_partial_sums(xq, wq):
    """Return the exact fine-group partial sums P, int64 of shape (T, N, K / fine_group)."""
    _check_operands(xq, wq)
    cfg = xq.config
    t, k = xq.shape
    n = wq.shape[0]
    groups = k // cfg.fine_group
    x = xq.codes.astype(np.float64).reshape(t, groups, cfg.fine_group)
    w = wq.codes.astype(np.float64).reshape(n, groups, cfg.fine_group)
    # Each dot product has at most fine_group terms of magnitude <= 64, far
    # below 2**53, so float64 BLAS gives the exact integer.
    partial = np.empty((t, n, groups), dtype=np.int64)
    for j in range(groups):
        partial[:, :, j] = x[:, j, :] @ w[:, j, :].T
    return partial


def align_and_accumulate(partial, x_shifts, w_shifts, config):
    """Shift every partial sum by ``2*smax - s_x - s_w`` and sum over each coarse group.

    Returns int64 of shape (T, N, K / coarse_group).
    """
    shift = 2 * config.max_shift - x_shifts.astype(np.int64)[:, None, :] - w_shifts.astype(np.int64)[None, :, :]
    aligned = np.left_shift(partial, shift)
    t, n, groups = partial.shape
    return aligned.reshape(t, n, groups // config.fine_per_coarse, config.fine_per_coarse).sum(axis=3)


def _coarse_sums_by_group(xq, wq):
    """Return the coarse sums as floats in (C, T, N) order, exact, or None if no float type represents them exactly.

    Since ``P << (2*smax - s_x - s_w)`` equals the dot product of the codes
    pre-shifted by ``smax - s_x`` and ``smax - s_w``, each coarse sum is one
    dot product of pre-shifted codes. Every partial sum of its terms, in any
    order, is bounded by the sum of their magnitudes,
    ``coarse_group * (8 << smax)**2``, so a float32 matrix product is exact
    while that bound is at most 2**24, and a float64 one up to 2**53.
    """
    cfg = xq.config
    t, k = xq.shape
    n = wq.shape[0]
    bound = cfg.coarse_group * (abs(cfg.element.min) << cfg.max_shift) ** 2
    if bound > _FLOAT64_EXACT:
        return None
    dtype = np.float32 if bound <= _FLOAT32_EXACT else np.float64

    def shifted(tensor, rows):
        factor = np.left_shift(1, cfg.max_shift - tensor.shifts.astype(np.int64)).astype(dtype)
        codes = tensor.codes.astype(dtype).reshape(rows, k // cfg.fine_group, cfg.fine_group)
        return (codes * factor[:, :, None]).reshape(rows, k)

    x, w = shifted(xq, t), shifted(wq, n)
    # One matrix product per coarse group, on column slices that BLAS reads in place.
    sums = np.empty((k // cfg.coarse_group, t, n), dtype=dtype)
    for c in range(k // cfg.coarse_group):
        columns = slice(c * cfg.coarse_group, (c + 1) * cfg.coarse_group)
        np.matmul(x[:, columns], w[:, columns].T, out=sums[c])
    return sums


def coarse_sums(xq, wq):
    """Return the coarse sums A of :func:`align_and_accumulate`, int64 (T, N, K / coarse_group), by BLAS.

    Equal to ``align_and_accumulate(fine_partial_sums(xq, wq), ...)``, but
    one matrix product per coarse group instead of one per fine group.
    """
    _check_operands(xq, wq)
    sums = _coarse_sums_by_group(xq, wq)
    if sums is None:
        return align_and_accumulate(fine_partial_sums(xq, wq), xq.shifts, wq.shifts, xq.config)
    return sums.transpose(1, 2, 0).astype(np.int64)


def scale_products(x_scales, w_scales, config):
    """Return ``fp32(S_x) * fp32(S_w) * 2**-(2*smax)``, float32 of shape (T, N, C); exact."""
    product = x_scales.astype(np.float32)[:, None, :] * w_scales.astype(np.float32)[None, :, :]
    return product * np.float32(2.0 ** (-2 * config.max_shift))


def coarse_scale_accumulate(coarse_sums, scales):
    """Convert, scale and accumulate the coarse sums in FP32, in ascending coarse-group order.

    ``coarse_sums`` is int64 (T, N, C) and ``scales`` float32 of the same
    shape. Returns float32 (T, N).
    """
    # int64 -> float64 is exact below 2**53, so the cast to float32 rounds once, to nearest even.
    as_fp32 = coarse_sums.astype(np.float64).astype(FP32.dtype)
    products = as_fp32 * scales
    y = np.zeros(coarse_sums.shape[:2], dtype=FP32.dtype)
    for c in range(coarse_sums.shape[2]):
        y = y + products[:, :, c]
    return y


def residual_matmul(xq, wq):
    """Return ``Y = X W^T`` of two HGQ tensors exactly as the RMC computes it, float32 (T, N)."""
    _check_operands(xq, wq)
    cfg = xq.config
    sums = _coarse_sums_by_group(xq, wq)
    if sums is None:
        return coarse_scale_accumulate(coarse_sums(xq, wq), scale_products(xq.scales, wq.scales, cfg))
    # The same steps as coarse_scale_accumulate, in (C, T, N) order so that
    # each coarse group is one contiguous block. A float32 sum is already
    # fp32(A); a float64 one rounds once, to nearest even.
    as_fp32 = sums.astype(FP32.dtype)
    scale = np.float32(2.0 ** (-2 * cfg.max_shift))
    x_scales = xq.scales.astype(np.float32).T
    w_scales = wq.scales.astype(np.float32).T
    y = np.zeros(as_fp32.shape[1:], dtype=FP32.dtype)
    for c in range(as_fp32.shape[0]):
        y = y + as_fp32[c] * ((x_scales[c][:, None] * w_scales[c][None, :]) * scale)
    return y
