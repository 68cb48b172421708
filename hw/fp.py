"""Combinational IEEE 754 floating-point units.

Every port carries a raw IEEE encoding as an unsigned bit vector, and every
width comes from the formats in :mod:`golden.formats`. The units round to
nearest, ties to even (RNE), handle subnormal inputs and results exactly as
IEEE 754 does (no flush to zero) and return :data:`FP32_CANONICAL_NAN` for
every NaN result. No unit raises exception flags.

The arithmetic units share three steps: :func:`unpack_float` splits an
encoding into sign, exponent and significand, :func:`count_leading_zeros`
finds the normalization shift and :class:`NormalizeRoundPack` normalizes,
rounds and packs an exact or sticky-jammed intermediate result.
"""

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.formats import FP16, FP32, FP32_CANONICAL_NAN, FloatFormat, signed_width

__all__ = [
    "float_layout", "UnpackedFloat", "unpack_float", "count_leading_zeros",
    "shift_right_sticky", "NormalizeRoundPack",
    "FP32Adder", "FP32Multiplier", "IntToFP32", "FP16ProductToFP32", "FP32ToFP16",
]


def float_layout(fmt):
    """Return the :class:`~amaranth.lib.data.StructLayout` of an encoding of ``fmt``.

    The fields are ``fraction``, ``exponent`` (biased) and ``sign``, from the
    least significant bit up.
    """
    return data.StructLayout({
        "fraction": fmt.frac_bits,
        "exponent": fmt.exp_bits,
        "sign": 1,
    })


@dataclass(frozen=True)
class UnpackedFloat:
    """Fields and class of one decoded IEEE operand.

    Attributes
    ----------
    sign : Value
    exponent : Value
        Biased exponent with subnormals and zero read as 1, so that the value
        of a finite operand is ``significand * 2**(exponent - bias - frac_bits)``.
    significand : Value
        Fraction with the hidden bit prepended (0 for subnormals and zero).
    is_zero, is_inf, is_nan : Value
    """

    sign: Value
    exponent: Value
    significand: Value
    is_zero: Value
    is_inf: Value
    is_nan: Value


def unpack_float(m, fmt, encoding, name):
    """Decode the IEEE encoding ``encoding`` of format ``fmt`` in module ``m``.

    The signals that this adds to ``m`` are named with the prefix ``name``.
    Returns an :class:`UnpackedFloat`.
    """
    fields = float_layout(fmt)(encoding)
    exponent_is_zero = fields.exponent == 0
    exponent_is_max = fields.exponent == fmt.exp_max
    fraction_is_zero = fields.fraction == 0

    unpacked = UnpackedFloat(
        sign=Signal(name=f"{name}_sign"),
        exponent=Signal(range(fmt.exp_max + 1), name=f"{name}_exponent"),
        significand=Signal(fmt.significand_bits, name=f"{name}_significand"),
        is_zero=Signal(name=f"{name}_is_zero"),
        is_inf=Signal(name=f"{name}_is_inf"),
        is_nan=Signal(name=f"{name}_is_nan"),
    )
    m.d.comb += [
        unpacked.sign.eq(fields.sign),
        unpacked.exponent.eq(Mux(exponent_is_zero, 1, fields.exponent)),
        unpacked.significand.eq(Cat(fields.fraction, ~exponent_is_zero)),
        unpacked.is_zero.eq(exponent_is_zero & fraction_is_zero),
        unpacked.is_inf.eq(exponent_is_max & fraction_is_zero),
        unpacked.is_nan.eq(exponent_is_max & ~fraction_is_zero),
    ]
    return unpacked


def count_leading_zeros(value):
    """Return an expression for the number of leading zero bits of ``value``.

    The result is ``len(value)`` when ``value`` is zero. The count is built as
    a tree: each level splits the vector into a high part and a low part whose
    width is a power of two, so the logic depth grows with ``log2(len(value))``.
    """
    value = Value.cast(value)
    width = len(value)
    if width == 0:
        return Const(0, 1)
    if width == 1:
        return ~value[0]

    low_width = 1 << (ceil_log2(width) - 1)
    low, high = value[:low_width], value[low_width:]
    return Mux(high.any(),
               count_leading_zeros(high),
               len(high) + count_leading_zeros(low))


