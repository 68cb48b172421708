"""Number formats of the accelerator, defined once.

Every width and range that the RTL, the testbenches and the compiler use is
derived from the objects in this module. The rounding rule everywhere is IEEE
754 round to nearest, ties to even (RNE). See ``docs/numerics.md``.
"""

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IntFormat", "FloatFormat", "INT4", "FP16", "FP32",
    "signed_width", "round_half_even_saturate",
    "fp16_to_bits", "fp16_from_bits", "fp32_to_bits", "fp32_from_bits",
    "FP32_CANONICAL_NAN", "BlockScaledFormat", "MXINT4",
]


@dataclass(frozen=True)
class IntFormat:
    """Two's complement integer format.

    Parameters
    ----------
    bits : int
        Total width, sign bit included.
    """

    bits: int

    def __post_init__(self):
        if not isinstance(self.bits, int) or self.bits < 2:
            raise ValueError(f"IntFormat bits must be an integer of at least 2, not {self.bits!r}")

    @property
    def min(self):
        return -(1 << (self.bits - 1))

    @property
    def max(self):
        return (1 << (self.bits - 1)) - 1

    @property
    def product_min(self):
        """Most negative product of two codes of this format (min * max)."""
        return self.min * self.max

    @property
    def product_max(self):
        """Largest product of two codes of this format (min * min)."""
        return self.min * self.min


@dataclass(frozen=True)
class FloatFormat:
    """IEEE 754 binary interchange format.

    Parameters
    ----------
    name : str
    exp_bits : int
        Width of the biased exponent field.
    frac_bits : int
        Width of the stored fraction (trailing significand) field.
    dtype : numpy dtype
        NumPy type with exactly this format.
    """

    name: str
    exp_bits: int
    frac_bits: int
    dtype: type

    @property
    def width(self):
        return 1 + self.exp_bits + self.frac_bits

    @property
    def bias(self):
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_max(self):
        """Largest biased exponent field value (all ones: Inf and NaN)."""
        return (1 << self.exp_bits) - 1

    @property
    def significand_bits(self):
        """Significand precision, the hidden bit included."""
        return self.frac_bits + 1

    @property
    def max_finite(self):
        return float(np.finfo(self.dtype).max)

    @property
    def min_normal(self):
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self):
        return 2.0 ** (1 - self.bias - self.frac_bits)

    def to_bits(self, values):
        """Return the encodings of ``values`` (already of this format) as unsigned integers."""
        array = np.asarray(values, dtype=self.dtype)
        unsigned = {16: np.uint16, 32: np.uint32}[self.width]
        return array.view(unsigned).astype(np.int64)

    def from_bits(self, bits):
        """Return the values encoded by the unsigned integers ``bits``."""
        unsigned = {16: np.uint16, 32: np.uint32}[self.width]
        return np.asarray(bits, dtype=np.int64).astype(unsigned).view(self.dtype)


INT4 = IntFormat(4)
FP16 = FloatFormat("fp16", exp_bits=5, frac_bits=10, dtype=np.float16)
FP32 = FloatFormat("fp32", exp_bits=8, frac_bits=23, dtype=np.float32)

# The quiet NaN that every FP unit of the RTL produces.
FP32_CANONICAL_NAN = 0x7FC00000


def fp16_to_bits(values):
    return FP16.to_bits(values)


def fp16_from_bits(bits):
    return FP16.from_bits(bits)


def fp32_to_bits(values):
    return FP32.to_bits(values)


def fp32_from_bits(bits):
    return FP32.from_bits(bits)


def signed_width(lo, hi):
    """Return the fewest two's complement bits that hold every integer in ``[lo, hi]``.

    >>> signed_width(-8, 7), signed_width(-56, 64), signed_width(0, 0)
    (4, 8, 1)
    """
    if lo > hi:
        raise ValueError(f"signed_width needs lo <= hi, not lo={lo}, hi={hi}")
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def round_half_even_saturate(values, fmt=INT4):
    """Round ``values`` to integers, ties to even, then clamp to the range of ``fmt``.

    Rounding happens before saturation, so 7.5 rounds to 8 and then saturates
    to 7 in INT4, and -8.5 rounds to -8.

    >>> round_half_even_saturate(np.array([0.5, 1.5, -2.5, 7.5, -9.0, 3.49]))
    array([ 0,  2, -2,  7, -8,  3], dtype=int8)
    """
    rounded = np.rint(np.asarray(values, dtype=np.float64))
    return np.clip(rounded, fmt.min, fmt.max).astype(np.int8 if fmt.bits <= 8 else np.int64)


