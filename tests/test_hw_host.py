"""The UART host interface in the Amaranth simulator: frames through the rx and tx pins, against the golden model."""

import re
import struct

import numpy as np
import pytest
from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from golden.formats import FP32
from golden.hgq import HGQConfig
from golden.protocol import (
    Command,
    DeviceInfo,
    DeviceStatus,
    Status,
    Target,
    crc16,
    decode_reply,
    encode_reply,
    encode_request,
    read_payload,
    reply_length,
    run_payload,
    write_payload,
)
from golden.residual import residual_matmul
from hw.config import RMCConfig
from hw.host import HostConfig, HostInterface, RequestParser, TileEngine, crc16_update
from hw.rmc import ResidualMatrixCore
from hw.uart import UARTReceiver, UARTTransmitter
from sim.cases import make_case
from sim.packing import pack, unpack
from sim.stimulus import make_rmc_stimulus

from .helpers import assert_constructor_raises, drive_streams

# Divisor 4: the fastest UART that the receiver accepts, so that a byte is 40 cycles.
SMALL = HostConfig(rmc=RMCConfig(rows=2, lanes=16), weight_words=24, activation_words=72, result_words=4,
                   clock_hz=4_000_000, baud=1_000_000, max_payload=256, timeout_bytes=4)
DIVISOR = SMALL.divisor
BYTE_CYCLES = 10 * DIVISOR


