"""Whole-model accuracy: the linear-layer hook of MiniLM, the model schemes, the MX format and the goals."""

import json
import math
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import golden.accuracy
from golden import minilm
from golden.accuracy import (ALPHA_GRID, DEFAULT_SCHEME, MODEL_SCHEMES, compile_model_scheme, compile_scheme,
                             fp_multiplies, mx_matmul, quantize_mx, search_alpha, sqnr_db)
from golden.compiler import CompilerConfig, compile_layer, run_layer
from golden.formats import FP16, FP32, INT4, MXINT4, BlockScaledFormat
from golden.lowrank import SVDMPConfig
from golden.model_accuracy import (EVALUATION_TEXTS, GOAL_MEAN_SQNR_DB, GOAL_MIN_COSINE, Goal, ModelAccuracy,
                                   compile_model, evaluate_model, evaluate_scheme)
from golden.quantizer import quantize_hgq_fp16
from sevedo.cli import main

SHORT_TEXT = "The cat sat on a warm stone."
SMALL_SCHEMES = ("int4 group-64 fp16", "int4 fine-group fp16", DEFAULT_SCHEME)


@pytest.fixture(scope="module")
def calibration():
    return minilm.capture_linear_layers()


@pytest.fixture(scope="module")
def default_layers(calibration):
    return compile_model(DEFAULT_SCHEME, calibration)


def float64_linear(name, x, weight, bias):
    return x.astype(np.float64) @ weight.astype(np.float64).T + bias


# The linear-layer hook of golden.minilm.

def test_hook_float32_reproduces_encode():
    texts = [SHORT_TEXT, EVALUATION_TEXTS[0]]
    assert np.array_equal(minilm.encode(texts, minilm.float32_linear), minilm.encode(texts))


def test_hook_float64_close_to_encode():
    texts = [SHORT_TEXT, EVALUATION_TEXTS[0]]
    reference = minilm.encode(texts)
    embeddings = minilm.encode(texts, float64_linear)
    assert np.max(np.abs(embeddings - reference)) < 1e-5
    assert np.min(np.sum(embeddings * reference, axis=1)) > 0.99999


def test_hook_called_per_layer_in_order():
    calls = []

    def record(name, x, weight, bias):
        calls.append((name, x.shape, weight.shape))
        return minilm.float32_linear(name, x, weight, bias)

    _, captures = minilm.forward(minilm.tokenize(SHORT_TEXT), record)
    assert [name for name, _, _ in calls] == list(minilm.LINEAR_NAMES)
    for name, x_shape, weight_shape in calls:
        assert x_shape == captures[name].x.shape
        assert weight_shape == captures[name].weight.shape


def test_hook_output_replaces_layer():
    # Zeroing the last FFN output leaves the residual path and LayerNorm, so the embedding changes.
    def zero_last(name, x, weight, bias):
        y = minilm.float32_linear(name, x, weight, bias)
        return np.zeros_like(y) if name == "layer5.ffn_out" else y

    hidden, _ = minilm.forward(minilm.tokenize(SHORT_TEXT), zero_last)
    reference, _ = minilm.forward(minilm.tokenize(SHORT_TEXT))
    assert not np.array_equal(hidden, reference)
    assert hidden.dtype == np.float32


def test_hook_wrong_shape_rejected():
    def transposed(name, x, weight, bias):
        return minilm.float32_linear(name, x, weight, bias).T

    tokens = minilm.tokenize(SHORT_TEXT).size
    message = f"linear layer layer0.query must return shape ({tokens}, 384), not (384, {tokens})"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minilm.forward(minilm.tokenize(SHORT_TEXT), transposed)


# Evaluation texts.

def test_evaluation_texts_not_calibration():
    assert 8 <= len(EVALUATION_TEXTS) <= 16
    assert len(set(EVALUATION_TEXTS)) == len(EVALUATION_TEXTS)
    calibration = minilm.tokenize(minilm.DEFAULT_TEXT)[1:-1].tolist()
    for text in EVALUATION_TEXTS:
        assert text not in minilm.DEFAULT_TEXT
        ids = minilm.tokenize(text)[1:-1].tolist()
        windows = {tuple(calibration[i:i + len(ids)]) for i in range(len(calibration) - len(ids) + 1)}
        assert tuple(ids) not in windows


