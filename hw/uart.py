"""UART receiver and transmitter (8N1: one start bit, 8 data bits LSB first, one stop bit, idle high).

Both count ``divisor`` clock cycles per bit, so the bit rate is
``clock_hz / divisor``. Bytes enter and leave through ``lib.stream``
interfaces with 8-bit payloads.
"""

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["BITS_PER_BYTE", "MIN_DIVISOR", "UARTReceiver", "UARTTransmitter"]

# Bit times of one 8N1 character: start bit, 8 data bits, stop bit.
BITS_PER_BYTE = 10
# The receiver samples the middle of a bit two synchronizer cycles late. With
# fewer than 4 cycles per bit, that sample would fall on the next bit.
MIN_DIVISOR = 4
# Cycles between a change of the rx pin and the receiver's first look at it:
# the two flip-flops of the synchronizer.
_SYNC_STAGES = 2


def _check_divisor(divisor):
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be an integer of at least {MIN_DIVISOR} clock cycles per bit, "
                         f"not {divisor!r}")


class UARTReceiver(wiring.Component):
    """Receive 8N1 characters from the ``rx`` pin and send each byte on ``o``.

    The pin passes through a two-flip-flop synchronizer. A falling edge
    starts a character; the start bit is checked in its middle, so a low
    pulse shorter than half a bit is ignored. The data bits and the stop bit
    are sampled in their middles. A character whose stop bit is low is a
    framing error: its byte is dropped, and the receiver waits for the line
    to return high before it looks for the next start bit. A byte that
    completes while ``o`` still offers the previous one is dropped, and the
    earlier byte stays on ``o``.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : ``In(1, init=1)``
        The serial line.
    o : ``Out(stream.Signature(8))``
        Received bytes.
    busy : ``Out(1)``
        High from the detection of a start bit to the sample of its stop bit.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        line = Signal(init=1)
        m.submodules.synchronizer = FFSynchronizer(self.rx, line, init=1, stages=_SYNC_STAGES)

        # A start bit is seen one cycle after the synchronizer shows it, so the
        # first sample waits half a bit less those cycles.
        start_wait = divisor // 2 - 1
        timer = Signal(range(divisor))
        bit = Signal(range(8))
        shift = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(start_wait)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shift.eq(Cat(shift[1:], line)),
                        timer.eq(divisor - 1),
                        bit.eq(bit + 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    with m.If(~self.o.valid | self.o.ready):
                        m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"

        # An expression of the state rather than assignments inside the
        # states, because Icarus never evaluates a combinational block whose
        # inputs keep their values from time zero.
        m.d.comb += self.busy.eq(fsm.ongoing("START") | fsm.ongoing("DATA") | fsm.ongoing("STOP"))
        return m


class UARTTransmitter(wiring.Component):
    """Send each byte of ``i`` as an 8N1 character on the ``tx`` pin.

    ``tx`` comes from a flip-flop and idles high. Back-to-back bytes follow
    each other without idle time: every character lasts exactly
    ``10 * divisor`` cycles.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes to send.
    tx : ``Out(1, init=1)``
        The serial line.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        # The data bits and the stop bit still to send, LSB first.
        pending = Signal(9)
        bits_left = Signal(range(10))
        timer = Signal(range(divisor))
        sending = Signal()

        # The stop bit ends when its timer runs out; the next start bit can
        # begin in the same cycle.
        character_done = sending & (timer == 0) & (bits_left == 0)
        m.d.comb += self.i.ready.eq(~sending | character_done)

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                self.tx.eq(0),
                pending.eq(Cat(self.i.payload, 1)),
                bits_left.eq(9),
                timer.eq(divisor - 1),
                sending.eq(1),
            ]
        with m.Elif(character_done):
            m.d.sync += sending.eq(0)
        with m.Elif(sending & (timer == 0)):
            m.d.sync += [
                self.tx.eq(pending[0]),
                pending.eq(pending[1:]),
                bits_left.eq(bits_left - 1),
                timer.eq(divisor - 1),
            ]
        with m.Elif(sending):
            m.d.sync += timer.eq(timer - 1)
        return m
