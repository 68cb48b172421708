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
from cocotb.triggers import FallingEdge, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from golden.formats import FP32


CLOCK_PERIOD_NS = 10


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


def _timeout(cycles, sent, inputs, received, outputs):
    return AssertionError(f"timed out after {cycles} cycles: {sent} of {inputs} activation beats sent, "
                          f"{received} of {outputs} outputs received")


async def _stream_with_stalls(dut, activations, outputs, limit, progress, rng, valid_probability,
                              ready_probability):
    """Offer and accept beats with the given probabilities, deciding anew every cycle."""
    received = []
    sent = cycles = 0
    while len(received) < outputs:
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
            raise _timeout(cycles, sent, len(activations), len(received), outputs)
    return received, cycles


async def _stream_at_full_rate(dut, activations, outputs, limit, progress):
    """Offer every beat at once and accept every output, waking only when a handshake can happen.

    Most cycles of a layer are the RMC working through row tiles, with no
    handshake on either stream. Instead of stepping through them one by one,
    the testbench sleeps until ``x__ready`` or ``y__valid`` rises. The cycle
    count comes from the simulation time, so it equals that of
    :func:`_stream_with_stalls` at probability 1.
    """
    received = []
    sent = 0
    dut.y__ready.value = 1
    start = get_sim_time(unit="ns")

    def elapsed():
        return round((get_sim_time(unit="ns") - start) / CLOCK_PERIOD_NS)

    while len(received) < outputs:
        await FallingEdge(dut.clk)
        offer = sent < len(activations)
        if offer:
            dut.x__payload.value = activations[sent]
        dut.x__valid.value = int(offer)
        await ReadOnly()
        input_fires = offer and bool(dut.x__ready.value)
        output_fires = bool(dut.y__valid.value)
        if input_fires:
            sent += 1
        if output_fires:
            received.append(dut.y__payload.value.to_unsigned())
            if progress is not None:
                progress.update(1)
        if elapsed() > limit:
            raise _timeout(elapsed(), sent, len(activations), len(received), outputs)
        if not input_fires and not output_fires:
            wake = [RisingEdge(dut.y__valid), Timer((limit + 1 - elapsed()) * CLOCK_PERIOD_NS, unit="ns")]
            if offer:
                wake.append(RisingEdge(dut.x__ready))
            await First(*wake)
    return received, elapsed()


@cocotb.test()
async def core_matches_golden(dut):
    """Load the layer, stream every token and compare all outputs with the golden model."""
    stimulus = np.load(os.environ["SEVEDO_STIMULUS"])
    expected = stimulus["expected"]
    rng = np.random.default_rng(int(stimulus["seed"]))
    valid_probability = float(stimulus["valid_probability"])
    ready_probability = float(stimulus["ready_probability"])
    rows = expected.shape[1]

    cocotb.start_soon(Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start())
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
    progress = _progress(len(expected))
    limit = int(50 * (len(activations) + len(expected)) / min(valid_probability, ready_probability) + 200000)
    if valid_probability == 1.0 and ready_probability == 1.0:
        received, cycles = await _stream_at_full_rate(dut, activations, len(expected), limit, progress)
    else:
        received, cycles = await _stream_with_stalls(dut, activations, len(expected), limit, progress, rng,
                                                     valid_probability, ready_probability)
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
