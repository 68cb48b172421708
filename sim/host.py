"""A transport that runs the host interface's RTL in the Amaranth simulator.

:class:`SimulatedTransport` has the interface of ``sevedo.driver.SerialTransport``.
Bytes that the host writes wait in a queue, and the simulation only runs
while a ``read`` waits for reply bytes. Then a testbench sends the queued
bytes over the ``rx`` pin, bit by bit as a UART does, and another decodes the
``tx`` pin.

Time: a read timeout of ``t`` seconds lasts ``ceil(t * baud / 10)`` byte times
of the simulated line (10 bits per byte, 8N1), of ``10 * divisor`` clock
cycles each. That is ``t`` seconds of simulated time up to two roundings:
the byte times round up, and ``divisor = clock_hz // baud`` rounds down.
"""

import math
from collections import deque

from amaranth.sim import Simulator

from hw.host import HostConfig, HostInterface

__all__ = ["SimulatedTransport", "BITS_PER_BYTE"]

# Start bit, 8 data bits and a stop bit.
BITS_PER_BYTE = 10
_FEMTOSECONDS = 10 ** 15


class SimulatedTransport:
    """The RTL of a device behind a simulated UART line.

    Parameters
    ----------
    config : HostConfig
        The device's parameters; the line runs at ``config.divisor`` clock
        cycles per bit.
    device : Elaboratable, optional
        A component with the ports ``rx`` (In(1)) and ``tx`` (Out(1)) in
        place of ``HostInterface(config)``.
    vcd_file : str or Path, optional
        A waveform file, written until :meth:`close`.

    Attributes
    ----------
    baud : int
        ``config.baud``.
    latency : float
        0: replies arrive within their line time plus the device's own
        clock cycles.
    cycles : int
        Clock cycles simulated so far.
    framing_errors : int
        Bytes from ``tx`` whose stop bit was low; they are dropped.
    """

    def __init__(self, config, *, device=None, vcd_file=None):
        if not isinstance(config, HostConfig):
            raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
        self.config = config
        self.baud = config.baud
        self.latency = 0.0
        self.divisor = config.divisor
        self.device = HostInterface(config) if device is None else device
        self.cycles = 0
        self.framing_errors = 0
        self._outgoing = deque()
        self._incoming = bytearray()
        self._closed = False

        period = 1 / config.clock_hz
        # The simulator counts in whole femtoseconds and puts the first rising
        # edge half a period after time 0.
        self._period_fs = int(period * _FEMTOSECONDS)
        self._phase_fs = int(period / 2 * _FEMTOSECONDS)
        self._sim = Simulator(self.device)
        self._sim.add_clock(period)
        self._sim.add_testbench(self._drive_rx, background=True)
        self._sim.add_testbench(self._sample_tx, background=True)
        self._vcd = None
        if vcd_file is not None:
            self._vcd = self._sim.write_vcd(vcd_file)
            self._vcd.__enter__()

    @property
    def byte_cycles(self):
        """Clock cycles of one byte on the line."""
        return BITS_PER_BYTE * self.divisor

    @property
    def pending(self):
        """Bytes written but not yet sent on ``rx``."""
        return len(self._outgoing)

    @property
    def seconds(self):
        """Simulated time so far."""
        return self.cycles / self.config.clock_hz

    @staticmethod
    async def _ticks(ctx, count):
        # A loop of single ticks. With Amaranth 0.5.10, a testbench that waits
        # in `tick().repeat()` when the interpreter exits prints "aclose():
        # asynchronous generator is already running".
        for _ in range(count):
            await ctx.tick()

    async def _drive_rx(self, ctx):
        rx = self.device.rx
        ctx.set(rx, 1)
        while True:
            if not self._outgoing:
                # An idle line is checked once per bit time.
                await self._ticks(ctx, self.divisor)
                continue
            byte = self._outgoing.popleft()
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                ctx.set(rx, bit)
                await self._ticks(ctx, self.divisor)

    async def _sample_tx(self, ctx):
        tx = self.device.tx
        while True:
            # The start bit: wait for the falling edge, then sample each bit
            # in its middle.
            await ctx.negedge(tx)
            await self._ticks(ctx, max(self.divisor // 2, 1))
            if ctx.get(tx):
                continue
            value = 0
            for index in range(8):
                await self._ticks(ctx, self.divisor)
                value |= ctx.get(tx) << index
            await self._ticks(ctx, self.divisor)
            if ctx.get(tx):
                self._incoming.append(value)
            else:
                self.framing_errors += 1
                while not ctx.get(tx):
                    await ctx.tick()

    def _run_to(self, cycles):
        """Advance the simulation until ``cycles`` rising clock edges have passed."""
        # Half a period after the last edge, so that no edge lies at the deadline.
        deadline_fs = self._phase_fs + (cycles - 1) * self._period_fs + self._period_fs // 2
        self._sim.run_until(deadline_fs / _FEMTOSECONDS)
        self.cycles = cycles

    def _check_open(self):
        if self._closed:
            raise ValueError("the transport is closed")

    def write(self, data):
        """Queue ``data`` for the ``rx`` pin; it is sent while a later :meth:`read` runs the simulation."""
        self._check_open()
        self._outgoing.extend(bytes(data))

    def read(self, size, timeout):
        """Run the simulation until ``size`` bytes have arrived on ``tx`` or ``timeout`` seconds have passed.

        Returns up to ``size`` bytes; fewer means the timeout passed first.
        The timeout counts in byte times of the line (see the module
        docstring), so the simulation runs for at most
        ``ceil(timeout * baud / 10) * 10 * divisor`` clock cycles.
        """
        self._check_open()
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, not {size!r}")
        if timeout is None or not timeout >= 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be a finite number of seconds, not {timeout!r}")
        # Rounded first, so that a timeout of exactly n byte times, computed
        # in floating point, stays n.
        byte_times = math.ceil(round(timeout * self.baud / BITS_PER_BYTE, 6))
        deadline = self.cycles + byte_times * self.byte_cycles
        while len(self._incoming) < size and self.cycles < deadline:
            # No byte arrives faster than one byte time, so the simulation
            # runs for as many byte times as bytes are missing.
            missing = size - len(self._incoming)
            self._run_to(min(deadline, self.cycles + missing * self.byte_cycles))
        data = bytes(self._incoming[:size])
        del self._incoming[:size]
        return data

    def idle(self, byte_times):
        """Run the simulation for ``byte_times`` byte times without reading; arriving bytes are kept."""
        self._check_open()
        self._run_to(self.cycles + byte_times * self.byte_cycles)

    def close(self):
        if self._vcd is not None:
            self._vcd.__exit__(None, None, None)
            self._vcd = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
