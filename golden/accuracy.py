"""Output accuracy of the quantization schemes against a float64 reference."""

import numpy as np

from .compiler import CompilerConfig, compile_layer, run_layer
from .hgq import HGQConfig, check_matrix, quantize_hgq, quantize_per_tensor
from .lowrank import SVDMPConfig
from .residual import residual_matmul

__all__ = ["sqnr_db", "SCHEMES", "LOWRANK_SCHEMES", "compile_scheme", "scheme_outputs", "compare_schemes"]

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
