"""Operation counts of one linear layer on the accelerator.

The counts follow the order of operations of the golden model for T tokens
of a layer with weight N x K, rank r and the HGQ configuration of the layer:

- low-rank multiplier slices: a product with component i takes
  ``ceil(b_i / slice_bits)`` slices of the bit-sliced multiplier, where
  ``b_i`` is the component's significand width. The down projection
  ``X' L2^T`` has ``T * K`` products per component and the up projection
  ``h L1^T`` has ``T * N``.
- FP32 adds: one per low-rank product (``T * r * K + T * N * r``), one per
  coarse group and output in the residual path (``T * N * K / Gc``), and
  per output the add ``Y_lr + Y_res`` (when r > 0) and the bias add (when
  the layer has a bias).
- FP16 scale products ``fp32(S_x) * fp32(S_w)`` and FP32 multiplies
  ``fp32(A_c) * scale`` in the residual path: one each per coarse group and
  output (``T * N * K / Gc``).
- INT-to-FP32 conversions of the coarse sums: ``T * N * K / Gc``.
- INT4 multiply-accumulates: ``T * N * K``.
- Fine-group shifts: ``T * N * K / Gf``.

These are operation counts, not energies or areas. A slice, an FP32 add and
an INT4 MAC cost different amounts of energy, which the counts do not model.
"""

from dataclasses import dataclass, fields

import numpy as np

from .formats import FP16
from .hgq import HGQConfig

__all__ = ["OpCounts", "op_counts", "layer_op_counts", "slice_ratio"]


@dataclass(frozen=True)
class OpCounts:
    """Operation counts of one layer, or the sum over several layers.

    ``OpCounts`` objects add field by field, so ``sum(counts, OpCounts())``
    totals a model. Every field is a count of operations, not an energy.

    Attributes
    ----------
    lowrank_down_slices : int
        Multiplier slices of ``X' L2^T``: ``T * K * sum_i slices(i)``.
    lowrank_up_slices : int
        Multiplier slices of ``h L1^T``: ``T * N * sum_i slices(i)``.
    lowrank_fp32_adds : int
        FP32 accumulations of the low-rank path: ``T * r * (K + N)``.
    residual_fp32_adds : int
        FP32 accumulations of the coarse groups: ``T * N * K / Gc``.
    output_fp32_adds : int
        ``Y_lr + Y_res`` (``T * N`` when r > 0) plus the bias add (``T * N``
        when there is a bias).
    scale_products : int
        FP16 x FP16 coarse-scale products: ``T * N * K / Gc``.
    residual_fp32_multiplies : int
        ``fp32(A_c) * scale``: ``T * N * K / Gc``.
    int_to_fp32 : int
        Conversions of the coarse sums to FP32: ``T * N * K / Gc``.
    int4_macs : int
        INT4 multiply-accumulates: ``T * N * K``.
    shifts : int
        Fine-group alignment shifts: ``T * N * K / Gf``.
    """

    lowrank_down_slices: int = 0
    lowrank_up_slices: int = 0
    lowrank_fp32_adds: int = 0
    residual_fp32_adds: int = 0
    output_fp32_adds: int = 0
    scale_products: int = 0
    residual_fp32_multiplies: int = 0
    int_to_fp32: int = 0
    int4_macs: int = 0
    shifts: int = 0

    def __add__(self, other):
        if not isinstance(other, OpCounts):
            return NotImplemented
        return OpCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def lowrank_slices(self):
        """Multiplier slices of both low-rank projections."""
        return self.lowrank_down_slices + self.lowrank_up_slices

    @property
    def fp32_adds(self):
        """FP32 adds of the whole layer."""
        return self.lowrank_fp32_adds + self.residual_fp32_adds + self.output_fp32_adds


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, not {value!r}")