def shift_right_sticky(value, amount):
    """Shift ``value`` right by ``amount`` bits and report whether a one bit was lost.

    ``amount`` is an unsigned value and may exceed ``len(value)``, in which
    case the shifted value is zero. Returns ``(shifted, sticky)``, where
    ``shifted`` has the width of ``value`` and ``sticky`` is the OR of every
    bit shifted out.
    """
    value = Value.cast(value)
    width = len(value)
    clamped = Mux(amount > width, width, amount)
    # Shift a double-width vector, so the bits that leave `value` land in the low half.
    wide = Cat(Const(0, width), value) >> clamped
    return wide[width:], wide[:width].any()


class NormalizeRoundPack(wiring.Component):
    """Normalize, round to nearest even and pack a finite intermediate result.

    The input value is::

        (-1)**sign * significand * 2**(exponent - fmt.bias - (significand_width - 1))

    so ``exponent`` is the biased exponent that the result has when the most
    significant bit of ``significand`` is its hidden bit. The significand may
    have leading zeros and may be zero, and ``exponent`` may lie below the
    normal range.

    The unit shifts the significand left past its leading zeros, but never
    below biased exponent 1, and shifts it right when ``exponent`` is below 1,
    so that small results become subnormals. It then rounds at the last
    fraction bit with a guard bit and a sticky bit (the OR of all lower bits).
    A carry out of the fraction goes into the exponent field, so a subnormal
    can round up to the smallest normal and the largest binade can round up
    to infinity. Results at or above ``2**(fmt.exp_max - fmt.bias)`` become
    infinity. A zero significand gives a zero with the input sign.

    The result is the input value rounded to nearest even. Callers that drop
    low bits before this unit must OR them into the least significant bit of
    ``significand`` (sticky jamming), and that bit must lie below the guard
    position of every result they produce.

    Parameters
    ----------
    fmt : FloatFormat
        Format of the result.
    significand_width : int
        Width of ``significand``, at least ``fmt.significand_bits + 1``
        (the result precision plus a guard bit).
    exponent_width : int
        Width of the two's complement ``exponent`` input, at least 2.

    Members
    -------
    sign : ``In(1)``
    exponent : ``In(signed(exponent_width))``
    significand : ``In(significand_width)``
    y : ``Out(fmt.width)``
        IEEE encoding of the rounded result.
    """

    def __init__(self, fmt, significand_width, exponent_width):
        if not isinstance(fmt, FloatFormat):
            raise TypeError(f"fmt must be a FloatFormat, not {fmt!r}")
        min_significand_width = fmt.significand_bits + 1
        if (not isinstance(significand_width, int) or isinstance(significand_width, bool)
                or significand_width < min_significand_width):
            raise ValueError(
                f"significand_width must be an integer of at least {min_significand_width} "
                f"({fmt.name} significand bits plus a guard bit), not {significand_width!r}")
        if (not isinstance(exponent_width, int) or isinstance(exponent_width, bool)
                or exponent_width < 2):
            raise ValueError(
                f"exponent_width must be an integer of at least 2, not {exponent_width!r}")

        self._fmt = fmt
        super().__init__({
            "sign": In(1),
            "exponent": In(signed(exponent_width)),
            "significand": In(significand_width),
            "y": Out(fmt.width),
        })

    @property
    def fmt(self):
        return self._fmt

    def elaborate(self, platform):
        m = Module()
        fmt = self._fmt
        width = len(self.significand)
        exponent_min = -(1 << (len(self.exponent) - 1))
        exponent_max = (1 << (len(self.exponent) - 1)) - 1

        leading_zeros = Signal(range(width + 1))
        m.d.comb += leading_zeros.eq(count_leading_zeros(self.significand))

        # A negative shift moves the significand right, into the subnormal range.
        shift = Signal(signed(signed_width(exponent_min - 1, width)))
        max_left_shift = self.exponent - 1
        m.d.comb += shift.eq(Mux(leading_zeros < max_left_shift, leading_zeros, max_left_shift))

        normalized = Signal(width)
        shifted_out = Signal()
        with m.If(shift >= 0):
            m.d.comb += normalized.eq(self.significand << shift.as_unsigned()[:len(leading_zeros)])
        with m.Else():
            max_right_shift = 1 - exponent_min
            right_shift = Signal(range(max_right_shift + 1))
            m.d.comb += right_shift.eq(-shift)
            shifted, lost = shift_right_sticky(self.significand, right_shift)
            m.d.comb += [
                normalized.eq(shifted),
                shifted_out.eq(lost),
            ]

        # Biased exponent of the normalized value, at least 1. The result is
        # subnormal when the hidden bit of `truncated` is 0, and then the field is 0.
        biased_exponent = Signal(range(max(exponent_max, 1) + 1))
        m.d.comb += biased_exponent.eq(self.exponent - shift)

        truncated = normalized[width - fmt.significand_bits:]
        guard = normalized[width - fmt.significand_bits - 1]
        sticky = normalized[:width - fmt.significand_bits - 1].any() | shifted_out
        round_up = guard & (sticky | truncated[0])

        # Adding the significand, hidden bit included, to (biased_exponent - 1)
        # shifted into the exponent field gives the field biased_exponent for
        # normal results and 0 for subnormal results. A carry from rounding
        # then moves into the exponent field on its own.
        rounded = Signal(range(((max(exponent_max, 1) + 1) << fmt.frac_bits) + 1))
        m.d.comb += rounded.eq(((biased_exponent - 1) << fmt.frac_bits) + truncated + round_up)

        # Every field of `y` is assigned inside one If chain. A field assigned
        # alone becomes a Verilog `always @*` of its own without the
        # time-zero trigger of Yosys's backend, and Icarus then leaves it X
        # until its input changes.
        result = float_layout(fmt)(self.y)
        with m.If(self.significand == 0):
            m.d.comb += [
                result.sign.eq(self.sign),
                result.exponent.eq(0),
                result.fraction.eq(0),
            ]
        with m.Elif(rounded[fmt.frac_bits:] >= fmt.exp_max):
            m.d.comb += [
                result.sign.eq(self.sign),
                result.exponent.eq(fmt.exp_max),
                result.fraction.eq(0),
            ]
        with m.Else():
            m.d.comb += [
                result.sign.eq(self.sign),
                result.exponent.eq(rounded[fmt.frac_bits:]),
                result.fraction.eq(rounded[:fmt.frac_bits]),
            ]
        return m


