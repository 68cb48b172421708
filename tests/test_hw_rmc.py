"""Residual matrix core and its stages in the Amaranth simulator, against the golden model."""

import re

import numpy as np
import pytest

from golden.formats import FP16, FP32
from golden.hgq import HGQConfig, HGQTensor, quantize_hgq
from golden.residual import align_and_accumulate, coarse_scale_accumulate, fine_partial_sums, scale_products
from hw.coarse_scaler import CoarseScaler
from hw.config import RMCConfig
from hw.pe_array import PEArray
from hw.rmc import ResidualMatrixCore
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


CORES = {
    "hgq-lanes8": SMALL,
    "hgq-default-groups": RMCConfig(rows=2, lanes=16),
    "conventional-g16": RMCConfig(rows=3, lanes=4, quant=HGQConfig.conventional(16)),
}


@pytest.mark.parametrize("config", CORES.values(), ids=CORES.keys())
@pytest.mark.parametrize("handshake", [(1.0, 1.0), (0.6, 0.5)], ids=["full-rate", "stalls"])
def test_core_matches_golden(config, handshake):
    rng = np.random.default_rng(5)
    # Three coarse groups, so that the order of the FP32 additions matters.
    k = 3 * config.quant.coarse_group
    xq = quantize_hgq(rng.standard_normal((2, k)) * np.exp(rng.standard_normal(k)), config.quant)
    wq = quantize_hgq(rng.standard_normal((5, k)), config.quant)
    stimulus = make_rmc_stimulus(config, xq, wq)
    got = stream_through(ResidualMatrixCore(config), beats_of(stimulus), len(stimulus.expected),
                         valid_probability=handshake[0], ready_probability=handshake[1], seed=3)
    y = unpack(config.output_layout(), as_rows(config.output_layout(), got))["y"]
    assert np.array_equal(y, stimulus.expected)


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


def test_coarse_scaler_matches_golden():
    """Coarse sums at the width limits and FP16 scale extremes, scaled and accumulated in FP32."""
    cfg = RMCConfig(rows=4, lanes=16)
    rng = np.random.default_rng(9)
    limit = 1 << (cfg.widths.coarse_sum - 1)
    tokens, groups = 5, 4
    acc = rng.integers(-limit, limit, (tokens, 4, groups))
    acc[0, 0] = limit - 1
    acc[0, 1] = -limit
    acc[1, 2] = 0
    extremes = np.array([65504, 2.0 ** -24, 2.0 ** -14, 0, 1.5, 3e-3], np.float16)
    x_scales = rng.choice(extremes, (tokens, groups))
    w_scales = rng.choice(extremes, (4, groups))
    expected = coarse_scale_accumulate(acc, scale_products(x_scales, w_scales, cfg.quant))
    count = tokens * groups
    fields = {
        "acc": acc.transpose(0, 2, 1).reshape(count, 4),
        "x_scale": FP16.to_bits(x_scales).reshape(count),
        "w_scale": np.broadcast_to(FP16.to_bits(w_scales).T[None], (tokens, groups, 4)).reshape(count, 4),
        "last": np.tile(np.arange(groups) == groups - 1, tokens),
    }
    packed = pack(cfg.coarse_sum_layout(), fields, count)
    got = stream_through(CoarseScaler(cfg), [int.from_bytes(r.tobytes(), "little") for r in packed], tokens,
                         valid_probability=0.8, ready_probability=0.6, seed=4)
    y = unpack(cfg.output_layout(), as_rows(cfg.output_layout(), got))["y"]
    assert np.array_equal(y, FP32.to_bits(expected))
