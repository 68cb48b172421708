"""cocotb testbench of the residual matrix core.

Environment:
- ``SEVEDO_STIMULUS``: an ``.npz`` written by :func:`sim.rmc.write_stimulus`
  with the packed beats, the expected FP32 outputs and the handshake
  settings (probability that the source offers a beat in a cycle, and that
  the sink accepts one).
- ``SEVEDO_RESULTS``: where the testbench writes the received outputs and
  the cycle count.
- ``SEVEDO_PROGRESS=1``: show a progress bar.

Inputs are driven and outputs sampled at the falling clock edge, after the
combinational logic has settled, so the same code behaves alike in Icarus and
Verilator. Every output is compared with the golden model after the run; the
test fails on the first mismatch and reports how many there are.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from golden.formats import FP32


def _progress(total):
    if os.environ.get("SEVEDO_PROGRESS", "0") in ("", "0"):
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="out", desc="rmc simulation", mininterval=1.0)


@cocotb.test()
async def rmc_matches_golden(dut):
    """Stream every beat through the RMC and compare all outputs with the golden model."""
    stimulus = np.load(os.environ["SEVEDO_STIMULUS"])
    beats, expected = stimulus["beats"], stimulus["expected"]
    valid_probability = float(stimulus["valid_probability"])
    ready_probability = float(stimulus["ready_probability"])
    rng = np.random.default_rng(int(stimulus["seed"]))
    rows = expected.shape[1]
    out_bytes = int(stimulus["output_bytes"])

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0

    payloads = [int.from_bytes(row.tobytes(), "little") for row in beats]
    received = np.zeros((len(expected), out_bytes), dtype=np.uint8)
    sent = outputs = cycles = 0
    progress = _progress(len(expected))
    always = valid_probability >= 1.0 and ready_probability >= 1.0
    offer = accept = True
    while outputs < len(expected):
        await FallingEdge(dut.clk)
        cycles += 1
        if not always:
            offer = bool(rng.random() < valid_probability)
            accept = bool(rng.random() < ready_probability)
        offering = offer and sent < len(payloads)
        if offering:
            dut.i__payload.value = payloads[sent]
        dut.i__valid.value = int(offering)
        dut.o__ready.value = int(accept)
        await ReadOnly()
        if offering and dut.i__ready.value:
            sent += 1
        if accept and dut.o__valid.value:
            value = dut.o__payload.value.to_unsigned()
            received[outputs] = np.frombuffer(value.to_bytes(out_bytes, "little"), dtype=np.uint8)
            outputs += 1
            if progress is not None:
                progress.update(1)
        if cycles > 8 * len(payloads) / max(min(valid_probability, ready_probability), 0.05) + 1000:
            raise AssertionError(f"timed out after {cycles} cycles: {sent} of {len(payloads)} beats sent, "
                                 f"{outputs} of {len(expected)} outputs received")
    if progress is not None:
        progress.close()

    got = _unpack_y(received, rows)
    np.savez(os.environ["SEVEDO_RESULTS"], outputs=got, cycles=cycles)
    mismatched = np.argwhere(got != expected)
    dut._log.info("%d outputs, %d beats, %d cycles, %d mismatches", got.size, len(payloads), cycles, len(mismatched))
    if len(mismatched):
        beat, row = mismatched[0]
        raise AssertionError(
            f"{len(mismatched)} of {got.size} outputs differ from the golden model; first at output beat {beat}, "
            f"row {row}: RTL 0x{got[beat, row]:08x} ({FP32.from_bits(got[beat, row])}), "
            f"golden 0x{expected[beat, row]:08x} ({FP32.from_bits(expected[beat, row])})")


def _unpack_y(received, rows):
    """Split packed output payloads into ``rows`` FP32 encodings each (the ``y`` array is the whole payload)."""
    words = received[:, :rows * 4].copy().view("<u4")
    return words.reshape(len(received), rows)
