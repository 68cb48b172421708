"""FPGA boards: a :class:`hw.host.HostInterface` on the UART pins of an amaranth-boards platform.

The design runs from the board's oscillator through the platform's default
``sync`` domain (its power-on reset included), without a PLL. So
``HostConfig.clock_hz`` is the oscillator frequency, and the clock
constraint that place and route aims for is a separate, higher goal that
shows the timing headroom.
"""

from dataclasses import dataclass, replace

from amaranth import Cat, Module, Shape, Signal, unsigned
from amaranth.build import Clock, Resource
from amaranth.lib import data, io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from golden.hgq import HGQConfig

from .config import RMCConfig
from .host import HostConfig, HostInterface
from .rmc import ResidualMatrixCore

__all__ = ["Board", "BOARDS", "board_named", "BoardTop", "CoreTimingHarness"]


@dataclass(frozen=True)
class Board:
    """An FPGA board that ``sevedo build`` makes bitstreams for.

    Parameters
    ----------
    name : str
        Name on the command line.
    title : str
        Name of the product.
    platform : type
        The amaranth-boards platform class.
    family : str
        Device family, ``"ice40"`` or ``"ecp5"``, which selects the resource
        rows of the build report and the bitstream's file suffix.
    goal_hz : int
        Default clock constraint for place and route.
    config : HostConfig
        Default configuration, chosen to fit the device, with ``clock_hz`` at
        the oscillator frequency.
    synth_opts : tuple of str
        Extra options of Yosys' ``synth_ice40`` or ``synth_ecp5``.
    """

    name: str
    title: str
    platform: type
    family: str
    goal_hz: int
    config: HostConfig
    synth_opts: tuple = ()

    @property
    def device(self):
        """Device and package, as nextpnr names them."""
        return f"{self.platform.device}-{self.platform.package}"

    @property
    def oscillator_hz(self):
        """Frequency of the board's default clock, which the design runs at."""
        return int(self.platform().default_clk_frequency)

    @property
    def bitstream_suffix(self):
        return ".bin" if self.family == "ice40" else ".bit"

    def configure(self, *, rows=None, lanes=None, coarse_group=None, fine_group=None, shift_bits=None,
                  weight_words=None, activation_words=None, result_words=None, baud=None):
        """Return the board's configuration with the given parameters replaced.

        Parameters left at ``None`` keep the board's default. ``clock_hz`` is
        always the oscillator frequency, so the UART divisor matches the
        clock that the bitstream runs at.

        Raises
        ------
        ValueError
            If the result breaks a rule of :class:`RMCConfig`,
            :class:`golden.hgq.HGQConfig` or :class:`HostConfig`.
        """
        def pick(value, default):
            return default if value is None else value

        config = self.config
        quant = HGQConfig(coarse_group=pick(coarse_group, config.rmc.quant.coarse_group),
                          fine_group=pick(fine_group, config.rmc.quant.fine_group),
                          shift_bits=pick(shift_bits, config.rmc.quant.shift_bits))
        rmc = RMCConfig(rows=pick(rows, config.rmc.rows), lanes=pick(lanes, config.rmc.lanes), quant=quant)
        return replace(config, rmc=rmc, clock_hz=self.oscillator_hz,
                       weight_words=pick(weight_words, config.weight_words),
                       activation_words=pick(activation_words, config.activation_words),
                       result_words=pick(result_words, config.result_words),
                       baud=pick(baud, config.baud))

    def make_platform(self, constraint_hz):
        """Return an instance of the platform whose default clock is constrained to ``constraint_hz``.

        Only the timing constraint changes: the clock pin and its attributes
        stay those of amaranth-boards.
        """
        if isinstance(constraint_hz, bool) or not isinstance(constraint_hz, (int, float)) or constraint_hz <= 0:
            raise ValueError(f"constraint_hz must be a positive number, not {constraint_hz!r}")
        base = self.platform
        resources = []
        for resource in base.resources:
            if resource.name == base.default_clk and resource.number == 0:
                resource = Resource(resource.name, resource.number, *resource.ios,
                                    Clock(constraint_hz), resource.attrs)
            resources.append(resource)
        return type(base.__name__, (base,), {"resources": resources})()


