"""Operation counts of a layer: hand-checked shapes and the SVD-MP slice ratio."""

import re

import numpy as np
import pytest

from golden.compiler import CompilerConfig, compile_layer
from golden.hgq import HGQConfig
from golden.lowrank import SVDMPConfig
from golden.opcost import OpCounts, layer_op_counts, op_counts, slice_ratio


def test_counts_hand_checked():
    # T = 2, N = 4, K = 256 (2 coarse groups, 16 fine groups), components of
    # 11, 4 and 8 bits: 3 + 1 + 2 = 6 slices per token and input or output.
    counts = op_counts(2, 4, 256, [11, 4, 8], slice_bits=4, quant=HGQConfig(), bias=True)
    assert counts == OpCounts(
        lowrank_down_slices=2 * 256 * 6,
        lowrank_up_slices=2 * 4 * 6,
        lowrank_fp32_adds=2 * 3 * (256 + 4),
        residual_fp32_adds=2 * 4 * 2,
        output_fp32_adds=2 * 4 * 2,
        scale_products=2 * 4 * 2,
        residual_fp32_multiplies=2 * 4 * 2,
        int_to_fp32=2 * 4 * 2,
        int4_macs=2 * 4 * 256,
        shifts=2 * 4 * 16,
    )
    assert counts.lowrank_slices == 3072 + 48
    assert counts.fp32_adds == 1560 + 16 + 16


def test_counts_without_bias_and_rank():
    counts = op_counts(3, 8, 128, [], quant=HGQConfig.conventional(16), bias=False)
    assert counts.lowrank_slices == 0
    assert counts.lowrank_fp32_adds == 0
    assert counts.output_fp32_adds == 0
    # One coarse group of 16 per FP32 multiply in the conventional design.
    assert counts.residual_fp32_multiplies == counts.int_to_fp32 == 3 * 8 * 8
    assert counts.shifts == 3 * 8 * 8
    assert counts.int4_macs == 3 * 8 * 128


def test_counts_slice_width():
    assert op_counts(1, 1, 128, [11], slice_bits=1).lowrank_down_slices == 128 * 11
    assert op_counts(1, 1, 128, [11], slice_bits=11).lowrank_down_slices == 128
    assert op_counts(1, 1, 128, [11], slice_bits=16).lowrank_down_slices == 128


def test_counts_add():
    a = op_counts(1, 8, 128, [11, 4])
    b = op_counts(2, 16, 256, [11])
    total = sum([a, b], OpCounts())
    assert total.int4_macs == a.int4_macs + b.int4_macs
    assert total.lowrank_slices == a.lowrank_slices + b.lowrank_slices
    assert total == a + b


def test_default_slice_ratio_is_half():
    rng = np.random.default_rng(0)
    layer = compile_layer(rng.standard_normal((48, 128)), np.zeros(48), None, CompilerConfig(alpha=None))
    assert layer.significand_bits.tolist() == [11] * 8 + [4] * 24
    mixed = layer_op_counts(layer, 5)
    wide = layer_op_counts(layer, 5, all_wide=True)
    assert mixed.lowrank_down_slices == 5 * 128 * (8 * 3 + 24 * 1)
    assert wide.lowrank_down_slices == 5 * 128 * 32 * 3
    assert slice_ratio(mixed, wide) == (8 * 3 + 24 * 1) / (32 * 3) == 0.5
    # Everything outside the low-rank multipliers is the same in both.
    assert mixed.fp32_adds == wide.fp32_adds
    assert mixed.int4_macs == wide.int4_macs == 5 * 48 * 128
    assert mixed.output_fp32_adds == 2 * 5 * 48


def test_slice_ratio_of_sums():
    mixed = [op_counts(1, 128, 128, [11, 4]), op_counts(1, 128, 128, [4, 4])]
    wide = [op_counts(1, 128, 128, [11, 11]), op_counts(1, 128, 128, [11, 11])]
    assert slice_ratio(mixed, wide) == (4 + 2) / (6 + 6)


def test_slice_ratio_rank_zero():
    counts = op_counts(1, 8, 128, [])
    message = "wide has no low-rank multiplier slices (rank 0), so the slice ratio is undefined"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        slice_ratio(counts, counts)


def test_layer_counts_energy_policy():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 128)) * np.r_[100.0, np.ones(15)][:, None]
    svdmp = SVDMPConfig(wide_count=None, energy_fraction=0.5, narrow_bits=8)
    layer = compile_layer(weight, None, None, CompilerConfig(rank=4, alpha=None, svdmp=svdmp))
    assert layer.significand_bits.tolist() == [11, 8, 8, 8]
    assert layer_op_counts(layer, 1).lowrank_up_slices == 16 * (3 + 2 + 2 + 2)
    assert layer_op_counts(layer, 1).output_fp32_adds == 16


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((0, 8, 128, []), {}, ValueError, "tokens must be an integer of at least 1, not 0"),
    ((1, 0, 128, []), {}, ValueError, "n must be an integer of at least 1, not 0"),
    ((1, 8, 1.5, []), {}, ValueError, "k must be an integer of at least 1, not 1.5"),
    ((1, 8, 128, []), {"slice_bits": 0}, ValueError, "slice_bits must be an integer of at least 1, not 0"),
    ((1, 8, 100, []), {}, ValueError,
     "k must be a multiple of coarse_group (128), not 100; pad the input channels with zeros up to 128"),
    ((1, 8, 128, [11, 12]), {}, ValueError, "significand_bits must lie in [1, 11], not [11, 12]"),
    ((1, 8, 128, [[11]]), {}, ValueError,
     "significand_bits must be a 1-D array of integers, not int64 of shape (1, 1)"),
    ((1, 8, 128, [4.0]), {}, ValueError,
     "significand_bits must be a 1-D array of integers, not float64 of shape (1,)"),
    ((1, 8, 128, []), {"quant": 16}, TypeError, "quant must be an HGQConfig, not int"),
])
def test_counts_invalid(args, kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        op_counts(*args, **kwargs)
