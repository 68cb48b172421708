"""Online HGQ activation quantizer, in the exact integer steps of the hardware.

:func:`golden.hgq.quantize_hgq` defines HGQ in float64. This module computes
the same result from FP16 encodings with integer arithmetic only, in the
steps that :class:`hw.quantizer.HGQQuantizer` implements, so that the tests
can compare intermediate values. The RTL divides the amax's significand
rather than ``M`` for the coarse scale, with the same result for every FP16
amax (tested exhaustively).

For FP16 input the float64 definition is exact too, so both give identical
codes, shifts and scales. ``amax / 7`` is rounded twice (to float64, then
to FP16), but a quotient by 7 that is not exact has a repeating binary
expansion, which never comes within a float64 ulp of an FP16 rounding tie.
``x * 2**s / S`` is a quotient of two 11-bit significands, so float64
rounding cannot move it onto ``k + 0.5`` or off it.

The steps, per row and coarse group:

1. **Magnitudes.** A finite FP16 value is ``(-1)**sign * M * 2**-24`` with an
   integer ``M < 2**40``. For biased exponent ``e`` and fraction ``f``,
   ``M = f`` if ``e = 0`` (subnormal) and ``M = (1024 + f) << (e - 1)``
   otherwise (:func:`fp16_magnitudes`).
2. **Coarse amax.** ``A = max M`` over the ``Gc`` elements of the group.
3. **Coarse scale.** ``S = fp16(A / 7)`` rounded to nearest, ties to even, as
   the integer ``M_S`` (:func:`coarse_scale_magnitudes`): with ``q = A // 7``,
   the FP16 grid step at ``A / 7`` is ``2**t``, ``t = max(0, bitlen(q) - 11)``.
   Then ``n = A // (7 << t)``, ``r = A % (7 << t)``, and ``n`` rounds up when
   ``2r > 7 << t``, or when ``2r = 7 << t`` and ``n`` is odd, so
   ``M_S = (n + up) << t``. Below half the smallest subnormal (``A <= 3``)
   this gives ``M_S = 0``, the scale +0. ``M_S <= A``, so no scale of an FP16
   input exceeds the FP16 maximum.
4. **Fine shift.** ``s_j`` is the largest ``s`` in ``0 .. smax`` with
   ``(A_j << s) <= A``, where ``A_j`` is the fine group's amax. An all-zero
   fine group gets ``smax`` (:func:`fine_shifts`).
5. **Codes.** With ``X = 2 * M << s_j`` and thresholds ``T_k = (2k + 1) * M_S``
   for ``k = 0 .. 7`` (``k + 0.5`` times the scale), ``c`` counts the
   thresholds with ``X > T_k``. ``X = T_k`` is a tie between ``k`` and
   ``k + 1``, and then ``c = k``, so the rounded magnitude is
   ``m = c + 1`` if ``X`` equals a threshold and ``c`` is odd, else ``c``.
   Saturation follows rounding: ``q = min(m, 7)`` for a positive sign and
   ``q = -m`` (at least -8, because ``m <= 8``) for a negative one. Where
   ``M_S = 0`` every code is 0 (:func:`element_codes`).

The element format comes from ``HGQConfig.element``, so ``7`` and ``-8`` above
are ``element.max`` and ``element.min``, and the threshold count is
``element.max + 1``.
"""

from dataclasses import dataclass

import numpy as np

from .formats import FP16
from .hgq import HGQConfig, HGQTensor, check_matrix

__all__ = [
    "MAGNITUDE_BITS", "QuantizerSteps", "fp16_magnitudes", "encode_fp16_magnitudes",
    "coarse_scale_magnitudes", "fine_shifts", "element_codes", "quantizer_steps",
    "quantize_hgq_fp16", "fp16_bits_of",
]

# Bits of the largest magnitude integer M of a finite FP16 value: the
# significand shifted by the largest finite biased exponent minus 1.
MAGNITUDE_BITS = FP16.significand_bits + FP16.exp_max - 2


def _bit_length(values):
    """Return the bit length of every non-negative int64 in ``values``.

    ``np.frexp`` is exact here because every value is below ``2**53``.
    """
    values = np.asarray(values, dtype=np.int64)
    if values.size and values.max() >= 1 << 53:
        raise ValueError(f"values must be below 2**53, not {values.max()}")
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