def _set_infinity(m, encoding, fmt, sign):
    result = float_layout(fmt)(encoding)
    m.d.comb += [
        result.sign.eq(sign),
        result.exponent.eq(fmt.exp_max),
        result.fraction.eq(0),
    ]


class FP32Adder(wiring.Component):
    """IEEE 754 binary32 adder, combinational.

    ``y`` equals NumPy ``np.float32(a) + np.float32(b)`` bit for bit, except
    that every NaN result is :data:`FP32_CANONICAL_NAN`. Rounding is RNE with
    gradual underflow. An exact zero sum is +0, except that (-0) + (-0) is
    -0. Inf - Inf and any NaN operand give NaN.

    The operands are swapped so that ``|a| >= |b|``. The smaller significand
    is aligned with three extra bits (guard, round and sticky) and added or
    subtracted. The sum, one bit wider for the carry, goes to
    :class:`NormalizeRoundPack`.
    Bits are lost in alignment only when the exponents differ by more than 3,
    and then the sum needs at most one left shift, so the sticky bit always
    stays below the guard position.

    Members
    -------
    a : ``In(32)``
    b : ``In(32)``
        Binary32 operands.
    y : ``Out(32)``
        Binary32 sum.
    """

    fmt = FP32

    # Bits below the aligned significands' LSB: guard, round and sticky.
    _EXTRA_BITS = 3

    def __init__(self):
        super().__init__({
            "a": In(self.fmt.width),
            "b": In(self.fmt.width),
            "y": Out(self.fmt.width),
        })

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        extra = self._EXTRA_BITS

        # Without the sign bit, IEEE encodings compare as integers in the same
        # order as the magnitudes they encode, with Inf above every finite
        # number and NaN above Inf. So `large` is the NaN or Inf operand, if any.
        magnitude_bits = fmt.width - 1
        swap = self.b[:magnitude_bits] > self.a[:magnitude_bits]
        large = unpack_float(m, fmt, Mux(swap, self.b, self.a), "large")
        small = unpack_float(m, fmt, Mux(swap, self.a, self.b), "small")
        subtract = large.sign ^ small.sign

        aligned_width = fmt.significand_bits + extra
        exponent_difference = Signal(range(fmt.exp_max + 1))
        m.d.comb += exponent_difference.eq(large.exponent - small.exponent)
        small_shifted, small_sticky = shift_right_sticky(
            Cat(Const(0, extra), small.significand), exponent_difference)
        small_aligned = Signal(aligned_width)
        m.d.comb += small_aligned.eq(small_shifted | small_sticky)
        large_aligned = Cat(Const(0, extra), large.significand)

        # |large| >= |small|, so the difference is never negative. The extra
        # top bit is the carry of an addition.
        total = Signal(aligned_width + 1)
        with m.If(subtract):
            m.d.comb += total.eq(large_aligned - small_aligned)
        with m.Else():
            m.d.comb += total.eq(large_aligned + small_aligned)

        # The top bit of `total` weighs twice the hidden bit of `large`.
        rounder = m.submodules.rounder = NormalizeRoundPack(
            fmt, len(total), signed_width(0, fmt.exp_max + 1))
        m.d.comb += [
            rounder.significand.eq(total),
            rounder.exponent.eq(large.exponent + 1),
            # An exact zero from x + (-x) is +0 under RNE. A zero sum of two
            # zeros of the same sign keeps that sign.
            rounder.sign.eq(Mux(subtract & (total == 0), 0, large.sign)),
        ]

        with m.If(large.is_nan | (large.is_inf & small.is_inf & subtract)):
            m.d.comb += self.y.eq(FP32_CANONICAL_NAN)
        with m.Elif(large.is_inf):
            _set_infinity(m, self.y, fmt, large.sign)
        with m.Else():
            m.d.comb += self.y.eq(rounder.y)
        return m


