"""The low-rank vector core and its units in the Amaranth simulator, against the golden model.

The sliced multiplier is compared with SoftFloat and NumPy on FP16 edge
classes and random operands, with weights narrowed to every significand
width. FPDotLanes is compared with an FP32 accumulation in NumPy, and the
whole core with :func:`golden.lowrank.lowrank_matmul` on a MiniLM tile,
random factors and edge cases, with and without stalls on both streams.
"""

import functools
import re

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.formats import FP16, FP32, FP32_CANONICAL_NAN
from golden.lowrank import SVDMPConfig, lowrank_matmul, round_significand
from hw.lvc import (
    FPDotLanes,
    LowRankVectorCore,
    LVCConfig,
    SlicedMultiplier,
    dot_beat_layout,
    dot_output_layout,
    generate_verilog,
    max_slices_for,
    product_layout,
)
from sim.lvc import LowRankCase, make_lvc_case, make_lvc_stimulus
from sim.packing import pack, unpack
from sim.runner import untriggered_always_blocks

from . import test_hw_fp as fp_vectors
from .helpers import as_rows, assert_constructor_raises, drive_streams

# Stream drivers

def stream_through(dut, payloads, expected_count, **handshake):
    """Send integer payloads into ``dut.i``; return the ``expected_count`` payloads of ``dut.o`` and the cycles taken."""
    run = drive_streams(dut, payloads, expected_count, cycles_per_payload=40, **handshake)
    return run.received, run.cycles


def packed_ints(packed):
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def run_core(config, case, *, valid_probability=1.0, ready_probability=1.0, seed=0):
    """Write the loads of ``case``, stream its activations through a core of ``config`` and collect the outputs.

    Returns ``(outputs, stimulus, counters)``: the FP32 encodings of every
    output beat, uint32 of shape (beats, lanes), the
    :class:`sim.lvc.LVCStimulus`, and the final value of each counter, with
    ``cycles`` for the streaming cycles.
    """
    core = LowRankVectorCore(config)
    stimulus = make_lvc_stimulus(config, case)
    rng = np.random.default_rng(seed)
    loads = packed_ints(stimulus.loads)
    activations = [int(word) for word in stimulus.activations]
    expected_beats = len(stimulus.expected)
    per_token = config.token_issue_cycles(case.bits, case.k, case.n) + case.k + 20
    limit = 4 * case.tokens * per_token / min(valid_probability, ready_probability) + 1000
    received = []
    counters = {}

    async def testbench(ctx):
        ctx.set(core.rank, stimulus.rank)
        ctx.set(core.k, stimulus.k)
        ctx.set(core.n, stimulus.n)
        for word in loads:
            ctx.set(core.load.payload.as_value(), word)
            ctx.set(core.load.valid, 1)
            await ctx.tick()
        ctx.set(core.load.valid, 0)

        sent = cycles = 0
        while len(received) < expected_beats:
            offer = sent < len(activations) and rng.random() < valid_probability
            accept = rng.random() < ready_probability
            if offer:
                ctx.set(core.i.payload, activations[sent])
            ctx.set(core.i.valid, offer)
            ctx.set(core.o.ready, accept)
            took = offer and ctx.get(core.i.ready)
            if accept and ctx.get(core.o.valid):
                received.append([int(value) for value in ctx.get(core.o.payload.y)])
            await ctx.tick()
            cycles += 1
            sent += took
            assert cycles < limit, f"timed out: {sent} of {len(activations)} sent, {len(received)} received"
        counters.update(cycles=cycles, busy=ctx.get(core.busy_cycles),
                        input_stall=ctx.get(core.input_stall_cycles),
                        output_stall=ctx.get(core.output_stall_cycles))

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return np.array(received, dtype=np.uint32).reshape(-1, config.lanes), stimulus, counters


def assert_outputs_match(got, expected, unit):
    """Assert that ``got`` equals ``expected`` encoding for encoding, naming the first mismatch."""
    assert got.shape == expected.shape, f"{unit}: {got.shape} outputs, expected {expected.shape}"
    mismatched = np.argwhere(got != expected)
    if len(mismatched):
        first = tuple(mismatched[0])
        raise AssertionError(
            f"{unit}: {len(mismatched)} of {got.size} outputs differ from the golden model; first at "
            f"{first}: RTL {int(got[first]):#010x}, golden {int(expected[first]):#010x}")


