"""Pack NumPy arrays into stream payloads laid out by Amaranth layouts, and back.

A payload is stored as little-endian bytes, one row per beat, so that a
testbench turns it into the integer value of the ``payload`` port with
``int.from_bytes(row, "little")``. Field offsets come from the layout itself.
"""

import numpy as np
from amaranth import Shape
from amaranth.lib import data

__all__ = ["pack", "unpack", "payload_bytes"]

_CHUNK_BEATS = 16384


def payload_bytes(layout):
    """Return the number of bytes of one packed payload of ``layout``."""
    return (data.Layout.cast(layout).size + 7) // 8


def _leaves(shape, offset, values):
    """Yield ``(offset, Shape, values)`` for every scalar field under ``shape``."""
    if isinstance(shape, data.StructLayout):
        for name, field in shape:
            yield from _leaves(field.shape, offset + field.offset, values[name])
    elif isinstance(shape, data.ArrayLayout):
        element_size = Shape.cast(shape.elem_shape).width
        for index in range(shape.length):
            yield from _leaves(shape.elem_shape, offset + index * element_size, values[:, index])
    else:
        yield offset, Shape.cast(shape), values


def pack(layout, fields, count):
    """Pack ``count`` beats; ``fields`` maps each field name to an array whose first axis is the beat.

    Array fields have one more axis per ``ArrayLayout`` level. Values are
    truncated to their field width (two's complement for signed fields).
    Returns uint8 of shape (count, payload_bytes(layout)).
    """
    layout = data.Layout.cast(layout)
    packed = np.zeros((count, payload_bytes(layout)), dtype=np.uint8)
    for start in range(0, count, _CHUNK_BEATS):
        stop = min(start + _CHUNK_BEATS, count)
        bits = np.zeros((stop - start, payload_bytes(layout) * 8), dtype=np.uint8)
        chunk = _Slice(fields, start, stop)
        for offset, shape, values in _leaves(layout, 0, chunk):
            if shape.width == 0:
                continue
            raw = np.asarray(values, dtype=np.int64) & ((1 << shape.width) - 1)
            bits[:, offset:offset + shape.width] = (raw[:, None] >> np.arange(shape.width)) & 1
        packed[start:stop] = np.packbits(bits, axis=1, bitorder="little")
    return packed


class _Slice:
    """A view of ``fields`` restricted to beats ``start:stop``."""

    def __init__(self, fields, start, stop):
        self._fields, self._start, self._stop = fields, start, stop

    def __getitem__(self, name):
        return np.asarray(self._fields[name])[self._start:self._stop]


def unpack(layout, packed):
    """Unpack uint8 payload rows into ``{field: array}``, the inverse of :func:`pack`.

    Signed fields come back sign-extended; every array is int64.
    """
    layout = data.Layout.cast(layout)
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, bitorder="little")
    weights = {}

    def read(shape, offset):
        if isinstance(shape, data.StructLayout):
            return {name: read(field.shape, offset + field.offset) for name, field in shape}
        if isinstance(shape, data.ArrayLayout):
            size = Shape.cast(shape.elem_shape).width
            items = [read(shape.elem_shape, offset + i * size) for i in range(shape.length)]
            if items and isinstance(items[0], dict):
                return items
            return np.stack(items, axis=1) if items else np.zeros((len(bits), 0), dtype=np.int64)
        shape = Shape.cast(shape)
        if shape.width not in weights:
            weights[shape.width] = np.left_shift(np.int64(1), np.arange(shape.width, dtype=np.int64))
        value = bits[:, offset:offset + shape.width].astype(np.int64) @ weights[shape.width]
        if shape.signed and shape.width:
            value = np.where(value >= (1 << (shape.width - 1)), value - (1 << shape.width), value)
        return value

    return read(layout, 0)
