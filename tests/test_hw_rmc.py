"""Residual matrix core and its stages in the Amaranth simulator, against the golden model."""

import re

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from golden.formats import FP16, FP32, FP32_CANONICAL_NAN
from golden.hgq import HGQConfig, HGQTensor, quantize_hgq
from golden.residual import align_and_accumulate, coarse_scale_accumulate, fine_partial_sums, scale_products
from hw.coarse_scaler import CoarseScaler, scaler_timing
from hw.config import RMCConfig
from hw.pe_array import PEArray
from hw.rmc import ResidualMatrixCore, core_latency
from hw.shift_scaler import ShiftScaler
from sim.packing import unpack
from sim.packing import pack
from sim.stimulus import make_rmc_stimulus, pad_rows

from .helpers import as_rows, assert_constructor_raises, drive_streams

SMALL = RMCConfig(rows=4, lanes=8, quant=HGQConfig(64, 16, 2))


def stream_through(dut, payloads, expected_count, **handshake):
    """Send integer payloads into ``dut.i`` and return the ``expected_count`` payloads of ``dut.o``."""
    return drive_streams(dut, payloads, expected_count, **handshake).received


def beats_of(stimulus):
    return [int.from_bytes(row.tobytes(), "little") for row in stimulus.beats]


@pytest.fixture
def small_case():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 128))
    x[1, 40] = 30.0
    w = rng.standard_normal((6, 128))
    return quantize_hgq(x, SMALL.quant), quantize_hgq(w, SMALL.quant)