BOARDS = {board.name: board for board in (
    # iCE40UP5K: 5280 logic cells, 30 EBRs of 4 kbit (at most 16 bits wide)
    # and 8 DSPs. One row, with the FP multipliers in DSPs (`-dsp`). At 16
    # lanes the design takes 94% of the logic cells, so the board uses 8,
    # which costs no speed because the UART is far slower than the core.
    # The buffers hold K up to 1536 (the largest K of MiniLM) and 1024
    # beats of activations, in 50-bit words.
    Board(name="icebreaker", title="ICEBreaker", platform=ICEBreakerPlatform, family="ice40",
          goal_hz=30_000_000, synth_opts=("-dsp",),
          config=HostConfig(rmc=RMCConfig(rows=1, lanes=8), weight_words=192, activation_words=1024,
                            result_words=32, clock_hz=12_000_000)),
    # LFE5U-85F: 83640 LUT4s, 208 DP16KD EBRs of 18 kbit and 156 18x18
    # multipliers. Eight rows, as in the main job's core. The buffers hold K
    # up to 1536 (the largest K of MiniLM) and 32 tokens of that K.
    Board(name="ulx3s-85f", title="ULX3S-85F", platform=ULX3S_85F_Platform, family="ecp5",
          goal_hz=100_000_000,
          config=HostConfig(rmc=RMCConfig(rows=8, lanes=16), weight_words=96, activation_words=3072,
                            result_words=128, clock_hz=25_000_000)),
)}


def board_named(name):
    """Return the :class:`Board` called ``name``.

    Raises
    ------
    ValueError
        If no board has that name.
    """
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"board must be one of {', '.join(sorted(BOARDS))}, not {name!r}") from None


class BoardTop(wiring.Component):
    """Top level of a board: the host interface on the platform's ``uart`` 0.

    The clock and reset come from the platform's default ``sync`` domain. The
    ``rx`` pin passes through a two-stage synchronizer, because the host's
    UART is not synchronous to the board's clock.

    Parameters
    ----------
    config : HostConfig
    interface : wiring.Component, optional
        The component on the pins, with ports ``rx: In(1)`` and
        ``tx: Out(1)``; by default ``HostInterface(config)``.
    """

    def __init__(self, config, *, interface=None):
        if not isinstance(config, HostConfig):
            raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
        if interface is not None:
            members = interface.signature.members
            for name, flow in (("rx", wiring.In), ("tx", wiring.Out)):
                member = members[name] if name in members else None
                if (member is None or not member.is_port or member.flow != flow
                        or Shape.cast(member.shape) != unsigned(1)):
                    raise TypeError(f"interface must have a port {name}: {flow.name}(1), "
                                    f"not {interface.signature!r}")
        self._config = config
        self._interface = interface
        super().__init__({})

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        interface = HostInterface(self._config) if self._interface is None else self._interface
        m.submodules.host = interface

        # Only rx and tx get I/O buffers; other UART pins of the board (the
        # ULX3S has rts and dtr) stay unused.
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buffer = rx_buffer = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx_buffer = io.Buffer("o", uart.tx)
        m.submodules.rx_sync = FFSynchronizer(rx_buffer.i, interface.rx, init=1)
        m.d.comb += tx_buffer.o.eq(interface.tx)
        return m


class CoreTimingHarness(wiring.Component):
    """The residual matrix core alone between pseudo-random inputs and one pin, for its Fmax and area.

    A shift register with XOR feedback, which takes ``rx`` in as well, fills
    every bit of the core's input beat, so that synthesis can fold none of
    them, and offers a beat in every cycle. The core's output beat, reduced
    by XOR in two register stages, drives ``tx``. Its results mean nothing:
    the harness exists so that place and route time the core without the
    host interface and its block RAMs. Use it as the ``interface`` of
    :class:`BoardTop`.

    Parameters
    ----------
    config : RMCConfig

    Members
    -------
    rx : ``In(1, init=1)``
    tx : ``Out(1, init=1)``
    """

    # Bits that each XOR of the first output stage reduces.
    XOR_CHUNK = 16

    def __init__(self, config):
        if not isinstance(config, RMCConfig):
            raise TypeError(f"config must be an RMCConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    @property
    def config(self):
        return self._config

    @property
    def name(self):
        """Name of the configuration in build reports."""
        return f"{self._config.name}_timing"

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = ResidualMatrixCore(self._config)

        width = data.Layout.cast(self._config.beat_layout()).size
        state = Signal(width, init=1)
        # Taps 0, 2, 3 and 5 below the top bit, the rx bit on top of them.
        feedback = state[-1] ^ state[-3] ^ state[-4] ^ state[-6] ^ self.rx
        m.d.sync += state.eq(Cat(feedback, state[:-1]))
        m.d.comb += [
            core.i.payload.eq(state),
            core.i.valid.eq(1),
            core.o.ready.eq(1),
        ]

        result = Cat(core.o.payload.as_value(), core.o.valid)
        chunks = [result[start:start + self.XOR_CHUNK] for start in range(0, len(result), self.XOR_CHUNK)]
        partial = Signal(len(chunks))
        m.d.sync += [partial[index].eq(chunk.xor()) for index, chunk in enumerate(chunks)]
        m.d.sync += self.tx.eq(partial.xor())
        return m
