"""Offline compiler (smoothing, SVD split, HGQ residual) and accuracy on a real MiniLM layer."""

import re

import numpy as np
import pytest

from golden.accuracy import SCHEMES, compare_schemes, sqnr_db
from golden.compiler import (CompilerConfig, compile_layer, lowrank_reference, run_layer,
                             smoothing_factors, svd_split)
from golden.hgq import HGQConfig
from golden.minilm import capture_linear_layers


@pytest.fixture(scope="module")
def ffn_in():
    return capture_linear_layers()["layer0.ffn_in"]


def test_smoothing_factors_rule():
    x = np.array([[4.0, 0.0, -1.0], [1.0, 0.0, 0.5]])
    w = np.array([[1.0, 2.0, 0.0], [-0.25, 1.0, 0.0]])
    factors = smoothing_factors(x, w, 0.5)
    assert factors.tolist() == [2.0, 1.0, 1.0]
    assert smoothing_factors(x, w, 1.0)[0] == 4.0


def test_svd_split_reconstructs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 12))
    l1, l2, residual = svd_split(w, 5)
    assert l1.shape == (20, 5)
    assert l2.shape == (5, 12)
    assert np.allclose(l1 @ l2 + residual, w)
    singular = np.linalg.svd(w, compute_uv=False)
    assert np.isclose(np.linalg.norm(residual, 2), singular[5])


def test_svd_split_rank_limit():
    with pytest.raises(ValueError, match=re.escape("rank must be at most min(N, K) = 12, not 13") + "$"):
        svd_split(np.ones((20, 12)), 13)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": -1}, "rank must be a non-negative integer, not -1"),
    ({"alpha": 1.5}, "alpha must be a number in [0, 1] or None, not 1.5"),
])
def test_compiler_config_invalid(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        CompilerConfig(**kwargs)


def test_compile_layer_invalid_inputs():
    w = np.ones((8, 128))
    with pytest.raises(ValueError, match=re.escape("rank must be at most min(N, K) = 8, not 32") + "$"):
        compile_layer(w, None, np.ones((2, 128)))
    bad = w.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match=re.escape("weight must be finite, but weight[3, 4] is nan")):
        compile_layer(bad, None, None, CompilerConfig(rank=2, alpha=None))
    message = "weight K must be a multiple of coarse_group (128), not 96; pad the input channels with zeros up to 128"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        compile_layer(np.ones((8, 96)), None, None, CompilerConfig(rank=2, alpha=None))
    message = "x_calibration is required when smoothing is enabled (alpha is not None)"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        compile_layer(w, None, None, CompilerConfig(rank=2))
    with pytest.raises(ValueError, match=re.escape("bias must have shape (8,), not (7,)") + "$"):
        compile_layer(w, np.ones(7), None, CompilerConfig(rank=2, alpha=None))


def test_lowrank_rank_zero():
    layer = compile_layer(np.eye(128)[:16], None, None, CompilerConfig(rank=0, alpha=None))
    out = run_layer(layer, np.ones((3, 128)))
    assert np.all(out.lowrank == 0)
    assert out.output.dtype == np.float32


def test_lowrank_reference_rounds_intermediate_to_fp16():
    x = np.array([[1.0, 2.0 ** -11]], np.float16)
    l2 = np.array([[1.0, 1.0]], np.float16)
    l1 = np.array([[1.0]], np.float16)
    # 1 + 2**-11 is a tie between FP16 neighbours 1 and 1 + 2**-10; it rounds to even, 1.
    assert lowrank_reference(x, l1, l2)[0, 0] == 1.0


def test_run_layer_adds_paths_and_bias(ffn_in):
    layer = compile_layer(ffn_in.weight, ffn_in.bias, ffn_in.x)
    out = run_layer(layer, ffn_in.x)
    assert out.output.shape == (ffn_in.x.shape[0], 1536)
    assert np.array_equal(out.output, (out.lowrank + out.residual) + layer.bias)
    reference = ffn_in.x.astype(np.float64) @ ffn_in.weight.T.astype(np.float64) + ffn_in.bias
    assert sqnr_db(reference, out.output) > 20


def test_schemes_order_on_minilm(ffn_in):
    sqnr = compare_schemes(ffn_in.x, ffn_in.weight)
    assert list(sqnr) == list(SCHEMES)
    assert sqnr["int4 per-tensor"] < sqnr["int4 group-64 fp16"]
    assert sqnr["int4 group-64 fp16"] < sqnr["hgq + smooth + svd"]
    assert sqnr["hgq"] < sqnr["hgq + svd"] < sqnr["hgq + smooth + svd"]


def test_conventional_group16_beats_hgq_slightly(ffn_in):
    """HGQ trades a little accuracy against per-group FP16 scales for cheaper dequantization."""
    hgq = compare_schemes(ffn_in.x, ffn_in.weight, HGQConfig())["hgq"]
    conventional = compare_schemes(ffn_in.x, ffn_in.weight, HGQConfig.conventional(16))["hgq"]
    assert hgq <= conventional < hgq + 3.0