def fp16_magnitudes(bits):
    """Split FP16 encodings into sign and magnitude integer ``M`` (value ``M * 2**-24``).

    Parameters
    ----------
    bits : array_like of int
        FP16 encodings of finite values.

    Returns
    -------
    signs : ndarray of bool
    magnitudes : ndarray of int64

    Raises
    ------
    ValueError
        If an encoding is out of range or encodes NaN or Inf.
    """
    bits = np.asarray(bits, dtype=np.int64)
    if bits.size and (bits.min() < 0 or bits.max() >= 1 << FP16.width):
        raise ValueError(f"FP16 encodings must lie in [0, {(1 << FP16.width) - 1}], "
                         f"not [{bits.min()}, {bits.max()}]")
    exponent = (bits >> FP16.frac_bits) & FP16.exp_max
    fraction = bits & ((1 << FP16.frac_bits) - 1)
    if np.any(exponent == FP16.exp_max):
        index = np.argwhere(exponent == FP16.exp_max)[0]
        raise ValueError(f"FP16 encodings must be finite, but the encoding at index {tuple(int(i) for i in index)} "
                         f"is 0x{int(bits[tuple(index)]):04x} (NaN or Inf)")
    significand = np.where(exponent == 0, fraction, fraction | (1 << FP16.frac_bits))
    magnitudes = significand << np.maximum(exponent - 1, 0)
    signs = (bits >> (FP16.width - 1)).astype(bool)
    return signs, magnitudes


def encode_fp16_magnitudes(magnitudes):
    """Return the FP16 encodings of the non-negative values ``M * 2**-24``.

    Raises
    ------
    ValueError
        If a magnitude is negative, is not on the FP16 grid (more than 11
        significant bits) or exceeds the FP16 maximum.
    """
    magnitudes = np.asarray(magnitudes, dtype=np.int64)
    if magnitudes.size and magnitudes.min() < 0:
        raise ValueError(f"magnitudes must be non-negative, not {magnitudes.min()}")
    # A normal value with biased exponent e has bit length e + frac_bits.
    exponent = np.maximum(_bit_length(magnitudes) - FP16.frac_bits, 0)
    shift = np.maximum(exponent - 1, 0)
    significand = magnitudes >> shift
    bad = (exponent >= FP16.exp_max) | ((significand << shift) != magnitudes)
    if np.any(bad):
        value = magnitudes[tuple(np.argwhere(bad)[0])]
        raise ValueError(f"magnitude {value} is not a finite FP16 value times 2**24")
    fraction = significand & ((1 << FP16.frac_bits) - 1)
    return (exponent << FP16.frac_bits) | fraction


