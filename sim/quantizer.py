"""Stimulus, named input cases and cocotb runs of the online HGQ quantizer.

Each token's row of K FP16 encodings becomes ``K / lanes`` input beats, row
after row. The quantizer emits one output beat per input beat, in the same
order, and :func:`make_quantizer_stimulus` packs the golden outputs of
:func:`golden.quantizer.quantizer_steps` the same way.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golden.formats import FP16
from golden.quantizer import quantizer_steps
from hw.quantizer import (
    FP16_QUIET_NAN,
    generate_verilog,
    input_layout,
    output_layout,
    quantizer_name,
)

from .packing import pack, unpack
from .runner import build_design, default_build_root, run_testbench

__all__ = [
    "QuantizerStimulus", "make_quantizer_stimulus", "describe_mismatch",
    "QUANTIZER_CASES", "make_quantizer_input", "minilm_ffn_in_bits",
    "QuantizerSegment", "QuantizerRun", "build_quantizer", "simulate_quantizer",
]


@dataclass(frozen=True, eq=False)
class QuantizerStimulus:
    """Packed input beats and expected output beats of one quantizer run.

    Attributes
    ----------
    beats : ndarray of uint8, shape (beats, input payload bytes)
    expected : ndarray of uint8, shape (beats, output payload bytes)
    invalid : bool
        Whether the input contains NaN or Inf, so that the ``invalid`` flag
        must be high at the end.
    """

    beats: np.ndarray
    expected: np.ndarray
    invalid: bool


def _finite(bits):
    return ((bits >> FP16.frac_bits) & FP16.exp_max) != FP16.exp_max


def make_quantizer_stimulus(bits, quant, lanes):
    """Build the input beats and golden output beats for the FP16 encodings ``bits`` (rows x K).

    A coarse group that contains NaN or Inf is expected with codes 0, shift
    codes 0 and the scale :data:`hw.quantizer.FP16_QUIET_NAN`, as the
    quantizer documents. Every other group is expected as
    :func:`golden.quantizer.quantizer_steps` computes it.

    Raises
    ------
    ValueError
        If ``bits`` is not 2-D or K is not a multiple of the coarse group.
    """
    bits = np.asarray(bits, dtype=np.int64)
    if bits.ndim != 2 or bits.size == 0:
        raise ValueError(f"bits must be a non-empty 2-D array, not shape {bits.shape}")
    rows, k = bits.shape
    quant.check_length(k, name="row length K")
    coarse_count = k // quant.coarse_group

    bad_groups = ~_finite(bits).reshape(rows, coarse_count, quant.coarse_group).all(axis=2)
    bad_elements = np.repeat(bad_groups, quant.coarse_group, axis=1)
    steps = quantizer_steps(np.where(bad_elements, 0, bits), quant)
    codes = np.where(bad_elements, 0, steps.codes)
    shifts = np.where(np.repeat(bad_groups, quant.fine_per_coarse, axis=1), 0, steps.shifts)
    scales = np.where(bad_groups, FP16_QUIET_NAN, steps.scale_bits)

    beats_per_row = k // lanes
    count = rows * beats_per_row
    start = np.arange(beats_per_row) * lanes
    last = np.tile(np.arange(beats_per_row) == beats_per_row - 1, rows)
    inputs = pack(input_layout(lanes), {"x": bits.reshape(count, lanes), "last": last}, count)
    expected = pack(output_layout(quant, lanes), {
        "codes": codes.reshape(count, lanes),
        "shift": shifts[:, start // quant.fine_group].reshape(count),
        "scale": scales[:, start // quant.coarse_group].reshape(count),
        "last": last,
    }, count)
    return QuantizerStimulus(beats=inputs, expected=expected, invalid=bool(bad_groups.any()))


def describe_mismatch(quant, lanes, got, expected):
    """Return a message naming the first output beat and field where ``got`` differs from ``expected``, or None.

    Both arguments are packed output beats (uint8 rows).
    """
    differs = np.any(got != expected, axis=1)
    if not differs.any():
        return None
    beat = int(np.argmax(differs))
    layout = output_layout(quant, lanes)
    got_fields = unpack(layout, got[beat:beat + 1])
    expected_fields = unpack(layout, expected[beat:beat + 1])
    fields = [f"{name}: RTL {got_fields[name][0].tolist()}, golden {expected_fields[name][0].tolist()}"
              for name in got_fields if not np.array_equal(got_fields[name], expected_fields[name])]
    return (f"{int(differs.sum())} of {len(differs)} output beats differ from the golden model; "
            f"first at beat {beat}: " + "; ".join(fields))


def _row_pattern(pattern, k):
    """Repeat a 1-D pattern of values to fill a row of ``k``."""
    pattern = np.asarray(pattern, dtype=np.float64)
    return np.resize(pattern, k)


@functools.cache
def minilm_ffn_in_bits():
    """Return the FP16 encodings of the input of layer0.ffn_in (59 tokens x 384), captured once per process."""
    from golden.minilm import capture_linear_layers
    bits = FP16.to_bits(capture_linear_layers()["layer0.ffn_in"].x.astype(np.float16))
    bits.flags.writeable = False
    return bits


def minilm_tokens(quant, rng):
    """Return the first four tokens of layer0.ffn_in, whose [CLS] token carries the largest outliers."""
    bits = minilm_ffn_in_bits()[:4]
    quant.check_length(bits.shape[1], name="MiniLM row length K")
    return bits.copy()


def random_bits(quant, rng):
    """Return random finite FP16 bit patterns of both signs, all binades included."""
    bits = rng.integers(0, 1 << FP16.width, (3, 2 * quant.coarse_group))
    # Clear the top exponent bit of NaN and Inf patterns to make them finite.
    return np.where(_finite(bits), bits, bits & ~(1 << (FP16.width - 2)))


def edge_values(quant, rng):
    """Return one row per edge case of the quantizer, each two coarse groups long.

    Rows: all zeros (with -0), ties at ``k + 0.5`` times the scale, codes -8
    from subnormal groups, a single 65504 outlier among tiny values, random
    subnormals, the FP16 extremes, scales that round to +0, and mixed signs.
    """
    k = 2 * quant.coarse_group
    tiny = FP16.min_subnormal
    rows = []

    zeros = np.zeros(k)
    zeros[1::3] = -0.0
    rows.append(zeros)

    # Coarse amax 7 gives scale 1, so k + 0.5 is a tie. A fine amax of 1.75
    # gives shift 2 (or smax), and then (k + 0.5) / 4 is a tie too.
    ties = _row_pattern(np.r_[7.0, np.arange(7) + 0.5, -(np.arange(7) + 0.5), -7.0], k)
    fine = quant.fine_group
    ties[fine:2 * fine] = _row_pattern(np.r_[1.75, (np.arange(7) + 0.5) / 4, -(np.arange(7) + 0.5) / 4], fine)
    rows.append(ties)

    # amax 10 * 2**-24 gives scale 2**-24 and ratio 10, so -8 everywhere.
    # amax 15 and 17 (scale 2) give the ties 7.5 and 8.5.
    minus_eight = np.full(k, -10 * tiny)
    minus_eight[quant.coarse_group:] = _row_pattern([15 * tiny, -15 * tiny, 17 * tiny, -17 * tiny, -9 * tiny], k // 2)
    rows.append(minus_eight)

    outlier = _row_pattern([tiny, -1e-3, 2.0 ** -14, 0.0, -0.25], k)
    outlier[rng.integers(0, quant.coarse_group)] = FP16.max_finite
    outlier[quant.coarse_group + rng.integers(0, quant.coarse_group)] = -FP16.max_finite
    rows.append(outlier)

    rows.append(rng.integers(-(1 << FP16.frac_bits) + 1, 1 << FP16.frac_bits, k) * tiny)

    extremes = _row_pattern([FP16.max_finite, -FP16.max_finite, tiny, -tiny, FP16.min_normal, 0.0], k)
    extremes[quant.coarse_group:] = _row_pattern([2.0 ** -14 - tiny, -FP16.min_normal, 2 * tiny, 1e-4], k // 2)
    rows.append(extremes)

    # amax 3 * 2**-24: amax / 7 is below half the smallest subnormal, so the scale is +0.
    rows.append(_row_pattern([3 * tiny, -2 * tiny, tiny, 0.0], k))

    rows.append(rng.standard_normal(k) * np.exp(2 * rng.standard_normal(k)))
    return FP16.to_bits(np.array(rows).astype(np.float16))


def non_finite(quant, rng):
    """Return finite rows with NaN and Inf in some coarse groups, which the quantizer flags as invalid."""
    bits = FP16.to_bits(rng.standard_normal((3, 2 * quant.coarse_group)).astype(np.float16))
    inf = FP16.exp_max << FP16.frac_bits
    bits[0, 5] = inf
    bits[1, quant.coarse_group + 2] = inf | (1 << (FP16.width - 1))
    bits[2, quant.coarse_group - 1] = FP16_QUIET_NAN
    return bits


QUANTIZER_CASES = {
    "minilm": minilm_tokens,
    "random": random_bits,
    "edges": edge_values,
    "non_finite": non_finite,
}


def make_quantizer_input(case, quant, seed=0):
    """Return the FP16 encodings (int64, rows x K) of the input case ``case``."""
    if case not in QUANTIZER_CASES:
        raise ValueError(f"case must be one of {', '.join(QUANTIZER_CASES)}, not {case!r}")
    return QUANTIZER_CASES[case](quant, np.random.default_rng(seed))


@dataclass(frozen=True)
class QuantizerSegment:
    """One input of a quantizer simulation, with its handshake settings.

    Attributes
    ----------
    bits : array_like of int, shape (rows, K)
        FP16 encodings, NaN and Inf included.
    valid_probability, ready_probability : float
        Probability that the source offers a beat in a cycle, and that the
        sink accepts one. 1.0 means no stalls.
    """

    bits: object
    valid_probability: float = 1.0
    ready_probability: float = 1.0

    def __post_init__(self):
        for name in ("valid_probability", "ready_probability"):
            probability = getattr(self, name)
            if not 0.05 <= probability <= 1.0:
                raise ValueError(f"{name} must be in [0.05, 1], not {probability}")


@dataclass(frozen=True, eq=False)
class QuantizerRun:
    """Result of one segment of a quantizer simulation.

    Attributes
    ----------
    got, expected : ndarray of uint8, shape (beats, output payload bytes)
        Output beats received from the RTL, and the golden ones.
    mismatches : int
        Output beats that differ from the golden ones.
    invalid, expected_invalid : bool
        The ``invalid`` flag after the segment's last output beat, and its
        golden value.
    cycles : int
        Clock cycles from the first beat offered to the last output beat received.
    """

    got: np.ndarray
    expected: np.ndarray
    mismatches: int
    invalid: bool
    expected_invalid: bool
    cycles: int


def build_quantizer(quant, lanes, simulator, build_root=None, *, waves=None):
    """Generate the quantizer's Verilog, build it for ``simulator`` and return the build directory."""
    build_root = Path(build_root).resolve() if build_root else default_build_root()
    name = quantizer_name(quant, lanes)
    build_dir = build_root / f"{name}-{simulator}"
    return build_design(generate_verilog(quant, lanes), name, simulator, build_dir, waves=waves)


