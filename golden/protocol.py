"""Framed host protocol of the accelerator's UART interface.

The host sends request frames and the device answers each one with exactly
one reply frame. All integers are little-endian.

Request::

    0xA5 | command (1) | length (2) | payload (length bytes) | CRC (2)

Reply::

    0x5A | command (1) | status (1) | length (2) | payload (length bytes) | CRC (2)

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no
reflection, no final XOR) over every byte between the sync byte and the CRC.
A reply echoes the command byte of its request; a reply to a frame whose
command byte never arrived echoes 0.

Commands and their payloads:

``PING``
    Request: empty. Reply: a :class:`DeviceInfo`.
``WRITE``
    Request: target (1), word offset (2), then whole words of the target's
    word size. Reply: empty. The device stores words as they arrive, so after
    an error reply (``BAD_CRC``, ``BAD_LENGTH``, ``TIMEOUT`` or ``OVERRUN``)
    the words that the frame addressed are undefined until the host sends
    the frame again. A frame that gets ``BUSY`` stores nothing.
``RUN``
    Request: tokens (2), beats per row (2). Starts a tile: for each token
    ``t`` and beat ``b`` the core reads weight word ``b`` and activation word
    ``t * beats + b``, and writes result word ``t``. Reply: empty, sent when
    the tile has started.
``STATUS``
    Request: empty. Reply: a :class:`DeviceStatus`.
``READ``
    Request: result word offset (2), word count (2). Reply: the words.

Errors answer with a status other than ``OK`` and an empty payload. The
device checks, in this order: the length against its maximum payload (at
once, after the length field; it then drops input until the line has been
idle for its timeout), the CRC, the command, the length that the command
needs, then the arguments. A frame that stops before its end gets a
``TIMEOUT`` reply after the device's timeout.
"""

import enum
import struct
from dataclasses import astuple, dataclass

__all__ = [
    "REQUEST_SYNC", "REPLY_SYNC", "Command", "Target", "Status", "ProtocolError",
    "crc16", "encode_request", "encode_reply", "decode_reply", "reply_length",
    "DeviceInfo", "DeviceStatus", "write_payload", "run_payload", "read_payload",
]

REQUEST_SYNC = 0xA5
REPLY_SYNC = 0x5A
MAX_LENGTH = 0xFFFF

# Bytes of a reply before its payload (sync, command, status, length), and of its CRC.
REPLY_HEADER_BYTES = 5
CRC_BYTES = 2


class Command(enum.IntEnum):
    PING = 0x01
    WRITE = 0x02
    RUN = 0x03
    STATUS = 0x04
    READ = 0x05


class Target(enum.IntEnum):
    """Buffers that ``WRITE`` can fill."""
    WEIGHTS = 0
    ACTIVATIONS = 1


class Status(enum.IntEnum):
    OK = 0
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_COMMAND = 3
    TIMEOUT = 4
    OVERRUN = 5
    BUSY = 6
    BAD_ARGUMENT = 7


class ProtocolError(RuntimeError):
    """A reply that breaks the frame format, or a device that answered with an error status."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def crc16(data, crc=0xFFFF):
    """Return the CRC-16/CCITT-FALSE of ``data``, continuing from ``crc``.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    for byte in bytes(data):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _check_length(payload):
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"payload must be at most {MAX_LENGTH} bytes, not {len(payload)}")


def encode_request(command, payload=b""):
    """Return the bytes of a request frame.

    >>> encode_request(Command.PING).hex()
    'a5010000acfb'
    """
    payload = bytes(payload)
    _check_length(payload)
    body = bytes([int(command) & 0xFF]) + struct.pack("<H", len(payload)) + payload
    return bytes([REQUEST_SYNC]) + body + struct.pack("<H", crc16(body))


def encode_reply(command, status, payload=b""):
    """Return the bytes of a reply frame, as the device sends it."""
    payload = bytes(payload)
    _check_length(payload)
    body = bytes([int(command) & 0xFF, int(status)]) + struct.pack("<H", len(payload)) + payload
    return bytes([REPLY_SYNC]) + body + struct.pack("<H", crc16(body))


def reply_length(header):
    """Return the total length of a reply frame from its first ``REPLY_HEADER_BYTES`` bytes."""
    if len(header) < REPLY_HEADER_BYTES:
        raise ValueError(f"a reply header has {REPLY_HEADER_BYTES} bytes, not {len(header)}")
    if header[0] != REPLY_SYNC:
        raise ProtocolError(f"reply sync byte must be 0x{REPLY_SYNC:02x}, not 0x{header[0]:02x}")
    return REPLY_HEADER_BYTES + struct.unpack_from("<H", header, 3)[0] + CRC_BYTES