# The whole-model path on a short text.

def captured_inputs(layers, text):
    """Return the inputs of every layer in the quantized model's own forward pass."""
    def quantized(name, x, weight, bias):
        return layers[name].outputs(x)[1]

    _, captures = minilm.forward(minilm.tokenize(text), quantized)
    return captures


def test_default_layer_sqnr_matches_run_layer(calibration, default_layers):
    reference = minilm.encode([SHORT_TEXT])
    result = evaluate_scheme(DEFAULT_SCHEME, default_layers, [SHORT_TEXT], reference)
    captures = captured_inputs(default_layers, SHORT_TEXT)
    assert list(result.layer_sqnr_db) == list(minilm.LINEAR_NAMES)
    for name, capture in captures.items():
        layer = compile_scheme(DEFAULT_SCHEME, calibration[name].x, capture.weight, None)
        x = capture.x.astype(np.float64)
        expected = sqnr_db(x @ capture.weight.astype(np.float64).T, run_layer(layer, x).output)
        assert result.layer_sqnr_db[name] == expected, name


def test_default_scheme_output_is_run_layer(calibration, default_layers):
    capture = calibration["layer0.ffn_in"]
    layer = compile_layer(capture.weight, capture.bias, capture.x, CompilerConfig())
    products, output = default_layers["layer0.ffn_in"].outputs(capture.x)
    expected = run_layer(layer, capture.x)
    assert np.array_equal(FP32.to_bits(output), FP32.to_bits(expected.output))
    assert np.array_equal(FP32.to_bits(products), FP32.to_bits(expected.lowrank + expected.residual))


def test_default_uses_onchip_quantizer(default_layers):
    # run_layer quantizes the FP16 activations as the hardware quantizer does, on the model's own activations.
    captures = captured_inputs(default_layers, EVALUATION_TEXTS[1])
    for name in ("layer0.query", "layer3.ffn_out", "layer5.attn_out"):
        layer = default_layers[name].compiled
        x = captures[name].x.astype(np.float64)
        x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
        onchip = quantize_hgq_fp16(x_fp16, layer.config.quant)
        quantized = run_layer(layer, x).activations
        assert np.array_equal(quantized.codes, onchip.codes), name
        assert np.array_equal(quantized.shifts, onchip.shifts), name
        assert np.array_equal(FP16.to_bits(quantized.scales), FP16.to_bits(onchip.scales)), name


def test_cosines_match_encode(default_layers):
    texts = [SHORT_TEXT, EVALUATION_TEXTS[2]]
    reference = minilm.encode(texts)
    result = evaluate_scheme(DEFAULT_SCHEME, default_layers, texts, reference)
    embeddings = minilm.encode(texts, lambda name, x, w, b: default_layers[name].outputs(x)[1]).astype(np.float64)
    expected = np.sum(embeddings * reference, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference.astype(np.float64), axis=1))
    assert result.cosines == tuple(expected.tolist())
    assert all(0.5 < cosine < 1.0 for cosine in result.cosines)


def test_evaluate_model_small():
    progress = []
    result = evaluate_model(SMALL_SCHEMES, [SHORT_TEXT], progress=progress.append)
    assert list(result.results) == list(SMALL_SCHEMES)
    assert result.tokens == (minilm.tokenize(SHORT_TEXT).size,)
    assert result.calibration_tokens == 59
    assert progress[0] == "[1/3] int4 group-64 fp16: compiling 36 layers ..."
    assert progress[-1].startswith(f"[3/3] {DEFAULT_SCHEME}: compiled in ")
    default = result.results[DEFAULT_SCHEME]
    assert default.mean_sqnr_db > result.results["int4 group-64 fp16"].mean_sqnr_db
    assert set(default.alphas.values()) == {0.5}
    assert set(result.results["int4 fine-group fp16"].alphas.values()) == {None}
    assert result.fp_multiply_ratio(DEFAULT_SCHEME) == 0.5
    assert result.fp_multiply_ratio(DEFAULT_SCHEME, "int4 fine-group fp16") == 0.125
    assert [goal.name for goal in result.goals()] == [
        "mean per-layer SQNR (dB)", "embedding cosine min",
        "residual FP multiplies / int4 group-64 fp16", "residual FP multiplies / int4 fine-group fp16"]
    summary = result.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["schemes"][DEFAULT_SCHEME]["fp_multiply_ratio"] == 0.5