def canonical_fp32(values):
    """Return the FP32 encodings of float32 ``values``, with every NaN as the canonical NaN."""
    values = np.asarray(values, dtype=np.float32)
    bits = FP32.to_bits(values).astype(np.uint32)
    bits[np.isnan(values)] = FP32_CANONICAL_NAN
    return bits


def fp16_product(pairs):
    """Return the float32 products of FP16 encoding pairs, as the golden model forms them."""
    a, b = np.array(pairs, dtype=np.int64).T
    with np.errstate(invalid="ignore"):
        return FP16.from_bits(a).astype(np.float32) * FP16.from_bits(b).astype(np.float32)


# Sliced multiplier

# (slice_bits, max_slices): 4-bit slices over the 11-bit significand,
# 4-bit slices of weights with at most 8 bits, one slice of the whole
# significand, 3-bit slices, and 1-bit slices.
SLICINGS = [(4, 3), (4, 2), (11, 1), (3, 4), (1, 11)]


@functools.cache
def fp16_operand_pairs():
    """Return FP16 operand pairs from the FP unit tests: all pairs of edge classes and random pairs."""
    pairs = fp_vectors.fp16_product_vectors()
    # The first 23 * 23 pairs are every pair of the 23 edge classes.
    classes = 23 * 23
    rng = np.random.default_rng(21)
    return pairs[:classes] + [pairs[int(i)] for i in rng.choice(np.arange(classes, len(pairs)), 600, replace=False)]


