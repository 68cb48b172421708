"""Simulate the heterogeneous core on a compiled layer and compare it with the golden model."""

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.back import verilog

from golden.formats import FP16, FP32
from hw.hetero import HeterogeneousCore, LoadTarget

from .lvc import LowRankCase, make_lvc_stimulus
from .runner import build_design, default_build_root, run_testbench

__all__ = ["CoreRun", "core_stimulus", "simulate_core", "core_name"]


def core_name(config):
    """Return the module and build directory name of a core configuration."""
    return f"core_{config.rmc.name[4:]}_r{config.rank}_v{config.lvc_lanes}_k{config.max_k}_n{config.max_n}"


def _words(layout_bits, values):
    """Pack rows of small unsigned fields (``values``: (words, fields)) into little-endian byte rows."""
    words, fields = values.shape
    bits = ((values.astype(np.int64)[:, :, None] >> np.arange(layout_bits)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(words, fields * layout_bits), axis=1, bitorder="little")


def _load_beats(target, addresses, data_rows, address_bits, data_bytes):
    """Return load payloads (uint8 rows): target in the low 2 bits, then the address, then the data."""
    count = len(addresses)
    value_bytes = (2 + address_bits + data_bytes * 8 + 7) // 8
    rows = np.zeros((count, value_bytes), dtype=np.uint8)
    for index in range(count):
        word = int.from_bytes(data_rows[index].tobytes(), "little")
        value = target.value | (int(addresses[index]) << 2) | (word << (2 + address_bits))
        rows[index] = np.frombuffer(value.to_bytes(value_bytes, "little"), dtype=np.uint8)
    return rows


def core_stimulus(config, layer, x_fp16, expected):
    """Return the arrays of a core run: shape, load beats, activation beats and expected outputs.

    ``layer`` is a :class:`golden.compiler.CompiledLayer`, ``x_fp16`` the
    smoothed FP16 activations (T x K) and ``expected`` the golden float32
    outputs (T x N).
    """
    rmc = config.rmc
    quant = rmc.quant
    rows, lanes = rmc.rows, rmc.lanes
    n, k = layer.shape
    config.check_shape(k, n)
    rank = layer.l1.shape[1]
    # The core always runs `config.rank` components. The loads of a layer of
    # lower rank leave the L1 columns of the others unwritten, so that layer
    # is exact only while the LVC memories still hold their initial zeros.
    if rank > config.rank:
        raise ValueError(f"layer rank must be at most the core's rank ({config.rank}), not {rank}")
    tokens = x_fp16.shape[0]
    tiles, steps = n // rows, k // lanes
    load_layout = config.load_layout()
    address_bits = load_layout["address"].shape.width
    data_bytes = (load_layout["data"].shape.width + 7) // 8
    fine_per_row = config.max_k // quant.fine_group
    coarse_per_row = config.max_k // quant.coarse_group
    residual = layer.residual

    def rows_of(array):
        """(N, ...) -> (tiles, rows, ...) per row tile."""
        return array.reshape(tiles, rows, *array.shape[1:])

    def grouped(array, groups):
        """(N, groups) -> words (tiles * groups, rows)."""
        return rows_of(array).transpose(0, 2, 1).reshape(tiles * groups, rows)

    codes = rows_of(residual.codes.astype(np.int64) & 0xF).reshape(tiles, rows, steps, lanes)
    code_words = codes.transpose(0, 2, 1, 3).reshape(tiles * steps, rows * lanes)
    beats = [
        (LoadTarget.CODES, (np.arange(tiles)[:, None] * config.k_beats + np.arange(steps)).ravel(),
         _words(quant.element.bits, code_words)),
        (LoadTarget.SCALES, (np.arange(tiles)[:, None] * coarse_per_row + np.arange(k // quant.coarse_group)).ravel(),
         _words(FP16.width, grouped(FP16.to_bits(residual.scales), k // quant.coarse_group))),
        (LoadTarget.BIAS, np.arange(tiles),
         _words(FP32.width, FP32.to_bits(layer.bias if layer.bias is not None else np.zeros(n, np.float32))
                .reshape(tiles, rows))),
    ]
    if quant.shift_bits:
        beats.append((LoadTarget.SHIFTS,
                      (np.arange(tiles)[:, None] * fine_per_row + np.arange(k // quant.fine_group)).ravel(),
                      _words(quant.shift_bits, grouped(residual.shifts, k // quant.fine_group))))
    load = np.concatenate([_load_beats(target, addresses, words, address_bits, data_bytes)
                           for target, addresses, words in beats])

    x_bits = FP16.to_bits(x_fp16).reshape(tokens * steps, lanes)
    last = np.tile(np.arange(steps) == steps - 1, tokens).astype(np.int64)
    activations = np.concatenate([_words(FP16.width, x_bits), np.zeros((tokens * steps, 1), np.uint8)], axis=1)
    activations[:, (lanes * FP16.width) // 8] |= last.astype(np.uint8) << ((lanes * FP16.width) % 8)
    shape = steps | (tiles << config.shape_layout()["n_tiles"].offset)
    expected_bits = FP32.to_bits(expected).reshape(tokens, tiles, rows).reshape(tokens * tiles, rows)
    arrays = {"shape": shape, "load": load, "activations": activations, "expected": expected_bits.astype(np.uint32)}
    if config.rank:
        case = LowRankCase(x=x_fp16, l2=layer.l2, l1=layer.l1, bits=layer.significand_bits)
        arrays["lvc_load"] = make_lvc_stimulus(config.lvc_config(), case).loads
    return arrays


@functools.cache
def _core_verilog(config):
    """Return the Verilog of a core of ``config``, converted once per configuration and process."""
    return verilog.convert(HeterogeneousCore(config), name=core_name(config))


@dataclass(frozen=True, eq=False)
class CoreRun:
    """Result of one heterogeneous-core simulation (see :class:`sim.rmc.RMCRun` for the common fields)."""

    y: np.ndarray
    mismatches: int
    cycles: int
    busy: int
    stall_input: int
    stall_output: int
    wall_seconds: float


def simulate_core(config, layer, x_fp16, expected, simulator, *, case="run", build_root=None,
                  valid_probability=1.0, ready_probability=1.0, seed=0, progress=False, quiet=False, waves=None):
    """Run a compiled layer through the RTL of the heterogeneous core and check every output bit for bit."""
    arrays = core_stimulus(config, layer, x_fp16, expected)
    name = core_name(config)
    build_root = Path(build_root).resolve() if build_root else default_build_root()
    build_dir = build_design(_core_verilog(config), name, simulator,
                             build_root / f"{name}-{simulator}", waves=waves)
    test_dir = build_dir / "runs" / case
    test_dir.mkdir(parents=True, exist_ok=True)
    stimulus_path, results_path = test_dir / "stimulus.npz", test_dir / "results.npz"
    results_path.unlink(missing_ok=True)
    np.savez(stimulus_path, seed=seed, valid_probability=valid_probability,
             ready_probability=ready_probability, **arrays)
    start = time.perf_counter()
    run_testbench("sim.core_tb", name, simulator, build_dir, test_dir, {
        "SEVEDO_STIMULUS": stimulus_path, "SEVEDO_RESULTS": results_path, "SEVEDO_PROGRESS": int(progress),
    }, waves=waves, quiet=quiet)
    wall = time.perf_counter() - start
    if not results_path.exists():
        raise RuntimeError(f"the simulation wrote no results; see the log in {test_dir}")
    results = np.load(results_path)
    got = results["outputs"]
    tokens, n = expected.shape
    rows = config.rmc.rows
    y = FP32.from_bits(got.reshape(tokens, n // rows, rows).reshape(tokens, n))
    return CoreRun(y=y, mismatches=int(np.count_nonzero(got != arrays["expected"])), cycles=int(results["cycles"]),
                   busy=int(results["busy"]), stall_input=int(results["stall_input"]),
                   stall_output=int(results["stall_output"]), wall_seconds=wall)
