"""Offline layer compiler: smoothing, truncated SVD split, SVD-MP rounding and HGQ of the residual.

For a linear layer ``Y = X W^T + b`` (X: T x K, W: N x K):

1. Smoothing: ``lambda_k = max|X[:, k]|**alpha / max|W[:, k]|**(1 - alpha)``;
   ``X' = X / lambda`` and ``W' = W * lambda``. The factors fold into the
   operation that produces X, so the accelerator never applies them.
2. SVD: ``W' = U S V^T``; ``L1 = U_r S_r`` (N x r), ``L2 = V_r^T`` (r x K).
3. SVD-guided mixed precision: both factors are rounded to FP16, and then
   component i (column i of L1, row i of L2) to the significand width that
   :func:`golden.lowrank.allocate_significands` gives its singular value.
4. The residual ``R = W' - L1 L2`` from the rounded factors, so that the
   residual path also carries the rounding error of the low-rank path.
5. HGQ of R per output channel. With ``weight_search`` (the default) the
   coarse scales and shifts are those of :func:`golden.hgq.search_hgq`,
   which minimizes the squared error of R weighted per column by the mean
   square of the smoothed calibration activations, an estimate of each
   column's share of the output error. Without calibration activations the
   weights are 1; without ``weight_search`` the amax rule of
   :func:`golden.hgq.quantize_hgq` sets them.

At run time the low-rank path computes ``(X' L2^T) L1^T`` bit for bit as
:func:`golden.lowrank.lowrank_matmul` and the residual path ``X'_q R_q^T`` as
the RMC; see :func:`run_layer`.
"""

from dataclasses import dataclass, field

import numpy as np

from .formats import FP16, FP32
from .hgq import HGQConfig, HGQTensor, check_matrix, quantize_hgq, search_hgq
from .lowrank import SVDMPConfig, allocate_significands, lowrank_matmul, round_significand
from .residual import residual_matmul

__all__ = [
    "CompilerConfig", "CompiledLayer", "smoothing_factors", "truncated_svd", "svd_split",
    "round_factors", "compile_layer", "run_layer", "LayerOutputs",
]


@dataclass(frozen=True)
class CompilerConfig:
    """Offline compiler settings.

    Parameters
    ----------
    rank : int
        Rank r of the low-rank path; 0 disables it.
    alpha : float or None
        SmoothQuant migration strength in [0, 1]; None disables smoothing.
    quant : HGQConfig
        Quantization of the residual weights and of the activations.
    svdmp : SVDMPConfig
        Significand widths of the low-rank components. The default keeps the
        8 largest components at the full FP16 significand and rounds the
        rest to 4 bits. ``SVDMPConfig.all_wide()`` keeps all of them at FP16.
    weight_search : bool
        Whether the residual weights' coarse scales and shifts come from the
        error search of :func:`golden.hgq.search_hgq` (True) or from the
        amax rule of :func:`golden.hgq.quantize_hgq` (False). Both give the
        same format, so the hardware runs either.

    Raises
    ------
    ValueError
        If ``rank`` or ``alpha`` is out of range.
    TypeError
        If ``quant`` or ``svdmp`` has the wrong type, or ``weight_search``
        is not a bool.
    """

    rank: int = 32
    alpha: float | None = 0.5
    quant: HGQConfig = field(default_factory=HGQConfig)
    svdmp: SVDMPConfig = field(default_factory=SVDMPConfig)
    weight_search: bool = True

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank < 0:
            raise ValueError(f"rank must be a non-negative integer, not {self.rank!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a number in [0, 1] or None, not {self.alpha!r}")
        if not isinstance(self.quant, HGQConfig):
            raise TypeError(f"quant must be an HGQConfig, not {type(self.quant).__name__}")
        if not isinstance(self.svdmp, SVDMPConfig):
            raise TypeError(f"svdmp must be an SVDMPConfig, not {type(self.svdmp).__name__}")
        if not isinstance(self.weight_search, bool):
            raise TypeError(f"weight_search must be a bool, not {type(self.weight_search).__name__}")


def smoothing_factors(x, weight, alpha):
    """Return the per-input-channel smoothing factors lambda (float64, shape (K,)).

    A channel whose activations or weights are all zero gets lambda = 1.
    """
    x_amax = np.abs(x).max(axis=0)
    w_amax = np.abs(weight).max(axis=0)
    factors = np.ones_like(x_amax)
    usable = (x_amax > 0) & (w_amax > 0)
    factors[usable] = x_amax[usable] ** alpha / w_amax[usable] ** (1.0 - alpha)
    return factors


