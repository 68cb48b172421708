"""Stimulus for the residual matrix core: HGQ tensors to beats, golden outputs, and back.

Row tiles of ``rows`` output channels are processed one after another; within
a tile, token after token, each token's row of K in ``K / lanes`` beats. The
output stream carries one beat per (tile, token) in the same order. N is
padded with zero weight rows up to a multiple of ``rows``; the padded outputs
are dropped again by :meth:`RMCStimulus.outputs_to_matrix`.
"""

from dataclasses import dataclass

import numpy as np

from golden.formats import FP16, FP32
from golden.hgq import HGQTensor
from golden.residual import residual_matmul

from .packing import pack, unpack

__all__ = ["RMCStimulus", "make_rmc_stimulus", "pad_rows", "unpack_outputs"]


def pad_rows(tensor, multiple):
    """Return ``tensor`` with zero rows (codes 0, scale +0, shift 0) appended up to a multiple of ``multiple``."""
    rows = tensor.shape[0]
    extra = -rows % multiple
    if extra == 0:
        return tensor

    def grow(array):
        return np.concatenate([array, np.zeros((extra,) + array.shape[1:], dtype=array.dtype)])

    return HGQTensor(grow(tensor.codes), grow(tensor.scales), grow(tensor.shifts), tensor.config)


@dataclass(frozen=True, eq=False)
class RMCStimulus:
    """Packed input beats and expected outputs of one RMC run.

    Attributes
    ----------
    beats : ndarray of uint8, shape (beats, payload bytes)
    expected : ndarray of uint32, shape (output beats, rows)
        FP32 encodings from :func:`golden.residual.residual_matmul`.
    tokens, outputs : int
        T and the unpadded N.
    """

    beats: np.ndarray
    expected: np.ndarray
    tokens: int
    outputs: int

    def outputs_to_matrix(self, output_bits):
        """Turn output beats (uint32, (tiles * T, rows)) into float32 Y of shape (T, N)."""
        rows = output_bits.shape[1]
        tiles = output_bits.shape[0] // self.tokens
        y = output_bits.reshape(tiles, self.tokens, rows).transpose(1, 0, 2).reshape(self.tokens, tiles * rows)
        return FP32.from_bits(y[:, :self.outputs])


def make_rmc_stimulus(config, xq, wq):
    """Build the beats and golden outputs of ``Y = X W^T`` for an RMC of ``config``.

    Raises
    ------
    ValueError
        If the tensors do not use ``config.quant`` or their K differ.
    """
    if xq.config != config.quant or wq.config != config.quant:
        raise ValueError(f"xq and wq must be quantized with the core's {config.quant}")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq and wq must have the same K, not {xq.shape[1]} and {wq.shape[1]}")
    q = config.quant
    rows, lanes = config.rows, config.lanes
    tokens, k = xq.shape
    outputs = wq.shape[0]
    wq = pad_rows(wq, rows)
    tiles = wq.shape[0] // rows
    steps = k // lanes

    # Axes of every field before flattening: (tile, token, step, ...).
    step = np.arange(steps)
    fine = step * lanes // q.fine_group
    coarse = step * lanes // q.coarse_group
    x_codes = xq.codes.reshape(tokens, steps, lanes)
    w_codes = wq.codes.reshape(tiles, rows, steps, lanes).transpose(0, 2, 1, 3)
    w_shifts = wq.shifts.reshape(tiles, rows, -1)[:, :, fine].transpose(0, 2, 1)
    w_scales = FP16.to_bits(wq.scales).reshape(tiles, rows, -1)[:, :, coarse].transpose(0, 2, 1)
    shape = (tiles, tokens, steps)
    count = tiles * tokens * steps

    fields = {
        "x": np.broadcast_to(x_codes[None], shape + (lanes,)).reshape(count, lanes),
        "w": np.broadcast_to(w_codes[:, None], shape + (rows, lanes)).reshape(count, rows, lanes),
        "x_shift": np.broadcast_to(xq.shifts[:, fine][None], shape).reshape(count),
        "w_shift": np.broadcast_to(w_shifts[:, None], shape + (rows,)).reshape(count, rows),
        "x_scale": np.broadcast_to(FP16.to_bits(xq.scales)[:, coarse][None], shape).reshape(count),
        "w_scale": np.broadcast_to(w_scales[:, None], shape + (rows,)).reshape(count, rows),
        "last": np.broadcast_to(step == steps - 1, shape).reshape(count),
    }
    beats = pack(config.beat_layout(), fields, count)

    y = residual_matmul(xq, wq)
    expected = FP32.to_bits(y).reshape(tokens, tiles, rows).transpose(1, 0, 2).reshape(tiles * tokens, rows)
    return RMCStimulus(beats=beats, expected=expected.astype(np.uint32), tokens=tokens, outputs=outputs)


def unpack_outputs(config, packed):
    """Return the FP32 encodings (uint32, (beats, rows)) of packed output payloads."""
    return unpack(config.output_layout(), packed)["y"].astype(np.uint32)