def test_evaluate_model_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="^schemes must be names from MODEL_SCHEMES, not 'fp8'$"):
        evaluate_model(("fp8",))


def test_evaluate_model_rejects_single_str():
    with pytest.raises(TypeError, match="^texts must be a sequence of str, not a str"):
        evaluate_model(SMALL_SCHEMES, SHORT_TEXT)


def test_evaluate_scheme_needs_every_layer(default_layers):
    layers = dict(default_layers)
    del layers["layer2.value"]
    message = "layers must contain every MiniLM linear layer, but 'layer2.value' is missing"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        evaluate_scheme(DEFAULT_SCHEME, layers, [SHORT_TEXT], minilm.encode([SHORT_TEXT]))


# Operation counts.

def test_fp_multiplies_per_scheme(calibration):
    capture = calibration["layer0.ffn_in"]
    n, k = capture.weight.shape
    expected = {
        "int4 per-tensor": n,
        "int4 group-64 fp16": 2 * n * k // 64,
        "int4 group-64 fp16 + smooth + svd": 2 * n * k // 64,
        "mxint4 block-32": 0,
        "int4 fine-group fp16": 2 * n * k // 16,
        "hgq": 2 * n * k // 128,
        "hgq + svd": 2 * n * k // 128,
        "hgq + searched smooth + svd": 2 * n * k // 128,
        "hgq + smooth + svd-mp": 2 * n * k // 128,
    }
    assert tuple(expected) == MODEL_SCHEMES
    for scheme, count in expected.items():
        layer = compile_model_scheme(scheme, capture.weight, capture.bias, capture.x, alpha_grid=(0.5,))
        assert fp_multiplies(layer.op_counts()) == count, scheme


def test_mx_op_counts(calibration):
    capture = calibration["layer0.ffn_in"]
    n, k = capture.weight.shape
    counts = compile_model_scheme("mxint4 block-32", capture.weight, capture.bias).op_counts(tokens=3)
    assert counts.int_to_fp32 == 3 * n * k // 32
    assert counts.residual_fp32_adds == 3 * n * k // 32
    assert counts.output_fp32_adds == 3 * n
    assert counts.int4_macs == 3 * n * k


def test_lowrank_slices_per_scheme(calibration):
    capture = calibration["layer0.query"]
    n, k = capture.weight.shape
    wide = compile_model_scheme("hgq + svd", capture.weight, capture.bias, capture.x)
    mixed = compile_model_scheme(DEFAULT_SCHEME, capture.weight, capture.bias, capture.x)
    assert wide.op_counts().lowrank_slices == (k + n) * 32 * 3
    assert mixed.op_counts().lowrank_slices == (k + n) * (8 * 3 + 24)


# Scheme compilation.

def test_group_schemes_match_scheme_outputs(calibration):
    capture = calibration["layer1.value"]
    outputs = golden.accuracy.scheme_outputs(capture.x, capture.weight, schemes=("int4 group-64 fp16", "hgq"))
    for scheme, expected in outputs.items():
        layer = compile_model_scheme(scheme, capture.weight, None)
        assert np.array_equal(layer.products(capture.x), expected), scheme


def test_per_tensor_output(calibration):
    capture = calibration["layer1.value"]
    layer = compile_model_scheme("int4 per-tensor", capture.weight, capture.bias)
    expected = golden.accuracy.scheme_outputs(capture.x, capture.weight, schemes=("int4 per-tensor",))
    products, output = layer.outputs(capture.x)
    assert np.array_equal(products, expected["int4 per-tensor"].astype(np.float32))
    assert np.array_equal(output, products + capture.bias)


