"""cocotb testbenches of the heterogeneous core under Icarus and Verilator, bit for bit against golden.

One configuration serves every case, so that each simulator builds the core
once, into ``$SEVEDO_BUILD_DIR/sim/<name>-<simulator>``. Set
``SEVEDO_WAVES=1`` to dump waveforms.
"""

import functools

import numpy as np
import pytest

from golden.compiler import CompilerConfig, compile_layer, run_layer
from golden.formats import FP16, FP32
from golden.hgq import HGQConfig
from golden.lowrank import SVDMPConfig
from golden.minilm import capture_linear_layers
from hw.config import RMCConfig
from hw.hetero import CoreConfig
from sim.core import simulate_core
from sim.runner import SIMULATORS

QUANT = HGQConfig(64, 16, 2)
SVDMP = SVDMPConfig(wide_count=2)
CONFIG = CoreConfig(rmc=RMCConfig(rows=4, lanes=8, quant=QUANT), rank=4, lvc_lanes=8, svdmp=SVDMP,
                    max_k=384, max_n=16)


@functools.cache
def minilm_tile():
    """Return ``(layer, x)``: the first 16 outputs of layer0.ffn_in (K = 384) and the first 2 tokens.

    The smoothing factors come from the whole text.
    """
    capture = capture_linear_layers()["layer0.ffn_in"]
    layer = compile_layer(capture.weight[:16], capture.bias[:16], capture.x,
                          CompilerConfig(rank=4, quant=QUANT, svdmp=SVDMP))
    return layer, capture.x[:2]


def random_layer(rank):
    """Return ``(layer, x)``: a random layer of K = 128, N = 16 with a bias, and 3 tokens with an outlier channel."""
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((3, 128))
    x[:, 3] *= 20.0
    layer = compile_layer(rng.standard_normal((16, 128)), rng.standard_normal(16), x,
                          CompilerConfig(rank=rank, quant=QUANT, svdmp=SVDMP))
    return layer, x


# (case, valid probability, ready probability). The rank-0 layer runs on the
# rank-4 core, whose LVC memories keep their initial zeros, so Y_lr is +0.
CORE_RUNS = [
    ("minilm", 1.0, 1.0),
    ("random", 0.7, 0.5),
    ("rank0", 1.0, 1.0),
]
LAYERS = {
    "minilm": minilm_tile,
    "random": lambda: random_layer(4),
    "rank0": lambda: random_layer(0),
}


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("case, valid, ready", CORE_RUNS, ids=[case for case, *_ in CORE_RUNS])
def test_core(simulator, case, valid, ready):
    layer, x = LAYERS[case]()
    if case == "minilm":
        assert layer.significand_bits.tolist() == [11, 11, 4, 4]
    x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
    expected = run_layer(layer, x).output
    run = simulate_core(CONFIG, layer, x_fp16, expected, simulator, case=case, valid_probability=valid,
                        ready_probability=ready, seed=3, quiet=True)
    assert run.mismatches == 0
    assert np.array_equal(FP32.to_bits(run.y), FP32.to_bits(expected))
    n, k = layer.shape
    tokens = x.shape[0]
    assert run.busy == tokens * (n // CONFIG.rmc.rows) * (k // CONFIG.rmc.lanes)
    if valid == ready == 1.0:
        assert run.stall_output == 0
