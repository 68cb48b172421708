"""The heterogeneous core in the Amaranth simulator, bit for bit against :func:`golden.compiler.run_layer`.

Each case compiles a layer, streams its smoothed FP16 activations through
the core and compares every output encoding with the golden model, with and
without stalls on both streams. The cycle counters are checked against the
handshakes that the testbench observes.
"""

import re
from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.compiler import CompilerConfig, compile_layer, run_layer
from golden.formats import FP16, FP32
from golden.hgq import HGQConfig
from golden.lowrank import SVDMPConfig
from golden.minilm import capture_linear_layers
from hw.config import RMCConfig
from hw.hetero import CoreConfig, HeterogeneousCore
from sim.core import core_stimulus

from .helpers import assert_constructor_raises

# Driver


@dataclass(frozen=True, eq=False)
class CoreResult:
    """Outputs and counters of one layer run in the Amaranth simulator.

    Attributes
    ----------
    outputs, expected : ndarray of uint32, shape (T * N / rows, rows)
        FP32 encodings of the received and the golden output beats.
    counters : dict of str to int
        ``busy``, ``stall_input`` and ``stall_output`` counted during this
        layer: their values ``IDLE_CYCLES`` cycles after its last output,
        minus their values before its first activation.
    pending_cycles : int
        Cycles in which a token is pending, as the testbench observes them: from
        the cycle that takes a token's first activation beat to the cycle
        that loads its last output beat into the ``y`` register.
    """

    outputs: np.ndarray
    expected: np.ndarray
    counters: dict
    pending_cycles: int


COUNTERS = ("busy", "stall_input", "stall_output")
# Cycles after the last output in which the counters must not change.
IDLE_CYCLES = 5


def packed_ints(rows):
    return [int.from_bytes(row.tobytes(), "little") for row in rows]