def op_counts(tokens, n, k, significand_bits, *, slice_bits=4, quant=HGQConfig(), bias=True):
    """Count the operations of a layer given by its shapes.

    Parameters
    ----------
    tokens : int
        Tokens T, at least 1.
    n, k : int
        Output and input channels of the weight (N x K); K is a multiple of
        ``quant.coarse_group``.
    significand_bits : array_like of int, shape (r,)
        Significand width of each low-rank component, 1 to 11; empty for
        rank 0.
    slice_bits : int
        Significand bits per multiplier slice.
    quant : HGQConfig
        Group sizes of the residual path.
    bias : bool
        Whether the layer adds a bias.

    Returns
    -------
    OpCounts
        Operation counts, not energies.

    Raises
    ------
    ValueError
        If a count or width is out of range, or K is not a multiple of the
        coarse group.

    Examples
    --------
    >>> counts = op_counts(1, 8, 128, [11, 4], quant=HGQConfig())
    >>> counts.lowrank_down_slices, counts.lowrank_up_slices, counts.int4_macs
    (512, 32, 1024)
    """
    _check_count("tokens", tokens, 1)
    _check_count("n", n, 1)
    _check_count("k", k, 1)
    _check_count("slice_bits", slice_bits, 1)
    if not isinstance(quant, HGQConfig):
        raise TypeError(f"quant must be an HGQConfig, not {type(quant).__name__}")
    quant.check_length(k, name="k")
    bits = np.asarray(significand_bits)
    if bits.ndim != 1 or (bits.size and not np.issubdtype(bits.dtype, np.integer)):
        raise ValueError(f"significand_bits must be a 1-D array of integers, not {bits.dtype} of shape {bits.shape}")
    if bits.size and (bits.min() < 1 or bits.max() > FP16.significand_bits):
        raise ValueError(f"significand_bits must lie in [1, {FP16.significand_bits}], "
                         f"not [{bits.min()}, {bits.max()}]")

    rank = len(bits)
    slices = int(sum(-(-int(b) // slice_bits) for b in bits))
    outputs = tokens * n
    coarse = outputs * (k // quant.coarse_group)
    return OpCounts(
        lowrank_down_slices=tokens * k * slices,
        lowrank_up_slices=outputs * slices,
        lowrank_fp32_adds=tokens * rank * (k + n),
        residual_fp32_adds=coarse,
        output_fp32_adds=outputs * ((rank > 0) + bool(bias)),
        scale_products=coarse,
        residual_fp32_multiplies=coarse,
        int_to_fp32=coarse,
        int4_macs=outputs * k,
        shifts=outputs * (k // quant.fine_group),
    )


def layer_op_counts(layer, tokens, *, all_wide=False):
    """Count the operations of a compiled layer on ``tokens`` tokens.

    Parameters
    ----------
    layer : golden.compiler.CompiledLayer
    tokens : int
    all_wide : bool
        Count the low-rank slices as if every component kept the full FP16
        significand, the baseline without SVD-MP.

    Returns
    -------
    OpCounts
        Operation counts, not energies.
    """
    n, k = layer.shape
    bits = layer.significand_bits
    if all_wide:
        bits = np.full(len(bits), FP16.significand_bits)
    return op_counts(tokens, n, k, bits, slice_bits=layer.config.svdmp.slice_bits, quant=layer.config.quant,
                     bias=layer.bias is not None)


def slice_ratio(mixed, wide):
    """Return the low-rank multiplier slices of ``mixed`` divided by those of ``wide``.

    Both are :class:`OpCounts` or sequences of them, which are summed first,
    typically the SVD-MP and the all-wide counts of the same layers. The
    ratio compares operation counts, not energies.

    Raises
    ------
    ValueError
        If ``wide`` has no low-rank slices (rank 0), so the ratio is undefined.

    Examples
    --------
    >>> mixed = op_counts(1, 128, 128, [11] * 8 + [4] * 24)
    >>> wide = op_counts(1, 128, 128, [11] * 32)
    >>> slice_ratio(mixed, wide)
    0.5
    """
    if not isinstance(mixed, OpCounts):
        mixed = sum(mixed, OpCounts())
    if not isinstance(wide, OpCounts):
        wide = sum(wide, OpCounts())
    if wide.lowrank_slices == 0:
        raise ValueError("wide has no low-rank multiplier slices (rank 0), so the slice ratio is undefined")
    return mixed.lowrank_slices / wide.lowrank_slices
