"""The low-rank path with SVD-guided mixed precision (SVD-MP), bit for bit.

Each of the r low-rank components gets a significand width from its singular
value, offline: the largest components keep the full FP16 significand and the
rest get a narrow one with the FP16 exponent range. A bit-sliced multiplier
then spends ``ceil(bits / slice_bits)`` slices (cycles) on a product with a
component of ``bits`` significand bits.

The path computes, for activations X' (T x K, FP16), ``L2`` (r x K) and
``L1`` (N x r), both rounded per component to its significand width:

1. ``h[t, i] = sum_k X'[t, k] * L2[i, k]`` over k in ascending order, from +0,
   with an FP32 add (round to nearest even) after each product;
2. ``h`` is rounded to FP16 (round to nearest even, overflow to Inf);
3. ``Y_lr[t, n] = sum_i h[t, i] * L1[n, i]`` over i in ascending order, from
   +0, with an FP32 add after each product.

Every product of two FP16 numbers is exact in FP32, so the adds are the only
FP32 roundings.
"""

from dataclasses import dataclass

import numpy as np

from .formats import FP16, FP32

__all__ = ["SVDMPConfig", "allocate_significands", "round_significand", "lowrank_matmul"]


@dataclass(frozen=True)
class SVDMPConfig:
    """Precision classes of the low-rank components.

    Parameters
    ----------
    wide_bits : int
        Significand bits, hidden bit included, of a wide component; at most
        the FP16 significand (11).
    narrow_bits : int
        Significand bits of a narrow component, 1 to ``wide_bits``.
    slice_bits : int
        Significand bits that the bit-sliced multiplier handles per slice.
    wide_count : int or None
        Policy "fixed count": the ``wide_count`` largest components are wide.
    energy_fraction : float or None
        Policy "energy": the fewest largest components whose squared singular
        values hold at least this fraction of the rank-r total are wide.
        Exactly one of ``wide_count`` and ``energy_fraction`` is set.

    Raises
    ------
    ValueError
        If a parameter breaks one of the rules above.
    """

    wide_bits: int = FP16.significand_bits
    narrow_bits: int = 4
    slice_bits: int = 4
    wide_count: int | None = 8
    energy_fraction: float | None = None

    def __post_init__(self):
        def is_int(value):
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if not is_int(self.wide_bits) or not 1 <= self.wide_bits <= FP16.significand_bits:
            raise ValueError(f"wide_bits must be an integer from 1 to {FP16.significand_bits}, not {self.wide_bits!r}")
        if not is_int(self.narrow_bits) or not 1 <= self.narrow_bits <= self.wide_bits:
            raise ValueError(
                f"narrow_bits must be an integer from 1 to wide_bits ({self.wide_bits}), not {self.narrow_bits!r}")
        if not is_int(self.slice_bits) or self.slice_bits < 1:
            raise ValueError(f"slice_bits must be a positive integer, not {self.slice_bits!r}")
        if (self.wide_count is None) == (self.energy_fraction is None):
            raise ValueError("set exactly one of wide_count and energy_fraction, not "
                             f"wide_count={self.wide_count!r} and energy_fraction={self.energy_fraction!r}")
        if self.wide_count is not None and (not is_int(self.wide_count) or self.wide_count < 0):
            raise ValueError(f"wide_count must be a non-negative integer, not {self.wide_count!r}")
        if self.energy_fraction is not None and (
                isinstance(self.energy_fraction, bool)
                or not isinstance(self.energy_fraction, (int, float, np.integer, np.floating))
                or not 0.0 < self.energy_fraction <= 1.0):
            raise ValueError(f"energy_fraction must be a number in (0, 1], not {self.energy_fraction!r}")

    @classmethod
    def all_wide(cls):
        """Return the configuration in which every component keeps the full FP16 significand."""
        return cls(narrow_bits=FP16.significand_bits, wide_count=0)

    def slices(self, bits):
        """Return the multiplier slices of a product with a ``bits``-bit significand."""
        return -(-np.asarray(bits) // self.slice_bits)


def allocate_significands(singular_values, config=SVDMPConfig()):
    """Allocate a significand width to each low-rank component from its singular value.

    Parameters
    ----------
    singular_values : array_like, shape (r,)
        Singular values of the r components, finite, non-negative and in
        descending order, as an SVD returns them.
    config : SVDMPConfig

    Returns
    -------
    ndarray of int64, shape (r,)
        ``config.wide_bits`` for the wide components, which are the first
        ones, and ``config.narrow_bits`` for the rest. Equal singular values
        at the boundary are split by position: the component with the lower
        index is wide. Under the energy policy, all-zero singular values make
        every component narrow.

    Raises
    ------
    ValueError
        If ``singular_values`` is not 1-D, not finite, negative or not in
        descending order.
    TypeError
        If ``config`` is not an SVDMPConfig.

    Examples
    --------

    >>> allocate_significands(np.array([4.0, 3.0, 1.0, 0.0]), SVDMPConfig(wide_count=1)).tolist()
    [11, 4, 4, 4]
    >>> allocate_significands(np.array([4.0, 3.0, 1.0, 0.0]), SVDMPConfig(wide_count=None, energy_fraction=0.9)).tolist()
    [11, 11, 4, 4]
    """
    if not isinstance(config, SVDMPConfig):
        raise TypeError(f"config must be an SVDMPConfig, not {type(config).__name__}")
    values = np.asarray(singular_values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"singular_values must be 1-D, not shape {values.shape}")
    for index, value in enumerate(values):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"singular_values must be finite and non-negative, but singular_values[{index}] is {value}")
        if index and value > values[index - 1]:
            raise ValueError(f"singular_values must be in descending order, but singular_values[{index}] = {value} "
                             f"is above singular_values[{index - 1}] = {values[index - 1]}")
    rank = len(values)
    if config.wide_count is not None:
        wide = min(config.wide_count, rank)
    else:
        energy = np.cumsum(values ** 2)
        total = energy[-1] if rank else 0.0
        # The relative margin of 1e-12 absorbs the rounding of the cumulative
        # sum, so a fraction that one prefix meets exactly selects that prefix.
        target = config.energy_fraction * total * (1 - 1e-12)
        wide = 0 if total == 0 else min(int(np.searchsorted(energy, target)) + 1, rank)
    bits = np.full(rank, config.narrow_bits, dtype=np.int64)
    bits[:wide] = config.wide_bits
    return bits


