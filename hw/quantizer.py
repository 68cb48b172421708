"""Online HGQ quantizer: FP16 activations in, INT4 codes with shifts and FP16 scales out.

The quantizer implements the integer steps of :mod:`golden.quantizer` and
equals :func:`golden.quantizer.quantize_hgq_fp16` (and so
:func:`golden.hgq.quantize_hgq`) bit for bit.
"""

from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.formats import FP16
from golden.hgq import HGQConfig
from golden.quantizer import MAGNITUDE_BITS

from .fp import count_leading_zeros, float_layout, unpack_float

__all__ = [
    "FP16_QUIET_NAN", "input_layout", "output_layout", "quantizer_name",
    "CoarseScaleUnit", "HGQQuantizer", "generate_verilog",
]

# The quiet NaN that the quantizer emits as the scale of a coarse group with
# NaN or Inf inputs: exponent all ones, top fraction bit set.
FP16_QUIET_NAN = (FP16.exp_max << FP16.frac_bits) | (1 << (FP16.frac_bits - 1))

# Width of an FP16 encoding without its sign bit. For finite values these
# encodings compare as unsigned integers in the order of the magnitudes, and
# Inf and NaN lie above every finite value.
_MAGNITUDE_ENCODING_BITS = FP16.width - 1


def input_layout(lanes):
    """Return the layout of an input beat: ``lanes`` FP16 encodings and the end-of-row flag ``last``."""
    return data.StructLayout({
        "x": data.ArrayLayout(unsigned(FP16.width), lanes),
        "last": 1,
    })


def output_layout(quant, lanes):
    """Return the layout of an output beat.

    ``codes`` are the beat's element codes, ``shift`` the shift code of its
    fine group, ``scale`` the FP16 encoding of its coarse group's scale, and
    ``last`` the input beat's flag.
    """
    return data.StructLayout({
        "codes": data.ArrayLayout(signed(quant.element.bits), lanes),
        "shift": unsigned(quant.shift_bits),
        "scale": unsigned(quant.scale.width),
        "last": 1,
    })


def quantizer_name(quant, lanes):
    """Return a short identifier of a quantizer, used for module and build directory names."""
    return f"hgq_quantizer_l{lanes}_gc{quant.coarse_group}_gf{quant.fine_group}_sb{quant.shift_bits}"


def _magnitude(m, encoding, name):
    """Return the magnitude integer ``M`` (value ``M * 2**-24``) of an FP16 encoding without its sign.

    ``M`` is the significand, hidden bit included, shifted left by the biased
    exponent minus 1, or by 0 for subnormals. The result has
    :data:`golden.quantizer.MAGNITUDE_BITS` bits, enough for every finite
    value. It is meaningless for NaN and Inf.
    """
    fields = float_layout(FP16)(Cat(encoding, 0))
    normal = fields.exponent != 0
    magnitude = Signal(MAGNITUDE_BITS, name=f"{name}_magnitude")
    shift = Mux(normal, (fields.exponent - 1)[:FP16.exp_bits], 0)
    m.d.comb += magnitude.eq(Cat(fields.fraction, normal) << shift)
    return magnitude


def _is_finite(encoding):
    """Return whether an FP16 encoding, with or without its sign bit, is finite."""
    return encoding[FP16.frac_bits:FP16.frac_bits + FP16.exp_bits] != FP16.exp_max


def _maximum(m, values, name):
    """Return the largest of unsigned ``values``, as a tree of comparisons.

    Every node is a Signal, so that the Verilog does not repeat a subtree in
    each expression that reads it.
    """
    values = list(values)
    level = 0
    while len(values) > 1:
        pairs = []
        for i in range(0, len(values) - 1, 2):
            node = Signal(max(len(values[i]), len(values[i + 1])), name=f"{name}_{level}_{i // 2}")
            m.d.comb += node.eq(Mux(values[i] > values[i + 1], values[i], values[i + 1]))
            pairs.append(node)
        values = pairs + values[len(pairs) * 2:]
        level += 1
    return values[0]


def _counter(m, advance, length, name):
    """Count ``advance`` cycles modulo ``length``, and return the count and a flag for its last value."""
    count = Signal(range(length), name=f"{name}_count")
    last = count == length - 1
    with m.If(advance):
        m.d.sync += count.eq(Mux(last, 0, count + 1))
    return count, last


