"""The host driver: frames, retries and error paths against a Python device, then the RTL through the simulated UART."""

import json
import re
import struct

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.formats import FP32
from golden.hgq import HGQConfig, HGQTensor, quantize_hgq
from golden.protocol import (
    Command, DeviceStatus, ProtocolError, Status, Target, crc16, decode_reply, encode_reply, encode_request,
    read_payload, run_payload, write_payload)
from golden.residual import residual_matmul
from hw.config import RMCConfig
from hw.host import HostConfig
from sevedo.driver import HostDriver, ReplyTimeout, config_from_info, pack_activation_words, pack_weight_words
from sim.host import SimulatedTransport
from sim.packing import pack, unpack
from sim.stimulus import make_rmc_stimulus

# Divisor 4, the smallest that HostConfig accepts, keeps the simulated line fast.
# With K = 384 (24 beats), a RUN of 3 tokens fits the result buffer but
# exceeds the 48 activation words.
CONFIG = HostConfig(rmc=RMCConfig(rows=2, lanes=16), weight_words=24, activation_words=48, result_words=3,
                    clock_hz=12_000_000, baud=3_000_000, max_payload=128, timeout_bytes=8)


# A device in Python, built from golden.protocol and golden.residual.

class FakeDevice:
    """A transport whose device replies in Python; ``faults`` lists what to do to each reply, in order.

    A fault is ``"corrupt"`` (flip a CRC bit), ``"drop"`` (no reply),
    ``"truncate"`` (3 bytes only), ``"echo"`` (echo another command),
    ``"oversize"`` (a header with the length 65535),
    ``"trailing"`` (3 stray bytes after the reply) or a Status to send in
    place of the reply. ``None`` replies normally. Reads return at once and
    add their timeout to ``waited`` when they come back short.
    """

    def __init__(self, config=CONFIG, faults=(), busy_polls=0):
        self.config = config
        self.baud = config.baud
        self.latency = 0.0
        self.faults = list(faults)
        self.busy_polls = busy_polls
        self.requests = []
        self.waited = 0.0
        self.reads = 0
        self.output = bytearray()
        self.buffers = {
            Target.WEIGHTS: bytearray(config.weight_words * config.weight_word_bytes),
            Target.ACTIVATIONS: bytearray(config.activation_words * config.activation_word_bytes),
        }
        self.results = bytearray(config.result_words * config.result_word_bytes)
        self.status = DeviceStatus(busy=False, cycles=0, beats=0, stalls=0, results=0, bad_frames=0)
        self.polls_left = 0

    def write(self, data):
        data = bytes(data)
        assert data[0] == 0xA5
        command, length = data[1], struct.unpack_from("<H", data, 2)[0]
        assert len(data) == 4 + length + 2
        assert crc16(data[1:-2]) == struct.unpack("<H", data[-2:])[0]
        self.requests.append(Command(command))
        reply = self.reply_to(Command(command), data[4:-2])
        fault = self.faults.pop(0) if self.faults else None
        if isinstance(fault, Status):
            reply = encode_reply(command, fault)
        elif fault == "corrupt":
            reply = reply[:-1] + bytes([reply[-1] ^ 0x01])
        elif fault == "drop":
            reply = b""
        elif fault == "truncate":
            reply = reply[:3]
        elif fault == "echo":
            reply = encode_reply(Command.STATUS if command != Command.STATUS else Command.PING,
                                 *decode_reply(reply)[1:])
        elif fault == "oversize":
            reply = bytes([0x5A, command, 0, 0xFF, 0xFF])
        elif fault == "trailing":
            reply += b"\x00\x11\x22"
        self.output += reply

    def read(self, size, timeout):
        self.reads += 1
        data = bytes(self.output[:size])
        del self.output[:size]
        if len(data) < size:
            self.waited += timeout
        return data

    def close(self):
        pass

    def reply_to(self, command, payload):
        config = self.config
        if command == Command.PING:
            return encode_reply(command, Status.OK, config.device_info().pack())
        if command == Command.STATUS:
            busy = self.polls_left > 0
            self.polls_left -= busy
            status = DeviceStatus(busy, *(getattr(self.status, name) for name in
                                          ("cycles", "beats", "stalls", "results", "bad_frames")))
            return encode_reply(command, Status.OK, status.pack())
        if command == Command.WRITE:
            target, offset = struct.unpack_from("<BH", payload)
            buffer = self.buffers[Target(target)]
            start = offset * (config.weight_word_bytes if target == Target.WEIGHTS else config.activation_word_bytes)
            if start + len(payload) - 3 > len(buffer):
                return encode_reply(command, Status.OVERRUN)
            buffer[start:start + len(payload) - 3] = payload[3:]
            return encode_reply(command, Status.OK)
        if command == Command.READ:
            offset, count = struct.unpack("<HH", payload)
            size = config.result_word_bytes
            if offset + count > config.result_words:
                return encode_reply(command, Status.OVERRUN)
            return encode_reply(command, Status.OK, self.results[offset * size:(offset + count) * size])
        tokens, beats = struct.unpack("<HH", payload)
        if not (1 <= tokens <= config.result_words and 1 <= beats <= config.weight_words
                and tokens * beats <= config.activation_words):
            return encode_reply(command, Status.BAD_ARGUMENT)
        self.compute(tokens, beats)
        self.polls_left = self.busy_polls
        return encode_reply(command, Status.OK)

    def compute(self, tokens, beats):
        """Rebuild the HGQ tensors from the buffers and store ``residual_matmul`` as result words."""
        config = self.config
        rmc, quant = config.rmc, config.rmc.quant
        k = beats * rmc.lanes
        weights = unpack(config.weight_word_layout(), np.frombuffer(
            self.buffers[Target.WEIGHTS], np.uint8).reshape(config.weight_words, -1)[:beats])
        activations = unpack(config.activation_word_layout(), np.frombuffer(
            self.buffers[Target.ACTIVATIONS], np.uint8).reshape(config.activation_words, -1)[:tokens * beats])
        fine = np.arange(k // quant.fine_group) * quant.fine_group // rmc.lanes
        coarse = np.arange(k // quant.coarse_group) * quant.coarse_group // rmc.lanes
        wq = HGQTensor(weights["w"].transpose(1, 0, 2).reshape(rmc.rows, k).astype(np.int8),
                       weights["w_scale"][coarse].T.astype(np.uint16).view(np.float16),
                       weights["w_shift"][fine].T.astype(np.uint8), quant)
        x_shift = activations["x_shift"].reshape(tokens, beats)
        x_scale = activations["x_scale"].reshape(tokens, beats).astype(np.uint16)
        xq = HGQTensor(activations["x"].reshape(tokens, k).astype(np.int8), x_scale[:, coarse].view(np.float16),
                       x_shift[:, fine].astype(np.uint8), quant)
        bits = FP32.to_bits(residual_matmul(xq, wq))
        words = pack(config.result_word_layout(), {"y": bits}, tokens)
        self.results[:words.size] = words.tobytes()
        self.status = DeviceStatus(False, tokens * beats + 6, tokens * beats, 6, tokens, 0)


def small_tensors(tokens=3, outputs=3, k=384, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, k))
    x[0, 7] = 40.0
    return quantize_hgq(x, CONFIG.rmc.quant), quantize_hgq(rng.standard_normal((outputs, k)), CONFIG.rmc.quant)


def test_crc16_check_value():
    assert crc16(b"123456789") == 0x29B1


def test_request_frame_bytes():
    frame = encode_request(Command.READ, read_payload(1, 2))
    assert frame[:4] == bytes([0xA5, 0x05, 0x04, 0x00])
    assert frame[4:8] == bytes([0x01, 0x00, 0x02, 0x00])
    assert struct.unpack("<H", frame[8:])[0] == crc16(frame[1:8])


def test_reply_frame_round_trip():
    frame = encode_reply(Command.READ, Status.OVERRUN, b"\x01\x02")
    assert decode_reply(frame) == (Command.READ, Status.OVERRUN, b"\x01\x02")


def test_reply_bad_crc_rejected():
    frame = bytearray(encode_reply(Command.PING, Status.OK))
    frame[-1] ^= 0x80
    with pytest.raises(ProtocolError, match="reply CRC is 0x"):
        decode_reply(bytes(frame))


def test_words_equal_rmc_beats():
    xq, wq = small_tensors()
    beats = unpack(CONFIG.rmc.beat_layout(), make_rmc_stimulus(CONFIG.rmc, xq, wq).beats)
    weight_words = pack_weight_words(CONFIG, wq)
    activation_words = pack_activation_words(CONFIG, xq)
    steps = 384 // 16
    # Stimulus order: row tile, token, step. The weights repeat for every token.
    tiles = weight_words.shape[0]
    assert tiles == 2
    for tile in range(tiles):
        first = tile * 3 * steps
        expected = pack(CONFIG.weight_word_layout(),
                        {name: beats[name][first:first + steps] for name in ("w", "w_shift", "w_scale")}, steps)
        assert np.array_equal(weight_words[tile], expected)
    expected = pack(CONFIG.activation_word_layout(),
                    {name: beats[name][:3 * steps] for name in ("x", "x_shift", "x_scale")}, 3 * steps)
    assert np.array_equal(activation_words.reshape(3 * steps, -1), expected)


def test_ping_returns_device_info():
    driver = HostDriver(FakeDevice())
    assert driver.ping(CONFIG) == CONFIG.device_info()
    assert config_from_info(driver.info) == CONFIG


def test_ping_other_config_rejected():
    other = HostConfig(rmc=RMCConfig(rows=4, lanes=16), weight_words=24, activation_words=48, result_words=3,
                       clock_hz=12_000_000, baud=3_000_000, max_payload=128, timeout_bytes=8)
    driver = HostDriver(FakeDevice(), expected=other)
    with pytest.raises(ProtocolError, match=re.escape(
            "the device differs from the expected configuration: rows 2 (expected 4), "
            "weight_word_bytes 21 (expected 41), result_word_bytes 8 (expected 16)")):
        driver.ping()
    assert driver.info is None


def test_write_splits_frames():
    device = FakeDevice()
    driver = HostDriver(device)
    words = np.arange(24 * 21, dtype=np.uint8).reshape(24, 21)
    driver.write(Target.WEIGHTS, 0, words)
    # (128 - 3) // 21 = 5 words per frame.
    assert device.requests == [Command.PING] + [Command.WRITE] * 5
    assert device.buffers[Target.WEIGHTS] == words.tobytes()


def test_write_partial_word_rejected():
    driver = HostDriver(FakeDevice())
    with pytest.raises(ValueError, match=re.escape("words must be whole words of 11 bytes, not 12 bytes")):
        driver.write(Target.ACTIVATIONS, 0, bytes(12))


@pytest.mark.parametrize("tokens, outputs, k", [(1, 2, 384), (3, 3, 384), (5, 6, 256), (3, 1, 128)])
def test_tile_matches_golden(tokens, outputs, k):
    xq, wq = small_tensors(tokens, outputs, k)
    device = FakeDevice()
    run = HostDriver(device).run_tile(xq, wq)
    assert np.array_equal(run.bits, FP32.to_bits(residual_matmul(xq, wq)))
    # A RUN takes as many tokens as 48 activation words and 3 result words hold.
    chunks, tiles = -(-tokens // min(3, 48 // (k // 16))), -(-outputs // 2)
    assert run.runs == chunks * tiles
    assert device.requests.count(Command.RUN) == chunks * tiles
    assert run.beats == tiles * tokens * k // 16


def test_tile_k_too_long_rejected():
    xq, wq = small_tensors(1, 2, k=512)
    with pytest.raises(ValueError, match=re.escape(
            "K must be at most 384 (weight_words 24 x lanes 16), not 512")):
        HostDriver(FakeDevice()).run_tile(xq, wq)


def test_tile_other_quantization_rejected():
    x = np.ones((1, 384))
    xq = quantize_hgq(x, HGQConfig(128, 32, 2))
    with pytest.raises(ValueError, match="xq must be quantized with the device's HGQConfig"):
        HostDriver(FakeDevice()).run_tile(xq, quantize_hgq(x, CONFIG.rmc.quant))


@pytest.mark.parametrize("status", [Status.BAD_CRC, Status.TIMEOUT])
def test_noise_status_resends_once(status):
    device = FakeDevice(faults=[None, status])
    driver = HostDriver(device)
    driver.ping()
    assert driver.status().busy is False
    assert device.requests == [Command.PING, Command.STATUS, Command.STATUS]


def test_noise_status_twice_raises():
    device = FakeDevice(faults=[Status.BAD_CRC, Status.BAD_CRC])
    with pytest.raises(ProtocolError, match="^PING failed: the device replied BAD_CRC$") as error:
        HostDriver(device).ping()
    assert error.value.status == Status.BAD_CRC
    assert device.requests == [Command.PING, Command.PING]


@pytest.mark.parametrize("status", [Status.BAD_ARGUMENT, Status.BUSY, Status.OVERRUN, Status.BAD_LENGTH,
                                    Status.UNKNOWN_COMMAND])
def test_logic_error_not_resent(status):
    device = FakeDevice(faults=[None, status])
    driver = HostDriver(device)
    driver.ping()
    with pytest.raises(ProtocolError, match=f"^RUN failed: the device replied {status.name}$") as error:
        driver.run(1, 24)
    assert error.value.status == status
    assert device.requests == [Command.PING, Command.RUN]


def test_bad_argument_from_device():
    driver = HostDriver(FakeDevice())
    with pytest.raises(ProtocolError, match="^RUN failed: the device replied BAD_ARGUMENT$"):
        driver.run(3, 24)


def test_corrupt_reply_raises():
    device = FakeDevice(faults=["corrupt"])
    with pytest.raises(ProtocolError, match=r"^invalid reply to PING: reply CRC is 0x[0-9a-f]{4}, "
                                            r"but its bytes give 0x[0-9a-f]{4}$"):
        HostDriver(device).ping()
    assert device.requests == [Command.PING]


def test_wrong_echo_raises():
    with pytest.raises(ProtocolError, match=re.escape("the reply to PING echoes command 0x04, not 0x01")):
        HostDriver(FakeDevice(faults=["echo"])).ping()


def test_oversize_reply_rejected():
    device = FakeDevice(faults=[None, "oversize"])
    driver = HostDriver(device)
    driver.ping()
    with pytest.raises(ProtocolError, match=re.escape(
            "invalid reply to STATUS: its length field is 65535 bytes, above the device's max_payload 128")):
        driver.status()
    assert device.requests == [Command.PING, Command.STATUS]


def test_short_reply_times_out():
    device = FakeDevice(faults=["truncate", "truncate"])
    with pytest.raises(ReplyTimeout, match=r"^no reply to PING within [0-9.]+ ms: 3 of at least 7 bytes "
                                           r"arrived$") as error:
        HostDriver(device, expected=CONFIG).ping()
    assert error.value.received == encode_reply(Command.PING, Status.OK, CONFIG.device_info().pack())[:3]
    assert device.requests == [Command.PING, Command.PING]


def test_short_reply_resent_once():
    device = FakeDevice(faults=["truncate"])
    assert HostDriver(device, expected=CONFIG).ping() == CONFIG.device_info()
    assert device.requests == [Command.PING, Command.PING]


def test_lost_run_reply_not_resent():
    device = FakeDevice(faults=[None, "drop"])
    driver = HostDriver(device)
    driver.ping()
    with pytest.raises(ReplyTimeout, match="^no reply to RUN within [0-9.]+ ms: 0 of at least 7 bytes arrived$"):
        driver.run(1, 24)
    assert device.requests == [Command.PING, Command.RUN]


def test_timeouts_follow_line_time():
    device = FakeDevice(faults=["drop", "drop"])
    driver = HostDriver(device, expected=CONFIG)
    with pytest.raises(ReplyTimeout):
        driver.ping()
    byte_time = 10 / CONFIG.baud
    request = len(encode_request(Command.PING))
    # Per attempt: the reply wait (request, idle timeout, header and slack)
    # and one quiet window of the drain (request, idle timeout and slack).
    per_attempt = (request + 8 + 5 + 8) * byte_time + (request + 8 + 8) * byte_time
    assert device.waited == pytest.approx(2 * per_attempt)


def test_stray_bytes_drained():
    device = FakeDevice(faults=[None, "trailing", Status.BAD_ARGUMENT])
    driver = HostDriver(device)
    driver.ping()
    driver.status()
    # The stray bytes are still queued; the next reply starts with them.
    with pytest.raises(ProtocolError, match="reply sync byte must be 0x5a, not 0x00"):
        driver.status()
    assert device.output == b""
    assert driver.status().busy is False


def test_wait_polls_until_idle():
    device = FakeDevice(busy_polls=3)
    driver = HostDriver(device)
    driver.ping()
    driver.run(1, 24)
    assert driver.wait(timeout=1e-3).busy is False
    assert device.requests.count(Command.STATUS) == 4


def test_wait_times_out():
    device = FakeDevice(busy_polls=1000)
    driver = HostDriver(device)
    driver.ping()
    driver.run(1, 24)
    with pytest.raises(TimeoutError, match=r"^the device was still busy after 4 STATUS polls \(0.3 ms\)$"):
        driver.wait(timeout=3e-4)


def test_layer_output_matches_golden():
    from golden.compiler import CompilerConfig, compile_layer, run_layer
    rng = np.random.default_rng(9)
    weight, x = rng.standard_normal((5, 384)), rng.standard_normal((3, 384))
    layer = compile_layer(weight, rng.standard_normal(5), x, CompilerConfig(rank=4, quant=CONFIG.rmc.quant))
    run = HostDriver(FakeDevice()).run_layer(layer, x)
    golden = run_layer(layer, x)
    assert np.array_equal(FP32.to_bits(run.outputs.residual), FP32.to_bits(golden.residual))
    assert np.array_equal(FP32.to_bits(run.outputs.output), FP32.to_bits(golden.output))


# The serial transport over a pseudo-terminal, with the Python device on the other end.

@pytest.fixture
def pty_device():
    """Yield ``(port path, FakeDevice)``; a thread replies to the frames written to the port."""
    import os
    import select
    import threading
    master, slave = os.openpty()
    device = FakeDevice()
    stop = threading.Event()

    def serve():
        pending = bytearray()
        while not stop.is_set():
            if not select.select([master], [], [], 0.01)[0]:
                continue
            pending += os.read(master, 4096)
            while len(pending) >= 4 and len(pending) >= 6 + struct.unpack_from("<H", pending, 2)[0]:
                size = 6 + struct.unpack_from("<H", pending, 2)[0]
                device.write(pending[:size])
                del pending[:size]
                os.write(master, bytes(device.output))
                device.output.clear()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield os.ttyname(slave), device
    stop.set()
    thread.join()
    os.close(master)
    os.close(slave)


def test_serial_transport_ping(pty_device):
    from sevedo.driver import SerialTransport
    port, device = pty_device
    with SerialTransport(port, 115_200, latency=0.05) as transport:
        driver = HostDriver(transport, expected=CONFIG)
        assert driver.ping() == CONFIG.device_info()
        assert driver.status().busy is False


def test_serial_transport_timeout(pty_device):
    import time
    from sevedo.driver import SerialTransport
    port, device = pty_device
    device.faults = ["drop", "drop"]
    started = time.monotonic()
    with SerialTransport(port, 115_200, latency=0.05) as transport:
        with pytest.raises(ReplyTimeout, match="^no reply to PING within 52.3 ms: 0 of at least 7 bytes arrived$"):
            HostDriver(transport, expected=CONFIG).ping()
    # Two attempts, each a reply wait and a drain window of 52.3 ms.
    assert time.monotonic() - started < 1.0
    assert device.requests == [Command.PING, Command.PING]


# The RTL of the host interface, through the simulated UART.

def byte_cycles(count):
    """Return the clock cycles of ``count`` bytes on CONFIG's line."""
    return count * 10 * CONFIG.divisor


class SilentDevice(wiring.Component):
    """A device whose tx pin stays idle."""

    rx: In(1)
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.tx.eq(1)
        return m


def test_silent_device_times_out():
    transport = SimulatedTransport(CONFIG, device=SilentDevice())
    with pytest.raises(ReplyTimeout, match=r"^no reply to PING within 0\.09 ms: 0 of at least 7 bytes arrived$"):
        HostDriver(transport, expected=CONFIG).ping()
    # Two attempts, each a reply wait of 6 + 8 + 5 + 8 byte times and a
    # drain window of 6 + 8 + 8: the request, the idle timeout, the reply
    # header and the slack.
    assert transport.cycles == byte_cycles(2 * (27 + 22))


@pytest.fixture(scope="module")
def rtl():
    """Yield the RTL device shared by the tests below, and the names of the malformed frames it has replied to."""
    transport = SimulatedTransport(CONFIG)
    yield transport, set()
    transport.close()


def exchange(transport, frame, wait=24):
    """Send raw bytes and return the decoded reply, whose header must arrive within ``wait`` byte times after them."""
    transport.write(frame)
    header = transport.read(5, (len(frame) + wait) * 10 / CONFIG.baud)
    assert len(header) == 5, f"no reply header within {wait} byte times after the frame, only {header.hex()}"
    size = struct.unpack_from("<H", header, 3)[0] + 2
    rest = transport.read(size, (size + 8) * 10 / CONFIG.baud)
    return decode_reply(header + rest)


def ping(transport):
    return exchange(transport, encode_request(Command.PING))


def corrupt(frame):
    return frame[:-1] + bytes([frame[-1] ^ 0x01])


def minilm_tile(tokens, outputs):
    from sim.cases import minilm_tile
    xq, wq = minilm_tile(CONFIG.rmc.quant, np.random.default_rng(0))
    return xq.select_rows(slice(0, tokens)), wq.select_rows(slice(0, outputs))


def test_rtl_ping(rtl):
    transport, _ = rtl
    assert ping(transport) == (Command.PING, Status.OK, CONFIG.device_info().pack())


def request(command, payload=b""):
    return encode_request(command, payload)


MALFORMED = {
    "bad_crc": (corrupt(request(Command.PING)), Command.PING, Status.BAD_CRC),
    "bad_crc_of_unknown_command": (corrupt(request(0x09)), 0x09, Status.BAD_CRC),
    "unknown_command": (request(0x09), 0x09, Status.UNKNOWN_COMMAND),
    "command_zero": (request(0x00), 0x00, Status.UNKNOWN_COMMAND),
    "ping_with_payload": (request(Command.PING, b"\x00"), Command.PING, Status.BAD_LENGTH),
    "status_with_payload": (request(Command.STATUS, b"\x00\x00"), Command.STATUS, Status.BAD_LENGTH),
    "run_short": (request(Command.RUN, b"\x01\x00\x18"), Command.RUN, Status.BAD_LENGTH),
    "read_long": (request(Command.READ, bytes(5)), Command.READ, Status.BAD_LENGTH),
    "write_partial_word": (request(Command.WRITE, write_payload(Target.WEIGHTS, 0, bytes(20))),
                           Command.WRITE, Status.BAD_LENGTH),
    # Sync bytes and a whole PING follow the length; the device drops them.
    "length_above_max": (bytes([0xA5, Command.WRITE]) + struct.pack("<H", CONFIG.max_payload + 1)
                         + b"\xa5" * 6 + request(Command.PING), Command.WRITE, Status.BAD_LENGTH),
    "sync_only": (b"\xa5", 0x00, Status.TIMEOUT),
    "truncated_header": (b"\xa5\x01\x00", Command.PING, Status.TIMEOUT),
    "truncated_payload": (request(Command.WRITE, write_payload(Target.WEIGHTS, 0, bytes(21)))[:12],
                          Command.WRITE, Status.TIMEOUT),
    "write_weights_past_end": (request(Command.WRITE, write_payload(Target.WEIGHTS, 23, bytes(42))),
                               Command.WRITE, Status.OVERRUN),
    "write_activations_past_end": (request(Command.WRITE, write_payload(Target.ACTIVATIONS, 48, bytes(11))),
                                   Command.WRITE, Status.OVERRUN),
    "read_past_end": (request(Command.READ, read_payload(2, 2)), Command.READ, Status.OVERRUN),
    "run_zero_tokens": (request(Command.RUN, run_payload(0, 24)), Command.RUN, Status.BAD_ARGUMENT),
    "run_tokens_above_results": (request(Command.RUN, run_payload(4, 8)), Command.RUN, Status.BAD_ARGUMENT),
    "run_zero_beats": (request(Command.RUN, run_payload(1, 0)), Command.RUN, Status.BAD_ARGUMENT),
    "run_beats_above_weights": (request(Command.RUN, run_payload(1, 32)), Command.RUN, Status.BAD_ARGUMENT),
    "run_beats_within_coarse_group": (request(Command.RUN, run_payload(1, 12)), Command.RUN,
                                      Status.BAD_ARGUMENT),
    "run_activations_above_buffer": (request(Command.RUN, run_payload(3, 24)), Command.RUN,
                                     Status.BAD_ARGUMENT),
    "bytes_before_sync": (b"\x00\x13\xff\x5a" + request(Command.STATUS), Command.STATUS, Status.OK),
}


def send_malformed(transport, name):
    """Send the malformed frame ``name``, check its reply, and wait until the device takes frames again."""
    frame, echoed, status = MALFORMED[name]
    before = transport.cycles
    reply = exchange(transport, frame)
    assert reply[:2] == (echoed, status)
    if status != Status.OK:
        assert reply[2] == b""
    if name == "length_above_max":
        # The device drops the rest of the frame, which is still on the
        # line, until the line has been idle for its timeout.
        transport.idle(transport.pending + 1 + CONFIG.timeout_bytes + 2)
    # The device replied within its own timeout: the frame, the idle
    # timeout, the reply and the slack.
    assert transport.cycles - before <= byte_cycles(len(frame) + 2 * CONFIG.timeout_bytes + 7 + 8)


@pytest.mark.parametrize("name", MALFORMED)
def test_rtl_malformed_frame(rtl, name):
    transport, answered = rtl
    send_malformed(transport, name)
    answered.add(name)
    assert ping(transport) == (Command.PING, Status.OK, CONFIG.device_info().pack())
    # No reply to the dropped bytes or a second reply followed.
    assert transport.read(64, 0) == b""


def test_rtl_bad_frames_counted(rtl):
    transport, _ = rtl
    driver = HostDriver(transport, expected=CONFIG)
    before = driver.status().bad_frames
    for name in ("bad_crc", "unknown_command", "read_past_end"):
        send_malformed(transport, name)
    assert driver.status().bad_frames == before + 3


@pytest.mark.parametrize("call, message", [
    (lambda driver: driver.run(0, 24), "RUN failed: the device replied BAD_ARGUMENT"),
    (lambda driver: driver.write(Target.WEIGHTS, 23, bytes(42)), "WRITE failed: the device replied OVERRUN"),
    (lambda driver: driver.read(2, 2), "READ failed: the device replied OVERRUN"),
], ids=["run", "write", "read"])
def test_rtl_driver_error(rtl, call, message):
    transport, _ = rtl
    driver = HostDriver(transport, expected=CONFIG)
    driver.ping()
    before = transport.cycles
    with pytest.raises(ProtocolError, match=f"^{message}$"):
        call(driver)
    # The reply and one quiet window of the drain, each within the request,
    # the idle timeout, a reply and the slack.
    assert transport.cycles - before <= byte_cycles(2 * (55 + CONFIG.timeout_bytes + 7 + 8))
    assert driver.ping() == CONFIG.device_info()


def test_rtl_minilm_tile_after_errors(rtl):
    transport, answered = rtl
    # The malformed frames that this device has not seen yet, as when the
    # test runs alone.
    for name in sorted(MALFORMED.keys() - answered):
        send_malformed(transport, name)
    xq, wq = minilm_tile(3, 2)
    run = HostDriver(transport, expected=CONFIG, retries=0).run_tile(xq, wq)
    assert np.array_equal(run.bits, FP32.to_bits(residual_matmul(xq, wq)))
    # 48 activation words hold 2 tokens of 24 beats.
    assert [(status.results, status.beats) for status in run.statuses] == [(2, 48), (1, 24)]
    assert all(status.cycles >= status.beats for status in run.statuses)


def test_board_run_simulated(capsys):
    from sevedo.cli import main
    assert main(["board", "run", "--simulate", "--tokens", "1", "--outputs", "2", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["mismatches"], summary["results"], summary["runs"], summary["beats"]) == (0, 2, 1, 24)
    assert "mismatches: 0 of 2 residual outputs differ from the golden model" in out


@pytest.mark.parametrize("argv, message", [
    (["--port", "/nonexistent/ttyUSB9"], "--port '/nonexistent/ttyUSB9' cannot be opened: No such file or directory"),
    (["--port", "/dev/ttyUSB9", "--baud", "0"], "--baud must be a positive integer, not 0"),
    (["--port", "/dev/ttyUSB9", "--rows", "4"],
     "--rows applies only with --simulate; a board reports its own configuration"),
    (["--simulate", "--outputs", "0"], "--outputs must be a positive integer, not 0"),
    (["--simulate", "--tokens", "0"], "--tokens must be a positive integer, not 0"),
    (["--simulate", "--layer", "layer6.query"], "--layer must be one of the MiniLM linear layers "
                                                "(layer0.query ... layer5.ffn_out), not 'layer6.query'"),
], ids=["missing_port", "baud", "rows_with_port", "outputs", "tokens", "layer"])
def test_board_run_usage_error(capsys, argv, message):
    from sevedo.cli import main
    assert main(["board", "run", *argv]) == 2
    assert capsys.readouterr().err == f"sevedo board run: error: {message}\n"


class WrongResultDevice(FakeDevice):
    """A device that flips the lowest bit of the second result word's first output."""

    def compute(self, tokens, beats):
        super().compute(tokens, beats)
        self.results[self.config.result_word_bytes] ^= 0x01


def test_board_run_mismatch(monkeypatch, capsys):
    import sevedo.board
    from sevedo.cli import main
    monkeypatch.setattr(sevedo.board, "_open_transport", lambda args: WrongResultDevice())
    assert main(["board", "run", "--port", "fake", "--tokens", "2", "--outputs", "3"]) == 1
    out = capsys.readouterr().out
    # Token 1 of each of the two row tiles is wrong: outputs 0 and 2.
    assert re.search(r"^mismatch: token 1, output 0: device 0x[0-9a-f]{8}, golden 0x[0-9a-f]{8}$", out, re.M)
    assert re.search(r"^mismatch: token 1, output 2: device 0x[0-9a-f]{8}, golden 0x[0-9a-f]{8}$", out, re.M)
    assert "mismatches: 2 of 6 residual outputs differ from the golden model" in out
    assert "board run: 4 of 6 outputs bit-exact" in out


def test_board_run_device_error(monkeypatch, capsys):
    import sevedo.board
    from sevedo.cli import main
    monkeypatch.setattr(sevedo.board, "_open_transport", lambda args: FakeDevice(faults=["drop", "drop"]))
    assert main(["board", "run", "--port", "fake"]) == 1
    assert re.fullmatch(r"sevedo board run: error: no reply to PING within [0-9.]+ ms: 0 of at least 7 bytes "
                        r"arrived; check that the board is programmed and that --baud 115200 is its design's "
                        r"bit rate\n", capsys.readouterr().err)
