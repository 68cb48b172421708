"""Host driver of the accelerator's UART interface (the protocol of :mod:`golden.protocol`).

:class:`HostDriver` sends request frames over a transport and checks every
reply. A transport is any object with

- ``write(data)``: queue bytes for the device;
- ``read(size, timeout)``: return up to ``size`` bytes, fewer when
  ``timeout`` seconds pass first;
- ``close()``;
- ``baud``: the line rate in bit/s, which gives the line time of a frame;
- ``latency``: seconds that a reply may arrive later than its line time
  (operating system and USB adapter buffering).

:class:`SerialTransport` is a serial port; ``sim.host.SimulatedTransport``
runs the RTL in the Amaranth simulator.

Every read has a timeout that the driver derives from the frames in flight,
the device's idle timeout and the transport's latency, so no call waits
forever.
"""

import logging
import math
import struct
from dataclasses import dataclass, fields

import numpy as np

from golden.compiler import LayerOutputs, run_layer
from golden.formats import FP32
from golden.hgq import HGQConfig, HGQTensor
from golden.protocol import (
    CRC_BYTES, REPLY_HEADER_BYTES, Command, DeviceInfo, DeviceStatus, ProtocolError, Status, Target,
    decode_reply, encode_request, read_payload, reply_length, run_payload, write_payload)
from hw.config import RMCConfig
from hw.host import HostConfig
from sim.packing import pack, unpack

__all__ = [
    "SerialTransport", "HostDriver", "ReplyTimeout", "TileRun", "LayerRun", "config_from_info",
    "pack_weight_words", "pack_activation_words",
]

logger = logging.getLogger(__name__)

# Bits on the line per byte: 8N1 has a start bit, 8 data bits and a stop bit.
BITS_PER_BYTE = 10
# Byte times added to every reply wait for the device's own processing
# (buffer reads, the reply framer); the RTL needs a few clock cycles.
SLACK_BYTES = 8
# Idle timeout assumed before the first PING reply gives the device's own.
DEFAULT_TIMEOUT_BYTES = 1024
# Bytes of the WRITE payload before the words: target (1) and word offset (2).
WRITE_HEADER_BYTES = 3
# A line that still carries bytes after this many quiet windows is reported, not drained further.
MAX_DRAIN_WINDOWS = 8
# Payload of the PING reply, which may exceed a small max_payload.
DEVICE_INFO_BYTES = struct.calcsize(DeviceInfo.FORMAT)
# Errors that line noise can cause; the driver sends the frame again once after them.
RETRY_STATUSES = (Status.BAD_CRC, Status.TIMEOUT)


class SerialTransport:
    """A serial port as the driver's transport (pyserial).

    Parameters
    ----------
    port : str
        Device path, such as ``/dev/ttyUSB1``.
    baud : int
        Bit rate; it must equal the ``baud`` that the design was built for.
    latency : float
        Seconds that a reply may arrive later than the line time of the bytes
        in flight: USB-serial adapters buffer bytes for up to 16 ms by default.

    Raises
    ------
    OSError
        If the port cannot be opened (``serial.SerialException`` is one).
    ValueError
        If ``baud`` or ``latency`` is not positive.
    """

    def __init__(self, port, baud=115_200, *, latency=0.1):
        import serial

        if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
            raise ValueError(f"baud must be a positive integer, not {baud!r}")
        if not latency > 0:
            raise ValueError(f"latency must be a positive number of seconds, not {latency!r}")
        self.baud = baud
        self.latency = float(latency)
        self._serial = serial.Serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=latency)
        # Bytes that arrived before the port was opened belong to no request.
        self._serial.reset_input_buffer()

    def write(self, data):
        self._serial.write(bytes(data))

    def read(self, size, timeout):
        if self._serial.timeout != timeout:
            self._serial.timeout = timeout
        return bytes(self._serial.read(size))

    def close(self):
        self._serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class ReplyTimeout(TimeoutError):
    """No complete reply arrived in time.

    Attributes
    ----------
    command : Command
        The request that got no complete reply.
    received : bytes
        The bytes of the reply that did arrive.
    """

    def __init__(self, message, command, received):
        super().__init__(message)
        self.command = command
        self.received = received


