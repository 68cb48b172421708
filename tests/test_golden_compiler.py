"""Offline compiler (smoothing, SVD split, SVD-MP, HGQ residual) and accuracy on a real MiniLM layer."""

import re

import numpy as np
import pytest

from golden.accuracy import SCHEMES, compare_schemes, compile_scheme, scheme_outputs, sqnr_db
from golden.compiler import (CompilerConfig, compile_layer, round_factors, run_layer, smoothing_factors,
                             svd_split, truncated_svd)
from golden.formats import FP16
from golden.hgq import HGQConfig, quantize_hgq, search_hgq
from golden.lowrank import SVDMPConfig, lowrank_matmul, round_significand
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


def test_truncated_svd_singular_values():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 12))
    l1, l2, singular = truncated_svd(w, 4)
    assert np.allclose(singular, np.linalg.svd(w, compute_uv=False)[:4])
    assert np.allclose(np.linalg.norm(l1, axis=0), singular)
    assert np.allclose(l2 @ l2.T, np.eye(4))
    l1, l2, singular = truncated_svd(w, 0)
    assert (l1.shape, l2.shape, singular.shape) == ((20, 0), (0, 12), (0,))


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


@pytest.mark.parametrize("kwargs, message", [
    ({"quant": 128}, "quant must be an HGQConfig, not int"),
    ({"svdmp": 8}, "svdmp must be an SVDMPConfig, not int"),
])
def test_compiler_config_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=re.escape(message) + "$"):
        CompilerConfig(**kwargs)


def test_compiler_config_default_svdmp():
    assert CompilerConfig().svdmp == SVDMPConfig()
    assert CompilerConfig().svdmp.wide_count == 8


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
    with pytest.raises(TypeError, match=re.escape("config must be a CompilerConfig, not SVDMPConfig") + "$"):
        compile_layer(w, None, None, SVDMPConfig())


def test_compile_layer_rounds_components():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((32, 128)) * np.geomspace(1, 100, 128)
    config = CompilerConfig(rank=12, alpha=None, svdmp=SVDMPConfig(wide_count=3, narrow_bits=5))
    layer = compile_layer(weight, None, None, config)
    assert layer.significand_bits.tolist() == [11] * 3 + [5] * 9
    assert np.allclose(layer.singular_values, np.linalg.svd(weight, compute_uv=False)[:12])
    l1, l2, _ = truncated_svd(weight, 12)
    bits = layer.significand_bits
    # Component i is FP16 first, then its own width: column i of L1, row i of L2.
    assert np.array_equal(layer.l1, round_significand(l1.astype(np.float16), bits[None, :]))
    assert np.array_equal(layer.l2, round_significand(l2.astype(np.float16), bits[:, None]))
    assert layer.l1.dtype == layer.l2.dtype == np.float16
    assert np.array_equal(layer.l1[:, :3], l1[:, :3].astype(np.float16))
    assert not np.array_equal(layer.l1[:, 3:], l1[:, 3:].astype(np.float16))
    # A rounded component has at most 5 significand bits, so rounding it again changes nothing.
    assert np.array_equal(round_significand(layer.l2[3:], 5), layer.l2[3:])


@pytest.mark.parametrize("weight_search", [False, True])
def test_compile_layer_residual_from_rounded_factors(weight_search):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((16, 128))
    layer = compile_layer(weight, None, None, CompilerConfig(rank=6, alpha=None, weight_search=weight_search))
    residual = weight - layer.l1.astype(np.float64) @ layer.l2.astype(np.float64)
    expected = search_hgq(residual, HGQConfig()) if weight_search else quantize_hgq(residual, HGQConfig())
    assert np.array_equal(layer.residual.codes, expected.codes)
    assert np.array_equal(layer.residual.scales, expected.scales)
    assert np.array_equal(layer.residual.shifts, expected.shifts)


