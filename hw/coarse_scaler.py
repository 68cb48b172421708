"""FP coarse scaler: one INT-to-FP conversion and one FP32 multiply-add per coarse group and row."""

from dataclasses import dataclass

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import FP16, FP32

from .config import RMCConfig
from .fp import FP16ProductToFP32, FP32Adder, FP32NormalMultiplier, IntToFP32, float_layout

__all__ = ["CoarseScaler", "ScalerTiming", "scaler_timing"]

# Register stages of the lanes' FP units. The converter takes one stage less
# than CONVERT_STAGES and a register on its result the last. The scale
# product takes two less, then a register on the scale with its exponent
# shift and a delay register.
CONVERT_STAGES = 5
MULTIPLY_STAGES = 4
ADD_STAGES = 6


@dataclass(frozen=True)
class ScalerTiming:
    """Pipeline figures of the coarse scaler of one configuration, in cycles.

    Attributes
    ----------
    read_stages : int
        Register stages between a row's running sum and the adder: 1, or 0
        when ``C = config.beats_per_coarse_group`` is 1.
    add_stages : int
        Register stages of the FP32 adder: :data:`ADD_STAGES`, but at most
        ``C - 1 - read_stages``, so none at C = 1 and C = 2.
    interval : int
        Cycles that the scaler spends on each coarse sum: at least the rows'
        ``config.scaler_cycles``, and at least the adder's loop,
        ``read_stages + add_stages + 1``, so that a row's running sum is
        written before it is read for the row's next add. At most C.
    latency : int
        Cycles from the first cycle in which a coarse sum marked ``last`` is
        offered to the cycle its output beat is valid, without stalls: the
        rows' cycles, the operand register, the FP units and the write of
        the sums.
    """

    read_stages: int
    add_stages: int
    interval: int
    latency: int


def scaler_timing(config):
    """Return the :class:`ScalerTiming` of the coarse scaler of ``config``."""
    coarse_beats = config.beats_per_coarse_group
    read_stages = 1 if coarse_beats > 1 else 0
    add_stages = max(0, min(ADD_STAGES, coarse_beats - 1 - read_stages))
    return ScalerTiming(
        read_stages=read_stages,
        add_stages=add_stages,
        interval=max(config.scaler_cycles, read_stages + add_stages + 1),
        latency=config.scaler_cycles + 1 + CONVERT_STAGES + MULTIPLY_STAGES + add_stages,
    )


def _delay(m, enable, value, count, name):
    """Return ``value`` delayed by ``count`` of the cycles in which ``enable`` is high."""
    for index in range(count):
        register = Signal.like(value, name=f"{name}_{index}")
        with m.If(enable):
            m.d.sync += register.eq(value)
        value = register
    return value


def _by_phase(m, phase, cycles, body):
    """Add the statements of ``body(cycle)`` for each cycle of a coarse sum, selected by ``phase``.

    With one cycle per coarse sum, ``body(0)`` applies in every phase: the
    phases that issue nothing have their results discarded.
    """
    if cycles == 1:
        body(0)
        return
    with m.Switch(phase):
        for cycle in range(cycles):
            with m.Case(cycle):
                body(cycle)