def test_search_alpha_picks_best(calibration):
    capture = calibration["layer2.attn_out"]
    config = CompilerConfig(alpha=None, svdmp=SVDMPConfig.all_wide())
    best, sqnr = search_alpha(capture.x, capture.weight, config)
    assert list(sqnr) == list(ALPHA_GRID)
    assert sqnr[best] == max(sqnr.values())
    reference = capture.x.astype(np.float64) @ capture.weight.astype(np.float64).T
    layer = compile_layer(capture.weight, None, capture.x, CompilerConfig(alpha=0.25, svdmp=config.svdmp))
    assert sqnr[0.25] == sqnr_db(reference, run_layer(layer, capture.x).output)
    searched = compile_model_scheme("hgq + searched smooth + svd", capture.weight, capture.bias, capture.x)
    assert searched.alpha == best
    assert searched.alpha_sqnr_db == sqnr


def test_search_alpha_tie_takes_first(calibration):
    capture = calibration["layer2.attn_out"]
    config = CompilerConfig(alpha=None)
    best, sqnr = search_alpha(capture.x, capture.weight, config, alpha_grid=(0.75, 0.75))
    assert best == 0.75
    assert list(sqnr) == [0.75]


@pytest.mark.parametrize("call, message", [
    (lambda w, b, x: compile_model_scheme("fp8", w), "scheme must be one of 'int4 per-tensor', "),
    (lambda w, b, x: compile_model_scheme("hgq + searched smooth + svd", w, b),
     "x_calibration is required by 'hgq + searched smooth + svd'"),
    (lambda w, b, x: compile_model_scheme("hgq", w, b[:-1]), "bias must have shape (384,), not (383,)"),
    (lambda w, b, x: compile_model_scheme("hgq", w, np.where(np.arange(384) == 7, np.nan, b)),
     "bias must be finite, but bias[7] is nan (1 non-finite values in all)"),
    (lambda w, b, x: compile_model_scheme("hgq", w[:, :100], None),
     "weight row length K must be a multiple of coarse_group (128), not 100; pad the input channels with zeros "
     "up to 128"),
    (lambda w, b, x: compile_model_scheme(DEFAULT_SCHEME, w[:, :100], None, x[:, :100]),
     "weight K must be a multiple of coarse_group (128), not 100; pad the input channels with zeros up to 128"),
    (lambda w, b, x: compile_model_scheme("hgq + searched smooth + svd", w[:, :100], None, x[:, :100]),
     "weight K must be a multiple of coarse_group (128), not 100; pad the input channels with zeros up to 128"),
    (lambda w, b, x: search_alpha(x, w, CompilerConfig(), alpha_grid=()), "alpha_grid must contain at least one alpha"),
])
def test_compile_model_scheme_errors(calibration, call, message):
    capture = calibration["layer0.query"]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        call(capture.weight, capture.bias, capture.x)


def test_layer_rejects_wrong_k(calibration):
    capture = calibration["layer0.query"]
    layer = compile_model_scheme("mxint4 block-32", capture.weight, capture.bias)
    with pytest.raises(ValueError, match=r"^x must have K = 384 columns, not 256$"):
        layer.outputs(np.ones((2, 256)))


# The MX format.

def reference_mx(values):
    """Quantize one block with Python integers and fractions: exponent and codes."""
    amax = max(abs(v) for v in values)
    if amax == 0:
        exponent = -127
    else:
        exponent = max(math.frexp(amax)[1] - 1 - 2, -127)
    codes = [min(max(round(Fraction(v) / Fraction(2) ** exponent), -8), 7) for v in values]
    return exponent, codes


@pytest.mark.parametrize("block, exponent, codes", [
    ([0.0] * 32, -127, [0] * 32),
    ([7.9] + [0.0] * 31, 0, [7] + [0] * 31),
    ([-7.9] + [0.0] * 31, 0, [-8] + [0] * 31),
    ([-4.0, 4.0] + [0.0] * 30, 0, [-4, 4] + [0] * 30),
    ([8.0, -7.0] + [0.0] * 30, 1, [4, -4] + [0] * 30),
    ([1e4] + [0.5] * 31, 11, [5] + [0] * 31),
    ([2.5, 3.5, -2.5, 0.5, 1.5, 7.5] + [0.0] * 26, 0, [2, 4, -2, 0, 2, 7] + [0] * 26),
    ([2.0 ** -125] + [0.0] * 31, -127, [4] + [0] * 31),
    ([2.0 ** -128, 2.0 ** -130] + [0.0] * 30, -127, [0, 0] + [0] * 30),
    ([3 * 2.0 ** -128, -2.0 ** -127] + [0.0] * 30, -127, [2, -1] + [0] * 30),
    ([2.0 ** -1074] + [0.0] * 31, -127, [0] * 32),
])
def test_mx_edge_cases(block, exponent, codes):
    q = quantize_mx(np.array([block]))
    assert q.exponents.tolist() == [[exponent]]
    assert q.codes[0].tolist() == codes
    assert reference_mx(block) == (exponent, codes)