class FP32Multiplier(wiring.Component):
    """IEEE 754 binary32 multiplier, combinational.

    ``y`` equals NumPy ``np.float32(a) * np.float32(b)`` bit for bit, except
    that every NaN result is :data:`FP32_CANONICAL_NAN`. Rounding is RNE with
    gradual underflow, so products of subnormals, products of a subnormal and
    a large number, and results that round up from subnormal to normal are
    exact IEEE results. 0 * Inf and any NaN operand give NaN.

    The full 48-bit product of the significands is exact, and
    :class:`NormalizeRoundPack` normalizes and rounds it in one step.

    Members
    -------
    a : ``In(32)``
    b : ``In(32)``
        Binary32 operands.
    y : ``Out(32)``
        Binary32 product.
    """

    fmt = FP32

    def __init__(self):
        super().__init__({
            "a": In(self.fmt.width),
            "b": In(self.fmt.width),
            "y": Out(self.fmt.width),
        })

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt

        a = unpack_float(m, fmt, self.a, "a")
        b = unpack_float(m, fmt, self.b, "b")
        sign = a.sign ^ b.sign

        product = Signal(2 * fmt.significand_bits)
        m.d.comb += product.eq(a.significand * b.significand)

        # The product's top bit weighs 2**(a.exponent + b.exponent - 2 * bias + 1),
        # so its biased exponent is a.exponent + b.exponent - bias + 1.
        finite_exponent_max = fmt.exp_max - 1
        exponent_range = (1 + 1 - fmt.bias + 1, 2 * finite_exponent_max - fmt.bias + 1)
        rounder = m.submodules.rounder = NormalizeRoundPack(
            fmt, len(product), signed_width(*exponent_range))
        m.d.comb += [
            rounder.significand.eq(product),
            rounder.exponent.eq(a.exponent + b.exponent - (fmt.bias - 1)),
            rounder.sign.eq(sign),
        ]

        zero_times_inf = (a.is_zero & b.is_inf) | (a.is_inf & b.is_zero)
        with m.If(a.is_nan | b.is_nan | zero_times_inf):
            m.d.comb += self.y.eq(FP32_CANONICAL_NAN)
        with m.Elif(a.is_inf | b.is_inf):
            _set_infinity(m, self.y, fmt, sign)
        with m.Else():
            m.d.comb += self.y.eq(rounder.y)
        return m


