"""The online HGQ quantizer in cocotb under Icarus and Verilator, every output field against golden.

All segments of a simulator run in one simulation, with a reset between
segments (:func:`sim.quantizer.simulate_quantizer`), because starting a
simulator costs about 2 s. Each segment is then checked as its own test case.
The design is built once per simulator into its own directory under
``$SEVEDO_BUILD_DIR/sim``.
"""

import functools

import pytest

from golden.hgq import HGQConfig
from sim.quantizer import (
    QuantizerSegment,
    describe_mismatch,
    make_quantizer_input,
    simulate_quantizer,
)
from sim.runner import SIMULATORS

QUANT = HGQConfig()
LANES = 16

# (segment, input case, valid probability, ready probability). The finite
# "random" segment follows "non_finite", so it checks that reset clears
# the invalid flag.
SEGMENTS = [
    ("minilm", "minilm", 1.0, 1.0),
    ("minilm_stalls", "minilm", 0.6, 0.5),
    ("edges", "edges", 1.0, 1.0),
    ("edges_stalls", "edges", 0.5, 0.8),
    ("non_finite_stalls", "non_finite", 0.8, 0.7),
    ("random", "random", 1.0, 1.0),
    ("random_stalls", "random", 0.7, 0.3),
]


@functools.cache
def simulate(simulator):
    segments = {name: QuantizerSegment(make_quantizer_input(case, QUANT, seed=1), valid, ready)
                for name, case, valid, ready in SEGMENTS}
    return simulate_quantizer(QUANT, LANES, segments, simulator, run="segments", seed=2)


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("segment, case, valid, ready", SEGMENTS, ids=[segment for segment, *_ in SEGMENTS])
def test_quantizer(segment, case, valid, ready, simulator):
    run = simulate(simulator)[segment]
    message = describe_mismatch(QUANT, LANES, run.got, run.expected)
    assert message is None, message
    assert run.mismatches == 0
    assert run.invalid == run.expected_invalid
    assert run.invalid == (case == "non_finite")
    if valid == ready == 1.0:
        # One beat per cycle, and the last coarse group leaves 3 cycles after its last input beat.
        assert run.cycles == len(run.expected) + QUANT.coarse_group // LANES + 2