def test_mx_random_blocks_match_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 128)) * np.ldexp(1.0, rng.integers(-140, 20, size=(6, 1)))
    q = quantize_mx(x)
    for row in range(6):
        for block in range(4):
            values = x[row, 32 * block:32 * (block + 1)].tolist()
            exponent, codes = reference_mx(values)
            assert q.exponents[row, block] == exponent
            assert q.codes[row, 32 * block:32 * (block + 1)].tolist() == codes


def test_mx_overflow_rejected():
    x = np.zeros((2, 64))
    x[1, 40] = 2.0 ** 130
    message = ("x row 1, block 1 has amax 1.36113e+39, whose shared exponent 128 exceeds the E8M0 maximum 127; "
               "scale the tensor down")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        quantize_mx(x)


def test_mx_largest_exponent_accepted():
    q = quantize_mx(np.full((1, 32), 2.0 ** 129))
    assert q.exponents.tolist() == [[127]]
    assert set(q.codes[0].tolist()) == {4}


def test_mx_rejects_partial_block():
    with pytest.raises(ValueError, match=r"^x row length K must be a multiple of the MX block \(32\), not 48$"):
        quantize_mx(np.ones((1, 48)))


def test_mx_format_parameters():
    assert MXINT4 == BlockScaledFormat(INT4, 32)
    assert (MXINT4.scale_emin, MXINT4.scale_emax, MXINT4.element_emax) == (-127, 127, 2)


def test_mx_matmul_order_and_rounding():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 96)) * np.ldexp(1.0, rng.integers(-30, 30, size=96))
    w = rng.standard_normal((4, 96)) * np.ldexp(1.0, rng.integers(-30, 30, size=96))
    xq, wq = quantize_mx(x), quantize_mx(w)
    y = mx_matmul(xq, wq)
    for t in range(3):
        for n in range(4):
            acc = np.float32(0.0)
            for b in range(3):
                partial = sum(int(xq.codes[t, k]) * int(wq.codes[n, k]) for k in range(32 * b, 32 * (b + 1)))
                term = Fraction(partial) * Fraction(2) ** int(xq.exponents[t, b] + wq.exponents[n, b])
                acc = np.float32(acc + np.float32(float(term)))
            assert FP32.to_bits(y[t, n]) == FP32.to_bits(acc)
    assert np.allclose(y, xq.dequantize() @ wq.dequantize().T, rtol=1e-5, atol=0)


def test_mx_dequantize_exact():
    q = quantize_mx(np.array([[-7.9, 3.2] + [0.01] * 30]))
    assert q.dequantize()[0, :3].tolist() == [-8.0, 3.0, 0.0]


# Goals.

def test_goal_describe():
    assert Goal("embedding cosine min", 0.96, 0.99, True).describe() == "embedding cosine min 0.96 >= 0.99: NOT met"
    assert Goal("ratio", 0.5, 0.5, False).describe() == "ratio 0.5 <= 0.5: met"
    assert not Goal("ratio", 0.51, 0.5, False).met


def test_goals_need_default_scheme():
    result = evaluate_model(("int4 group-64 fp16",), [SHORT_TEXT])
    assert result.goals() == []
    assert result.summary()["goals_met"] is True
    assert isinstance(result, ModelAccuracy)


def test_goal_bounds():
    assert GOAL_MEAN_SQNR_DB == 21.0
    assert GOAL_MIN_COSINE == 0.99


# The sevedo accuracy command.