@dataclass(frozen=True)
class BlockScaledFormat:
    """Integer elements in blocks that share one power-of-two scale, as in OCP Microscaling (MX).

    The scale of a block is ``2**e``, stored as an E8M0 code ``e + 127``
    (8 exponent bits, no sign, no significand), so ``e`` lies in
    ``-127 .. 127``; code 255 is NaN in MX and never occurs here. The shared
    exponent follows the OCP MX v1.0 rule, not ``ceil(log2(amax / 7))``:

    ``e = floor(log2(amax)) - emax_elem``, where ``emax_elem`` is the
    exponent of the largest power of two among the element codes (2 for
    INT4, whose codes reach 4 = 2**2). This reads an INT4 code as a
    fixed-point value with 2 fraction bits, as MXINT8 reads its codes with
    6. ``amax / 2**e`` then lies in [4, 8), so the top of the block can round
    to 8 and saturate to 7.

    - A block whose ``e`` would be below -127 uses -127, so its small values
      round to 0. An all-zero block gets -127 and all codes 0.
    - A block whose ``e`` would exceed 127 is an error: MX would make its
      scale NaN.

    Element codes are ``saturate(rne(x / 2**e))`` into the element range,
    rounded to nearest with ties to even, before saturation
    (:func:`round_half_even_saturate`).

    Parameters
    ----------
    element : IntFormat
        Element format (two's complement).
    block : int
        Elements per shared scale.
    """

    element: IntFormat
    block: int
    scale_exp_bits: int = 8

    @property
    def scale_bias(self):
        return (1 << (self.scale_exp_bits - 1)) - 1

    @property
    def scale_emin(self):
        """Smallest shared exponent, ``-bias`` (-127 for E8M0)."""
        return -self.scale_bias

    @property
    def scale_emax(self):
        """Largest shared exponent, ``bias`` (127 for E8M0)."""
        return self.scale_bias

    @property
    def element_emax(self):
        """Exponent of the largest power of two among the element codes: ``bits - 2``."""
        return self.element.bits - 2

    def shared_exponents(self, amax, *, name="amax"):
        """Return the shared exponent ``e`` (int64) of blocks with the maxima ``amax`` (float64, >= 0).

        ``floor(log2(amax))`` comes from ``np.frexp`` and is exact. ``amax``
        of shape (rows, blocks) holds the blocks of each row of a tensor.

        Raises
        ------
        ValueError
            If an exponent exceeds :attr:`scale_emax`. The message gives
            ``name``, the block's index and its amax.

        Examples
        --------
        >>> MXINT4.shared_exponents(np.array([0.0, 1.0, 7.9, 2.0 ** -200]))
        array([-127,   -2,    0, -127])
        """
        amax = np.asarray(amax, dtype=np.float64)
        _, exponent = np.frexp(amax)
        # frexp gives amax = m * 2**exponent with m in [0.5, 1), so floor(log2(amax)) = exponent - 1.
        shared = np.where(amax > 0, exponent.astype(np.int64) - 1 - self.element_emax, self.scale_emin)
        if np.any(shared > self.scale_emax):
            index = tuple(int(i) for i in np.argwhere(shared > self.scale_emax)[0])
            where = f"row {index[0]}, block {index[1]}" if amax.ndim == 2 else f"block {index}"
            raise ValueError(
                f"{name} {where} has amax {amax[index]:.6g}, whose shared exponent {shared[index]} exceeds "
                f"the E8M0 maximum {self.scale_emax}; scale the tensor down")
        return np.maximum(shared, self.scale_emin)


# INT4 elements in blocks of 32 with an E8M0 scale: the MX block size, with
# the INT4 codes of the residual path.
MXINT4 = BlockScaledFormat(INT4, 32)
