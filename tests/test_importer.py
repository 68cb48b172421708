"""Import of a linear layer from a safetensors file, its checks, and `sevedo accuracy --safetensors`."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from golden import minilm
from golden.accuracy import DEFAULT_SCHEME, MODEL_SCHEMES, compare_layer_schemes
from golden.importer import (
    import_layer,
    read_activations,
    read_tensor,
    stand_in_activations,
)
from sevedo.cli import main

N, K, T = 64, 128, 12


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    weight[:, 5] *= 20.0
    nan_weight = weight.copy()
    nan_weight[3, 9] = np.nan
    return {
        "layer.weight": weight,
        "layer.bias": rng.standard_normal(N).astype(np.float32),
        "layer.bias_short": np.zeros(N - 1, np.float32),
        "layer.bias_inf": np.where(np.arange(N) == 2, np.inf, 0.0).astype(np.float32),
        "half.weight": weight.astype(np.float16),
        "wide.weight": (rng.standard_normal((N, 384)) * 0.05).astype(np.float32),
        "odd.weight": np.ones((N, 100), np.float32),
        "vector": np.ones(K, np.float32),
        "nan.weight": nan_weight,
        "count": np.arange(4, dtype=np.int32),
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, tensors):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def activations(tmp_path_factory):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, 7] *= 30.0
    path = tmp_path_factory.mktemp("acts") / "x.npy"
    np.save(path, x)
    return path, x


def write_bf16(path, name, values):
    """Write a safetensors file with one BF16 tensor: the upper halves of the float32 values."""
    bits = (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({name: {"dtype": "BF16", "shape": list(bits.shape),
                                "data_offsets": [0, bits.nbytes]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())


def test_import_with_activations(model_file, tensors, activations):
    path, x = activations
    layer = import_layer(model_file, "layer.weight", "layer.bias", path)
    assert np.array_equal(layer.weight, tensors["layer.weight"].astype(np.float64))
    assert np.array_equal(layer.bias, tensors["layer.bias"].astype(np.float64))
    assert np.array_equal(layer.x, x.astype(np.float64))
    assert layer.stand_in is False
    assert layer.activations_source == str(path)


def test_import_float16_weight(model_file, tensors):
    weight = read_tensor(model_file, "half.weight")
    assert weight.dtype == np.float64
    assert np.array_equal(weight, tensors["layer.weight"].astype(np.float16).astype(np.float64))


def test_import_bf16(tmp_path):
    values = np.array([[1.0, -2.5, 3.0e-3], [65504.0, 1.0e30, -0.0]], dtype=np.float32)
    path = tmp_path / "bf16.safetensors"
    write_bf16(path, "w", values)
    expected = ((values.view(np.uint32) >> 16) << 16).view(np.float32).astype(np.float64)
    got = read_tensor(path, "w")
    assert np.array_equal(got, expected)
    assert np.signbit(got[1, 2])


def test_stand_in_activations(model_file):
    layer = import_layer(model_file, "wide.weight")
    captures = minilm.capture_linear_layers()
    assert layer.stand_in is True
    assert layer.activations_source == "MiniLM layer0.query on the default text"
    assert np.array_equal(layer.x, captures["layer0.query"].x.astype(np.float64))
    assert layer.bias is None


def test_stand_in_ffn_width():
    name, x = stand_in_activations(1536)
    assert name == "layer0.ffn_out"
    assert x.shape == (59, 1536)


def test_compare_layer_schemes(model_file, activations):
    path, _ = activations
    layer = import_layer(model_file, "layer.weight", "layer.bias", path)
    rows = compare_layer_schemes(layer.x, layer.weight, layer.bias)
    assert list(rows) == list(MODEL_SCHEMES)
    assert rows[DEFAULT_SCHEME]["fp_multiplies"] * 2 == rows["int4 group-64 fp16"]["fp_multiplies"]
    assert rows[DEFAULT_SCHEME]["alpha"] == 0.5
    assert rows["hgq"]["alpha"] is None
    assert rows["hgq + searched smooth + svd"]["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("name, message", [
    ("layer.wieght", "tensor 'layer.wieght' not found in {path!r}, which has 10 tensors; similar names: "
                     "'layer.weight', "),
    ("zzz", "tensor 'zzz' not found in {path!r}, which has 10 tensors; for example: 'count', 'half.weight', "
            "'layer.bias', 'layer.bias_inf', 'layer.bias_short'"),
    ("count", "tensor 'count' must have a floating-point dtype (F16, F32, F64, BF16), not I32"),
])
def test_read_tensor_errors(model_file, name, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message.format(path=str(model_file)))}"):
        read_tensor(model_file, name)


def test_missing_safetensors_file(tmp_path):
    path = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'safetensors file {str(path)!r} not found')}$"):
        import_layer(path, "w")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "text.safetensors"
    path.write_text("not a tensor file")
    with pytest.raises(ValueError, match=f"^{re.escape(f'{str(path)!r} cannot be read as a safetensors file: ')}"):
        read_tensor(path, "w")


@pytest.mark.parametrize("weight, bias, message", [
    ("vector", None, "weight 'vector' must be a non-empty 2-D tensor (N x K), not shape (128,)"),
    ("nan.weight", None, "weight must be finite, but weight[3, 9] is nan (1 non-finite values in all)"),
    ("odd.weight", None, "weight 'odd.weight' K must be a multiple of coarse_group (128), not 100; pad the input "
                         "channels with zeros up to 128"),
    ("layer.weight", "layer.bias_short", "bias 'layer.bias_short' must have shape (64,) to match the weight's "
                                         "N = 64, not (63,)"),
    ("layer.weight", "layer.bias_inf", "bias must be finite, but bias[2] is inf (1 non-finite values in all)"),
    ("layer.weight", None, "no MiniLM layer has K = 128 input channels (they have 384 or 1536), so none can stand "
                           "in for the activations; pass an activations .npy file"),
])
def test_import_layer_errors(model_file, weight, bias, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        import_layer(model_file, weight, bias)


def test_activations_errors(tmp_path):
    missing = tmp_path / "missing.npy"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'activations file {str(missing)!r} not found')}$"):
        read_activations(missing, K)

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((3, 96)))
    message = f"activations in {str(wrong)!r} must have shape (T, 128) with T >= 1 to match the weight's K = 128, " \
              "not (3, 96)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        read_activations(wrong, K)

    nonfinite = tmp_path / "nonfinite.npy"
    x = np.ones((2, K))
    x[1, 4] = -np.inf
    np.save(nonfinite, x)
    with pytest.raises(ValueError, match=re.escape("activations must be finite, but activations[1, 4] is -inf "
                                                   "(1 non-finite values in all)")):
        read_activations(nonfinite, K)

    text = tmp_path / "text.npy"
    text.write_text("not numpy")
    message = f"activations file {str(text)!r} cannot be read as a .npy array: "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        read_activations(text, K)

    strings = tmp_path / "strings.npy"
    np.save(strings, np.array([["a"] * K]))
    message = f"activations in {str(strings)!r} must be an array of numbers"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        read_activations(strings, K)


def test_accuracy_command_layer(model_file, activations, capsys):
    path, _ = activations
    argv = ["accuracy", "--safetensors", str(model_file), "--weight", "layer.weight", "--bias", "layer.bias",
            "--activations", str(path), "--json"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    layer = import_layer(model_file, "layer.weight", "layer.bias", path)
    expected = compare_layer_schemes(layer.x, layer.weight, layer.bias)
    assert summary["stand_in"] is False
    assert (summary["n"], summary["k"], summary["tokens"]) == (N, K, T)
    for scheme, row in expected.items():
        assert summary["schemes"][scheme]["sqnr_db"] == row["sqnr_db"], scheme
    assert summary["schemes"][DEFAULT_SCHEME]["fp_multiply_ratio"] == 0.5
    assert lines[1] == f"activations: {path} ({T} tokens)"
    assert lines[-2].startswith(f"summary: layer.weight with {DEFAULT_SCHEME}: SQNR ")


def test_accuracy_command_stand_in(model_file, capsys):
    argv = ["accuracy", "--safetensors", str(model_file), "--weight", "wide.weight", "--json"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["stand_in"] is True
    assert summary["activations"] == "MiniLM layer0.query on the default text"
    assert lines[1] == ("activations: STAND-IN, MiniLM layer0.query on the default text (59 tokens), not the "
                        "layer's own inputs; pass --activations for real figures")
    assert "(stand-in activations)" in lines[-2]


@pytest.mark.parametrize("argv, message", [
    (["--weight", "missing.weight"], "tensor 'missing.weight' not found in {model!r}, which has 10 tensors; "),
    (["--weight", "odd.weight"], "weight 'odd.weight' K must be a multiple of coarse_group (128), not 100; "),
    (["--weight", "layer.weight", "--activations", "/nonexistent/x.npy"],
     "activations file '/nonexistent/x.npy' not found"),
])
def test_accuracy_command_layer_errors(model_file, argv, message, capsys):
    assert main(["accuracy", "--safetensors", str(model_file), *argv]) == 2
    expected = "sevedo accuracy: error: " + message.format(model=str(model_file))
    assert capsys.readouterr().err.strip().startswith(expected)


def test_accuracy_command_missing_file(tmp_path, capsys):
    path = tmp_path / "none.safetensors"
    assert main(["accuracy", "--safetensors", str(path), "--weight", "w"]) == 2
    assert capsys.readouterr().err.strip() == f"sevedo accuracy: error: safetensors file {str(path)!r} not found"