def simulate_quantizer(quant, lanes, segments, simulator, *, run="run", build_root=None, seed=0, quiet=False,
                       waves=None):
    """Stream each segment through the quantizer RTL, with a reset between segments, in one simulation.

    Parameters
    ----------
    quant : HGQConfig
    lanes : int
    segments : dict of str to QuantizerSegment
    simulator : str
        ``"icarus"`` or ``"verilator"``.
    run : str
        Name of the run's folder under the build directory.
    seed : int
        Seed of the random stalls.

    Returns
    -------
    dict of str to QuantizerRun
        The result of every segment. The cocotb test fails when a segment
        times out or an output has X or Z bits, but it does not judge the
        values, so the caller checks ``mismatches`` and ``invalid``.

    Raises
    ------
    RuntimeError
        If the cocotb test fails or writes no results.
    """
    stimuli = {name: make_quantizer_stimulus(segment.bits, quant, lanes) for name, segment in segments.items()}
    build_dir = build_quantizer(quant, lanes, simulator, build_root, waves=waves)
    test_dir = build_dir / "runs" / run
    test_dir.mkdir(parents=True, exist_ok=True)
    stimulus_path = test_dir / "stimulus.npz"
    results_path = test_dir / "results.npz"
    results_path.unlink(missing_ok=True)
    ends = np.cumsum([len(stimulus.beats) for stimulus in stimuli.values()])
    np.savez(
        stimulus_path,
        beats=np.concatenate([stimulus.beats for stimulus in stimuli.values()]),
        expected=np.concatenate([stimulus.expected for stimulus in stimuli.values()]),
        segment_ends=ends,
        segment_names=np.array(list(segments)),
        valid_probability=[segment.valid_probability for segment in segments.values()],
        ready_probability=[segment.ready_probability for segment in segments.values()],
        seed=seed, coarse_group=quant.coarse_group, fine_group=quant.fine_group,
        shift_bits=quant.shift_bits, lanes=lanes)

    tests, failures = run_testbench("sim.quantizer_tb", quantizer_name(quant, lanes), simulator, build_dir, test_dir, {
        "SEVEDO_STIMULUS": stimulus_path,
        "SEVEDO_RESULTS": results_path,
    }, waves=waves, quiet=quiet)
    if failures or not results_path.exists():
        raise RuntimeError(f"the quantizer testbench failed ({failures} of {tests} tests). See the log in {test_dir}")
    results = np.load(results_path)
    runs = {}
    starts = np.r_[0, ends[:-1]]
    for index, (name, stimulus) in enumerate(stimuli.items()):
        got = results["outputs"][starts[index]:ends[index]]
        runs[name] = QuantizerRun(
            got=got,
            expected=stimulus.expected,
            mismatches=int(np.count_nonzero(np.any(got != stimulus.expected, axis=1))),
            invalid=bool(results["invalid"][index]),
            expected_invalid=stimulus.invalid,
            cycles=int(results["cycles"][index]),
        )
    return runs
