"""INT4 x INT4 processing-element array."""

from amaranth import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import RMCConfig
from .pipeline import group_counter, registered_output

__all__ = ["PEArray"]


def _adder_tree(values):
    values = list(values)
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        values = pairs + values[len(pairs) * 2:]
    return values[0]


class PEArray(wiring.Component):
    """Fine-group partial sums from INT4 codes, one MAC per PE per cycle.

    Row ``r`` multiplies the ``lanes`` activation codes of a beat with its own
    ``lanes`` weight codes, adds the products in a tree and accumulates over
    the ``fine_group / lanes`` beats of a fine group. It then emits the exact
    partial sum ``P`` of :func:`golden.residual.fine_partial_sums`, with the
    shifts and scales of the group's last beat.

    Parameters
    ----------
    config : RMCConfig

    Members
    -------
    i : ``In(stream.Signature(config.beat_layout()))``
    o : ``Out(stream.Signature(config.fine_sum_layout()))``
    """

    def __init__(self, config=RMCConfig()):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.beat_layout())),
            "o": Out(stream.Signature(config.fine_sum_layout())),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        beat, out = self.i.payload, self.o.payload

        transfer = registered_output(m, self.i, self.o)
        first, last = group_counter(m, transfer, cfg.beats_per_fine_group, "beat")

        for row in range(cfg.rows):
            products = [beat.x[lane] * beat.w[row][lane] for lane in range(cfg.lanes)]
            dot = Signal(signed(cfg.widths.partial_sum), name=f"dot_{row}")
            partial = Signal(signed(cfg.widths.partial_sum), name=f"partial_{row}")
            m.d.comb += dot.eq(_adder_tree(products))
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
                out.x_shift.eq(beat.x_shift),
                out.w_shift.eq(beat.w_shift),
                out.x_scale.eq(beat.x_scale),
                out.w_scale.eq(beat.w_scale),
                out.last.eq(beat.last),
                self.o.valid.eq(1),
            ]
        return m