class SerialLine:
    """The test's side of the UART: drives ``rx`` bit by bit and decodes ``tx`` into bytes."""

    def __init__(self, dut, divisor):
        self.dut = dut
        self._divisor = divisor
        self.received = bytearray()

    async def monitor(self, ctx):
        """Decode every character on ``tx``, and fail the test on a low stop bit."""
        while True:
            await ctx.negedge(self.dut.tx)
            await ctx.tick().repeat(self._divisor // 2)
            assert ctx.get(self.dut.tx) == 0, "tx start bit shorter than half a bit"
            value = 0
            for index in range(8):
                await ctx.tick().repeat(self._divisor)
                value |= ctx.get(self.dut.tx) << index
            await ctx.tick().repeat(self._divisor)
            assert ctx.get(self.dut.tx) == 1, f"tx stop bit low after 0x{value:02x}"
            self.received.append(value)

    async def send(self, ctx, data, *, stop_bit=1):
        for byte in bytes(data):
            for bit in [0] + [(byte >> index) & 1 for index in range(8)] + [stop_bit]:
                ctx.set(self.dut.rx, bit)
                await ctx.tick().repeat(self._divisor)
        ctx.set(self.dut.rx, 1)

    async def idle(self, ctx, cycles):
        await ctx.tick().repeat(cycles)

    async def receive(self, ctx, count, timeout_cycles):
        """Return the next ``count`` bytes from ``tx``, and fail after ``timeout_cycles`` without them."""
        waited = 0
        while len(self.received) < count:
            if waited >= timeout_cycles:
                raise AssertionError(f"timed out after {waited} cycles with {len(self.received)} of {count} "
                                     f"reply bytes: {bytes(self.received).hex()}")
            await ctx.tick().repeat(self._divisor)
            waited += self._divisor
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    async def reply(self, ctx, timeout_cycles=None):
        """Return ``(command, status, payload)`` of the next reply frame."""
        timeout_cycles = 100 * BYTE_CYCLES if timeout_cycles is None else timeout_cycles
        header = await self.receive(ctx, 5, timeout_cycles)
        rest = await self.receive(ctx, reply_length(header) - 5, timeout_cycles)
        return decode_reply(header + rest)

    async def request(self, ctx, command, payload=b""):
        await self.send(ctx, encode_request(command, payload))
        return await self.reply(ctx)

    async def status(self, ctx):
        command, status, payload = await self.request(ctx, Command.STATUS)
        assert (command, status) == (Command.STATUS, Status.OK)
        return DeviceStatus.unpack(payload)

    async def ping(self, ctx, config):
        """Send PING and check that the whole reply frame is the expected one."""
        await self.send(ctx, encode_request(Command.PING))
        expected = encode_reply(Command.PING, Status.OK, config.device_info().pack())
        frame = await self.receive(ctx, len(expected), 100 * BYTE_CYCLES)
        assert frame == expected

    async def flush(self, ctx, quiet_cycles):
        """Discard bytes until ``tx`` has sent nothing for ``quiet_cycles`` cycles."""
        while True:
            count = len(self.received)
            await ctx.tick().repeat(quiet_cycles)
            if len(self.received) == count:
                self.received.clear()
                return


def run_host(config, scenario):
    """Run ``await scenario(ctx, line)`` against a :class:`HostInterface` of ``config``."""
    dut = HostInterface(config)
    line = SerialLine(dut, config.divisor)

    async def testbench(ctx):
        await ctx.tick().repeat(4)
        await scenario(ctx, line)

    sim = Simulator(dut)
    sim.add_clock(1 / config.clock_hz)
    sim.add_testbench(line.monitor, background=True)
    sim.add_testbench(testbench)
    sim.run()


def timeout_cycles(config):
    return config.timeout_bytes * 10 * config.divisor


# Configuration -----------------------------------------------------------------------------------


def test_config_defaults():
    config = HostConfig()
    assert (config.divisor, config.weight_word_bytes, config.activation_word_bytes, config.result_word_bytes) \
        == (104, 21, 11, 8)
    assert config.name == "host_rmc_r2_l16_gc128_gf16_sb2_w96_a768_r32"
    assert HostConfig(register_beats=False).name == "host_rmc_r2_l16_gc128_gf16_sb2_w96_a768_r32_direct"
    info = config.device_info()
    assert DeviceInfo.unpack(info.pack()) == info


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_words": 0}, "weight_words must be a positive integer, not 0"),
    ({"result_words": 70000}, "result_words must be at most 65535 (a 16-bit protocol field), not 70000"),
    ({"baud": 4_000_000}, ("clock_hz // baud must be at least 4 clock cycles per bit, "
                           "not 12000000 // 4000000 = 3")),
    ({"weight_words": 12}, "weight_words must be a multiple of coarse_group / lanes (8), not 12"),
    ({"max_payload": 20}, ("max_payload must hold a weight word (21 bytes) after the 3-byte WRITE header, "
                           "so at least 24, not 20")),
])
def test_config_invalid(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        HostConfig(**kwargs)


def test_host_rejects_other_config():
    assert_constructor_raises(HostInterface, [RMCConfig()], TypeError, "config must be a HostConfig, not RMCConfig")


@pytest.mark.parametrize("factory", [UARTReceiver, UARTTransmitter])
@pytest.mark.parametrize("divisor", [3, 4.0, True])
def test_uart_rejects_divisor(factory, divisor):
    assert_constructor_raises(factory, [divisor], ValueError,
                              f"divisor must be an integer of at least 4 clock cycles per bit, not {divisor!r}")


# CRC and UART ------------------------------------------------------------------------------------


def test_crc16_update_matches_golden():
    m = Module()
    crc, byte, updated = Signal(16), Signal(8), Signal(16)
    m.d.comb += updated.eq(crc16_update(crc, byte))
    rng = np.random.default_rng(3)
    pairs = [(0xFFFF, 0), (0, 0xFF), (0x8000, 0x80)] + [tuple(v) for v in rng.integers(0, [1 << 16, 256], (200, 2))]
    mismatches = []

    async def testbench(ctx):
        for crc_value, byte_value in pairs:
            ctx.set(crc, int(crc_value))
            ctx.set(byte, int(byte_value))
            expected = crc16(bytes([int(byte_value)]), int(crc_value))
            if ctx.get(updated) != expected:
                mismatches.append((crc_value, byte_value, ctx.get(updated), expected))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    assert mismatches == []


@pytest.mark.parametrize("divisor", [4, 5, 7])
def test_uart_loopback(divisor):
    """Back-to-back bytes from the transmitter reach the receiver, each character exactly 10 bit times."""
    m = Module()
    m.submodules.transmitter = transmitter = UARTTransmitter(divisor)
    m.submodules.receiver = receiver = UARTReceiver(divisor)
    m.d.comb += receiver.rx.eq(transmitter.tx)
    data = bytes(np.random.default_rng(divisor).integers(0, 256, 40, dtype=np.uint8)) + b"\x00\xff\x55"
    received, arrivals = [], []

    async def source(ctx):
        for byte in data:
            ctx.set(transmitter.i.payload, byte)
            ctx.set(transmitter.i.valid, 1)
            await ctx.tick().until(transmitter.i.ready)
        ctx.set(transmitter.i.valid, 0)

    async def sink(ctx):
        ctx.set(receiver.o.ready, 1)
        cycle = 0
        while len(received) < len(data):
            await ctx.tick()
            cycle += 1
            if ctx.get(receiver.o.valid):
                received.append(ctx.get(receiver.o.payload))
                arrivals.append(cycle)
            assert cycle < 12 * divisor * (len(data) + 2)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert bytes(received) == data
    # The source never waits, so the bytes arrive exactly one character apart.
    assert set(np.diff(arrivals)) == {10 * divisor}


def test_uart_receiver_drops_framing_error():
    """A character with a low stop bit is dropped, and the next one is received."""
    receiver = UARTReceiver(4)
    line = SerialLine(receiver, 4)
    received = []

    async def testbench(ctx):
        ctx.set(receiver.o.ready, 1)
        await ctx.tick().repeat(3)
        await line.send(ctx, b"\x3c", stop_bit=0)
        # A break: the line stays low for three characters.
        ctx.set(receiver.rx, 0)
        await ctx.tick().repeat(120)
        ctx.set(receiver.rx, 1)
        await ctx.tick().repeat(8)
        await line.send(ctx, b"\xa5\x01")
        await ctx.tick().repeat(20)

    async def sink(ctx):
        async for _, _, valid, payload in ctx.tick().sample(receiver.o.valid, receiver.o.payload):
            if valid:
                received.append(payload)

    sim = Simulator(receiver)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.add_testbench(sink, background=True)
    sim.run()
    assert bytes(received) == b"\xa5\x01"


# Host interface ----------------------------------------------------------------------------------


def test_ping_and_status_after_reset():
    async def scenario(ctx, line):
        command, status, payload = await line.request(ctx, Command.PING)
        assert (command, status) == (Command.PING, Status.OK)
        assert payload == SMALL.device_info().pack()
        assert await line.status(ctx) == DeviceStatus(busy=False, cycles=0, beats=0, stalls=0, results=0,
                                                      bad_frames=0)

    run_host(SMALL, scenario)


def tile_words(config, xq, wq):
    """Return the weight words, the activation words and the stimulus of one row tile."""
    stimulus = make_rmc_stimulus(config.rmc, xq, wq)
    beats = unpack(config.rmc.beat_layout(), stimulus.beats)
    count = len(stimulus.beats)
    steps = xq.shape[1] // config.rmc.lanes
    weight_fields = {name: beats[name][:steps] for name in ("w", "w_shift", "w_scale")}
    activation_fields = {name: beats[name] for name in ("x", "x_shift", "x_scale")}
    weights = pack(config.weight_word_layout(), weight_fields, steps)
    activations = pack(config.activation_word_layout(), activation_fields, count)
    return weights, activations, stimulus


async def write_words(ctx, line, config, target, words):
    """WRITE ``words`` (rows of bytes) in frames of at most ``max_payload`` bytes."""
    per_frame = (config.max_payload - 3) // words.shape[1]
    for start in range(0, len(words), per_frame):
        chunk = words[start:start + per_frame]
        reply = await line.request(ctx, Command.WRITE, write_payload(target, start, chunk.tobytes()))
        assert reply == (Command.WRITE, Status.OK, b"")


async def wait_for_tile(ctx, line):
    for _ in range(100):
        status = await line.status(ctx)
        if not status.busy:
            return status
    raise AssertionError("the tile did not finish within 100 STATUS requests")


async def read_results(ctx, line, config, tokens):
    command, status, payload = await line.request(ctx, Command.READ, read_payload(0, tokens))
    assert (command, status) == (Command.READ, Status.OK)
    return np.frombuffer(payload, "<u4").reshape(tokens, config.rmc.rows)


def host_latency(config):
    """Cycles that the tile engine adds before the core: the buffers' read, then the fetch and skid registers if any."""
    return 1 + 2 * config.register_beats


def core_cycles(config, stimulus):
    """Cycles that the core alone takes for the tile's beats at full rate, first beat to last result."""
    payloads = [int.from_bytes(row.tobytes(), "little") for row in stimulus.beats]
    return drive_streams(ResidualMatrixCore(config.rmc), payloads, len(stimulus.expected)).cycles


def test_minilm_tile_bit_exact():
    """A row tile of real MiniLM data goes in by WRITE, runs, and READ returns residual_matmul's bits."""
    xq, wq = make_case("minilm_tile", SMALL.rmc.quant)
    xq = xq.select_rows(slice(0, 3))
    wq = wq.select_rows(slice(0, 2))
    tokens, k = xq.shape
    beats = k // SMALL.rmc.lanes
    weights, activations, stimulus = tile_words(SMALL, xq, wq)
    expected_cycles = core_cycles(SMALL, stimulus) + host_latency(SMALL)
    outcome = {}

    async def scenario(ctx, line):
        await write_words(ctx, line, SMALL, Target.WEIGHTS, weights)
        await write_words(ctx, line, SMALL, Target.ACTIVATIONS, activations)
        assert await line.request(ctx, Command.RUN, run_payload(tokens, beats)) == (Command.RUN, Status.OK, b"")
        outcome["status"] = await wait_for_tile(ctx, line)
        outcome["y"] = await read_results(ctx, line, SMALL, tokens)

    run_host(SMALL, scenario)
    assert np.array_equal(outcome["y"], FP32.to_bits(residual_matmul(xq, wq)))
    assert outcome["status"] == DeviceStatus(busy=False, cycles=expected_cycles, beats=tokens * beats,
                                             stalls=expected_cycles - tokens * beats, results=tokens,
                                             bad_frames=0)


@pytest.mark.parametrize("register_beats", [True, False])
@pytest.mark.parametrize("seed", [1, 2])
def test_tile_engine_under_backpressure(register_beats, seed):
    """With a core whose ready drops at random, every beat reaches it once, in order, from the right words."""
    config = HostConfig(rmc=SMALL.rmc, weight_words=24, activation_words=72, result_words=4,
                        register_beats=register_beats)
    tokens, beats = 3, 16
    rng = np.random.default_rng(seed)
    weight_bits = data.Layout.cast(config.weight_word_layout()).size
    activation_bits = data.Layout.cast(config.activation_word_layout()).size
    weights = [int.from_bytes(rng.bytes(config.weight_word_bytes)) & ((1 << weight_bits) - 1)
               for _ in range(config.weight_words)]
    activations = [int.from_bytes(rng.bytes(config.activation_word_bytes)) & ((1 << activation_bits) - 1)
                   for _ in range(config.activation_words)]
    expected = [(weights[b], activations[t * beats + b], int(b == beats - 1))
                for t in range(tokens) for b in range(beats)]

    m = Module()
    m.submodules.engine = engine = TileEngine(config)
    m.submodules.weights = weight_memory = Memory(
        shape=unsigned(8 * config.weight_word_bytes), depth=config.weight_words, init=weights)
    m.submodules.activations = activation_memory = Memory(
        shape=unsigned(8 * config.activation_word_bytes), depth=config.activation_words, init=activations)
    m.submodules.results = result_memory = Memory(
        shape=config.result_word_layout(), depth=config.result_words, init=[])
    wiring.connect(m, engine.weights, weight_memory.read_port())
    wiring.connect(m, engine.activations, activation_memory.read_port())
    wiring.connect(m, engine.results, result_memory.write_port())
    received = []

    async def testbench(ctx):
        ctx.set(engine.tokens, tokens)
        ctx.set(engine.beats, beats)
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        for _ in range(20 * tokens * beats):
            ready = int(rng.random() < 0.4)
            ctx.set(engine.o.ready, ready)
            beat = engine.o.payload
            if ready and ctx.get(engine.o.valid):
                received.append((
                    ctx.get(Cat(beat.w, beat.w_shift, beat.w_scale)),
                    ctx.get(Cat(beat.x, beat.x_shift, beat.x_scale)),
                    ctx.get(beat.last)))
            await ctx.tick()
        assert ctx.get(engine.counters.beats) == tokens * beats

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert received == expected


def frame_with_bad_crc(command, payload=b""):
    frame = bytearray(encode_request(command, payload))
    frame[-1] ^= 0x40
    return bytes(frame)


WEIGHT_WORD = bytes(range(SMALL.weight_word_bytes))
ACTIVATION_WORD = bytes(SMALL.activation_word_bytes)
RESULT_BYTES = SMALL.result_word_bytes


def error(command, status):
    return (command, status, b"")


# Requests and their replies, sent one after another into one device. A
# failed check names its case.
REQUESTS = {
    "framing": [
        ("bad_crc", frame_with_bad_crc(Command.PING), error(Command.PING, Status.BAD_CRC)),
        ("bad_crc_before_length", frame_with_bad_crc(Command.PING, b"\x01"), error(Command.PING, Status.BAD_CRC)),
        ("bad_crc_before_command", frame_with_bad_crc(0x77), error(0x77, Status.BAD_CRC)),
        ("unknown_command", encode_request(0x77), error(0x77, Status.UNKNOWN_COMMAND)),
        ("unknown_command_zero", encode_request(0, b"\x01\x02"), error(0, Status.UNKNOWN_COMMAND)),
        ("ping_with_payload", encode_request(Command.PING, b"\x00"), error(Command.PING, Status.BAD_LENGTH)),
        ("status_with_payload", encode_request(Command.STATUS, b"\x00\x00"),
         error(Command.STATUS, Status.BAD_LENGTH)),
        ("noise_before_sync", b"\x00\x5a\xff" + encode_request(Command.PING)[:-2] + b"\x00\x00",
         error(Command.PING, Status.BAD_CRC)),
    ],
    "write": [
        ("short_header", encode_request(Command.WRITE, b"\x00\x00"), error(Command.WRITE, Status.BAD_LENGTH)),
        ("partial_weight_word", encode_request(Command.WRITE, write_payload(Target.WEIGHTS, 0, WEIGHT_WORD[:-1])),
         error(Command.WRITE, Status.BAD_LENGTH)),
        ("partial_activation_word",
         encode_request(Command.WRITE, write_payload(Target.ACTIVATIONS, 0, ACTIVATION_WORD + b"\x00")),
         error(Command.WRITE, Status.BAD_LENGTH)),
        ("unknown_target", encode_request(Command.WRITE, b"\x02\x00\x00" + WEIGHT_WORD),
         error(Command.WRITE, Status.BAD_ARGUMENT)),
        ("weights_overrun",
         encode_request(Command.WRITE, write_payload(Target.WEIGHTS, SMALL.weight_words - 1, WEIGHT_WORD * 2)),
         error(Command.WRITE, Status.OVERRUN)),
        ("activations_overrun",
         encode_request(Command.WRITE, write_payload(Target.ACTIVATIONS, SMALL.activation_words, ACTIVATION_WORD)),
         error(Command.WRITE, Status.OVERRUN)),
        ("empty_past_end", encode_request(Command.WRITE, write_payload(Target.WEIGHTS, SMALL.weight_words + 1, b"")),
         error(Command.WRITE, Status.OVERRUN)),
        ("empty_at_end", encode_request(Command.WRITE, write_payload(Target.WEIGHTS, SMALL.weight_words, b"")),
         (Command.WRITE, Status.OK, b"")),
        ("last_word",
         encode_request(Command.WRITE, write_payload(Target.ACTIVATIONS, SMALL.activation_words - 1,
                                                     ACTIVATION_WORD)),
         (Command.WRITE, Status.OK, b"")),
    ],
    "read": [
        ("long", encode_request(Command.READ, read_payload(0, 1) + b"\x00"), error(Command.READ, Status.BAD_LENGTH)),
        ("overrun", encode_request(Command.READ, read_payload(SMALL.result_words - 1, 2)),
         error(Command.READ, Status.OVERRUN)),
        ("offset_overflow", encode_request(Command.READ, read_payload(0xFFFF, 1)),
         error(Command.READ, Status.OVERRUN)),
        ("longer_than_max_payload", encode_request(Command.READ, read_payload(0, SMALL.max_payload // RESULT_BYTES + 1)),
         error(Command.READ, Status.BAD_ARGUMENT)),
        ("empty_at_end", encode_request(Command.READ, read_payload(SMALL.result_words, 0)),
         (Command.READ, Status.OK, b"")),
        ("all", encode_request(Command.READ, read_payload(0, SMALL.result_words)),
         (Command.READ, Status.OK, bytes(SMALL.result_words * RESULT_BYTES))),
    ],
    "run": [
        ("short", encode_request(Command.RUN, b"\x01\x00\x18"), error(Command.RUN, Status.BAD_LENGTH)),
        ("bad_crc", frame_with_bad_crc(Command.RUN, run_payload(0, 0)), error(Command.RUN, Status.BAD_CRC)),
        ("no_tokens", encode_request(Command.RUN, run_payload(0, 24)), error(Command.RUN, Status.BAD_ARGUMENT)),
        ("too_many_tokens", encode_request(Command.RUN, run_payload(SMALL.result_words + 1, 8)),
         error(Command.RUN, Status.BAD_ARGUMENT)),
        ("no_beats", encode_request(Command.RUN, run_payload(1, 0)), error(Command.RUN, Status.BAD_ARGUMENT)),
        ("too_many_beats", encode_request(Command.RUN, run_payload(1, SMALL.weight_words + 8)),
         error(Command.RUN, Status.BAD_ARGUMENT)),
        ("partial_coarse_group", encode_request(Command.RUN, run_payload(1, 12)),
         error(Command.RUN, Status.BAD_ARGUMENT)),
        ("past_activations", encode_request(Command.RUN, run_payload(4, 24)), error(Command.RUN, Status.BAD_ARGUMENT)),
        ("huge_product", encode_request(Command.RUN, run_payload(0xFFFF, 0xFFF8)),
         error(Command.RUN, Status.BAD_ARGUMENT)),
        ("whole_buffers", encode_request(Command.RUN, run_payload(3, 24)), (Command.RUN, Status.OK, b"")),
    ],
}


@pytest.mark.parametrize("group", REQUESTS)
def test_malformed_requests(group):
    """Each request gets its exact reply, and a STATUS after it counts the error replies so far."""
    async def scenario(ctx, line):
        bad_frames = 0
        for name, frame, expected in REQUESTS[group]:
            await line.send(ctx, frame)
            assert await line.reply(ctx) == expected, name
            bad_frames += expected[1] != Status.OK
            status = await wait_for_tile(ctx, line)
            assert status.bad_frames == bad_frames, name
        await line.ping(ctx, SMALL)

    run_host(SMALL, scenario)


def test_truncated_frames_time_out():
    """A frame cut short gets TIMEOUT after the idle timeout, with its command byte if that arrived, else 0."""
    frame = encode_request(Command.WRITE, write_payload(Target.WEIGHTS, 0, WEIGHT_WORD))
    cuts = [1, 2, 4, 5, 12, len(frame) - 1]

    async def scenario(ctx, line):
        for count, cut in enumerate(cuts, start=1):
            await line.send(ctx, frame[:cut])
            await line.idle(ctx, timeout_cycles(SMALL) - 2 * BYTE_CYCLES)
            assert bytes(line.received) == b"", f"reply before the timeout, frame cut after {cut} bytes"
            reply = await line.reply(ctx, timeout_cycles=12 * BYTE_CYCLES)
            assert reply == error(frame[1] if cut >= 2 else 0, Status.TIMEOUT), f"frame cut after {cut} bytes"
            assert (await line.status(ctx)).bad_frames == count
        await line.ping(ctx, SMALL)

    run_host(SMALL, scenario)


def raw_request(command, length, payload=b""):
    """Return a request frame whose length field is ``length``, whatever the payload, with a good CRC."""
    body = bytes([command]) + struct.pack("<H", length) + payload
    return bytes([0xA5]) + body + struct.pack("<H", crc16(body))


def test_length_above_max_payload():
    """BAD_LENGTH comes right after the length field, and the rest is dropped until the line is idle."""
    header = raw_request(Command.WRITE, SMALL.max_payload + 1)[:4]
    # Whole PING frames inside the dropped part, and a gap shorter than the timeout.
    rest = bytes(12) + encode_request(Command.PING) * 3 + bytes(range(20))

    async def scenario(ctx, line):
        await line.send(ctx, header + rest[:8])
        # The reply is under way before the frame's payload.
        assert len(line.received) >= 5
        await line.send(ctx, rest[8:30])
        await line.idle(ctx, timeout_cycles(SMALL) - 2 * BYTE_CYCLES)
        await line.send(ctx, rest[30:])
        await line.idle(ctx, timeout_cycles(SMALL) + BYTE_CYCLES)
        assert bytes(line.received) == encode_reply(Command.WRITE, Status.BAD_LENGTH)
        line.received.clear()
        await line.ping(ctx, SMALL)
        assert (await line.status(ctx)).bad_frames == 1

    run_host(SMALL, scenario)


def test_busy_while_tile_runs():
    """RUN, WRITE and READ get BUSY while a tile runs, and that WRITE stores nothing (beats not registered)."""
    config = HostConfig(rmc=RMCConfig(rows=2, lanes=16), weight_words=96, activation_words=3072,
                        result_words=32, clock_hz=4_000_000, baud=1_000_000, max_payload=256, timeout_bytes=4,
                        register_beats=False)
    xq, wq = make_case("minilm_tile", config.rmc.quant)
    xq = xq.select_rows(slice(0, 1))
    wq = wq.select_rows(slice(0, 2))
    weights, activations, stimulus = tile_words(config, xq, wq)
    beats = len(weights)
    expected_cycles = core_cycles(config, stimulus) + host_latency(config)
    replies = []
    outcome = {}

    async def scenario(ctx, line):
        await write_words(ctx, line, config, Target.WEIGHTS, weights)
        await write_words(ctx, line, config, Target.ACTIVATIONS, activations)
        # 3072 beats last longer than the RUN reply and three short frames with their replies.
        replies.append(await line.request(ctx, Command.RUN, run_payload(32, 96)))
        await line.send(ctx, encode_request(Command.WRITE, write_payload(Target.ACTIVATIONS, 0, ACTIVATION_WORD)))
        await line.send(ctx, encode_request(Command.RUN, run_payload(1, beats)))
        replies.append(await line.reply(ctx))
        replies.append(await line.reply(ctx))
        replies.append(await line.request(ctx, Command.READ, read_payload(0, 1)))
        outcome["long"] = await wait_for_tile(ctx, line)
        replies.append(await line.request(ctx, Command.RUN, run_payload(1, beats)))
        outcome["short"] = await wait_for_tile(ctx, line)
        outcome["y"] = await read_results(ctx, line, config, 1)

    run_host(config, scenario)
    assert replies == [(Command.RUN, Status.OK, b""), error(Command.WRITE, Status.BUSY),
                       error(Command.RUN, Status.BUSY), error(Command.READ, Status.BUSY),
                       (Command.RUN, Status.OK, b"")]
    assert (outcome["long"].beats, outcome["long"].results, outcome["long"].bad_frames) == (3072, 32, 3)
    assert outcome["short"] == DeviceStatus(busy=False, cycles=expected_cycles, beats=beats,
                                            stalls=expected_cycles - beats, results=1, bad_frames=3)
    assert np.array_equal(outcome["y"], FP32.to_bits(residual_matmul(xq, wq)))


def test_run_checks_non_power_of_two_group():
    """With 3 beats per coarse group, RUN takes multiples of 3 beats only."""
    config = HostConfig(rmc=RMCConfig(rows=2, lanes=16, quant=HGQConfig(48, 16, 2)), weight_words=24,
                        activation_words=48, result_words=4, clock_hz=4_000_000, baud=1_000_000,
                        max_payload=64, timeout_bytes=4)

    async def scenario(ctx, line):
        for beats, status in ((4, Status.BAD_ARGUMENT), (3, Status.OK), (22, Status.BAD_ARGUMENT),
                              (24, Status.OK), (1, Status.BAD_ARGUMENT)):
            reply = await line.request(ctx, Command.RUN, run_payload(2, beats))
            assert reply == (Command.RUN, status, b""), f"RUN of {beats} beats"
            await wait_for_tile(ctx, line)

    run_host(config, scenario)


def garbage(seed, pieces=30):
    """Return random bytes mixed with sync bytes, short headers, and frames with a flipped bit cut at random."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(pieces):
        kind = rng.integers(0, 4)
        if kind == 0:
            parts.append(bytes(rng.integers(0, 256, rng.integers(1, 20), dtype=np.uint8)))
        elif kind == 1:
            parts.append(bytes([0xA5, rng.integers(0, 8), rng.integers(0, 12), 0]))
        else:
            command = Command(rng.integers(1, 6))
            payload = bytes(rng.integers(0, 256, rng.choice([0, 3, 4, 24]), dtype=np.uint8))
            frame = bytearray(encode_request(command, payload))
            frame[rng.integers(0, len(frame))] ^= 1 << rng.integers(0, 8)
            parts.append(bytes(frame[:rng.integers(1, len(frame) + 1)]))
    return b"".join(parts)


@pytest.mark.parametrize("seed", [1, 2] + [pytest.param(seed, marks=pytest.mark.slow) for seed in range(3, 11)])
def test_garbage_then_ping(seed):
    """After random input and an idle line for the timeout, the device replies to PING."""
    async def scenario(ctx, line):
        await line.send(ctx, garbage(seed))
        await line.flush(ctx, timeout_cycles(SMALL) + 8 * BYTE_CYCLES)
        await line.ping(ctx, SMALL)

    run_host(SMALL, scenario)


def test_line_held_low_then_ping():
    """A break in the middle of a frame ends in TIMEOUT, and the device replies to PING once the line is high."""
    async def scenario(ctx, line):
        await line.send(ctx, encode_request(Command.PING)[:3])
        ctx.set(line.dut.rx, 0)
        await line.idle(ctx, 3 * timeout_cycles(SMALL))
        ctx.set(line.dut.rx, 1)
        assert await line.reply(ctx) == error(Command.PING, Status.TIMEOUT)
        await line.idle(ctx, 2 * BYTE_CYCLES)
        await line.ping(ctx, SMALL)

    run_host(SMALL, scenario)


# Request parser alone --------------------------------------------------------------------------

# Buffers as deep as the protocol allows, so that the products of RUN reach past 16 bits.
DEEP = HostConfig(rmc=RMCConfig(rows=2, lanes=16), weight_words=65528, activation_words=65535, result_words=65535,
                  clock_hz=4_000_000, baud=1_000_000, max_payload=256, timeout_bytes=4)


def parse(config, frames, busy=False):
    """Feed ``frames`` into a :class:`RequestParser` byte by byte, and return ``(command, status, length)`` per request."""
    parser = RequestParser(config)
    requests = []

    async def testbench(ctx):
        ctx.set(parser.tile_busy, busy)
        ctx.set(parser.o.ready, 1)
        for byte in b"".join(frames):
            ctx.set(parser.i.payload, byte)
            ctx.set(parser.i.valid, 1)
            await ctx.tick().until(parser.i.ready)
            ctx.set(parser.i.valid, 0)
            # Bytes of a UART come at least 40 cycles apart.
            for _ in range(40):
                if ctx.get(parser.o.valid):
                    request = ctx.get(parser.o.payload)
                    requests.append((request.command, request.status, request.length))
                await ctx.tick()

    sim = Simulator(parser)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return requests


@pytest.mark.parametrize("tokens, beats, status", [
    (2, 32760, Status.OK),
    (1, 65528, Status.OK),
    (3, 21840, Status.OK),
    (3, 21848, Status.BAD_ARGUMENT),
    (5, 65528, Status.BAD_ARGUMENT),
    (40960, 65528, Status.BAD_ARGUMENT),
    (65535, 65528, Status.BAD_ARGUMENT),
    (65535, 8, Status.BAD_ARGUMENT),
    (8191, 8, Status.OK),
    (8192, 8, Status.BAD_ARGUMENT),
])
def test_parser_run_product_limit(tokens, beats, status):
    """RUN checks tokens * beats against the activation buffer, also when the product needs more than 17 bits."""
    requests = parse(DEEP, [encode_request(Command.RUN, run_payload(tokens, beats))])
    assert requests == [(Command.RUN, status, 0)]


@pytest.mark.parametrize("offset, count, status, length", [
    (0, 32, Status.OK, 256),
    (0, 33, Status.BAD_ARGUMENT, 0),
    (0, 65535, Status.BAD_ARGUMENT, 0),
    (65535, 0, Status.OK, 0),
    (65535, 1, Status.OVERRUN, 0),
    (65534, 1, Status.OK, 8),
    (65503, 32, Status.OK, 256),
    (65504, 32, Status.OVERRUN, 0),
])
def test_parser_read_limits(offset, count, status, length):
    """READ checks the reply length against max_payload and the words against the result buffer."""
    requests = parse(DEEP, [encode_request(Command.READ, read_payload(offset, count))])
    assert requests == [(Command.READ, status, length)]


def test_parser_busy_tile():
    """While a tile runs, WRITE, RUN and READ get BUSY, and PING and STATUS do not."""
    frames = [encode_request(Command.WRITE, write_payload(Target.WEIGHTS, 0, bytes(DEEP.weight_word_bytes))),
              encode_request(Command.RUN, run_payload(1, 8)), encode_request(Command.READ, read_payload(0, 1)),
              encode_request(Command.PING), encode_request(Command.STATUS)]
    requests = parse(DEEP, frames, busy=True)
    assert [status for _, status, _ in requests] == [Status.BUSY] * 3 + [Status.OK] * 2