class CoarseScaler(wiring.Component):
    """Scale the coarse sums of each row and accumulate them in FP32, on time-shared FP lanes.

    For every coarse sum and row it computes, with round to nearest even at
    each step::

        y = y + fp32(acc) * (fp32(S_x) * fp32(S_w) * 2**-(2*smax))

    starting from ``y = +0`` at the first coarse group of a row of K, and
    sends the ``rows`` sums after the coarse sum marked ``last``. This is
    :func:`golden.residual.coarse_scale_accumulate`, bit for bit. The scale
    product of two FP16 numbers is exact in FP32 and at least ``2**-48``, so
    the factor ``2**-(2*smax)`` is a subtraction from its exponent field that
    stays in the normal range. A NaN scale, which the activation quantizer
    sends for invalid input, stays NaN and makes the row's output NaN.

    The multiply uses :class:`FP32NormalMultiplier`: ``fp32(acc)`` is an
    integer, so zero or at least 1 in magnitude, and the scale is zero, NaN
    or at least ``2**-78``, so every finite product is zero or at least
    ``2**-78``, far above the smallest normal number.

    **Time sharing.** A coarse sum arrives at most once every
    ``C = config.beats_per_coarse_group`` cycles. The scaler has
    ``P = config.scaler_lanes`` FP lanes, each with an :class:`IntToFP32`,
    an :class:`FP16ProductToFP32`, an :class:`FP32NormalMultiplier` and an
    :class:`FP32Adder`. In cycle ``j`` of a coarse sum, lane ``p`` takes row
    ``j * P + p``, so the rows take ``config.scaler_cycles <= C`` cycles.
    The input keeps the coarse sum until then; the shift scaler meanwhile
    keeps summing the next coarse group.

    **Pipeline.** The lane's operands are registered, then the conversion
    and the aligned scale take :data:`CONVERT_STAGES` cycles, the multiply
    :data:`MULTIPLY_STAGES` and the add ``timing.add_stages``. Each row's
    running sum sits in its word of the output payload, which the lane reads
    ``timing.read_stages`` cycles before the add and the adder writes. The
    add is the only step in a loop: a row's next product reaches the adder
    ``timing.interval`` cycles after the current one at the earliest, which
    is longer than the read and the add together, so every sum is written
    before it is read again. The sums of a row are thus formed in
    coarse-group order, one rounding each, as in the golden model.

    The conventional design (one scale per fine group, ``lanes = fine_group``)
    has C = 1: a row's products arrive in consecutive cycles, so its adder
    must finish in one cycle. Its combinational FP32 add, with the read of the
    running sum, then limits the clock frequency of that design. Pipelining
    the add there would need interleaved sums and so another summation order,
    which the golden model does not allow.

    **Backpressure.** The whole pipeline advances only in cycles where the
    output is empty or being read, so the payload stays stable while
    ``o.valid`` is high and ``o.ready`` low.

    Parameters
    ----------
    config : RMCConfig

    Members
    -------
    i : ``In(stream.Signature(config.coarse_sum_layout()))``
    o : ``Out(stream.Signature(config.output_layout()))``
    """

    def __init__(self, config=RMCConfig()):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.coarse_sum_layout())),
            "o": Out(stream.Signature(config.output_layout())),
        })

    @property
    def config(self):
        return self._config

    @property
    def timing(self):
        return scaler_timing(self._config)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        coarse = self.i.payload
        lanes, cycles = cfg.scaler_lanes, cfg.scaler_cycles
        timing = self.timing
        interval = timing.interval

        # The pipeline, the sums and the input all move only in these cycles.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        # `phase` counts the cycles spent on the coarse sum at the input. The
        # last `interval - cycles` of them issue nothing and only space the
        # coarse sums for the adder's loop.
        phase = Signal(range(interval))
        first = Signal(init=1)
        m.d.comb += self.i.ready.eq(advance & (phase == interval - 1))
        with m.If(self.i.valid & advance):
            m.d.sync += phase.eq(Mux(phase == interval - 1, 0, phase + 1))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += first.eq(coarse.last)

        # Operand registers: the rows of this phase, one per lane.
        issued = Signal()
        issued_phase = Signal.like(phase, reset_less=True)
        issued_first = Signal(reset_less=True)
        issued_last = Signal(reset_less=True)
        x_scale = Signal(unsigned(FP16.width), reset_less=True)
        accs = [Signal(signed(cfg.widths.coarse_sum), name=f"acc_{lane}", reset_less=True)
                for lane in range(lanes)]
        w_scales = [Signal(unsigned(FP16.width), name=f"w_scale_{lane}", reset_less=True)
                    for lane in range(lanes)]
        with m.If(advance):
            m.d.sync += [
                issued.eq(self.i.valid & (phase < cycles)),
                issued_phase.eq(phase),
                issued_first.eq(first),
                issued_last.eq(coarse.last),
                x_scale.eq(coarse.x_scale),
            ]

            def load(cycle):
                for lane, row in self._rows(cycle):
                    m.d.sync += [
                        accs[lane].eq(coarse.acc[row]),
                        w_scales[lane].eq(coarse.w_scale[row]),
                    ]
            _by_phase(m, phase, cycles, load)

        # The control bits that go with the operands: where the running sums
        # are read, at the adder's input and where the sums are written.
        product_stages = CONVERT_STAGES + MULTIPLY_STAGES
        read_phase = _delay(m, advance, issued_phase, product_stages - timing.read_stages, "read_phase")
        read_first = _delay(m, advance, issued_first, product_stages - timing.read_stages, "read_first")
        add_phase = _delay(m, advance, read_phase, timing.read_stages, "add_phase")
        sum_valid = _delay(m, advance, issued, product_stages + timing.add_stages, "sum_valid")
        sum_phase = _delay(m, advance, add_phase, timing.add_stages, "sum_phase")
        sum_last = _delay(m, advance, issued_last, product_stages + timing.add_stages, "sum_last")

        sums = self.o.payload.y
        results = [self._lane(m, lane, advance, timing, accs[lane], x_scale, w_scales[lane],
                              read_phase, read_first)
                   for lane in range(lanes)]

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(advance & sum_valid):
            def write(cycle):
                for lane, row in self._rows(cycle):
                    m.d.sync += sums[row].eq(results[lane])
            _by_phase(m, sum_phase, cycles, write)
            with m.If(sum_last & (sum_phase == cycles - 1)):
                m.d.sync += self.o.valid.eq(1)
        return m

    def _lane(self, m, lane, advance, timing, acc, x_scale, w_scale, read_phase, read_first):
        """Add the FP units of one lane and return its adder's result.

        The adder's first operand is the running sum of the lane's row in
        ``read_phase``, or +0 for the first coarse group of a row of K, read
        ``timing.read_stages`` cycles before the add.
        """
        cfg = self._config
        exponent_offset = (2 * cfg.quant.max_shift) << FP32.frac_bits

        convert = m.submodules[f"convert_{lane}"] = IntToFP32(cfg.widths.coarse_sum,
                                                              stages=CONVERT_STAGES - 1)
        scale = m.submodules[f"scale_{lane}"] = FP16ProductToFP32(stages=CONVERT_STAGES - 2)
        multiply = m.submodules[f"multiply_{lane}"] = FP32NormalMultiplier(stages=MULTIPLY_STAGES)
        add = m.submodules[f"add_{lane}"] = FP32Adder(stages=timing.add_stages)
        units = [convert, scale, multiply] + ([add] if timing.add_stages else [])
        m.d.comb += [unit.en.eq(advance) for unit in units]

        converted = Signal(unsigned(FP32.width), name=f"converted_{lane}", reset_less=True)
        aligned_scale = Signal(unsigned(FP32.width), name=f"aligned_scale_{lane}", reset_less=True)
        scale_fields = float_layout(FP32)(scale.y)
        with m.If(advance):
            m.d.sync += converted.eq(convert.y)
            with m.If((scale_fields.exponent == FP32.exp_max) | (scale.y == 0)):
                m.d.sync += aligned_scale.eq(scale.y)
            with m.Else():
                m.d.sync += aligned_scale.eq(scale.y - exponent_offset)

        selected = Signal(unsigned(FP32.width), name=f"selected_{lane}")

        def read(cycle):
            for row_lane, row in self._rows(cycle):
                if row_lane == lane:
                    m.d.comb += selected.eq(self.o.payload.y[row])
        _by_phase(m, read_phase, cfg.scaler_cycles, read)
        running = _delay(m, advance, Mux(read_first, 0, selected), timing.read_stages, f"running_{lane}")

        m.d.comb += [
            convert.a.eq(acc),
            scale.a.eq(x_scale),
            scale.b.eq(w_scale),
            multiply.a.eq(converted),
            multiply.b.eq(_delay(m, advance, aligned_scale, 1, f"scale_delay_{lane}")),
            add.a.eq(running),
            add.b.eq(multiply.y),
        ]
        return add.y

    def _rows(self, cycle):
        """Return the ``(lane, row)`` pairs that the lanes take in cycle ``cycle`` of a coarse sum."""
        lanes = self._config.scaler_lanes
        rows = range(cycle * lanes, min((cycle + 1) * lanes, self._config.rows))
        return [(row - cycle * lanes, row) for row in rows]