def test_compile_layer_weights_search_by_activations():
    """The search weights each column by the mean square of the smoothed calibration activations."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((8, 128))
    x = rng.standard_normal((20, 128)) * np.linspace(0.1, 5.0, 128)
    layer = compile_layer(weight, None, x, CompilerConfig(rank=4, alpha=0.5))
    smoothed = weight * layer.smoothing
    residual = smoothed - layer.l1.astype(np.float64) @ layer.l2.astype(np.float64)
    expected = search_hgq(residual, HGQConfig(), channel_weights=np.mean((x / layer.smoothing) ** 2, axis=0))
    assert np.array_equal(layer.residual.codes, expected.codes)
    assert np.array_equal(layer.residual.scales, expected.scales)
    assert np.array_equal(layer.residual.shifts, expected.shifts)


def test_weight_search_improves_minilm_layer(ffn_in):
    """On a real MiniLM layer the searched residual weights bring the output closer to float64."""
    reference = ffn_in.x @ ffn_in.weight.T
    sqnr = {}
    for weight_search in (False, True):
        layer = compile_layer(ffn_in.weight, None, ffn_in.x, CompilerConfig(weight_search=weight_search))
        sqnr[weight_search] = sqnr_db(reference, run_layer(layer, ffn_in.x).output)
    assert sqnr[True] > sqnr[False] + 0.3


def test_compiler_config_weight_search_type():
    with pytest.raises(TypeError, match="weight_search must be a bool, not int"):
        CompilerConfig(weight_search=1)


@pytest.mark.parametrize("svdmp, bits, maximum", [
    (SVDMPConfig(wide_count=0), 4, "61440"),
    (SVDMPConfig(), 11, "65504"),
])
def test_compile_layer_factor_overflow(svdmp, bits, maximum):
    weight = np.zeros((1, 128))
    weight[0, 0] = 64000.0 if bits == 4 else 70000.0
    l1, _, _ = truncated_svd(weight, 1)
    message = (f"L1 component 0 overflows FP16: L1[0, 0] = {l1[0, 0]:.6g} rounds to inf with {bits} "
               f"significand bits (the maximum is {maximum}); scale the weight down")
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        compile_layer(weight, None, None, CompilerConfig(rank=1, alpha=None, svdmp=svdmp))


def test_round_factors_names_l2():
    l1 = np.ones((2, 2))
    l2 = np.array([[1.0, 2.0], [3.0, 65000.0]])
    message = ("L2 component 1 overflows FP16: L2[1, 1] = 65000 rounds to inf with 4 significand bits "
               "(the maximum is 61440); scale the weight down")
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        round_factors(l1, l2, np.array([11, 4]))


def test_compile_layer_zero_singular_values():
    weight = np.zeros((4, 128))
    weight[0, :] = 1.0
    for svdmp in (SVDMPConfig(wide_count=2), SVDMPConfig(wide_count=None, energy_fraction=0.9)):
        layer = compile_layer(weight, np.ones(4), None, CompilerConfig(rank=3, alpha=None, svdmp=svdmp))
        assert layer.singular_values[0] > 0
        assert np.all(layer.singular_values[1:] == 0)
        out = run_layer(layer, np.ones((2, 128)))
        assert out.output.tolist() == [[129.0, 1.0, 1.0, 1.0]] * 2
    zero = compile_layer(np.zeros((4, 128)), None, None, CompilerConfig(rank=2, alpha=None))
    assert zero.singular_values.tolist() == [0.0, 0.0]
    assert not np.any(run_layer(zero, np.ones((1, 128))).output)


def test_lowrank_rank_zero():
    layer = compile_layer(np.eye(128)[:16], None, None, CompilerConfig(rank=0, alpha=None))
    assert layer.significand_bits.shape == layer.singular_values.shape == (0,)
    assert layer.l1.shape == (16, 0)
    assert layer.l2.shape == (0, 128)
    out = run_layer(layer, np.ones((3, 128)))
    assert np.all(out.lowrank == 0)
    assert out.hidden.shape == (3, 0)
    assert out.output.dtype == np.float32
    assert np.array_equal(out.output, out.residual)


def test_lowrank_matmul_rounds_intermediate_to_fp16():
    x = np.array([[1.0, 2.0 ** -11]], np.float16)
    l2 = np.array([[1.0, 1.0]], np.float16)
    l1 = np.array([[1.0]], np.float16)
    # 1 + 2**-11 is exact in FP32 and a tie between the FP16 neighbours 1 and
    # 1 + 2**-10, so h rounds to even, 1, and the output is 1 rather than 1 + 2**-11.
    y, h = lowrank_matmul(x, l2, l1)
    assert h[0, 0] == 1.0
    assert y[0, 0] == 1.0


def test_run_layer_intermediate_overflow():
    layer = compile_layer(np.ones((2, 128)), None, None, CompilerConfig(rank=1, alpha=None))
    message = "the low-rank intermediate h[0, 0] = X' L2^T exceeds the FP16 maximum 65504; scale x down"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        run_layer(layer, np.full((1, 128), 60000.0))


def test_run_layer_adds_paths_and_bias(ffn_in):
    layer = compile_layer(ffn_in.weight, ffn_in.bias, ffn_in.x)
    out = run_layer(layer, ffn_in.x)
    assert out.output.shape == (ffn_in.x.shape[0], 1536)
    assert np.array_equal(out.output, (out.lowrank + out.residual) + layer.bias)
    x_fp16 = (ffn_in.x / layer.smoothing).astype(FP16.dtype)
    y_lr, hidden = lowrank_matmul(x_fp16, layer.l2, layer.l1)
    assert np.array_equal(out.lowrank, y_lr)
    assert np.array_equal(out.hidden, hidden)
    assert out.hidden.shape == (ffn_in.x.shape[0], 32)
    reference = ffn_in.x.astype(np.float64) @ ffn_in.weight.T.astype(np.float64) + ffn_in.bias
    assert sqnr_db(reference, out.output) > 20


def test_schemes_order_on_minilm(ffn_in):
    sqnr = compare_schemes(ffn_in.x, ffn_in.weight)
    assert list(sqnr) == list(SCHEMES)
    assert sqnr["int4 per-tensor"] < sqnr["int4 group-64 fp16"]
    assert sqnr["int4 group-64 fp16"] < sqnr["hgq + smooth + svd"]
    assert sqnr["hgq"] < sqnr["hgq + svd"] < sqnr["hgq + smooth + svd"]
    assert sqnr["int4 group-64 fp16"] < sqnr["hgq + smooth + svd-mp"]
    assert abs(sqnr["hgq + smooth + svd-mp"] - sqnr["hgq + smooth + svd"]) < 0.2


def test_schemes_svdmp_setting(ffn_in):
    schemes = ("hgq + smooth + svd", "hgq + smooth + svd-mp")
    outputs = scheme_outputs(ffn_in.x, ffn_in.weight, svdmp=SVDMPConfig.all_wide(), schemes=schemes)
    assert list(outputs) == list(schemes)
    # With every component wide, the svd-mp scheme is the all-wide scheme.
    assert np.array_equal(outputs["hgq + smooth + svd"], outputs["hgq + smooth + svd-mp"])


def test_compile_scheme_low_rank_settings(ffn_in):
    wide = compile_scheme("hgq + svd", ffn_in.x, ffn_in.weight)
    assert wide.config.alpha is None
    assert wide.config.svdmp == SVDMPConfig.all_wide()
    mixed = compile_scheme("hgq + smooth + svd-mp", ffn_in.x, ffn_in.weight, svdmp=SVDMPConfig(wide_count=4))
    assert mixed.config.alpha == 0.5
    assert mixed.significand_bits.tolist() == [11] * 4 + [4] * 28


def test_scheme_names_invalid():
    message = "scheme must be one of 'hgq + svd', 'hgq + smooth + svd', 'hgq + smooth + svd-mp', not 'hgq'"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        compile_scheme("hgq", np.ones((2, 128)), np.ones((8, 128)))
    with pytest.raises(ValueError, match=re.escape("schemes must be names from SCHEMES, not 'svd'") + "$"):
        scheme_outputs(np.ones((2, 128)), np.ones((8, 128)), schemes=("hgq", "svd"))


def test_conventional_group16_beats_hgq_slightly(ffn_in):
    """HGQ trades a little accuracy against per-group FP16 scales for cheaper dequantization."""
    hgq = compare_schemes(ffn_in.x, ffn_in.weight, HGQConfig())["hgq"]
    conventional = compare_schemes(ffn_in.x, ffn_in.weight, HGQConfig.conventional(16))["hgq"]
    assert hgq <= conventional < hgq + 3.0
