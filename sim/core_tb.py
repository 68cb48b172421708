"""cocotb testbench of the heterogeneous core: load a layer, stream tokens, check every output.

Environment: ``SEVEDO_STIMULUS`` (an ``.npz`` written by :func:`sim.core.simulate_core`),
``SEVEDO_RESULTS`` (where the outputs, cycle count and counters go) and
``SEVEDO_PROGRESS=1`` for a progress bar. Inputs are driven and outputs
sampled at the falling clock edge, after the logic has settled.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from golden.formats import FP32


def _ints(rows):
    return [int.from_bytes(row.tobytes(), "little") for row in rows]


def _progress(total):
    if os.environ.get("SEVEDO_PROGRESS", "0") in ("", "0"):
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="beat", desc="core simulation", mininterval=1.0)


async def _load(dut, port, payloads):
    """Write every load beat, one per cycle; the load ports are always ready."""
    valid, payload = getattr(dut, f"{port}__valid"), getattr(dut, f"{port}__payload")
    for value in payloads:
        payload.value = value
        valid.value = 1
        await FallingEdge(dut.clk)
    valid.value = 0


@cocotb.test()
async def core_matches_golden(dut):
    """Load the layer, stream every token and compare all outputs with the golden model."""
    stimulus = np.load(os.environ["SEVEDO_STIMULUS"])
    expected = stimulus["expected"]
    rng = np.random.default_rng(int(stimulus["seed"]))
    valid_probability = float(stimulus["valid_probability"])
    ready_probability = float(stimulus["ready_probability"])
    rows = expected.shape[1]

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.x__valid.value = 0
    dut.y__ready.value = 0
    dut.load__valid.value = 0
    if "lvc_load" in stimulus.files:
        dut.lvc_load__valid.value = 0
    dut.shape.value = int(stimulus["shape"])
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    await _load(dut, "load", _ints(stimulus["load"]))
    if "lvc_load" in stimulus.files:
        await _load(dut, "lvc_load", _ints(stimulus["lvc_load"]))

    activations = _ints(stimulus["activations"])
    received = []
    sent = cycles = 0
    progress = _progress(len(expected))
    limit = 50 * (len(activations) + len(expected)) / min(valid_probability, ready_probability) + 200000
    while len(received) < len(expected):
        await FallingEdge(dut.clk)
        cycles += 1
        offer = sent < len(activations) and rng.random() < valid_probability
        accept = rng.random() < ready_probability
        if offer:
            dut.x__payload.value = activations[sent]
        dut.x__valid.value = int(offer)
        dut.y__ready.value = int(accept)
        await ReadOnly()
        if offer and dut.x__ready.value:
            sent += 1
        if accept and dut.y__valid.value:
            received.append(dut.y__payload.value.to_unsigned())
            if progress is not None:
                progress.update(1)
        if cycles > limit:
            raise AssertionError(f"timed out after {cycles} cycles: {sent} of {len(activations)} activation beats "
                                 f"sent, {len(received)} of {len(expected)} outputs received")
    if progress is not None:
        progress.close()
    await FallingEdge(dut.clk)
    # The counters port packs busy, stall_input and stall_output, 32 bits each, first field lowest.
    packed = dut.counters.value.to_unsigned()
    counters = {name: (packed >> (32 * index)) & 0xFFFFFFFF
                for index, name in enumerate(("busy", "stall_input", "stall_output"))}

    mask = (1 << FP32.width) - 1
    got = np.array([[(value >> (FP32.width * row)) & mask for row in range(rows)] for value in received],
                   dtype=np.uint32)
    np.savez(os.environ["SEVEDO_RESULTS"], outputs=got, cycles=cycles, **counters)
    mismatched = np.argwhere(got != expected)
    dut._log.info("%d outputs, %d cycles, counters %s, %d mismatches", got.size, cycles, counters, len(mismatched))
    if len(mismatched):
        beat, row = mismatched[0]
        raise AssertionError(
            f"{len(mismatched)} of {got.size} outputs differ from the golden model; first at output beat {beat}, "
            f"row {row}: RTL 0x{got[beat, row]:08x} ({FP32.from_bits(got[beat, row])}), "
            f"golden 0x{expected[beat, row]:08x} ({FP32.from_bits(expected[beat, row])})")
