"""cocotb testbench of the UART host interface: request frames in on ``rx``, reply frames out on ``tx``.

Environment:
- ``SEVEDO_STIMULUS``: an ``.npz`` with the UART settings (``divisor``,
  ``timeout_bytes``, ``max_payload``) and the expected ``PING`` payload
  (``device_info``). It also has the tile: its weight and activation
  words (one row of bytes per word), its shape (``tokens``, ``beats``),
  the expected result words (``expected``) and the tile's expected cycle
  count (``cycles``).

The testbench drives ``rx`` and decodes ``tx`` at 8N1 with ``divisor``
clock cycles per bit. Every reply is decoded with
:func:`golden.protocol.decode_reply` and compared whole with the expected
command, status and payload.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from golden.protocol import (
    Command,
    DeviceStatus,
    Status,
    Target,
    decode_reply,
    encode_request,
    read_payload,
    reply_length,
    run_payload,
    write_payload,
)

CLOCK_NS = 10


class SerialLine:
    """The host's side of the UART: a bit-banged transmitter on ``rx`` and a receiver on ``tx``."""

    def __init__(self, dut, divisor):
        self.dut = dut
        self.divisor = divisor
        self.received = bytearray()
        cocotb.start_soon(self._monitor())

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.tx)
            await ClockCycles(self.dut.clk, self.divisor // 2)
            assert int(self.dut.tx.value) == 0, "tx start bit shorter than half a bit"
            value = 0
            for index in range(8):
                await ClockCycles(self.dut.clk, self.divisor)
                value |= int(self.dut.tx.value) << index
            await ClockCycles(self.dut.clk, self.divisor)
            assert int(self.dut.tx.value) == 1, f"tx stop bit low after 0x{value:02x}"
            self.received.append(value)

    async def send(self, data):
        for byte in bytes(data):
            for bit in [0] + [(byte >> index) & 1 for index in range(8)] + [1]:
                self.dut.rx.value = bit
                await ClockCycles(self.dut.clk, self.divisor)

    async def receive(self, count, timeout_bytes=100):
        waited = 0
        while len(self.received) < count:
            if waited >= timeout_bytes:
                raise AssertionError(f"timed out after {waited} byte times with {len(self.received)} of {count} "
                                     f"reply bytes: {bytes(self.received).hex()}")
            await ClockCycles(self.dut.clk, 10 * self.divisor)
            waited += 1
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    async def reply(self, timeout_bytes=100):
        """Return ``(command, status, payload)`` of the next reply frame."""
        header = await self.receive(5, timeout_bytes)
        rest = await self.receive(reply_length(header) - 5, timeout_bytes)
        return decode_reply(header + rest)

    async def request(self, command, payload=b""):
        await self.send(encode_request(command, payload))
        return await self.reply()

    async def expect(self, command, payload, expected):
        reply = await self.request(command, payload)
        assert reply == expected, f"{Command(command).name}: expected {expected}, got {reply}"
        return reply


async def start(dut):
    stimulus = np.load(os.environ["SEVEDO_STIMULUS"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return stimulus, SerialLine(dut, int(stimulus["divisor"]))


async def write_words(line, target, words, max_payload):
    per_frame = (max_payload - 3) // words.shape[1]
    for first in range(0, len(words), per_frame):
        chunk = words[first:first + per_frame]
        await line.expect(Command.WRITE, write_payload(target, first, chunk.tobytes()), (Command.WRITE, Status.OK, b""))


@cocotb.test()
async def host_runs_minilm_tile(dut):
    """WRITE a MiniLM tile, RUN it, poll STATUS, READ the results and compare them with the golden model."""
    stimulus, line = await start(dut)
    tokens, beats = int(stimulus["tokens"]), int(stimulus["beats"])
    max_payload = int(stimulus["max_payload"])

    await line.expect(Command.PING, b"", (Command.PING, Status.OK, stimulus["device_info"].tobytes()))
    await write_words(line, Target.WEIGHTS, stimulus["weights"], max_payload)
    await write_words(line, Target.ACTIVATIONS, stimulus["activations"], max_payload)
    await line.expect(Command.RUN, run_payload(tokens, beats), (Command.RUN, Status.OK, b""))
    for _ in range(100):
        command, code, payload = await line.request(Command.STATUS)
        assert (command, code) == (Command.STATUS, Status.OK)
        status = DeviceStatus.unpack(payload)
        if not status.busy:
            break
    else:
        raise AssertionError("the tile did not finish within 100 STATUS requests")
    cycles = int(stimulus["cycles"])
    assert status == DeviceStatus(busy=False, cycles=cycles, beats=tokens * beats, stalls=cycles - tokens * beats,
                                  results=tokens, bad_frames=0), status

    command, code, payload = await line.request(Command.READ, read_payload(0, tokens))
    assert (command, code) == (Command.READ, Status.OK)
    got = np.frombuffer(payload, "<u4").reshape(stimulus["expected"].shape)
    mismatched = np.argwhere(got != stimulus["expected"])
    dut._log.info("%d results, %d mismatches, %d tile cycles", got.size, len(mismatched), status.cycles)
    assert len(mismatched) == 0, (f"{len(mismatched)} of {got.size} results differ from the golden model; first at "
                                  f"token {mismatched[0][0]}, row {mismatched[0][1]}")


@cocotb.test()
async def host_recovers_from_bad_frames(dut):
    """Send a frame with a bad CRC and a truncated frame, check their error replies, and PING after each."""
    stimulus, line = await start(dut)
    info = (Command.PING, Status.OK, stimulus["device_info"].tobytes())

    frame = bytearray(encode_request(Command.PING))
    frame[-2] ^= 0x01
    await line.send(frame)
    assert await line.reply() == (Command.PING, Status.BAD_CRC, b"")
    await line.expect(Command.PING, b"", info)

    frame = encode_request(Command.READ, read_payload(0, 1))
    await line.send(frame[:5])
    timeout_bytes = int(stimulus["timeout_bytes"])
    await ClockCycles(dut.clk, (timeout_bytes - 2) * 10 * line.divisor)
    assert bytes(line.received) == b"", "reply before the idle timeout"
    assert await line.reply(timeout_bytes=12) == (Command.READ, Status.TIMEOUT, b"")
    await line.expect(Command.PING, b"", info)

    _, _, payload = await line.request(Command.STATUS)
    assert DeviceStatus.unpack(payload).bad_frames == 2