class IntToFP32(wiring.Component):
    """Two's complement integer to IEEE 754 binary32 converter, combinational.

    ``y`` equals NumPy ``np.asarray(a).astype(np.float32)`` bit for bit.
    Integers up to ``2**24`` in magnitude convert exactly. Larger ones round
    to nearest even, and 0 gives +0.

    Parameters
    ----------
    width : int
        Width of ``a``, from 1 to 64.

    Members
    -------
    a : ``In(signed(width))``
    y : ``Out(32)``
        Binary32 encoding of ``a``.
    """

    fmt = FP32

    # NOTE: 64 is the widest integer that SoftFloat converts, so wider inputs
    # would be untested. The datapath has no width limit of its own.
    MAX_WIDTH = 64

    def __init__(self, width):
        if not isinstance(width, int) or isinstance(width, bool):
            raise TypeError(f"width must be a positive integer, not {width!r}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, not {width!r}")
        if width > self.MAX_WIDTH:
            raise ValueError(f"width must be at most {self.MAX_WIDTH}, not {width!r}")
        self._width = width
        super().__init__({
            "a": In(signed(width)),
            "y": Out(self.fmt.width),
        })

    @property
    def width(self):
        return self._width

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        width = self._width

        negative = self.a[-1]
        # -a of the most negative integer, 2**(width - 1), still fits in `width` unsigned bits.
        magnitude = Signal(width)
        m.d.comb += magnitude.eq(Mux(negative, -self.a, self.a))

        # Pad narrow inputs on the right so that the rounder gets its guard bit.
        padding = max(0, fmt.significand_bits + 1 - width)
        # The top bit of the magnitude weighs 2**(width - 1).
        exponent = fmt.bias + width - 1
        rounder = m.submodules.rounder = NormalizeRoundPack(
            fmt, width + padding, signed_width(0, exponent))
        m.d.comb += [
            rounder.significand.eq(Cat(Const(0, padding), magnitude)),
            rounder.exponent.eq(exponent),
            rounder.sign.eq(negative),
            self.y.eq(rounder.y),
        ]
        return m


