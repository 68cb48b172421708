"""Hierarchical group quantization (HGQ) and its conventional baseline.

A row of K values is cut into coarse groups of ``coarse_group`` elements, each
cut into fine groups of ``fine_group`` elements. A coarse group has one FP16
scale ``S``; a fine group inside it has only a shift code ``s`` in
``0 .. 2**shift_bits - 1``, so its elements have the scale ``S * 2**-s``.
Conventional group quantization, one FP16 scale per group of G elements, is
the special case ``HGQConfig(G, G, shift_bits=0)``; the RTL generator builds
both from the same description.

Weights are quantized offline per output channel (a row of W, N x K) and
activations per token (a row of X, T x K).
"""

from dataclasses import dataclass, field

import numpy as np

from .formats import FP16, INT4, round_half_even_saturate

__all__ = [
    "MAX_SHIFT_BITS", "HGQConfig", "HGQTensor", "quantize_hgq", "search_hgq",
    "SCALE_RATIOS", "quantize_per_tensor", "check_matrix",
]

# Above 4 shift bits a fine group's scale would drop by more than 2**15
# relative to its coarse scale, where its INT4 codes carry no information.
MAX_SHIFT_BITS = 4


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class HGQConfig:
    """Group sizes and shift width of hierarchical group quantization.

    Parameters
    ----------
    coarse_group : int
        Elements per coarse group (one FP16 scale each), a multiple of
        ``fine_group``.
    fine_group : int
        Elements per fine group (one shift code each).
    shift_bits : int
        Width of a fine group's shift code, 0 to ``MAX_SHIFT_BITS``. With 0,
        every fine group uses its coarse scale unchanged.

    Raises
    ------
    ValueError
        If a parameter breaks one of the rules above.
    """

    coarse_group: int = 128
    fine_group: int = 16
    shift_bits: int = 2
    element: object = field(default=INT4, repr=False)
    scale: object = field(default=FP16, repr=False)

    def __post_init__(self):
        _check_positive_int("fine_group", self.fine_group)
        _check_positive_int("coarse_group", self.coarse_group)
        if self.coarse_group % self.fine_group:
            raise ValueError(
                f"coarse_group must be a multiple of fine_group ({self.fine_group}), "
                f"not {self.coarse_group}")
        if (isinstance(self.shift_bits, bool) or not isinstance(self.shift_bits, (int, np.integer))
                or not 0 <= self.shift_bits <= MAX_SHIFT_BITS):
            raise ValueError(
                f"shift_bits must be an integer from 0 to {MAX_SHIFT_BITS}, not {self.shift_bits!r}")

    @classmethod
    def conventional(cls, group):
        """Return the configuration of plain group quantization: one FP16 scale per ``group``."""
        return cls(coarse_group=group, fine_group=group, shift_bits=0)

    @property
    def max_shift(self):
        """Largest shift code, ``smax = 2**shift_bits - 1``."""
        return (1 << self.shift_bits) - 1

    @property
    def fine_per_coarse(self):
        return self.coarse_group // self.fine_group

    @property
    def is_conventional(self):
        return self.coarse_group == self.fine_group and self.shift_bits == 0

    def check_length(self, k, name="K"):
        """Raise ValueError unless a row of ``k`` elements splits into whole coarse groups."""
        if k % self.coarse_group:
            raise ValueError(
                f"{name} must be a multiple of coarse_group ({self.coarse_group}), not {k}; "
                f"pad the input channels with zeros up to {-(-k // self.coarse_group) * self.coarse_group}")


def check_matrix(name, array):
    """Return ``array`` as a float64 matrix after checking that it is 2-D, non-empty and finite."""
    array = np.asarray(array)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, not shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, not dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} must be finite, but {name}[{row}, {col}] is {array[row, col]} "
            f"({int(bad.sum())} non-finite values in all)")
    return array


