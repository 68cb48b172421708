"""Simulate the residual matrix core in cocotb and compare it with the golden model."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw.config import RMCConfig
from hw.rmc import generate_verilog

from .packing import payload_bytes
from .runner import build_design, default_build_root, run_testbench
from .stimulus import make_rmc_stimulus

__all__ = ["RMCRun", "build_rmc", "simulate_rmc"]


@dataclass(frozen=True, eq=False)
class RMCRun:
    """Result of one RMC simulation.

    Attributes
    ----------
    y : ndarray of float32, shape (T, N)
        Outputs received from the RTL.
    expected : ndarray of float32, shape (T, N)
        Golden outputs.
    mismatches : int
        Outputs whose FP32 encoding differs from the golden one.
    cycles : int
        Clock cycles from the first beat offered to the last output received.
    beats : int
        Input beats sent.
    wall_seconds : float
        Simulation wall time, build excluded.
    """

    y: np.ndarray
    expected: np.ndarray
    mismatches: int
    cycles: int
    beats: int
    wall_seconds: float


def build_rmc(config, simulator, build_root=None, *, waves=None):
    """Generate the Verilog of ``config`` and build it for ``simulator``; return the build directory."""
    build_root = Path(build_root).resolve() if build_root else default_build_root()
    build_dir = build_root / f"{config.name}-{simulator}"
    return build_design(generate_verilog(config), config.name, simulator, build_dir, waves=waves)


def simulate_rmc(config, xq, wq, simulator, *, case="run", build_root=None, valid_probability=1.0,
                 ready_probability=1.0, seed=0, progress=False, quiet=False, waves=None):
    """Run ``Y = X W^T`` of two HGQ tensors through the RTL of ``config`` and check it bit for bit.

    Returns an :class:`RMCRun`. Under pytest, a mismatch fails the cocotb test
    and so raises; elsewhere the mismatch count is returned. ``progress``
    shows a progress bar and ``quiet`` keeps cocotb's log to warnings.
    """
    if not isinstance(config, RMCConfig):
        raise TypeError(f"config must be an RMCConfig, not {type(config).__name__}")
    for name, probability in (("valid_probability", valid_probability), ("ready_probability", ready_probability)):
        if not 0.05 <= probability <= 1.0:
            raise ValueError(f"{name} must be in [0.05, 1], not {probability}")
    stimulus = make_rmc_stimulus(config, xq, wq)
    build_dir = build_rmc(config, simulator, build_root, waves=waves)
    test_dir = build_dir / "runs" / case
    test_dir.mkdir(parents=True, exist_ok=True)
    stimulus_path = test_dir / "stimulus.npz"
    results_path = test_dir / "results.npz"
    results_path.unlink(missing_ok=True)
    np.savez(stimulus_path, beats=stimulus.beats, expected=stimulus.expected,
             valid_probability=valid_probability, ready_probability=ready_probability, seed=seed,
             output_bytes=payload_bytes(config.output_layout()))

    start = time.perf_counter()
    run_testbench("sim.rmc_tb", config.name, simulator, build_dir, test_dir, {
        "SEVEDO_STIMULUS": stimulus_path,
        "SEVEDO_RESULTS": results_path,
        "SEVEDO_PROGRESS": int(progress),
    }, waves=waves, quiet=quiet)
    wall = time.perf_counter() - start
    if not results_path.exists():
        raise RuntimeError(f"the simulation wrote no results; see the log in {test_dir}")
    results = np.load(results_path)
    got = results["outputs"]
    return RMCRun(
        y=stimulus.outputs_to_matrix(got),
        expected=stimulus.outputs_to_matrix(stimulus.expected),
        mismatches=int(np.count_nonzero(got != stimulus.expected)),
        cycles=int(results["cycles"]),
        beats=len(stimulus.beats),
        wall_seconds=wall,
    )
