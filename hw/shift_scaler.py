"""Shift-based fine scaler: aligns fine-group partial sums and sums a coarse group."""

from amaranth import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import RMCConfig
from .pipeline import group_output

__all__ = ["ShiftScaler"]


class ShiftScaler(wiring.Component):
    """Align each partial sum by its shift codes and accumulate a coarse group exactly.

    A partial sum is shifted left by ``2*smax - s_x - s_w``. Because
    ``smax = 2**shift_bits - 1`` is all ones, ``smax - s`` is the bitwise NOT
    of ``s``, so the shift amount is ``~s_x + ~s_w`` and no subtractor is
    needed. Equals :func:`golden.residual.align_and_accumulate`.

    The output register keeps a coarse sum until the coarse scaler takes it,
    which may be up to ``config.beats_per_coarse_group`` cycles later. Only
    the last partial sum of the next coarse group waits for it; the others
    are taken at once, so the stage runs at one beat per cycle.

    Parameters
    ----------
    config : RMCConfig

    Members
    -------
    i : ``In(stream.Signature(config.fine_sum_layout()))``
    o : ``Out(stream.Signature(config.coarse_sum_layout()))``
    """

    def __init__(self, config=RMCConfig()):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.fine_sum_layout())),
            "o": Out(stream.Signature(config.coarse_sum_layout())),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        fine, out = self.i.payload, self.o.payload
        width = cfg.widths.coarse_sum

        transfer, first, last = group_output(m, self.i, self.o, cfg.quant.fine_per_coarse, "fine")

        for row in range(cfg.rows):
            amount = (~fine.x_shift) + (~fine.w_shift[row])
            aligned = Signal(signed(cfg.widths.aligned), name=f"aligned_{row}")
            total = Signal(signed(width), name=f"total_{row}")
            m.d.comb += aligned.eq(fine.psum[row] << amount)
            if cfg.quant.fine_per_coarse == 1:
                m.d.comb += total.eq(aligned)
            else:
                running = Signal(signed(width), name=f"running_{row}")
                m.d.comb += total.eq(aligned + (running & ~first.replicate(width)))
                with m.If(transfer):
                    m.d.sync += running.eq(total)
            with m.If(transfer & last):
                m.d.sync += out.acc[row].eq(total)

        with m.If(transfer & last):
            m.d.sync += [
                out.x_scale.eq(fine.x_scale),
                out.w_scale.eq(fine.w_scale),
                out.last.eq(fine.last),
                self.o.valid.eq(1),
            ]
        return m
