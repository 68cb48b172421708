"""The residual matrix core (RMC): PE array, shift scaler and coarse scaler in a stream pipeline."""

from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .coarse_scaler import CoarseScaler, scaler_timing
from .config import RMCConfig
from .pe_array import PEArray
from .shift_scaler import ShiftScaler

__all__ = ["ResidualMatrixCore", "core_latency", "generate_verilog"]


def core_latency(config):
    """Return the cycles from the transfer of the last beat of a row of K to the cycle its output is valid.

    The count assumes no stalls. It is the PE array's two stages, the shift
    scaler's one and :attr:`ScalerTiming.latency` of the coarse scaler.
    """
    return PEArray.LATENCY + 1 + scaler_timing(config).latency


class ResidualMatrixCore(wiring.Component):
    """INT4 residual path of the heterogeneous core, HGQ or conventional.

    For each row tile of ``rows`` output channels and each token, the input
    stream carries the ``K / lanes`` beats of the row. The output stream then
    carries one beat with the ``rows`` FP32 results of
    :func:`golden.residual.residual_matmul`. Stages: :class:`PEArray`
    (2 cycles), :class:`ShiftScaler` (1 cycle) and :class:`CoarseScaler`
    (see :attr:`CoarseScaler.latency`). The core accepts one beat per cycle
    for as long as the output is read.

    Parameters
    ----------
    config : RMCConfig

    Members
    -------
    i : ``In(stream.Signature(config.beat_layout()))``
    o : ``Out(stream.Signature(config.output_layout()))``
    """

    def __init__(self, config=RMCConfig()):
        if not isinstance(config, RMCConfig):
            raise TypeError(f"config must be an RMCConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(config.beat_layout())),
            "o": Out(stream.Signature(config.output_layout())),
        })

    @property
    def config(self):
        return self._config

    @property
    def latency(self):
        """Cycles from the last beat of a row of K to its output; see :func:`core_latency`."""
        return core_latency(self._config)

    def elaborate(self, platform):
        m = Module()
        m.submodules.pe_array = pe_array = PEArray(self._config)
        m.submodules.shift_scaler = shift_scaler = ShiftScaler(self._config)
        m.submodules.coarse_scaler = coarse_scaler = CoarseScaler(self._config)
        wiring.connect(m, wiring.flipped(self.i), pe_array.i)
        wiring.connect(m, pe_array.o, shift_scaler.i)
        wiring.connect(m, shift_scaler.o, coarse_scaler.i)
        wiring.connect(m, coarse_scaler.o, wiring.flipped(self.o))
        return m


def generate_verilog(config=RMCConfig(), name=None):
    """Return the Verilog text of a :class:`ResidualMatrixCore` with top module ``name``.

    The ports are ``clk``, ``rst``, and ``i__payload``, ``i__valid``,
    ``i__ready``, ``o__payload``, ``o__valid``, ``o__ready``, with the
    payloads packed as the layouts of :class:`RMCConfig` (first field in the
    least significant bits).
    """
    core = ResidualMatrixCore(config)
    return verilog.convert(core, name=name or config.name)
