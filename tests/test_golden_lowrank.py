"""The bit-exact low-rank path: SVD-MP allocation, significand rounding and the order of operations."""

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import softfloatpy as sf

from golden.formats import FP16, FP32
from golden.lowrank import SVDMPConfig, allocate_significands, lowrank_matmul, round_significand


def assert_raises(error, message, function, *args, **kwargs):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        function(*args, **kwargs)


# SVDMPConfig


def test_svdmp_defaults():
    config = SVDMPConfig()
    assert (config.wide_bits, config.narrow_bits, config.slice_bits) == (11, 4, 4)
    assert (config.wide_count, config.energy_fraction) == (8, None)
    assert config.slices(11) == 3
    assert config.slices(4) == 1
    assert config.slices(np.array([1, 4, 5, 8, 9])).tolist() == [1, 1, 2, 2, 3]


def test_svdmp_all_wide():
    config = SVDMPConfig.all_wide()
    assert config.narrow_bits == config.wide_bits == 11
    assert allocate_significands(np.array([3.0, 2.0, 1.0]), config).tolist() == [11, 11, 11]


@pytest.mark.parametrize("kwargs, message", [
    ({"wide_bits": 12}, "wide_bits must be an integer from 1 to 11, not 12"),
    ({"wide_bits": 0}, "wide_bits must be an integer from 1 to 11, not 0"),
    ({"wide_bits": 8.0}, "wide_bits must be an integer from 1 to 11, not 8.0"),
    ({"wide_bits": True}, "wide_bits must be an integer from 1 to 11, not True"),
    ({"narrow_bits": 0}, "narrow_bits must be an integer from 1 to wide_bits (11), not 0"),
    ({"wide_bits": 6, "narrow_bits": 7}, "narrow_bits must be an integer from 1 to wide_bits (6), not 7"),
    ({"slice_bits": 0}, "slice_bits must be a positive integer, not 0"),
    ({"slice_bits": "4"}, "slice_bits must be a positive integer, not '4'"),
    ({"wide_count": None}, "set exactly one of wide_count and energy_fraction, not wide_count=None and "
                           "energy_fraction=None"),
    ({"energy_fraction": 0.9}, "set exactly one of wide_count and energy_fraction, not wide_count=8 and "
                               "energy_fraction=0.9"),
    ({"wide_count": -1}, "wide_count must be a non-negative integer, not -1"),
    ({"wide_count": 2.5}, "wide_count must be a non-negative integer, not 2.5"),
    ({"wide_count": None, "energy_fraction": 0.0}, "energy_fraction must be a number in (0, 1], not 0.0"),
    ({"wide_count": None, "energy_fraction": 1.5}, "energy_fraction must be a number in (0, 1], not 1.5"),
    ({"wide_count": None, "energy_fraction": float("nan")}, "energy_fraction must be a number in (0, 1], not nan"),
    ({"wide_count": None, "energy_fraction": True}, "energy_fraction must be a number in (0, 1], not True"),
])
def test_svdmp_config_invalid(kwargs, message):
    assert_raises(ValueError, message, SVDMPConfig, **kwargs)


# allocate_significands


@pytest.mark.parametrize("wide_count, expected", [
    (0, [4, 4, 4, 4]),
    (1, [11, 4, 4, 4]),
    (2, [11, 11, 4, 4]),
    (4, [11, 11, 11, 11]),
    (9, [11, 11, 11, 11]),
])
def test_allocate_fixed_count(wide_count, expected):
    bits = allocate_significands(np.array([5.0, 3.0, 2.0, 1.0]), SVDMPConfig(wide_count=wide_count))
    assert bits.dtype == np.int64
    assert bits.tolist() == expected


def test_allocate_fixed_count_ties_by_position():
    # Components 1 and 2 tie at the boundary: the lower index is wide.
    bits = allocate_significands(np.array([4.0, 2.0, 2.0, 1.0]), SVDMPConfig(wide_count=2))
    assert bits.tolist() == [11, 11, 4, 4]


def test_allocate_fixed_count_zero_singular_values():
    bits = allocate_significands(np.array([2.0, 0.0, 0.0]), SVDMPConfig(wide_count=2))
    assert bits.tolist() == [11, 11, 4]
    bits = allocate_significands(np.zeros(3), SVDMPConfig(wide_count=1))
    assert bits.tolist() == [11, 4, 4]


@pytest.mark.parametrize("fraction, expected", [
    # Squared singular values 16, 9, 1, 0: cumulative fractions 16/26, 25/26, 1, 1.
    (0.5, [11, 4, 4, 4]),
    (16 / 26, [11, 4, 4, 4]),
    (0.62, [11, 11, 4, 4]),
    (25 / 26, [11, 11, 4, 4]),
    (0.97, [11, 11, 11, 4]),
    (1.0, [11, 11, 11, 4]),
])
def test_allocate_energy(fraction, expected):
    config = SVDMPConfig(wide_count=None, energy_fraction=fraction)
    assert allocate_significands(np.array([4.0, 3.0, 1.0, 0.0]), config).tolist() == expected