def round_significand(values, bits):
    """Round FP16 ``values`` to ``bits`` significand bits, to nearest even, in the FP16 exponent range.

    ``bits`` broadcasts against ``values``. Subnormals keep the FP16
    subnormal exponent, so their quantum is ``2**(-14 - (bits - 1))``.
    Results above the FP16 maximum become Inf, as IEEE rounding does.

    Raises
    ------
    ValueError
        If a width in ``bits`` is not an integer from 1 to 11.

    Examples
    --------
    >>> round_significand(np.array([1.0 + 2 ** -10, 1.5625, 65504], np.float16), 4).tolist()
    [1.0, 1.5, inf]
    """
    values = np.asarray(values, dtype=FP16.dtype).astype(np.float64)
    bits = np.asarray(bits)
    if not np.issubdtype(bits.dtype, np.integer):
        raise ValueError(f"bits must be integers from 1 to {FP16.significand_bits}, not dtype {bits.dtype}")
    if bits.size and (bits.min() < 1 or bits.max() > FP16.significand_bits):
        raise ValueError(f"bits must be integers from 1 to {FP16.significand_bits}, "
                         f"not values from {bits.min()} to {bits.max()}")
    bits = np.broadcast_to(bits.astype(np.int64), values.shape)
    _, exponent = np.frexp(values)
    # frexp gives |v| = m * 2**e with m in [0.5, 1); the leading bit weighs 2**(e - 1).
    leading = np.maximum(exponent - 1, 1 - FP16.bias)
    quantum = np.ldexp(1.0, leading - (bits - 1))
    rounded = np.rint(values / quantum) * quantum
    with np.errstate(over="ignore"):
        return rounded.astype(FP16.dtype)


# Elements of the product array that _accumulate builds at a time.
_ACCUMULATE_CHUNK = 1 << 22


def _accumulate(left, right):
    """Return ``sum_j left[:, j] * right[:, j]`` for every row pair, FP32, j ascending, from +0.

    ``left`` is (A, J) and ``right`` (B, J), both FP16; the result is (A, B).
    The product of two FP16 numbers is exact in FP32, so only the adds
    round. All products are formed in one broadcast multiply, then added in
    place in order of j.
    """
    # Column-major copies, so that the broadcast below reads and writes contiguous rows.
    left = np.ascontiguousarray(left.T, dtype=FP32.dtype)
    right = np.ascontiguousarray(right.T, dtype=FP32.dtype)
    j, a = left.shape
    b = right.shape[1]
    total = np.zeros((a, b), dtype=FP32.dtype)
    step = max(1, _ACCUMULATE_CHUNK // max(1, b * j))
    for start in range(0, a, step):
        block = total[start:start + step]
        products = left[:, start:start + step, None] * right[:, None, :]
        for plane in products:
            block += plane
    return total


def lowrank_matmul(x_fp16, l2, l1):
    """Compute the low-rank path in the order of operations of the module docstring.

    Parameters
    ----------
    x_fp16 : array_like, shape (T, K)
        Smoothed activations, FP16.
    l2 : array_like, shape (r, K)
        Down-projection factor, FP16, already rounded to its components'
        significand widths (:func:`round_significand`).
    l1 : array_like, shape (N, r)
        Up-projection factor, FP16, rounded likewise.

    Returns
    -------
    y_lr : ndarray of float32, shape (T, N)
        Output of the low-rank path; +0 everywhere when r = 0.
    h : ndarray of float16, shape (T, r)
        The intermediate ``X' L2^T`` after its rounding to FP16.

    Raises
    ------
    ValueError
        If the operands are not 2-D or their shapes do not match.

    Notes
    -----
    Float inputs of another dtype are cast to FP16 first, with one RNE
    rounding. An FP32 sum above the FP16 maximum makes ``h`` Inf, and the
    output then carries Inf or NaN; the caller checks for it.
    """
    x_fp16 = np.asarray(x_fp16, dtype=FP16.dtype)
    l2 = np.asarray(l2, dtype=FP16.dtype)
    l1 = np.asarray(l1, dtype=FP16.dtype)
    for name, array in (("x_fp16", x_fp16), ("l2", l2), ("l1", l1)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D, not shape {array.shape}")
    if l2.shape[1] != x_fp16.shape[1]:
        raise ValueError(f"l2 must have K = {x_fp16.shape[1]} columns like x_fp16, not {l2.shape[1]}")
    if l1.shape[1] != l2.shape[0]:
        raise ValueError(f"l1 must have r = {l2.shape[0]} columns like the rows of l2, not {l1.shape[1]}")
    if l2.shape[0] == 0:
        return (np.zeros((x_fp16.shape[0], l1.shape[0]), dtype=FP32.dtype),
                np.zeros((x_fp16.shape[0], 0), dtype=FP16.dtype))
    with np.errstate(over="ignore"):
        hidden = _accumulate(x_fp16, l2).astype(FP16.dtype)
    return _accumulate(hidden, l1), hidden
