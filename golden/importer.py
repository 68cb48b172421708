"""Import one linear layer of any model from a safetensors file.

The weight (N x K, as PyTorch stores ``nn.Linear.weight``) and an optional
bias (N,) are read by tensor name with the ``safetensors`` package, which
reads only the tensors asked for. Activations (T x K) come from a ``.npy``
file. Without one, the input activations of the first MiniLM linear layer
with the same K, on :data:`golden.minilm.DEFAULT_TEXT`, stand in for them;
:attr:`ImportedLayer.stand_in` marks that case, so that reports can state
that the accuracy figures are not those of the layer's real inputs.

Tensors of dtype F16, F32, F64 and BF16 are read; BF16 is widened to
float32 exactly. Every array is returned as float64.
"""

import difflib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from . import minilm
from .hgq import HGQConfig

__all__ = ["ImportedLayer", "FLOAT_DTYPES", "read_tensor", "read_activations", "stand_in_activations",
           "import_layer"]

# safetensors dtype names that the importer reads, mapped to NumPy types;
# BF16 has no NumPy type and is widened to float32.
FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None}

# Names listed in the message for an unknown tensor name.
LISTED_NAMES = 5


@dataclass(frozen=True, eq=False)
class ImportedLayer:
    """A linear layer ``y = x @ weight.T + bias`` read from files.

    Attributes
    ----------
    weight : ndarray of float64, shape (N, K)
    bias : ndarray of float64, shape (N,), or None
    x : ndarray of float64, shape (T, K)
        The activations.
    weight_name, bias_name : str, str or None
        Tensor names in the safetensors file.
    activations_source : str
        The ``.npy`` path, or ``"MiniLM <layer> on the default text"``.
    stand_in : bool
        True when the activations are MiniLM's, not the layer's own.
    """

    weight: np.ndarray
    bias: np.ndarray | None
    x: np.ndarray
    weight_name: str
    bias_name: str | None
    activations_source: str
    stand_in: bool


def _check_file(path, kind):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} not found")
    return path


def _read_bf16(path, name):
    """Read a BF16 tensor by parsing the safetensors header: 8-byte length, JSON header, data."""
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
        entry = header[name]
        start, end = entry["data_offsets"]
        file.seek(8 + header_size + start)
        raw = np.frombuffer(file.read(end - start), dtype="<u2")
    # A BF16 value is the upper half of the float32 with the same bits.
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _unknown_name_message(name, names, path):
    close = difflib.get_close_matches(name, names, n=LISTED_NAMES, cutoff=0.5)
    listed = close or sorted(names)[:LISTED_NAMES]
    label = "similar names" if close else "for example"
    return (f"tensor {name!r} not found in {str(path)!r}, which has {len(names)} tensors; "
            f"{label}: {', '.join(map(repr, listed))}")


def read_tensor(path, name):
    """Read one floating-point tensor by name from a safetensors file, as float64.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a safetensors file, if it has no tensor ``name``
        (the message lists similar or first names), or if the tensor is not
        of a floating-point dtype.
    """
    path = _check_file(path, "safetensors")
    try:
        with safe_open(str(path), framework="numpy") as tensors:
            names = list(tensors.keys())
            if name not in names:
                raise ValueError(_unknown_name_message(name, names, path))
            dtype = tensors.get_slice(name).get_dtype()
            if dtype not in FLOAT_DTYPES:
                raise ValueError(f"tensor {name!r} must have a floating-point dtype "
                                 f"({', '.join(FLOAT_DTYPES)}), not {dtype}")
            array = _read_bf16(path, name) if dtype == "BF16" else tensors.get_tensor(name)
    except SafetensorError as error:
        raise ValueError(f"{str(path)!r} cannot be read as a safetensors file: {error}") from None
    return np.asarray(array, dtype=np.float64)


def _check_finite(name, array):
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, but {name}{list(index)} is {array[index]} "
                         f"({int(bad.sum())} non-finite values in all)")


def read_activations(path, k):
    """Read activations (T x K) from a ``.npy`` file, as float64.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a ``.npy`` array of numbers, not 2-D with K columns,
        empty, or not finite.
    """
    path = _check_file(path, "activations")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"activations file {str(path)!r} cannot be read as a .npy array: {error}") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"activations in {str(path)!r} must be an array of numbers, not {type(array).__name__}")
    if array.ndim != 2 or array.shape[1] != k or array.shape[0] == 0:
        raise ValueError(f"activations in {str(path)!r} must have shape (T, {k}) with T >= 1 to match the "
                         f"weight's K = {k}, not {array.shape}")
    array = array.astype(np.float64)
    _check_finite("activations", array)
    return array


def stand_in_activations(k, text=minilm.DEFAULT_TEXT):
    """Return the name and input activations of the first MiniLM linear layer with ``k`` input channels.

    Raises
    ------
    ValueError
        If no MiniLM layer has ``k`` input channels.
    """
    captures = minilm.capture_linear_layers(text)
    for name, capture in captures.items():
        if capture.x.shape[1] == k:
            return name, capture.x.astype(np.float64)
    widths = sorted({capture.x.shape[1] for capture in captures.values()})
    raise ValueError(f"no MiniLM layer has K = {k} input channels (they have {' or '.join(map(str, widths))}), "
                     "so none can stand in for the activations; pass an activations .npy file")


def import_layer(path, weight_name, bias_name=None, activations_path=None, quant=HGQConfig()):
    """Read a linear layer and its activations.

    Parameters
    ----------
    path : str or Path
        The safetensors file.
    weight_name : str
        Name of the weight tensor, shape (N, K).
    bias_name : str, optional
        Name of the bias tensor, shape (N,).
    activations_path : str or Path, optional
        A ``.npy`` file of shape (T, K). Without it, MiniLM's activations
        of a layer with the same K stand in (:func:`stand_in_activations`).
    quant : HGQConfig
        K must be a multiple of its coarse group.

    Returns
    -------
    ImportedLayer

    Raises
    ------
    FileNotFoundError
        If a file does not exist.
    ValueError
        On an unknown tensor name, a shape that does not fit, a non-finite
        value, or K not a multiple of the coarse group.
    """
    weight = read_tensor(path, weight_name)
    if weight.ndim != 2 or weight.size == 0:
        raise ValueError(f"weight {weight_name!r} must be a non-empty 2-D tensor (N x K), not shape {weight.shape}")
    _check_finite("weight", weight)
    n, k = weight.shape
    quant.check_length(k, name=f"weight {weight_name!r} K")

    bias = None
    if bias_name is not None:
        bias = read_tensor(path, bias_name)
        if bias.shape != (n,):
            raise ValueError(f"bias {bias_name!r} must have shape ({n},) to match the weight's N = {n}, "
                             f"not {bias.shape}")
        _check_finite("bias", bias)

    if activations_path is not None:
        x = read_activations(activations_path, k)
        source = str(activations_path)
    else:
        layer, x = stand_in_activations(k)
        source = f"MiniLM {layer} on the default text"
    return ImportedLayer(weight=weight, bias=bias, x=x, weight_name=weight_name, bias_name=bias_name,
                         activations_source=source, stand_in=activations_path is None)