def test_config_defaults():
    cfg = RMCConfig()
    assert (cfg.rows, cfg.lanes, cfg.beats_per_fine_group) == (8, 16, 1)
    assert (cfg.beats_per_coarse_group, cfg.scaler_lanes, cfg.scaler_cycles) == (8, 1, 8)
    assert cfg.name == "rmc_r8_l16_gc128_gf16_sb2"
    assert cfg.beat_layout().size == 16 * 4 + 8 * 16 * 4 + 2 + 8 * 2 + 16 + 8 * 16 + 1


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 0}, "rows must be a positive integer, not 0"),
    ({"lanes": 3}, "lanes must divide fine_group (16), not 3"),
    ({"lanes": 32}, "lanes must divide fine_group (16), not 32"),
    ({"lanes": 2.0}, "lanes must be a positive integer, not 2.0"),
])
def test_config_invalid(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        RMCConfig(**kwargs)


def test_core_rejects_other_config():
    assert_constructor_raises(ResidualMatrixCore, [HGQConfig()], TypeError, "config must be an RMCConfig, not HGQConfig")


def test_pe_array_partial_sums(small_case):
    xq, wq = small_case
    stimulus = make_rmc_stimulus(SMALL, xq, wq)
    fine_groups = 128 // 16
    expected_count = stimulus.beats.shape[0] // SMALL.beats_per_fine_group
    got = stream_through(PEArray(SMALL), beats_of(stimulus), expected_count, ready_probability=0.6, seed=1)
    psum = unpack(SMALL.fine_sum_layout(), as_rows(SMALL.fine_sum_layout(), got))["psum"]
    golden = fine_partial_sums(xq, pad_rows(wq, SMALL.rows))  # (T, N padded to 8, J)
    # Stream order: tile, token, fine group; rows within a beat.
    order = golden.reshape(3, 2, 4, fine_groups).transpose(1, 0, 3, 2).reshape(-1, 4)
    assert np.array_equal(psum, order)


def test_shift_scaler_coarse_sums(small_case):
    xq, wq = small_case
    partial = fine_partial_sums(xq, wq)
    coarse = align_and_accumulate(partial, xq.shifts, wq.shifts, SMALL.quant)  # (T, N, C)
    layout = SMALL.fine_sum_layout()
    # Feed partial sums of output channels 0..3, token by token.
    count = 3 * 8
    fields = {
        "psum": partial[:, :4, :].transpose(0, 2, 1).reshape(count, 4),
        "x_shift": xq.shifts.reshape(count),
        "w_shift": np.broadcast_to(wq.shifts[:4].T[None], (3, 8, 4)).reshape(count, 4),
        "x_scale": np.zeros(count), "w_scale": np.zeros((count, 4)),
        "last": np.tile(np.arange(8) == 7, 3),
    }
    packed = pack(layout, fields, count)
    got = stream_through(ShiftScaler(SMALL), [int.from_bytes(r.tobytes(), "little") for r in packed], 6,
                         valid_probability=0.7, ready_probability=0.7, seed=2)
    acc = unpack(SMALL.coarse_sum_layout(), as_rows(SMALL.coarse_sum_layout(), got))["acc"]
    assert np.array_equal(acc, coarse[:, :4, :].transpose(0, 2, 1).reshape(6, 4))


# C = beats per coarse group, P = scaler lanes, R = scaler cycles per coarse sum.
CORES = {
    # C = 8, P = 1, R = 4, two beats per fine group.
    "hgq-lanes8": SMALL,
    # C = 8, P = 1, R = 8.
    "hgq-default": RMCConfig(),
    # rows < C: C = 8, P = 1, R = 2; the adder's loop spaces the coarse sums 8 cycles apart.
    "hgq-rows-below-c": RMCConfig(rows=2, lanes=16),
    # rows not a multiple of C or P: C = 2, P = 3, R = 2, the last cycle with 2 of 3 lanes.
    "hgq-rows-not-multiple": RMCConfig(rows=5, lanes=16, quant=HGQConfig(32, 16, 2)),
    # rows > C: C = 4, P = 3, R = 4.
    "hgq-rows-above-c": RMCConfig(rows=12, lanes=16, quant=HGQConfig(64, 16, 2)),
    # C = 4, P = 1, R = 3.
    "conventional-g16-lanes4": RMCConfig(rows=3, lanes=4, quant=HGQConfig.conventional(16)),
    # C = 1, P = 4, R = 1: one lane per row and a single-cycle adder.
    "conventional-g16": RMCConfig(rows=4, lanes=16, quant=HGQConfig.conventional(16)),
}

HANDSHAKES = {"full-rate": (1.0, 1.0), "stalls": (0.6, 0.5), "slow-output": (1.0, 0.15)}


def core_case(config, *, tokens=2, coarse_groups=3, seed=5):
    """Return ``(xq, wq)``: random tensors with outlier channels, with K of ``coarse_groups`` coarse groups and two row tiles."""
    rng = np.random.default_rng(seed)
    k = coarse_groups * config.quant.coarse_group
    xq = quantize_hgq(rng.standard_normal((tokens, k)) * np.exp(rng.standard_normal(k)), config.quant)
    wq = quantize_hgq(rng.standard_normal((config.rows + 1, k)), config.quant)
    return xq, wq


@pytest.mark.parametrize("config, lanes, cycles", [
    (RMCConfig(), 1, 8),
    (RMCConfig(rows=2), 1, 2),
    (RMCConfig(rows=9), 2, 5),
    (RMCConfig(rows=5, quant=HGQConfig(32, 16, 2)), 3, 2),
    (RMCConfig(rows=12, quant=HGQConfig(64, 16, 2)), 3, 4),
    (RMCConfig(quant=HGQConfig.conventional(16)), 8, 1),
    (RMCConfig(rows=3, lanes=4, quant=HGQConfig.conventional(16)), 1, 3),
], ids=["default", "rows2", "rows9", "c2-rows5", "c4-rows12", "conventional", "conventional-lanes4"])
def test_config_scaler_lanes(config, lanes, cycles):
    assert config.scaler_lanes == lanes
    assert config.scaler_cycles == cycles
    assert config.scaler_cycles <= config.beats_per_coarse_group


@pytest.mark.parametrize("config", CORES.values(), ids=CORES.keys())
def test_coarse_scaler_has_one_fp_path_per_lane(config):
    fragment = Fragment.get(CoarseScaler(config), None)
    names = sorted(name for _, name, *_ in fragment.subfragments)
    expected = sorted(f"{unit}_{lane}" for unit in ("convert", "scale", "multiply", "add")
                      for lane in range(config.scaler_lanes))
    assert names == expected


@pytest.mark.parametrize("config", CORES.values(), ids=CORES.keys())
@pytest.mark.parametrize("handshake", HANDSHAKES.values(), ids=HANDSHAKES.keys())
def test_core_matches_golden(config, handshake):
    # Three coarse groups, so that the order of the FP32 additions matters.
    xq, wq = core_case(config)
    stimulus = make_rmc_stimulus(config, xq, wq)
    got = stream_through(ResidualMatrixCore(config), beats_of(stimulus), len(stimulus.expected),
                         valid_probability=handshake[0], ready_probability=handshake[1], seed=3)
    y = unpack(config.output_layout(), as_rows(config.output_layout(), got))["y"]
    assert np.array_equal(y, stimulus.expected)


@pytest.mark.parametrize("config", CORES.values(), ids=CORES.keys())
def test_core_sustains_one_beat_per_cycle(config):
    """A long stream at full rate takes one cycle per beat, plus the latency of the last row."""
    xq, wq = core_case(config, tokens=4, coarse_groups=4, seed=6)
    stimulus = make_rmc_stimulus(config, xq, wq)
    core = ResidualMatrixCore(config)
    run = drive_streams(core, beats_of(stimulus), len(stimulus.expected))
    y = unpack(config.output_layout(), as_rows(config.output_layout(), run.received))["y"]
    assert np.array_equal(y, stimulus.expected)
    assert run.cycles == len(stimulus.beats) + core.latency


@pytest.mark.parametrize("config, latency", [
    (RMCConfig(), 27),
    (RMCConfig(rows=2), 21),
    (RMCConfig(quant=HGQConfig.conventional(16)), 14),
], ids=["default", "rows2", "conventional"])
def test_core_latency(config, latency):
    # PE array 2, shift scaler 1, then the scaler's row cycles, operand
    # register 1, conversion 5, multiply 4 and add (6, none at C = 1); the
    # sums register ends the add.
    assert core_latency(config) == latency


# (config, read stages, add stages, interval)
TIMINGS = {
    "c8-rows8": (RMCConfig(), 1, 6, 8),
    "c8-rows2": (RMCConfig(rows=2), 1, 6, 8),
    "c4-rows12": (RMCConfig(rows=12, quant=HGQConfig(64, 16, 2)), 1, 2, 4),
    "c2-rows5": (RMCConfig(rows=5, quant=HGQConfig(32, 16, 2)), 1, 0, 2),
    "c1-rows8": (RMCConfig(quant=HGQConfig.conventional(16)), 0, 0, 1),
    "c16-rows4": (RMCConfig(rows=4, lanes=8), 1, 6, 8),
}


@pytest.mark.parametrize("config, read_stages, add_stages, interval", TIMINGS.values(), ids=TIMINGS.keys())
def test_scaler_timing(config, read_stages, add_stages, interval):
    timing = scaler_timing(config)
    assert timing.read_stages == read_stages
    assert timing.add_stages == add_stages
    assert timing.interval == interval
    assert timing.interval <= config.beats_per_coarse_group


def test_core_holds_output_until_read():
    """While the output waits for ready, valid stays high and the payload does not change."""
    config = CORES["hgq-rows-not-multiple"]
    xq, wq = core_case(config, tokens=6)
    stimulus = make_rmc_stimulus(config, xq, wq)
    payloads = beats_of(stimulus)
    dut = ResidualMatrixCore(config)
    rng = np.random.default_rng(8)
    received = []
    held_cycles = []

    async def testbench(ctx):
        sent = 0
        waiting = None
        for _ in range(40 * len(payloads)):
            offer = sent < len(payloads) and rng.random() < 0.8
            accept = rng.random() < 0.25
            if offer:
                ctx.set(dut.i.payload.as_value(), payloads[sent])
            ctx.set(dut.i.valid, offer)
            ctx.set(dut.o.ready, accept)
            valid, payload = ctx.get(dut.o.valid), ctx.get(dut.o.payload.as_value())
            if waiting is not None:
                held_cycles.append(waiting)
                assert valid, "o.valid fell before the output was read"
                assert payload == waiting, "o.payload changed before the output was read"
            waiting = payload if valid and not accept else None
            if valid and accept:
                received.append(payload)
            sent += offer and ctx.get(dut.i.ready)
            await ctx.tick()
            if len(received) == len(stimulus.expected):
                return
        raise AssertionError(f"timed out: {len(received)} of {len(stimulus.expected)} outputs received")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    y = unpack(config.output_layout(), as_rows(config.output_layout(), received))["y"]
    assert np.array_equal(y, stimulus.expected)
    assert len(held_cycles) > 10


def test_core_worst_case_sums():
    """All codes -8 with shifts 0 drive every accumulator to its largest value."""
    cfg = RMCConfig(rows=2, lanes=16)
    k = 256
    worst = HGQTensor(np.full((2, k), -8, np.int8), np.full((2, 2), 1.0, np.float16),
                      np.zeros((2, k // 16), np.uint8), cfg.quant)
    stimulus = make_rmc_stimulus(cfg, worst, worst)
    got = stream_through(ResidualMatrixCore(cfg), beats_of(stimulus), len(stimulus.expected))
    y = FP32.from_bits(unpack(cfg.output_layout(), as_rows(cfg.output_layout(), got))["y"])
    # Each coarse sum is 64 * 128 * 2**6, scaled by 2**-6: 8192 per coarse group.
    assert np.all(y == 2 * 8192.0)


SCALERS = {
    "one-lane": RMCConfig(rows=4, lanes=16),
    "three-lanes": RMCConfig(rows=5, lanes=16, quant=HGQConfig(32, 16, 2)),
    "conventional": RMCConfig(rows=4, lanes=16, quant=HGQConfig.conventional(16)),
}


@pytest.mark.parametrize("cfg", SCALERS.values(), ids=SCALERS.keys())
def test_coarse_scaler_matches_golden(cfg):
    """Coarse sums at the width limits and FP16 scale extremes, scaled and accumulated in FP32."""
    rng = np.random.default_rng(9)
    rows = cfg.rows
    limit = 1 << (cfg.widths.coarse_sum - 1)
    tokens, groups = 5, 4
    acc = rng.integers(-limit, limit, (tokens, rows, groups))
    acc[0, 0] = limit - 1
    acc[0, 1] = -limit
    acc[1, 2] = 0
    extremes = np.array([65504, 2.0 ** -24, 2.0 ** -14, 0, 1.5, 3e-3], np.float16)
    x_scales = rng.choice(extremes, (tokens, groups))
    w_scales = rng.choice(extremes, (rows, groups))
    expected = coarse_scale_accumulate(acc, scale_products(x_scales, w_scales, cfg.quant))
    count = tokens * groups
    fields = {
        "acc": acc.transpose(0, 2, 1).reshape(count, rows),
        "x_scale": FP16.to_bits(x_scales).reshape(count),
        "w_scale": np.broadcast_to(FP16.to_bits(w_scales).T[None], (tokens, groups, rows)).reshape(count, rows),
        "last": np.tile(np.arange(groups) == groups - 1, tokens),
    }
    packed = pack(cfg.coarse_sum_layout(), fields, count)
    got = stream_through(CoarseScaler(cfg), [int.from_bytes(r.tobytes(), "little") for r in packed], tokens,
                         valid_probability=0.8, ready_probability=0.6, seed=4)
    y = unpack(cfg.output_layout(), as_rows(cfg.output_layout(), got))["y"]
    assert np.array_equal(y, FP32.to_bits(expected))


def test_coarse_scaler_propagates_nan_scale():
    """A NaN activation scale, the quantizer's mark for invalid input, makes every output of its token NaN."""
    cfg = SCALERS["three-lanes"]
    rows, tokens, groups = cfg.rows, 3, 2
    rng = np.random.default_rng(10)
    acc = rng.integers(-1000, 1000, (tokens, rows, groups))
    x_scales = np.full((tokens, groups), 0.5, np.float16)
    w_scales = np.full((rows, groups), 0.25, np.float16)
    expected = FP32.to_bits(coarse_scale_accumulate(acc, scale_products(x_scales, w_scales, cfg.quant)))
    x_bits = FP16.to_bits(x_scales)
    x_bits[1, 1] = 0x7E00
    count = tokens * groups
    fields = {
        "acc": acc.transpose(0, 2, 1).reshape(count, rows),
        "x_scale": x_bits.reshape(count),
        "w_scale": np.broadcast_to(FP16.to_bits(w_scales).T[None], (tokens, groups, rows)).reshape(count, rows),
        "last": np.tile(np.arange(groups) == groups - 1, tokens),
    }
    packed = pack(cfg.coarse_sum_layout(), fields, count)
    got = stream_through(CoarseScaler(cfg), [int.from_bytes(r.tobytes(), "little") for r in packed], tokens)
    y = unpack(cfg.output_layout(), as_rows(cfg.output_layout(), got))["y"]
    assert np.array_equal(y[[0, 2]], expected[[0, 2]])
    assert np.all(y[1] == FP32_CANONICAL_NAN)
