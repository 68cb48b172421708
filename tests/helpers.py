"""Helpers shared by the test modules."""

import gc
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator


def assert_constructor_raises(factory, arguments, error, message):
    """Check that ``factory(*arguments)`` raises ``error`` with exactly ``message``.

    A component whose constructor raises is never elaborated, and Amaranth
    warns about that when the object is garbage collected. The object is
    collected here, under a filter, so that the warning does not appear in a
    later test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            factory(*arguments)
        gc.collect()


@dataclass(frozen=True)
class StreamRun:
    """Result of :func:`drive_streams`.

    Attributes
    ----------
    received : list of int
        Output payloads, in order.
    cycles : int
        Cycles from the first one to the one that received the last payload, inclusive.
    final : object
        What ``finish(ctx)`` returned after the last payload, or None.
    """

    received: list
    cycles: int
    final: object


def drive_streams(dut, payloads, expected_count, *, valid_probability=1.0, ready_probability=1.0, seed=0,
                  cycles_per_payload=20, finish=None):
    """Send integer payloads into ``dut.i`` and collect ``expected_count`` integer payloads from ``dut.o``.

    Each cycle the source offers its next payload with ``valid_probability``
    and the sink is ready with ``ready_probability``, from a seeded generator.
    The run fails after ``cycles_per_payload * len(payloads) + 100`` cycles.
    """
    rng = np.random.default_rng(seed)
    received = []
    outcome = {}

    async def testbench(ctx):
        sent = 0
        for cycle in range(cycles_per_payload * len(payloads) + 100):
            offer = sent < len(payloads) and rng.random() < valid_probability
            accept = rng.random() < ready_probability
            if offer:
                ctx.set(dut.i.payload.as_value(), payloads[sent])
            ctx.set(dut.i.valid, offer)
            ctx.set(dut.o.ready, accept)
            took = offer and ctx.get(dut.i.ready)
            if accept and ctx.get(dut.o.valid):
                received.append(ctx.get(dut.o.payload.as_value()))
            await ctx.tick()
            sent += took
            if len(received) == expected_count:
                outcome["cycles"] = cycle + 1
                outcome["final"] = finish(ctx) if finish is not None else None
                return
        raise AssertionError(f"timed out: {sent} of {len(payloads)} sent, {len(received)} received")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return StreamRun(received=received, cycles=outcome["cycles"], final=outcome["final"])


def as_rows(layout, values):
    """Pack received integer payloads into the byte rows that :func:`sim.packing.unpack` reads."""
    size = (layout.size + 7) // 8
    return np.array([list(v.to_bytes(size, "little")) for v in values], dtype=np.uint8).reshape(len(values), size)