def test_accuracy_command_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(golden.accuracy, "MODEL_SCHEMES", SMALL_SCHEMES)
    path = tmp_path / "texts.txt"
    path.write_text(f"{SHORT_TEXT}\n\n  \n{EVALUATION_TEXTS[3]}\n", encoding="utf-8")
    status = main(["accuracy", "--texts", str(path), "--per-layer", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    goals = summary["goals"]
    assert status == (0 if summary["goals_met"] else 1)
    assert [goal["met"] for goal in goals[2:]] == [True, True]
    assert list(summary["schemes"]) == list(SMALL_SCHEMES)
    assert summary["texts"] == 2
    assert summary["tokens"] == minilm.tokenize(SHORT_TEXT).size + minilm.tokenize(EVALUATION_TEXTS[3]).size
    assert lines[1] == "[1/3] int4 group-64 fp16: compiling 36 layers ..."
    assert "  residual FP multiplies / int4 group-64 fp16 0.5 <= 0.5: met" in lines
    assert "layer                K     N      g64       gf  default" in lines
    assert lines[-2].startswith(f"summary: {DEFAULT_SCHEME} on 2 texts: mean layer SQNR ")
    for goal in goals:
        assert f"  {Goal(goal['name'], goal['value'], goal['bound'], goal['relation'] == '>=').describe()}" in lines


@pytest.mark.parametrize("argv, message", [
    (["accuracy", "--weight", "w"], "sevedo accuracy: error: --weight needs --safetensors"),
    (["accuracy", "--activations", "x.npy"], "sevedo accuracy: error: --activations needs --safetensors"),
    (["accuracy", "--safetensors", "m.safetensors"],
     "sevedo accuracy: error: --safetensors needs --weight, the name of the weight tensor"),
    (["accuracy", "--safetensors", "m.safetensors", "--weight", "w", "--texts", "t.txt"],
     "sevedo accuracy: error: --texts applies to the whole model, not to a layer from --safetensors"),
    (["accuracy", "--rank", "-1"], "sevedo accuracy: error: --rank must be a non-negative integer, not -1"),
    (["accuracy", "--texts", "/nonexistent/texts.txt"],
     "sevedo accuracy: error: --texts '/nonexistent/texts.txt' cannot be read: No such file or directory"),
    (["accuracy", "--fine-group", "24"],
     "sevedo accuracy: error: coarse_group must be a multiple of fine_group (24), not 128"),
])
def test_accuracy_command_invalid_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_accuracy_empty_texts_file(tmp_path, capsys):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n", encoding="utf-8")
    assert main(["accuracy", "--texts", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"sevedo accuracy: error: --texts {str(path)!r} contains no text"


# The full run: 36 layers x all schemes on the 12 evaluation texts, about 30 s of CPU time.

@pytest.mark.slow
def test_accuracy_command_full():
    result = subprocess.run([sys.executable, "-m", "sevedo", "accuracy", "--json"], capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    schemes = summary["schemes"]
    assert list(schemes) == list(MODEL_SCHEMES)
    assert summary["texts"] == len(EVALUATION_TEXTS)
    assert result.returncode == (0 if summary["goals_met"] else 1)
    assert schemes[DEFAULT_SCHEME]["fp_multiply_ratio"] == 0.5
    assert schemes["int4 fine-group fp16"]["fp_multiply_ratio"] == 4.0
    assert schemes["mxint4 block-32"]["fp_multiply_ratio"] == 0.0
    for scheme in MODEL_SCHEMES:
        assert len(schemes[scheme]["layer_sqnr_db"]) == 36
    for scheme in MODEL_SCHEMES[1:]:
        assert schemes[scheme]["mean_sqnr_db"] > schemes["int4 per-tensor"]["mean_sqnr_db"], scheme
    assert schemes[DEFAULT_SCHEME]["mean_sqnr_db"] > schemes["int4 group-64 fp16"]["mean_sqnr_db"]
    assert schemes[DEFAULT_SCHEME]["mean_cosine"] > schemes["int4 group-64 fp16"]["mean_cosine"]
    assert set(schemes["hgq + searched smooth + svd"]["alphas"].values()) <= set(ALPHA_GRID)
    assert lines[-2].startswith(f"summary: {DEFAULT_SCHEME} on 12 texts: ")
