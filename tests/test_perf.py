"""The analytical cycle model against the heterogeneous core's counters, the core's buffers, and `sevedo perf`.

Each simulation case runs a layer through the core in the Amaranth simulator
at full rate on both streams (tests/test_hw_core.py drives it and checks
every output bit for bit) and compares the counters with
:func:`hw.perf.predict_cycles`. The slow cases run whole MiniLM layers under
Verilator.
"""

import json
import re
from unittest import mock

import numpy as np
import pytest
from amaranth import Shape
from amaranth.hdl import Fragment
from amaranth.lib.memory import Memory

from golden.compiler import CompilerConfig, compile_layer, run_layer
from golden.energy import EnergyTable
from golden.formats import FP16
from golden.hgq import HGQConfig
from golden.lowrank import SVDMPConfig
from golden.minilm import capture_linear_layers
from hw.config import RMCConfig
from hw.hetero import CoreConfig, HeterogeneousCore
from hw.lvc import LowRankVectorCore
from hw.perf import core_buffers, default_significand_bits, layer_energy, predict_cycles
from hw.rmc import core_latency
from sevedo.cli import main
from sevedo.perf import WORKLOADS

from .test_hw_core import assert_outputs_match, random_layer, run_core

COUNTERS = ("busy", "stall_input", "stall_output")


def assert_model_matches(result, prediction):
    """Assert that the model's counters equal the RTL's, cycle for cycle."""
    measured = {name: result.counters[name] for name in COUNTERS}
    predicted = {name: getattr(prediction, name) for name in COUNTERS}
    assert predicted == measured
    assert prediction.cycles == result.pending_cycles


def small_core(rank, *, rows=4, lanes=8, quant=HGQConfig(64, 16, 2), svdmp=SVDMPConfig(wide_count=2),
               max_k=192, max_n=72):
    return CoreConfig(rmc=RMCConfig(rows=rows, lanes=lanes, quant=quant), rank=rank, lvc_lanes=8, svdmp=svdmp,
                      max_k=max_k, max_n=max_n)


# The model against the RTL


def test_model_minilm_tile():
    # The first 32 outputs of layer0.ffn_in (K = 384) on 3 tokens, with rank 8 on 16 LVC lanes:
    # the LVC needs more cycles per token than the RMC.
    capture = capture_linear_layers()["layer0.ffn_in"]
    layer = compile_layer(capture.weight[:32], capture.bias[:32], capture.x, CompilerConfig(rank=8))
    config = CoreConfig(rmc=RMCConfig(rows=8, lanes=16), rank=8, lvc_lanes=16, max_k=384, max_n=32)
    result = run_core(config, layer, capture.x[:3])
    assert_outputs_match(result, "layer0.ffn_in tile")
    prediction = predict_cycles(config, 3, 384, 32, layer.significand_bits)
    assert_model_matches(result, prediction)
    assert prediction.limit == "input"


# Odd shapes: K of 3 coarse groups, N of 6 and 18 row tiles, an odd token count.
ODD_SHAPES = {
    # Rank 12 on 8 LVC lanes: two component groups, the second one partly used.
    "two-lvc-groups": (12, SVDMPConfig(wide_count=3), 192, 24, 3),
    # One narrow component: the down-projection waits for each activation,
    # the RMC sets the pace, and a token waits for its bank.
    "rmc-bound": (1, SVDMPConfig(wide_count=0), 192, 72, 5),
    # No low-rank path: activations arrive at one beat per cycle.
    "rank0": (0, SVDMPConfig(wide_count=2), 192, 20, 5),
}


@pytest.mark.parametrize("rank, svdmp, k, n, tokens", ODD_SHAPES.values(), ids=ODD_SHAPES.keys())
def test_model_odd_shapes(rank, svdmp, k, n, tokens):
    config = small_core(rank, svdmp=svdmp)
    layer, x = random_layer(k, n, rank, tokens=tokens, svdmp=svdmp, quant=config.rmc.quant, seed=rank)
    result = run_core(config, layer, x)
    assert_outputs_match(result, f"rank {rank}, K = {k}, N = {n}")
    assert_model_matches(result, predict_cycles(config, tokens, k, n, layer.significand_bits))


