"""Cases, stimulus and cocotb runs of the low-rank vector core (LVC).

A case is a low-rank path in golden form: FP16 activations, ``L2`` and
``L1`` rounded to their components' significand widths, and the widths.
:func:`make_lvc_stimulus` turns it into the core's load beats, its activation
stream and the expected output beats of :func:`golden.lowrank.lowrank_matmul`.
"""

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golden.compiler import CompilerConfig, compile_layer
from golden.formats import FP16, FP32, FP32_CANONICAL_NAN
from golden.lowrank import SVDMPConfig, allocate_significands, lowrank_matmul, round_significand
from hw.lvc import LoadTarget, LVCConfig, dot_output_layout, generate_verilog, load_layout

from .packing import pack, payload_bytes
from .runner import build_design, default_build_root, run_testbench

__all__ = [
    "LowRankCase", "LVC_CASES", "make_lvc_case",
    "LVCStimulus", "make_lvc_stimulus", "LVCRun", "build_lvc", "simulate_lvc",
]


@dataclass(frozen=True, eq=False)
class LowRankCase:
    """Operands of one low-rank path run.

    Attributes
    ----------
    x : ndarray of float16, shape (T, K)
        Activations.
    l2 : ndarray of float16, shape (r, K)
    l1 : ndarray of float16, shape (N, r)
        Low-rank factors, rounded to ``bits`` by :func:`golden.lowrank.round_significand`.
    bits : ndarray of int64, shape (r,)
        Significand width of each component.
    """

    x: np.ndarray
    l2: np.ndarray
    l1: np.ndarray
    bits: np.ndarray

    def __post_init__(self):
        rank, k = self.l2.shape
        if self.x.ndim != 2 or self.x.shape[1] != k:
            raise ValueError(f"x must have shape (T, {k}), not {self.x.shape}")
        if self.l1.ndim != 2 or self.l1.shape[1] != rank:
            raise ValueError(f"l1 must have shape (N, {rank}), not {self.l1.shape}")
        if self.bits.shape != (rank,):
            raise ValueError(f"bits must have shape ({rank},), not {self.bits.shape}")

    @property
    def tokens(self):
        return self.x.shape[0]

    @property
    def k(self):
        return self.x.shape[1]

    @property
    def n(self):
        return self.l1.shape[0]

    @property
    def rank(self):
        return self.l2.shape[0]


def _case_shape(config):
    """Return (rank, K, N) of the synthetic cases: small, below the core's maxima and not multiples of ``lanes``."""
    rank = max(1, config.max_rank - 1) if config.max_rank > config.lanes else config.max_rank
    k = max(1, min(config.max_k, 32) - 3)
    n = max(1, min(config.max_n, 4 * config.lanes) - 1)
    return min(rank, k, n), k, n


def _random_fp16(rng, shape, low_exponent=-8, high_exponent=2):
    values = rng.standard_normal(shape) * np.ldexp(1.0, rng.integers(low_exponent, high_exponent + 1, shape))
    return values.astype(FP16.dtype)


def _round_factors(l1, l2, bits):
    return round_significand(l1, bits[None, :]), round_significand(l2, bits[:, None])


@functools.cache
def _minilm_layer(rank, svdmp):
    """Return the smoothed FP16 activations and the compiled layer0.ffn_in, computed once per setting."""
    from golden.minilm import capture_linear_layers
    capture = capture_linear_layers()["layer0.ffn_in"]
    layer = compile_layer(capture.weight, capture.bias, capture.x, CompilerConfig(rank=rank, alpha=0.5, svdmp=svdmp))
    return (capture.x / layer.smoothing).astype(FP16.dtype), layer


def minilm_case(config, rng, tokens=2):
    """Return a tile of layer0.ffn_in of all-MiniLM-L6-v2 at the core's shape.

    :func:`golden.compiler.compile_layer` compiles the whole layer with
    smoothing alpha 0.5 at rank ``min(max_rank, 32)``, with the default
    SVD-MP allocation: the 8 largest components keep ``wide_bits`` and the
    others 4 bits. The tile is the first ``tokens`` tokens, the first
    ``min(max_k, 384)`` input channels and the first ``min(max_n, 1536)``
    outputs.
    """
    svdmp = SVDMPConfig(wide_bits=config.svdmp.wide_bits, narrow_bits=min(4, config.svdmp.wide_bits),
                        slice_bits=config.svdmp.slice_bits)
    x, layer = _minilm_layer(min(config.max_rank, 32), svdmp)
    k = min(config.max_k, x.shape[1])
    n = min(config.max_n, layer.l1.shape[0])
    return LowRankCase(x=x[:tokens, :k].copy(), l2=layer.l2[:, :k].copy(), l1=layer.l1[:n].copy(),
                       bits=layer.significand_bits.copy())


