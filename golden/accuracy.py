"""Output accuracy of the quantization schemes against a float64 reference.

:data:`SCHEMES` are the schemes of the single-layer tables (``sevedo run``).
:data:`MODEL_SCHEMES` add the baselines of the whole-model comparison
(:mod:`golden.model_accuracy`): each one quantizes a layer once
(:func:`compile_model_scheme`) and then runs it on any activations, bias
included, like a linear layer of the model.
"""

from dataclasses import dataclass

import numpy as np

from .compiler import CompiledLayer, CompilerConfig, compile_layer, run_layer
from .formats import FP32, MXINT4, BlockScaledFormat, round_half_even_saturate
from .hgq import HGQConfig, HGQTensor, check_matrix, quantize_hgq, quantize_per_tensor
from .lowrank import SVDMPConfig
from .opcost import OpCounts, layer_op_counts, op_counts
from .residual import residual_matmul

__all__ = [
    "sqnr_db", "SCHEMES", "LOWRANK_SCHEMES", "compile_scheme", "scheme_outputs", "compare_schemes",
    "MODEL_SCHEMES", "DEFAULT_SCHEME", "REFERENCE_SCHEME", "ALPHA_GRID", "MXTensor", "quantize_mx", "mx_matmul",
    "SchemeLayer", "search_alpha", "compile_model_scheme", "fp_multiplies", "compare_layer_schemes",
]

# Scheme names, in the order of the accuracy tables.
SCHEMES = (
    "int4 per-tensor",
    "int4 group-64 fp16",
    "hgq",
    "hgq + svd",
    "hgq + smooth + svd",
    "hgq + smooth + svd-mp",
)

# The schemes with a low-rank path, mapped to (smoothing on, SVD-MP on).
LOWRANK_SCHEMES = {
    "hgq + svd": (False, False),
    "hgq + smooth + svd": (True, False),
    "hgq + smooth + svd-mp": (True, True),
}


def sqnr_db(reference, approximation):
    """Return the signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - approx)^2)`` in dB.

    >>> round(sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 4.5])), 2)
    20.0
    """
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(approximation, dtype=np.float64)) ** 2)
    if noise == 0:
        return float("inf")
    return float(10.0 * np.log10(np.sum(reference ** 2) / noise))


def compile_scheme(scheme, x, weight, bias=None, quant=HGQConfig(), rank=32, alpha=0.5, *, svdmp=SVDMPConfig()):
    """Compile ``weight`` as one of the schemes with a low-rank path.

    Parameters
    ----------
    scheme : str
        A key of :data:`LOWRANK_SCHEMES`.
    x : array_like, shape (T, K)
        Calibration activations for the smoothing factors.
    weight : array_like, shape (N, K)
    bias : array_like, shape (N,), optional
    quant : HGQConfig
    rank : int
    alpha : float or None
        Smoothing strength of the smoothed schemes; None turns smoothing off
        in them too.
    svdmp : SVDMPConfig
        Significand widths of the ``svd-mp`` scheme. The other schemes keep
        every component at FP16 (``SVDMPConfig.all_wide()``).

    Returns
    -------
    golden.compiler.CompiledLayer

    Raises
    ------
    ValueError
        If ``scheme`` has no low-rank path, or as
        :func:`golden.compiler.compile_layer`.
    """
    if scheme not in LOWRANK_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(map(repr, LOWRANK_SCHEMES))}, not {scheme!r}")
    smoothed, mixed = LOWRANK_SCHEMES[scheme]
    config = CompilerConfig(rank=rank, alpha=alpha if smoothed else None, quant=quant,
                            svdmp=svdmp if mixed else SVDMPConfig.all_wide())
    return compile_layer(weight, bias, x, config)