def coarse_scale_magnitudes(coarse_amax, divisor):
    """Return ``M_S``, the magnitude integer of ``fp16(A / divisor)`` rounded to nearest even.

    Parameters
    ----------
    coarse_amax : array_like of int
        Magnitude integers ``A`` of the coarse groups' amax.
    divisor : int
        The largest element code, 7 for INT4.

    Returns
    -------
    ndarray of int64
        0 where ``A / divisor`` is below half the smallest FP16 subnormal.
    """
    amax = np.asarray(coarse_amax, dtype=np.int64)
    # FP16 values below 2**11 (in units of 2**-24) lie on the integer grid,
    # and in [2**p, 2**(p+1)) with p >= 11 the grid step is 2**(p - 10).
    grid_shift = np.maximum(_bit_length(amax // divisor) - FP16.significand_bits, 0)
    unit = np.int64(divisor) << grid_shift
    quotient, remainder = amax // unit, amax % unit
    round_up = (2 * remainder > unit) | ((2 * remainder == unit) & (quotient % 2 == 1))
    return (quotient + round_up) << grid_shift


def fine_shifts(coarse_amax, fine_amax, max_shift):
    """Return the largest ``s`` in ``0 .. max_shift`` with ``(fine_amax << s) <= coarse_amax``.

    ``coarse_amax`` has one axis fewer than ``fine_amax``, whose last axis is
    the fine groups of each coarse group. An all-zero fine group gets
    ``max_shift``.
    """
    fine_amax = np.asarray(fine_amax, dtype=np.int64)
    coarse_amax = np.asarray(coarse_amax, dtype=np.int64)[..., None]
    shifts = np.zeros(fine_amax.shape, dtype=np.int64)
    for s in range(1, max_shift + 1):
        shifts += (fine_amax << s) <= coarse_amax
    return shifts


def element_codes(signs, magnitudes, shifts, scale_magnitudes, element):
    """Return the element codes from threshold comparisons, without division.

    All arrays broadcast against each other: ``shifts`` and
    ``scale_magnitudes`` hold each element's fine shift and coarse ``M_S``.
    ``element`` is the :class:`~golden.formats.IntFormat` of the codes.
    """
    doubled = (np.asarray(magnitudes, dtype=np.int64) << 1) << np.asarray(shifts, dtype=np.int64)
    scale = np.asarray(scale_magnitudes, dtype=np.int64)
    above = np.zeros(np.broadcast(doubled, scale).shape, dtype=np.int64)
    tie = np.zeros(above.shape, dtype=bool)
    for k in range(element.max + 1):
        threshold = (2 * k + 1) * scale
        above += doubled > threshold
        tie |= doubled == threshold
    rounded = above + (tie & (above % 2 == 1))
    codes = np.where(signs, -rounded, np.minimum(rounded, element.max))
    return np.where(scale == 0, 0, codes)


@dataclass(frozen=True, eq=False)
class QuantizerSteps:
    """Every intermediate value of the quantizer for a matrix of FP16 encodings.

    Magnitudes are integers in units of ``2**-24``. Shapes: ``(rows, K)`` for
    elements, ``(rows, K / Gc)`` for coarse groups and ``(rows, K / Gf)``
    for fine groups. All arrays are int64 except ``signs`` (bool).
    """

    signs: np.ndarray
    magnitudes: np.ndarray
    coarse_amax: np.ndarray
    fine_amax: np.ndarray
    scale_magnitudes: np.ndarray
    scale_bits: np.ndarray
    shifts: np.ndarray
    codes: np.ndarray


def quantizer_steps(bits, config=HGQConfig(), *, name="bits"):
    """Quantize the rows of FP16 encodings ``bits`` with the integer steps of the module docstring.

    Parameters
    ----------
    bits : array_like of int, shape (rows, K)
        FP16 encodings of finite values; K a multiple of ``config.coarse_group``.
    config : HGQConfig
        Its ``scale`` format must be FP16.
    name : str
        Name used in error messages.

    Returns
    -------
    QuantizerSteps

    Raises
    ------
    ValueError
        If ``bits`` is not a non-empty 2-D array of finite FP16 encodings, if K
        is not a multiple of the coarse group, or if the scale format is not
        FP16.
    """
    if config.scale != FP16:
        raise ValueError(f"config.scale must be FP16, not {config.scale.name}")
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, not shape {bits.shape}")
    rows, k = bits.shape
    config.check_length(k, name=f"{name} row length K")
    signs, magnitudes = fp16_magnitudes(bits)

    coarse_count = k // config.coarse_group
    coarse_amax = magnitudes.reshape(rows, coarse_count, config.coarse_group).max(axis=2)
    fine_amax = magnitudes.reshape(rows, coarse_count, config.fine_per_coarse, config.fine_group).max(axis=3)
    scale_magnitudes = coarse_scale_magnitudes(coarse_amax, config.element.max)
    shifts = fine_shifts(coarse_amax, fine_amax, config.max_shift).reshape(rows, -1)

    codes = element_codes(
        signs, magnitudes,
        np.repeat(shifts, config.fine_group, axis=1),
        np.repeat(scale_magnitudes, config.coarse_group, axis=1),
        config.element)
    return QuantizerSteps(
        signs=signs, magnitudes=magnitudes, coarse_amax=coarse_amax,
        fine_amax=fine_amax.reshape(rows, -1), scale_magnitudes=scale_magnitudes,
        scale_bits=encode_fp16_magnitudes(scale_magnitudes), shifts=shifts, codes=codes)


def fp16_bits_of(x, name="x"):
    """Return the FP16 encodings of the finite matrix ``x``, whose values must be FP16 values.

    Raises
    ------
    ValueError
        If ``x`` is not a non-empty finite 2-D array, or if a value is not
        exactly representable in FP16.
    """
    array = np.asarray(x)
    if array.dtype != np.float16:
        values = check_matrix(name, array)
        with np.errstate(over="ignore"):
            array = values.astype(np.float16)
        inexact = array.astype(np.float64) != values
        if inexact.any():
            row, col = np.argwhere(inexact)[0]
            raise ValueError(
                f"{name} must contain FP16 values, but {name}[{row}, {col}] = {float(values[row, col])!r} is not an FP16 value. "
                f"Round with .astype(np.float16) first")
    check_matrix(name, array)
    return FP16.to_bits(array)


def quantize_hgq_fp16(x, config=HGQConfig(), *, name="x"):
    """Quantize FP16 activations with the integer steps of the hardware quantizer.

    Equals :func:`golden.hgq.quantize_hgq` for every finite FP16 input.

    Parameters
    ----------
    x : array_like, shape (rows, K)
        Finite FP16 values (float16, or another dtype with values that FP16
        represents exactly); K a multiple of ``config.coarse_group``.
    config : HGQConfig
    name : str
        Name used in error messages.

    Returns
    -------
    HGQTensor

    Raises
    ------
    ValueError
        As :func:`fp16_bits_of` and :func:`quantizer_steps`.

    Examples
    --------
    >>> q = quantize_hgq_fp16(np.r_[np.full(16, 7.0), np.full(16, 0.5)][None], HGQConfig(32, 16, 2))
    >>> q.scales, q.shifts, q.codes[0, [0, 16]]
    (array([[1.]], dtype=float16), array([[0, 3]], dtype=uint8), array([7, 4], dtype=int8))
    """
    steps = quantizer_steps(fp16_bits_of(x, name), config, name=name)
    return HGQTensor(
        codes=steps.codes.astype(np.int8),
        scales=FP16.from_bits(steps.scale_bits),
        shifts=steps.shifts.astype(np.uint8),
        config=config)
