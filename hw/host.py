"""UART host interface: the framed protocol of :mod:`golden.protocol` in front of a residual matrix core.

:class:`HostInterface` joins these parts, with ``lib.stream`` interfaces
between the UART, the parser and the framer::

    rx -> UARTReceiver -> RequestParser -> ReplyFramer -> UARTTransmitter -> tx

The parser stores the bytes of ``WRITE`` frames in the weight and
activation buffers, checks each frame, and hands one request per frame to
the framer. The framer carries the request out and sends the reply:
``RUN`` starts the :class:`TileEngine`, which streams beats from the
buffers through the :class:`ResidualMatrixCore` into the result buffer,
and ``READ`` reads the result buffer. The three buffers are ``lib.memory``
memories with one write port and one synchronous read port each, so that
they map to block RAM.
"""

import dataclasses
from dataclasses import dataclass, field

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from golden.protocol import (
    REPLY_SYNC,
    REQUEST_SYNC,
    Command,
    DeviceInfo,
    DeviceStatus,
    Status,
    Target,
    crc16,
)

from .config import RMCConfig
from .pipeline import decoupling_register
from .rmc import ResidualMatrixCore
from .uart import BITS_PER_BYTE, UARTReceiver, UARTTransmitter

__all__ = [
    "COUNTERS_LAYOUT",
    "REQUEST_LAYOUT",
    "STATUS_LAYOUT",
    "HostConfig",
    "HostInterface",
    "ReplyFramer",
    "RequestParser",
    "TileEngine",
    "crc16_update",
]


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
    register_beats : bool
        Whether each beat waits in a register and a skid buffer between
        the buffers and the core. They take the buffers' read time out of
        the core's first pipeline stage and the core's ready out of the
        buffers' address logic. They cost two cycles per tile and three
        flip-flops per bit of a beat (:meth:`RMCConfig.beat_layout`).
    """

    rmc: RMCConfig = field(default_factory=lambda: RMCConfig(rows=2, lanes=16))
    weight_words: int = 96
    activation_words: int = 768
    result_words: int = 32
    clock_hz: int = 12_000_000
    baud: int = 115_200
    max_payload: int = 1024
    timeout_bytes: int = 64
    register_beats: bool = True

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
        if not isinstance(self.register_beats, bool):
            raise TypeError(f"register_beats must be a bool, not {type(self.register_beats).__name__}")
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
        suffix = "" if self.register_beats else "_direct"
        return f"host_{self.rmc.name}_w{self.weight_words}_a{self.activation_words}_r{self.result_words}{suffix}"


# Width in bits of each struct format character that the protocol's payloads use.
_STRUCT_BITS = {"B": 8, "H": 16, "I": 32}


def _payload_layout(payload_class):
    """Return the StructLayout whose little-endian packing is ``payload_class.pack()``."""
    codes = payload_class.FORMAT.lstrip("<")
    names = [item.name for item in dataclasses.fields(payload_class)]
    return data.StructLayout({name: unsigned(_STRUCT_BITS[code]) for name, code in zip(names, codes, strict=True)})


#: Layout of the ``STATUS`` reply payload, :class:`golden.protocol.DeviceStatus`.
STATUS_LAYOUT = _payload_layout(DeviceStatus)

#: Counters of the last tile, as the tile engine reports them: the fields of
#: ``STATUS_LAYOUT`` without ``bad_frames``, which the reply framer counts.
COUNTERS_LAYOUT = data.StructLayout({name: item.shape for name, item in STATUS_LAYOUT if name != "bad_frames"})

#: Request from the parser to the reply framer, one per frame. ``status`` is
#: the status of the reply and ``length`` the length of its payload.
#: ``arguments`` are the first four payload bytes, as ``RUN`` and ``READ``
#: read them.
REQUEST_LAYOUT = data.StructLayout({
    "command": unsigned(8),
    "status": unsigned(8),
    "length": unsigned(16),
    "arguments": data.UnionLayout({
        "run": data.StructLayout({"tokens": unsigned(16), "beats": unsigned(16)}),
        "read": data.StructLayout({"offset": unsigned(16), "count": unsigned(16)}),
    }),
})


def crc16_update(crc, byte):
    """Return the CRC-16/CCITT-FALSE register after ``byte``, as an XOR of input bits per output bit.

    The update is linear over GF(2) in the 16 register bits and the 8 data
    bits, so each output bit is the XOR of the inputs whose unit vector sets
    it in :func:`golden.protocol.crc16`. This gives a flat XOR per bit, at
    most about 10 inputs wide, instead of eight chained shift steps.
    """
    inputs = [crc[index] for index in range(16)] + [byte[index] for index in range(8)]
    columns = ([crc16(b"\x00", 1 << index) for index in range(16)]
               + [crc16(bytes([1 << index]), 0) for index in range(8)])
    bits = []
    for output in range(16):
        terms = [value for value, column in zip(inputs, columns) if column >> output & 1]
        bit = terms[0]
        for term in terms[1:]:
            bit = bit ^ term
        bits.append(bit)
    return Cat(*bits)


def _address_width(depth):
    return (depth - 1).bit_length()


def _write_port_signature(memory_shape, depth):
    return WritePort.Signature(addr_width=_address_width(depth), shape=memory_shape)


def _read_port_signature(memory_shape, depth):
    return ReadPort.Signature(addr_width=_address_width(depth), shape=memory_shape)


# The weight and activation buffers store whole bytes, so that WRITE can
# store each byte as it arrives, with one write enable per byte.
def _buffer_write_signature(word_bytes, depth):
    return WritePort.Signature(addr_width=_address_width(depth), shape=unsigned(8 * word_bytes), granularity=8)


def _buffer_read_signature(word_bytes, depth):
    return ReadPort.Signature(addr_width=_address_width(depth), shape=unsigned(8 * word_bytes))


class RequestParser(wiring.Component):
    """Parse request frames from a byte stream, store ``WRITE`` words, and check each frame.

    For every frame, and for every frame that the idle timeout cuts short,
    the parser sends one request on ``o``: the command, the status of the
    reply and the length of its payload. The checks, in order:

    1. the length field against ``max_payload``, at once: a longer frame
       gets ``BAD_LENGTH`` right after its length field, and the parser then
       drops bytes until the line has been idle for the timeout;
    2. the CRC (``BAD_CRC``);
    3. the command (``UNKNOWN_COMMAND``);
    4. the length that the command needs (``BAD_LENGTH``): 0 for ``PING``
       and ``STATUS``, 4 for ``RUN`` and ``READ``, and for ``WRITE`` 3 plus
       whole words of the target's word size;
    5. the arguments: a ``WRITE`` target other than ``WEIGHTS`` or
       ``ACTIVATIONS``, ``RUN`` arguments outside the rules of
       :class:`HostInterface`, or a ``READ`` reply longer than
       ``max_payload`` (``BAD_ARGUMENT``), then words past the end of a
       buffer (``OVERRUN``);
    6. a running tile (``BUSY``) for ``WRITE``, ``RUN`` and ``READ``.

    A frame whose line stays idle for ``timeout_bytes`` byte times before
    its end gets ``TIMEOUT``, with the command byte if it arrived and 0
    otherwise. Bytes before a sync byte are ignored.

    ``WRITE`` bytes go into the buffer as they arrive, through a write port
    with one enable per byte, except bytes past the end of the buffer and
    all bytes of a frame that began while a tile was running. The checks of
    ``RUN`` and ``READ`` need ``tokens * beats``, ``count *
    result_word_bytes`` and ``beats mod (coarse_group / lanes)``. A
    shift-and-add loop computes them in 16 cycles after the frame, so that
    no multiplier or divider sits in one clock cycle. Bytes arrive at least
    ``10 * divisor >= 40`` cycles apart and the receiver buffers one byte,
    so no byte is lost during the checks. Bytes that arrive while the parser
    waits for the framer to take a request (because the framer is still
    sending an earlier reply) are dropped by the receiver.

    Parameters
    ----------
    config : HostConfig

    Members
    -------
    i : ``In(stream.Signature(8))``
        Received bytes.
    o : ``Out(stream.Signature(REQUEST_LAYOUT))``
        One request per frame.
    rx_busy : ``In(1)``
        High while the receiver is in the middle of a character; it keeps
        the idle timer from running.
    tile_busy : ``In(1)``
        High while a tile runs.
    weights, activations : ``In(WritePort.Signature(...))``
        Write ports of the weight and activation buffers, with one enable
        per byte.
    """

    def __init__(self, config):
        if not isinstance(config, HostConfig):
            raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(REQUEST_LAYOUT)),
            "rx_busy": In(1),
            "tile_busy": In(1),
            "weights": In(_buffer_write_signature(config.weight_word_bytes, config.weight_words)),
            "activations": In(_buffer_write_signature(config.activation_word_bytes, config.activation_words)),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        byte = self.i.payload
        request = self.o.payload
        took_byte = self.i.valid & self.i.ready

        # Idle timer: reloaded by every character on the line, zero after
        # timeout_bytes byte times without one.
        timeout_cycles = cfg.timeout_bytes * BITS_PER_BYTE * cfg.divisor
        timer = Signal(range(timeout_cycles + 1), init=timeout_cycles)
        with m.If(self.rx_busy | self.i.valid):
            m.d.sync += timer.eq(timeout_cycles)
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        line_idle = Signal()
        m.d.comb += line_idle.eq(timer == 0)

        command = Signal(8)
        length = Signal(16)
        remaining = Signal(range(cfg.max_payload + 1))
        crc = Signal(16)
        crc_next = Signal(16)
        m.d.comb += crc_next.eq(crc16_update(crc, byte))
        crc_low_ok = Signal()
        crc_ok = Signal()
        # The first four payload bytes, shifted in from the top, and how many have arrived.
        arguments = Signal(32)
        header_count = Signal(range(5))

        reply_status = Signal(8)
        reply_length = Signal(16)
        drop_after_reply = Signal()

        m.d.comb += [
            request.command.eq(command),
            request.status.eq(reply_status),
            request.length.eq(reply_length),
            request.arguments.eq(arguments),
        ]

        # WRITE: the target, the position in the current word and its buffer address.
        to_activations = Signal()
        target_valid = Signal()
        blocked = Signal()
        word_byte = Signal(range(max(cfg.weight_word_bytes, cfg.activation_word_bytes)))
        word_address = Signal(17)
        in_range = Signal()
        past_end = Signal()
        overrun = Signal()
        # Registered, because the address changes at least one byte time before it is used.
        m.d.sync += [
            in_range.eq(Mux(to_activations, word_address < cfg.activation_words, word_address < cfg.weight_words)),
            past_end.eq(Mux(to_activations, word_address > cfg.activation_words, word_address > cfg.weight_words)),
        ]
        word_last_byte = Mux(to_activations, cfg.activation_word_bytes - 1, cfg.weight_word_bytes - 1)
        data_byte = Signal()

        # Checks after the frame.
        known = Signal()
        length_ok = Signal()
        run_ranges_ok = Signal()
        read_end = Signal(17)
        tokens = arguments[:16]
        beats = arguments[16:]
        read_offset = arguments[:16]
        read_count = arguments[16:]
        is_read = command == Command.READ
        # Shift-and-add, most significant multiplier bit first: the product of
        # the multiplier (tokens or count) and the multiplicand (beats or the
        # result word size), as 17 bits and a flag for anything larger. The
        # remainder of beats divided by the beats of a coarse group, likewise.
        bit_index = Signal(range(16))
        product = Signal(17)
        product_overflow = Signal()
        beats_per_coarse = cfg.rmc.quant.coarse_group // cfg.rmc.lanes
        remainder = Signal(range(max(beats_per_coarse, 2)))
        multiplier_bit = Mux(is_read, read_count.bit_select(bit_index, 1), tokens.bit_select(bit_index, 1))
        multiplicand = Mux(is_read, cfg.result_word_bytes, beats)
        # 2 * product + multiplicand < 2**19, so these 19 bits never wrap.
        doubled_sum = Signal(19)
        m.d.comb += doubled_sum.eq(Cat(0, product) + Mux(multiplier_bit, multiplicand, 0))
        shifted_remainder = Cat(beats.bit_select(bit_index, 1), remainder)

        def timed_out():
            return [reply_status.eq(Status.TIMEOUT), reply_length.eq(0), drop_after_reply.eq(0)]

        with m.FSM() as fsm:
            with m.State("HUNT"):
                with m.If(self.i.valid & (byte == REQUEST_SYNC)):
                    m.d.sync += [
                        command.eq(0),
                        crc.eq(0xFFFF),
                        header_count.eq(0),
                        word_byte.eq(0),
                        overrun.eq(0),
                        blocked.eq(self.tile_busy),
                    ]
                    m.next = "COMMAND"

            with m.State("COMMAND"):
                with m.If(self.i.valid):
                    m.d.sync += [command.eq(byte), crc.eq(crc_next)]
                    m.next = "LENGTH_LOW"
                with m.Elif(line_idle):
                    m.d.sync += timed_out()
                    m.next = "REPLY"

            with m.State("LENGTH_LOW"):
                with m.If(self.i.valid):
                    m.d.sync += [length[:8].eq(byte), crc.eq(crc_next)]
                    m.next = "LENGTH_HIGH"
                with m.Elif(line_idle):
                    m.d.sync += timed_out()
                    m.next = "REPLY"

            with m.State("LENGTH_HIGH"):
                with m.If(self.i.valid):
                    m.d.sync += [length[8:].eq(byte), crc.eq(crc_next)]
                    m.next = "LENGTH_CHECK"
                with m.Elif(line_idle):
                    m.d.sync += timed_out()
                    m.next = "REPLY"

            with m.State("LENGTH_CHECK"):
                m.d.sync += remaining.eq(length)
                with m.If(length > cfg.max_payload):
                    m.d.sync += [
                        reply_status.eq(Status.BAD_LENGTH),
                        reply_length.eq(0),
                        drop_after_reply.eq(1),
                    ]
                    m.next = "REPLY"
                with m.Elif(length == 0):
                    m.next = "CRC_LOW"
                with m.Else():
                    m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                with m.If(self.i.valid):
                    m.d.sync += [crc.eq(crc_next), remaining.eq(remaining - 1)]
                    with m.If(remaining == 1):
                        m.next = "CRC_LOW"
                    with m.If(header_count != 4):
                        m.d.sync += [arguments.eq(Cat(arguments[8:], byte)), header_count.eq(header_count + 1)]
                    with m.If(header_count == 0):
                        m.d.sync += [
                            to_activations.eq(byte == Target.ACTIVATIONS),
                            target_valid.eq(byte <= max(Target)),
                        ]
                    with m.If(header_count == 2):
                        # The offset: the byte before, now at the top of the arguments, and this one.
                        m.d.sync += word_address.eq(Cat(arguments[24:], byte))
                    with m.If(data_byte):
                        with m.If(word_byte == word_last_byte):
                            m.d.sync += [word_byte.eq(0), word_address.eq(word_address + 1)]
                        with m.Else():
                            m.d.sync += word_byte.eq(word_byte + 1)
                        with m.If(~in_range):
                            m.d.sync += overrun.eq(1)
                with m.Elif(line_idle):
                    m.d.sync += timed_out()
                    m.next = "REPLY"

            with m.State("CRC_LOW"):
                with m.If(self.i.valid):
                    m.d.sync += crc_low_ok.eq(byte == crc[:8])
                    m.next = "CRC_HIGH"
                with m.Elif(line_idle):
                    m.d.sync += timed_out()
                    m.next = "REPLY"

            with m.State("CRC_HIGH"):
                with m.If(self.i.valid):
                    m.d.sync += crc_ok.eq(crc_low_ok & (byte == crc[8:]))
                    m.next = "CHECK"
                with m.Elif(line_idle):
                    m.d.sync += timed_out()
                    m.next = "REPLY"

            with m.State("CHECK"):
                m.d.sync += [
                    known.eq(0),
                    length_ok.eq(0),
                    run_ranges_ok.eq((tokens != 0) & (tokens <= cfg.result_words)
                                     & (beats != 0) & (beats <= cfg.weight_words)),
                    read_end.eq(read_offset + read_count),
                    product.eq(0),
                    product_overflow.eq(0),
                    remainder.eq(0),
                    bit_index.eq(15),
                ]
                with m.Switch(command):
                    with m.Case(Command.PING, Command.STATUS):
                        m.d.sync += [known.eq(1), length_ok.eq(length == 0)]
                    with m.Case(Command.RUN, Command.READ):
                        m.d.sync += [known.eq(1), length_ok.eq(length == 4)]
                    with m.Case(Command.WRITE):
                        # Words of an unknown target have no size; its frame gets BAD_ARGUMENT.
                        m.d.sync += [
                            known.eq(1),
                            length_ok.eq((length >= 3) & (~target_valid | (word_byte == 0))),
                            overrun.eq(overrun | past_end),
                        ]
                m.next = "ARGUMENTS"

            with m.State("ARGUMENTS"):
                m.d.sync += [
                    product.eq(doubled_sum[:17]),
                    product_overflow.eq(product_overflow | (doubled_sum[17:] != 0)),
                    remainder.eq(Mux(shifted_remainder >= beats_per_coarse,
                                     shifted_remainder - beats_per_coarse, shifted_remainder)),
                    bit_index.eq(bit_index - 1),
                ]
                with m.If(bit_index == 0):
                    m.next = "DECIDE"

            with m.State("DECIDE"):
                m.d.sync += [reply_length.eq(0), drop_after_reply.eq(0)]
                with m.If(~crc_ok):
                    m.d.sync += reply_status.eq(Status.BAD_CRC)
                with m.Elif(~known):
                    m.d.sync += reply_status.eq(Status.UNKNOWN_COMMAND)
                with m.Elif(~length_ok):
                    m.d.sync += reply_status.eq(Status.BAD_LENGTH)
                with m.Elif(command == Command.WRITE):
                    with m.If(~target_valid):
                        m.d.sync += reply_status.eq(Status.BAD_ARGUMENT)
                    with m.Elif(overrun):
                        m.d.sync += reply_status.eq(Status.OVERRUN)
                    with m.Elif(blocked):
                        m.d.sync += reply_status.eq(Status.BUSY)
                    with m.Else():
                        m.d.sync += reply_status.eq(Status.OK)
                with m.Elif(command == Command.RUN):
                    with m.If(~run_ranges_ok | (remainder != 0) | product_overflow
                              | (product > cfg.activation_words)):
                        m.d.sync += reply_status.eq(Status.BAD_ARGUMENT)
                    with m.Elif(self.tile_busy):
                        m.d.sync += reply_status.eq(Status.BUSY)
                    with m.Else():
                        m.d.sync += reply_status.eq(Status.OK)
                with m.Elif(command == Command.READ):
                    with m.If(product_overflow | (product > cfg.max_payload)):
                        m.d.sync += reply_status.eq(Status.BAD_ARGUMENT)
                    with m.Elif(read_end > cfg.result_words):
                        m.d.sync += reply_status.eq(Status.OVERRUN)
                    with m.Elif(self.tile_busy):
                        m.d.sync += reply_status.eq(Status.BUSY)
                    with m.Else():
                        m.d.sync += [reply_status.eq(Status.OK), reply_length.eq(product)]
                with m.Elif(command == Command.PING):
                    m.d.sync += [reply_status.eq(Status.OK), reply_length.eq(len(cfg.device_info().pack()))]
                with m.Else():
                    m.d.sync += [reply_status.eq(Status.OK), reply_length.eq(STATUS_LAYOUT.size // 8)]
                m.next = "REPLY"

            with m.State("REPLY"):
                with m.If(self.o.ready):
                    m.next = "HUNT"
                    with m.If(drop_after_reply):
                        m.next = "DROP"

            with m.State("DROP"):
                with m.If(line_idle):
                    m.next = "HUNT"

        # Handshakes and write enables are plain expressions of the state, not
        # assignments inside the states: Icarus never evaluates a
        # combinational block whose inputs keep their values from time zero,
        # and the state does until the first byte.
        checking = Signal()
        m.d.comb += [
            checking.eq(fsm.ongoing("LENGTH_CHECK") | fsm.ongoing("CHECK") | fsm.ongoing("ARGUMENTS")
                        | fsm.ongoing("DECIDE") | fsm.ongoing("REPLY")),
            self.i.ready.eq(~checking),
            self.o.valid.eq(fsm.ongoing("REPLY")),
            data_byte.eq(fsm.ongoing("PAYLOAD") & took_byte & (command == Command.WRITE) & (header_count >= 3)),
        ]
        store = data_byte & in_range & target_valid & ~blocked
        lane = Signal(max(cfg.weight_word_bytes, cfg.activation_word_bytes))
        m.d.comb += lane.eq(1 << word_byte)
        for port, target in ((self.weights, Target.WEIGHTS), (self.activations, Target.ACTIVATIONS)):
            selected = store & (to_activations == (target == Target.ACTIVATIONS))
            m.d.comb += [
                port.en.eq(Mux(selected, lane[:len(port.en)], 0)),
                port.addr.eq(word_address),
                port.data.eq(byte.replicate(len(port.en))),
            ]
        return m


class ReplyFramer(wiring.Component):
    """Execute each request and send its reply frame on a byte stream.

    A request with status ``OK`` is carried out when the framer takes it:
    ``RUN`` pulses ``start`` with the tile's arguments, ``STATUS`` copies the
    counters, ``READ`` reads result words, and ``PING`` sends the
    :class:`golden.protocol.DeviceInfo` bytes from a ROM. Any other status
    gets a reply with an empty payload and counts as a bad frame.

    Each byte is loaded into the output register when the previous one
    leaves, and the CRC register takes the byte that leaves, so the CRC
    update sits between two registers.

    Parameters
    ----------
    config : HostConfig

    Members
    -------
    i : ``In(stream.Signature(REQUEST_LAYOUT))``
        Requests from the parser.
    o : ``Out(stream.Signature(8))``
        Reply bytes.
    results : ``In(ReadPort.Signature(...))``
        Read port of the result buffer.
    counters : ``In(COUNTERS_LAYOUT)``
        The tile engine's counters.
    start : ``Out(1)``
        High for one cycle when a ``RUN`` request is taken.
    tokens, beats : ``Out(16)``
        The arguments of that ``RUN``, valid while ``start`` is high.
    """

    def __init__(self, config):
        if not isinstance(config, HostConfig):
            raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(REQUEST_LAYOUT)),
            "o": Out(stream.Signature(8)),
            "results": In(_read_port_signature(config.result_word_layout(), config.result_words)),
            "counters": In(COUNTERS_LAYOUT),
            "start": Out(1),
            "tokens": Out(16),
            "beats": Out(16),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        request = self.i.payload
        info = cfg.device_info().pack()
        result_word_bytes = cfg.result_word_bytes

        m.submodules.info = info_rom = Memory(shape=8, depth=len(info), init=info)
        info_port = info_rom.read_port()
        info_address = Signal(range(len(info)))
        m.d.comb += info_port.addr.eq(info_address)

        command = Signal(8)
        status = Signal(8)
        # The payload length, sent in the header, then the payload bytes still to send.
        remaining = Signal(16)
        crc = Signal(16)
        crc_next = Signal(16)
        m.d.comb += crc_next.eq(crc16_update(crc, self.o.payload))
        sends_info = Signal()
        sends_results = Signal()
        # Payload bytes still to send from the current word or status snapshot, lowest first.
        staged = Signal(max(STATUS_LAYOUT.size, 8 * result_word_bytes))
        word_bytes_left = Signal(range(result_word_bytes))
        result_address = Signal(16)
        bad_frames = Signal(16)

        snapshot = Signal(STATUS_LAYOUT)
        m.d.comb += [
            snapshot.busy.eq(self.counters.busy),
            snapshot.cycles.eq(self.counters.cycles),
            snapshot.beats.eq(self.counters.beats),
            snapshot.stalls.eq(self.counters.stalls),
            snapshot.results.eq(self.counters.results),
            snapshot.bad_frames.eq(bad_frames),
            self.results.en.eq(1),
            self.results.addr.eq(result_address),
            self.tokens.eq(request.arguments.run.tokens),
            self.beats.eq(request.arguments.run.beats),
        ]

        transfer = self.o.valid & self.o.ready

        def load_payload_byte():
            """Put the next payload byte into the output register."""
            with m.If(sends_info):
                m.d.sync += [self.o.payload.eq(info_port.data), info_address.eq(info_address + 1)]
            with m.Elif(sends_results & (word_bytes_left == 0)):
                m.d.sync += [
                    self.o.payload.eq(self.results.data.as_value()[:8]),
                    staged.eq(self.results.data.as_value()[8:]),
                    word_bytes_left.eq(result_word_bytes - 1),
                    result_address.eq(result_address + 1),
                ]
            with m.Else():
                m.d.sync += [self.o.payload.eq(staged[:8]), staged.eq(staged[8:])]
                with m.If(sends_results):
                    m.d.sync += word_bytes_left.eq(word_bytes_left - 1)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.i.valid):
                    ok = request.status == Status.OK
                    m.d.sync += [
                        command.eq(request.command),
                        status.eq(request.status),
                        remaining.eq(Mux(ok, request.length, 0)),
                        sends_info.eq(ok & (request.command == Command.PING)),
                        sends_results.eq(ok & (request.command == Command.READ)),
                        staged.eq(snapshot),
                        word_bytes_left.eq(0),
                        result_address.eq(request.arguments.read.offset),
                        info_address.eq(0),
                        crc.eq(0xFFFF),
                        self.o.payload.eq(REPLY_SYNC),
                    ]
                    with m.If(~ok & (bad_frames != 0xFFFF)):
                        m.d.sync += bad_frames.eq(bad_frames + 1)
                    m.next = "SYNC"

            with m.State("SYNC"):
                with m.If(transfer):
                    m.d.sync += self.o.payload.eq(command)
                    m.next = "COMMAND"

            with m.State("COMMAND"):
                with m.If(transfer):
                    m.d.sync += [crc.eq(crc_next), self.o.payload.eq(status)]
                    m.next = "STATUS"

            with m.State("STATUS"):
                with m.If(transfer):
                    m.d.sync += [crc.eq(crc_next), self.o.payload.eq(remaining[:8])]
                    m.next = "LENGTH_LOW"

            with m.State("LENGTH_LOW"):
                with m.If(transfer):
                    m.d.sync += [crc.eq(crc_next), self.o.payload.eq(remaining[8:])]
                    m.next = "LENGTH_HIGH"

            with m.State("LENGTH_HIGH"):
                with m.If(transfer):
                    m.d.sync += crc.eq(crc_next)
                    with m.If(remaining == 0):
                        m.d.sync += self.o.payload.eq(crc_next[:8])
                        m.next = "CRC_LOW"
                    with m.Else():
                        load_payload_byte()
                        m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                with m.If(transfer):
                    m.d.sync += [crc.eq(crc_next), remaining.eq(remaining - 1)]
                    with m.If(remaining == 1):
                        m.d.sync += self.o.payload.eq(crc_next[:8])
                        m.next = "CRC_LOW"
                    with m.Else():
                        load_payload_byte()

            with m.State("CRC_LOW"):
                with m.If(transfer):
                    m.d.sync += self.o.payload.eq(crc[8:])
                    m.next = "CRC_HIGH"

            with m.State("CRC_HIGH"):
                with m.If(transfer):
                    m.next = "IDLE"

        # Plain expressions of the state, for Icarus, as in RequestParser.
        m.d.comb += [
            self.i.ready.eq(fsm.ongoing("IDLE")),
            self.o.valid.eq(~fsm.ongoing("IDLE")),
            self.start.eq(fsm.ongoing("IDLE") & self.i.valid & (request.status == Status.OK)
                          & (request.command == Command.RUN)),
        ]
        return m


class TileEngine(wiring.Component):
    """Feed the residual matrix core from the buffers and store its results.

    A tile has ``tokens`` tokens of ``beats`` beats each. For token ``t``
    and beat ``b``, the engine sends weight word ``b`` and activation word
    ``t * beats + b`` as one core input beat, with ``last`` on beat
    ``beats - 1``. It writes the core's output beat for token ``t`` into
    result word ``t``. The buffers are read one cycle ahead, so the address
    counters never reach the core in the same cycle. With
    ``config.register_beats`` each beat also waits in a register and a
    skid buffer: the buffers' read data does not reach the core in the same
    cycle, and the core's ready reaches only the skid buffer's registers.

    Counters, reset at ``start``: ``cycles`` counts the cycles from the one
    after ``start`` to the one in which the last result is written,
    ``beats`` the cycles in which the core takes a beat and ``stalls`` the
    others, so ``cycles == beats + stalls``. ``results`` counts the result
    words written. ``busy`` is high over the same cycles as ``cycles``.

    Parameters
    ----------
    config : HostConfig

    Members
    -------
    start : ``In(1)``
        Starts a tile; ignored while ``counters.busy`` is high.
    tokens, beats : ``In(16)``
        The tile, read while ``start`` is high. The caller checks them
        against the rules of :class:`HostInterface`.
    weights, activations : ``In(ReadPort.Signature(...))``
        Read ports of the weight and activation buffers.
    results : ``In(WritePort.Signature(...))``
        Write port of the result buffer.
    o : ``Out(stream.Signature(config.rmc.beat_layout()))``
        Beats to the core.
    i : ``In(stream.Signature(config.rmc.output_layout()))``
        Results from the core; always accepted.
    counters : ``Out(COUNTERS_LAYOUT)``
    """

    def __init__(self, config):
        if not isinstance(config, HostConfig):
            raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({
            "start": In(1),
            "tokens": In(16),
            "beats": In(16),
            "weights": In(_buffer_read_signature(config.weight_word_bytes, config.weight_words)),
            "activations": In(_buffer_read_signature(config.activation_word_bytes, config.activation_words)),
            "results": In(_write_port_signature(config.result_word_layout(), config.result_words)),
            "o": Out(stream.Signature(config.rmc.beat_layout())),
            "i": In(stream.Signature(config.rmc.output_layout())),
            "counters": Out(COUNTERS_LAYOUT),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        counters = self.counters

        issuing = Signal()
        beat = Signal(range(cfg.weight_words))
        last_beat = Signal(range(cfg.weight_words))
        tokens_left = Signal(range(cfg.result_words + 1))
        activation_address = Signal(range(cfg.activation_words + 1))
        results_left = Signal(range(cfg.result_words + 1))
        row_end = Signal()
        m.d.comb += row_end.eq(beat == last_beat)

        weight_word = data.View(cfg.weight_word_layout(),
                                self.weights.data[:data.Layout.cast(cfg.weight_word_layout()).size])
        activation_word = data.View(cfg.activation_word_layout(),
                                    self.activations.data[:data.Layout.cast(cfg.activation_word_layout()).size])
        # The buffers' read data is a beat for the core while read_valid is high.
        read_valid = Signal()
        read_last = Signal()

        def beat_from_buffers(beat_out):
            return [
                beat_out.w.eq(weight_word.w),
                beat_out.w_shift.eq(weight_word.w_shift),
                beat_out.w_scale.eq(weight_word.w_scale),
                beat_out.x.eq(activation_word.x),
                beat_out.x_shift.eq(activation_word.x_shift),
                beat_out.x_scale.eq(activation_word.x_scale),
                beat_out.last.eq(read_last),
            ]

        if cfg.register_beats:
            # The buffers' read data goes into a register with no logic in
            # front of it, because a block RAM's output is slow. A skid
            # buffer follows: the stages before it see only the registered
            # skid_valid, so the core's ready, which comes from deep in its
            # pipeline, drives no address counter or buffer enable.
            fetched = Signal(cfg.rmc.beat_layout())
            fetched_valid = Signal()
            skid = Signal(cfg.rmc.beat_layout())
            skid_valid = Signal()
            fetch_advance = ~fetched_valid | ~skid_valid
            read_advance = ~read_valid | fetch_advance
            with m.If(fetch_advance):
                m.d.sync += [fetched_valid.eq(read_valid), *beat_from_buffers(fetched)]
            with m.If(~self.o.valid | self.o.ready):
                with m.If(skid_valid):
                    m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
                with m.Else():
                    m.d.sync += [self.o.payload.eq(fetched), self.o.valid.eq(fetched_valid)]
            with m.Elif(fetched_valid & ~skid_valid):
                m.d.sync += [skid.eq(fetched), skid_valid.eq(1)]
        else:
            read_advance = ~read_valid | self.o.ready
            m.d.comb += [self.o.valid.eq(read_valid), *beat_from_buffers(self.o.payload)]

        for port, address in ((self.weights, beat), (self.activations, activation_address)):
            m.d.comb += [port.en.eq(read_advance), port.addr.eq(address)]
        with m.If(read_advance):
            m.d.sync += [read_valid.eq(issuing), read_last.eq(row_end)]
            with m.If(issuing):
                m.d.sync += activation_address.eq(activation_address + 1)
                with m.If(row_end):
                    m.d.sync += [beat.eq(0), tokens_left.eq(tokens_left - 1)]
                    with m.If(tokens_left == 1):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += beat.eq(beat + 1)

        m.d.comb += [
            self.i.ready.eq(1),
            self.results.en.eq(self.i.valid),
            self.results.addr.eq(counters.results),
            self.results.data.eq(self.i.payload),
        ]
        with m.If(counters.busy):
            m.d.sync += counters.cycles.eq(counters.cycles + 1)
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += counters.beats.eq(counters.beats + 1)
            with m.Else():
                m.d.sync += counters.stalls.eq(counters.stalls + 1)
            with m.If(self.i.valid):
                m.d.sync += [counters.results.eq(counters.results + 1), results_left.eq(results_left - 1)]
                with m.If(results_left == 1):
                    m.d.sync += counters.busy.eq(0)

        with m.If(self.start & ~counters.busy):
            m.d.sync += [
                issuing.eq(1),
                beat.eq(0),
                last_beat.eq(self.beats - 1),
                tokens_left.eq(self.tokens),
                activation_address.eq(0),
                results_left.eq(self.tokens),
                counters.busy.eq(1),
                counters.cycles.eq(0),
                counters.beats.eq(0),
                counters.stalls.eq(0),
                counters.results.eq(0),
            ]
        return m


class HostInterface(wiring.Component):
    """A residual matrix core behind a UART that speaks the protocol of :mod:`golden.protocol`.

    The host fills the weight buffer with ``WRITE``: a weight word is the
    ``w``, ``w_shift`` and ``w_scale`` fields of an RMC input beat. It fills
    the activation buffer likewise, with the ``x``, ``x_shift`` and
    ``x_scale`` fields. It then starts a tile with ``RUN``, polls ``STATUS``
    until ``busy`` is low, and reads the result words (RMC output beats)
    with ``READ``. Words are the little-endian bytes of their
    :class:`HostConfig` layouts, first field in the least significant bits.

    ``RUN`` gets ``BAD_ARGUMENT`` unless ``1 <= tokens <= result_words``,
    ``1 <= beats <= weight_words``, ``beats`` is a multiple of
    ``coarse_group / lanes``, and ``tokens * beats <= activation_words``.
    ``RUN``, ``WRITE`` and ``READ`` get ``BUSY`` while a tile runs. See
    :class:`RequestParser` for all checks and their order,
    :class:`ReplyFramer` for the replies and :class:`TileEngine` for the
    tile and its counters.

    Parameters
    ----------
    config : HostConfig

    Members
    -------
    rx : ``In(1, init=1)``
        UART input, 8N1 at ``config.divisor`` clock cycles per bit.
    tx : ``Out(1, init=1)``
        UART output, likewise.
    """

    def __init__(self, config=None):
        config = HostConfig() if config is None else config
        if not isinstance(config, HostConfig):
            raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config

        m.submodules.receiver = receiver = UARTReceiver(cfg.divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(cfg.divisor)
        m.submodules.parser = parser = RequestParser(cfg)
        m.submodules.framer = framer = ReplyFramer(cfg)
        m.submodules.engine = engine = TileEngine(cfg)
        m.submodules.core = core = ResidualMatrixCore(cfg.rmc)

        m.submodules.weights = weights = Memory(
            shape=unsigned(8 * cfg.weight_word_bytes), depth=cfg.weight_words, init=[])
        m.submodules.activations = activations = Memory(
            shape=unsigned(8 * cfg.activation_word_bytes), depth=cfg.activation_words, init=[])
        m.submodules.results = results = Memory(
            shape=cfg.result_word_layout(), depth=cfg.result_words, init=[])

        m.d.comb += [
            receiver.rx.eq(self.rx),
            self.tx.eq(transmitter.tx),
            parser.rx_busy.eq(receiver.busy),
            parser.tile_busy.eq(engine.counters.busy),
            engine.start.eq(framer.start),
            engine.tokens.eq(framer.tokens),
            engine.beats.eq(framer.beats),
            framer.counters.eq(engine.counters),
        ]
        wiring.connect(m, receiver.o, parser.i)
        wiring.connect(m, parser.o, framer.i)
        # The register keeps the transmitter's bit timer out of the framer's
        # state logic; the UART sends a byte per 10 bit times anyway.
        decoupling_register(m, framer.o, transmitter.i, "reply_byte")
        wiring.connect(m, parser.weights, weights.write_port(granularity=8))
        wiring.connect(m, parser.activations, activations.write_port(granularity=8))
        wiring.connect(m, engine.weights, weights.read_port())
        wiring.connect(m, engine.activations, activations.read_port())
        wiring.connect(m, engine.results, results.write_port())
        wiring.connect(m, framer.results, results.read_port())
        wiring.connect(m, engine.o, core.i)
        wiring.connect(m, core.o, engine.i)
        return m