def test_allocate_energy_ties_and_zeros():
    config = SVDMPConfig(wide_count=None, energy_fraction=0.5)
    # Equal singular values: the first one already contains half of the energy.
    assert allocate_significands(np.array([1.0, 1.0]), config).tolist() == [11, 4]
    # No energy at all: every component is narrow.
    assert allocate_significands(np.zeros(3), config).tolist() == [4, 4, 4]


@pytest.mark.parametrize("config", [SVDMPConfig(), SVDMPConfig(wide_count=None, energy_fraction=0.9)])
def test_allocate_rank_zero(config):
    bits = allocate_significands(np.zeros(0), config)
    assert bits.shape == (0,)
    assert bits.dtype == np.int64


@pytest.mark.parametrize("values, message", [
    (np.ones((2, 2)), "singular_values must be 1-D, not shape (2, 2)"),
    (np.array([2.0, 3.0]), "singular_values must be in descending order, but singular_values[1] = 3.0 "
                           "is above singular_values[0] = 2.0"),
    (np.array([2.0, -1.0]), "singular_values must be finite and non-negative, but singular_values[1] is -1.0"),
    (np.array([np.nan, 1.0]), "singular_values must be finite and non-negative, but singular_values[0] is nan"),
    (np.array([np.inf]), "singular_values must be finite and non-negative, but singular_values[0] is inf"),
])
def test_allocate_invalid(values, message):
    assert_raises(ValueError, message, allocate_significands, values)


def test_allocate_invalid_config():
    assert_raises(TypeError, "config must be an SVDMPConfig, not int", allocate_significands, np.ones(2), 8)


# round_significand


