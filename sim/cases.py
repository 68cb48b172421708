"""Named stimulus cases for the residual matrix core: real MiniLM tiles, random data and edge cases.

Each case returns ``(xq, wq)``, two :class:`golden.hgq.HGQTensor` objects
quantized with the core's configuration. Random cases are seeded so that
runs repeat.
"""

import numpy as np

from golden.formats import FP16
from golden.hgq import HGQTensor, quantize_hgq

__all__ = ["CASES", "make_case"]


def _random_tensor(rng, rows, k, quant, scales=None):
    codes = rng.integers(quant.element.min, quant.element.max + 1, (rows, k)).astype(np.int8)
    shifts = rng.integers(0, quant.max_shift + 1, (rows, k // quant.fine_group)).astype(np.uint8)
    if scales is None:
        scales = np.ldexp(rng.uniform(1, 2, (rows, k // quant.coarse_group)),
                          rng.integers(-10, 6, (rows, k // quant.coarse_group)))
    return HGQTensor(codes, np.asarray(scales).astype(np.float16), shifts, quant)


def minilm_tile(quant, rng):
    """Return tokens 0-3 and output channels 0-15 of layer0.ffn_in; the [CLS] token has the largest outliers."""
    from golden.compiler import CompilerConfig, compile_layer, run_layer
    from golden.minilm import capture_linear_layers
    capture = capture_linear_layers()["layer0.ffn_in"]
    layer = compile_layer(capture.weight, capture.bias, capture.x, CompilerConfig(quant=quant))
    activations = run_layer(layer, capture.x[:4]).activations
    return activations, layer.residual.select_rows(slice(0, 16))


def random_codes(quant, rng):
    k = 2 * quant.coarse_group
    return _random_tensor(rng, 3, k, quant), _random_tensor(rng, 11, k, quant)


def zero_groups(quant, rng):
    """Quantize activations with all-zero coarse groups (scale +0) and weights with all-zero fine groups."""
    k = 3 * quant.coarse_group
    x = rng.standard_normal((3, k))
    x[0, :quant.coarse_group] = 0
    x[2] = 0
    w = rng.standard_normal((9, k))
    w[:, quant.fine_group:2 * quant.fine_group] = 0
    w[4] = 0
    return quantize_hgq(x, quant), quantize_hgq(w, quant)


def minus_eight(quant, rng):
    """Return codes -8 everywhere with shifts 0, which drive every accumulator to its maximum."""
    k = 2 * quant.coarse_group

    def worst(rows):
        return HGQTensor(np.full((rows, k), quant.element.min, np.int8),
                         np.full((rows, k // quant.coarse_group), 1.0, np.float16),
                         np.zeros((rows, k // quant.fine_group), np.uint8), quant)

    return worst(2), worst(8)


def single_outlier(quant, rng):
    """Quantize tokens with one huge value each, so that the other fine groups shift by the maximum."""
    k = 2 * quant.coarse_group
    x = rng.standard_normal((4, k)) * 0.05
    x[np.arange(4), rng.integers(0, k, 4)] = [3e4, -2e3, 500.0, -9e4]
    return quantize_hgq(x, quant), quantize_hgq(rng.standard_normal((8, k)), quant)


def fp16_scale_limits(quant, rng):
    """Return random codes under coarse scales at the FP16 extremes: 65504, the smallest normal and subnormal, and +0."""
    k = 2 * quant.coarse_group
    extremes = np.array([65504.0, FP16.min_normal, FP16.min_subnormal, 0.0, 2.0 ** -20, 4096.0])
    groups = k // quant.coarse_group
    x_scales = rng.choice(extremes, (4, groups))
    w_scales = rng.choice(extremes, (8, groups))
    x_scales[0] = w_scales[0] = 65504.0
    x_scales[1] = w_scales[1] = FP16.min_subnormal
    return _random_tensor(rng, 4, k, quant, x_scales), _random_tensor(rng, 8, k, quant, w_scales)


CASES = {
    "minilm_tile": minilm_tile,
    "random": random_codes,
    "zero_groups": zero_groups,
    "minus_eight": minus_eight,
    "single_outlier": single_outlier,
    "fp16_scale_limits": fp16_scale_limits,
}


def make_case(name, quant, seed=0):
    """Return ``(xq, wq)`` of the case ``name`` for the quantization ``quant``."""
    if name not in CASES:
        raise ValueError(f"case must be one of {', '.join(CASES)}, not {name!r}")
    return CASES[name](quant, np.random.default_rng(seed))