def token_cycles(config, layer):
    """Return an upper estimate of the cycles per token at full rate: the RMC beats plus the LVC's beats and K."""
    n, k = layer.shape
    cycles = (k // config.rmc.lanes) * (n // config.rmc.rows) + k + 100
    if config.rank:
        bits = np.zeros(config.rank, np.int64)
        bits[:len(layer.significand_bits)] = layer.significand_bits
        cycles += config.lvc_config().token_issue_cycles(bits, k, n)
    return cycles


def layer_stimulus(config, layer, x):
    """Return the arrays of :func:`sim.core.core_stimulus` for raw activations ``x`` (T x K).

    The activations are smoothed and rounded to FP16 as
    :func:`golden.compiler.run_layer` does, and the expected outputs are its
    ``output``.
    """
    x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
    return core_stimulus(config, layer, x_fp16, run_layer(layer, x).output)


def run_layers(config, layers, *, valid_probability=1.0, ready_probability=1.0, seed=0):
    """Run ``(layer, x)`` pairs one after the other on one core of ``config``; return a CoreResult each.

    Before each layer the testbench sets ``shape`` and writes the layer's
    loads. ``x.valid`` and ``y.ready`` are then high in each cycle with the
    given probabilities.
    """
    dut = HeterogeneousCore(config)
    rows = config.rmc.rows
    rng = np.random.default_rng(seed)
    runs = [(layer, x, layer_stimulus(config, layer, x)) for layer, x in layers]
    results = []

    async def stream_layer(ctx, layer, x, arrays):
        n, k = layer.shape
        tokens, k_beats, tiles = x.shape[0], k // config.rmc.lanes, n // rows
        activations = packed_ints(arrays["activations"])
        expected_beats = arrays["expected"]
        limit = 4 * tokens * token_cycles(config, layer) / min(valid_probability, ready_probability) + 1000
        before = {name: ctx.get(getattr(dut.counters, name)) for name in COUNTERS}
        received = []
        first_beat_cycles = []      # per token: the cycle that took its first activation beat
        y_valid, y_ready = [], []   # per cycle
        sent = cycle = 0
        while len(received) < len(expected_beats):
            offer = sent < len(activations) and rng.random() < valid_probability
            accept = bool(rng.random() < ready_probability)
            if offer:
                ctx.set(dut.x.payload.as_value(), activations[sent])
            ctx.set(dut.x.valid, offer)
            ctx.set(dut.y.ready, accept)
            took = offer and ctx.get(dut.x.ready)
            if took and sent % k_beats == 0:
                first_beat_cycles.append(cycle)
            valid = bool(ctx.get(dut.y.valid))
            y_valid.append(valid)
            y_ready.append(accept)
            if valid and accept:
                received.append(ctx.get(dut.y.payload.as_value()))
            await ctx.tick()
            cycle += 1
            sent += took
            assert cycle < limit, (f"timed out after {cycle} cycles: {sent} of {len(activations)} activation "
                                   f"beats sent, {len(received)} of {len(expected_beats)} outputs received")
        ctx.set(dut.x.valid, 0)
        await ctx.tick().repeat(IDLE_CYCLES)
        counters = {name: ctx.get(getattr(dut.counters, name)) - before[name] for name in COUNTERS}

        mask = (1 << FP32.width) - 1
        outputs = np.array([[(value >> (FP32.width * row)) & mask for row in range(rows)] for value in received],
                           dtype=np.uint32)
        # The combiner loads an output beat into the `y` register in cycle c when
        # `y.valid` is high in cycle c + 1 and the register was empty or taken in cycle c.
        loads = [c for c in range(len(y_valid) - 1) if y_valid[c + 1] and (not y_valid[c] or y_ready[c])]
        pending = set()
        for token, start in enumerate(first_beat_cycles):
            pending.update(range(start, loads[(token + 1) * tiles - 1] + 1))
        results.append(CoreResult(outputs=outputs, expected=expected_beats, counters=counters,
                                  pending_cycles=len(pending)))

    async def testbench(ctx):
        for layer, x, arrays in runs:
            ctx.set(dut.shape.as_value(), int(arrays["shape"]))
            for port in ("load", "lvc_load"):
                if port not in arrays:
                    continue
                stream = getattr(dut, port)
                for word in packed_ints(arrays[port]):
                    ctx.set(stream.payload.as_value(), word)
                    ctx.set(stream.valid, 1)
                    await ctx.tick()
                ctx.set(stream.valid, 0)
            await stream_layer(ctx, layer, x, arrays)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return results


def run_core(config, layer, x, **handshake):
    """Run one layer on a core of ``config``; see :func:`run_layers`."""
    return run_layers(config, [(layer, x)], **handshake)[0]


def assert_outputs_match(result, unit):
    """Assert that every output beat equals the golden one, naming the first mismatch."""
    got, expected = result.outputs, result.expected
    assert got.shape == expected.shape, f"{unit}: {got.shape} outputs, expected {expected.shape}"
    mismatched = np.argwhere(got != expected)
    if len(mismatched):
        beat, row = mismatched[0]
        raise AssertionError(
            f"{unit}: {len(mismatched)} of {got.size} outputs differ from the golden model; first at output "
            f"beat {beat}, row {row}: RTL {int(got[beat, row]):#010x}, golden {int(expected[beat, row]):#010x}")


def assert_counters_consistent(result, layer, config):
    """Assert what the counters promise: one busy cycle per RMC beat, and every pending cycle counted once."""
    n, k = layer.shape
    tokens = len(result.expected) // (n // config.rmc.rows)
    counters = result.counters
    assert counters["busy"] == tokens * (n // config.rmc.rows) * (k // config.rmc.lanes)
    assert counters["busy"] + counters["stall_input"] + counters["stall_output"] == result.pending_cycles


# Layers and cores

SMALL_QUANT = HGQConfig(64, 16, 2)
SVDMP = SVDMPConfig(wide_count=2)


def small_core(rank, *, svdmp=SVDMP, quant=SMALL_QUANT):
    """Return a core with 4 x 8 PEs and 8 LVC lanes for layers up to K = 128, N = 32."""
    return CoreConfig(rmc=RMCConfig(rows=4, lanes=8, quant=quant), rank=rank, lvc_lanes=8, svdmp=svdmp,
                      max_k=128, max_n=32)


def random_layer(k, n, rank, *, tokens=3, svdmp=SVDMP, quant=SMALL_QUANT, seed=0):
    """Return ``(layer, x)``: a random layer compiled with smoothing, and activations with an outlier channel."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, k))
    x[:, 3] *= 20.0
    weight = rng.standard_normal((n, k))
    bias = rng.standard_normal(n)
    layer = compile_layer(weight, bias, x, CompilerConfig(rank=rank, alpha=0.5, quant=quant, svdmp=svdmp))
    return layer, x


# (rank, SVD-MP configuration, valid probability, ready probability)
SMALL_RUNS = {
    "rank0-full-rate": (0, SVDMP, 1.0, 1.0),
    "rank0-stalls": (0, SVDMP, 0.6, 0.5),
    "rank4-full-rate": (4, SVDMP, 1.0, 1.0),
    "rank4-stalls": (4, SVDMP, 0.7, 0.4),
    "rank8-all-wide-stalls": (8, SVDMPConfig.all_wide(), 0.5, 0.7),
    # An output every 20 cycles on average, slower than the 16 RMC beats of a row tile.
    "rank4-slow-output": (4, SVDMP, 1.0, 0.05),
}


@pytest.mark.parametrize("rank, svdmp, valid, ready", SMALL_RUNS.values(), ids=SMALL_RUNS.keys())
def test_core_matches_golden(rank, svdmp, valid, ready):
    config = small_core(rank, svdmp=svdmp)
    layer, x = random_layer(128, 32, rank, svdmp=svdmp, seed=rank)
    result = run_core(config, layer, x, valid_probability=valid, ready_probability=ready, seed=1)
    assert_outputs_match(result, f"rank {rank}")
    assert_counters_consistent(result, layer, config)
    if valid == ready == 1.0:
        assert result.counters["stall_output"] == 0
    if ready < 0.1:
        assert result.counters["stall_output"] > 0


def test_smaller_layer_uses_shape_port():
    # The second layer has half of max_k and a quarter of max_n, and runs
    # after a full-size layer on the same core, whose words stay in the memories.
    config = small_core(4)
    full = random_layer(128, 32, 4, tokens=2, seed=5)
    small = random_layer(64, 8, 4, tokens=3, seed=6)
    full_result, small_result = run_layers(config, [full, small], valid_probability=0.8, ready_probability=0.8,
                                           seed=2)
    assert_outputs_match(full_result, "K = 128, N = 32")
    assert_outputs_match(small_result, "K = 64, N = 8")
    assert_counters_consistent(full_result, full[0], config)
    assert_counters_consistent(small_result, small[0], config)


def test_conventional_quantization():
    quant = HGQConfig.conventional(16)
    config = small_core(4, quant=quant)
    layer, x = random_layer(128, 16, 4, quant=quant, seed=7)
    result = run_core(config, layer, x, valid_probability=0.8, ready_probability=0.8, seed=3)
    assert_outputs_match(result, "conventional group-16")
    assert_counters_consistent(result, layer, config)


def test_minilm_tile():
    # The first 32 outputs of layer0.ffn_in (K = 384) on the first 3 tokens,
    # smoothed with factors from the whole text. All 8 components are wide.
    capture = capture_linear_layers()["layer0.ffn_in"]
    layer = compile_layer(capture.weight[:32], capture.bias[:32], capture.x, CompilerConfig(rank=8))
    config = CoreConfig(rmc=RMCConfig(rows=8, lanes=16), rank=8, lvc_lanes=16, max_k=384, max_n=32)
    assert layer.significand_bits.tolist() == [11] * 8
    result = run_core(config, layer, capture.x[:3])
    assert_outputs_match(result, "layer0.ffn_in tile")
    assert_counters_consistent(result, layer, config)
    assert result.counters["stall_output"] == 0


def range_limit_activations(k, seed):
    """Return 3 tokens of FP16 values at the range limits.

    Token 0 has +-65504 and a value that rounds to 65504 in its first coarse
    group and small normal values elsewhere. Token 1 has only subnormals,
    among them +-2**-24. Token 2 has 65504 in its first coarse group and
    subnormals in the second, so that the second group's scale is subnormal
    and its codes are not zero. Only a few values are large, so that the
    low-rank intermediate h stays below the FP16 maximum.
    """
    rng = np.random.default_rng(seed)
    group = SMALL_QUANT.coarse_group
    x = rng.standard_normal((3, k)) * 0.01
    x[0, :group] = rng.uniform(-1.0, 1.0, group) * 1000.0
    x[0, [1, 2, 3]] = [65504.0, -65504.0, 65519.0]
    subnormals = rng.integers(1, 1 << FP16.frac_bits, (2, k)) * rng.choice([-1, 1], (2, k)) * 2.0 ** -24
    x[1] = subnormals[0]
    x[1, [0, 1]] = [2.0 ** -24, -2.0 ** -24]
    x[2, :group] = rng.uniform(-1.0, 1.0, group) * 1000.0
    x[2, 0] = 65504.0
    x[2, group:2 * group] = subnormals[1, :group]
    return x


def test_fp16_range_limits():
    rank = 4
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((16, 128))
    x = range_limit_activations(128, seed=9)
    layer = compile_layer(weight, rng.standard_normal(16), None,
                          CompilerConfig(rank=rank, alpha=None, quant=SMALL_QUANT, svdmp=SVDMP))
    x_fp16 = x.astype(FP16.dtype)
    assert np.count_nonzero(np.abs(x_fp16) == FP16.max_finite) == 4
    assert np.count_nonzero(np.abs(x_fp16[1]) < FP16.min_normal) == 128
    assert np.count_nonzero(np.abs(x_fp16) == 2.0 ** -24) >= 2
    activations = run_layer(layer, x).activations
    assert np.all(activations.scales[1] < FP16.min_normal)
    assert activations.scales[2, 1] < FP16.min_normal
    assert np.count_nonzero(activations.codes[2, SMALL_QUANT.coarse_group:]) > 0
    config = small_core(rank)
    result = run_core(config, layer, x, valid_probability=0.7, ready_probability=0.7, seed=4)
    assert_outputs_match(result, "FP16 range limits")
    assert_counters_consistent(result, layer, config)


def test_zero_singular_value():
    # A weight of rank 3 compiled at rank 4: the fourth singular value is
    # rounding noise, and its column of L1 rounds to zero in FP16.
    rng = np.random.default_rng(10)
    weight = rng.standard_normal((16, 3)) @ rng.standard_normal((3, 128))
    x = rng.standard_normal((2, 128))
    layer = compile_layer(weight, rng.standard_normal(16), x, CompilerConfig(rank=4, quant=SMALL_QUANT, svdmp=SVDMP))
    assert layer.singular_values[3] < 1e-12 * layer.singular_values[0]
    assert np.count_nonzero(layer.l1[:, 3]) == 0
    assert np.count_nonzero(layer.l2[3]) > 0
    config = small_core(4)
    result = run_core(config, layer, x, ready_probability=0.6, seed=5)
    assert_outputs_match(result, "rank-deficient weight")
    assert_counters_consistent(result, layer, config)


# Parameters


@pytest.mark.parametrize("kwargs, error, message", [
    ({"rmc": HGQConfig()}, TypeError, "rmc must be an RMCConfig, not HGQConfig"),
    ({"svdmp": 4}, TypeError, "svdmp must be an SVDMPConfig, not int"),
    ({"rank": -1}, ValueError, "rank must be a non-negative integer, not -1"),
    ({"rank": True}, ValueError, "rank must be a non-negative integer, not True"),
    ({"lvc_lanes": 0}, ValueError, "lvc_lanes must be a positive integer, not 0"),
    ({"max_k": 128.0}, ValueError, "max_k must be a positive integer, not 128.0"),
    ({"max_n": None}, ValueError, "max_n must be a positive integer, not None"),
    ({"max_k": 96}, ValueError, "max_k must be a multiple of coarse_group (64), not 96"),
    ({"max_n": 30}, ValueError, "max_n must be a multiple of rows (4), not 30"),
    ({"rank": 40}, ValueError, "rank must be at most min(max_k, max_n) = 32, not 40"),
    ({"lvc_lanes": 6}, ValueError, "lvc_lanes must be a multiple of rows (4), not 6"),
    ({"max_n": 36, "lvc_lanes": 8}, ValueError, "max_n must be a multiple of lvc_lanes (8), not 36"),
])
def test_config_invalid(kwargs, error, message):
    arguments = {"rmc": RMCConfig(rows=4, lanes=8, quant=SMALL_QUANT), "rank": 4, "lvc_lanes": 8,
                 "max_k": 128, "max_n": 32, **kwargs}
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        CoreConfig(**arguments)


def test_config_without_lvc_ignores_lvc_lanes():
    config = CoreConfig(rmc=RMCConfig(rows=4, lanes=8, quant=SMALL_QUANT), rank=0, lvc_lanes=6, max_k=128, max_n=36)
    assert (config.k_beats, config.n_tiles) == (16, 9)


def test_core_rejects_other_config():
    assert_constructor_raises(HeterogeneousCore, [RMCConfig()], TypeError, "config must be a CoreConfig, not RMCConfig")


@pytest.mark.parametrize("rank, k, n, message", [
    (4, 192, 32, "K must be a positive multiple of coarse_group (64) up to max_k (128), not 192"),
    (4, 0, 32, "K must be a positive multiple of coarse_group (64) up to max_k (128), not 0"),
    (4, 96, 32, "K must be a positive multiple of coarse_group (64) up to max_k (128), not 96"),
    (4, 128, 12, "N must be a positive multiple of 8 up to max_n (32), not 12"),
    (4, 128, 40, "N must be a positive multiple of 8 up to max_n (32), not 40"),
    (0, 128, 0, "N must be a positive multiple of 4 up to max_n (32), not 0"),
    (0, 128, 6, "N must be a positive multiple of 4 up to max_n (32), not 6"),
])
def test_check_shape_invalid(rank, k, n, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        small_core(rank).check_shape(k, n)


def test_check_shape_accepts_smaller_layers():
    # Without the LVC, N needs to be a multiple of rows only.
    small_core(4).check_shape(64, 8)
    small_core(0).check_shape(64, 4)


def test_stimulus_rejects_unfitting_layers():
    layer, x = random_layer(128, 32, 4, tokens=1)
    with pytest.raises(ValueError, match=r"^layer rank must be at most the core's rank \(0\), not 4$"):
        layer_stimulus(small_core(0), layer, x)
    with pytest.raises(ValueError, match=r"^N must be a positive multiple of 4 up to max_n \(16\), not 32$"):
        layer_stimulus(CoreConfig(rmc=small_core(0).rmc, rank=4, lvc_lanes=4, max_k=128, max_n=16), layer, x)