def scheme_outputs(x, weight, quant=HGQConfig(), rank=32, alpha=0.5, *, svdmp=SVDMPConfig(), schemes=SCHEMES):
    """Return ``{scheme: Y}`` for the ``schemes`` (all of :data:`SCHEMES` by default), without bias.

    Every group scheme runs the exact RMC numerics of
    :func:`golden.residual.residual_matmul`, and every low-rank scheme the
    bit-exact low-rank path of :func:`golden.lowrank.lowrank_matmul`.
    ``svdmp`` sets the significand widths of ``hgq + smooth + svd-mp``.

    Raises
    ------
    ValueError
        If a name in ``schemes`` is not in :data:`SCHEMES`, or on invalid
        operands.
    """
    unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
    if unknown:
        raise ValueError(f"schemes must be names from SCHEMES, not {unknown[0]!r}")
    x = check_matrix("x", x)
    weight = check_matrix("weight", weight)
    group64 = HGQConfig.conventional(64)
    outputs = {}
    for scheme in schemes:
        if scheme == "int4 per-tensor":
            y = quantize_per_tensor(x, name="x") @ quantize_per_tensor(weight, name="weight").T
        elif scheme == "int4 group-64 fp16":
            y = residual_matmul(quantize_hgq(x, group64), quantize_hgq(weight, group64))
        elif scheme == "hgq":
            y = residual_matmul(quantize_hgq(x, quant), quantize_hgq(weight, quant))
        else:
            layer = compile_scheme(scheme, x, weight, None, quant, rank, alpha, svdmp=svdmp)
            y = run_layer(layer, x).output
        outputs[scheme] = y
    return outputs


def compare_schemes(x, weight, quant=HGQConfig(), rank=32, alpha=0.5, *, svdmp=SVDMPConfig(), schemes=SCHEMES):
    """Return ``{scheme: SQNR in dB}`` of ``Y = X W^T`` against float64, for the ``schemes``."""
    reference = check_matrix("x", x) @ check_matrix("weight", weight).T
    outputs = scheme_outputs(x, weight, quant, rank, alpha, svdmp=svdmp, schemes=schemes)
    return {name: sqnr_db(reference, y) for name, y in outputs.items()}


# Schemes of the whole-model comparison, in the order of its tables. The
# names of SCHEMES keep their meaning here.
MODEL_SCHEMES = (
    "int4 per-tensor",
    "int4 group-64 fp16",
    "int4 group-64 fp16 + smooth + svd",
    "mxint4 block-32",
    "int4 fine-group fp16",
    "hgq",
    "hgq + svd",
    "hgq + searched smooth + svd",
    "hgq + smooth + svd-mp",
)

# The accelerator's default configuration.
DEFAULT_SCHEME = "hgq + smooth + svd-mp"

# The scheme whose residual FP multiplies are the unit of the op-count ratios.
REFERENCE_SCHEME = "int4 group-64 fp16"

# Smoothing strengths that "hgq + searched smooth + svd" tries per layer.
ALPHA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)

# Group size of the "int4 group-64 fp16" schemes.
GROUP64 = 64


@dataclass(frozen=True, eq=False)
class MXTensor:
    """A matrix quantized row by row in a :class:`golden.formats.BlockScaledFormat`.

    Attributes
    ----------
    codes : ndarray of int8, shape (rows, K)
        Element codes.
    exponents : ndarray of int64, shape (rows, K / block)
        Shared exponent e of each block; its scale is ``2**e``.
    fmt : BlockScaledFormat
    """

    codes: np.ndarray
    exponents: np.ndarray
    fmt: BlockScaledFormat

    @property
    def shape(self):
        return self.codes.shape

    def dequantize(self):
        """Return ``codes * 2**e`` as float64, in which every product is exact."""
        return np.ldexp(self.codes.astype(np.float64), np.repeat(self.exponents, self.fmt.block, axis=1))


