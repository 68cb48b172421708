"""UART host interface: the framed protocol of :mod:`golden.protocol` in front of a residual matrix core."""

from dataclasses import dataclass, field

from amaranth.lib import data

from golden.protocol import DeviceInfo

from .config import RMCConfig

__all__ = ["HostConfig"]


@dataclass(frozen=True)
class HostConfig:
    """Parameters of a :class:`HostInterface`: the core, its buffers and the UART.

    Parameters
    ----------
    rmc : RMCConfig
        The residual matrix core behind the interface.
    weight_words : int
        Depth of the weight buffer, in beats: the largest K of a tile is
        ``weight_words * rmc.lanes``.
    activation_words : int
        Depth of the activation buffer, in beats of all tokens of a tile.
    result_words : int
        Depth of the result buffer: the most tokens of a tile.
    clock_hz : int
        Clock frequency that the design is built for.
    baud : int
        UART bit rate; ``clock_hz // baud`` must be at least 4.
    max_payload : int
        Largest request payload, in bytes, and largest ``READ`` reply.
    timeout_bytes : int
        Idle time, in byte times, after which an unfinished frame is dropped.
    """

    rmc: RMCConfig = field(default_factory=lambda: RMCConfig(rows=2, lanes=16))
    weight_words: int = 96
    activation_words: int = 768
    result_words: int = 32
    clock_hz: int = 12_000_000
    baud: int = 115_200
    max_payload: int = 1024
    timeout_bytes: int = 64

    def __post_init__(self):
        if not isinstance(self.rmc, RMCConfig):
            raise TypeError(f"rmc must be an RMCConfig, not {type(self.rmc).__name__}")
        for name in ("weight_words", "activation_words", "result_words", "clock_hz", "baud",
                     "max_payload", "timeout_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("weight_words", "activation_words", "result_words", "max_payload"):
            if getattr(self, name) > 0xFFFF:
                raise ValueError(f"{name} must be at most 65535 (a 16-bit protocol field), "
                                 f"not {getattr(self, name)}")
        if self.clock_hz // self.baud < 4:
            raise ValueError(f"clock_hz // baud must be at least 4 clock cycles per bit, "
                             f"not {self.clock_hz} // {self.baud} = {self.clock_hz // self.baud}")
        beats_per_coarse = self.rmc.quant.coarse_group // self.rmc.lanes
        if self.weight_words % beats_per_coarse:
            raise ValueError(f"weight_words must be a multiple of coarse_group / lanes "
                             f"({beats_per_coarse}), not {self.weight_words}")
        for name, word_bytes in (("weight", self.weight_word_bytes),
                                 ("activation", self.activation_word_bytes),
                                 ("result", self.result_word_bytes)):
            if self.max_payload < 3 + word_bytes:
                raise ValueError(f"max_payload must hold a {name} word ({word_bytes} bytes) after the "
                                 f"3-byte WRITE header, so at least {3 + word_bytes}, not {self.max_payload}")

    @property
    def divisor(self):
        """Clock cycles per UART bit."""
        return self.clock_hz // self.baud

    def weight_word_layout(self):
        """Layout of a weight buffer word: the weight fields of one RMC input beat."""
        beat = self.rmc.beat_layout()
        return data.StructLayout({name: beat[name].shape for name in ("w", "w_shift", "w_scale")})

    def activation_word_layout(self):
        """Layout of an activation buffer word: the activation fields of one RMC input beat."""
        beat = self.rmc.beat_layout()
        return data.StructLayout({name: beat[name].shape for name in ("x", "x_shift", "x_scale")})

    def result_word_layout(self):
        """Layout of a result buffer word: one RMC output beat."""
        return self.rmc.output_layout()

    @staticmethod
    def _bytes(layout):
        return (data.Layout.cast(layout).size + 7) // 8

    @property
    def weight_word_bytes(self):
        return self._bytes(self.weight_word_layout())

    @property
    def activation_word_bytes(self):
        return self._bytes(self.activation_word_layout())

    @property
    def result_word_bytes(self):
        return self._bytes(self.result_word_layout())

    def device_info(self):
        """Return the :class:`golden.protocol.DeviceInfo` that the device sends in reply to ``PING``."""
        quant = self.rmc.quant
        return DeviceInfo(
            rows=self.rmc.rows, lanes=self.rmc.lanes, coarse_group=quant.coarse_group,
            fine_group=quant.fine_group, shift_bits=quant.shift_bits,
            weight_words=self.weight_words, activation_words=self.activation_words,
            result_words=self.result_words, weight_word_bytes=self.weight_word_bytes,
            activation_word_bytes=self.activation_word_bytes, result_word_bytes=self.result_word_bytes,
            max_payload=self.max_payload, timeout_bytes=self.timeout_bytes,
            clock_hz=self.clock_hz, baud=self.baud)

    @property
    def name(self):
        return f"host_{self.rmc.name}_w{self.weight_words}_a{self.activation_words}_r{self.result_words}"
