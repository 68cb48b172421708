"""cocotb testbenches of the low-rank vector core under Icarus and Verilator, bit for bit against golden.

One configuration fits a whole MiniLM row of K = 384 at rank 12, so that
one Verilog build per simulator serves every case. It is built once into
``$SEVEDO_BUILD_DIR/sim/<name>-<simulator>``. Set ``SEVEDO_WAVES=1`` to dump
waveforms.
"""

import numpy as np
import pytest

from golden.formats import FP32
from hw.lvc import LowRankVectorCore, LVCConfig
from sim.lvc import make_lvc_case, simulate_lvc
from sim.runner import SIMULATORS

CONFIG = LVCConfig(lanes=4, max_rank=12, max_k=384, max_n=24)

# (case, valid probability, ready probability).
LVC_RUNS = [
    ("minilm", 1.0, 1.0),
    ("random", 0.7, 0.6),
    ("all_wide", 1.0, 1.0),
    ("all_narrow", 0.8, 0.8),
    ("zero_component", 1.0, 0.5),
    ("range_limits", 0.6, 0.8),
    ("rank_zero", 1.0, 1.0),
]


def run_id(case, valid, ready):
    return f"{case}-{'full-rate' if valid == ready == 1.0 else 'stalls'}"


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("case, valid, ready", LVC_RUNS, ids=[run_id(*run) for run in LVC_RUNS])
def test_lvc(simulator, case, valid, ready):
    lowrank_case = make_lvc_case(case, CONFIG, seed=1)
    with np.errstate(invalid="ignore"):
        run = simulate_lvc(CONFIG, lowrank_case, simulator, run_name=run_id(case, valid, ready),
                           valid_probability=valid, ready_probability=ready, seed=2, quiet=True)
    assert run.mismatches == 0
    # Both hold the canonical NaN where the golden output is NaN.
    assert np.array_equal(FP32.to_bits(run.y), FP32.to_bits(run.expected))
    if valid == ready == 1.0 and lowrank_case.rank > 0:
        issue = CONFIG.token_issue_cycles(lowrank_case.bits, lowrank_case.k, lowrank_case.n)
        tokens = lowrank_case.tokens
        # The first token waits for nothing, and each later one only for h.
        assert run.busy_cycles == tokens * issue + LowRankVectorCore.TOKEN_LATENCY \
            + (tokens - 1) * LowRankVectorCore.TOKEN_GAP
        assert run.input_stall_cycles == 0
        assert run.output_stall_cycles == 0
    if ready < 1.0:
        assert run.output_stall_cycles > 0


# The whole FFN input projection of MiniLM layer 0 at rank 32 with 8 wide
# components, on 32 lanes: K = 384, N = 1536. The Verilator build of this
# core takes minutes.
GOAL_CONFIG = LVCConfig(lanes=32, max_rank=32, max_k=384, max_n=1536)
# Cycles per token of the residual matrix core at this shape: K * N / 128 PEs.
RESIDUAL_CORE_TOKEN_CYCLES = 384 * 1536 // 128


@pytest.mark.slow
@pytest.mark.parametrize("case_name, simulator", [("minilm", "verilator")])
def test_lvc_whole_layer(case_name, simulator):
    case = make_lvc_case(case_name, GOAL_CONFIG, seed=1)
    assert (case.rank, case.k, case.n, case.tokens) == (32, 384, 1536, 2)
    run = simulate_lvc(GOAL_CONFIG, case, simulator, run_name="minilm_layer", quiet=True)
    assert run.mismatches == 0
    issue = GOAL_CONFIG.token_issue_cycles(case.bits, case.k, case.n)
    assert issue == 3 * 384 + 48 * 1536 // 32
    assert run.busy_cycles == 2 * issue + LowRankVectorCore.TOKEN_LATENCY + LowRankVectorCore.TOKEN_GAP
    assert issue + LowRankVectorCore.TOKEN_GAP < RESIDUAL_CORE_TOKEN_CYCLES