class FP16ProductToFP32(wiring.Component):
    """Exact product of two IEEE 754 binary16 numbers as a binary32, combinational.

    ``y`` equals NumPy ``np.float32(a) * np.float32(b)`` for the binary16
    values ``a`` and ``b``, bit for bit, except that every NaN result is
    :data:`FP32_CANONICAL_NAN`. The product of two finite binary16 numbers is
    always exact in binary32, because the 22-bit product of the significands
    fits in the 24-bit binary32 significand. The smallest nonzero product (of
    the two smallest subnormals, ``2**-48``) and the largest one (about
    ``2**32``) are binary32 normal numbers. So the unit only normalizes and
    never rounds. 0 * Inf and any NaN operand give NaN.

    Members
    -------
    a : ``In(16)``
    b : ``In(16)``
        Binary16 operands.
    y : ``Out(32)``
        Binary32 product.
    """

    source_fmt = FP16
    result_fmt = FP32

    def __init__(self):
        super().__init__({
            "a": In(self.source_fmt.width),
            "b": In(self.source_fmt.width),
            "y": Out(self.result_fmt.width),
        })

    def elaborate(self, platform):
        m = Module()
        src, dst = self.source_fmt, self.result_fmt

        a = unpack_float(m, src, self.a, "a")
        b = unpack_float(m, src, self.b, "b")
        sign = a.sign ^ b.sign

        product = Signal(2 * src.significand_bits)
        m.d.comb += product.eq(a.significand * b.significand)
        product_fraction_bits = len(product) - 1
        assert product_fraction_bits <= dst.frac_bits, "product would need rounding"

        leading_zeros = Signal(range(len(product) + 1))
        normalized = Signal(len(product))
        m.d.comb += [
            leading_zeros.eq(count_leading_zeros(product)),
            normalized.eq(product << leading_zeros),
        ]

        # The product's top bit weighs 2**(a.exponent + b.exponent - 2 * src.bias + 1).
        exponent_offset = dst.bias - 2 * src.bias + 1
        smallest_exponent = 1 + 1 + exponent_offset - product_fraction_bits
        largest_exponent = 2 * (src.exp_max - 1) + exponent_offset
        assert smallest_exponent >= 1, "a product would be subnormal"
        assert largest_exponent < dst.exp_max, "a product would overflow"
        exponent = Signal(range(dst.exp_max))
        m.d.comb += exponent.eq(a.exponent + b.exponent + exponent_offset - leading_zeros)

        result = float_layout(dst)(self.y)
        with m.If(a.is_nan | b.is_nan | (a.is_zero & b.is_inf) | (a.is_inf & b.is_zero)):
            m.d.comb += self.y.eq(FP32_CANONICAL_NAN)
        with m.Elif(a.is_inf | b.is_inf):
            _set_infinity(m, self.y, dst, sign)
        with m.Elif(a.is_zero | b.is_zero):
            m.d.comb += result.sign.eq(sign)
        with m.Else():
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(exponent),
                # The fraction bits of the product fill the top of the binary32 fraction.
                result.fraction.eq(normalized[:product_fraction_bits]
                                   << (dst.frac_bits - product_fraction_bits)),
            ]
        return m


class FP32ToFP16(wiring.Component):
    """IEEE 754 binary32 to binary16 converter, combinational.

    ``y`` equals NumPy ``np.float32(a).astype(np.float16)`` bit for bit,
    except that every NaN result is the quiet NaN ``0x7E00``. Rounding is
    RNE with gradual underflow: results below the binary16 normal range
    become subnormals or zeros of the input's sign, and results that round
    to ``2**16`` or above become infinities.

    The 24-bit significand goes to :class:`NormalizeRoundPack` without
    dropping a bit, so one rounding step gives the exact RNE result.

    Members
    -------
    a : ``In(32)``
        Binary32 operand.
    y : ``Out(16)``
        Binary16 result.
    """

    source_fmt = FP32
    result_fmt = FP16

    # The binary16 quiet NaN with only the top fraction bit set.
    CANONICAL_NAN = 0x7E00

    def __init__(self):
        super().__init__({
            "a": In(self.source_fmt.width),
            "y": Out(self.result_fmt.width),
        })

    def elaborate(self, platform):
        m = Module()
        src, dst = self.source_fmt, self.result_fmt

        a = unpack_float(m, src, self.a, "a")

        # The value is significand * 2**(exponent - src.bias - src.frac_bits).
        # NormalizeRoundPack reads it as significand * 2**(e - dst.bias -
        # (len(significand) - 1)) with the same significand, so
        # e = exponent - src.bias + dst.bias.
        exponent_offset = dst.bias - src.bias
        exponent_range = (1 + exponent_offset, src.exp_max - 1 + exponent_offset)
        rounder = m.submodules.rounder = NormalizeRoundPack(
            dst, src.significand_bits, signed_width(*exponent_range))
        m.d.comb += [
            rounder.significand.eq(a.significand),
            rounder.exponent.eq(a.exponent + exponent_offset),
            rounder.sign.eq(a.sign),
        ]

        with m.If(a.is_nan):
            m.d.comb += self.y.eq(self.CANONICAL_NAN)
        with m.Elif(a.is_inf):
            _set_infinity(m, self.y, dst, a.sign)
        with m.Else():
            m.d.comb += self.y.eq(rounder.y)
        return m