def quantize_mx(x, fmt=MXINT4, *, name="x"):
    """Quantize the rows of ``x`` in blocks of ``fmt.block`` with shared power-of-two scales.

    The shared exponent of each block is :meth:`BlockScaledFormat.shared_exponents`
    of its amax, and each code is ``saturate(rne(x / 2**e))``. The division
    by a power of two is exact in float64.

    Raises
    ------
    ValueError
        If ``x`` is not a finite non-empty matrix, if K is not a multiple of
        ``fmt.block``, or if a shared exponent exceeds the E8M0 range.

    Examples
    --------
    >>> q = quantize_mx(np.r_[np.full(31, 0.25), -1.0][None])
    >>> q.exponents, q.codes[0, [0, 31]]
    (array([[-2]]), array([ 1, -4], dtype=int8))
    """
    x = check_matrix(name, x)
    rows, k = x.shape
    if k % fmt.block:
        raise ValueError(f"{name} row length K must be a multiple of the MX block ({fmt.block}), not {k}")
    amax = np.abs(x).reshape(rows, k // fmt.block, fmt.block).max(axis=2)
    exponents = fmt.shared_exponents(amax, name=name)
    ratios = np.ldexp(x, -np.repeat(exponents, fmt.block, axis=1))
    return MXTensor(codes=round_half_even_saturate(ratios, fmt.element), exponents=exponents, fmt=fmt)


def mx_matmul(xq, wq):
    """Return ``X W^T`` of two block-scaled tensors, float32 (T, N).

    Per output and block b, the integer dot product ``P_b`` of the codes is
    exact. ``P_b * 2**(e_x + e_w)`` is exact in float64 and rounds once to
    FP32; the block terms are then added in FP32 in ascending block order,
    from +0. The scale is a power of two, so a block needs an exponent add,
    an INT-to-FP conversion and an FP32 add, but no FP multiply.

    Raises
    ------
    ValueError
        If the operands differ in format or in K.
    """
    if xq.fmt != wq.fmt:
        raise ValueError(f"xq and wq must share one format, not {xq.fmt} and {wq.fmt}")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq and wq must have the same K, not {xq.shape[1]} and {wq.shape[1]}")
    block = xq.fmt.block
    x = xq.codes.astype(np.float64)
    w = wq.codes.astype(np.float64)
    y = np.zeros((xq.shape[0], wq.shape[0]), dtype=FP32.dtype)
    for b in range(xq.shape[1] // block):
        columns = slice(b * block, (b + 1) * block)
        # At most `block` products of magnitude <= 64: exact in float64.
        partial = x[:, columns] @ w[:, columns].T
        term = np.ldexp(partial, xq.exponents[:, b, None] + wq.exponents[None, :, b])
        y = y + term.astype(FP32.dtype)
    return y


def _lowrank_config(scheme, quant, rank, alpha, svdmp):
    """Return the CompilerConfig of a model scheme with a low-rank path, or None for the others."""
    if scheme == "int4 group-64 fp16 + smooth + svd":
        return CompilerConfig(rank=rank, alpha=alpha, quant=HGQConfig.conventional(GROUP64),
                              svdmp=SVDMPConfig.all_wide())
    if scheme in LOWRANK_SCHEMES:
        smoothed, mixed = LOWRANK_SCHEMES[scheme]
        return CompilerConfig(rank=rank, alpha=alpha if smoothed else None, quant=quant,
                              svdmp=svdmp if mixed else SVDMPConfig.all_wide())
    return None


@dataclass(frozen=True, eq=False)
class SchemeLayer:
    """One linear layer quantized with a scheme of :data:`MODEL_SCHEMES`.

    Attributes
    ----------
    scheme : str
    shape : tuple of int
        (N, K) of the weight.
    bias : ndarray of float32, shape (N,), or None
    compiled : golden.compiler.CompiledLayer or None
        The compiled layer of a scheme with a low-rank path.
    weight_q : HGQTensor, MXTensor, ndarray or None
        The quantized weight of a scheme without a low-rank path; the
        dequantized float64 weight for ``int4 per-tensor``.
    alpha : float or None
        Smoothing strength of a smoothed scheme.
    alpha_sqnr_db : dict of float to float, or None
        Calibration SQNR of every alpha tried by ``hgq + searched smooth + svd``.
    """

    scheme: str
    shape: tuple
    bias: np.ndarray | None
    compiled: CompiledLayer | None = None
    weight_q: object = None
    alpha: float | None = None
    alpha_sqnr_db: dict | None = None

    def products(self, x):
        """Return ``X W^T`` of the scheme, float32 (T, N), without the bias.

        The schemes with a low-rank path run :func:`golden.compiler.run_layer`
        and return ``fp32(Y_lr + Y_res)``. The group schemes quantize ``x``
        per token and run the RMC numerics of
        :func:`golden.residual.residual_matmul`, ``mxint4 block-32`` runs
        :func:`mx_matmul`, and ``int4 per-tensor`` multiplies the dequantized
        operands in float64 and rounds the product to FP32.
        """
        return self.outputs(x)[0]

    def outputs(self, x):
        """Return ``(products, output)``: ``X W^T`` and ``fp32(X W^T + b)``, both float32 (T, N).

        A layer without bias adds +0, as :func:`golden.compiler.run_layer` does.
        """
        if self.compiled is not None:
            result = run_layer(self.compiled, x)
            return result.lowrank + result.residual, result.output
        x = check_matrix("x", x)
        if x.shape[1] != self.shape[1]:
            raise ValueError(f"x must have K = {self.shape[1]} columns, not {x.shape[1]}")
        if isinstance(self.weight_q, HGQTensor):
            products = residual_matmul(quantize_hgq(x, self.weight_q.config), self.weight_q)
        elif isinstance(self.weight_q, MXTensor):
            products = mx_matmul(quantize_mx(x, self.weight_q.fmt), self.weight_q)
        else:
            products = (quantize_per_tensor(x) @ self.weight_q.T).astype(FP32.dtype)
        bias = self.bias if self.bias is not None else np.zeros(self.shape[0], dtype=FP32.dtype)
        return products, products + bias

    def op_counts(self, tokens=1):
        """Count the operations of ``tokens`` tokens, as :mod:`golden.opcost` does for the accelerator.

        The low-rank schemes and the group schemes count as
        :func:`golden.opcost.op_counts`. ``int4 per-tensor`` needs one
        INT-to-FP conversion and one FP32 multiply per output, and its one
        scale product per layer is not counted. ``mxint4 block-32`` needs one
        INT-to-FP conversion and one FP32 add per block and output, and no
        FP multiply, because its scales are powers of two.
        """
        n, k = self.shape
        outputs = tokens * n
        bias_adds = outputs if self.bias is not None else 0
        if self.compiled is not None:
            return layer_op_counts(self.compiled, tokens)
        if isinstance(self.weight_q, HGQTensor):
            return op_counts(tokens, n, k, [], quant=self.weight_q.config, bias=self.bias is not None)
        if isinstance(self.weight_q, MXTensor):
            blocks = outputs * (k // self.weight_q.fmt.block)
            return OpCounts(residual_fp32_adds=blocks, int_to_fp32=blocks, int4_macs=outputs * k,
                            output_fp32_adds=bias_adds)
        return OpCounts(residual_fp32_multiplies=outputs, int_to_fp32=outputs, int4_macs=outputs * k,
                        output_fp32_adds=bias_adds)


def fp_multiplies(counts):
    """Return the FP multiplies of the residual path: ``fp32(A) * scale`` plus the scale products."""
    return counts.residual_fp32_multiplies + counts.scale_products


def search_alpha(x_calibration, weight, config, alpha_grid=ALPHA_GRID):
    """Compile ``weight`` with each smoothing strength of ``alpha_grid`` and keep the best.

    Every candidate runs :func:`golden.compiler.run_layer` on the calibration
    activations, and its output SQNR against ``X W^T`` in float64 decides.
    Of equal SQNRs the first alpha of the grid wins.

    Parameters
    ----------
    x_calibration : array_like, shape (T, K)
    weight : array_like, shape (N, K)
    config : CompilerConfig
        Settings of every candidate; its ``alpha`` is replaced.
    alpha_grid : sequence of float
        Candidates, each in [0, 1].

    Returns
    -------
    alpha : float
    sqnr : dict of float to float
        Calibration SQNR in dB of every candidate.

    Raises
    ------
    ValueError
        If ``alpha_grid`` is empty, or as :func:`golden.compiler.compile_layer`
        and :func:`golden.compiler.run_layer`.
    """
    if len(alpha_grid) == 0:
        raise ValueError("alpha_grid must contain at least one alpha")
    x_calibration = check_matrix("x_calibration", x_calibration)
    weight = check_matrix("weight", weight)
    reference = x_calibration @ weight.T
    sqnr = {}
    for alpha in alpha_grid:
        candidate = CompilerConfig(rank=config.rank, alpha=alpha, quant=config.quant, svdmp=config.svdmp)
        layer = compile_layer(weight, None, x_calibration, candidate)
        sqnr[alpha] = sqnr_db(reference, run_layer(layer, x_calibration).output)
    best = max(alpha_grid, key=lambda alpha: sqnr[alpha])
    return best, sqnr


def _check_bias(bias, n):
    """Return ``bias`` as float32 after checking its shape (N,) and that it is finite."""
    bias = np.asarray(bias)
    if bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), not {bias.shape}")
    if not np.issubdtype(bias.dtype, np.number):
        raise ValueError(f"bias must hold numbers, not dtype {bias.dtype}")
    bad = ~np.isfinite(bias)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(f"bias must be finite, but bias[{index}] is {bias[index]} "
                         f"({int(bad.sum())} non-finite values in all)")
    return bias.astype(FP32.dtype)


def compile_model_scheme(scheme, weight, bias=None, x_calibration=None, *, quant=HGQConfig(), rank=32, alpha=0.5,
                         svdmp=SVDMPConfig(), alpha_grid=ALPHA_GRID):
    """Quantize one linear layer with a scheme of :data:`MODEL_SCHEMES`.

    Parameters
    ----------
    scheme : str
    weight : array_like, shape (N, K)
    bias : array_like, shape (N,), optional
    x_calibration : array_like, shape (T, K), optional
        Calibration activations: they set the smoothing factors and, for
        ``hgq + searched smooth + svd``, choose alpha from ``alpha_grid``.
    quant : HGQConfig
        The HGQ configuration; ``int4 fine-group fp16`` uses one FP16 scale
        per ``quant.fine_group`` elements.
    rank : int
    alpha : float or None
        Smoothing strength of ``int4 group-64 fp16 + smooth + svd`` and
        ``hgq + smooth + svd-mp``; None turns smoothing off in them.
    svdmp : SVDMPConfig
        Significand widths of ``hgq + smooth + svd-mp``; the other low-rank
        schemes keep every component at FP16.
    alpha_grid : sequence of float

    Returns
    -------
    SchemeLayer

    Raises
    ------
    ValueError
        If ``scheme`` is not in :data:`MODEL_SCHEMES`, or on invalid operands
        (as :func:`golden.compiler.compile_layer`).
    """
    if scheme not in MODEL_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(map(repr, MODEL_SCHEMES))}, not {scheme!r}")
    weight = check_matrix("weight", weight)
    n, k = weight.shape
    if bias is not None:
        bias = _check_bias(bias, n)
    if scheme == "hgq + searched smooth + svd":
        if x_calibration is None:
            raise ValueError(f"x_calibration is required by {scheme!r}")
        config = CompilerConfig(rank=rank, alpha=None, quant=quant, svdmp=SVDMPConfig.all_wide())
        quant.check_length(k, name="weight K")
        best, sqnr = search_alpha(x_calibration, weight, config, alpha_grid)
        config = CompilerConfig(rank=rank, alpha=best, quant=quant, svdmp=config.svdmp)
        compiled = compile_layer(weight, bias, x_calibration, config)
        return SchemeLayer(scheme, (n, k), compiled.bias, compiled=compiled, alpha=best, alpha_sqnr_db=sqnr)
    config = _lowrank_config(scheme, quant, rank, alpha, svdmp)
    if config is not None:
        compiled = compile_layer(weight, bias, x_calibration, config)
        return SchemeLayer(scheme, (n, k), compiled.bias, compiled=compiled, alpha=config.alpha)

    if scheme == "int4 per-tensor":
        weight_q = quantize_per_tensor(weight, name="weight")
    elif scheme == "mxint4 block-32":
        weight_q = quantize_mx(weight, MXINT4, name="weight")
    else:
        group = {"int4 group-64 fp16": HGQConfig.conventional(GROUP64),
                 "int4 fine-group fp16": HGQConfig.conventional(quant.fine_group), "hgq": quant}[scheme]
        weight_q = quantize_hgq(weight, group, name="weight")
    return SchemeLayer(scheme, (n, k), bias, weight_q=weight_q)


def compare_layer_schemes(x, weight, bias=None, x_calibration=None, schemes=MODEL_SCHEMES, **options):
    """Compare :data:`MODEL_SCHEMES` on one layer: SQNR of ``X W^T`` against float64, and op counts.

    Parameters
    ----------
    x : array_like, shape (T, K)
        Evaluation activations.
    weight, bias
        The layer.
    x_calibration : array_like, shape (T', K), optional
        Calibration activations; ``x`` when omitted.
    schemes : sequence of str
    **options
        Keyword arguments of :func:`compile_model_scheme` (``quant``,
        ``rank``, ``alpha``, ``svdmp``, ``alpha_grid``).

    Returns
    -------
    dict of str to dict
        Per scheme: ``sqnr_db``, ``alpha`` (None for an unsmoothed scheme),
        and per token ``fp_multiplies``, ``int_to_fp32`` and
        ``lowrank_slices``.
    """
    x = check_matrix("x", x)
    weight = check_matrix("weight", weight)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must have K = {weight.shape[1]} columns like the weight, not {x.shape[1]}")
    calibration = x if x_calibration is None else x_calibration
    reference = x @ weight.T
    rows = {}
    for scheme in schemes:
        layer = compile_model_scheme(scheme, weight, bias, calibration, **options)
        counts = layer.op_counts()
        rows[scheme] = {
            "sqnr_db": sqnr_db(reference, layer.products(x)),
            "alpha": layer.alpha,
            "fp_multiplies": fp_multiplies(counts),
            "int_to_fp32": counts.int_to_fp32,
            "lowrank_slices": counts.lowrank_slices,
        }
    return rows