def random_case(config, rng, tokens=3):
    """Return random factors with random widths from 1 to ``wide_bits`` and random activations."""
    rank, k, n = _case_shape(config)
    bits = rng.integers(1, config.svdmp.wide_bits + 1, rank)
    l1, l2 = _round_factors(_random_fp16(rng, (n, rank)), _random_fp16(rng, (rank, k)), bits)
    return LowRankCase(x=_random_fp16(rng, (tokens, k), -12, 4), l2=l2, l1=l1, bits=bits)


def _allocated_case(config, rng, wide_count, tokens=2):
    rank, k, n = _case_shape(config)
    singular_values = np.sort(rng.uniform(0.1, 4.0, rank))[::-1]
    svdmp = SVDMPConfig(wide_bits=config.svdmp.wide_bits, narrow_bits=min(4, config.svdmp.wide_bits),
                        slice_bits=config.svdmp.slice_bits, wide_count=wide_count)
    bits = allocate_significands(singular_values, svdmp)
    l1, l2 = _round_factors(_random_fp16(rng, (n, rank)), _random_fp16(rng, (rank, k)), bits)
    return LowRankCase(x=_random_fp16(rng, (tokens, k)), l2=l2, l1=l1, bits=bits)


def all_wide_case(config, rng):
    """Return random factors in which every component is wide."""
    return _allocated_case(config, rng, wide_count=config.max_rank)


def all_narrow_case(config, rng):
    """Return random factors in which every component is narrow (4 bits, or ``wide_bits`` if fewer)."""
    return _allocated_case(config, rng, wide_count=0)


def zero_component_case(config, rng):
    """Return SVD factors of a random weight whose last singular value is set to 0.

    That component's column of ``L1 = U_r S_r`` is all +0, and its row of
    ``L2 = V_r^T`` is a unit vector, so its h is finite and adds only zero
    products to the outputs.
    """
    rank, k, n = _case_shape(config)
    u, s, vt = np.linalg.svd(rng.standard_normal((n, k)), full_matrices=False)
    s[rank - 1] = 0.0
    svdmp = SVDMPConfig(wide_bits=config.svdmp.wide_bits, narrow_bits=min(4, config.svdmp.wide_bits),
                        slice_bits=config.svdmp.slice_bits, wide_count=1)
    bits = allocate_significands(s[:rank], svdmp)
    l1, l2 = _round_factors((u[:, :rank] * s[:rank]).astype(FP16.dtype), vt[:rank].astype(FP16.dtype), bits)
    return LowRankCase(x=_random_fp16(rng, (2, k), -2, 4), l2=l2, l1=l1, bits=bits)


