"""Offline layer compiler: smoothing, truncated SVD split and HGQ of the residual.

For a linear layer ``Y = X W^T + b`` (X: T x K, W: N x K):

1. Smoothing: ``lambda_k = max|X[:, k]|**alpha / max|W[:, k]|**(1 - alpha)``;
   ``X' = X / lambda`` and ``W' = W * lambda``. The factors fold into the
   operation that produces X, so the accelerator never applies them.
2. SVD: ``W' = U S V^T``; ``L1 = U_r S_r`` (N x r), ``L2 = V_r^T`` (r x K), and
   the residual ``R = W' - L1 L2``.
3. HGQ of R per output channel.

At run time the low-rank path computes ``(X' L2^T) L1^T`` and the residual
path ``X'_q R_q^T`` on the RMC; see :func:`run_layer`.
"""

from dataclasses import dataclass, field

import numpy as np

from .formats import FP16, FP32
from .hgq import HGQConfig, HGQTensor, check_matrix, quantize_hgq
from .residual import residual_matmul

__all__ = [
    "CompilerConfig", "CompiledLayer", "smoothing_factors", "svd_split",
    "compile_layer", "lowrank_reference", "run_layer", "LayerOutputs",
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
    """

    rank: int = 32
    alpha: float | None = 0.5
    quant: HGQConfig = field(default_factory=HGQConfig)

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank < 0:
            raise ValueError(f"rank must be a non-negative integer, not {self.rank!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a number in [0, 1] or None, not {self.alpha!r}")
        if not isinstance(self.quant, HGQConfig):
            raise TypeError(f"quant must be an HGQConfig, not {type(self.quant).__name__}")


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


def svd_split(weight, rank):
    """Split ``weight`` (N x K) into ``L1`` (N x r), ``L2`` (r x K) and the residual, in float64.

    Raises
    ------
    ValueError
        If ``rank`` exceeds min(N, K).
    """
    n, k = weight.shape
    if rank > min(n, k):
        raise ValueError(f"rank must be at most min(N, K) = {min(n, k)}, not {rank}")
    if rank == 0:
        return np.zeros((n, 0)), np.zeros((0, k)), weight.copy()
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    l1 = u[:, :rank] * s[:rank]
    l2 = vt[:rank]
    return l1, l2, weight - l1 @ l2


@dataclass(frozen=True, eq=False)
class CompiledLayer:
    """A linear layer ready for the accelerator.

    Attributes
    ----------
    smoothing : ndarray (K,)
        Factors lambda; the caller divides X by them (ones when disabled).
    l1, l2 : ndarray
        Low-rank factors as FP16 (N x r and r x K).
    residual : HGQTensor
        The residual weights R, HGQ-quantized per output channel.
    bias : ndarray (N,) float32, or None
    config : CompilerConfig
    """

    smoothing: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    residual: HGQTensor
    bias: np.ndarray | None
    config: CompilerConfig

    @property
    def shape(self):
        """(N, K) of the weight."""
        return self.residual.shape


def compile_layer(weight, bias=None, x_calibration=None, config=CompilerConfig()):
    """Compile one linear layer: smoothing, SVD split and HGQ of the residual.

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
        the coarse group, or a rank above min(N, K).
    """
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

    if config.alpha is None:
        factors = np.ones(k)
    else:
        if x_calibration is None:
            raise ValueError("x_calibration is required when smoothing is enabled (alpha is not None)")
        x_calibration = check_matrix("x_calibration", x_calibration)
        if x_calibration.shape[1] != k:
            raise ValueError(f"x_calibration must have K = {k} columns, not {x_calibration.shape[1]}")
        factors = smoothing_factors(x_calibration, weight, config.alpha)

    l1, l2, residual = svd_split(weight * factors, config.rank)
    return CompiledLayer(
        smoothing=factors,
        l1=l1.astype(FP16.dtype),
        l2=l2.astype(FP16.dtype),
        residual=quantize_hgq(residual, config.quant, name="residual weight"),
        bias=bias,
        config=config,
    )


def lowrank_reference(x_fp16, l1, l2):
    """Return the low-rank path ``(X L2^T) L1^T`` with FP16 operands and FP32 accumulation.

    The intermediate ``X L2^T`` is rounded to FP16, because it is the FP16
    operand of the second product. Accumulation uses float32 BLAS, whose
    summation order is not fixed.
    """
    if l1.shape[1] == 0:
        return np.zeros((x_fp16.shape[0], l1.shape[0]), dtype=FP32.dtype)
    hidden = (x_fp16.astype(np.float32) @ l2.astype(np.float32).T).astype(FP16.dtype)
    return hidden.astype(np.float32) @ l1.astype(np.float32).T


@dataclass(frozen=True, eq=False)
class LayerOutputs:
    """Outputs of one layer run; float32 (T, N) except ``activations``."""

    lowrank: np.ndarray
    residual: np.ndarray
    output: np.ndarray
    activations: HGQTensor


def run_layer(layer, x):
    """Run a compiled layer on activations ``x`` (T x K).

    The activations are smoothed, rounded to FP16 (the accelerator's input
    format) and HGQ-quantized per token. The output is
    ``fp32(fp32(Y_lr + Y_res) + b)``.
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
    y_lr = lowrank_reference(x_fp16, layer.l1, layer.l2)
    y_res = residual_matmul(xq, layer.residual)
    y = y_lr + y_res
    if layer.bias is not None:
        y = y + layer.bias
    return LayerOutputs(lowrank=y_lr, residual=y_res, output=y, activations=xq)
