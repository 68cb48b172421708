"""FP coarse scaler: one INT-to-FP conversion and one FP32 multiply-add per coarse group."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import FP32

from .config import RMCConfig
from .fp import FP16ProductToFP32, FP32Adder, FP32Multiplier, IntToFP32
from .pipeline import registered_output

__all__ = ["CoarseScaler", "ScaleMultiplier", "FP32Accumulator"]


class ScaleMultiplier(wiring.Component):
    """Per row: ``fp32(acc) * (fp32(S_x) * fp32(S_w) * 2**-(2*smax))``, registered.

    The scale product of two FP16 numbers is exact in FP32 and at least
    ``2**-48``, so the factor ``2**-(2*smax)`` is a subtraction from its
    exponent field that stays in the normal range. The conversion and the
    multiply round to nearest even, as numpy float32 does in
    :func:`golden.residual.coarse_scale_accumulate`.

    Members
    -------
    i : ``In(stream.Signature(config.coarse_sum_layout()))``
    o : ``Out(stream.Signature(config.product_layout()))``
    """

    def __init__(self, config=RMCConfig()):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.coarse_sum_layout())),
            "o": Out(stream.Signature(config.product_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        coarse, out = self.i.payload, self.o.payload
        exponent_offset = (2 * cfg.quant.max_shift) << FP32.frac_bits

        transfer = registered_output(m, self.i, self.o)
        for row in range(cfg.rows):
            scale = m.submodules[f"scale_{row}"] = FP16ProductToFP32()
            convert = m.submodules[f"convert_{row}"] = IntToFP32(cfg.widths.coarse_sum)
            multiply = m.submodules[f"multiply_{row}"] = FP32Multiplier()
            aligned_scale = Signal(unsigned(FP32.width), name=f"aligned_scale_{row}")
            m.d.comb += [
                scale.a.eq(coarse.x_scale),
                scale.b.eq(coarse.w_scale[row]),
                aligned_scale.eq(Mux(scale.y == 0, 0, scale.y - exponent_offset)),
                convert.a.eq(coarse.acc[row]),
                multiply.a.eq(convert.y),
                multiply.b.eq(aligned_scale),
            ]
            with m.If(transfer):
                m.d.sync += out.product[row].eq(multiply.y)
        with m.If(transfer):
            m.d.sync += [out.last.eq(coarse.last), self.o.valid.eq(1)]
        return m


class FP32Accumulator(wiring.Component):
    """Per row: ``y = y + product`` in FP32 over the coarse groups of a row of K.

    The sum starts from +0 and is emitted, and restarted, after the product
    marked ``last``.

    Members
    -------
    i : ``In(stream.Signature(config.product_layout()))``
    o : ``Out(stream.Signature(config.output_layout()))``
    """

    def __init__(self, config=RMCConfig()):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.product_layout())),
            "o": Out(stream.Signature(config.output_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        products, out = self.i.payload, self.o.payload

        transfer = registered_output(m, self.i, self.o)
        first = Signal(init=1)
        with m.If(transfer):
            m.d.sync += first.eq(products.last)

        for row in range(cfg.rows):
            add = m.submodules[f"add_{row}"] = FP32Adder()
            total = Signal(unsigned(FP32.width), name=f"total_{row}")
            m.d.comb += [
                add.a.eq(Mux(first, 0, total)),
                add.b.eq(products.product[row]),
            ]
            with m.If(transfer):
                m.d.sync += total.eq(add.y)
                with m.If(products.last):
                    m.d.sync += out.y[row].eq(add.y)
        with m.If(transfer & products.last):
            m.d.sync += self.o.valid.eq(1)
        return m


class CoarseScaler(wiring.Component):
    """The scale multiplier followed by the FP32 accumulator.

    Equals :func:`golden.residual.coarse_scale_accumulate` applied to the
    coarse sums of a row of K.

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

    def elaborate(self, platform):
        m = Module()
        m.submodules.multiplier = multiplier = ScaleMultiplier(self._config)
        m.submodules.accumulator = accumulator = FP32Accumulator(self._config)
        wiring.connect(m, wiring.flipped(self.i), multiplier.i)
        wiring.connect(m, multiplier.o, accumulator.i)
        wiring.connect(m, accumulator.o, wiring.flipped(self.o))
        return m