def test_model_rows_of_one_beat():
    # K = lanes: every RMC beat ends a row, and the combiner's rate of one result per 2 cycles
    # limits the core, so the RMC's stages wait.
    quant = HGQConfig.conventional(8)
    config = small_core(0, quant=quant, max_k=8, max_n=32)
    tokens = 40
    layer, x = random_layer(8, 32, 0, tokens=tokens, quant=quant, seed=11)
    result = run_core(config, layer, x)
    assert_outputs_match(result, "K = lanes")
    prediction = predict_cycles(config, tokens, 8, 32, [])
    assert_model_matches(result, prediction)
    assert prediction.stall_output > 0
    assert prediction.limit == "combiner"


def minilm_layer_run(name, tokens=None):
    """Run a whole MiniLM layer at the defaults under Verilator; return the run and the prediction."""
    from sim.core import simulate_core

    capture = capture_linear_layers()[name]
    x = capture.x if tokens is None else capture.x[:tokens]
    layer = compile_layer(capture.weight, capture.bias, x, CompilerConfig())
    n, k = layer.shape
    config = CoreConfig(max_k=k, max_n=n)
    x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
    run = simulate_core(config, layer, x_fp16, run_layer(layer, x).output, "verilator", case="perf", quiet=True)
    return run, predict_cycles(config, len(x), k, n, layer.significand_bits)


# Each builds a full-size core for Verilator and runs the layer: 7 to 8 minutes on a 2-core machine
# that other jobs kept busy.
@pytest.mark.slow
@pytest.mark.parametrize("name, limit", [("layer0.ffn_in", "prologue"), ("layer0.query", "input")])
def test_model_whole_minilm_layer(name, limit):
    run, prediction = minilm_layer_run(name)
    assert run.mismatches == 0
    assert (prediction.busy, prediction.stall_input, prediction.stall_output) == (
        run.busy, run.stall_input, run.stall_output)
    assert prediction.cycles == run.busy + run.stall_input + run.stall_output
    # The testbench stops one cycle after the last output has been read.
    assert run.cycles == prediction.cycles + 1
    assert prediction.limit == limit


# Properties of the model