@dataclass(frozen=True, eq=False)
class HGQTensor:
    """A matrix quantized with HGQ, row by row.

    Attributes
    ----------
    codes : ndarray of int8, shape (rows, K)
        INT4 element codes.
    scales : ndarray of float16, shape (rows, K / coarse_group)
        Coarse scales, finite and non-negative.
    shifts : ndarray of uint8, shape (rows, K / fine_group)
        Fine shift codes.
    config : HGQConfig
    """

    codes: np.ndarray
    scales: np.ndarray
    shifts: np.ndarray
    config: HGQConfig

    def __post_init__(self):
        cfg = self.config
        codes, scales, shifts = self.codes, self.scales, self.shifts
        if codes.ndim != 2 or codes.size == 0:
            raise ValueError(f"codes must be a non-empty 2-D array, not shape {codes.shape}")
        rows, k = codes.shape
        cfg.check_length(k)
        expected = {"scales": (rows, k // cfg.coarse_group), "shifts": (rows, k // cfg.fine_group)}
        for name, array in (("scales", scales), ("shifts", shifts)):
            if array.shape != expected[name]:
                raise ValueError(f"{name} must have shape {expected[name]}, not {array.shape}")
        if codes.min() < cfg.element.min or codes.max() > cfg.element.max:
            raise ValueError(
                f"codes must lie in [{cfg.element.min}, {cfg.element.max}], "
                f"not [{codes.min()}, {codes.max()}]")
        if shifts.min() < 0 or shifts.max() > cfg.max_shift:
            raise ValueError(f"shifts must lie in [0, {cfg.max_shift}], not [{shifts.min()}, {shifts.max()}]")
        if scales.dtype != np.float16:
            raise ValueError(f"scales must be float16, not {scales.dtype}")
        if not np.all(np.isfinite(scales)) or np.any(np.signbit(scales)):
            raise ValueError("scales must be finite and non-negative (+0 included)")

    @property
    def shape(self):
        return self.codes.shape

    def select_rows(self, rows):
        """Return the tensor of the rows ``rows`` (a slice or index array)."""
        return HGQTensor(self.codes[rows], self.scales[rows], self.shifts[rows], self.config)

    def element_scales(self):
        """Return the scale of every element, ``S * 2**-s``, as float64 (exact)."""
        cfg = self.config
        coarse = np.repeat(self.scales.astype(np.float64), cfg.coarse_group, axis=1)
        fine = np.repeat(np.ldexp(1.0, -self.shifts.astype(np.int64)), cfg.fine_group, axis=1)
        return coarse * fine

    def dequantize(self):
        """Return ``codes * S * 2**-s`` as float64; every product is exact."""
        return self.codes.astype(np.float64) * self.element_scales()


def _fine_shifts(coarse_amax, fine_amax, max_shift):
    """Return the largest s in [0, max_shift] with ``fine_amax * 2**s <= coarse_amax``.

    Scaling by a power of two is exact in float64, so the comparison is exact
    and no logarithm is needed. An all-zero fine group gets ``max_shift``.
    """
    shifts = np.zeros(fine_amax.shape, dtype=np.uint8)
    for s in range(1, max_shift + 1):
        shifts += np.ldexp(fine_amax, s) <= coarse_amax[..., None]
    return shifts


def quantize_hgq(x, config=HGQConfig(), *, name="x"):
    """Quantize the rows of ``x`` with HGQ.

    Per row and coarse group ``c`` (all arithmetic in float64):

    1. ``amax_c = max |x|`` over the group; ``S = fp16(amax_c / 7)``, rounded
       to nearest even. A zero group has ``S = 0``.
    2. Per fine group ``j``: ``s = max{s in 0..smax : amax_j * 2**s <= amax_c}``.
    3. ``q = saturate(round_half_even(x * 2**s / S))`` into [-8, 7]; ``q = 0``
       where ``S = 0`` (this includes groups whose scale underflows FP16).

    Parameters
    ----------
    x : array_like, shape (rows, K)
        Finite values; K a multiple of ``config.coarse_group``.
    config : HGQConfig
    name : str
        Name used in error messages.

    Returns
    -------
    HGQTensor

    Raises
    ------
    ValueError
        If ``x`` is empty, not 2-D or not finite, if K is not a multiple of the
        coarse group, or if a coarse scale exceeds the largest FP16 value.

    Examples
    --------
    >>> q = quantize_hgq(np.r_[np.full(16, 7.0), np.full(16, 0.5)][None], HGQConfig(32, 16, 2))
    >>> q.scales, q.shifts, q.codes[0, [0, 16]]
    (array([[1.]], dtype=float16), array([[0, 3]], dtype=uint8), array([7, 4], dtype=int8))
    """
    x = check_matrix(name, x)
    rows, k = x.shape
    config.check_length(k, name=f"{name} row length K")
    coarse_count = k // config.coarse_group
    element_max = config.element.max

    coarse_amax = np.abs(x).reshape(rows, coarse_count, config.coarse_group).max(axis=2)
    with np.errstate(over="ignore"):
        scales = (coarse_amax / element_max).astype(config.scale.dtype)
    if not np.all(np.isfinite(scales)):
        row, group = np.argwhere(~np.isfinite(scales))[0]
        raise ValueError(
            f"{name} coarse scale amax/{element_max} = {coarse_amax[row, group] / element_max:.6g} "
            f"(row {row}, coarse group {group}) exceeds the FP16 maximum {config.scale.max_finite:g}; "
            f"scale the tensor down before quantizing")

    fine_amax = np.abs(x).reshape(rows, coarse_count, config.fine_per_coarse, config.fine_group).max(axis=3)
    shifts = _fine_shifts(coarse_amax, fine_amax, config.max_shift).reshape(rows, -1)

    element_scales = (np.repeat(scales.astype(np.float64), config.coarse_group, axis=1)
                      * np.repeat(np.ldexp(1.0, -shifts.astype(np.int64)), config.fine_group, axis=1))
    codes = _round_codes(x, element_scales, config.element)
    return HGQTensor(codes=codes, scales=scales, shifts=shifts, config=config)


def _round_codes(x, element_scales, element):
    """Return the codes ``saturate(round_half_even(x / scale))``, and 0 where the scale is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(element_scales > 0, x / element_scales, 0.0)
    return round_half_even_saturate(ratios, element)


# Coarse scales that search_hgq tries, as fractions of the amax rule's
# amax / 7. The first, 1, is the rule itself, which wins every tie.
SCALE_RATIOS = tuple(1.0 - 0.02 * step for step in range(26))

# Rows that search_hgq handles at a time, which bounds its temporary arrays.
_SEARCH_ROWS = 256


def search_hgq(x, config=HGQConfig(), *, channel_weights=None, ratios=SCALE_RATIOS, name="x"):
    """Quantize the rows of ``x`` with HGQ, choosing scales and shifts for the least weighted squared error.

    The tensor has the format of :func:`quantize_hgq`, so the RMC computes
    with it unchanged. Only the choice of values differs. Per row and coarse
    group, each coarse scale ``S = fp16(amax_c * ratio / 7)`` for ``ratio``
    in ``ratios`` is tried. Under each ``S``, every fine group takes the
    shift in ``0..max_shift`` whose codes, rounded half to even and
    saturated, give the least error ``sum_k w_k (q_k S 2**-s - x_k)**2``.
    The coarse group keeps the ``S`` with the least sum over its fine
    groups. The result of :func:`quantize_hgq` is the starting point and is
    replaced only by a strictly smaller error, so the error never exceeds
    that of the amax rule.

    Parameters
    ----------
    x : array_like, shape (rows, K)
        Finite values; K a multiple of ``config.coarse_group``.
    config : HGQConfig
    channel_weights : array_like, shape (K,), optional
        Non-negative weight ``w_k`` of each column's error, for example the
        mean square of the activations that multiply column k. Default: 1.
    ratios : sequence of float
        Coarse-scale fractions to try, each in (0, 1].
    name : str
        Name used in error messages.

    Raises
    ------
    ValueError
        As :func:`quantize_hgq`, if ``channel_weights`` has the wrong shape
        or a negative or non-finite value, or if a ratio is outside (0, 1].
    """
    best = quantize_hgq(x, config, name=name)
    x = check_matrix(name, x)
    rows, k = x.shape
    if channel_weights is None:
        channel_weights = np.ones(k)
    channel_weights = np.asarray(channel_weights, dtype=np.float64)
    if channel_weights.shape != (k,):
        raise ValueError(f"channel_weights must have shape ({k},) like the columns of {name}, "
                         f"not {channel_weights.shape}")
    invalid = np.flatnonzero(~(np.isfinite(channel_weights) & (channel_weights >= 0)))
    if invalid.size:
        column = invalid[0]
        raise ValueError(f"channel_weights must be finite and non-negative, not {channel_weights[column]:g} "
                         f"(column {column})")
    ratios = tuple(float(ratio) for ratio in ratios)
    if not ratios or any(not 0.0 < ratio <= 1.0 for ratio in ratios):
        raise ValueError(f"ratios must be a non-empty sequence of numbers in (0, 1], not {ratios}")

    codes, scales, shifts = best.codes.copy(), best.scales.copy(), best.shifts.copy()
    for start in range(0, rows, _SEARCH_ROWS):
        block = slice(start, min(start + _SEARCH_ROWS, rows))
        codes[block], scales[block], shifts[block] = _search_rows(
            x[block], best.select_rows(block), channel_weights, config, ratios)
    return HGQTensor(codes=codes, scales=scales, shifts=shifts, config=config)


def _search_rows(x, start, channel_weights, config, ratios):
    """Run the search of :func:`search_hgq` on a few rows; return their codes, scales and shifts."""
    rows, k = x.shape
    coarse_count, fine_count, fine = k // config.coarse_group, config.fine_per_coarse, config.fine_group
    values = x.reshape(rows, coarse_count, fine_count, fine)
    weights = channel_weights.reshape(1, coarse_count, fine_count, fine)

    def error(codes, element_scales):
        return ((codes * element_scales - values) ** 2 * weights).sum(axis=3)

    best_codes = start.codes.reshape(values.shape)
    best_shifts = start.shifts.reshape(rows, coarse_count, fine_count)
    best_scales = start.scales
    best_error = error(best_codes, start.element_scales().reshape(values.shape)).sum(axis=2)

    amax = np.abs(values).reshape(rows, coarse_count, -1).max(axis=2)
    for ratio in ratios:
        with np.errstate(over="ignore"):
            scale = (amax * ratio / config.element.max).astype(config.scale.dtype)
        scale64 = scale.astype(np.float64)
        fine_error = np.full((rows, coarse_count, fine_count), np.inf)
        fine_codes = np.zeros_like(best_codes)
        fine_shifts = np.zeros_like(best_shifts)
        for shift in range(config.max_shift + 1):
            element_scale = np.ldexp(scale64, -shift)[..., None, None]
            candidate = _round_codes(values, element_scale, config.element)
            candidate_error = error(candidate, element_scale)
            better = candidate_error < fine_error
            fine_error = np.where(better, candidate_error, fine_error)
            fine_shifts = np.where(better, shift, fine_shifts)
            fine_codes = np.where(better[..., None], candidate, fine_codes)
        total = fine_error.sum(axis=2)
        better = total < best_error
        best_error = np.where(better, total, best_error)
        best_codes = np.where(better[..., None, None], fine_codes, best_codes)
        best_shifts = np.where(better[..., None], fine_shifts, best_shifts)
        best_scales = np.where(better, scale, best_scales)
    return best_codes.reshape(rows, k), best_scales, best_shifts.reshape(rows, -1)


def quantize_per_tensor(x, element=INT4, *, name="x"):
    """Quantize and dequantize ``x`` with one float64 scale ``amax / 7`` for the whole tensor.

    Returns the dequantized float64 array; the baseline of the accuracy tables.
    """
    x = check_matrix(name, x)
    amax = np.abs(x).max()
    if amax == 0:
        return np.zeros_like(x)
    scale = amax / element.max
    return round_half_even_saturate(x / scale, element).astype(np.float64) * scale
