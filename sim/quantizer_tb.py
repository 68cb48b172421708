"""cocotb testbench of the online HGQ quantizer.

Environment:
- ``SEVEDO_STIMULUS``: an ``.npz`` written by
  :func:`sim.quantizer.simulate_quantizer` with the packed input and
  expected output beats of every segment, where each segment ends, the
  segments' handshake settings (probability that the source offers a beat in
  a cycle, and that the sink accepts one) and the quantizer's parameters.
- ``SEVEDO_RESULTS``: where the testbench writes the received output beats,
  and per segment the ``invalid`` flag and the cycle count.

The segments run one after another, each after a reset, so that each one
starts with ``invalid`` low. Inputs are driven and outputs sampled at the
falling clock edge, after the combinational logic has settled, as in
:mod:`sim.rmc_tb`. The test fails when a segment stops making progress or an
output is undefined. It logs every segment whose outputs differ from the
golden model, and leaves the verdict on the values to the caller.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from golden.hgq import HGQConfig
from sim.quantizer import describe_mismatch

RESET_CYCLES = 3


async def _reset(dut):
    # Wait for the falling edge first, because signals cannot be written in
    # the read-only phase where the previous segment ended.
    await FallingEdge(dut.clk)
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    for _ in range(RESET_CYCLES):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


async def _run_segment(dut, payloads, received, valid_probability, ready_probability, rng):
    """Send ``payloads``, fill ``received`` (uint8 rows) with the output beats and return the cycle count."""
    out_bytes = received.shape[1]
    sent = outputs = cycles = 0
    always = valid_probability >= 1.0 and ready_probability >= 1.0
    offer = accept = True
    while outputs < len(received):
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
        if cycles > 8 * len(payloads) / min(valid_probability, ready_probability) + 1000:
            raise AssertionError(f"timed out after {cycles} cycles: {sent} of {len(payloads)} beats sent, "
                                 f"{outputs} of {len(received)} output beats received")
    return cycles


@cocotb.test()
async def quantizer_matches_golden(dut):
    """Stream every segment through the quantizer and record its output beats and invalid flag."""
    stimulus = np.load(os.environ["SEVEDO_STIMULUS"])
    beats, expected = stimulus["beats"], stimulus["expected"]
    ends = stimulus["segment_ends"]
    names = stimulus["segment_names"]
    rng = np.random.default_rng(int(stimulus["seed"]))
    quant = HGQConfig(int(stimulus["coarse_group"]), int(stimulus["fine_group"]), int(stimulus["shift_bits"]))
    lanes = int(stimulus["lanes"])

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    received = np.zeros_like(expected)
    invalid = np.zeros(len(ends), dtype=bool)
    cycles = np.zeros(len(ends), dtype=np.int64)
    start = 0
    for index, end in enumerate(ends):
        await _reset(dut)
        payloads = [int.from_bytes(row.tobytes(), "little") for row in beats[start:end]]
        cycles[index] = await _run_segment(
            dut, payloads, received[start:end], float(stimulus["valid_probability"][index]),
            float(stimulus["ready_probability"][index]), rng)
        invalid[index] = bool(dut.invalid.value)
        message = describe_mismatch(quant, lanes, received[start:end], expected[start:end])
        if message:
            dut._log.error("segment %s: %s", names[index], message)
        dut._log.info("segment %s: %d beats, %d cycles, invalid %d",
                      names[index], end - start, cycles[index], invalid[index])
        start = end
    np.savez(os.environ["SEVEDO_RESULTS"], outputs=received, invalid=invalid, cycles=cycles)
