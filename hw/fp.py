"""IEEE 754 floating-point units, combinational or pipelined.

Every port carries a raw IEEE encoding as an unsigned bit vector, and every
width comes from the formats in :mod:`golden.formats`. The units round to
nearest, ties to even (RNE), handle subnormal inputs and results exactly as
IEEE 754 does (no flush to zero) and return :data:`FP32_CANONICAL_NAN` for
every NaN result. No unit raises exception flags.

The arithmetic units share three steps: :func:`unpack_float` splits an
encoding into sign, exponent and significand, :func:`count_leading_zeros`
finds the normalization shift and :class:`NormalizeRoundPack` normalizes,
rounds and packs an exact or sticky-jammed intermediate result.

By default a unit is combinational. With ``stages=n`` (n > 0) it has an
input ``en`` and ``n`` register stages between its steps: the registers load
in the cycles where ``en`` is high, and ``y`` is the result of the operands
that were applied ``n`` such cycles earlier. The result is the same
encoding, bit for bit; only its timing changes. The registers have no reset,
and the caller tracks which stages hold valid data.
"""

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.formats import FP16, FP32, FP32_CANONICAL_NAN, FloatFormat, signed_width

__all__ = [
    "float_layout", "UnpackedFloat", "unpack_float", "count_leading_zeros",
    "shift_right_sticky", "check_stages", "NormalizeRoundPack",
    "FP32Adder", "FP32Multiplier", "FP32NormalMultiplier", "IntToFP32", "FP16ProductToFP32", "FP32ToFP16",
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

    The result is ``len(value)`` when ``value`` is zero. The value is padded
    on the right to a power-of-two width with ones, which stop the count at
    ``len(value)``. A tree then halves the vector at each level: the count
    of a vector is the high half's count with a 0 prepended, or, if the high
    half is all zeros, the low half's count with a 1 prepended. So each bit
    of the count is a chain of ``log2`` multiplexers, with no adders.
    """
    value = Value.cast(value)
    width = len(value)
    if width == 0:
        return Const(0, 1)
    padded_width = 1 << ceil_log2(width)
    padding = padded_width - width
    count, is_zero = _leading_zeros(Cat(Const((1 << padding) - 1, padding), value))
    return Mux(is_zero, padded_width, count)


def _leading_zeros(value):
    """Return ``(count, is_zero)`` for a vector of power-of-two width; ``count`` is valid when it is not zero."""
    if len(value) == 1:
        return Const(0, 0), ~value[0]
    half = len(value) // 2
    high_count, high_zero = _leading_zeros(value[half:])
    low_count, low_zero = _leading_zeros(value[:half])
    return Mux(high_zero, Cat(low_count, 1), Cat(high_count, 0)), high_zero & low_zero


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
    # Bit i of `value` is lost when `amount` exceeds i. The sticky bit masks
    # those bits instead of waiting for the shift, so the two run side by side.
    lost_mask = Cat(amount > index for index in range(width))
    return value >> clamped, (value & lost_mask).any()


def check_stages(stages, max_stages):
    """Return ``stages`` if it is an integer from 0 to ``max_stages``, and raise otherwise."""
    if isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= max_stages:
        raise ValueError(f"stages must be an integer from 0 to {max_stages}, not {stages!r}")
    return stages


def _stage_ports(stages):
    """Return the extra ports of a unit with ``stages`` register stages: ``en`` if there are any."""
    return {"en": In(1)} if stages else {}


class _Registers:
    """The pipeline registers of one unit, at the cut points that its ``stages`` selects.

    A unit calls :meth:`cut` between two steps of its datapath with the
    values that cross that point. At a selected cut point the method returns
    registered copies, loaded in the cycles where ``enable`` is high; at
    any other point it returns the values unchanged, so the unit with no
    cut points selected is the combinational one.
    """

    def __init__(self, m, enable, cuts):
        self._m = m
        self._enable = enable
        self._cuts = frozenset(cuts)

    @property
    def enable(self):
        return self._enable

    def cut(self, point, **values):
        """Return the values in keyword order, registered if ``point`` is a selected cut point."""
        if point not in self._cuts:
            return tuple(values.values())
        registered = []
        for name, value in values.items():
            value = Value.cast(value)
            register = Signal(value.shape(), name=f"{point}_{name}", reset_less=True)
            with self._m.If(self._enable):
                self._m.d.sync += register.eq(value)
            registered.append(register)
        return tuple(registered)

    def delay(self, count, **values):
        """Return the values delayed by ``count`` enabled cycles, in keyword order."""
        delayed = tuple(Value.cast(value) for value in values.values())
        for index in range(count):
            registers = []
            for name, value in zip(values, delayed):
                register = Signal(value.shape(), name=f"delay{index}_{name}", reset_less=True)
                with self._m.If(self._enable):
                    self._m.d.sync += register.eq(value)
                registers.append(register)
            delayed = tuple(registers)
        return delayed


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
    min_exponent : int or None
        The smallest value that ``exponent`` takes, or None for the smallest
        that ``exponent_width`` holds. From 1 up, the significand never
        shifts right, and the unit has no right shifter.
    stages : int
        Register stages, 0 to :attr:`MAX_STAGES`. One stage follows the
        shift; a second follows the rounding add, and a third the
        leading-zero count.

    Members
    -------
    sign : ``In(1)``
    exponent : ``In(signed(exponent_width))``
    significand : ``In(significand_width)``
    en : ``In(1)``
        Present when ``stages`` is above 0.
    y : ``Out(fmt.width)``
        IEEE encoding of the rounded result.
    """

    MAX_STAGES = 3
    _CUTS = {
        0: (),
        1: ("normalize",),
        2: ("normalize", "round"),
        3: ("count", "normalize", "round"),
    }

    def __init__(self, fmt, significand_width, exponent_width, *, min_exponent=None, stages=0):
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
        lowest, highest = -(1 << (exponent_width - 1)), (1 << (exponent_width - 1)) - 1
        if min_exponent is None:
            min_exponent = lowest
        elif (not isinstance(min_exponent, int) or isinstance(min_exponent, bool)
                or not lowest <= min_exponent <= highest):
            raise ValueError(
                f"min_exponent must be an integer from {lowest} to {highest}, not {min_exponent!r}")

        self._fmt = fmt
        self._min_exponent = min_exponent
        self._stages = check_stages(stages, self.MAX_STAGES)
        super().__init__({
            "sign": In(1),
            "exponent": In(signed(exponent_width)),
            "significand": In(significand_width),
            **_stage_ports(stages),
            "y": Out(fmt.width),
        })

    @property
    def fmt(self):
        return self._fmt

    @property
    def stages(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        fmt = self._fmt
        width = len(self.significand)
        exponent_min = self._min_exponent
        exponent_max = (1 << (len(self.exponent) - 1)) - 1
        pipe = _Registers(m, getattr(self, "en", None), self._CUTS[self._stages])

        leading_zeros = Signal(range(width + 1))
        m.d.comb += leading_zeros.eq(count_leading_zeros(self.significand))

        # Shift left past the leading zeros, but not below biased exponent 1.
        left_shift = Signal(range(width + 1))
        max_left_shift = self.exponent - 1
        m.d.comb += left_shift.eq(Mux(leading_zeros < max_left_shift, leading_zeros, max_left_shift))
        # Biased exponent of the normalized value, at least 1. The result is
        # subnormal when the hidden bit of `truncated` is 0, and then the field is 0.
        biased_exponent = Signal(range(max(exponent_max, 1) + 1))
        is_zero = self.significand == 0

        if exponent_min >= 1:
            significand, left_shift, exponent, sign, is_zero = pipe.cut(
                "count", significand=self.significand, left_shift=left_shift,
                exponent=self.exponent, sign=self.sign, is_zero=is_zero)
            normalized = Signal(width)
            m.d.comb += [
                normalized.eq(significand << left_shift),
                biased_exponent.eq(exponent - left_shift),
            ]
            shifted_out = Const(0, 1)
        else:
            # Below exponent 1 the significand shifts right by 1 - exponent
            # into the subnormal range, clamped to the width. The amount and
            # the mask of the bits it drops come from the exponent alone.
            right = Signal()
            right_shift = Signal(range(width + 1))
            lost_mask = Signal(width)
            m.d.comb += [
                right.eq(self.exponent < 1),
                right_shift.eq(Mux(1 - self.exponent > width, width, 1 - self.exponent)),
                lost_mask.eq(Cat(right_shift > index for index in range(width))),
                biased_exponent.eq(Mux(right, 1, self.exponent - left_shift)),
            ]
            significand, right, left_shift, right_shift, lost_mask, biased_exponent, sign, is_zero = pipe.cut(
                "count", significand=self.significand, right=right, left_shift=left_shift,
                right_shift=right_shift, lost_mask=lost_mask, biased_exponent=biased_exponent,
                sign=self.sign, is_zero=is_zero)
            normalized = Signal(width)
            shifted_out = Signal()
            with m.If(right):
                m.d.comb += [
                    normalized.eq(significand >> right_shift),
                    shifted_out.eq((significand & lost_mask).any()),
                ]
            with m.Else():
                m.d.comb += normalized.eq(significand << left_shift)

        normalized, shifted_out, biased_exponent, sign, is_zero = pipe.cut(
            "normalize", normalized=normalized, shifted_out=shifted_out, biased_exponent=biased_exponent,
            sign=sign, is_zero=is_zero)

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

        rounded, sign, is_zero = pipe.cut("round", rounded=rounded, sign=sign, is_zero=is_zero)

        # Every field of `y` is assigned inside one If chain. A field assigned
        # alone becomes a Verilog `always @*` of its own without the
        # time-zero trigger of Yosys's backend, and Icarus then leaves it X
        # until its input changes.
        result = float_layout(fmt)(self.y)
        with m.If(is_zero):
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(0),
                result.fraction.eq(0),
            ]
        with m.Elif(rounded[fmt.frac_bits:] >= fmt.exp_max):
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(fmt.exp_max),
                result.fraction.eq(0),
            ]
        with m.Else():
            m.d.comb += [
                result.sign.eq(sign),
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


def _half_products(a, b):
    """Return the four products of the significand halves of two unpacked operands, by name."""
    half = len(a.significand) // 2
    a_high, a_low = a.significand[half:], a.significand[:half]
    b_high, b_low = b.significand[half:], b.significand[:half]
    return {"high": a_high * b_high, "middle_a": a_high * b_low, "middle_b": a_low * b_high, "low": a_low * b_low}


def _sum_half_products(high, middle_a, middle_b, low, half):
    """Return the full product from the four products of :func:`_half_products`."""
    return (high << (2 * half)) + ((middle_a + middle_b) << half) + low


def _rounder(m, pipe, stages, *args, **kwargs):
    """Add a :class:`NormalizeRoundPack` with ``stages`` register stages, enabled with the unit."""
    rounder = m.submodules.rounder = NormalizeRoundPack(*args, stages=stages, **kwargs)
    if stages:
        m.d.comb += rounder.en.eq(pipe.enable)
    return rounder


class FP32Adder(wiring.Component):
    """IEEE 754 binary32 adder, combinational or pipelined.

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

    Parameters
    ----------
    stages : int
        Register stages, 0 (combinational) to :attr:`MAX_STAGES`. With 6,
        they follow the swap, the alignment shift, the significand add, and
        in the rounder the leading-zero count, the shift and the rounding
        add. Fewer stages leave out some of them (the table ``_PLANS``).

    Members
    -------
    a : ``In(32)``
    b : ``In(32)``
        Binary32 operands.
    en : ``In(1)``
        Present when ``stages`` is above 0.
    y : ``Out(32)``
        Binary32 sum.
    """

    fmt = FP32

    # Bits below the aligned significands' LSB: guard, round and sticky.
    _EXTRA_BITS = 3

    # Per stage count: the cut points of the adder and the stages of its rounder.
    _PLANS = {
        0: ((), 0),
        1: (("add",), 0),
        2: (("align",), 1),
        3: (("align", "add"), 1),
        4: (("align", "add"), 2),
        5: (("swap", "align", "add"), 2),
        6: (("swap", "align", "add"), 3),
    }
    MAX_STAGES = max(_PLANS)

    def __init__(self, *, stages=0):
        self._stages = check_stages(stages, self.MAX_STAGES)
        super().__init__({
            "a": In(self.fmt.width),
            "b": In(self.fmt.width),
            **_stage_ports(stages),
            "y": Out(self.fmt.width),
        })

    @property
    def stages(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        extra = self._EXTRA_BITS
        cuts, rounder_stages = self._PLANS[self._stages]
        pipe = _Registers(m, getattr(self, "en", None), cuts)

        # Without the sign bit, IEEE encodings compare as integers in the same
        # order as the magnitudes they encode, with Inf above every finite
        # number and NaN above Inf. So `large` is the NaN or Inf operand, if any.
        magnitude_bits = fmt.width - 1
        swap = self.b[:magnitude_bits] > self.a[:magnitude_bits]
        # Both exponent differences are formed beside the comparison, with
        # subnormal exponents read as 1, as unpack_float reads them.
        a_exponent = float_layout(fmt)(self.a).exponent
        b_exponent = float_layout(fmt)(self.b).exponent
        a_exponent = Mux(a_exponent == 0, 1, a_exponent)
        b_exponent = Mux(b_exponent == 0, 1, b_exponent)
        exponent_difference = Signal(range(fmt.exp_max + 1))
        m.d.comb += exponent_difference.eq(Mux(swap, b_exponent - a_exponent, a_exponent - b_exponent))
        large_bits, small_bits, exponent_difference = pipe.cut(
            "swap", large=Mux(swap, self.b, self.a), small=Mux(swap, self.a, self.b),
            exponent_difference=exponent_difference)
        large = unpack_float(m, fmt, large_bits, "large")
        small = unpack_float(m, fmt, small_bits, "small")
        subtract = large.sign ^ small.sign

        aligned_width = fmt.significand_bits + extra
        small_shifted, small_sticky = shift_right_sticky(
            Cat(Const(0, extra), small.significand), exponent_difference)
        small_aligned = Signal(aligned_width)
        m.d.comb += small_aligned.eq(small_shifted | small_sticky)
        large_aligned = Cat(Const(0, extra), large.significand)
        is_nan = large.is_nan | (large.is_inf & small.is_inf & subtract)

        large_aligned, small_aligned, subtract, exponent, sign, is_nan, is_inf = pipe.cut(
            "align", large_aligned=large_aligned, small_aligned=small_aligned, subtract=subtract,
            exponent=large.exponent, sign=large.sign, is_nan=is_nan, is_inf=large.is_inf)

        # |large| >= |small|, so the difference is never negative. The extra
        # top bit is the carry of an addition.
        total = Signal(aligned_width + 1)
        with m.If(subtract):
            m.d.comb += total.eq(large_aligned - small_aligned)
        with m.Else():
            m.d.comb += total.eq(large_aligned + small_aligned)

        total, subtract, exponent, sign, is_nan, is_inf = pipe.cut(
            "add", total=total, subtract=subtract, exponent=exponent, sign=sign, is_nan=is_nan, is_inf=is_inf)

        # The top bit of `total` weighs twice the hidden bit of `large`.
        # `large.exponent` reads subnormals as 1, so the rounder never shifts right.
        rounder = _rounder(m, pipe, rounder_stages, fmt, len(total), signed_width(0, fmt.exp_max + 1),
                           min_exponent=2)
        m.d.comb += [
            rounder.significand.eq(total),
            rounder.exponent.eq(exponent + 1),
            # An exact zero from x + (-x) is +0 under RNE. A zero sum of two
            # zeros of the same sign keeps that sign.
            rounder.sign.eq(Mux(subtract & (total == 0), 0, sign)),
        ]
        sign, is_nan, is_inf = pipe.delay(rounder_stages, sign=sign, is_nan=is_nan, is_inf=is_inf)

        with m.If(is_nan):
            m.d.comb += self.y.eq(FP32_CANONICAL_NAN)
        with m.Elif(is_inf):
            _set_infinity(m, self.y, fmt, sign)
        with m.Else():
            m.d.comb += self.y.eq(rounder.y)
        return m


class FP32Multiplier(wiring.Component):
    """IEEE 754 binary32 multiplier, combinational or pipelined.

    ``y`` equals NumPy ``np.float32(a) * np.float32(b)`` bit for bit, except
    that every NaN result is :data:`FP32_CANONICAL_NAN`. Rounding is RNE with
    gradual underflow, so products of subnormals, products of a subnormal and
    a large number, and results that round up from subnormal to normal are
    exact IEEE results. 0 * Inf and any NaN operand give NaN.

    The full 48-bit product of the significands is exact, and
    :class:`NormalizeRoundPack` normalizes and rounds it in one step. With
    a stage after the partial products, the significands are split into
    halves and the four half products, which fit one DSP multiplier each on
    iCE40 and ECP5, are registered before they are added.

    Parameters
    ----------
    stages : int
        Register stages, 0 (combinational) to :attr:`MAX_STAGES`. With 5,
        they follow the half products, the full product, and in the rounder
        the leading-zero count, the shift and the rounding add. Fewer stages
        leave out some of them (the table ``_PLANS``).

    Members
    -------
    a : ``In(32)``
    b : ``In(32)``
        Binary32 operands.
    en : ``In(1)``
        Present when ``stages`` is above 0.
    y : ``Out(32)``
        Binary32 product.
    """

    fmt = FP32

    # Per stage count: the cut points of the multiplier and the stages of its rounder.
    _PLANS = {
        0: ((), 0),
        1: (("multiply",), 0),
        2: (("multiply",), 1),
        3: (("partial", "multiply"), 1),
        4: (("partial", "multiply"), 2),
        5: (("partial", "multiply"), 3),
    }
    MAX_STAGES = max(_PLANS)

    def __init__(self, *, stages=0):
        self._stages = check_stages(stages, self.MAX_STAGES)
        super().__init__({
            "a": In(self.fmt.width),
            "b": In(self.fmt.width),
            **_stage_ports(stages),
            "y": Out(self.fmt.width),
        })

    @property
    def stages(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        cuts, rounder_stages = self._PLANS[self._stages]
        pipe = _Registers(m, getattr(self, "en", None), cuts)

        a = unpack_float(m, fmt, self.a, "a")
        b = unpack_float(m, fmt, self.b, "b")
        sign = a.sign ^ b.sign
        # The product's top bit weighs 2**(a.exponent + b.exponent - 2 * bias + 1),
        # so its biased exponent is a.exponent + b.exponent - bias + 1.
        exponent = a.exponent + b.exponent - (fmt.bias - 1)
        zero_times_inf = (a.is_zero & b.is_inf) | (a.is_inf & b.is_zero)
        is_nan = a.is_nan | b.is_nan | zero_times_inf
        is_inf = a.is_inf | b.is_inf

        product = Signal(2 * fmt.significand_bits)
        if "partial" in cuts:
            high, middle_a, middle_b, low, exponent, sign, is_nan, is_inf = pipe.cut(
                "partial", **_half_products(a, b), exponent=exponent, sign=sign, is_nan=is_nan, is_inf=is_inf)
            m.d.comb += product.eq(_sum_half_products(high, middle_a, middle_b, low, fmt.significand_bits // 2))
        else:
            m.d.comb += product.eq(a.significand * b.significand)

        product, exponent, sign, is_nan, is_inf = pipe.cut(
            "multiply", product=product, exponent=exponent, sign=sign, is_nan=is_nan, is_inf=is_inf)

        finite_exponent_max = fmt.exp_max - 1
        exponent_range = (1 + 1 - fmt.bias + 1, 2 * finite_exponent_max - fmt.bias + 1)
        rounder = _rounder(m, pipe, rounder_stages, fmt, len(product), signed_width(*exponent_range))
        m.d.comb += [
            rounder.significand.eq(product),
            rounder.exponent.eq(exponent),
            rounder.sign.eq(sign),
        ]
        sign, is_nan, is_inf = pipe.delay(rounder_stages, sign=sign, is_nan=is_nan, is_inf=is_inf)

        with m.If(is_nan):
            m.d.comb += self.y.eq(FP32_CANONICAL_NAN)
        with m.Elif(is_inf):
            _set_infinity(m, self.y, fmt, sign)
        with m.Else():
            m.d.comb += self.y.eq(rounder.y)
        return m


class FP32NormalMultiplier(wiring.Component):
    """IEEE 754 binary32 multiplier for operands and products in the normal range, combinational or pipelined.

    For operands that are zero, normal, Inf or NaN, whose product is zero,
    Inf, NaN, or a finite value whose magnitude before rounding is at least
    ``2**-126`` (the smallest normal number), ``y`` equals
    :class:`FP32Multiplier`'s result bit for bit: RNE, overflow to Inf,
    :data:`FP32_CANONICAL_NAN` for 0 * Inf and NaN operands, and the sign
    of a zero product is the XOR of the operands' signs. Other operands give
    an unspecified result.

    With normal operands the significands lie in ``[2**23, 2**24)``, so
    their product lies in ``[2**46, 2**48)``. Normalizing it is a choice
    between two bit positions, and the unit needs none of the general
    multiplier's leading-zero count and wide shifts, which take most of
    that unit's logic.

    Parameters
    ----------
    stages : int
        Register stages, 0 (combinational) to :attr:`MAX_STAGES`: after the
        multiply, then after the four half products, then after rounding,
        then on the result.

    Members
    -------
    a : ``In(32)``
    b : ``In(32)``
        Binary32 operands.
    en : ``In(1)``
        Present when ``stages`` is above 0.
    y : ``Out(32)``
        Binary32 product.
    """

    fmt = FP32

    _CUTS = {
        0: (),
        1: ("multiply",),
        2: ("partial", "multiply"),
        3: ("partial", "multiply", "round"),
        4: ("partial", "multiply", "round", "pack"),
    }
    MAX_STAGES = max(_CUTS)

    def __init__(self, *, stages=0):
        self._stages = check_stages(stages, self.MAX_STAGES)
        super().__init__({
            "a": In(self.fmt.width),
            "b": In(self.fmt.width),
            **_stage_ports(stages),
            "y": Out(self.fmt.width),
        })

    @property
    def stages(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        cuts = self._CUTS[self._stages]
        pipe = _Registers(m, getattr(self, "en", None), cuts)

        a = unpack_float(m, fmt, self.a, "a")
        b = unpack_float(m, fmt, self.b, "b")
        sign = a.sign ^ b.sign
        # With the product's top bit at 2**47, the biased exponent of the
        # result is a.exponent + b.exponent - bias + 1, as in FP32Multiplier.
        exponent = a.exponent + b.exponent - (fmt.bias - 1)
        is_nan = a.is_nan | b.is_nan | (a.is_zero & b.is_inf) | (a.is_inf & b.is_zero)
        is_inf = a.is_inf | b.is_inf
        is_zero = a.is_zero | b.is_zero

        product = Signal(2 * fmt.significand_bits)
        flags = dict(exponent=exponent, sign=sign, is_nan=is_nan, is_inf=is_inf, is_zero=is_zero)
        if "partial" in cuts:
            high, middle_a, middle_b, low, *flag_values = pipe.cut("partial", **_half_products(a, b), **flags)
            flags = dict(zip(flags, flag_values))
            m.d.comb += product.eq(_sum_half_products(high, middle_a, middle_b, low, fmt.significand_bits // 2))
        else:
            m.d.comb += product.eq(a.significand * b.significand)
        product, exponent, sign, is_nan, is_inf, is_zero = pipe.cut("multiply", product=product, **flags)

        # Keep 24 bits from the top bit of the product, then a guard bit and a sticky bit.
        top = product[-1]
        width = len(product)
        kept = Mux(top, product[width - fmt.significand_bits:], product[width - fmt.significand_bits - 1:-1])
        guard = Mux(top, product[width - fmt.significand_bits - 1], product[width - fmt.significand_bits - 2])
        sticky = Mux(top, product[:width - fmt.significand_bits - 1].any(),
                     product[:width - fmt.significand_bits - 2].any())
        round_up = guard & (sticky | kept[0])
        # The result's biased exponent is `exponent` if the top bit is set and
        # one less otherwise. As in NormalizeRoundPack, the hidden bit of
        # `kept` adds 1 to (biased exponent - 1) in the exponent field, and
        # a carry from rounding moves into that field on its own.
        biased_exponent = exponent - 1 + top
        rounded = Signal(signed(len(biased_exponent) + fmt.frac_bits + 1))
        m.d.comb += rounded.eq(((biased_exponent - 1) << fmt.frac_bits) + kept + round_up)
        rounded, sign, is_nan, is_inf, is_zero = pipe.cut(
            "round", rounded=rounded, sign=sign, is_nan=is_nan, is_inf=is_inf, is_zero=is_zero)

        packed = Signal(fmt.width)
        result = float_layout(fmt)(packed)
        with m.If(is_nan):
            m.d.comb += packed.eq(FP32_CANONICAL_NAN)
        with m.Elif(is_inf | (~is_zero & (rounded[fmt.frac_bits:] >= fmt.exp_max))):
            _set_infinity(m, packed, fmt, sign)
        with m.Elif(is_zero):
            m.d.comb += result.sign.eq(sign)
        with m.Else():
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(rounded[fmt.frac_bits:]),
                result.fraction.eq(rounded[:fmt.frac_bits]),
            ]
        packed, = pipe.cut("pack", packed=packed)
        m.d.comb += self.y.eq(packed)
        return m


class IntToFP32(wiring.Component):
    """Two's complement integer to IEEE 754 binary32 converter, combinational or pipelined.

    ``y`` equals NumPy ``np.asarray(a).astype(np.float32)`` bit for bit.
    Integers up to ``2**24`` in magnitude convert exactly. Larger ones round
    to nearest even, and 0 gives +0.

    Parameters
    ----------
    width : int
        Width of ``a``, from 1 to 64.
    stages : int
        Register stages, 0 (combinational) to :attr:`MAX_STAGES`. With 4,
        they follow the magnitude, and in the rounder the leading-zero count,
        the shift and the rounding add. With 3 the magnitude has none.

    Members
    -------
    a : ``In(signed(width))``
    en : ``In(1)``
        Present when ``stages`` is above 0.
    y : ``Out(32)``
        Binary32 encoding of ``a``.
    """

    fmt = FP32

    # NOTE: 64 is the widest integer that SoftFloat converts, so wider inputs
    # would be untested. The datapath has no width limit of its own.
    MAX_WIDTH = 64

    # Per stage count: the cut points of the converter and the stages of its rounder.
    _PLANS = {
        0: ((), 0),
        1: (("magnitude",), 0),
        2: (("magnitude",), 1),
        3: ((), 3),
        4: (("magnitude",), 3),
    }
    MAX_STAGES = max(_PLANS)

    def __init__(self, width, *, stages=0):
        if not isinstance(width, int) or isinstance(width, bool):
            raise TypeError(f"width must be a positive integer, not {width!r}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, not {width!r}")
        if width > self.MAX_WIDTH:
            raise ValueError(f"width must be at most {self.MAX_WIDTH}, not {width!r}")
        self._width = width
        self._stages = check_stages(stages, self.MAX_STAGES)
        super().__init__({
            "a": In(signed(width)),
            **_stage_ports(stages),
            "y": Out(self.fmt.width),
        })

    @property
    def width(self):
        return self._width

    @property
    def stages(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        width = self._width
        cuts, rounder_stages = self._PLANS[self._stages]
        pipe = _Registers(m, getattr(self, "en", None), cuts)

        negative = self.a[-1]
        # -a of the most negative integer, 2**(width - 1), still fits in `width` unsigned bits.
        magnitude = Signal(width)
        m.d.comb += magnitude.eq(Mux(negative, -self.a, self.a))
        magnitude, negative = pipe.cut("magnitude", magnitude=magnitude, negative=negative)

        # Pad narrow inputs on the right so that the rounder gets its guard bit.
        padding = max(0, fmt.significand_bits + 1 - width)
        # The top bit of the magnitude weighs 2**(width - 1).
        exponent = fmt.bias + width - 1
        rounder = _rounder(m, pipe, rounder_stages, fmt, width + padding, signed_width(0, exponent),
                           min_exponent=exponent)
        m.d.comb += [
            rounder.significand.eq(Cat(Const(0, padding), magnitude)),
            rounder.exponent.eq(exponent),
            rounder.sign.eq(negative),
            self.y.eq(rounder.y),
        ]
        return m


class FP16ProductToFP32(wiring.Component):
    """Exact product of two IEEE 754 binary16 numbers as a binary32, combinational or pipelined.

    ``y`` equals NumPy ``np.float32(a) * np.float32(b)`` for the binary16
    values ``a`` and ``b``, bit for bit, except that every NaN result is
    :data:`FP32_CANONICAL_NAN`. The product of two finite binary16 numbers is
    always exact in binary32, because the 22-bit product of the significands
    fits in the 24-bit binary32 significand. The smallest nonzero product (of
    the two smallest subnormals, ``2**-48``) and the largest one (about
    ``2**32``) are binary32 normal numbers. So the unit only normalizes and
    never rounds. 0 * Inf and any NaN operand give NaN.

    Parameters
    ----------
    stages : int
        Register stages, 0 (combinational) to :attr:`MAX_STAGES`: after the
        multiply, then after the normalizing shift, then after the
        leading-zero count.

    Members
    -------
    a : ``In(16)``
    b : ``In(16)``
        Binary16 operands.
    en : ``In(1)``
        Present when ``stages`` is above 0.
    y : ``Out(32)``
        Binary32 product.
    """

    source_fmt = FP16
    result_fmt = FP32

    _CUTS = {
        0: (),
        1: ("multiply",),
        2: ("multiply", "normalize"),
        3: ("multiply", "count", "normalize"),
    }
    MAX_STAGES = max(_CUTS)

    def __init__(self, *, stages=0):
        self._stages = check_stages(stages, self.MAX_STAGES)
        super().__init__({
            "a": In(self.source_fmt.width),
            "b": In(self.source_fmt.width),
            **_stage_ports(stages),
            "y": Out(self.result_fmt.width),
        })

    @property
    def stages(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        src, dst = self.source_fmt, self.result_fmt
        pipe = _Registers(m, getattr(self, "en", None), self._CUTS[self._stages])

        a = unpack_float(m, src, self.a, "a")
        b = unpack_float(m, src, self.b, "b")
        sign = a.sign ^ b.sign
        is_nan = a.is_nan | b.is_nan | (a.is_zero & b.is_inf) | (a.is_inf & b.is_zero)
        is_inf = a.is_inf | b.is_inf
        is_zero = a.is_zero | b.is_zero

        product = Signal(2 * src.significand_bits)
        m.d.comb += product.eq(a.significand * b.significand)
        product_fraction_bits = len(product) - 1
        assert product_fraction_bits <= dst.frac_bits, "product would need rounding"

        # The product's top bit weighs 2**(a.exponent + b.exponent - 2 * src.bias + 1).
        exponent_offset = dst.bias - 2 * src.bias + 1
        smallest_exponent = 1 + 1 + exponent_offset - product_fraction_bits
        largest_exponent = 2 * (src.exp_max - 1) + exponent_offset
        assert smallest_exponent >= 1, "a product would be subnormal"
        assert largest_exponent < dst.exp_max, "a product would overflow"

        product, top_exponent, sign, is_nan, is_inf, is_zero = pipe.cut(
            "multiply", product=product, top_exponent=a.exponent + b.exponent + exponent_offset,
            sign=sign, is_nan=is_nan, is_inf=is_inf, is_zero=is_zero)

        leading_zeros = Signal(range(len(product) + 1))
        m.d.comb += leading_zeros.eq(count_leading_zeros(product))
        product, leading_zeros, top_exponent, sign, is_nan, is_inf, is_zero = pipe.cut(
            "count", product=product, leading_zeros=leading_zeros, top_exponent=top_exponent,
            sign=sign, is_nan=is_nan, is_inf=is_inf, is_zero=is_zero)

        normalized = Signal(len(product))
        exponent = Signal(range(dst.exp_max))
        m.d.comb += [
            normalized.eq(product << leading_zeros),
            exponent.eq(top_exponent - leading_zeros),
        ]

        normalized, exponent, sign, is_nan, is_inf, is_zero = pipe.cut(
            "normalize", normalized=normalized, exponent=exponent, sign=sign,
            is_nan=is_nan, is_inf=is_inf, is_zero=is_zero)

        result = float_layout(dst)(self.y)
        with m.If(is_nan):
            m.d.comb += self.y.eq(FP32_CANONICAL_NAN)
        with m.Elif(is_inf):
            _set_infinity(m, self.y, dst, sign)
        with m.Elif(is_zero):
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