def narrowed_beats(lanes, slice_bits, max_slices, per_width, seed):
    """Return ``(a, b, slices)`` of beats whose weights are rounded to every width the slicing covers.

    ``a`` (beats,) and ``b`` (beats, lanes) are FP16 encodings. The beats of
    width ``bits`` take ``ceil(bits / slice_bits)`` slices. Beats of the
    narrowest widths run once more with ``max_slices``, more than they need.
    """
    rng = np.random.default_rng(seed)
    pairs = np.array(fp16_operand_pairs(), dtype=np.int64)
    a_all, b_all, slices_all = [], [], []
    for bits in range(1, min(FP16.significand_bits, slice_bits * max_slices) + 1):
        chosen = pairs[rng.choice(len(pairs), per_width * lanes, replace=False)]
        a = chosen[::lanes, 0]
        with np.errstate(over="ignore", invalid="ignore"):
            b = FP16.to_bits(round_significand(FP16.from_bits(chosen[:, 1]), bits)).reshape(per_width, lanes)
        needed = -(-bits // slice_bits)
        a_all.append(a)
        b_all.append(b)
        slices_all.append(np.full(per_width, needed))
        if bits <= 2 and needed < max_slices:
            a_all.append(a)
            b_all.append(b)
            slices_all.append(np.full(per_width, max_slices))
    return np.concatenate(a_all), np.concatenate(b_all), np.concatenate(slices_all)


def multiply_beats(unit, a, b, slices, **handshake):
    """Stream the beats through ``unit``; return its products (beats, lanes) as uint32 and the cycle count."""
    count = len(a)
    layout = dot_beat_layout(unit.lanes, unit.max_slices)
    fields = {"a": a, "b": b, "slices": slices, "first": np.ones(count), "last": np.ones(count)}
    received, cycles = stream_through(unit, packed_ints(pack(layout, fields, count)), count, **handshake)
    products = unpack(product_layout(unit.lanes), as_rows(product_layout(unit.lanes), received))["product"]
    return products.astype(np.uint32), cycles


@pytest.mark.parametrize("slice_bits, max_slices", SLICINGS, ids=[f"{s}x{n}" for s, n in SLICINGS])
def test_sliced_multiplier_matches_references(slice_bits, max_slices):
    lanes = 2
    per_width = 12 if max_slices > 4 else 40
    a, b, slices = narrowed_beats(lanes, slice_bits, max_slices, per_width, seed=slice_bits * 16 + max_slices)
    unit = SlicedMultiplier(lanes, slice_bits, max_slices)
    products, cycles = multiply_beats(unit, a, b, slices)

    pairs = np.stack([np.repeat(a, lanes), b.reshape(-1)], axis=1)
    assert_outputs_match(products.reshape(-1), canonical_fp32(fp16_product(pairs)), "SlicedMultiplier against NumPy")
    softfloat = np.array(fp_vectors.softfloat_fp16_product([(int(x), int(y)) for x, y in pairs]), np.int64)
    softfloat = np.where(np.isnan(FP32.from_bits(softfloat)), FP32_CANONICAL_NAN, softfloat).astype(np.uint32)
    assert_outputs_match(products.reshape(-1), softfloat, "SlicedMultiplier against SoftFloat")
    # At full rate each beat takes its slices. The count adds the cycle that
    # accepts the first beat and the one that receives the last products.
    assert cycles == int(slices.sum()) + 2


def test_sliced_multiplier_covers_edge_classes():
    a, b, slices = narrowed_beats(2, 4, 3, 40, seed=67)
    products = fp16_product(np.stack([np.repeat(a, 2), b.reshape(-1)], axis=1))
    assert set(slices.tolist()) == {1, 2, 3}
    assert np.isnan(products).sum() >= 10, "too few NaN products"
    assert np.isinf(products).sum() >= 10, "too few infinite products"
    assert (products == 0).sum() >= 10, "too few zero products"
    b_values = FP16.from_bits(b)
    assert ((b_values != 0) & (np.abs(b_values) < FP16.min_normal)).sum() >= 10, "too few subnormal weights"


def test_sliced_multiplier_under_stalls():
    a, b, slices = narrowed_beats(3, 4, 3, 10, seed=5)
    unit = SlicedMultiplier(3, 4, 3)
    products, _ = multiply_beats(unit, a, b, slices, valid_probability=0.5, ready_probability=0.4, seed=6)
    pairs = np.stack([np.repeat(a, 3), b.reshape(-1)], axis=1)
    assert_outputs_match(products.reshape(-1), canonical_fp32(fp16_product(pairs)), "SlicedMultiplier")


def test_too_few_slices_drop_low_weight_bits():
    # 1 + 2**-10 needs 11 significand bits. One 4-bit slice reads it as 1.0.
    one_plus_ulp = int(FP16.to_bits(np.float16(1 + 2 ** -10)))
    two = int(FP16.to_bits(np.float16(2.0)))
    unit = SlicedMultiplier(1, 4, 3)
    products, _ = multiply_beats(unit, np.array([two, two]), np.array([[one_plus_ulp], [one_plus_ulp]]),
                                 np.array([1, 3]))
    assert FP32.from_bits(products[:, 0]).tolist() == [2.0, 2 + 2 ** -9]


# FPDotLanes

def dot_sequences(lanes, max_slices, slice_bits, count, seed):
    """Return beats of ``count`` random sums and their golden FP32 results.

    Sums have 1 to 7 beats. Weights have random widths, and a beat takes
    the slices of its widest lane. Some sums contain FP16 limits, Inf, NaN
    and signed zeros.
    """
    rng = np.random.default_rng(seed)
    special = FP16.to_bits(np.array([65504, -65504, 2 ** -24, -2 ** -24, 0.0, -0.0, np.inf, -np.inf, np.nan],
                                    dtype=np.float16))
    a_beats, b_beats, slices, first, last, sums = [], [], [], [], [], []
    for index in range(count):
        length = int(rng.integers(1, 8))
        a = FP16.to_bits((rng.standard_normal(length) * 2.0 ** rng.integers(-14, 8, length)).astype(np.float16))
        b = (rng.standard_normal((length, lanes)) * 2.0 ** rng.integers(-14, 4, (length, lanes))).astype(np.float16)
        widest = min(FP16.significand_bits, slice_bits * max_slices)
        bits = rng.integers(1, widest + 1, (length, lanes))
        b = FP16.to_bits(round_significand(b, bits))
        if index % 4 == 3:
            a[rng.integers(0, length)] = rng.choice(special)
            # 65504 needs every significand bit, so the weight gets the widest slicing.
            row, lane = rng.integers(0, length), rng.integers(0, lanes)
            b[row, lane] = rng.choice(special)
            bits[row, lane] = widest
        if index % 6 == 5:
            a[:] = FP16.to_bits(np.float16(-0.0))
        with np.errstate(invalid="ignore", over="ignore"):
            total = np.zeros(lanes, np.float32)
            for beat in range(length):
                total = total + FP16.from_bits(a[beat]).astype(np.float32) * FP16.from_bits(b[beat]).astype(np.float32)
        a_beats.append(a)
        b_beats.append(b)
        slices.append(-(-bits.max(axis=1) // slice_bits))
        first.append(np.arange(length) == 0)
        last.append(np.arange(length) == length - 1)
        sums.append(canonical_fp32(total))
    fields = {
        "a": np.concatenate(a_beats), "b": np.concatenate(b_beats), "slices": np.concatenate(slices),
        "first": np.concatenate(first), "last": np.concatenate(last),
    }
    return fields, np.array(sums)


@pytest.mark.parametrize("handshake", [(1.0, 1.0), (0.6, 0.5)], ids=["full-rate", "stalls"])
def test_dot_lanes_match_golden_accumulation(handshake):
    lanes, slice_bits, max_slices = 3, 4, 3
    fields, sums = dot_sequences(lanes, max_slices, slice_bits, 60, seed=8)
    count = len(fields["a"])
    payloads = packed_ints(pack(dot_beat_layout(lanes, max_slices), fields, count))
    unit = FPDotLanes(lanes, slice_bits, max_slices)
    received, cycles = stream_through(unit, payloads, len(sums), valid_probability=handshake[0],
                                      ready_probability=handshake[1], seed=9)
    y = unpack(dot_output_layout(lanes), as_rows(dot_output_layout(lanes), received))["y"].astype(np.uint32)
    assert_outputs_match(y, sums, "FPDotLanes")
    if handshake == (1.0, 1.0):
        # Each beat takes its slices. The count adds the cycle that accepts
        # the first beat, the add of the last one and the cycle that receives its sum.
        assert cycles == int(fields["slices"].sum()) + 3


def test_dot_lanes_signed_zero_sum():
    # (+0) + (-0 * 1) is +0 under RNE, and a sum restarts from +0 after `last`.
    minus_zero = int(FP16.to_bits(np.float16(-0.0)))
    one = int(FP16.to_bits(np.float16(1.0)))
    fields = {"a": np.array([minus_zero, one, minus_zero]), "b": np.array([[one], [one], [one]]),
              "slices": np.array([1, 1, 1]), "first": np.array([1, 1, 0]), "last": np.array([1, 0, 1])}
    unit = FPDotLanes(1, 4, 3)
    received, _ = stream_through(unit, packed_ints(pack(dot_beat_layout(1, 3), fields, 3)), 2)
    y = unpack(dot_output_layout(1), as_rows(dot_output_layout(1), received))["y"][:, 0]
    assert y.tolist() == [0, int(FP32.to_bits(np.float32(1.0)))]


# The low-rank vector core

CONFIGS = {
    "lanes4": LVCConfig(4, 10, 24, 14),
    # Three lanes, 3-bit slices and 9-bit wide components: 3 slices each.
    "lanes3-slice3": LVCConfig(3, 7, 16, 9, SVDMPConfig(wide_bits=9, slice_bits=3)),
    "minilm": LVCConfig(4, 12, 384, 16),
}

# (case, configuration, valid probability, ready probability)
CORE_RUNS = [
    ("minilm", "minilm", 1.0, 1.0),
    ("random", "lanes4", 1.0, 1.0),
    ("random", "lanes4", 0.6, 0.5),
    ("random", "lanes3-slice3", 0.7, 0.7),
    ("all_wide", "lanes4", 1.0, 1.0),
    ("all_narrow", "lanes4", 0.5, 1.0),
    ("zero_component", "lanes4", 1.0, 0.5),
    ("range_limits", "lanes4", 0.6, 0.6),
    ("range_limits", "lanes3-slice3", 1.0, 1.0),
    ("rank_zero", "lanes4", 0.7, 0.5),
]


@pytest.mark.parametrize("case_name, config_name, valid, ready", CORE_RUNS,
                         ids=[f"{case}-{config}-{'full-rate' if v == r == 1.0 else 'stalls'}"
                              for case, config, v, r in CORE_RUNS])
def test_core_matches_golden(case_name, config_name, valid, ready):
    config = CONFIGS[config_name]
    case = make_lvc_case(case_name, config, seed=3)
    if case_name == "minilm":
        # One token: the Amaranth simulator runs about a thousand cycles per second here.
        case = LowRankCase(x=case.x[:1], l2=case.l2, l1=case.l1, bits=case.bits)
    with np.errstate(invalid="ignore"):
        got, stimulus, counters = run_core(config, case, valid_probability=valid, ready_probability=ready, seed=4)
    assert_outputs_match(got, stimulus.expected, f"{case_name} on {config.name}")
    if valid == ready == 1.0:
        assert counters["input_stall"] == 0
        assert counters["output_stall"] == 0
    if ready < 1.0:
        assert counters["output_stall"] > 0


def test_minilm_case_is_a_real_layer_tile():
    case = make_lvc_case("minilm", CONFIGS["minilm"])
    assert (case.rank, case.k, case.n) == (12, 384, 16)
    assert case.bits.tolist() == [11] * 8 + [4] * 4
    # Narrow components keep 4 significand bits: 3 fraction bits, and the lower 7 are zero.
    fractions = FP16.to_bits(case.l2[8:]) & ((1 << FP16.frac_bits) - 1)
    assert np.all(fractions & ((1 << (FP16.frac_bits - 3)) - 1) == 0)
    assert np.count_nonzero(fractions) > 0


def test_range_limits_case_reaches_special_values():
    case = make_lvc_case("range_limits", CONFIGS["lanes4"], seed=3)
    with np.errstate(invalid="ignore"):
        y, h = lowrank_matmul(case.x, case.l2, case.l1)
    assert np.isinf(h[0, 0]), "h of component 0 must overflow FP16 for token 0"
    assert np.isnan(y[0, 0]), "output 0 of token 0 must be Inf * 0 = NaN"
    assert np.isinf(y[0, 1:]).all()
    finite_h = h[1][np.isfinite(h[1])]
    assert ((finite_h != 0) & (np.abs(finite_h) < FP16.min_normal)).any(), "no subnormal h for token 1"
    assert (FP16.to_bits(case.x) == 0x7BFF).any(), "no activation is 65504"
    assert (FP16.to_bits(case.x) == 0x0001).any(), "no activation is the smallest subnormal"


def test_zero_component_case_has_zero_l1_column():
    # L1 = U S, so a zero singular value zeroes its column of L1; its row of L2 is a unit vector.
    case = make_lvc_case("zero_component", CONFIGS["lanes4"], seed=3)
    assert np.all(case.l1[:, -1] == 0)
    assert np.count_nonzero(case.l2[-1]) > 0
    assert np.count_nonzero(case.l1[:, :-1]) > 0


# Cycle counts

def token_cycles(config, case, tokens):
    """Return the busy cycles of the first ``tokens`` tokens of ``case`` at full rate."""
    shortened = LowRankCase(x=case.x[:tokens], l2=case.l2, l1=case.l1, bits=case.bits)
    got, stimulus, counters = run_core(config, shortened)
    assert_outputs_match(got, stimulus.expected, "cycle run")
    return counters["busy"]


@pytest.mark.parametrize("case_name, config_name", [("random", "lanes4"), ("all_wide", "lanes3-slice3")])
def test_token_cycles_follow_formula(case_name, config_name):
    config = CONFIGS[config_name]
    case = make_lvc_case(case_name, config, seed=3)
    issue = config.token_issue_cycles(case.bits, case.k, case.n)
    one_token = token_cycles(config, case, 1)
    two_tokens = token_cycles(config, case, 2)
    assert one_token == issue + LowRankVectorCore.TOKEN_LATENCY
    assert two_tokens - one_token == issue + LowRankVectorCore.TOKEN_GAP


def test_wide_component_costs_more_cycles():
    config = CONFIGS["lanes4"]
    narrow = make_lvc_case("all_narrow", config, seed=3)
    bits = narrow.bits.copy()
    bits[0] = config.svdmp.wide_bits
    # Narrow factors are exact at any larger width, so only the slice counts change.
    wide = LowRankCase(x=narrow.x[:1], l2=narrow.l2, l1=narrow.l1, bits=bits)
    narrow = LowRankCase(x=narrow.x[:1], l2=narrow.l2, l1=narrow.l1, bits=narrow.bits)
    narrow_cycles = token_cycles(config, narrow, 1)
    wide_cycles = token_cycles(config, wide, 1)
    tiles = -(-narrow.n // config.lanes)
    # 3 slices instead of 1: 2 more cycles per k for its group, and per output tile.
    assert wide_cycles - narrow_cycles == 2 * narrow.k + 2 * tiles


def test_goal_shape_beats_residual_core():
    # K = 384, N = 1536, r = 32 with 8 wide components on 32 lanes. The
    # residual core takes K * N / 128 PEs = 4608 cycles per token.
    config = LVCConfig(32, 32, 384, 1536)
    bits = np.array([11] * 8 + [4] * 24)
    assert config.token_issue_cycles(bits, 384, 1536) == 3 * 384 + 48 * 1536 // 32 == 3456
    assert config.token_issue_cycles(bits, 384, 1536) + LowRankVectorCore.TOKEN_GAP < 384 * 1536 // 128


def test_token_issue_cycles_of_rank_zero():
    # One beat of +0 per output tile.
    assert CONFIGS["lanes4"].token_issue_cycles(np.zeros(0, np.int64), 20, 14) == 4


def test_input_stalls_are_counted():
    config = CONFIGS["lanes4"]
    case = make_lvc_case("random", config, seed=3)
    got, stimulus, counters = run_core(config, case, valid_probability=0.2, seed=1)
    assert_outputs_match(got, stimulus.expected, "slow input")
    assert counters["input_stall"] > 0
    assert counters["output_stall"] == 0
    assert counters["busy"] <= counters["cycles"]


# Parameters and Verilog

@pytest.mark.parametrize("factory, arguments, error, message", [
    (SlicedMultiplier, (0, 4, 3), ValueError, "lanes must be a positive integer, not 0"),
    (SlicedMultiplier, (2, 12, 1), ValueError, "slice_bits must be an integer from 1 to 11, not 12"),
    (SlicedMultiplier, (2, 4, 4), ValueError, "max_slices must be an integer from 1 to 3, not 4"),
    (FPDotLanes, (2, 4, 0), ValueError, "max_slices must be an integer from 1 to 3, not 0"),
    (FPDotLanes, (2.0, 4, 3), ValueError, "lanes must be a positive integer, not 2.0"),
    (FPDotLanes, (True, 4, 3), ValueError, "lanes must be a positive integer, not True"),
    (LowRankVectorCore, (SVDMPConfig(),), TypeError, "config must be an LVCConfig, not SVDMPConfig"),
])
def test_units_reject_invalid_parameters(factory, arguments, error, message):
    assert_constructor_raises(factory, arguments, error, message)


@pytest.mark.parametrize("arguments, error, message", [
    ((0, 8, 16, 16), ValueError, "lanes must be a positive integer, not 0"),
    ((4, 0, 16, 16), ValueError, "max_rank must be a positive integer, not 0"),
    ((4, 8, -1, 16), ValueError, "max_k must be a positive integer, not -1"),
    ((4, 8, 16, None), ValueError, "max_n must be a positive integer, not None"),
    ((4, 8, 16, 16, {"slice_bits": 4}), TypeError, "svdmp must be an SVDMPConfig, not dict"),
    ((4, 8, 16, 16, SVDMPConfig(slice_bits=16)), ValueError,
     "svdmp.slice_bits must be an integer from 1 to 11, not 16"),
])
def test_config_rejects_invalid_parameters(arguments, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        LVCConfig(*arguments)


def test_slice_counts():
    assert [max_slices_for(s) for s in (1, 3, 4, 5, 6, 11)] == [11, 4, 3, 3, 2, 1]
    config = LVCConfig(4, 8, 16, 16, SVDMPConfig(wide_bits=8, slice_bits=3))
    assert config.max_slices == 3
    assert config.name == "lvc_l4_r8_k16_n16_s3x3"
    assert LVCConfig().max_slices == 3


def test_stimulus_rejects_case_larger_than_core():
    case = make_lvc_case("random", CONFIGS["minilm"], seed=1)
    with pytest.raises(ValueError, match="^case rank must be at most the core's 10, not 11$"):
        make_lvc_stimulus(CONFIGS["lanes4"], case)


def test_verilog_is_safe_for_icarus():
    text = generate_verilog(CONFIGS["lanes3-slice3"])
    assert "module lvc_l3_r7_k16_n9_s3x3" in text
    assert untriggered_always_blocks(text) == []