def range_limits_case(config, rng):
    """Return activations at the FP16 limits: +-65504, the smallest normal, subnormals and signed zeros.

    Token 0 is 65504 everywhere, so that h of component 0, whose L2 row is
    large, overflows FP16 to +Inf: the outputs become +-Inf, and NaN at
    output 0, whose L1 weight of component 0 is 0. The other components
    stay finite. Token 1 has only subnormals and zeros, so that h is
    subnormal or zero, and token 2 mixes all the limits.
    """
    rank, k, n = _case_shape(config)
    bits = np.full(rank, config.svdmp.wide_bits)
    bits[rank // 2:] = min(4, config.svdmp.wide_bits)
    l2 = _random_fp16(rng, (rank, k), -14, -12)
    l2[0] = np.abs(_random_fp16(rng, k, 0, 2))
    l2[:, 0] = FP16.min_subnormal
    l1 = _random_fp16(rng, (n, rank), -4, 0)
    l1[0, 0] = 0
    l1, l2 = _round_factors(l1, l2, bits)
    subnormals = [FP16.min_subnormal, -FP16.min_subnormal, FP16.min_normal - FP16.min_subnormal, 0.0, -0.0]
    limits = [FP16.max_finite, -FP16.max_finite, FP16.min_normal, -FP16.min_normal] + subnormals
    x = np.stack([np.full(k, FP16.max_finite), rng.choice(subnormals, k), rng.choice(limits, k)])
    return LowRankCase(x=x.astype(FP16.dtype), l2=l2, l1=l1, bits=bits)


def rank_zero_case(config, rng):
    """Return a path of rank 0, whose outputs are all +0."""
    _, k, n = _case_shape(config)
    return LowRankCase(x=_random_fp16(rng, (2, k)), l2=np.zeros((0, k), FP16.dtype),
                       l1=np.zeros((n, 0), FP16.dtype), bits=np.zeros(0, np.int64))


LVC_CASES = {
    "minilm": minilm_case,
    "random": random_case,
    "all_wide": all_wide_case,
    "all_narrow": all_narrow_case,
    "zero_component": zero_component_case,
    "range_limits": range_limits_case,
    "rank_zero": rank_zero_case,
}


def make_lvc_case(name, config, seed=0):
    """Return the :class:`LowRankCase` ``name`` at a shape that fits a core of ``config``."""
    if name not in LVC_CASES:
        raise ValueError(f"case must be one of {', '.join(LVC_CASES)}, not {name!r}")
    return LVC_CASES[name](config, np.random.default_rng(seed))


@dataclass(frozen=True, eq=False)
class LVCStimulus:
    """Packed load beats, activations and expected outputs of one LVC run.

    Attributes
    ----------
    loads : ndarray of uint8, shape (load beats, payload bytes)
    activations : ndarray of int64, shape (T * K,)
        FP16 encodings, token after token.
    expected : ndarray of uint32, shape (T * tiles, lanes)
        FP32 encodings of :func:`golden.lowrank.lowrank_matmul`, with NaN as
        :data:`FP32_CANONICAL_NAN`. Lanes above N in the last tile are the
        golden outputs of the zero rows that the loads write there.
    rank, k, n, tokens : int
    """

    loads: np.ndarray
    activations: np.ndarray
    expected: np.ndarray
    rank: int
    k: int
    n: int
    tokens: int

    def outputs_to_matrix(self, output_bits):
        """Turn output beats (uint32, (T * tiles, lanes)) into float32 Y of shape (T, N)."""
        y = np.asarray(output_bits, dtype=np.uint32).reshape(self.tokens, -1)
        return FP32.from_bits(y[:, :self.n])


def make_lvc_stimulus(config, case):
    """Build the load beats, activations and golden outputs of ``case`` on a core of ``config``.

    Raises
    ------
    TypeError
        If ``config`` is not an :class:`~hw.lvc.LVCConfig`.
    ValueError
        If the case does not fit the core's maxima, or a width is out of range.
    """
    if not isinstance(config, LVCConfig):
        raise TypeError(f"config must be an LVCConfig, not {type(config).__name__}")
    for name, value, limit in (("rank", case.rank, config.max_rank), ("K", case.k, config.max_k),
                               ("N", case.n, config.max_n)):
        if value > limit:
            raise ValueError(f"case {name} must be at most the core's {limit}, not {value}")
    if case.k == 0 or case.n == 0:
        raise ValueError(f"case K and N must be positive, not K={case.k}, N={case.n}")
    if case.bits.size and (case.bits.min() < 1 or case.bits.max() > config.svdmp.wide_bits):
        raise ValueError(f"case widths must be from 1 to {config.svdmp.wide_bits}, not {case.bits.tolist()}")

    lanes = config.lanes
    groups = -(-case.rank // lanes)
    tiles = -(-case.n // lanes)
    l2 = np.zeros((groups * lanes, case.k), FP16.dtype)
    l2[:case.rank] = case.l2
    l1 = np.zeros((tiles * lanes, case.rank), FP16.dtype)
    l1[:case.n] = case.l1
    bits = np.zeros(groups * lanes, np.int64)
    bits[:case.rank] = case.bits

    targets, addresses, words = [], [], []
    for group in range(groups):
        lanes_of_group = slice(group * lanes, (group + 1) * lanes)
        for k in range(case.k):
            targets.append(LoadTarget.L2.value)
            addresses.append(config.l2_address(group, k))
            words.append(FP16.to_bits(l2[lanes_of_group, k]))
        targets.append(LoadTarget.WIDTHS.value)
        addresses.append(group)
        words.append(bits[lanes_of_group])
    for tile in range(tiles):
        for component in range(case.rank):
            targets.append(LoadTarget.L1.value)
            addresses.append(config.l1_address(tile, component))
            words.append(FP16.to_bits(l1[tile * lanes:(tile + 1) * lanes, component]))
    count = len(targets)
    loads = pack(load_layout(lanes, config.address_depth), {
        "target": np.array(targets, np.int64),
        "address": np.array(addresses, np.int64),
        "data": np.array(words, np.int64).reshape(count, lanes),
    }, count)

    y, _ = lowrank_matmul(case.x, l2[:case.rank], l1)
    expected = FP32.to_bits(y).astype(np.uint32)
    expected[np.isnan(y)] = FP32_CANONICAL_NAN
    return LVCStimulus(
        loads=loads,
        activations=FP16.to_bits(case.x).reshape(-1),
        expected=expected.reshape(case.tokens * tiles, lanes),
        rank=case.rank, k=case.k, n=case.n, tokens=case.tokens,
    )


@dataclass(frozen=True, eq=False)
class LVCRun:
    """Result of one LVC simulation.

    Attributes
    ----------
    y, expected : ndarray of float32, shape (T, N)
        Outputs received from the RTL, and the golden outputs.
    mismatches : int
        Outputs, over all lanes of every output beat, whose FP32 encoding
        differs from the golden one.
    cycles : int
        Clock cycles from the first activation offered to the last output received.
    busy_cycles, input_stall_cycles, output_stall_cycles : int
        The core's counters at the end of the run.
    wall_seconds : float
        Simulation wall time, build excluded.
    """

    y: np.ndarray
    expected: np.ndarray
    mismatches: int
    cycles: int
    busy_cycles: int
    input_stall_cycles: int
    output_stall_cycles: int
    wall_seconds: float


def _cycle_limit(config, case, probability):
    """Return a cycle count that a run of ``case`` exceeds only when the core hangs: 4 times the expected one."""
    per_token = config.token_issue_cycles(case.bits, case.k, case.n) + case.k + 20
    return int(4 * case.tokens * per_token / probability) + 1000


def build_lvc(config, simulator, build_root=None, *, waves=None):
    """Generate the Verilog of a core of ``config`` and build it for ``simulator``; return the build directory."""
    build_root = Path(build_root).resolve() if build_root else default_build_root()
    build_dir = build_root / f"{config.name}-{simulator}"
    return build_design(generate_verilog(config), config.name, simulator, build_dir, waves=waves)


def simulate_lvc(config, case, simulator, *, run_name="run", build_root=None, valid_probability=1.0,
                 ready_probability=1.0, seed=0, quiet=False, waves=None):
    """Run ``case`` through the RTL of a core of ``config`` in cocotb and check every output bit for bit.

    Returns an :class:`LVCRun`. Under pytest, a mismatch fails the cocotb
    test and so raises; elsewhere the mismatch count is returned.
    """
    for name, probability in (("valid_probability", valid_probability), ("ready_probability", ready_probability)):
        if not 0.05 <= probability <= 1.0:
            raise ValueError(f"{name} must be in [0.05, 1], not {probability}")
    stimulus = make_lvc_stimulus(config, case)
    build_dir = build_lvc(config, simulator, build_root, waves=waves)
    test_dir = build_dir / "runs" / run_name
    test_dir.mkdir(parents=True, exist_ok=True)
    stimulus_path = test_dir / "stimulus.npz"
    results_path = test_dir / "results.npz"
    results_path.unlink(missing_ok=True)
    np.savez(stimulus_path, loads=stimulus.loads, activations=stimulus.activations, expected=stimulus.expected,
             rank=stimulus.rank, k=stimulus.k, n=stimulus.n,
             valid_probability=valid_probability, ready_probability=ready_probability, seed=seed,
             max_cycles=_cycle_limit(config, case, min(valid_probability, ready_probability)),
             output_bytes=payload_bytes(dot_output_layout(config.lanes)))

    start = time.perf_counter()
    run_testbench("sim.lvc_tb", config.name, simulator, build_dir, test_dir, {
        "SEVEDO_STIMULUS": stimulus_path,
        "SEVEDO_RESULTS": results_path,
    }, waves=waves, quiet=quiet)
    wall = time.perf_counter() - start
    if not results_path.exists():
        raise RuntimeError(f"the simulation wrote no results; see the log in {test_dir}")
    results = np.load(results_path)
    got = results["outputs"]
    return LVCRun(
        y=stimulus.outputs_to_matrix(got),
        expected=stimulus.outputs_to_matrix(stimulus.expected),
        mismatches=int(np.count_nonzero(got != stimulus.expected)),
        cycles=int(results["cycles"]),
        busy_cycles=int(results["busy_cycles"]),
        input_stall_cycles=int(results["input_stall_cycles"]),
        output_stall_cycles=int(results["output_stall_cycles"]),
        wall_seconds=wall,
    )
