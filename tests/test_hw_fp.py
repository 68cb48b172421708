"""Tests of the combinational floating-point units in ``hw.fp``.

Each unit runs once in the Amaranth simulator over several thousand operand
vectors: random encodings, random normal values and hand-built edge classes.
Every result must equal Berkeley SoftFloat (through softfloatpy, round to
nearest even) and NumPy float32 bit for bit. Where a reference gives NaN, the
RTL must give exactly ``FP32_CANONICAL_NAN``.
"""

import functools
import random
from fractions import Fraction

import numpy as np
import pytest
import softfloatpy as sf
from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.sim import Simulator

from golden.formats import FP16, FP32, FP32_CANONICAL_NAN
from hw.fp import (
    FP16ProductToFP32, FP32Adder, FP32Multiplier, FP32NormalMultiplier, FP32ToFP16, IntToFP32, NormalizeRoundPack,
    count_leading_zeros,
)

from .helpers import assert_constructor_raises

FRACTION_MASK = (1 << FP32.frac_bits) - 1
SIGN_BIT = 1 << (FP32.width - 1)
# Largest finite biased exponent.
TOP_EXPONENT = FP32.exp_max - 1


# Encodings and exact values

def encode(sign, exponent, fraction, fmt=FP32):
    """Return the encoding with the given sign bit, biased exponent field and fraction field."""
    return (sign << (fmt.width - 1)) | (exponent << fmt.frac_bits) | fraction


def encode_exact(integer, power):
    """Return the binary32 encoding of ``integer * 2**power``, which must be representable."""
    value = np.float32(np.ldexp(float(integer), power))
    assert Fraction(float(value)) == Fraction(integer) * Fraction(2) ** power, \
        f"{integer} * 2**{power} is not a binary32 number"
    return int(FP32.to_bits(value))


def exact_value(bits, fmt=FP32):
    """Return the exact value of a finite encoding as a Fraction."""
    sign = bits >> (fmt.width - 1)
    exponent = (bits >> fmt.frac_bits) & fmt.exp_max
    fraction = bits & ((1 << fmt.frac_bits) - 1)
    assert exponent != fmt.exp_max, f"{bits:#x} is not finite"
    if exponent == 0:
        magnitude = Fraction(fraction) * Fraction(2) ** (1 - fmt.bias - fmt.frac_bits)
    else:
        significand = fraction | (1 << fmt.frac_bits)
        magnitude = Fraction(significand) * Fraction(2) ** (exponent - fmt.bias - fmt.frac_bits)
    return -magnitude if sign else magnitude


FP32_EDGES = {
    "+0": encode(0, 0, 0),
    "-0": encode(1, 0, 0),
    "+min subnormal": encode(0, 0, 1),
    "-min subnormal": encode(1, 0, 1),
    "+max subnormal": encode(0, 0, FRACTION_MASK),
    "-max subnormal": encode(1, 0, FRACTION_MASK),
    "+min normal": encode(0, 1, 0),
    "-min normal": encode(1, 1, 0),
    "+min normal + ulp": encode(0, 1, 1),
    "+max finite": encode(0, TOP_EXPONENT, FRACTION_MASK),
    "-max finite": encode(1, TOP_EXPONENT, FRACTION_MASK),
    "+2**127": encode(0, TOP_EXPONENT, 0),
    "+1": encode(0, FP32.bias, 0),
    "-1": encode(1, FP32.bias, 0),
    "+1 + ulp": encode(0, FP32.bias, 1),
    "+1 - ulp": encode(0, FP32.bias - 1, FRACTION_MASK),
    "+0.5": encode(0, FP32.bias - 1, 0),
    "+2": encode(0, FP32.bias + 1, 0),
    "+1.5": encode(0, FP32.bias, 1 << (FP32.frac_bits - 1)),
    # Half an ulp of 1.0, and half an ulp of the largest finite binade.
    "+2**-24": encode(0, FP32.bias - FP32.significand_bits, 0),
    "-2**-25": encode(1, FP32.bias - FP32.significand_bits - 1, 0),
    "+2**103": encode(0, TOP_EXPONENT - FP32.significand_bits, 0),
    "+Inf": encode(0, FP32.exp_max, 0),
    "-Inf": encode(1, FP32.exp_max, 0),
    "canonical NaN": FP32_CANONICAL_NAN,
    "signaling NaN": encode(0, FP32.exp_max, 1),
    "-NaN with payload": encode(1, FP32.exp_max, FRACTION_MASK),
}


def edge_pairs():
    return [(a, b) for a in FP32_EDGES.values() for b in FP32_EDGES.values()]


def random_encodings(rng, count):
    return [int(x) for x in rng.integers(0, 1 << FP32.width, count)]


def random_normals(rng, count, exponents):
    """Return ``count`` normal encodings with random signs, the given biased exponents and random fractions."""
    signs = rng.integers(0, 2, count)
    fractions = rng.integers(0, 1 << FP32.frac_bits, count)
    exponents = np.broadcast_to(exponents, count)
    return [encode(int(s), int(e), int(f)) for s, e, f in zip(signs, exponents, fractions)]


