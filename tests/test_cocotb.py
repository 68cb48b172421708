"""cocotb testbenches under Icarus and Verilator: the RMC and its FP units, bit for bit against golden.

Each (configuration, simulator) pair is built once into its own directory
under ``$SEVEDO_BUILD_DIR/sim``. Set ``SEVEDO_WAVES=1`` to dump waveforms.
"""


import numpy as np
import pytest
from amaranth.back import verilog

from golden.formats import FP32
from golden.hgq import HGQConfig
from hw.config import RMCConfig
from hw.fp import FP16ProductToFP32, FP32Adder, FP32Multiplier, IntToFP32
from hw.rmc import core_latency
from sim.cases import make_case
from sim.rmc import simulate_rmc
from sim.runner import SIMULATORS, build_design, default_build_root, run_testbench

from . import test_hw_fp as fp_vectors

DEFAULT = RMCConfig()
CORES = {
    "default": DEFAULT,
    "lanes4": RMCConfig(rows=4, lanes=4, quant=HGQConfig(64, 16, 2)),
    "conventional": RMCConfig(rows=4, lanes=16, quant=HGQConfig.conventional(16)),
}

# (case, core, valid probability, ready probability)
RMC_RUNS = [
    ("minilm_tile", "default", 1.0, 1.0),
    ("random", "default", 0.7, 0.6),
    ("zero_groups", "default", 1.0, 1.0),
    ("minus_eight", "default", 1.0, 1.0),
    ("single_outlier", "default", 1.0, 0.5),
    ("fp16_scale_limits", "default", 1.0, 1.0),
    ("random", "lanes4", 0.5, 0.8),
    ("minilm_tile", "conventional", 1.0, 1.0),
    ("fp16_scale_limits", "conventional", 0.8, 0.8),
]


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("case, core, valid, ready", RMC_RUNS,
                         ids=[f"{case}-{core}" for case, core, *_ in RMC_RUNS])
def test_rmc(simulator, case, core, valid, ready):
    config = CORES[core]
    xq, wq = make_case(case, config.quant, seed=1)
    run = simulate_rmc(config, xq, wq, simulator, case=f"{case}-{valid}-{ready}",
                       valid_probability=valid, ready_probability=ready, seed=2)
    assert run.mismatches == 0
    assert np.array_equal(FP32.to_bits(run.y), FP32.to_bits(run.expected))
    if valid == ready == 1.0:
        # Full rate: one beat per cycle, then the pipeline latency to the last output.
        assert run.cycles == run.beats + core_latency(config)


def _fp_units():
    adder = fp_vectors.adder_vectors()
    multiplier = fp_vectors.multiplier_vectors()
    integers = fp_vectors.integer_vectors(21, seed=4)
    products = fp_vectors.fp16_product_vectors()
    return {
        "fp32_adder": (FP32Adder, adder, fp_vectors.numpy_binary(np.add, adder)),
        "fp32_multiplier": (FP32Multiplier, multiplier, fp_vectors.numpy_binary(np.multiply, multiplier)),
        "int21_to_fp32": (lambda: IntToFP32(21), integers, fp_vectors.numpy_int_to_fp32(integers)),
        "fp16_product_to_fp32": (FP16ProductToFP32, products, fp_vectors.numpy_fp16_product(products)),
    }


@pytest.fixture(scope="module")
def fp_units():
    return _fp_units()


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("unit", ["fp32_adder", "fp32_multiplier", "int21_to_fp32", "fp16_product_to_fp32"])
def test_fp_unit(simulator, unit, fp_units):
    factory, vectors, expected = fp_units[unit]
    build_dir = default_build_root() / f"{unit}-{simulator}"
    build_design(verilog.convert(factory(), name=unit), unit, simulator, build_dir)
    operands = np.array(vectors, dtype=np.int64).reshape(len(vectors), -1)
    arrays = {"a": operands[:, 0], "y": np.array([fp_vectors.expected_rtl_result(y) for y in expected], np.int64)}
    if operands.shape[1] > 1:
        arrays["b"] = operands[:, 1]
    path = build_dir / "vectors.npz"
    np.savez(path, **arrays)
    tests, failures = run_testbench("sim.fp_tb", unit, simulator, build_dir, build_dir / "run",
                                    {"SEVEDO_VECTORS": path})
    assert (tests, failures) == (1, 0)


def test_rmc_relative_build_root(monkeypatch, tmp_path):
    """A build folder given relative to the working folder works, though the simulator runs elsewhere."""
    monkeypatch.chdir(tmp_path)
    config = CORES["lanes4"]
    xq, wq = make_case("minilm_tile", config.quant, seed=1)
    run = simulate_rmc(config, xq, wq, "icarus", build_root="builds")
    assert run.mismatches == 0
    assert np.array_equal(FP32.to_bits(run.y), FP32.to_bits(run.expected))
    assert (tmp_path / "builds").is_dir()