def truncated_svd(weight, rank):
    """Return ``L1`` (N x r), ``L2`` (r x K) and the r largest singular values, in float64.

    ``L1 = U_r S_r`` and ``L2 = V_r^T`` for the SVD ``weight = U S V^T``.

    Raises
    ------
    ValueError
        If ``rank`` exceeds min(N, K).
    """
    n, k = weight.shape
    if rank > min(n, k):
        raise ValueError(f"rank must be at most min(N, K) = {min(n, k)}, not {rank}")
    if rank == 0:
        return np.zeros((n, 0)), np.zeros((0, k)), np.zeros(0)
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    return u[:, :rank] * s[:rank], vt[:rank], s[:rank]


def svd_split(weight, rank):
    """Split ``weight`` (N x K) into ``L1`` (N x r), ``L2`` (r x K) and the residual, in float64.

    This is the split before any rounding; :func:`compile_layer` rounds the
    factors and takes the residual from the rounded ones.

    Raises
    ------
    ValueError
        If ``rank`` exceeds min(N, K).
    """
    l1, l2, _ = truncated_svd(weight, rank)
    return l1, l2, weight - l1 @ l2


def round_factors(l1, l2, significand_bits):
    """Round the float64 factors to FP16 and then each component to its significand width.

    Column i of ``l1`` and row i of ``l2`` are component i and get
    ``significand_bits[i]`` bits (:func:`golden.lowrank.round_significand`).

    Returns
    -------
    l1, l2 : ndarray of float16

    Raises
    ------
    ValueError
        If a rounded value overflows FP16. The message names the factor, the
        component, the element and its float64 value.
    """
    bits = np.asarray(significand_bits, dtype=np.int64)
    with np.errstate(over="ignore"):
        rounded = {
            "L1": round_significand(l1.astype(FP16.dtype), bits[None, :]),
            "L2": round_significand(l2.astype(FP16.dtype), bits[:, None]),
        }
    for name, exact in (("L1", l1), ("L2", l2)):
        overflow = np.argwhere(~np.isfinite(rounded[name]))
        if len(overflow):
            row, col = overflow[0]
            component = col if name == "L1" else row
            raise ValueError(
                f"{name} component {component} overflows FP16: {name}[{row}, {col}] = {exact[row, col]:.6g} "
                f"rounds to inf with {bits[component]} significand bits (the maximum is "
                f"{_max_finite(bits[component]):g}); scale the weight down")
    return rounded["L1"], rounded["L2"]


def _max_finite(bits):
    """Return the largest finite value with ``bits`` significand bits and the FP16 exponent range."""
    return (2.0 - 2.0 ** (1 - int(bits))) * 2.0 ** FP16.bias


@dataclass(frozen=True, eq=False)
class CompiledLayer:
    """A linear layer ready for the accelerator.

    Attributes
    ----------
    smoothing : ndarray (K,)
        Factors lambda; the caller divides X by them (ones when disabled).
    l1, l2 : ndarray of float16
        Low-rank factors (N x r and r x K), each component rounded to its
        significand width.
    residual : HGQTensor
        The residual weights R, HGQ-quantized per output channel.
    bias : ndarray (N,) float32, or None
    config : CompilerConfig
    significand_bits : ndarray of int64, shape (r,)
        Significand width of each component, hidden bit included.
    singular_values : ndarray of float64, shape (r,)
        The r largest singular values of the smoothed weight, descending.
    """

    smoothing: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    residual: HGQTensor
    bias: np.ndarray | None
    config: CompilerConfig
    significand_bits: np.ndarray
    singular_values: np.ndarray

    @property
    def shape(self):
        """(N, K) of the weight."""
        return self.residual.shape


