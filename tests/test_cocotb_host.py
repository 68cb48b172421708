"""cocotb testbench of the UART host interface under Icarus and Verilator, bit for bit against golden.

The design is built once per simulator into ``$SEVEDO_BUILD_DIR/sim``. Each
case runs one cocotb test of :mod:`sim.host_tb`.
"""

import numpy as np
import pytest
from amaranth.back import verilog

from golden.formats import FP32
from golden.residual import residual_matmul
from hw.config import RMCConfig
from hw.host import HostConfig, HostInterface
from sim.cases import make_case
from sim.runner import SIMULATORS, build_design, default_build_root, run_testbench

from .test_hw_host import core_cycles, host_latency, tile_words

# Divisor 4 and a timeout of 4 byte times keep the runs short.
CONFIG = HostConfig(rmc=RMCConfig(rows=2, lanes=16), weight_words=24, activation_words=72, result_words=4,
                    clock_hz=4_000_000, baud=1_000_000, max_payload=256, timeout_bytes=4)

CASES = {
    "minilm_tile": "host_runs_minilm_tile",
    "bad_frames": "host_recovers_from_bad_frames",
}


@pytest.fixture(scope="module")
def stimulus():
    """Return the arrays of a three-token MiniLM tile of two output channels, K = 384."""
    xq, wq = make_case("minilm_tile", CONFIG.rmc.quant)
    xq = xq.select_rows(slice(0, 3))
    wq = wq.select_rows(slice(0, 2))
    weights, activations, rmc_stimulus = tile_words(CONFIG, xq, wq)
    return {
        "divisor": CONFIG.divisor,
        "timeout_bytes": CONFIG.timeout_bytes,
        "max_payload": CONFIG.max_payload,
        "device_info": np.frombuffer(CONFIG.device_info().pack(), np.uint8),
        "weights": weights,
        "activations": activations,
        "tokens": xq.shape[0],
        "beats": len(weights),
        "expected": FP32.to_bits(residual_matmul(xq, wq)).astype(np.uint32),
        "cycles": core_cycles(CONFIG, rmc_stimulus) + host_latency(CONFIG),
    }


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("case", CASES)
def test_host(simulator, case, stimulus):
    toplevel = CONFIG.name
    build_dir = default_build_root() / f"{toplevel}-{simulator}"
    # Both cases use one build; build_design makes concurrent builders take turns.
    build_design(verilog.convert(HostInterface(CONFIG), name=toplevel), toplevel, simulator, build_dir)
    test_dir = build_dir / "runs" / case
    test_dir.mkdir(parents=True, exist_ok=True)
    path = test_dir / "stimulus.npz"
    np.savez(path, **stimulus)
    tests, failures = run_testbench("sim.host_tb", toplevel, simulator, build_dir, test_dir, {
        "SEVEDO_STIMULUS": path,
        "COCOTB_TEST_FILTER": CASES[case],
    })
    assert (tests, failures) == (1, 0)