def test_counters_add_up():
    config = CoreConfig(max_k=384, max_n=1536)
    prediction = predict_cycles(config, 59, 384, 1536)
    assert prediction.busy == 59 * (1536 // 8) * (384 // 16)
    assert prediction.cycles == prediction.busy + prediction.stall_input + prediction.stall_output
    assert prediction.pe_utilization == prediction.busy / prediction.cycles
    assert prediction.rmc_token_cycles == 4608
    bits = default_significand_bits(config)
    lvc = config.lvc_config()
    assert prediction.input_token_cycles == lvc.token_issue_cycles(bits, 384, 1536) + LowRankVectorCore.TOKEN_GAP
    # The RMC is slower than the LVC here, so only the first token's prologue and the RMC's latency
    # at the end are lost.
    assert prediction.stall_input == prediction.prologue_cycles + core_latency(config.rmc)
    assert prediction.limit == "prologue"


def test_one_token_cannot_overlap():
    config = CoreConfig(max_k=4096, max_n=4096)
    prediction = predict_cycles(config, 1, 4096, 4096)
    assert prediction.cycles == prediction.prologue_cycles + prediction.busy + core_latency(config.rmc)
    assert prediction.limit == "one token"


def test_steady_state_token_period():
    # Past the first tokens, each token adds the larger of the RMC's and the input side's cycles.
    for k, n in ((384, 1536), (384, 384), (1536, 384)):
        config = CoreConfig(max_k=k, max_n=n)
        step = predict_cycles(config, 11, k, n).cycles - predict_cycles(config, 10, k, n).cycles
        first = predict_cycles(config, 1, k, n)
        assert step == max(first.rmc_token_cycles, first.input_token_cycles), (k, n)


def test_svdmp_speeds_up_lvc_bound_layer():
    config = CoreConfig(max_k=384, max_n=384)
    mixed = predict_cycles(config, 20, 384, 384)
    wide = predict_cycles(config, 20, 384, 384, [11] * 32)
    assert mixed.limit == wide.limit == "input"
    assert mixed.cycles < wide.cycles


def test_missing_components_count_one_slice():
    config = CoreConfig(max_k=384, max_n=384)
    fewer = predict_cycles(config, 2, 384, 384, [11] * 8)
    padded = predict_cycles(config, 2, 384, 384, [11] * 8 + [0] * 24)
    assert fewer == padded


@pytest.mark.parametrize("k, n, message", [
    (100, 64, "K must be a positive multiple of coarse_group (128) up to max_k (384), not 100"),
    (512, 64, "K must be a positive multiple of coarse_group (128) up to max_k (384), not 512"),
    (384, 40, "N must be a positive multiple of 32 up to max_n (384), not 40"),
])
def test_model_rejects_shapes_the_core_rejects(k, n, message):
    config = CoreConfig(max_k=384, max_n=384)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        config.check_shape(k, n)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        predict_cycles(config, 4, k, n)


def test_model_rejects_invalid_parameters():
    config = CoreConfig(max_k=384, max_n=384)
    with pytest.raises(ValueError, match=r"^tokens must be a positive integer, not 0$"):
        predict_cycles(config, 0, 384, 384)
    with pytest.raises(TypeError, match=r"^config must be a CoreConfig, not RMCConfig$"):
        predict_cycles(RMCConfig(), 1, 384, 384)
    with pytest.raises(ValueError, match=r"^significand_bits must be a 1-D array of at most rank \(32\) widths, "
                                         r"not shape \(33,\)$"):
        predict_cycles(config, 1, 384, 384, [4] * 33)
    energy_policy = CoreConfig(svdmp=SVDMPConfig(wide_count=None, energy_fraction=0.5), max_k=384, max_n=384)
    with pytest.raises(ValueError, match=r"^significand_bits must be given when svdmp uses the energy_fraction "):
        predict_cycles(energy_policy, 1, 384, 384)


def test_default_significand_bits():
    assert default_significand_bits(CoreConfig()).tolist() == [11] * 8 + [4] * 24
    assert default_significand_bits(CoreConfig(rank=4, svdmp=SVDMPConfig(wide_count=8))).tolist() == [11] * 4


# Buffers and energy


def test_buffers_are_the_core_memories():
    # Every memory that the RTL builds, with its word width and depth.
    for config in (CoreConfig(max_k=384, max_n=1536),
                   small_core(0, quant=HGQConfig.conventional(16), max_k=64, max_n=16)):
        built = []
        elaborate = Memory.elaborate

        def record(memory, platform):
            built.append((Shape.cast(memory.shape).width, memory.depth))
            return elaborate(memory, platform)

        with mock.patch.object(Memory, "elaborate", record):
            Fragment.get(HeterogeneousCore(config), None)
        listed = [(b.width, b.depth) for b in core_buffers(config, 1, config.max_k, config.max_n)]
        assert sorted(listed) == sorted(built)


def test_buffer_accesses():
    buffers = {b.name: b for b in core_buffers(CoreConfig(max_k=384, max_n=1536), 59, 384, 1536)}
    beats = 59 * 192 * 24
    assert buffers["weight_codes"].reads == beats
    assert buffers["weight_codes"].writes == 192 * 24
    assert buffers["weight_codes"].width == 8 * 16 * 4
    assert buffers["bank_codes"].writes == 59 * 24
    assert buffers["bank_lowrank"].writes == 59 * 1536 // 32
    assert buffers["lvc.l1"].reads == 59 * (1536 // 32) * 32


def test_layer_energy_adds_buffers_to_arithmetic():
    config = CoreConfig(max_k=384, max_n=1536)
    table = EnergyTable()
    report = layer_energy(config, 59, 384, 1536, table=table)
    units = report.unit_picojoules()
    expected = sum(b.reads * table.buffer_read(b.width) + b.writes * table.buffer_write(b.width)
                   for b in core_buffers(config, 59, 384, 1536))
    assert units["buffers"] == pytest.approx(expected)
    assert report.picojoules == pytest.approx(sum(units.values()))
    assert report.ops == 2 * 59 * 384 * 1536
    cheaper = layer_energy(config, 59, 384, 1536, table=EnergyTable(sram_read_64bit=5.0))
    assert cheaper.unit_picojoules()["buffers"] < units["buffers"]
    assert cheaper.unit_picojoules()["pe_array"] == units["pe_array"]


# The command


def perf_json(capsys, *argv):
    code = main(["perf", *argv, "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, lines, json.loads(lines[-1])


def test_perf_default_workloads(capsys):
    code, lines, summary = perf_json(capsys)
    assert code == 0
    assert lines[-2].startswith("summary (per block; energy figures are estimates): MiniLM-L6 ")
    assert [w["workload"] for w in summary["workloads"]] == [w.name for w in WORKLOADS]
    minilm = summary["workloads"][0]
    ffn_in = minilm["layers"][1]
    config = CoreConfig(max_k=384, max_n=1536)
    prediction = predict_cycles(config, 59, 384, 1536)
    assert (ffn_in["k"], ffn_in["n"], ffn_in["cycles"]) == (384, 1536, prediction.cycles)
    assert ffn_in["energy_estimate_uj"] == pytest.approx(layer_energy(config, 59, 384, 1536).picojoules / 1e6)
    block = minilm["block"]
    assert block["cycles"] == sum(layer["cycles"] * layer["count"] for layer in minilm["layers"])
    assert 0 < block["dequantization_ratio_estimate"] < 1
    assert 0 < block["svdmp_lvc_energy_ratio_estimate"] < 1
    decode = summary["workloads"][3]
    assert {layer["limit"] for layer in decode["layers"]} == {"one token"}


def test_perf_draws_three_plots(capsys, tmp_path):
    code, lines, _ = perf_json(capsys, "--shape", "5,256,96", "--plots", str(tmp_path / "plots"))
    assert code == 0
    names = sorted(path.name for path in (tmp_path / "plots").iterdir())
    assert names == ["energy_per_unit.png", "hgq_vs_conventional.png", "utilization.png"]
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[-3].startswith("plots: ")


def test_perf_plots_folder_is_a_file(capsys, tmp_path):
    target = tmp_path / "plots"
    target.write_text("keep")
    assert main(["perf", "--shape", "5,256,96", "--plots", str(target)]) == 2
    assert "--plots must name a folder" in capsys.readouterr().err
    assert target.read_text() == "keep"


def test_perf_shape_and_rank(capsys):
    code, _, summary = perf_json(capsys, "--shape", "5,256,96", "--shape", "3,128,64", "--rank", "4",
                                 "--rows", "4", "--lanes", "8", "--lvc-lanes", "8", "--wide-count", "2")
    assert code == 0
    first = summary["workloads"][0]["layers"][0]
    config = CoreConfig(rmc=RMCConfig(rows=4, lanes=8), rank=4, lvc_lanes=8, svdmp=SVDMPConfig(wide_count=2),
                        max_k=256, max_n=96)
    assert first["cycles"] == predict_cycles(config, 5, 256, 96).cycles
    assert len(summary["workloads"]) == 2
    assert summary["config"]["rank"] == 4


def test_perf_energy_table_file(capsys, tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"sram_read_64bit": 1.0}))
    _, _, default = perf_json(capsys, "--shape", "4,384,384")
    code, _, cheaper = perf_json(capsys, "--shape", "4,384,384", "--energy-table", str(path))
    assert code == 0
    assert cheaper["energy_table"]["sram_write_64bit"] == 1.0
    assert (cheaper["workloads"][0]["block"]["energy_estimate_uj"]
            < default["workloads"][0]["block"]["energy_estimate_uj"])


@pytest.mark.parametrize("argv, message", [
    (["--shape", "5,100,64"], "K must be a positive multiple of coarse_group (128) up to max_k (128), not 100"),
    (["--shape", "5,128,48"], "N must be a positive multiple of 32 up to max_n (64), not 48"),
    (["--shape", "5,128"], "--shape must be three positive integers T,K,N, not '5,128'"),
    (["--shape", "0,128,64"], "--shape must be three positive integers T,K,N, not '0,128,64'"),
    (["--rank", "-1"], "--rank must be a non-negative integer, not -1"),
    (["--lanes", "5"], "lanes must divide fine_group (16), not 5"),
])
def test_perf_rejects_invalid_options(capsys, argv, message):
    assert main(["perf", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"sevedo perf: error: {message}"


def test_perf_rejects_bad_energy_table(capsys, tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"int8_add": -1}))
    assert main(["perf", "--energy-table", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "sevedo perf: error: energy entry int8_add must be a positive finite number of picojoules, not -1")
    path.write_text(json.dumps({"dram_read": 1}))
    assert main(["perf", "--energy-table", str(path)]) == 2
    assert "has the unknown entry 'dram_read'" in capsys.readouterr().err


def test_perf_without_lowrank_path(capsys):
    code, _, summary = perf_json(capsys, "--rank", "0", "--shape", "3,384,40")
    assert code == 0
    block = summary["workloads"][0]["block"]
    assert block["svdmp_lvc_energy_ratio_estimate"] is None
    assert block["unit_energy_estimate_uj"]["lvc"] == 0
    assert np.isclose(block["svdmp_cycle_ratio"], 1.0)