@dataclass(frozen=True, eq=False)
class TileRun:
    """Outputs and counters of :meth:`HostDriver.run_tile`.

    Attributes
    ----------
    bits : ndarray of uint32, shape (T, N)
        FP32 encodings of the results.
    statuses : list of DeviceStatus
        The STATUS reply after each RUN, in order.
    """

    bits: np.ndarray
    statuses: list

    @property
    def y(self):
        """The results as float32, shape (T, N)."""
        return FP32.from_bits(self.bits)

    @property
    def runs(self):
        return len(self.statuses)

    @property
    def cycles(self):
        """Clock cycles of all RUNs, each from its start to its last result."""
        return sum(status.cycles for status in self.statuses)

    @property
    def beats(self):
        return sum(status.beats for status in self.statuses)

    @property
    def stalls(self):
        return sum(status.stalls for status in self.statuses)


@dataclass(frozen=True, eq=False)
class LayerRun:
    """Outputs of :meth:`HostDriver.run_layer`.

    Attributes
    ----------
    outputs : golden.compiler.LayerOutputs
        ``residual`` comes from the device; ``lowrank``, ``activations`` and
        ``hidden`` from the golden model on the host; ``output`` combines them
        with the bias as :func:`golden.compiler.run_layer` does.
    tile : TileRun
        The device's residual path with its counters.
    """

    outputs: LayerOutputs
    tile: TileRun


def config_from_info(info):
    """Return the :class:`hw.host.HostConfig` that a device with the PING reply ``info`` was built with.

    Raises
    ------
    ProtocolError
        If the reply describes no valid configuration, or word sizes that
        differ from those of its layouts.
    """
    try:
        quant = HGQConfig(coarse_group=info.coarse_group, fine_group=info.fine_group, shift_bits=info.shift_bits)
        config = HostConfig(
            rmc=RMCConfig(rows=info.rows, lanes=info.lanes, quant=quant),
            weight_words=info.weight_words, activation_words=info.activation_words,
            result_words=info.result_words, clock_hz=info.clock_hz, baud=info.baud,
            max_payload=info.max_payload, timeout_bytes=info.timeout_bytes)
    except ValueError as error:
        raise ProtocolError(f"the PING reply describes an invalid configuration: {error}") from None
    if config.device_info() != info:
        raise ProtocolError(f"the PING reply's word sizes differ from those of its layouts: "
                            f"{_describe_differences(info, config.device_info())}")
    return config


def _describe_differences(got, expected):
    return ", ".join(f"{field.name} {getattr(got, field.name)} (expected {getattr(expected, field.name)})"
                     for field in fields(DeviceInfo) if getattr(got, field.name) != getattr(expected, field.name))


def _check_quantization(config, name, tensor):
    if not isinstance(tensor, HGQTensor):
        raise TypeError(f"{name} must be an HGQTensor, not {type(tensor).__name__}")
    if tensor.config != config.rmc.quant:
        raise ValueError(f"{name} must be quantized with the device's {config.rmc.quant}, not {tensor.config}")


def _group_indices(config, beats):
    """Return the fine and coarse group of each beat of a row of ``beats`` beats."""
    quant, lanes = config.rmc.quant, config.rmc.lanes
    step = np.arange(beats)
    return step * lanes // quant.fine_group, step * lanes // quant.coarse_group


