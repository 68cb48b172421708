"""cocotb testbench of the low-rank vector core (LVC).

Environment:
- ``SEVEDO_STIMULUS``: an ``.npz`` written by :func:`sim.lvc.simulate_lvc`.
  It contains the packed load beats, the FP16 activations, the expected FP32
  output beats, the runtime ``rank``, ``k`` and ``n`` and a cycle limit. Its
  handshake settings are the probability that the source offers an
  activation in a cycle, and that the sink accepts an output.
- ``SEVEDO_RESULTS``: where the testbench writes the received outputs, the
  cycle count and the core's counters.

The testbench first writes every load beat, one per cycle, and then streams
the activations. Inputs are driven and outputs sampled at the falling clock
edge, after the combinational logic has settled, so the same code behaves
alike in Icarus and Verilator. Every output is compared with the golden model
after the run; the test fails on the first mismatch and reports how many
there are.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from golden.formats import FP32


@cocotb.test()
async def lvc_matches_golden(dut):
    """Load the factors, stream every activation through the LVC and compare all outputs with the golden model."""
    stimulus = np.load(os.environ["SEVEDO_STIMULUS"])
    loads, activations, expected = stimulus["loads"], stimulus["activations"], stimulus["expected"]
    valid_probability = float(stimulus["valid_probability"])
    ready_probability = float(stimulus["ready_probability"])
    max_cycles = int(stimulus["max_cycles"])
    rng = np.random.default_rng(int(stimulus["seed"]))
    lanes = expected.shape[1]
    out_bytes = int(stimulus["output_bytes"])

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.load__valid.value = 0
    dut.rank.value = int(stimulus["rank"])
    dut.k.value = int(stimulus["k"])
    dut.n.value = int(stimulus["n"])
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0

    # The load stream is always ready, so every cycle writes one beat.
    for row in loads:
        dut.load__payload.value = int.from_bytes(row.tobytes(), "little")
        dut.load__valid.value = 1
        await FallingEdge(dut.clk)
    dut.load__valid.value = 0

    words = [int(word) for word in activations]
    received = np.zeros((len(expected), out_bytes), dtype=np.uint8)
    sent = outputs = cycles = 0
    always = valid_probability >= 1.0 and ready_probability >= 1.0
    offer = accept = True
    while outputs < len(expected):
        await FallingEdge(dut.clk)
        cycles += 1
        if not always:
            offer = bool(rng.random() < valid_probability)
            accept = bool(rng.random() < ready_probability)
        offering = offer and sent < len(words)
        if offering:
            dut.i__payload.value = words[sent]
        dut.i__valid.value = int(offering)
        dut.o__ready.value = int(accept)
        await ReadOnly()
        if offering and dut.i__ready.value:
            sent += 1
        if accept and dut.o__valid.value:
            value = dut.o__payload.value.to_unsigned()
            received[outputs] = np.frombuffer(value.to_bytes(out_bytes, "little"), dtype=np.uint8)
            outputs += 1
        if cycles > max_cycles:
            raise AssertionError(f"timed out after {cycles} cycles: {sent} of {len(words)} activations sent, "
                                 f"{outputs} of {len(expected)} output beats received")
    await FallingEdge(dut.clk)
    counters = {name: getattr(dut, name).value.to_unsigned()
                for name in ("busy_cycles", "input_stall_cycles", "output_stall_cycles")}

    got = received[:, :lanes * 4].copy().view("<u4").reshape(len(received), lanes)
    np.savez(os.environ["SEVEDO_RESULTS"], outputs=got, cycles=cycles, **counters)
    mismatched = np.argwhere(got != expected)
    dut._log.info("%d output beats, %d activations, %d cycles, %d busy, %d mismatches",
                  len(got), len(words), cycles, counters["busy_cycles"], len(mismatched))
    if len(mismatched):
        beat, lane = mismatched[0]
        raise AssertionError(
            f"{len(mismatched)} of {got.size} outputs differ from the golden model; first at output beat {beat}, "
            f"lane {lane}: RTL 0x{got[beat, lane]:08x} ({FP32.from_bits(got[beat, lane])}), "
            f"golden 0x{expected[beat, lane]:08x} ({FP32.from_bits(expected[beat, lane])})")