class CoarseScaleUnit(wiring.Component):
    """Coarse scale ``y = fp16(a / divisor)`` of a coarse group's amax ``a``, combinational.

    The sign bit of ``a`` is ignored. The significand of ``a`` is shifted left
    by ``divisor.bit_length() + 1`` bits and divided by ``divisor``. The
    quotient, with the remainder's OR as a jammed sticky bit below it, is
    normalized down to the exponent of ``a`` at most and rounded to nearest
    even, as :class:`~hw.fp.NormalizeRoundPack` does. The extra bits put the
    sticky bit below the guard position of every result. A NaN or Inf ``a``
    gives :data:`FP16_QUIET_NAN`. The quotient of a finite ``a`` never
    exceeds ``a``, so it cannot overflow.

    The unit uses only multiplexers and arithmetic, no ``If`` chain, so its
    Verilog has no ``always @*`` block that Icarus could leave undefined.
    Equals :func:`golden.quantizer.coarse_scale_magnitudes` for every finite
    ``a`` (tested exhaustively).

    Parameters
    ----------
    divisor : int
        The largest element code, 7 for INT4.

    Members
    -------
    a : ``In(16)``
        FP16 encoding of the amax.
    y : ``Out(16)``
        FP16 encoding of the scale.
    """

    def __init__(self, divisor=7):
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor <= 0:
            raise ValueError(f"divisor must be a positive integer, not {divisor!r}")
        self._divisor = divisor
        super().__init__({
            "a": In(FP16.width),
            "y": Out(FP16.width),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor
        extra_bits = divisor.bit_length() + 1
        precision = FP16.significand_bits

        amax = unpack_float(m, FP16, Cat(self.a[:_MAGNITUDE_ENCODING_BITS], 0), "amax")
        dividend = Signal(precision + extra_bits)
        quotient = Signal(len(dividend))
        remainder = Signal(range(divisor))
        m.d.comb += [
            dividend.eq(amax.significand << extra_bits),
            quotient.eq(dividend // divisor),
            remainder.eq(dividend % divisor),
        ]

        # `significand` is the quotient with the sticky bit appended. Read as
        # 1.xxx with its top bit as the hidden bit, it has the exponent of
        # `a`: a / divisor = significand * 2**(exponent - bias - (width - 1)),
        # because width - 1 = frac_bits + extra_bits + 1.
        significand = Signal(len(quotient) + 1)
        width = len(significand)
        leading_zeros = Signal(range(width + 1))
        shift = Signal(range(FP16.exp_max))
        normalized = Signal(width)
        m.d.comb += [
            significand.eq(Cat(remainder != 0, quotient)),
            leading_zeros.eq(count_leading_zeros(significand)),
            # Normalize, but not below biased exponent 1, where results are subnormal.
            shift.eq(Mux(leading_zeros < amax.exponent - 1, leading_zeros, amax.exponent - 1)),
            normalized.eq(significand << shift),
        ]

        truncated = normalized[width - precision:]
        guard = normalized[width - precision - 1]
        sticky = normalized[:width - precision - 1].any()
        round_up = guard & (sticky | truncated[0])
        # The hidden bit of `truncated` carries into the exponent field, so a
        # subnormal (hidden bit 0) gets the field 0, and a rounding carry
        # moves into the exponent on its own. A zero amax gives +0.
        rounded = Signal(FP16.width)
        m.d.comb += [
            rounded.eq(((amax.exponent - shift - 1) << FP16.frac_bits) + truncated + round_up),
            self.y.eq(Mux(amax.is_nan | amax.is_inf, FP16_QUIET_NAN, rounded)),
        ]
        return m


class HGQQuantizer(wiring.Component):
    """Quantize a stream of FP16 activations with HGQ, one coarse group at a time.

    The input carries each token's row of K in ``K / lanes`` beats of
    ``lanes`` FP16 encodings. The output carries one beat per input beat, in
    the same order, with the beat's element codes, the shift code of its fine
    group and the FP16 scale of its coarse group. Coarse groups are counted
    from reset, so every row must consist of whole coarse groups. ``last``
    is passed through and the group counters ignore it.

    Two buffers of one coarse group each (``Gc / lanes`` beats) alternate.
    While the write side fills one, it tracks the amax of every fine group and
    of the coarse group as FP16 encodings without the sign bit, which order
    like the magnitudes. The read side replays the other buffer once it is
    full, computes the scale (:class:`CoarseScaleUnit`) and the fine shifts
    as it fetches a beat, and the element codes from the fetched beat. The
    quantizer accepts and emits one beat per cycle without backpressure.
    The first output beat of a coarse group leaves 3 cycles after the
    group's last input beat is accepted.

    Inputs must be finite. A NaN or Inf input sets ``invalid``, which stays
    high until reset. Its coarse group is emitted with all codes 0, shift
    codes 0 and the scale :data:`FP16_QUIET_NAN`, so that the NaN reaches
    the results of the residual matrix core.

    Parameters
    ----------
    quant : HGQConfig
        Group sizes and shift width. Its scale format must be FP16.
    lanes : int
        Elements per beat; must divide ``quant.fine_group``.

    Raises
    ------
    TypeError
        If ``quant`` is not an :class:`~golden.hgq.HGQConfig`.
    ValueError
        If ``lanes`` is not a positive integer dividing the fine group, or if
        the scale format is not FP16.

    Members
    -------
    i : ``In(stream.Signature(input_layout(lanes)))``
    o : ``Out(stream.Signature(output_layout(quant, lanes)))``
    invalid : ``Out(1)``
        High from the cycle after a NaN or Inf input beat is accepted until reset.
    """

    def __init__(self, quant=HGQConfig(), lanes=16):
        if not isinstance(quant, HGQConfig):
            raise TypeError(f"quant must be an HGQConfig, not {type(quant).__name__}")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes <= 0:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if quant.fine_group % lanes:
            raise ValueError(f"lanes must divide fine_group ({quant.fine_group}), not {lanes}")
        if quant.scale != FP16:
            raise ValueError(f"quant.scale must be FP16, not {quant.scale.name}")
        self._quant = quant
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(input_layout(lanes))),
            "o": Out(stream.Signature(output_layout(quant, lanes))),
            "invalid": Out(1),
        })

    @property
    def quant(self):
        return self._quant

    @property
    def lanes(self):
        return self._lanes

    @property
    def name(self):
        return quantizer_name(self._quant, self._lanes)

    def elaborate(self, platform):
        m = Module()
        quant, lanes = self._quant, self._lanes
        beats_per_fine = quant.fine_group // lanes
        beats_per_coarse = quant.coarse_group // lanes
        fine_per_coarse = quant.fine_per_coarse

        # Bank b of `beats` starts at address b * beats_per_coarse, and bank b
        # of `fine_amax` at address b * fine_per_coarse.
        m.submodules.beats = beats = Memory(shape=input_layout(lanes), depth=2 * beats_per_coarse, init=[])
        m.submodules.fine_amax = fine_amax = Memory(
            shape=_MAGNITUDE_ENCODING_BITS, depth=2 * fine_per_coarse, init=[])
        # Registers of each bank. They are read through `Mux`, not by indexing
        # the Array, because Yosys turns an indexed read into an `always @*`
        # block, which Icarus leaves undefined until an input changes.
        coarse_amax = Array(Signal(_MAGNITUDE_ENCODING_BITS, name=f"coarse_amax_{bank}") for bank in range(2))
        full = Array(Signal(name=f"full_{bank}") for bank in range(2))

        self._write_side(m, beats, fine_amax, coarse_amax, full, beats_per_fine, beats_per_coarse)
        self._read_side(m, beats, fine_amax, coarse_amax, full, beats_per_fine, beats_per_coarse)
        return m

    def _write_side(self, m, beats, fine_amax, coarse_amax, full, beats_per_fine, beats_per_coarse):
        """Store input beats into the free bank and track the amax of its groups."""
        quant, beat = self._quant, self.i.payload
        write = beats.write_port()
        fine_write = fine_amax.write_port()

        bank = Signal(name="write_bank")
        transfer = Signal(name="write_transfer")
        m.d.comb += [
            self.i.ready.eq(~Mux(bank, full[1], full[0])),
            transfer.eq(self.i.valid & self.i.ready),
        ]
        beat_index, coarse_last = _counter(m, transfer, beats_per_coarse, "write_beat")
        in_fine, fine_last = _counter(m, transfer, beats_per_fine, "write_in_fine")
        fine_index, _ = _counter(m, transfer & fine_last, quant.fine_per_coarse, "write_fine")

        encodings = [beat.x[lane][:_MAGNITUDE_ENCODING_BITS] for lane in range(self._lanes)]
        beat_max = Signal(_MAGNITUDE_ENCODING_BITS, name="beat_max")
        fine_running = Signal(_MAGNITUDE_ENCODING_BITS, name="fine_running_max")
        fine_max = Signal(_MAGNITUDE_ENCODING_BITS, name="fine_max")
        coarse_running = Signal(_MAGNITUDE_ENCODING_BITS, name="coarse_running_max")
        coarse_max = Signal(_MAGNITUDE_ENCODING_BITS, name="coarse_max")
        m.d.comb += [
            beat_max.eq(_maximum(m, encodings, "beat_max")),
            fine_max.eq(Mux((in_fine != 0) & (fine_running > beat_max), fine_running, beat_max)),
            coarse_max.eq(Mux((beat_index != 0) & (coarse_running > beat_max), coarse_running, beat_max)),
            write.addr.eq(Mux(bank, beats_per_coarse, 0) + beat_index),
            write.data.eq(beat),
            write.en.eq(transfer),
            fine_write.addr.eq(Mux(bank, quant.fine_per_coarse, 0) + fine_index),
            fine_write.data.eq(fine_max),
            fine_write.en.eq(transfer & fine_last),
        ]

        with m.If(transfer):
            m.d.sync += [
                fine_running.eq(fine_max),
                coarse_running.eq(coarse_max),
            ]
            with m.If(coarse_last):
                m.d.sync += [
                    coarse_amax[bank].eq(coarse_max),
                    full[bank].eq(1),
                    bank.eq(~bank),
                ]
            with m.If(~Cat(_is_finite(beat.x[lane]) for lane in range(self._lanes)).all()):
                m.d.sync += self.invalid.eq(1)

    def _read_side(self, m, beats, fine_amax, coarse_amax, full, beats_per_fine, beats_per_coarse):
        """Replay a full bank: fetch each beat with its shift and scale, then compute its codes."""
        quant = self._quant
        read = beats.read_port(domain="sync")
        fine_read = fine_amax.read_port(domain="comb")

        # The staged beat is the read port's data register, with its fine
        # shift and coarse scale in `staged_shift` and `staged_scale`. The
        # output register follows it.
        staged = Signal(name="staged_valid")
        staged_shift = Signal(quant.shift_bits, name="staged_shift")
        staged_scale = Signal(FP16.width, name="staged_scale")
        output_free = ~self.o.valid | self.o.ready
        advance = Signal(name="staged_advance")
        fetch = Signal(name="fetch")
        bank = Signal(name="read_bank")
        m.d.comb += [
            advance.eq(staged & output_free),
            fetch.eq(Mux(bank, full[1], full[0]) & (~staged | output_free)),
        ]
        beat_index, coarse_last = _counter(m, fetch, beats_per_coarse, "read_beat")
        _, fine_last = _counter(m, fetch, beats_per_fine, "read_in_fine")
        fine_index, _ = _counter(m, fetch & fine_last, quant.fine_per_coarse, "read_fine")

        group_amax = Signal(_MAGNITUDE_ENCODING_BITS, name="group_amax")
        m.submodules.scale_unit = scale_unit = CoarseScaleUnit(quant.element.max)
        m.d.comb += [
            read.addr.eq(Mux(bank, beats_per_coarse, 0) + beat_index),
            read.en.eq(fetch),
            fine_read.addr.eq(Mux(bank, quant.fine_per_coarse, 0) + fine_index),
            group_amax.eq(Mux(bank, coarse_amax[1], coarse_amax[0])),
            scale_unit.a.eq(group_amax),
        ]
        shift = self._fine_shift(m, fine_read.data, group_amax)

        with m.If(fetch):
            m.d.sync += [
                staged.eq(1),
                staged_shift.eq(shift),
                staged_scale.eq(scale_unit.y),
            ]
            with m.If(coarse_last):
                m.d.sync += [
                    full[bank].eq(0),
                    bank.eq(~bank),
                ]
        with m.Elif(advance):
            m.d.sync += staged.eq(0)

        fetched = read.data
        codes = self._codes(m, fetched, staged_shift, staged_scale)
        out = self.o.payload
        with m.If(advance):
            m.d.sync += [
                out.shift.eq(staged_shift),
                out.scale.eq(staged_scale),
                out.last.eq(fetched.last),
                self.o.valid.eq(1),
            ]
            m.d.sync += [out.codes[lane].eq(code) for lane, code in enumerate(codes)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

    def _fine_shift(self, m, fine_encoding, coarse_encoding):
        """Return the largest s in 0 .. smax with ``(A_j << s) <= A``, or 0 for a group with NaN or Inf."""
        quant = self._quant
        shift = Signal(quant.shift_bits, name="fine_shift")
        if quant.max_shift == 0:
            return shift
        fine = _magnitude(m, fine_encoding, "fine_amax")
        coarse = _magnitude(m, coarse_encoding, "coarse_amax")
        # The comparisons are monotonic in s, so their count is the largest s that passes.
        fits = [(fine << s) <= coarse for s in range(1, quant.max_shift + 1)]
        m.d.comb += shift.eq(Mux(_is_finite(coarse_encoding), sum(fits), 0))
        return shift

    def _codes(self, m, fetched, shift, scale):
        """Return the element codes of the fetched beat from comparisons with the thresholds ``(2k + 1) M_S``."""
        quant = self._quant
        element = quant.element
        scale_magnitude = _magnitude(m, scale[:_MAGNITUDE_ENCODING_BITS], "scale")
        thresholds = []
        for k in range(element.max + 1):
            threshold = Signal(MAGNITUDE_BITS + (2 * k + 1).bit_length(), name=f"threshold_{k}")
            m.d.comb += threshold.eq(scale_magnitude * (2 * k + 1))
            thresholds.append(threshold)
        # A zero scale (amax / 7 below half the smallest subnormal) and the
        # NaN scale of a group with NaN or Inf inputs both give codes 0.
        usable = Signal(name="scale_usable")
        m.d.comb += usable.eq((scale[:_MAGNITUDE_ENCODING_BITS] != 0) & _is_finite(scale))

        codes = []
        for lane in range(self._lanes):
            encoding = fetched.x[lane]
            magnitude = _magnitude(m, encoding[:_MAGNITUDE_ENCODING_BITS], f"x{lane}")
            doubled = Signal(len(magnitude) + 1 + quant.max_shift, name=f"doubled_{lane}")
            above = Signal(range(element.max + 2), name=f"above_{lane}")
            tie = Signal(name=f"tie_{lane}")
            rounded = Signal(range(element.max + 2), name=f"rounded_{lane}")
            code = Signal(signed(element.bits), name=f"code_{lane}")
            m.d.comb += [
                doubled.eq(Cat(0, magnitude) << shift),
                above.eq(sum(doubled > threshold for threshold in thresholds)),
                tie.eq(Cat(doubled == threshold for threshold in thresholds).any()),
                # A tie at k leaves above = k, and ties go to the even neighbour.
                rounded.eq(above + (tie & above[0])),
                # Saturation follows rounding. A negative magnitude is at most
                # element.max + 1 and needs none.
                code.eq(Mux(~usable, 0,
                            Mux(encoding[FP16.width - 1], -rounded,
                                Mux(rounded > element.max, element.max, rounded)))),
            ]
            codes.append(code)
        return codes


def generate_verilog(quant=HGQConfig(), lanes=16, name=None):
    """Return the Verilog text of an :class:`HGQQuantizer` with top module ``name``.

    The ports are ``clk``, ``rst``, ``invalid``, and ``i__payload``,
    ``i__valid``, ``i__ready``, ``o__payload``, ``o__valid``, ``o__ready``,
    with the payloads packed as :func:`input_layout` and
    :func:`output_layout` (first field in the least significant bits).
    """
    return verilog.convert(HGQQuantizer(quant, lanes), name=name or quantizer_name(quant, lanes))
