"""INT4 x INT4 processing-element array."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import signed_width

from .config import RMCConfig
from .pipeline import group_output, registered_output

__all__ = ["PEArray"]


def _adder_tree(values):
    values = list(values)
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        values = pairs + values[len(pairs) * 2:]
    return values[0]


def _signed_adder_tree(terms):
    """Return the sum of ``(value, negative)`` terms, with each negative term subtracted.

    Every node adds or subtracts two terms, so no term is negated on its own
    and the depth is that of a plain adder tree.
    """
    terms = list(terms)
    while len(terms) > 1:
        pairs = []
        for (a, a_negative), (b, b_negative) in zip(terms[0::2], terms[1::2]):
            if a_negative == b_negative:
                pairs.append((a + b, a_negative))
            elif b_negative:
                pairs.append((a - b, False))
            else:
                pairs.append((b - a, False))
        terms = pairs + terms[len(pairs) * 2:]
    value, negative = terms[0]
    return -value if negative else value


class PEArray(wiring.Component):
    """Fine-group partial sums from INT4 codes, one MAC per PE per cycle.

    Row ``r`` forms the dot product of the ``lanes`` activation codes of a
    beat with its own ``lanes`` weight codes and accumulates it over the
    ``fine_group / lanes`` beats of a fine group. It then emits the exact
    partial sum ``P`` of :func:`golden.residual.fine_partial_sums`, with the
    shifts and scales of the group's last beat.

    The dot product is summed by weight bit planes: in plane ``b``, bit
    ``b`` of each weight code selects its activation code (or 0), and a tree
    adds the selected codes of all lanes. With two's complement weights,
    ``sum_l x_l * w_l = sum_b 2**b * plane_b - 2**(bits - 1) * plane_(bits - 1)``
    over ``b < bits - 1``. No product appears as a multiplication, so
    synthesis builds the PEs from LUTs and adders and leaves the DSP blocks to
    the coarse scaler. Yosys 0.70 ``synth_ecp5`` maps every INT4 multiply to
    a DSP block, and at 8 x 16 PEs those 128 blocks and the FP lanes' need
    more than the 156 of an ECP5-85F. With ``synth_ice40``, which keeps INT4
    multiplies in LUTs, 2 x 16 PEs took 1533 LUTs as planes against 2086 as
    multipliers and trees.

    Two register stages, each taking one beat per cycle. The first sums each
    plane over groups of :attr:`GROUP_LANES` lanes. The second adds the group
    sums of all planes, weighted, in one tree, and accumulates the fine group.

    Parameters
    ----------
    config : RMCConfig

    Members
    -------
    i : ``In(stream.Signature(config.beat_layout()))``
    o : ``Out(stream.Signature(config.fine_sum_layout()))``
    """

    LATENCY = 2
    # Lanes per group of the first stage: three levels of adders.
    GROUP_LANES = 8

    def __init__(self, config=RMCConfig()):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.beat_layout())),
            "o": Out(stream.Signature(config.fine_sum_layout())),
        })

    @property
    def config(self):
        return self._config

    def _groups(self):
        """Return the lane ranges of the groups that the first stage sums."""
        lanes, size = self._config.lanes, self.GROUP_LANES
        return [range(start, min(start + size, lanes)) for start in range(0, lanes, size)]

    def _planes_layout(self):
        cfg = self._config
        element = cfg.quant.element
        size = min(cfg.lanes, self.GROUP_LANES)
        group_sum = signed(signed_width(size * element.min, size * element.max))
        beat = cfg.beat_layout()
        groups = len(self._groups())
        return data.StructLayout({
            "sums": data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(group_sum, groups), element.bits), cfg.rows),
            **{name: beat[name].shape for name in ("x_shift", "w_shift", "x_scale", "w_scale", "last")},
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        beat, out = self.i.payload, self.o.payload
        bits = cfg.quant.element.bits
        planes = stream.Signature(self._planes_layout()).create(path=("planes",))

        # Stage 1: the sum of each weight bit plane of each row over each group of lanes.
        groups = self._groups()
        took = registered_output(m, self.i, planes)
        with m.If(took):
            for row in range(cfg.rows):
                for bit in range(bits):
                    for index, group in enumerate(groups):
                        selected = (Mux(beat.w[row][lane][bit], beat.x[lane], 0) for lane in group)
                        m.d.sync += planes.payload.sums[row][bit][index].eq(_adder_tree(selected))
            m.d.sync += [
                planes.payload.x_shift.eq(beat.x_shift),
                planes.payload.w_shift.eq(beat.w_shift),
                planes.payload.x_scale.eq(beat.x_scale),
                planes.payload.w_scale.eq(beat.w_scale),
                planes.payload.last.eq(beat.last),
                planes.valid.eq(1),
            ]

        # Stage 2: the group sums weighted by their bits, accumulated over a fine group.
        transfer, first, last = group_output(m, planes, self.o, cfg.beats_per_fine_group, "beat")
        for row in range(cfg.rows):
            sums = planes.payload.sums[row]
            dot = Signal(signed(cfg.widths.partial_sum), name=f"dot_{row}")
            partial = Signal(signed(cfg.widths.partial_sum), name=f"partial_{row}")
            # The sign bit of a two's complement weight weighs -2**(bits - 1).
            terms = [(sums[bit][index] << bit, bit == bits - 1) for bit in range(bits) for index in range(len(groups))]
            m.d.comb += dot.eq(_signed_adder_tree(terms))
            if cfg.beats_per_fine_group == 1:
                m.d.comb += partial.eq(dot)
            else:
                running = Signal(signed(cfg.widths.partial_sum), name=f"running_{row}")
                m.d.comb += partial.eq(dot + (running & ~first.replicate(len(running))))
                with m.If(transfer):
                    m.d.sync += running.eq(partial)
            with m.If(transfer & last):
                m.d.sync += out.psum[row].eq(partial)

        with m.If(transfer & last):
            m.d.sync += [
                out.x_shift.eq(planes.payload.x_shift),
                out.w_shift.eq(planes.payload.w_shift),
                out.x_scale.eq(planes.payload.x_scale),
                out.w_scale.eq(planes.payload.w_scale),
                out.last.eq(planes.payload.last),
                self.o.valid.eq(1),
            ]
        return m