def decode_reply(frame):
    """Return ``(command, status, payload)`` of a whole reply frame.

    Raises
    ------
    ProtocolError
        If the sync byte, the length or the CRC is wrong. The status is
        returned, not raised, so that the caller can tell device errors apart.
    """
    frame = bytes(frame)
    if len(frame) < REPLY_HEADER_BYTES + CRC_BYTES:
        raise ProtocolError(f"a reply has at least {REPLY_HEADER_BYTES + CRC_BYTES} bytes, not {len(frame)}")
    expected = reply_length(frame[:REPLY_HEADER_BYTES])
    if len(frame) != expected:
        raise ProtocolError(f"reply length field says {expected} bytes, but the frame has {len(frame)}")
    body, (crc,) = frame[1:-CRC_BYTES], struct.unpack("<H", frame[-CRC_BYTES:])
    if crc16(body) != crc:
        raise ProtocolError(f"reply CRC is 0x{crc:04x}, but its bytes give 0x{crc16(body):04x}")
    try:
        status = Status(body[1])
    except ValueError:
        raise ProtocolError(f"reply status must be one of {[int(s) for s in Status]}, not {body[1]}") from None
    return body[0], status, body[4:]


def _u16(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an integer from 0 to 65535, not {value!r}")
    return value


def write_payload(target, offset, words):
    """Return the payload of ``WRITE``: ``words`` (bytes, whole words) into ``target`` from word ``offset``."""
    return struct.pack("<BH", int(Target(target)), _u16("offset", offset)) + bytes(words)


def run_payload(tokens, beats):
    """Return the payload of ``RUN`` for ``tokens`` tokens of ``beats`` beats each."""
    return struct.pack("<HH", _u16("tokens", tokens), _u16("beats", beats))


def read_payload(offset, count):
    """Return the payload of ``READ`` for ``count`` result words from word ``offset``."""
    return struct.pack("<HH", _u16("offset", offset), _u16("count", count))


@dataclass(frozen=True)
class DeviceInfo:
    """The ``PING`` reply: what the device was built with.

    Word counts are buffer depths; word sizes are in bytes. ``timeout_bytes``
    is the idle time, in byte times of the UART, after which the device drops
    an unfinished frame. ``clock_hz`` and ``baud`` are those the design was
    generated for.
    """

    MAGIC = b"SVD1"
    FORMAT = "<4sHHHHBHHHHHHHHII"

    rows: int
    lanes: int
    coarse_group: int
    fine_group: int
    shift_bits: int
    weight_words: int
    activation_words: int
    result_words: int
    weight_word_bytes: int
    activation_word_bytes: int
    result_word_bytes: int
    max_payload: int
    timeout_bytes: int
    clock_hz: int
    baud: int

    def pack(self):
        return struct.pack(self.FORMAT, self.MAGIC, *astuple(self))

    @classmethod
    def unpack(cls, payload):
        if len(payload) != struct.calcsize(cls.FORMAT):
            raise ProtocolError(
                f"PING reply must have {struct.calcsize(cls.FORMAT)} bytes, not {len(payload)}")
        magic, *fields = struct.unpack(cls.FORMAT, payload)
        if magic != cls.MAGIC:
            raise ProtocolError(f"PING reply must start with {cls.MAGIC!r}, not {magic!r}")
        return cls(*fields)


@dataclass(frozen=True)
class DeviceStatus:
    """The ``STATUS`` reply.

    ``busy`` is high while a tile runs. ``cycles`` counts clock cycles from
    the start of the last tile to its last result; ``beats`` counts input
    beats that the core accepted, and ``stalls`` the cycles of the tile in
    which the core accepted none. ``results`` counts result words written by
    the last tile, and ``bad_frames`` the error replies since reset (it
    saturates).
    """

    FORMAT = "<BIIIHH"

    busy: bool
    cycles: int
    beats: int
    stalls: int
    results: int
    bad_frames: int

    def pack(self):
        return struct.pack(self.FORMAT, int(self.busy), self.cycles, self.beats, self.stalls,
                           self.results, self.bad_frames)

    @classmethod
    def unpack(cls, payload):
        if len(payload) != struct.calcsize(cls.FORMAT):
            raise ProtocolError(
                f"STATUS reply must have {struct.calcsize(cls.FORMAT)} bytes, not {len(payload)}")
        flags, *fields = struct.unpack(cls.FORMAT, payload)
        return cls(bool(flags & 1), *fields)
