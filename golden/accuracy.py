"""Output accuracy of the quantization schemes against a float64 reference."""

import numpy as np

from .compiler import CompilerConfig, compile_layer, run_layer
from .hgq import HGQConfig, check_matrix, quantize_hgq, quantize_per_tensor
from .residual import residual_matmul

__all__ = ["sqnr_db", "SCHEMES", "scheme_outputs", "compare_schemes"]

# Scheme names, in the order of the accuracy tables.
SCHEMES = (
    "int4 per-tensor",
    "int4 group-64 fp16",
    "hgq",
    "hgq + svd",
    "hgq + smooth + svd",
)


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


def scheme_outputs(x, weight, quant=HGQConfig(), rank=32, alpha=0.5):
    """Return ``{scheme: Y}`` for every scheme of :data:`SCHEMES`, without bias.

    Every group scheme runs the exact RMC numerics of
    :func:`golden.residual.residual_matmul`.
    """
    x = check_matrix("x", x)
    weight = check_matrix("weight", weight)
    group64 = HGQConfig.conventional(64)
    outputs = {
        "int4 per-tensor": quantize_per_tensor(x, name="x") @ quantize_per_tensor(weight, name="weight").T,
        "int4 group-64 fp16": residual_matmul(quantize_hgq(x, group64), quantize_hgq(weight, group64)),
        "hgq": residual_matmul(quantize_hgq(x, quant), quantize_hgq(weight, quant)),
    }
    for scheme, smoothing in (("hgq + svd", None), ("hgq + smooth + svd", alpha)):
        layer = compile_layer(weight, None, x, CompilerConfig(rank=rank, alpha=smoothing, quant=quant))
        outputs[scheme] = run_layer(layer, x).output
    return outputs


def compare_schemes(x, weight, quant=HGQConfig(), rank=32, alpha=0.5):
    """Return ``{scheme: SQNR in dB}`` of ``Y = X W^T`` against float64, for every scheme."""
    reference = check_matrix("x", x) @ check_matrix("weight", weight).T
    return {name: sqnr_db(reference, y) for name, y in scheme_outputs(x, weight, quant, rank, alpha).items()}