def pack_weight_words(config, wq):
    """Pack HGQ weights (N x K) into weight words, one row tile of ``rows`` output channels at a time.

    N is padded with zero rows up to a multiple of ``rows``. The fields are
    those of the RMC input beats that ``sim.stimulus.make_rmc_stimulus``
    builds. Returns uint8 of shape (row tiles, K / lanes, weight word bytes).
    """
    _check_quantization(config, "wq", wq)
    rows, lanes = config.rmc.rows, config.rmc.lanes
    n, k = wq.shape
    tiles, beats = -(-n // rows), k // lanes
    padded = tiles * rows
    codes = np.zeros((padded, k), np.int8)
    codes[:n] = wq.codes
    shifts = np.zeros((padded, wq.shifts.shape[1]), np.uint8)
    shifts[:n] = wq.shifts
    scales = np.zeros((padded, wq.scales.shape[1]), np.uint16)
    scales[:n] = wq.scales.view(np.uint16)
    fine, coarse = _group_indices(config, beats)
    count = tiles * beats
    words = pack(config.weight_word_layout(), {
        "w": codes.reshape(tiles, rows, beats, lanes).transpose(0, 2, 1, 3).reshape(count, rows, lanes),
        "w_shift": shifts.reshape(tiles, rows, -1)[:, :, fine].transpose(0, 2, 1).reshape(count, rows),
        "w_scale": scales.reshape(tiles, rows, -1)[:, :, coarse].transpose(0, 2, 1).reshape(count, rows),
    }, count)
    return words.reshape(tiles, beats, -1)


def pack_activation_words(config, xq):
    """Pack HGQ activations (T x K) into activation words: uint8 of shape (T, K / lanes, activation word bytes)."""
    _check_quantization(config, "xq", xq)
    lanes = config.rmc.lanes
    tokens, k = xq.shape
    beats = k // lanes
    fine, coarse = _group_indices(config, beats)
    count = tokens * beats
    words = pack(config.activation_word_layout(), {
        "x": xq.codes.reshape(count, lanes),
        "x_shift": xq.shifts[:, fine].reshape(count),
        "x_scale": xq.scales.view(np.uint16)[:, coarse].reshape(count),
    }, count)
    return words.reshape(tokens, beats, -1)


def _as_words(words, word_bytes, name):
    """Return ``words`` (bytes or a uint8 array of rows) as bytes of whole words."""
    if isinstance(words, np.ndarray):
        if words.dtype != np.uint8:
            raise ValueError(f"{name} must be bytes or a uint8 array, not dtype {words.dtype}")
        words = words.tobytes()
    words = bytes(words)
    if len(words) % word_bytes:
        raise ValueError(f"{name} must be whole words of {word_bytes} bytes, not {len(words)} bytes")
    return words


class HostDriver:
    """Driver of one device behind a transport.

    Parameters
    ----------
    transport
        See the module docstring.
    expected : HostConfig, optional
        The configuration that the device must report in its PING reply.
    retries : int
        How often a frame is sent again after a ``BAD_CRC`` or ``TIMEOUT``
        reply, or after no reply at all. A ``RUN`` is never sent again after
        no reply, because the device may have started it.
    """

    def __init__(self, transport, *, expected=None, retries=1):
        if expected is not None and not isinstance(expected, HostConfig):
            raise TypeError(f"expected must be a HostConfig, not {type(expected).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        self.transport = transport
        self.expected = expected
        self.retries = retries
        self.info = None
        self.config = None

    # Timing. Every wait is the line time of the bytes in flight plus the
    # transport's latency, so it scales with the baud rate.

    @property
    def _timeout_bytes(self):
        if self.info is not None:
            return self.info.timeout_bytes
        if self.expected is not None:
            return self.expected.timeout_bytes
        return DEFAULT_TIMEOUT_BYTES

    def _line_time(self, byte_count):
        return byte_count * BITS_PER_BYTE / self.transport.baud

    def _wait_time(self, byte_count):
        return self._line_time(byte_count + SLACK_BYTES) + self.transport.latency

    def _drain(self, request):
        """Drop input until the line has been quiet long enough for the device to take a new frame.

        After some errors the device drops input until its line has been
        idle for its timeout, and the rest of ``request`` may still be on
        the way to it. So the quiet window covers both.
        """
        window = self._wait_time(len(request) + self._timeout_bytes)
        dropped = 0
        for _ in range(MAX_DRAIN_WINDOWS):
            data = self.transport.read(4096, window)
            if not data:
                if dropped:
                    logger.info("dropped %d bytes after an error", dropped)
                return
            dropped += len(data)
        raise ProtocolError(f"the line did not go quiet: {dropped} bytes arrived in {MAX_DRAIN_WINDOWS} "
                            f"windows of {window * 1e3:.3g} ms")

    # Frames.

    def _receive(self, command, request):
        """Read one reply frame and return ``(echoed command, status, payload)``."""
        # The request may still be on the line, and a frame that loses a byte
        # is answered only after the device's idle timeout.
        timeout = self._wait_time(len(request) + self._timeout_bytes + REPLY_HEADER_BYTES)
        header = self.transport.read(REPLY_HEADER_BYTES, timeout)
        if len(header) < REPLY_HEADER_BYTES:
            raise ReplyTimeout(
                f"no reply to {command.name} within {timeout * 1e3:.3g} ms: {len(header)} of at least "
                f"{REPLY_HEADER_BYTES + CRC_BYTES} bytes arrived", command, header)
        try:
            total = reply_length(header)
        except ProtocolError as error:
            raise ProtocolError(f"invalid reply to {command.name}: {error}") from None
        length = total - REPLY_HEADER_BYTES - CRC_BYTES
        if self.info is not None and length > max(self.info.max_payload, DEVICE_INFO_BYTES):
            raise ProtocolError(f"invalid reply to {command.name}: its length field is {length} bytes, above the "
                                f"device's max_payload {self.info.max_payload}")
        rest_bytes = total - REPLY_HEADER_BYTES
        rest_timeout = self._wait_time(rest_bytes)
        rest = self.transport.read(rest_bytes, rest_timeout)
        if len(rest) < rest_bytes:
            raise ReplyTimeout(
                f"reply to {command.name} timed out: {REPLY_HEADER_BYTES + len(rest)} of {total} bytes "
                f"arrived, the last {rest_bytes - len(rest)} not within {rest_timeout * 1e3:.3g} ms",
                command, header + rest)
        try:
            echoed, status, payload = decode_reply(header + rest)
        except ProtocolError as error:
            raise ProtocolError(f"invalid reply to {command.name}: {error}") from None
        if echoed != command and not (status != Status.OK and echoed == 0):
            raise ProtocolError(f"the reply to {command.name} echoes command 0x{echoed:02x}, "
                                f"not 0x{int(command):02x}")
        return echoed, status, payload

    def transact(self, command, payload=b""):
        """Send one request, retrying after line noise, and return the payload of its ``OK`` reply.

        Raises
        ------
        ProtocolError
            If the device replies with an error status (the exception's
            ``status``), or if the reply breaks the frame format.
        ReplyTimeout
            If no complete reply arrives, also after the retries.
        """
        command = Command(command)
        request = encode_request(command, payload)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            self.transport.write(request)
            try:
                _, status, reply = self._receive(command, request)
            except ReplyTimeout as error:
                self._drain(request)
                if last or command == Command.RUN:
                    raise
                logger.warning("%s; sending the frame again", error)
                continue
            except ProtocolError:
                self._drain(request)
                raise
            if status == Status.OK:
                return reply
            self._drain(request)
            if status not in RETRY_STATUSES or last:
                raise ProtocolError(f"{command.name} failed: the device replied {status.name}", status)
            logger.warning("%s got the reply %s; sending the frame again", command.name, status.name)

    # Commands.

    def ping(self, expected=None):
        """Send ``PING`` and return the device's :class:`DeviceInfo`.

        The device must match ``expected`` (a HostConfig), or else the
        driver's own ``expected``, when one is given.

        Raises
        ------
        ProtocolError
            If the reply is not a DeviceInfo, or the device differs from the
            expected configuration.
        """
        info = DeviceInfo.unpack(self.transact(Command.PING))
        config = config_from_info(info)
        expected = expected if expected is not None else self.expected
        if expected is not None and expected.device_info() != info:
            raise ProtocolError(f"the device differs from the expected configuration: "
                                f"{_describe_differences(info, expected.device_info())}")
        self.info, self.config = info, config
        return info

    def _device(self):
        if self.config is None:
            self.ping()
        return self.config

    def write(self, target, offset, words):
        """Write whole words (bytes or rows of a uint8 array) into ``target`` from word ``offset``.

        The words go in frames of at most ``max_payload`` bytes.
        """
        config = self._device()
        target = Target(target)
        word_bytes = config.weight_word_bytes if target == Target.WEIGHTS else config.activation_word_bytes
        words = _as_words(words, word_bytes, "words")
        per_frame = (config.max_payload - WRITE_HEADER_BYTES) // word_bytes
        count = len(words) // word_bytes
        for start in range(0, count, per_frame):
            chunk = words[start * word_bytes:(start + per_frame) * word_bytes]
            self.transact(Command.WRITE, write_payload(target, offset + start, chunk))

    def run(self, tokens, beats):
        """Start a tile of ``tokens`` tokens with ``beats`` beats per row."""
        reply = self.transact(Command.RUN, run_payload(tokens, beats))
        if reply:
            raise ProtocolError(f"the reply to RUN must be empty, not {len(reply)} bytes")

    def status(self):
        """Return the device's :class:`DeviceStatus`."""
        return DeviceStatus.unpack(self.transact(Command.STATUS))

    def wait(self, timeout):
        """Poll ``STATUS`` until the device is not busy, for at least ``timeout`` seconds, and return the status.

        Each poll takes at least the line time of its two frames, so the
        number of polls follows from ``timeout``.

        Raises
        ------
        TimeoutError
            If the device is still busy after the polls.
        """
        poll = self._line_time(len(encode_request(Command.STATUS))
                               + REPLY_HEADER_BYTES + struct.calcsize(DeviceStatus.FORMAT) + CRC_BYTES)
        polls = math.ceil(timeout / poll) + 1
        for _ in range(polls):
            status = self.status()
            if not status.busy:
                return status
        raise TimeoutError(f"the device was still busy after {polls} STATUS polls ({timeout * 1e3:.3g} ms)")

    def read(self, offset, count):
        """Read ``count`` result words from word ``offset``; returns uint8 of shape (count, result word bytes)."""
        config = self._device()
        word_bytes = config.result_word_bytes
        per_frame = config.max_payload // word_bytes
        rows = []
        for start in range(0, count, per_frame):
            size = min(per_frame, count - start)
            reply = self.transact(Command.READ, read_payload(offset + start, size))
            if len(reply) != size * word_bytes:
                raise ProtocolError(f"the reply to READ of {size} words must have {size * word_bytes} bytes, "
                                    f"not {len(reply)}")
            rows.append(reply)
        return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(count, word_bytes)

    # Tiles.

    def tile_timeout(self, tokens, beats):
        """Return the seconds that a RUN of ``tokens`` x ``beats`` may take: four times one beat a cycle, plus 1000 cycles."""
        return 4 * (tokens * beats + 1000) / self._device().clock_hz

    def run_tile(self, xq, wq, *, progress=None):
        """Compute ``Y = X W^T`` of HGQ activations ``xq`` (T x K) and weights ``wq`` (N x K) on the device.

        The weights go in row tiles of ``rows`` output channels and the
        activations in chunks of as many tokens as the activation and result
        buffers hold. Each RUN's results are read back. Whichever of the two
        operands would be sent more often is sent in the inner loop, so that
        the line carries the fewest bytes.

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(done, total)`` after each RUN.

        Returns
        -------
        TileRun
            The bits equal :func:`golden.residual.residual_matmul` when the
            device is correct.

        Raises
        ------
        ValueError
            If the tensors do not fit the device: another quantization, K not
            a multiple of the lanes or too long for the weight buffer.
        """
        config = self._device()
        _check_quantization(config, "xq", xq)
        _check_quantization(config, "wq", wq)
        tokens, k = xq.shape
        n = wq.shape[0]
        if wq.shape[1] != k:
            raise ValueError(f"xq and wq must have the same K, not {k} and {wq.shape[1]}")
        rows, lanes = config.rmc.rows, config.rmc.lanes
        beats = k // lanes
        if beats > config.weight_words:
            raise ValueError(f"K must be at most {config.weight_words * lanes} (weight_words {config.weight_words} "
                             f"x lanes {lanes}), not {k}")
        chunk = min(config.result_words, config.activation_words // beats)
        if chunk == 0:
            raise ValueError(f"K must be at most {config.activation_words * lanes} (activation_words "
                             f"{config.activation_words} x lanes {lanes}), not {k}")

        weights = pack_weight_words(config, wq)
        activations = pack_activation_words(config, xq)
        tiles = weights.shape[0]
        starts = range(0, tokens, chunk)
        total = tiles * len(starts)
        # With the chunks in the outer loop, each weight tile is sent once
        # per chunk. With the weight tiles outside, each chunk is sent once per tile.
        weights_inner = len(starts) * weights.nbytes <= tiles * activations.nbytes
        if weights_inner:
            order = [(tile, start) for start in starts for tile in range(tiles)]
        else:
            order = [(tile, start) for tile in range(tiles) for start in starts]

        bits = np.zeros((tokens, tiles * rows), dtype=np.uint32)
        statuses = []
        loaded = {Target.WEIGHTS: None, Target.ACTIVATIONS: None}
        for tile, start in order:
            count = min(chunk, tokens - start)
            if loaded[Target.WEIGHTS] != tile:
                self.write(Target.WEIGHTS, 0, weights[tile])
                loaded[Target.WEIGHTS] = tile
            if loaded[Target.ACTIVATIONS] != start:
                self.write(Target.ACTIVATIONS, 0, activations[start:start + count])
                loaded[Target.ACTIVATIONS] = start
            self.run(count, beats)
            status = self.wait(self.tile_timeout(count, beats))
            if status.results != count or status.beats != count * beats:
                raise ProtocolError(f"the RUN of {count} tokens x {beats} beats reports {status.results} results "
                                    f"and {status.beats} beats, not {count} and {count * beats}")
            statuses.append(status)
            results = unpack(config.result_word_layout(), self.read(0, count))["y"]
            bits[start:start + count, tile * rows:(tile + 1) * rows] = results.astype(np.uint32)
            if progress is not None:
                progress(len(statuses), total)
        return TileRun(bits=bits[:, :n], statuses=statuses)

    def run_layer(self, layer, x, *, progress=None):
        """Run a compiled layer on activations ``x`` (T x K): the residual path on the device, the rest on the host.

        The host smooths, rounds and quantizes ``x`` and computes the low-rank
        path with :func:`golden.compiler.run_layer`. The device computes
        ``Y_res``, and the output is ``fp32(fp32(Y_lr + Y_res) + b)``.
        """
        host = run_layer(layer, x)
        tile = self.run_tile(host.activations, layer.residual, progress=progress)
        bias = layer.bias if layer.bias is not None else np.zeros(layer.shape[0], dtype=FP32.dtype)
        output = (host.lowrank + tile.y) + bias
        outputs = LayerOutputs(lowrank=host.lowrank, residual=tile.y, output=output,
                               activations=host.activations, hidden=host.hidden)
        return LayerRun(outputs=outputs, tile=tile)