def compile_layer(weight, bias=None, x_calibration=None, config=CompilerConfig()):
    """Compile one linear layer: smoothing, SVD split, SVD-MP rounding and HGQ of the residual.

    Parameters
    ----------
    weight : array_like, shape (N, K)
    bias : array_like, shape (N,), optional
    x_calibration : array_like, shape (T, K), optional
        Activations that set the smoothing factors; needed when smoothing.
    config : CompilerConfig

    Raises
    ------
    ValueError
        On empty or non-finite tensors, mismatched shapes, K not a multiple of
        the coarse group, a rank above min(N, K), or a low-rank factor that
        overflows FP16.
    TypeError
        If ``config`` is not a CompilerConfig.
    """
    if not isinstance(config, CompilerConfig):
        raise TypeError(f"config must be a CompilerConfig, not {type(config).__name__}")
    weight = check_matrix("weight", weight)
    n, k = weight.shape
    config.quant.check_length(k, name="weight K")
    if config.rank > min(n, k):
        raise ValueError(f"rank must be at most min(N, K) = {min(n, k)}, not {config.rank}")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), not {bias.shape}")
        if not np.all(np.isfinite(bias)):
            raise ValueError("bias must be finite")
        bias = bias.astype(FP32.dtype)

    if x_calibration is not None:
        x_calibration = check_matrix("x_calibration", x_calibration)
        if x_calibration.shape[1] != k:
            raise ValueError(f"x_calibration must have K = {k} columns, not {x_calibration.shape[1]}")
    if config.alpha is None:
        factors = np.ones(k)
    else:
        if x_calibration is None:
            raise ValueError("x_calibration is required when smoothing is enabled (alpha is not None)")
        factors = smoothing_factors(x_calibration, weight, config.alpha)

    smoothed = weight * factors
    l1, l2, singular_values = truncated_svd(smoothed, config.rank)
    significand_bits = allocate_significands(singular_values, config.svdmp)
    l1, l2 = round_factors(l1, l2, significand_bits)
    residual = smoothed - l1.astype(np.float64) @ l2.astype(np.float64)
    if not config.weight_search:
        residual_q = quantize_hgq(residual, config.quant, name="residual weight")
    else:
        channel_weights = None if x_calibration is None else np.mean((x_calibration / factors) ** 2, axis=0)
        residual_q = search_hgq(residual, config.quant, channel_weights=channel_weights, name="residual weight")
    return CompiledLayer(
        smoothing=factors,
        l1=l1,
        l2=l2,
        residual=residual_q,
        bias=bias,
        config=config,
        significand_bits=significand_bits,
        singular_values=singular_values,
    )


@dataclass(frozen=True, eq=False)
class LayerOutputs:
    """Outputs of one layer run.

    Attributes
    ----------
    lowrank : ndarray of float32, shape (T, N)
        ``Y_lr`` of the low-rank path.
    residual : ndarray of float32, shape (T, N)
        ``Y_res`` of the residual path.
    output : ndarray of float32, shape (T, N)
        ``fp32(fp32(Y_lr + Y_res) + b)``.
    activations : HGQTensor
        The smoothed activations, HGQ-quantized per token.
    hidden : ndarray of float16, shape (T, r)
        The low-rank intermediate ``h = X' L2^T``, rounded to FP16.
    """

    lowrank: np.ndarray
    residual: np.ndarray
    output: np.ndarray
    activations: HGQTensor
    hidden: np.ndarray


def run_layer(layer, x):
    """Run a compiled layer on activations ``x`` (T x K).

    The activations are smoothed, rounded to FP16 (the accelerator's input
    format) and HGQ-quantized per token. The low-rank path is
    :func:`golden.lowrank.lowrank_matmul` and the residual path
    :func:`golden.residual.residual_matmul`. The output is
    ``fp32(fp32(Y_lr + Y_res) + b)``.

    Raises
    ------
    ValueError
        If ``x`` is not a finite matrix with K columns, or if ``x / smoothing``
        or the low-rank intermediate exceeds the FP16 maximum.
    """
    x = check_matrix("x", x)
    n, k = layer.shape
    if x.shape[1] != k:
        raise ValueError(f"x must have K = {k} columns, not {x.shape[1]}")
    with np.errstate(over="ignore"):
        x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
    if not np.all(np.isfinite(x_fp16)):
        raise ValueError(f"x / smoothing exceeds the FP16 maximum {FP16.max_finite:g}")
    xq = quantize_hgq(x_fp16, layer.config.quant, name="x")
    y_lr, hidden = lowrank_matmul(x_fp16, layer.l2, layer.l1)
    overflow = np.argwhere(~np.isfinite(hidden))
    if len(overflow):
        token, component = overflow[0]
        raise ValueError(f"the low-rank intermediate h[{token}, {component}] = X' L2^T exceeds the FP16 maximum "
                         f"{FP16.max_finite:g}; scale x down")
    y_res = residual_matmul(xq, layer.residual)
    # The bias add always happens, with +0 for a layer without bias, as in the
    # hardware; it turns a sum of -0 into +0.
    bias = layer.bias if layer.bias is not None else np.zeros(n, dtype=FP32.dtype)
    y = (y_lr + y_res) + bias
    return LayerOutputs(lowrank=y_lr, residual=y_res, output=y, activations=xq, hidden=hidden)