def reference_round(value, bits):
    """Round an FP16 ``value`` to ``bits`` significand bits with exact rationals, ties to even.

    The exponent range is the FP16 one: below 2**-14 the quantum stays
    ``2**(-14 - (bits - 1))``. A result of 2**16 or more is Inf.
    """
    exact = Fraction(float(value))
    if exact == 0:
        return np.float16(value)
    sign = -1 if exact < 0 else 1
    magnitude = abs(exact)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1
    exponent = max(exponent, 1 - FP16.bias)
    quantum = Fraction(2) ** (exponent - (bits - 1))
    units = magnitude / quantum
    whole = units.numerator // units.denominator
    remainder = units - whole
    if remainder > Fraction(1, 2) or (remainder == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    result = whole * quantum
    if result >= 2 ** 16:
        return np.float16(sign * np.inf)
    # A result that rounds to zero keeps the sign, as IEEE rounding does.
    return np.float16(math.copysign(float(result), sign))


def tie_values(rng, count):
    """Return FP16 values exactly halfway between two neighbours of a narrower width, and those widths.

    About one value in eight lies in the subnormal range.
    """
    values, widths = [], []
    while len(values) < count:
        bits = int(rng.integers(1, FP16.significand_bits))
        exponent = int(rng.integers(-15, 16))
        subnormal = exponent < 1 - FP16.bias
        quantum = 2.0 ** (max(exponent, 1 - FP16.bias) - (bits - 1))
        low = 0 if subnormal else 1 << (bits - 1)
        high = 1 << (bits - 1) if subnormal else 1 << bits
        value = (int(rng.integers(low, high)) + 0.5) * quantum
        if value <= FP16.max_finite and np.float16(value) == value:
            values.append(value * rng.choice([-1.0, 1.0]))
            widths.append(bits)
    return np.array(values, np.float16), np.array(widths)


def assert_same_fp16(actual, expected):
    actual_bits = FP16.to_bits(actual)
    expected_bits = FP16.to_bits(expected)
    mismatch = np.flatnonzero(actual_bits != expected_bits)
    assert mismatch.size == 0, (
        f"{mismatch.size} mismatches; first at {mismatch[0]}: got {actual.flat[mismatch[0]]!r}, "
        f"expected {expected.flat[mismatch[0]]!r}")


def test_round_significand_matches_rationals():
    rng = np.random.default_rng(1)
    patterns = rng.integers(0, 1 << 16, 4000)
    patterns = patterns[(patterns >> FP16.frac_bits & 0x1F) != 0x1F]
    subnormals = rng.integers(0, 1 << FP16.frac_bits, 500) | (rng.integers(0, 2, 500) << 15)
    # The top binade, where rounding up overflows to Inf, of both signs.
    near_max = np.arange(0x7800, 0x7C00, 7)
    values = FP16.from_bits(np.concatenate([patterns, subnormals, near_max, near_max | 0x8000]))
    bits = rng.integers(1, FP16.significand_bits + 1, values.size)
    expected = np.array([reference_round(v, b) for v, b in zip(values, bits)], np.float16)
    with np.errstate(over="ignore"):
        assert_same_fp16(round_significand(values, bits), expected)


def test_round_significand_ties_to_even():
    values, widths = tie_values(np.random.default_rng(2), 2000)
    expected = np.array([reference_round(v, b) for v, b in zip(values, widths)], np.float16)
    with np.errstate(over="ignore"):
        assert_same_fp16(round_significand(values, widths), expected)
    # Every value was a tie, so the result is never the input.
    assert np.all(round_significand(values, widths) != values)


@pytest.mark.parametrize("value, bits, expected", [
    (1.0 + 2.0 ** -10, 4, 1.0),
    (1.5625, 4, 1.5),        # 1.1001b: tie between 1.100b and 1.101b, to even 1.100b
    (1.6875, 4, 1.75),       # 1.1011b: tie, to even 1.110b
    (1.9375, 4, 2.0),        # 1.1111b: rounds up into the next binade
    (-1.9375, 4, -2.0),
    (61440.0, 4, 61440.0),   # the largest value with 4 significand bits
    (63488.0, 4, np.inf),    # tie between 61440 and 65536, to even 65536: overflow
    (-65504.0, 4, -np.inf),
    (65504.0, 11, 65504.0),
    (2.0 ** -24, 11, 2.0 ** -24),
    (2.0 ** -24, 10, 0.0),   # quantum 2**-23; a tie with 0, to even 0
    (3 * 2.0 ** -24, 10, 4 * 2.0 ** -24),
    (-(2.0 ** -24), 1, -0.0),
    (2.0 ** -14, 1, 2.0 ** -14),
    (0.75 * 2.0 ** -14, 1, 2.0 ** -14),
])
def test_round_significand_cases(value, bits, expected):
    with np.errstate(over="ignore"):
        result = round_significand(np.array([value], np.float16), bits)
    assert_same_fp16(result, np.array([expected], np.float16))


def test_round_significand_broadcasts():
    values = np.array([[1.0 + 2.0 ** -10, 1.0 + 2.0 ** -10]], np.float16)
    result = round_significand(values, np.array([11, 4]))
    assert result.tolist() == [[1.0 + 2.0 ** -10, 1.0]]


@pytest.mark.parametrize("bits, message", [
    (0, "bits must be integers from 1 to 11, not values from 0 to 0"),
    (np.array([3, 12]), "bits must be integers from 1 to 11, not values from 3 to 12"),
    (4.0, "bits must be integers from 1 to 11, not dtype float64"),
])
def test_round_significand_invalid_bits(bits, message):
    assert_raises(ValueError, message, round_significand, np.ones(2, np.float16), bits)


# lowrank_matmul


def softfloat16(value):
    return sf.Float16.from_bytes(int(FP16.to_bits(np.float16(value))).to_bytes(2, "big"))


def softfloat32(value):
    return sf.Float32.from_bytes(int(FP32.to_bits(np.float32(value))).to_bytes(4, "big"))


def fp16_bits(value):
    return int.from_bytes(value.to_bytes(), "big")


def softfloat_dot(left, right, order):
    """Return ``sum_j left[j] * right[j]`` of FP16 vectors in SoftFloat FP32, from +0, in ``order``."""
    total = softfloat32(0.0)
    for j in order:
        product = sf.f32_mul(sf.f16_to_f32(softfloat16(left[j])), sf.f16_to_f32(softfloat16(right[j])))
        total = sf.f32_add(total, product)
    return total


def reference_lowrank(x, l2, l1, reverse=False):
    """Compute the low-rank path element by element in SoftFloat; return FP32 bits of Y and FP16 bits of h."""
    tokens, k = x.shape
    rank, n = l2.shape[0], l1.shape[0]
    k_order = range(k - 1, -1, -1) if reverse else range(k)
    r_order = range(rank - 1, -1, -1) if reverse else range(rank)
    hidden = np.zeros((tokens, rank), np.int64)
    output = np.zeros((tokens, n), np.int64)
    for t in range(tokens):
        h = [sf.f32_to_f16(softfloat_dot(x[t], l2[i], k_order)) for i in range(rank)]
        hidden[t] = [fp16_bits(value) for value in h]
        h_values = FP16.from_bits(hidden[t])
        for m in range(n):
            output[t, m] = fp16_bits(softfloat_dot(h_values, l1[m], r_order))
    return output, hidden


def random_fp16(rng, shape, exponents=(-12, 6)):
    """Return FP16 values with random signs, significands and exponents, so that sums round."""
    values = rng.uniform(1.0, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    return np.ldexp(values, rng.integers(*exponents, shape)).astype(np.float16)


@pytest.mark.parametrize("seed, tokens, k, rank, n", [(3, 3, 5, 4, 3), (4, 2, 7, 3, 5), (5, 4, 16, 6, 4)])
def test_lowrank_matmul_matches_softfloat(seed, tokens, k, rank, n):
    rng = np.random.default_rng(seed)
    bits = rng.integers(2, FP16.significand_bits + 1, rank)
    x = random_fp16(rng, (tokens, k))
    l2 = round_significand(random_fp16(rng, (rank, k), (-6, 1)), bits[:, None])
    l1 = round_significand(random_fp16(rng, (n, rank)), bits[None, :])
    y, h = lowrank_matmul(x, l2, l1)
    expected_y, expected_h = reference_lowrank(x, l2, l1)
    assert y.dtype == np.float32
    assert h.dtype == np.float16
    assert FP16.to_bits(h).tolist() == expected_h.tolist()
    assert FP32.to_bits(y).tolist() == expected_y.tolist()


def test_lowrank_matmul_order_is_ascending():
    # 2**24 + 1 is a tie in FP32 and rounds to even 2**24, so the ascending sum
    # 2**24 + 1 - 2**24 is 0 while the descending sum -2**24 + 1 + 2**24 is 1.
    x = np.array([[4096.0, 1.0, -4096.0]], np.float16)
    l2 = np.array([[4096.0, 1.0, 4096.0]], np.float16)
    y, h = lowrank_matmul(x, l2, np.ones((1, 1), np.float16))
    assert h.tolist() == [[0.0]]
    assert y.tolist() == [[0.0]]
    _, reversed_h = reference_lowrank(x, l2, np.ones((1, 1), np.float16), reverse=True)
    assert FP16.from_bits(reversed_h).tolist() == [[1.0]]

    # The same cancellation in the up projection: h = x because L2 is the identity.
    l1 = np.array([[4096.0, 1.0, 4096.0]], np.float16)
    y, h = lowrank_matmul(x, np.eye(3, dtype=np.float16), l1)
    assert h.tolist() == x.tolist()
    assert y.tolist() == [[0.0]]
    reversed_y, _ = reference_lowrank(x, np.eye(3, dtype=np.float16), l1, reverse=True)
    assert FP32.from_bits(reversed_y).tolist() == [[1.0]]


def test_lowrank_matmul_reversed_order_differs_on_random_data():
    rng = np.random.default_rng(6)
    x = random_fp16(rng, (4, 16))
    l2 = random_fp16(rng, (6, 16), (-6, 1))
    l1 = random_fp16(rng, (5, 6))
    y, h = lowrank_matmul(x, l2, l1)
    reversed_y, reversed_h = reference_lowrank(x, l2, l1, reverse=True)
    differences = np.count_nonzero(FP16.to_bits(h) != reversed_h) + np.count_nonzero(FP32.to_bits(y) != reversed_y)
    assert differences > 0


def test_lowrank_matmul_intermediate_overflows_to_inf():
    x = np.full((1, 2), 60000.0, np.float16)
    y, h = lowrank_matmul(x, np.ones((1, 2), np.float16), np.ones((1, 1), np.float16))
    assert h.tolist() == [[np.inf]]
    assert y.tolist() == [[np.inf]]


def test_lowrank_matmul_rank_zero():
    y, h = lowrank_matmul(np.ones((3, 4), np.float16), np.zeros((0, 4), np.float16), np.zeros((5, 0), np.float16))
    assert y.shape == (3, 5)
    assert y.dtype == np.float32
    assert not np.any(y)
    assert not np.any(np.signbit(y))
    assert h.shape == (3, 0)
    assert h.dtype == np.float16


def test_lowrank_matmul_signed_zero():
    # Every sum starts from +0, so products of -0 give +0.
    x = np.array([[-0.0, 1.0]], np.float16)
    l2 = np.array([[1.0, -0.0]], np.float16)
    y, h = lowrank_matmul(x, l2, np.array([[-1.0]], np.float16))
    assert not np.signbit(h[0, 0])
    assert not np.signbit(y[0, 0])


@pytest.mark.parametrize("shapes, message", [
    (((3,), (1, 3), (2, 1)), "x_fp16 must be 2-D, not shape (3,)"),
    (((2, 3), (1, 4), (2, 1)), "l2 must have K = 3 columns like x_fp16, not 4"),
    (((2, 3), (2, 3), (2, 1)), "l1 must have r = 2 columns like the rows of l2, not 1"),
])
def test_lowrank_matmul_invalid_shapes(shapes, message):
    x, l2, l1 = (np.ones(shape, np.float16) for shape in shapes)
    assert_raises(ValueError, message, lowrank_matmul, x, l2, l1)