# References

def softfloat(bits):
    return sf.Float32.from_bytes(int(bits).to_bytes(FP32.width // 8, "big"))


def softfloat_bits(value):
    return int.from_bytes(value.to_bytes(), "big")


def softfloat_with_rounding(mode, function, *args):
    previous = sf.get_rounding_mode()
    sf.set_rounding_mode(mode)
    try:
        return function(*args)
    finally:
        sf.set_rounding_mode(previous)


def softfloat_binary(function, vectors):
    results = []
    for a, b in vectors:
        results.append(softfloat_bits(function(softfloat(a), softfloat(b))))
    return results


def numpy_binary(operator, vectors):
    a, b = np.array(vectors, dtype=np.int64).T
    with np.errstate(all="ignore"):
        return [int(x) for x in FP32.to_bits(operator(FP32.from_bits(a), FP32.from_bits(b)))]


def is_nan(bits):
    return bool(np.isnan(FP32.from_bits(bits)))


def expected_rtl_result(reference):
    """Return the encoding that the RTL must output where the reference gives ``reference``."""
    return FP32_CANONICAL_NAN if is_nan(reference) else reference


def is_exact_tie(function, exact, a, b):
    """Return whether ``exact`` lies halfway between the two binary32 neighbors of ``function(a, b)``."""
    below = softfloat_with_rounding(sf.RoundingMode.MIN, function, softfloat(a), softfloat(b))
    above = softfloat_with_rounding(sf.RoundingMode.MAX, function, softfloat(a), softfloat(b))
    below, above = softfloat_bits(below), softfloat_bits(above)
    if below == above or is_nan(below) or is_nan(above):
        return False
    if (below & ~SIGN_BIT) >> FP32.frac_bits == FP32.exp_max:
        return False
    if (above & ~SIGN_BIT) >> FP32.frac_bits == FP32.exp_max:
        return False
    return exact_value(below) + exact_value(above) == 2 * exact


# Simulation

def simulate(dut, inputs, vectors):
    """Apply every vector to the combinational ``dut`` in one simulation and return the outputs of ``y``.

    ``inputs`` names the ports that take the elements of each vector.
    """
    outputs = []

    async def testbench(ctx):
        for vector in vectors:
            for name, value in zip(inputs, vector):
                ctx.set(getattr(dut, name), value)
            # In a testbench, ctx.get returns the value after combinational logic has settled.
            outputs.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return outputs


def format_vector(vector):
    return ", ".join(f"{x:#x}" for x in vector)


def assert_matches(unit, vectors, rtl, reference, reference_name):
    """Assert that ``rtl`` equals ``reference`` with NaNs made canonical, naming the first mismatch."""
    assert len(rtl) == len(vectors) == len(reference)
    for vector, rtl_result, reference_result in zip(vectors, rtl, reference):
        expected = expected_rtl_result(reference_result)
        assert rtl_result == expected, (
            f"{unit}({format_vector(vector)}) = {rtl_result:#010x}, "
            f"but {reference_name} gives {reference_result:#010x} (expected {expected:#010x})")


def assert_references_agree(unit, vectors, softfloat_results, numpy_results):
    for vector, soft, numeric in zip(vectors, softfloat_results, numpy_results):
        if is_nan(soft):
            assert is_nan(numeric), \
                f"{unit}({format_vector(vector)}): SoftFloat gives NaN, NumPy gives {numeric:#010x}"
        else:
            assert numeric == soft, (
                f"{unit}({format_vector(vector)}): SoftFloat gives {soft:#010x}, "
                f"NumPy gives {numeric:#010x}")


# Adder vectors

def adder_tie_candidates(rng, count):
    """Return pairs whose exact sum lies halfway between two binary32 numbers, or close to it."""
    candidates = []
    for _ in range(count):
        exponent = int(rng.integers(FP32.significand_bits + 2, TOP_EXPONENT))
        fraction = int(rng.integers(0, 1 << FP32.frac_bits))
        sign = int(rng.integers(0, 2))
        a = encode(sign, exponent, fraction)
        # (2k + 1) half ulps of `a`, with either sign.
        odd = 2 * int(rng.integers(0, 4)) + 1
        b_sign = int(rng.integers(0, 2))
        half_ulp_power = exponent - FP32.bias - FP32.frac_bits - 1
        candidates.append((a, encode_exact(odd, half_ulp_power) | (b_sign << (FP32.width - 1))))
        # A power of two minus an odd number of quarter ulps. Just below a power
        # of two the grid is twice as fine, so the halfway points lie at odd quarter ulps.
        power = encode(sign, exponent, 0)
        below = encode_exact(odd, half_ulp_power - 1) | ((1 - sign) << (FP32.width - 1))
        candidates.append((power, below))
    return candidates


@functools.cache
def adder_tie_vectors():
    rng = np.random.default_rng(11)
    candidates = adder_tie_candidates(rng, 400)
    return [(a, b) for a, b in candidates
            if is_exact_tie(sf.f32_add, exact_value(a) + exact_value(b), a, b)]


@functools.cache
def adder_vectors():
    rng = np.random.default_rng(7)
    vectors = edge_pairs()

    vectors += list(zip(random_encodings(rng, 2000), random_encodings(rng, 2000)))

    # Random normal values whose exponents differ by 0 to 40, so the alignment
    # shift takes every amount up to past the 24-bit significand and its 3 extra bits.
    large_exponents = rng.integers(41, TOP_EXPONENT + 1, 2000)
    small_exponents = large_exponents - rng.integers(0, 41, 2000)
    vectors += list(zip(random_normals(rng, 2000, large_exponents),
                        random_normals(rng, 2000, small_exponents)))

    # Cancellation: x + (-x), and x plus the negation of a nearby encoding, some across a binade boundary.
    for x in random_normals(rng, 200, rng.integers(1, TOP_EXPONENT + 1, 200)):
        vectors.append((x, x ^ SIGN_BIT))
    for x in random_normals(rng, 400, rng.integers(2, TOP_EXPONENT + 1, 400)):
        offset = int(rng.integers(-4, 5))
        vectors.append((x, (x + offset) ^ SIGN_BIT))
    for exponent in rng.integers(2, TOP_EXPONENT + 1, 100):
        power = encode(0, int(exponent), 0)
        vectors.append((power, (power - 1) ^ SIGN_BIT))

    vectors += adder_tie_vectors()

    # Operands at the bottom of the exponent range, whose sums are
    # subnormal, cross into the normal range or cancel to zero.
    vectors += list(zip(random_normals(rng, 500, rng.integers(0, 3, 500)),
                        random_normals(rng, 500, rng.integers(0, 3, 500))))

    # Overflow: large operands of the same sign, and the largest finite
    # number plus just under, exactly and just over half its ulp.
    large = random_normals(rng, 300, rng.integers(TOP_EXPONENT - 2, TOP_EXPONENT + 1, 300))
    vectors += [(x, (y & ~SIGN_BIT) | (x & SIGN_BIT)) for x, y in zip(large, large[::-1])]
    max_finite = FP32_EDGES["+max finite"]
    half_ulp = FP32_EDGES["+2**103"]
    vectors += [(max_finite, half_ulp - 1), (max_finite, half_ulp), (max_finite, half_ulp + 1),
                (max_finite, max_finite), (max_finite ^ SIGN_BIT, half_ulp ^ SIGN_BIT)]
    return vectors


# Multiplier vectors

@functools.cache
def multiplier_tie_vectors():
    rng = np.random.default_rng(13)
    candidates = []

    # An odd 24-bit significand below 2**25 / 3, times 1.5, has an odd 25-bit
    # significand, so rounding drops exactly one bit, a 1.
    for _ in range(300):
        odd = int(rng.integers(1 << (FP32.significand_bits - 2), (1 << (FP32.significand_bits + 1)) // 6)) * 2 + 1
        power = int(rng.integers(-60, 40))
        candidates.append((encode_exact(odd, power - FP32.frac_bits), encode_exact(3, power - 1)))

    # Products of (2m + 1) * 2**-150, halfway between two subnormals. The
    # largest one lies halfway between the largest subnormal and the smallest normal.
    half_subnormal_power = 1 - FP32.bias - FP32.frac_bits - 1
    odds = [int(x) * 2 + 1 for x in rng.integers(0, 1 << FP32.frac_bits, 300)]
    odds += [1, 3, (1 << FP32.significand_bits) - 1]
    for odd in odds:
        power = int(rng.integers(1, 100))
        candidates.append((encode_exact(odd, half_subnormal_power + power), encode_exact(1, -power)))

    return [(a, b) for a, b in candidates
            if is_exact_tie(sf.f32_mul, exact_value(a) * exact_value(b), a, b)]


@functools.cache
def multiplier_vectors():
    rng = np.random.default_rng(8)
    vectors = edge_pairs()

    vectors += list(zip(random_encodings(rng, 2000), random_encodings(rng, 2000)))

    # Random normal values whose products span the whole exponent range and beyond.
    a_exponents = rng.integers(1, TOP_EXPONENT + 1, 1500)
    product_exponents = rng.integers(-30, FP32.exp_max + 30, 1500)
    b_exponents = np.clip(product_exponents - a_exponents + FP32.bias, 1, TOP_EXPONENT)
    vectors += list(zip(random_normals(rng, 1500, a_exponents), random_normals(rng, 1500, b_exponents)))

    # A subnormal times a large number: normal results of every size.
    subnormals = random_normals(rng, 500, 0)
    large = random_normals(rng, 500, rng.integers(FP32.bias, TOP_EXPONENT + 1, 500))
    vectors += list(zip(subnormals, large))

    # Products around the smallest normal: subnormal results, results that
    # round to zero and results that round up from subnormal to normal.
    a_exponents = rng.integers(1, TOP_EXPONENT + 1, 1000)
    product_exponents = rng.integers(-FP32.significand_bits - 2, 3, 1000)
    b_exponents = np.clip(product_exponents - a_exponents + FP32.bias, 0, TOP_EXPONENT)
    vectors += list(zip(random_normals(rng, 1000, a_exponents), random_normals(rng, 1000, b_exponents)))
    one_minus_ulp = FP32_EDGES["+1 - ulp"]
    min_normal = FP32_EDGES["+min normal"]
    min_subnormal = FP32_EDGES["+min subnormal"]
    vectors += [
        (one_minus_ulp, min_normal),
        (FP32_EDGES["+max subnormal"], encode(0, FP32.bias, 1)),
        (min_subnormal, FP32_EDGES["+0.5"]),
        (min_subnormal, encode(0, FP32.bias - 1, 1)),
        (min_subnormal, min_subnormal),
    ]

    # Subnormal products just above and just below a tie, where only the bits
    # that the subnormal right shift drops break the tie. With significands
    # A = 2**23 + 1 and B = 2**23 + 2**t - 1 the product is
    # 2**46 + 2**(23 + t) + 2**t - 1, and biased exponents that sum to
    # 127 - t shift it right by t, so 2**(23 + t) is the guard bit and
    # 2**t - 1 is shifted out. B = 2**23 + 2**t - 2 gives a product just below the tie.
    for _ in range(300):
        t = int(rng.integers(1, FP32.frac_bits))
        a_exponent = int(rng.integers(1, FP32.bias - t))
        b_exponent = FP32.bias - t - a_exponent
        a_sign, b_sign = (int(x) for x in rng.integers(0, 2, 2))
        below = int(rng.integers(0, 2))
        vectors.append((encode(a_sign, a_exponent, 1),
                        encode(b_sign, b_exponent, (1 << t) - 1 - below)))

    vectors += multiplier_tie_vectors()

    # Overflow: product exponents just above and below the largest finite binade.
    a_exponents = rng.integers(FP32.bias, TOP_EXPONENT + 1, 300)
    product_exponents = rng.integers(TOP_EXPONENT - 2, FP32.exp_max + 3, 300)
    b_exponents = np.clip(product_exponents - a_exponents + FP32.bias, 1, TOP_EXPONENT)
    vectors += list(zip(random_normals(rng, 300, a_exponents), random_normals(rng, 300, b_exponents)))
    vectors += [(FP32_EDGES["+max finite"], FP32_EDGES["+1 + ulp"]),
                (FP32_EDGES["+max finite"], FP32_EDGES["+1"])]
    return vectors


def in_normal_product_domain(a, b):
    """Return whether FP32NormalMultiplier defines the product of ``a`` and ``b``.

    Neither operand is subnormal, and the exact product of two finite
    nonzero operands is at least the smallest normal number.
    """
    for bits in (a, b):
        if (bits & ~SIGN_BIT) >> FP32.frac_bits == 0 and bits & FRACTION_MASK:
            return False
    finite = all((bits & ~SIGN_BIT) >> FP32.frac_bits != FP32.exp_max for bits in (a, b))
    if not finite or exact_value(a) == 0 or exact_value(b) == 0:
        return True
    return abs(exact_value(a) * exact_value(b)) >= exact_value(FP32_EDGES["+min normal"])


@functools.cache
def normal_multiplier_vectors():
    rng = np.random.default_rng(12)
    vectors = [v for v in multiplier_vectors() if in_normal_product_domain(*v)]
    # Products just above the smallest normal number, some of which round
    # up from just below a power of two.
    a_exponents = rng.integers(1, TOP_EXPONENT + 1, 1000)
    product_exponents = rng.integers(1, 4, 1000)
    b_exponents = np.clip(product_exponents - a_exponents + FP32.bias, 1, TOP_EXPONENT)
    candidates = zip(random_normals(rng, 1000, a_exponents), random_normals(rng, 1000, b_exponents))
    vectors += [v for v in candidates if in_normal_product_domain(*v)]
    return vectors


# Integer conversion vectors

def integer_vectors(width, seed):
    rng = np.random.default_rng(seed)
    low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
    values = [low, high, low + 1, high - 1, 0, 1, -1]
    for power in range(width - 1):
        values += [1 << power, -(1 << power), (1 << power) - 1, -(1 << power) + 1]

    # Ties above 2**24: a 24-bit significand m followed by a 1 and zeros lies
    # halfway between m and m + 1, and rounds to the even one.
    for shift in range(1, width - FP32.significand_bits):
        for m in rng.integers(1 << FP32.frac_bits, 1 << FP32.significand_bits, 8):
            tie = (int(m) << shift) + (1 << (shift - 1))
            values += [tie, -tie, tie - 1, tie + 1]

    # Python's generator, because NumPy's cannot draw 64-bit signed ranges.
    python_rng = random.Random(seed)
    values += [python_rng.randint(low, high) for _ in range(3000)]
    # Random magnitudes of every bit length.
    for _ in range(1000):
        magnitude = python_rng.getrandbits(python_rng.randint(1, width))
        values.append(python_rng.choice([-1, 1]) * magnitude)
    return [v for v in values if low <= v <= high]


def softfloat_int_to_fp32(value):
    if -(1 << 31) <= value < (1 << 31):
        return softfloat_bits(sf.i32_to_f32(sf.Int32.from_int(value)))
    return softfloat_bits(sf.i64_to_f32(sf.Int64.from_int(value)))


def numpy_int_to_fp32(values):
    return [int(x) for x in FP32.to_bits(np.array(values, dtype=np.int64).astype(np.float32))]


# FP16 product vectors

FP16_FRACTION_MASK = (1 << FP16.frac_bits) - 1


@functools.cache
def fp16_product_vectors():
    rng = np.random.default_rng(9)
    classes = [
        encode(0, 0, 0, FP16), encode(1, 0, 0, FP16),
        encode(0, 0, 1, FP16), encode(1, 0, 1, FP16),
        encode(0, 0, FP16_FRACTION_MASK, FP16), encode(1, 0, FP16_FRACTION_MASK, FP16),
        encode(0, 1, 0, FP16), encode(1, 1, 0, FP16),
        encode(0, FP16.exp_max - 1, FP16_FRACTION_MASK, FP16),
        encode(1, FP16.exp_max - 1, FP16_FRACTION_MASK, FP16),
        encode(0, FP16.bias, 0, FP16), encode(0, FP16.bias, 1, FP16),
        encode(0, FP16.exp_max, 0, FP16), encode(1, FP16.exp_max, 0, FP16),
        encode(0, FP16.exp_max, 1 << (FP16.frac_bits - 1), FP16),
        encode(0, FP16.exp_max, 1, FP16),
        encode(1, FP16.exp_max, FP16_FRACTION_MASK, FP16),
    ]
    # Random subnormals and normals of both signs.
    for _ in range(6):
        sign = int(rng.integers(0, 2))
        classes.append(encode(sign, 0, int(rng.integers(1, 1 << FP16.frac_bits)), FP16))
        classes.append(encode(sign, int(rng.integers(1, FP16.exp_max)),
                              int(rng.integers(0, 1 << FP16.frac_bits)), FP16))
    vectors = [(a, b) for a in classes for b in classes]

    vectors += [(int(a), int(b)) for a, b in rng.integers(0, 1 << FP16.width, (3000, 2))]

    subnormals = [encode(int(s), 0, int(f), FP16)
                  for s, f in zip(rng.integers(0, 2, 500), rng.integers(1, 1 << FP16.frac_bits, 500))]
    normals = [encode(int(s), int(e), int(f), FP16)
               for s, e, f in zip(rng.integers(0, 2, 500), rng.integers(1, FP16.exp_max, 500),
                                  rng.integers(0, 1 << FP16.frac_bits, 500))]
    vectors += list(zip(subnormals, normals)) + list(zip(subnormals, subnormals[::-1]))
    return vectors


def softfloat_fp16_product(vectors):
    results = []
    for a, b in vectors:
        a32 = sf.f16_to_f32(sf.Float16.from_bytes(a.to_bytes(FP16.width // 8, "big")))
        b32 = sf.f16_to_f32(sf.Float16.from_bytes(b.to_bytes(FP16.width // 8, "big")))
        results.append(softfloat_bits(sf.f32_mul(a32, b32)))
    return results


def numpy_fp16_product(vectors):
    a, b = np.array(vectors, dtype=np.int64).T
    with np.errstate(all="ignore"):
        product = FP16.from_bits(a).astype(np.float32) * FP16.from_bits(b).astype(np.float32)
    return [int(x) for x in FP32.to_bits(product)]


# Tests

def test_adder_matches_references():
    vectors = adder_vectors()
    rtl = simulate(FP32Adder(), ("a", "b"), vectors)
    assert_matches("FP32Adder", vectors, rtl, softfloat_binary(sf.f32_add, vectors), "SoftFloat")
    assert_matches("FP32Adder", vectors, rtl, numpy_binary(np.add, vectors), "NumPy")


def test_multiplier_matches_references():
    vectors = multiplier_vectors()
    rtl = simulate(FP32Multiplier(), ("a", "b"), vectors)
    assert_matches("FP32Multiplier", vectors, rtl, softfloat_binary(sf.f32_mul, vectors), "SoftFloat")
    assert_matches("FP32Multiplier", vectors, rtl, numpy_binary(np.multiply, vectors), "NumPy")


def test_normal_multiplier_matches_references():
    vectors = normal_multiplier_vectors()
    rtl = simulate(FP32NormalMultiplier(), ("a", "b"), vectors)
    assert_matches("FP32NormalMultiplier", vectors, rtl, softfloat_binary(sf.f32_mul, vectors), "SoftFloat")
    assert_matches("FP32NormalMultiplier", vectors, rtl, numpy_binary(np.multiply, vectors), "NumPy")


def test_normal_multiplier_vectors_reach_edge_results():
    vectors = normal_multiplier_vectors()
    products = [expected_rtl_result(r) & ~SIGN_BIT for r in softfloat_binary(sf.f32_mul, vectors)]
    ties = [v for v in multiplier_tie_vectors() if in_normal_product_domain(*v)]
    assert len(ties) >= 200, f"only {len(ties)} ties in the normal range"
    assert sum(1 for r in products if r == FP32_EDGES["+Inf"]) >= 100, "too few products overflow"
    assert sum(1 for r in products if r >> FP32.frac_bits == 1) >= 100, "too few products in the lowest binade"
    assert sum(1 for r in products if r == 0) >= 10, "too few zero products"
    assert FP32_EDGES["+min normal"] in products, "no product rounds up to the smallest normal"


@pytest.mark.parametrize("width", [1, 21, 32, 64])
def test_int_to_fp32_matches_references(width):
    values = integer_vectors(width, seed=width)
    rtl = simulate(IntToFP32(width), ("a",), [(v,) for v in values])
    unit = f"IntToFP32(width={width})"
    vectors = [(v,) for v in values]
    assert_matches(unit, vectors, rtl, [softfloat_int_to_fp32(v) for v in values], "SoftFloat")
    assert_matches(unit, vectors, rtl, numpy_int_to_fp32(values), "NumPy")


def test_fp16_product_matches_references():
    vectors = fp16_product_vectors()
    rtl = simulate(FP16ProductToFP32(), ("a", "b"), vectors)
    assert_matches("FP16ProductToFP32", vectors, rtl, softfloat_fp16_product(vectors), "SoftFloat")
    assert_matches("FP16ProductToFP32", vectors, rtl, numpy_fp16_product(vectors), "NumPy")


def test_numpy_float32_agrees_with_softfloat():
    # The golden model defines FP32 arithmetic as NumPy float32 operations.
    vectors = adder_vectors()
    assert_references_agree("add", vectors, softfloat_binary(sf.f32_add, vectors),
                            numpy_binary(np.add, vectors))
    vectors = multiplier_vectors()
    assert_references_agree("multiply", vectors, softfloat_binary(sf.f32_mul, vectors),
                            numpy_binary(np.multiply, vectors))
    vectors = fp16_product_vectors()
    assert_references_agree("fp16 product", vectors, softfloat_fp16_product(vectors),
                            numpy_fp16_product(vectors))
    for width in (21, 32, 64):
        values = integer_vectors(width, seed=width)
        assert_references_agree(f"int{width} to float32", [(v,) for v in values],
                                [softfloat_int_to_fp32(v) for v in values], numpy_int_to_fp32(values))


def test_tie_vectors_are_exact_ties():
    # The tie vectors are filtered to exact ties, so a broken construction
    # would shrink the class instead of failing. Guard its size.
    assert len(adder_tie_vectors()) >= 600
    assert len(multiplier_tie_vectors()) >= 500


def test_vector_classes_reach_edge_results():
    sums = [expected_rtl_result(r) for r in softfloat_binary(sf.f32_add, adder_vectors())]
    products = [expected_rtl_result(r) for r in softfloat_binary(sf.f32_mul, multiplier_vectors())]
    for name, results in (("sums", sums), ("products", products)):
        magnitudes = [r & ~SIGN_BIT for r in results]
        subnormal = sum(1 for r in magnitudes if 0 < r < FP32_EDGES["+min normal"])
        infinite = sum(1 for r in magnitudes if r == FP32_EDGES["+Inf"])
        assert subnormal >= 100, f"only {subnormal} {name} are subnormal"
        assert infinite >= 100, f"only {infinite} {name} are infinite"
    assert FP32_EDGES["+min normal"] in products, "no product rounds up to the smallest normal"


@pytest.mark.parametrize("width, error, message", [
    (0, ValueError, "width must be a positive integer, not 0"),
    (-3, ValueError, "width must be a positive integer, not -3"),
    (65, ValueError, "width must be at most 64, not 65"),
    (8.0, TypeError, "width must be a positive integer, not 8.0"),
    (True, TypeError, "width must be a positive integer, not True"),
])
def test_int_to_fp32_rejects_invalid_width(width, error, message):
    assert_constructor_raises(IntToFP32, (width,), error, message)


@pytest.mark.parametrize("arguments, error, message", [
    (("fp32", 28, 10), TypeError, "fmt must be a FloatFormat, not 'fp32'"),
    ((FP32, 24, 10), ValueError,
     "significand_width must be an integer of at least 25 (fp32 significand bits plus a guard bit), not 24"),
    ((FP32, 28, 1), ValueError, "exponent_width must be an integer of at least 2, not 1"),
])
def test_normalize_round_pack_rejects_invalid_parameters(arguments, error, message):
    assert_constructor_raises(NormalizeRoundPack, arguments, error, message)


@pytest.mark.parametrize("width", [1, 2, 3, 11, 16, 22, 28, 48])
def test_count_leading_zeros(width):
    rng = random.Random(width)
    values = [0, (1 << width) - 1] + [1 << bit for bit in range(width)]
    values += [rng.getrandbits(width) >> rng.randrange(width) for _ in range(200)]
    value = Signal(width)
    count = Signal(8)
    m = Module()
    m.d.comb += count.eq(count_leading_zeros(value))
    got = []

    async def testbench(ctx):
        for v in values:
            ctx.set(value, v)
            got.append(ctx.get(count))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    assert got == [width - v.bit_length() for v in values]


@pytest.mark.parametrize("min_exponent", [600, -513, 1.0, True])
def test_normalize_round_pack_rejects_invalid_min_exponent(min_exponent):
    assert_constructor_raises(lambda: NormalizeRoundPack(FP32, 28, 10, min_exponent=min_exponent), (), ValueError,
                              f"min_exponent must be an integer from -512 to 511, not {min_exponent!r}")


@pytest.mark.parametrize("factory, name", [
    (FP32Adder, "fp32_adder"),
    (FP32Multiplier, "fp32_multiplier"),
    (FP32NormalMultiplier, "fp32_normal_multiplier"),
    (lambda: IntToFP32(32), "int_to_fp32"),
    (FP16ProductToFP32, "fp16_product_to_fp32"),
])
def test_unit_converts_to_verilog(factory, name):
    text = verilog.convert(factory(), name=name)
    assert f"module {name}" in text


# FP32 to FP16 conversion

@functools.cache
def fp32_to_fp16_vectors():
    rng = np.random.default_rng(10)
    values = list(FP32_EDGES.values())
    values += random_encodings(rng, 2000)

    # Random values from below half the smallest binary16 subnormal to above
    # the binary16 maximum: zeros, subnormals, normals and overflow.
    exponents = rng.integers(FP32.bias - FP16.bias - FP16.frac_bits - 3, FP32.bias + FP16.bias + 3, 3000)
    values += random_normals(rng, 3000, exponents)

    # Exact ties between two binary16 neighbors, and the binary32 numbers
    # one ulp on either side. A normal binary16 number with fraction f and
    # biased exponent e plus half its ulp is (2**11 + 2f + 1) * 2**(e - bias - 11).
    for _ in range(600):
        exponent = int(rng.integers(1, FP16.exp_max))
        fraction = int(rng.integers(0, 1 << FP16.frac_bits))
        sign = int(rng.integers(0, 2)) << (FP32.width - 1)
        tie = encode_exact((1 << FP16.significand_bits) + 2 * fraction + 1,
                           exponent - FP16.bias - FP16.significand_bits) | sign
        values += [tie, tie - 1, tie + 1]
    # Ties between binary16 subnormals: (2f + 1) * 2**-25.
    fractions = [0, 1, 2, FP16_FRACTION_MASK - 1, FP16_FRACTION_MASK]
    fractions += [int(f) for f in rng.integers(0, 1 << FP16.frac_bits, 200)]
    for fraction in fractions:
        tie = encode_exact(2 * fraction + 1, -FP16.bias - FP16.frac_bits)
        values += [tie, tie - 1, tie + 1, tie ^ SIGN_BIT]

    # The overflow boundary: 65504, just below and at the tie 65520 with the
    # next power of two, which rounds to Inf.
    for value in (65504.0, 65519.996, 65520.0, 65536.0, -65520.0, 2.0 ** -24, 2.0 ** -25, 2.0 ** -14):
        bits = int(FP32.to_bits(np.float32(value)))
        values += [bits, bits - 1, bits + 1]
    return values


def softfloat_fp32_to_fp16(values):
    return [int.from_bytes(sf.f32_to_f16(softfloat(v)).to_bytes(), "big") for v in values]


def numpy_fp32_to_fp16(values):
    with np.errstate(all="ignore"):
        return [int(x) for x in FP16.to_bits(FP32.from_bits(np.array(values, dtype=np.int64)).astype(np.float16))]


def test_fp32_to_fp16_matches_references():
    values = fp32_to_fp16_vectors()
    rtl = simulate(FP32ToFP16(), ("a",), [(v,) for v in values])
    for reference_name, reference in (("SoftFloat", softfloat_fp32_to_fp16(values)),
                                      ("NumPy", numpy_fp32_to_fp16(values))):
        for value, rtl_result, reference_result in zip(values, rtl, reference):
            is_nan_result = bool(np.isnan(FP16.from_bits(reference_result)))
            expected = FP32ToFP16.CANONICAL_NAN if is_nan_result else reference_result
            assert rtl_result == expected, (
                f"FP32ToFP16({value:#010x}) = {rtl_result:#06x}, but {reference_name} gives "
                f"{reference_result:#06x} (expected {expected:#06x})")


def test_fp32_to_fp16_vectors_reach_edge_results():
    results = [r & 0x7FFF for r in softfloat_fp32_to_fp16(fp32_to_fp16_vectors())]
    infinity = encode(0, FP16.exp_max, 0, FP16)
    min_normal = encode(0, 1, 0, FP16)
    assert sum(1 for r in results if 0 < r < min_normal) >= 200, "too few subnormal results"
    assert sum(1 for r in results if r == infinity) >= 100, "too few infinite results"
    assert min_normal in results, "no result rounds up to the smallest normal"


def test_fp32_to_fp16_converts_to_verilog():
    text = verilog.convert(FP32ToFP16(), name="fp32_to_fp16")
    assert "module fp32_to_fp16" in text


# Pipelined units

def simulate_pipelined(dut, inputs, vectors, *, enable_probability=0.7, seed=0):
    """Apply one vector per enabled cycle to the pipelined ``dut`` and return the outputs of ``y``, in vector order.

    ``en`` is low in random cycles, and the inputs then carry another
    vector, which the unit must ignore. ``y`` must show the result of vector
    ``n`` from the cycle after the ``n + dut.stages``-th enabled cycle up to
    and including the next enabled cycle, so it must not change while ``en``
    is low.
    """
    rng = np.random.default_rng(seed)
    stages = dut.stages
    outputs = []

    async def testbench(ctx):
        enabled = 0
        while len(outputs) < len(vectors) or enabled - stages < len(vectors) - 1:
            enable = bool(rng.random() < enable_probability)
            if enable and enabled < len(vectors):
                vector = vectors[enabled]
            else:
                vector = vectors[int(rng.integers(0, len(vectors)))]
            for name, value in zip(inputs, vector):
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.en, enable)
            result = ctx.get(dut.y)
            # `y` now shows the result of this vector.
            current = enabled - stages
            if 0 <= current < len(vectors):
                if current == len(outputs):
                    outputs.append(result)
                assert result == outputs[current], (
                    f"y of vector {current} changed from {outputs[current]:#x} to {result:#x} "
                    f"while en was low")
            enabled += enable
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return outputs


PIPELINED_UNITS = {
    "adder": (lambda stages: FP32Adder(stages=stages), FP32Adder.MAX_STAGES, adder_vectors,
              lambda vectors: softfloat_binary(sf.f32_add, vectors)),
    "multiplier": (lambda stages: FP32Multiplier(stages=stages), FP32Multiplier.MAX_STAGES, multiplier_vectors,
                   lambda vectors: softfloat_binary(sf.f32_mul, vectors)),
    "normal_multiplier": (lambda stages: FP32NormalMultiplier(stages=stages), FP32NormalMultiplier.MAX_STAGES,
                          normal_multiplier_vectors, lambda vectors: softfloat_binary(sf.f32_mul, vectors)),
    "int21": (lambda stages: IntToFP32(21, stages=stages), IntToFP32.MAX_STAGES,
              lambda: [(v,) for v in integer_vectors(21, seed=21)],
              lambda vectors: [softfloat_int_to_fp32(v) for v, in vectors]),
    "int32": (lambda stages: IntToFP32(32, stages=stages), IntToFP32.MAX_STAGES,
              lambda: [(v,) for v in integer_vectors(32, seed=32)],
              lambda vectors: [softfloat_int_to_fp32(v) for v, in vectors]),
    "fp16_product": (lambda stages: FP16ProductToFP32(stages=stages), FP16ProductToFP32.MAX_STAGES,
                     fp16_product_vectors, softfloat_fp16_product),
}

PIPELINED_CASES = [(unit, stages) for unit, (_, max_stages, *_) in PIPELINED_UNITS.items()
                   for stages in range(1, max_stages + 1)]


@pytest.mark.parametrize("unit, stages", PIPELINED_CASES, ids=[f"{u}-{s}" for u, s in PIPELINED_CASES])
def test_pipelined_unit_matches_softfloat(unit, stages):
    factory, _, make_vectors, reference = PIPELINED_UNITS[unit]
    vectors = make_vectors()
    dut = factory(stages)
    inputs = ("a", "b") if len(vectors[0]) == 2 else ("a",)
    rtl = simulate_pipelined(dut, inputs, vectors, seed=stages)
    assert_matches(f"{unit} with {stages} stages", vectors, rtl, reference(vectors), "SoftFloat")


@pytest.mark.parametrize("factory, max_stages", [
    (lambda stages: FP32Adder(stages=stages), FP32Adder.MAX_STAGES),
    (lambda stages: FP32Multiplier(stages=stages), FP32Multiplier.MAX_STAGES),
    (lambda stages: FP32NormalMultiplier(stages=stages), FP32NormalMultiplier.MAX_STAGES),
    (lambda stages: IntToFP32(21, stages=stages), IntToFP32.MAX_STAGES),
    (lambda stages: FP16ProductToFP32(stages=stages), FP16ProductToFP32.MAX_STAGES),
    (lambda stages: NormalizeRoundPack(FP32, 28, 10, stages=stages), NormalizeRoundPack.MAX_STAGES),
], ids=["adder", "multiplier", "normal_multiplier", "int_to_fp32", "fp16_product", "normalize_round_pack"])
@pytest.mark.parametrize("stages", [-1, "over", 1.0, True])
def test_unit_rejects_invalid_stages(factory, max_stages, stages):
    stages = max_stages + 1 if stages == "over" else stages
    assert_constructor_raises(factory, (stages,), ValueError,
                              f"stages must be an integer from 0 to {max_stages}, not {stages!r}")


def test_unit_without_stages_has_no_enable():
    assert "en" not in FP32Adder().signature.members
    assert "en" in FP32Adder(stages=1).signature.members
